"""The `ipwatch` command end to end, as a user runs it, against real servers on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ipwatch.stun_responder import StunResponder
from tests.peers.bind9 import DDNS_ZONE, Bind9
from tests.support import ipv6_loopback_available, missing, run_ipwatch

PUBLIC = "198.51.100.20"  # what bind9 serves for pbx.ddns.test (a documentation range)


@pytest.fixture
def responders() -> Iterator[list[StunResponder]]:
    with (
        StunResponder(answer=PUBLIC) as one,
        StunResponder(answer=PUBLIC) as two,
        StunResponder(answer="10.1.2.3") as liar,
    ):
        yield [one, two, liar]


def write_config(
    path: Path, responders: list[StunResponder], bind9: Bind9, extra: str = ""
) -> Path:
    sources = "".join(
        f'[[source]]\nkind = "stun"\nname = "{name}"\nservers = ["{r.server}"]\n\n'
        for name, r in zip(["stun-a", "stun-b", "liar"], responders, strict=True)
    )
    dns = f'[[source]]\nkind = "dns"\nhostname = "pbx.{DDNS_ZONE}"\n'
    dns += f'nameservers = ["{bind9.server}"]\n'
    path.write_text(f'confirm = 2\nfast_confirm = "50ms"\n{extra}\n{sources}{dns}')
    return path


def test_check_agrees_on_the_address_and_rejects_a_private_answer(
    tmp_path: Path, responders: list[StunResponder], bind9: Bind9
) -> None:
    config = write_config(
        tmp_path / "ipwatch.toml", responders, bind9, 'accept = ["198.51.100.0/24"]'
    )
    finished = run_ipwatch("check", "--json", config=config, state_dir=tmp_path / "state")
    assert finished.returncode == 0, finished.stderr
    result = json.loads(finished.stdout)
    assert result["ipv4"]["address"] == PUBLIC and result["ipv4"]["confirmed"] is True
    assert result["ipv4"]["agreement"] == "3/4" and result["ipv6"] is None
    by_name = {s["name"]: s for s in result["ipv4"]["sources"]}
    assert by_name["liar"]["address"] == "10.1.2.3"
    assert by_name["liar"]["rejected"] == "private address (RFC 1918)"
    assert by_name["liar"]["agrees"] is False
    assert by_name["dns-1"] == by_name["dns-1"] | {
        "address": PUBLIC,
        "error": None,
        "rejected": None,
    }
    assert all(s["latency_ms"] >= 0 for s in by_name.values())
    assert result["in_sync"] is True and result["targets"] == []
    # confirm = 2: every STUN server was asked in two rounds.
    assert [r.requests for r in responders] == [2, 2, 2]

    status = run_ipwatch("status", "--json", state_dir=tmp_path / "state")
    recorded = json.loads(status.stdout)
    assert recorded["ipv4"]["address"] == PUBLIC
    assert recorded["changes"][-1] | {"at": None} == {
        "family": "ipv4",
        "old": None,
        "new": PUBLIC,
        "at": None,
    }
    assert status.returncode == 1  # WARNING: a source answers with a private address
    assert "ipv4: source liar rejected: private address (RFC 1918)" in recorded["problems"]
    text = run_ipwatch("status", state_dir=tmp_path / "state").stdout
    assert (
        text.startswith("IPWATCH WARNING - ipv4: source liar rejected") and f"ipv4 {PUBLIC}" in text
    )


def test_documentation_answers_are_rejected_without_accept(
    tmp_path: Path, responders: list[StunResponder], bind9: Bind9
) -> None:
    config = write_config(tmp_path / "ipwatch.toml", responders, bind9)
    finished = run_ipwatch("check", "--json", config=config, state_dir=tmp_path / "state")
    assert finished.returncode == 2, finished.stderr
    result = json.loads(finished.stdout)
    assert result["ipv4"]["confirmed"] is False and result["ipv4"]["address"] is None
    reasons = {s["name"]: s["rejected"] for s in result["ipv4"]["sources"]}
    assert reasons["stun-a"] == reasons["dns-1"] == "documentation address (TEST-NET-2, RFC 5737)"
    status = run_ipwatch("status", state_dir=tmp_path / "state")
    assert status.returncode == 2 and status.stdout.startswith(
        "IPWATCH CRITICAL - ipv4: no confirmed"
    )


def test_check_human_output_names_each_source(
    tmp_path: Path, responders: list[StunResponder], bind9: Bind9
) -> None:
    config = write_config(
        tmp_path / "ipwatch.toml", responders, bind9, 'accept = ["198.51.100.0/24"]'
    )
    finished = run_ipwatch("check", config=config, state_dir=tmp_path / "state")
    lines = finished.stdout.splitlines()
    assert lines[0] == f"ipv4 {PUBLIC} confirmed (3/4 sources agree)"
    assert any(
        line.split()[:2] == ["liar", "stun"] and "rejected: private" in line for line in lines
    )
    assert "ipv4 - -> 198.51.100.20 (3/4 sources)" in finished.stderr  # the change is logged


def test_a_second_check_does_not_rewrite_the_state(
    tmp_path: Path, responders: list[StunResponder], bind9: Bind9
) -> None:
    config = write_config(
        tmp_path / "ipwatch.toml", responders, bind9, 'accept = ["198.51.100.0/24"]'
    )
    state = tmp_path / "state" / "state.json"
    run_ipwatch("check", config=config, state_dir=tmp_path / "state")
    first = state.stat()
    assert run_ipwatch("check", config=config, state_dir=tmp_path / "state").returncode == 0
    second = state.stat()
    assert (second.st_ino, second.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)


def test_a_flapping_answer_is_not_confirmed(tmp_path: Path, bind9: Bind9) -> None:
    with StunResponder(answer=PUBLIC) as one, StunResponder(answer=PUBLIC) as two:
        answers = iter(["198.51.100.1", "198.51.100.2"])

        def flap(request: object) -> list[bytes]:
            one.answer = two.answer = next(answers, PUBLIC)
            return [one.respond(request)]  # type: ignore[arg-type]

        one.reply = flap
        sources = "".join(
            f'[[source]]\nkind = "stun"\nservers = ["{r.server}"]\n' for r in (one, two)
        )
        config = tmp_path / "ipwatch.toml"
        config.write_text(f'accept = ["198.51.100.0/24"]\nfast_confirm = "10ms"\n{sources}')
        finished = run_ipwatch("check", "--json", config=config, state_dir=tmp_path)
    assert finished.returncode == 2
    assert json.loads(finished.stdout)["ipv4"]["confirmed"] is False


def test_sources_shows_each_answer(
    tmp_path: Path, responders: list[StunResponder], bind9: Bind9
) -> None:
    config = write_config(tmp_path / "ipwatch.toml", responders, bind9)
    finished = run_ipwatch("sources", "--json", config=config)
    assert finished.returncode == 0
    entries = json.loads(finished.stdout)["ipv4"]
    assert [e["address"] for e in entries] == [PUBLIC, PUBLIC, "10.1.2.3", PUBLIC]
    assert [r.requests for r in responders] == [1, 1, 1]


def test_sources_exits_2_when_none_answers(tmp_path: Path) -> None:
    config = tmp_path / "ipwatch.toml"
    config.write_text('[[source]]\nkind = "command"\nargv = ["false"]\n')
    finished = run_ipwatch("sources", config=config)
    assert finished.returncode == 2
    assert "error: " in finished.stdout


BAD_CONFIGS = [
    (
        'interval = "soon"\n[[source]]\nkind = "stun"\nservers = ["a.example"]\n',
        "interval: 'soon' is not a duration",
    ),
    (
        '[[source]]\nkind = "stun"\nserver = ["a.example"]\n',
        'source[0].server: unknown key; did you mean "servers"?',
    ),
    ("confirm = \n", "not valid TOML"),
]


@pytest.mark.parametrize(("text", "message"), BAD_CONFIGS)
@pytest.mark.parametrize("command", [["check"], ["sources"], ["config", "check"]])
def test_bad_config_is_one_sentence_and_exit_78(
    tmp_path: Path, text: str, message: str, command: list[str]
) -> None:
    config = tmp_path / "ipwatch.toml"
    config.write_text(text)
    finished = run_ipwatch(*command, config=config, state_dir=tmp_path)
    assert finished.returncode == 78
    assert message in finished.stderr and str(config) in finished.stderr
    assert "Traceback" not in finished.stderr and finished.stdout == ""


def test_missing_config_names_the_file(tmp_path: Path) -> None:
    finished = run_ipwatch("check", config=tmp_path / "nope.toml")
    assert finished.returncode == 78
    assert (
        finished.stderr.strip()
        == f"ipwatch: {tmp_path}/nope.toml: no such file; create it (see README) or pass -c PATH"
    )


def test_config_check_prints_the_effective_config(tmp_path: Path) -> None:
    config = tmp_path / "ipwatch.toml"
    config.write_text('[[source]]\nkind = "http"\nurl = "https://me:s3cret@example.org/ip"\n')
    finished = run_ipwatch("config", "check", config=config)
    assert finished.returncode == 0
    assert "s3cret" not in finished.stdout
    assert 'url = "https://********@example.org/ip"' in finished.stdout
    assert 'interval = "30s"' in finished.stdout and 'name = "http-1"' in finished.stdout


@pytest.mark.parametrize("args", [[], ["frobnicate"], ["check", "--bogus"], ["-v", "-q", "status"]])
def test_bad_usage_exits_64(args: list[str]) -> None:
    assert run_ipwatch(*args).returncode == 64


def test_status_without_state_is_unknown(tmp_path: Path) -> None:
    finished = run_ipwatch("status", state_dir=tmp_path)
    assert finished.returncode == 3
    assert finished.stdout.startswith(f"IPWATCH UNKNOWN - no state in {tmp_path} yet")
    assert finished.stdout.endswith("\ndaemon: unknown (no readable state file)\n")


def test_status_after_check_says_the_daemon_has_not_run(tmp_path: Path) -> None:
    config = tmp_path / "ipwatch.toml"
    config.write_text(
        'confirm = 1\naccept = ["198.51.100.0/24"]\n'
        '[[source]]\nkind = "command"\nargv = ["echo", "198.51.100.7"]\n'
    )
    assert run_ipwatch("check", config=config, state_dir=tmp_path / "state").returncode == 0
    finished = run_ipwatch("status", state_dir=tmp_path / "state")
    assert finished.stdout.endswith(
        "\ndaemon: has not run with this state directory (the state is from `ipwatch check`)\n"
    )


def test_status_with_a_corrupt_state_file_is_unknown(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text("[")
    finished = run_ipwatch("status", state_dir=tmp_path)
    assert finished.returncode == 3 and "is not valid JSON" in finished.stdout


def test_status_imports_neither_dnspython_nor_apscheduler(tmp_path: Path) -> None:
    finished = run_ipwatch_with_importtime(tmp_path)
    imported = {line.split("|")[-1].strip().split(".")[0] for line in finished.splitlines()}
    assert "ipwatch" in imported
    assert not imported & {"dns", "apscheduler", "watchdog", "sdnotify", "concurrent", "tomllib"}


def run_ipwatch_with_importtime(state_dir: Path) -> str:
    import subprocess
    import sys

    finished = subprocess.run(
        [
            sys.executable,
            "-X",
            "importtime",
            "-m",
            "ipwatch",
            "--state-dir",
            str(state_dir),
            "status",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    return finished.stderr


def test_each_family_asks_only_the_sources_that_can_observe_it(tmp_path: Path) -> None:
    if not ipv6_loopback_available():
        missing("IPv6 loopback (::1) is not available")
    with (
        StunResponder(answer="81.2.69.160") as v4,
        StunResponder(host="::1", answer="2a00:1450:4001:80b::200e") as v6,
    ):
        config = tmp_path / "ipwatch.toml"
        sources = "".join(
            f'[[source]]\nkind = "stun"\nservers = ["{r.server}"]\n' for r in (v4, v6)
        )
        config.write_text(f'families = ["ipv4", "ipv6"]\nconfirm = 1\n{sources}')
        finished = run_ipwatch("check", "--json", config=config, state_dir=tmp_path)
        assert (v4.requests, v6.requests) == (1, 1)
    assert finished.returncode == 0, finished.stdout
    result = json.loads(finished.stdout)
    assert [s["name"] for s in result["ipv4"]["sources"]] == ["stun-1"]
    assert [s["name"] for s in result["ipv6"]["sources"]] == ["stun-2"]
    assert result["ipv6"]["address"] == "2a00:1450:4001:80b::200e"


@pytest.mark.parametrize(
    ("command", "status"), [(["config", "check"], 78), (["trigger"], 3), (["hooks", "test"], 78)]
)
def test_verbose_adds_a_traceback_and_nothing_else(
    tmp_path: Path, command: list[str], status: int
) -> None:
    config = tmp_path / "ipwatch.toml"
    config.write_text('interval = "soon"\n[[source]]\nkind = "stun"\nservers = ["a.example"]\n')
    plain = run_ipwatch(*command, config=config, state_dir=tmp_path)
    verbose = run_ipwatch("-v", *command, config=config, state_dir=tmp_path)
    assert plain.returncode == verbose.returncode == status
    assert "Traceback" not in plain.stderr
    [message] = plain.stderr.splitlines()
    assert message.startswith("ipwatch: ")
    assert "Traceback (most recent call last):" in verbose.stderr
    # The message once, at the end, not repeated as the traceback's last line.
    assert verbose.stderr.endswith(f"\n{message}\n")
    assert verbose.stderr.count(message.removeprefix("ipwatch: ")) == 1


def test_a_closed_stdout_pipe_ends_quietly(tmp_path: Path) -> None:
    reader, writer = os.pipe()
    os.close(reader)  # no reader from the start: the first write fails with EPIPE, every time
    try:
        finished = subprocess.run(
            [sys.executable, "-m", "ipwatch", "--state-dir", str(tmp_path), "status"],
            stdout=writer,
            stderr=subprocess.PIPE,
            text=True,
            timeout=30,
            check=False,
        )
    finally:
        os.close(writer)
    assert finished.returncode == 141  # as a shell shows a command ended by SIGPIPE
    assert finished.stderr == ""


def run_with_stderr_file(
    args: list[str], stderr: Path, journal: bool
) -> subprocess.CompletedProcess[str]:
    """Run the CLI with stderr into a file, as journald's stream when `journal`."""
    env = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "IPWATCH_CONFIG")}
    with stderr.open("w") as file:
        if journal:
            found = os.fstat(file.fileno())
            env["JOURNAL_STREAM"] = f"{found.st_dev}:{found.st_ino}"
        return subprocess.run(
            [sys.executable, "-m", "ipwatch", *args],
            stdout=subprocess.PIPE,
            stderr=file,
            text=True,
            env=env,
            timeout=30,
            check=False,
        )


def test_log_lines_carry_journald_priorities_when_journald_reads_stderr(tmp_path: Path) -> None:
    hooks = tmp_path / "hooks.d"
    hooks.mkdir(mode=0o755)
    for name, status in (("10-ok", 0), ("20-fail", 1), ("10-ok~", 0)):  # a backup: debug line
        (hooks / name).write_text(f"#!/bin/sh\nexit {status}\n")
        (hooks / name).chmod(0o755)
    config = tmp_path / "ipwatch.toml"
    config.write_text(f'[[source]]\nkind = "command"\nargv = ["true"]\n[hooks]\ndir = "{hooks}"\n')
    args = ["-v", "-c", str(config), "hooks", "test"]
    journal, plain = tmp_path / "journal", tmp_path / "plain"
    assert run_with_stderr_file(args, journal, journal=True).returncode == 1
    lines = journal.read_text().splitlines()
    assert any(line.startswith("<6>hook 10-ok: ok") for line in lines), lines
    assert any(line.startswith("<4>hook 20-fail: failed") for line in lines), lines
    assert any(line.startswith("<7>") for line in lines), lines  # -v: debug lines
    assert all(line[:3] in ("<2>", "<3>", "<4>", "<6>", "<7>") for line in lines), lines
    # Without the journal (JOURNAL_STREAM inherited by a redirected stderr counts as without):
    # a timestamp and the level in words.
    run_with_stderr_file(args, plain, journal=False)
    assert " INFO hook 10-ok: ok" in plain.read_text() and "<6>" not in plain.read_text()


def test_config_check_reads_the_targets_and_the_secret_files(tmp_path: Path) -> None:
    pjsip = tmp_path / "pjsip.conf"
    original = "[transport-udp]\ntype = transport\nbind = 0.0.0.0\nlocal_net = 192.168.1.0/24\n"
    pjsip.write_text(original)
    broken = tmp_path / "broken.conf"
    broken.write_text("#include missing.conf\n")
    config = tmp_path / "ipwatch.toml"
    targets = (
        f'[[target]]\nkind = "pjsip"\nfile = "{tmp_path / "absent.conf"}"\n'
        f'[[target]]\nkind = "pjsip"\nfile = "{broken}"\n'
        f'[[target]]\nkind = "pjsip"\nfile = "{pjsip}"\ntransports = ["transport-nat"]\n'
    )
    secrets = (
        f'[asterisk]\nami = {{ secret_file = "{tmp_path / "ami.secret"}" }}\n'
        '[[ddns]]\nkind = "duckdns"\nurl = "http://127.0.0.1:9/update"\ndomains = ["pbx"]\n'
        f'token_file = "{tmp_path / "duck.token"}"\n'
    )
    config.write_text(f'[[source]]\nkind = "command"\nargv = ["true"]\n{targets}{secrets}')
    finished = run_ipwatch("config", "check", config=config)
    assert finished.returncode == 78 and finished.stdout == ""
    lines = finished.stderr.splitlines()
    assert [line.split(": ")[2] for line in lines] == [
        "target[0]",
        "target[1]",
        "target[2]",
        "asterisk.ami.secret_file",
        "ddns[0].token_file",
    ], lines
    assert all(line.startswith(f"ipwatch: {config}: ") for line in lines)
    assert "no transport named transport-nat" in lines[2]

    # Put right, the same config passes; nothing was written to the target files.
    for secret in ("ami.secret", "duck.token"):
        (tmp_path / secret).write_text("s3cret\n")
        (tmp_path / secret).chmod(0o600)
    config.write_text(
        config.read_text()
        .replace(str(tmp_path / "absent.conf"), str(pjsip))
        .replace(f'file = "{broken}"', f'file = "{pjsip}"')
        .replace('"transport-nat"', '"transport-udp"')
    )
    finished = run_ipwatch("config", "check", config=config)
    assert finished.returncode == 0, finished.stderr
    assert pjsip.read_text() == original


def test_hooks_test_with_a_missing_hooks_dir_fails_naming_it(tmp_path: Path) -> None:
    config = tmp_path / "ipwatch.toml"
    absent = tmp_path / "hooks.d"
    config.write_text(f'[[source]]\nkind = "command"\nargv = ["true"]\n[hooks]\ndir = "{absent}"\n')
    finished = run_ipwatch("hooks", "test", config=config)
    assert finished.returncode == 1 and finished.stdout == ""
    assert finished.stderr == (
        f"ipwatch: {config}: hooks.dir: {absent} does not exist; create it"
        f" (install -d -m 755 {absent}) or point hooks.dir at your hooks\n"
    )
    absent.mkdir(mode=0o755)  # there but empty: nothing failed
    finished = run_ipwatch("hooks", "test", config=config)
    assert (finished.returncode, finished.stdout) == (0, f"no hooks found in {absent}\n")


def test_plan_prints_the_diff_and_logs_info_only_with_verbose(tmp_path: Path) -> None:
    config = tmp_path / "ipwatch.toml"
    config.write_text(
        'confirm = 1\naccept = ["198.51.100.0/24"]\n'
        '[[source]]\nkind = "command"\nargv = ["echo", "198.51.100.7"]\n'
    )
    finished = run_ipwatch("plan", config=config, state_dir=tmp_path / "state")
    assert finished.returncode == 0
    assert (finished.stdout, finished.stderr) == ("# in sync: nothing to change\n", "")
    verbose = run_ipwatch("-v", "plan", config=config, state_dir=tmp_path / "verbose")
    assert verbose.stdout == finished.stdout
    assert "INFO ipv4 - -> 198.51.100.7 (1/1 sources)" in verbose.stderr


def test_check_without_a_confirmed_address_says_so(tmp_path: Path) -> None:
    config = tmp_path / "ipwatch.toml"
    config.write_text('[[source]]\nkind = "command"\nargv = ["echo", "10.1.2.3"]\n')
    finished = run_ipwatch("check", config=config, state_dir=tmp_path / "state")
    assert finished.returncode == 2
    assert finished.stdout.splitlines()[0] == (
        "ipv4 not confirmed: no quorum (0/1 sources agree); no address confirmed yet"
    )
