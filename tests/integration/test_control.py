"""`check --apply` against the stand-in Asterisk: reload or drain + restart, verify, roll back."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import pytest

from tests.peers.stand_in import DEFAULT_SECRET, DEFAULT_USER, AmiUser, StandInAsterisk
from tests.peers.stand_in import NAT_TRANSPORT as PJSIP
from tests.peers.stand_in import NEW_ADDRESS as NEW
from tests.peers.stand_in import OLD_ADDRESS as OLD
from tests.support import run_ipwatch, wait_until

SIP = f"[general]\nudpbindaddr=127.0.0.1:5080\nexternaddr={OLD}\n"
Factory = Callable[..., StandInAsterisk]


def write_config(
    tmp_path: Path, server: StandInAsterisk, kind: str = "pjsip", **asterisk: str
) -> Path:
    secret = tmp_path / "ami.secret"
    secret.write_text(DEFAULT_SECRET + "\n")
    secret.chmod(0o600)
    file = server.config_dir / ("pjsip.conf" if kind == "pjsip" else "sip.conf")
    settings = {"control": "ami", "drain": "1s"} | asterisk
    lines = "".join(f'{key} = "{value}"\n' for key, value in settings.items())
    config = tmp_path / "ipwatch.toml"
    config.write_text(
        f'confirm = 1\naccept = ["198.51.100.0/24"]\n'
        f'[[source]]\nkind = "command"\nargv = ["echo", "{NEW}"]\n'
        f'[[target]]\nkind = "{kind}"\nfile = "{file}"\n'
        f'[asterisk]\n{lines}console_socket = "{server.console_path}"\n'
        f'ami = {{ host = "127.0.0.1", port = {server.ami_port}, username = "ipwatch",'
        f' secret_file = "{secret}" }}\n'
    )
    return config


def apply(tmp_path: Path, config: Path) -> tuple[int, dict[str, Any], str]:
    finished = run_ipwatch(
        "check", "--apply", "--json", config=config, state_dir=tmp_path / "state"
    )
    result = json.loads(finished.stdout) if finished.stdout.startswith("{") else {}
    return finished.returncode, result, finished.stderr


def shown(server: StandInAsterisk, key: str) -> str:
    rows = dict(server.transport_rows("transport-udp-nat") or [])
    return rows[key]


# 20 and 22 run for real in test_real_asterisk.py; these are the oldest versions that reload.
@pytest.mark.parametrize("version", ["18.20.0", "16.18.0"])
@pytest.mark.parametrize("control", ["ami", "console"])
def test_modern_pjsip_reloads_reregisters_and_verifies(
    version: str, control: Literal["ami", "console"], tmp_path: Path, stand_in_factory: Factory
) -> None:
    server = stand_in_factory(files={"pjsip.conf": PJSIP}, version=version)
    status, result, stderr = apply(tmp_path, write_config(tmp_path, server, control=control))
    assert status == 0, stderr
    assert result["asterisk"] == {"action": "reload", "verified": True}
    commands = server.commands(via=control)
    assert "module reload res_pjsip.so" in commands and "pjsip send register *all" in commands
    assert commands.index("module reload res_pjsip.so") < commands.index("pjsip send register *all")
    assert "core restart now" not in commands and server.restart_count == 0
    assert shown(server, "external_media_address") == NEW
    assert server.effective_transport("transport-udp-nat") is not None


@pytest.mark.parametrize("version", ["16.10.0", "18.3.0", "17.9.0"])
def test_old_pjsip_restarts_when_no_call_is_active(
    version: str, tmp_path: Path, stand_in_factory: Factory
) -> None:
    server = stand_in_factory(files={"pjsip.conf": PJSIP}, version=version, restart_downtime=0.2)
    status, result, stderr = apply(tmp_path, write_config(tmp_path, server))
    assert status == 0, stderr
    assert result["asterisk"] == {"action": "restart", "verified": True}
    assert server.restart_count == 1
    assert "module reload res_pjsip.so" not in server.commands()
    assert shown(server, "external_signaling_address") == NEW


def test_restart_waits_for_calls_to_end(tmp_path: Path, stand_in_factory: Factory) -> None:
    server = stand_in_factory(files={"pjsip.conf": PJSIP}, version="16.10.0", restart_downtime=0.2)
    server.set_calls(1)

    def hang_up_once_status_shows_the_wait() -> None:
        def waiting() -> bool:
            status = run_ipwatch("status", state_dir=tmp_path / "state").stdout
            return "restart Asterisk: waiting for 1 call until" in status

        wait_until(waiting, 20, "`ipwatch status` to show the drain")
        server.set_calls(0)

    hangup = threading.Thread(target=hang_up_once_status_shows_the_wait)
    hangup.start()
    status, result, stderr = apply(tmp_path, write_config(tmp_path, server, drain="30s"))
    hangup.join()
    assert status == 0, stderr
    assert "waiting for 1 call until" in stderr
    # to the second: "until 06:11" read at 06:11:24 looked like a deadline already past
    assert re.search(r"waiting for 1 call until \d\d:\d\d:\d\d\b", stderr)
    counts = server.commands().count("core show channels count")
    assert counts >= 2 and server.restart_count == 1
    assert result["asterisk"]["action"] == "restart"


def test_restart_happens_when_drain_runs_out(tmp_path: Path, stand_in_factory: Factory) -> None:
    server = stand_in_factory(files={"pjsip.conf": PJSIP}, version="16.10.0", restart_downtime=0.2)
    server.set_calls(2)
    status, _, stderr = apply(tmp_path, write_config(tmp_path, server, drain="500ms"))
    assert status == 0, stderr
    assert "waiting for 2 calls until" in stderr and server.restart_count == 1


def test_chan_sip_uses_sip_reload(tmp_path: Path, stand_in_factory: Factory) -> None:
    server = stand_in_factory(files={"sip.conf": SIP, "pjsip.conf": ""}, version="18.20.0")
    status, result, stderr = apply(tmp_path, write_config(tmp_path, server, kind="chan_sip"))
    assert status == 0, stderr
    assert result["asterisk"] == {"action": "reload", "verified": True}
    assert "sip reload" in server.commands()
    assert "module reload res_pjsip.so" not in server.commands()


def test_a_rejected_config_is_rolled_back(tmp_path: Path, stand_in_factory: Factory) -> None:
    server = stand_in_factory(files={"pjsip.conf": PJSIP}, version="20.11.0")
    server.faults = replace(server.faults, reject_reload=True)
    before = (server.config_dir / "pjsip.conf").read_bytes()
    status, result, stderr = apply(tmp_path, write_config(tmp_path, server))
    assert status == 3
    assert "Asterisk did not take the new address" in stderr and "rolled back" in stderr
    assert result["asterisk"] | {"error": None} == {
        "action": "reload",
        "verified": False,
        "rolled_back": True,
        "error": None,
    }
    assert (
        "transport-udp-nat external_media_address: Asterisk still runs"
        in result["asterisk"]["error"]
    )
    assert (server.config_dir / "pjsip.conf").read_bytes() == before
    assert server.commands().count("module reload res_pjsip.so") == 2  # the new files, then the old
    assert shown(server, "external_media_address") == OLD
    assert "after rolling back the files" not in stderr  # it shows the old values again


def test_a_wrong_secret_is_one_sentence_and_exit_3(
    tmp_path: Path, stand_in_factory: Factory
) -> None:
    server = stand_in_factory(files={"pjsip.conf": PJSIP}, failed_login_delay=0.05)
    config = write_config(tmp_path, server)
    (tmp_path / "ami.secret").write_text("Zq9-not-the-secret\n")
    before = (server.config_dir / "pjsip.conf").read_bytes()
    status, result, stderr = apply(tmp_path, config)
    assert status == 3
    assert result["applied"] is False and result["asterisk"]["action"] == "none"
    assert "rejected the username or secret" in result["asterisk"]["error"]
    assert "nothing was changed" in result["asterisk"]["error"]
    assert (server.config_dir / "pjsip.conf").read_bytes() == before  # found before writing
    assert "Zq9" not in stderr + json.dumps(result)  # the secret is never shown


def test_a_missing_command_privilege_also_leaves_the_files(
    tmp_path: Path, stand_in_factory: Factory
) -> None:
    server = stand_in_factory(
        files={"pjsip.conf": PJSIP},
        users={DEFAULT_USER: AmiUser(DEFAULT_SECRET, read="system", write="system")},
    )
    before = (server.config_dir / "pjsip.conf").read_bytes()
    status, result, _ = apply(tmp_path, write_config(tmp_path, server))
    assert status == 3 and result["applied"] is False
    assert "nothing was changed" in result["asterisk"]["error"]
    assert (server.config_dir / "pjsip.conf").read_bytes() == before


def test_a_readable_secret_file_is_refused(tmp_path: Path, stand_in_factory: Factory) -> None:
    server = stand_in_factory(files={"pjsip.conf": PJSIP})
    config = write_config(tmp_path, server)
    (tmp_path / "ami.secret").chmod(0o644)
    status, _, stderr = apply(tmp_path, config)
    assert status == 78 and "readable by group or others; run chmod 600" in stderr


def test_asterisk_not_running_leaves_the_files_and_a_pending_reload(
    tmp_path: Path, stand_in_factory: Factory
) -> None:
    server = stand_in_factory(files={"pjsip.conf": PJSIP}, running=False)
    status, result, _ = apply(tmp_path, write_config(tmp_path, server))
    assert status == 3 and result["asterisk"]["action"] == "pending"
    assert f"external_media_address = {NEW}" in (server.config_dir / "pjsip.conf").read_text()
    assert "pending: reload Asterisk" in run_ipwatch("status", state_dir=tmp_path / "state").stdout


def test_a_dropped_connection_during_the_reload_rolls_back(
    tmp_path: Path, stand_in_factory: Factory
) -> None:
    server = stand_in_factory(files={"pjsip.conf": PJSIP}, version="20.11.0")
    server.faults = replace(server.faults, drop_commands=("pjsip send register",))
    before = (server.config_dir / "pjsip.conf").read_bytes()
    status, _, stderr = apply(tmp_path, write_config(tmp_path, server))
    assert status == 3 and "rolled back" in stderr
    assert (server.config_dir / "pjsip.conf").read_bytes() == before
    # the reload before the drop applied the restored (old) values again
    assert shown(server, "external_media_address") == OLD
    # the fault stays on, so telling Asterisk again after the roll-back fails too, and says so
    assert "asterisk: after rolling back the files: " in stderr


def test_old_pjsip_is_believed_only_once_it_restarted(
    tmp_path: Path, stand_in_factory: Factory
) -> None:
    """16.10 shows new external_* values after any reload but keeps using the old ones."""
    from ipwatch.asterisk.console import ConsoleLink

    # A real restart takes seconds; the uptime Asterisk reports is in whole seconds.
    server = stand_in_factory(files={"pjsip.conf": PJSIP}, version="16.10.0", restart_downtime=1.5)
    config = write_config(tmp_path, server)
    pjsip = server.config_dir / "pjsip.conf"
    pjsip.write_text(pjsip.read_text().replace(OLD, NEW))  # a restart was pending, say
    ConsoleLink(str(server.console_path)).command("module reload res_pjsip.so", 5)
    assert shown(server, "external_media_address") == NEW  # shown, not used
    checked = run_ipwatch("check", config=config, state_dir=tmp_path / "state")
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert "uses them only after a restart, and it has not restarted since pjsip.conf" in (
        checked.stdout
    )
    status, result, stderr = apply(tmp_path, config)
    assert status == 0, stderr
    assert result["asterisk"] == {"action": "restart", "verified": True}
    assert server.restart_count == 1
    assert run_ipwatch("check", config=config, state_dir=tmp_path / "state").returncode == 0
