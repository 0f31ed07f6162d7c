"""contrib/: the systemd unit as systemd reads it, and every shell script as its caller runs it.

Shell scripts are found by their shebang (or a `# shellcheck shell=` line, for sourced
fragments) anywhere under contrib/, hooks/, tests/package/ and debian/ (the maintainer
scripts), so a script added there is checked without editing this file. The event triggers run
with `ipwatch` replaced by a stub that records its arguments and fails with exit 3 ("no daemon
running"), which must never fail their caller.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

from tests.support import missing, need

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "contrib" / "systemd" / "ipwatch.service"
NETWORKMANAGER = ROOT / "contrib" / "networkmanager" / "90-ipwatch"
DHCLIENT = ROOT / "contrib" / "dhclient" / "ipwatch"
PPP = ROOT / "contrib" / "ppp" / "ip-up.d" / "ipwatch"
TRIGGERS = (NETWORKMANAGER, DHCLIENT, PPP)
MOST_EXPOSURE = 1.5  # systemd-analyze security: 0 locked down … 10 unprotected; the unit: 1.4

_SHELL = re.compile(rb"#!\s*\S*/(?:env\s+)?(?:sh|bash|dash|ksh)\b|#\s*shellcheck\s+shell=")


def shell_scripts() -> list[Path]:
    found = []
    for top in (ROOT / "contrib", ROOT / "hooks", ROOT / "tests" / "package", ROOT / "debian"):
        for path in sorted(top.rglob("*")) if top.is_dir() else []:
            if path.is_file() and not path.is_symlink():
                with path.open("rb") as stream:
                    head = stream.read(256).split(b"\n")[:2]
                if any(_SHELL.match(line) for line in head):
                    found.append(path)
    return found


# -- shell scripts ----------------------------------------------------------------------------


def test_discovery_finds_every_trigger() -> None:
    assert set(TRIGGERS) <= set(shell_scripts())


@pytest.mark.parametrize("script", shell_scripts(), ids=lambda p: str(p.relative_to(ROOT)))
def test_shellcheck(script: Path) -> None:
    shellcheck = need("shellcheck", "shellcheck")
    result = subprocess.run(
        [shellcheck, "--external-sources", script.name],
        cwd=script.parent,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


class Stub:
    """`ipwatch` first on PATH: records each call's arguments, exits with `status`."""

    def __init__(self, directory: Path, status: int) -> None:
        self.log = directory / "calls"
        program = directory / "bin" / "ipwatch"
        program.parent.mkdir()
        program.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> "{self.log}"\nexit {status}\n')
        program.chmod(0o755)
        self.path = f"{program.parent}:/usr/sbin:/usr/bin:/sbin:/bin"

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []


def run(argv: list[str], stub: Stub, variables: Mapping[str, str] = {}) -> str:
    """Run as a caller would: a bare environment (plus `variables`), no terminal, no stdin."""
    result = subprocess.run(
        argv,
        env={"PATH": stub.path, "LANG": "C", **variables},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr}"
    return result.stdout


@pytest.mark.parametrize("status", [0, 3])
@pytest.mark.parametrize(
    ("action", "variables", "triggers"),
    [
        ("up", {}, True),
        ("dhcp4-change", {}, True),
        ("dhcp6-change", {}, True),
        ("connectivity-change", {"CONNECTIVITY_STATE": "FULL"}, True),
        ("connectivity-change", {"CONNECTIVITY_STATE": "NONE"}, False),
        ("connectivity-change", {"CONNECTIVITY_STATE": "LIMITED"}, False),
        ("pre-up", {}, False),
        ("down", {}, False),
        ("vpn-up", {}, False),
        ("hostname", {}, False),
    ],
)
def test_networkmanager_dispatcher(
    tmp_path: Path, status: int, action: str, variables: dict[str, str], triggers: bool
) -> None:
    stub = Stub(tmp_path, status)
    # As NetworkManager-dispatcher runs it: executable, `SCRIPT INTERFACE ACTION`.
    interface = "" if action in ("hostname", "connectivity-change") else "eth0"
    run([str(NETWORKMANAGER), interface, action], stub, {"DEVICE_IFACE": interface, **variables})
    assert stub.calls() == (["trigger"] if triggers else [])


# How Debian's dhclient-script runs a file in dhclient-exit-hooks.d: run_hook sources it and
# logs a non-zero status as an error. The snapshots of `set` show variables the fragment leaves
# behind in dhclient-script; "still running" that it did not `exit` the script.
_DHCLIENT_SCRIPT = """
run_hook() {
    script="$1"
    exit_status=0
    set > "$SNAPSHOT.before"
    . "$script"
    exit_status=$?
    set > "$SNAPSHOT.after"
    return $exit_status
}
run_hook "$0"
echo "status $?"
echo "still running"
"""


@pytest.mark.parametrize("status", [0, 3])
@pytest.mark.parametrize(
    ("variables", "triggers"),
    [
        ({"reason": "PREINIT"}, False),
        ({"reason": "BOUND", "new_ip_address": "192.0.2.10"}, True),
        ({"reason": "BOUND", "new_ip_address": "192.0.2.10", "old_ip_address": "192.0.2.9"}, True),
        (
            {"reason": "RENEW", "new_ip_address": "192.0.2.10", "old_ip_address": "192.0.2.10"},
            False,
        ),
        ({"reason": "RENEW", "new_ip_address": "192.0.2.11", "old_ip_address": "192.0.2.10"}, True),
        (
            {"reason": "REBIND", "new_ip_address": "192.0.2.11", "old_ip_address": "192.0.2.10"},
            True,
        ),
        (
            {"reason": "REBOOT", "new_ip_address": "192.0.2.11", "old_ip_address": "192.0.2.10"},
            True,
        ),
        (
            {"reason": "REBOOT", "new_ip_address": "192.0.2.10", "old_ip_address": "192.0.2.10"},
            False,
        ),
        ({"reason": "EXPIRE", "old_ip_address": "192.0.2.10"}, False),
        ({"reason": "FAIL"}, False),
        ({"reason": "BOUND6", "new_ip6_address": "2001:db8::10"}, True),
        (
            {
                "reason": "RENEW6",
                "new_ip6_address": "2001:db8::10",
                "old_ip6_address": "2001:db8::10",
            },
            False,
        ),
        (
            {
                "reason": "RENEW6",
                "new_ip6_address": "2001:db8::11",
                "old_ip6_address": "2001:db8::10",
            },
            True,
        ),
    ],
)
def test_dhclient_exit_hook(
    tmp_path: Path, status: int, variables: dict[str, str], triggers: bool
) -> None:
    stub = Stub(tmp_path, status)
    snapshot = tmp_path / "set"
    output = run(
        ["/bin/sh", "-c", _DHCLIENT_SCRIPT, str(DHCLIENT)],
        stub,
        {"SNAPSHOT": str(snapshot), **variables},
    )
    assert output.splitlines() == ["status 0", "still running"]
    assert stub.calls() == (["trigger"] if triggers else [])
    before = Path(f"{snapshot}.before").read_text()
    assert Path(f"{snapshot}.after").read_text() == before, "the fragment changed variables"


@pytest.mark.parametrize("status", [0, 3])
def test_ppp_ip_up(tmp_path: Path, status: int) -> None:
    stub = Stub(tmp_path, status)
    # As /etc/ppp/ip-up's run-parts runs it: the pppd arguments, and pppd's variables.
    argv = [str(PPP), "ppp0", "/dev/ttyUSB0", "115200", "192.0.2.10", "192.0.2.1", ""]
    variables = {"PPP_IFACE": "ppp0", "PPP_LOCAL": "192.0.2.10", "PPP_REMOTE": "192.0.2.1"}
    run(argv, stub, variables)
    assert stub.calls() == ["trigger"]


def test_trigger_modes_match_their_install_lines() -> None:
    """Executables for NetworkManager and run-parts; the sourced fragment needs no x bit."""
    for script in (NETWORKMANAGER, PPP):
        assert os.access(script, os.X_OK), script
        assert "install -m 755" in script.read_text()
    assert "install -m 644" in DHCLIENT.read_text()


# -- the systemd unit -------------------------------------------------------------------------


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if line and line[0] not in "#;[" and "=" in line:
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_unit_keeps_the_contract() -> None:
    settings = unit_settings()
    expected = {
        "Type": ["notify"],
        "ExecReload": ["/bin/kill -HUP $MAINPID"],
        "Restart": ["on-failure"],
        "RestartPreventExitStatus": ["78 217"],
        "StateDirectory": ["ipwatch"],
        "User": ["asterisk"],
        "ReadWritePaths": ["-/etc/asterisk"],
        # Not there: a missing credential file would stop the unit from starting.
        "LoadCredential": None,
        "CapabilityBoundingSet": [""],
        "RestrictAddressFamilies": ["AF_UNIX AF_INET AF_INET6 AF_NETLINK"],
        "ProtectSystem": ["strict"],
        "NoNewPrivileges": ["yes"],
    }
    assert {key: settings.get(key) for key in expected} == expected
    assert settings["ExecStart"][0].endswith("/ipwatch run")
    assert "WatchdogSec" in settings


def unit_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart on this checkout's ipwatch: verify wants an existing program."""
    program = Path(sys.executable).with_name("ipwatch")
    if not program.exists():  # Debian's python3 running the tests from the source tree
        program = tmp_path / "ipwatch"
        program.write_text(f'#!/bin/sh\nexec {sys.executable} -m ipwatch "$@"\n')
        program.chmod(0o755)
    text = UNIT.read_text().replace("/opt/ipwatch/bin/ipwatch", str(program))
    copy = tmp_path / UNIT.name
    copy.write_text(text)
    return copy


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = need("systemd-analyze", "systemd")
    result = subprocess.run(
        [analyze, "verify", str(unit_copy(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # Unknown keys and bad values are only warnings (exit 0); any output is a finding.
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_unit_exposure_is_low(tmp_path: Path) -> None:
    analyze = need("systemd-analyze", "systemd")
    result = subprocess.run(
        [analyze, "security", "--offline=true", "--no-pager", str(unit_copy(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if "--offline" in result.stderr:
        missing(f"systemd-analyze security cannot check unit files offline: {result.stderr}")
    score = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert score, result.stdout + result.stderr
    assert float(score.group(1)) <= MOST_EXPOSURE, result.stdout


# Child for the next test: PR_SET_MDWE (Linux >= 6.3) is the kernel's own form of the unit's
# MemoryDenyWriteExecute=yes, inherited across exec.
_UNDER_MDWE = """
import ctypes, os, sys
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0):
    sys.exit(77)
os.execv(sys.executable, [sys.executable, "-c", sys.argv[1], *sys.argv[2:]])
"""
_DAEMON_LIBRARIES = """
import mmap, sys, tempfile, time
from pathlib import Path
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    sys.exit("writable and executable memory was allowed: the check is not in force")
except PermissionError:
    pass
import dns.resolver
import ipwatch.cli, ipwatch.notify
from apscheduler.schedulers.background import BackgroundScheduler
from watchdog.events import FileSystemEventHandler
from watchdog.observers import Observer

scheduler = BackgroundScheduler()
scheduler.start()
scheduler.shutdown()
seen = []
class Handler(FileSystemEventHandler):
    def on_any_event(self, event):
        seen.append(event)
directory = sys.argv[1]
observer = Observer()  # inotify through ctypes
observer.schedule(Handler(), directory)
observer.start()
Path(directory, "pjsip.conf").write_text("[transport]")
deadline = time.monotonic() + 10
while not seen and time.monotonic() < deadline:
    time.sleep(0.02)
observer.stop()
observer.join()
sys.exit(0 if seen else "no file event arrived")
"""


def test_daemon_libraries_work_without_writable_executable_memory(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _UNDER_MDWE, _DAEMON_LIBRARIES, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode == 77:
        missing("this kernel has no PR_SET_MDWE (Linux >= 6.3) to stand in for systemd's check")
    assert result.returncode == 0, result.stderr
