""" "In sync" means Asterisk runs the address: every way a real Asterisk can end up behind files
that are right is seen by `check` and `status`, and put right by `check --apply` or the daemon."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.peers.real_asterisk import (
    NEW_ADDRESS,
    OLD_ADDRESS,
    VERSIONS,
    RealAsterisk,
    RealFactory,
    ipwatch_config,
    nat_transport,
)
from tests.support import ipwatch_daemon, need, run_ipwatch, wait_until

pytestmark = pytest.mark.integration
TRANSPORT = "transport-udp-nat"


@pytest.fixture(name="pbx")
def pbx_fixture(real_asterisk_factory: RealFactory) -> RealAsterisk:
    asterisk = real_asterisk_factory(VERSIONS[0])
    asterisk.write("pjsip.conf", nat_transport(asterisk))
    return asterisk.start()


def configure(tmp_path: Path, pbx: RealAsterisk, **asterisk: str) -> Path:
    target = f'kind = "pjsip"\nfile = "{pbx.config_dir / "pjsip.conf"}"\n'
    return ipwatch_config(tmp_path, pbx, target, **asterisk)


def ipwatch(tmp_path: Path, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_ipwatch(*args, config=config, state_dir=tmp_path / "state")


def status(tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return run_ipwatch("status", state_dir=tmp_path / "state")


def runs(pbx: RealAsterisk) -> str:
    return pbx.transport(TRANSPORT)["external_signaling_address"]


def record_events(tmp_path: Path, config: Path, what: str) -> None:
    """A hook that appends `what` (shell words) to tmp_path/events for each event."""
    hooks = tmp_path / "hooks.d"
    hooks.mkdir()
    hook = hooks / "10-record"
    hook.write_text(f'#!/bin/sh\necho {what} >> "{tmp_path / "events"}"\n')
    hook.chmod(0o755)
    with config.open("a") as file:
        file.write(f'[hooks]\ndir = "{hooks}"\n')


def assert_behind_then_put_right(tmp_path: Path, config: Path, pbx: RealAsterisk) -> None:
    """`check` says Asterisk still runs the old address (exit 1), `status` is not OK, and
    `check --apply` reloads without editing, verifies, and then everything is OK."""
    checked = ipwatch(tmp_path, config, "check")
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert f"Asterisk still runs {OLD_ADDRESS}" in checked.stdout
    told = status(tmp_path)
    assert told.returncode == 1, told.stdout
    assert f"asterisk: {TRANSPORT} external_signaling_address: Asterisk still runs" in told.stdout
    before = (pbx.config_dir / "pjsip.conf").stat().st_mtime_ns
    applied = ipwatch(tmp_path, config, "check", "--apply", "--json")
    assert applied.returncode == 0, applied.stderr
    result = json.loads(applied.stdout)
    assert result["applied"] is False  # no edit was needed
    assert result["asterisk"] == {"action": "reload", "verified": True}
    assert (pbx.config_dir / "pjsip.conf").stat().st_mtime_ns == before
    assert runs(pbx) == NEW_ADDRESS
    assert status(tmp_path).returncode == 0
    assert ipwatch(tmp_path, config, "check").returncode == 0


def test_a_reload_never_sent(tmp_path: Path, pbx: RealAsterisk) -> None:
    # The files were written by a run that did not tell Asterisk (control = "none" then).
    quiet = configure(tmp_path, pbx, control="none")
    assert ipwatch(tmp_path, quiet, "check", "--apply").returncode == 0
    assert runs(pbx) == OLD_ADDRESS
    assert_behind_then_put_right(tmp_path, configure(tmp_path, pbx), pbx)


def test_a_reload_that_failed(tmp_path: Path, pbx: RealAsterisk) -> None:
    wrong = configure(tmp_path, pbx, control="console")
    text = wrong.read_text().replace(str(pbx.console_path), str(tmp_path / "nothing.ctl"))
    wrong.write_text(text)
    failed = ipwatch(tmp_path, wrong, "check", "--apply", "--json")
    assert failed.returncode == 3 and json.loads(failed.stdout)["asterisk"]["action"] == "pending"
    assert status(tmp_path).returncode == 1
    # The admin fixes the socket path: the next run finds Asterisk behind the files.
    assert_behind_then_put_right(tmp_path, configure(tmp_path, pbx, control="console"), pbx)


def test_a_hand_edit_reloaded_then_undone_without_a_reload(
    tmp_path: Path, pbx: RealAsterisk
) -> None:
    config = configure(tmp_path, pbx)
    assert ipwatch(tmp_path, config, "check", "--apply").returncode == 0
    pjsip = pbx.config_dir / "pjsip.conf"
    right = pjsip.read_text()
    pjsip.write_text(right.replace(NEW_ADDRESS, OLD_ADDRESS))
    pbx.cli("module reload res_pjsip.so")
    pjsip.write_text(right)
    assert runs(pbx) == OLD_ADDRESS
    assert_behind_then_put_right(tmp_path, config, pbx)


def test_a_missing_secret_file_writes_nothing(tmp_path: Path, pbx: RealAsterisk) -> None:
    config = configure(tmp_path, pbx)
    (tmp_path / "ami.secret").unlink()
    before = (pbx.config_dir / "pjsip.conf").read_bytes()
    refused = ipwatch(tmp_path, config, "check", "--apply")
    assert refused.returncode == 78, refused.stderr
    assert "secret_file" in refused.stderr
    assert (pbx.config_dir / "pjsip.conf").read_bytes() == before
    assert status(tmp_path).returncode != 0
    configure(tmp_path, pbx)  # the secret is back
    assert ipwatch(tmp_path, config, "check", "--apply").returncode == 0
    assert runs(pbx) == NEW_ADDRESS


def test_a_wrong_secret_writes_nothing_and_the_fix_applies(
    tmp_path: Path, pbx: RealAsterisk
) -> None:
    config = configure(tmp_path, pbx)
    (tmp_path / "ami.secret").write_text("not-the-secret\n")
    before = (pbx.config_dir / "pjsip.conf").read_bytes()
    refused = ipwatch(tmp_path, config, "check", "--apply", "--json")
    assert refused.returncode == 3
    assert "nothing was changed" in json.loads(refused.stdout)["asterisk"]["error"]
    assert (pbx.config_dir / "pjsip.conf").read_bytes() == before
    configure(tmp_path, pbx)
    fixed = ipwatch(tmp_path, config, "check", "--apply", "--json")
    assert fixed.returncode == 0, fixed.stderr
    assert json.loads(fixed.stdout)["asterisk"] == {"action": "reload", "verified": True}
    assert runs(pbx) == NEW_ADDRESS


def test_status_is_never_ok_when_asterisk_cannot_be_asked(
    tmp_path: Path, pbx: RealAsterisk
) -> None:
    config = configure(tmp_path, pbx)
    assert ipwatch(tmp_path, config, "check", "--apply").returncode == 0
    assert status(tmp_path).returncode == 0
    pbx.stop()
    checked = ipwatch(tmp_path, config, "check")
    assert checked.returncode == 3, checked.stdout
    assert "whether it runs the address is unknown" in checked.stdout
    told = status(tmp_path)
    assert told.returncode == 1 and "asterisk: cannot ask Asterisk" in told.stdout


@pytest.mark.parametrize("observer", [("plan",), ("check",)])
def test_looking_first_does_not_swallow_the_change_event(
    observer: tuple[str, ...], tmp_path: Path, pbx: RealAsterisk
) -> None:
    config = configure(tmp_path, pbx)
    record_events(tmp_path, config, '"$1 $IPWATCH_NEW_ADDRESS"')
    ipwatch(tmp_path, config, *observer)
    applied = ipwatch(tmp_path, config, "check", "--apply", "--json")
    assert applied.returncode == 0, applied.stderr
    assert json.loads(applied.stdout)["ipv4"]["changed"] is True
    events = (tmp_path / "events").read_text().splitlines()
    assert events == [f"change {NEW_ADDRESS}", f"applied {NEW_ADDRESS}"]
    again = ipwatch(tmp_path, config, "check", "--apply", "--json")
    assert json.loads(again.stdout)["ipv4"]["changed"] is False
    assert len((tmp_path / "events").read_text().splitlines()) == 2  # not announced twice


@pytest.fixture(name="daemon")
def daemon_fixture(tmp_path: Path, pbx: RealAsterisk) -> Iterator[subprocess.Popen[str]]:
    config = configure(tmp_path, pbx)
    text = config.read_text().replace("confirm = 1\n", 'confirm = 1\ninterval = "300ms"\n')
    config.write_text(text)
    with ipwatch_daemon(config, tmp_path / "state") as process:
        yield process


def test_the_daemon_puts_a_behind_asterisk_right(
    daemon: subprocess.Popen[str], pbx: RealAsterisk
) -> None:
    wait_until(lambda: runs(pbx) == NEW_ADDRESS, 15, "the daemon's first apply")
    pjsip = pbx.config_dir / "pjsip.conf"
    right = pjsip.read_text()
    # By hand, behind the daemon's back: Asterisk loads the old address, the file is right again.
    pjsip.write_text(right.replace(NEW_ADDRESS, OLD_ADDRESS))
    pbx.cli("module reload res_pjsip.so")
    pjsip.write_text(right)
    assert runs(pbx) == OLD_ADDRESS
    wait_until(lambda: runs(pbx) == NEW_ADDRESS, 15, "the daemon to reload Asterisk")


def test_a_run_that_fails_before_telling_asterisk_leaves_status_warning(
    tmp_path: Path, pbx: RealAsterisk
) -> None:
    unshare = need("unshare", "util-linux")
    need("mount", "mount")
    answer = tmp_path / "answer"
    answer.write_text(NEW_ADDRESS + "\n")
    config = configure(tmp_path, pbx)
    config.write_text(config.read_text().replace(f'"echo", "{NEW_ADDRESS}"', f'"cat", "{answer}"'))
    assert ipwatch(tmp_path, config, "check", "--apply").returncode == 0
    assert status(tmp_path).returncode == 0
    answer.write_text("198.51.100.9\n")
    # Asterisk's directory read-only for this run only (EROFS); the state directory writable.
    read_only = 'mount --bind -o ro "$0" "$0" && exec "$@"'
    failed = run_ipwatch(
        "check",
        "--apply",
        config=config,
        state_dir=tmp_path / "state",
        wrapper=[unshare, "--mount", "--", "sh", "-c", read_only, str(pbx.config_dir)],
    )
    assert failed.returncode == 3, failed.stderr
    assert runs(pbx) == NEW_ADDRESS
    told = status(tmp_path)
    assert told.returncode == 1, told.stdout
    assert f"last seen running {NEW_ADDRESS}, but 198.51.100.9 is confirmed" in told.stdout


def test_apply_none_still_asks_asterisk(tmp_path: Path, pbx: RealAsterisk) -> None:
    quiet = configure(tmp_path, pbx, control="none")
    assert ipwatch(tmp_path, quiet, "check", "--apply").returncode == 0  # files only
    config = configure(tmp_path, pbx, apply="none")
    checked = ipwatch(tmp_path, config, "check")
    assert checked.returncode == 1 and f"Asterisk still runs {OLD_ADDRESS}" in checked.stdout
    assert status(tmp_path).returncode == 1
    applied = ipwatch(tmp_path, config, "check", "--apply")
    assert applied.returncode == 1  # apply = "none": reported, not acted on
    assert runs(pbx) == OLD_ADDRESS


def test_a_refused_login_raises_no_applied_event(tmp_path: Path, pbx: RealAsterisk) -> None:
    config = configure(tmp_path, pbx)
    record_events(tmp_path, config, '"$1"')
    (tmp_path / "ami.secret").write_text("not-the-secret\n")
    assert ipwatch(tmp_path, config, "check", "--apply").returncode == 3
    assert (tmp_path / "events").read_text().split() == ["change"]
