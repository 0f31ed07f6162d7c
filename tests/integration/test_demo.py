"""`ipwatch demo` as a newcomer runs it, and the Asterisk simulator it talks to."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from ipwatch.asterisk import control
from ipwatch.asterisk.console import ConsoleLink
from ipwatch.asterisk.link import version_from_cli
from ipwatch.demo import EXAMPLE_PJSIP, TRANSPORT
from ipwatch.demo_asterisk import LABEL, AsteriskSimulator
from tests.support import missing, need

# The steps of the confirmed change (round 4), in the order they must be shown.
STEPS = [
    "  [observe]  each source's answer:",
    "  [decide]   ipv4 203.0.113.5 -> 203.0.113.7 confirmed (3 of 3 acceptable answers agree)",
    "  [diff]     pjsip.conf must change",
    "-external_signaling_address = 203.0.113.5\n",
    "+external_signaling_address = 203.0.113.7\n",
    "the hook wrote: event change: 203.0.113.5 -> 203.0.113.7",
    "  [write]    log: pjsip.conf: transport-udp-nat external_media_address 203.0.113.5 ->",
    "the previous version is kept in /",
    f"  [asterisk] ipwatch -> {LABEL}: module reload res_pjsip.so\n",
    "Module 'res_pjsip.so' reloaded successfully.",
    f"  [asterisk] ipwatch -> {LABEL}: pjsip send register *all\n",
    f"  [verify]   ipwatch -> {LABEL}: pjsip show transport transport-udp-nat\n",
    "external_signaling_address  : 203.0.113.7\n",
    "  [verify]   log: asterisk: reload done, verified",
    "  [hooks]    log: hook 50-demo-log: ok",
    "(event applied)\n",
    "the hook wrote: event applied: 203.0.113.5 -> 203.0.113.7",
]


def run_demo_without_a_network() -> subprocess.CompletedProcess[str]:
    """`ipwatch demo` in a network namespace that has only loopback: proof that it is offline."""
    unshare, ip = need("unshare", "util-linux"), need("ip", "iproute2")
    isolate = [unshare, "--net"] if os.geteuid() == 0 else [unshare, "-rn"]
    if subprocess.run([*isolate, "true"], capture_output=True, check=False).returncode:
        missing("cannot create a network namespace (needs root or user namespaces)")
    script = f'{ip} link set lo up && exec "$0" -m ipwatch demo'
    env = {k: v for k, v in os.environ.items() if not k.startswith("IPWATCH_")}
    return subprocess.run(
        [*isolate, "sh", "-c", script, sys.executable],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def test_demo_runs_offline_and_shows_the_whole_cycle_in_order() -> None:
    started = time.monotonic()
    finished = run_demo_without_a_network()
    seconds = time.monotonic() - started
    assert finished.returncode == 0, finished.stderr
    assert finished.stderr == ""
    out = finished.stdout
    change = out[out.index("Round 4:") : out.index("Round 5:")]
    shown = 0
    for step in STEPS:
        found = change.find(step, shown)
        assert found >= 0, f"not shown, or out of order: {step!r}"
        shown = found + len(step)
    assert "rejected: private address (RFC 1918)" in out
    assert ", 2 confirmed changes in 7 rounds" in out
    assert "Round 6: ... and 203.0.113.7 is back" in out
    # Under a majority quorum the liar's round counts the acceptable answers, as decide.py does.
    assert "203.0.113.7 confirmed again (2 of 3 acceptable answers agree)" in out
    assert out.count("(event applied)") == 1  # the flap and the liar changed nothing
    assert "Asterisk 16.10.0: core show channels count" in out
    assert seconds < 60


def test_the_simulator_speaks_the_console_protocol_to_ipwatchs_client(tmp_path: Path) -> None:
    pjsip = tmp_path / "pjsip.conf"
    pjsip.write_text(EXAMPLE_PJSIP)
    heard: list[str] = []
    socket_path = tmp_path / "asterisk.ctl"
    with AsteriskSimulator(socket_path, pjsip, lambda command, _: heard.append(command)):
        link = ConsoleLink(str(socket_path))
        assert link.version() == "20.11.0"
        assert version_from_cli(link.command("core show version", 5)) == "20.11.0"
        assert "(not a real Asterisk)" in link.command("core show version", 5)
        assert control.active_calls(link) == 0
        pjsip.write_text(EXAMPLE_PJSIP.replace("203.0.113.5", "203.0.113.7"))
        expected = {TRANSPORT: {"external_media_address": "203.0.113.7"}}
        assert control.mismatches(link, "pjsip", expected) != []  # not re-read before a reload
        control.reload(link, {"pjsip"})
        assert control.mismatches(link, "pjsip", expected) == []
        assert "Unable to find object nope." in link.command("pjsip show transport nope", 5)
    assert not socket_path.exists()
    assert heard[:3] == ["core show version", "core show version", "core show channels count"]
    assert "pjsip send register *all" in heard
