"""A whole PBX in the NAT lab, for the scenarios (tests/lab/test_scenarios.py) and `make bench`.

`open_pbx` builds the lab and starts, as on a real site:
- on the "Internet" (wan): two coturn STUN servers (198.51.100.1:3478 and :3479) and, unless
  `ddns` is off, bind9 at 198.51.100.1:53 taking RFC 2136 updates for "ddns.test";
- on the router (rtr): miniupnpd answering NAT-PMP and UPnP IGD (it learns its public address by
  STUN unless the lab has carrier-grade NAT, where it has none to report);
- on the PBX (lan): `ipwatch run` with those four sources (quorum majority), a pjsip target, the
  DDNS updater and a hook that records its events; the stand-in Asterisk runs in this process and
  ipwatch reaches it through its console socket (a filesystem socket crosses namespaces).

The bench calls `measure_wan_change` and `measure_round_traffic`; as non-root they raise
`LabUnavailable` at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.lab.lab import (
    INTERNET_SERVER,
    LAB_NETWORKS,
    PUBLIC_ADDRESS,
    PUSH_ADDRESS,
    ROUTER_LAN,
    Lab,
    Role,
)
from tests.lab.lab_asterisk import pjsip_conf as real_pjsip_conf
from tests.lab.lab_asterisk import probe_in, running_asterisk
from tests.peers.bind9 import DDNS_ZONE, Bind9
from tests.peers.real_asterisk import RealAsterisk
from tests.peers.sip_probe import SipProbe
from tests.peers.stand_in import StandInAsterisk, write_config
from tests.support import run_ipwatch, wait_until

TRANSPORT = "transport-lan"
DDNS_HOST = f"pbx-lab.{DDNS_ZONE}"
DDNS_NAME = "lab-dns"
PUSH_KINDS = ("natpmp", "upnp", "netlink")
SECOND_STUN_PORT = 3479  # asked by ipwatch alone (miniupnpd asks 3478): one request per round
START_TIMEOUT = 20.0


class LabUnavailable(Exception):
    """The NAT lab cannot run here (not root, or a server is not installed)."""


@dataclass(frozen=True)
class Settings:
    interval: str = "1h"
    confirm: int = 2
    fast_confirm: str = "300ms"
    ddns: bool = True
    ddns_min_interval: str = "1s"  # how soon a failed DDNS update is tried again
    cgnat: bool = False
    public_address: str = PUBLIC_ADDRESS  # PUSH_ADDRESS when miniupnpd must announce changes
    # Push channels on: "natpmp", "upnp" (sources in the LAN), or "netlink": then ipwatch runs
    # on the router itself, as on a PBX holding its public address (PPPoE), with an interface
    # source on the WAN instead of the router sources.
    push: tuple[str, ...] = ()
    upnp_options: tuple[tuple[str, Any], ...] = ()  # more keys for the upnp source
    # A real Asterisk of this version in `lan` (lab_asterisk.py), with a SIP peer on the
    # Internet it qualifies every second; None: the stand-in, reached through its socket.
    real_asterisk: str | None = None

    @property
    def role(self) -> Role:
        return "rtr" if "netlink" in self.push else "lan"


@dataclass
class Pbx:
    lab: Lab
    asterisk: StandInAsterisk | RealAsterisk
    bind9: Bind9 | None
    config: Path
    state_dir: Path
    hook_log: Path
    role: Role = "lan"
    probe: SipProbe | None = None  # with a real Asterisk: the SIP peer on the Internet
    daemon: subprocess.Popen[bytes] | None = None

    @property
    def stand_in(self) -> StandInAsterisk:
        assert isinstance(self.asterisk, StandInAsterisk), "this lab runs a real Asterisk"
        return self.asterisk

    @property
    def pjsip(self) -> Path:
        return self.asterisk.config_dir / "pjsip.conf"

    def start_daemon(self) -> None:
        argv = ["-c", str(self.config), "--state-dir", str(self.state_dir), "run"]
        self.daemon = self.lab.spawn(self.role, "ipwatch", [sys.executable, "-m", "ipwatch", *argv])

    def stop_daemon(self) -> int:
        """SIGTERM the daemon; return its exit status."""
        assert self.daemon is not None
        self.lab.stop("ipwatch")
        return self.daemon.wait()

    def push_status(self, name: str) -> dict[str, Any]:
        """The push channel of source `name` as the state file records it."""
        return dict((self.state().get("push") or {}).get(name) or {})

    def daemon_log(self) -> str:
        log = self.lab.directory / "ipwatch.log"  # where Lab.spawn puts its output
        return log.read_text(errors="replace") if log.exists() else ""

    def trigger(self) -> None:
        result = run_ipwatch("trigger", state_dir=self.state_dir)
        assert result.returncode == 0, result.stderr

    def state(self) -> dict[str, Any]:
        try:
            return dict(json.loads((self.state_dir / "state.json").read_text()))
        except FileNotFoundError:
            return {}

    def ipv4(self) -> dict[str, Any]:
        return dict((self.state().get("families") or {}).get("ipv4") or {})

    def confirmed(self, address: str) -> bool:
        entry = self.ipv4()
        return entry.get("address") == address and bool(entry.get("confirmed"))

    def wait_confirmed(self, address: str, timeout: float = START_TIMEOUT) -> None:
        wait_until(lambda: self.confirmed(address), timeout, f"ipwatch to confirm {address}")

    def asterisk_shows(self, address: str) -> bool:
        """What SIP would put on the wire (Via/Contact/SDP) uses `address`: the stand-in's
        effective transport, or what a real Asterisk runs (`pjsip show transport`)."""
        if isinstance(self.asterisk, RealAsterisk):
            shown = self.asterisk.transport(TRANSPORT).get("external_signaling_address")
            return shown == address
        state = self.asterisk.effective_transport(TRANSPORT)
        return state is not None and state.external_signaling_address == address

    def wait_asterisk(self, address: str, timeout: float) -> None:
        wait_until(lambda: self.asterisk_shows(address), timeout, f"Asterisk to use {address}")

    def status(self) -> tuple[int, dict[str, Any], str]:
        """`ipwatch status`: exit status, the --json object, and the text."""
        as_json = run_ipwatch("status", "--json", state_dir=self.state_dir)
        as_text = run_ipwatch("status", state_dir=self.state_dir)
        assert as_json.returncode == as_text.returncode, as_json.stderr + as_text.stderr
        return as_json.returncode, json.loads(as_json.stdout), as_text.stdout

    def dns_record(self) -> list[str]:
        """The A records of DDNS_HOST, asked of bind9 from the LAN."""
        script = (
            "import dns.message, dns.query, sys\n"
            f"q = dns.message.make_query({DDNS_HOST!r}, 'A')\n"
            f"r = dns.query.tcp(q, {INTERNET_SERVER!r}, timeout=2)\n"
            "print(' '.join(sorted(str(i) for s in r.answer for i in s)))\n"
        )
        return self.lab.run("lan", [sys.executable, "-c", script]).stdout.split()

    def hooks_seen(self) -> list[tuple[str, str, str]]:
        """(event, old, new) of each hook run so far."""
        if not self.hook_log.exists():
            return []
        seen = []
        for line in self.hook_log.read_text().splitlines():
            event, old, new = line.split(" ", 2)
            seen.append((event, old, new))
        return seen

    def rounds(self) -> int:
        """The daemon's rounds so far: its requests to the STUN server only it asks."""
        return self.lab.counted(self.role, "stun_rounds")[0]

    def wait_rounds(self, count: int, timeout: float) -> None:
        target = self.rounds() + count
        wait_until(lambda: self.rounds() >= target, timeout, f"{count} more rounds")


@contextlib.contextmanager
def open_pbx(
    directory: Path,
    settings: Settings = Settings(),
    before_daemon: Callable[[Lab], object] = lambda lab: None,
) -> Iterator[Pbx]:
    """Build the lab with everything running and ipwatch confirmed on the settings' public
    address, with pjsip.conf, Asterisk and (with ddns) the DNS record all on it; tear it all
    down after. `before_daemon` may change the lab before ipwatch starts."""
    (directory / "lab").mkdir()
    with contextlib.ExitStack() as stack:
        lab = stack.enter_context(
            Lab.open(
                directory / "lab", cgnat=settings.cgnat, public_address=settings.public_address
            )
        )
        asterisk, probe = _start_asterisk(stack, lab, settings, directory)
        lab.start_coturn()
        lab.start_coturn(SECOND_STUN_PORT)
        lab.start_miniupnpd(stun=not settings.cgnat)
        bind9 = lab.start_bind9() if settings.ddns else None
        lab.count(settings.role, "stun_rounds", "output", f"udp dport {SECOND_STUN_PORT}")
        pbx = Pbx(
            lab,
            asterisk,
            bind9,
            directory / "ipwatch.toml",
            directory / "state",
            directory / "hooks.log",
            settings.role,
            probe,
        )
        _write_ipwatch_config(pbx, settings, directory)
        before_daemon(lab)
        pbx.start_daemon()
        try:
            pbx.wait_confirmed(settings.public_address)
            if bind9 is not None:
                wait_until(
                    lambda: pbx.dns_record() == [settings.public_address],
                    10,
                    "the first DDNS update",
                )
            yield pbx
        except BaseException:
            print(pbx.daemon_log())
            raise


def _start_asterisk(
    stack: contextlib.ExitStack, lab: Lab, settings: Settings, directory: Path
) -> tuple[StandInAsterisk | RealAsterisk, SipProbe | None]:
    if settings.real_asterisk is None:
        pjsip = _pjsip_conf(settings.public_address)
        asterisk_dir = write_config(directory / "etc-asterisk", {"pjsip.conf": pjsip})
        stand_in = stack.enter_context(StandInAsterisk(asterisk_dir, directory / "asterisk.ctl"))
        stand_in.start()
        return stand_in, None
    probe = stack.enter_context(probe_in(lab.ns("wan"), INTERNET_SERVER))
    pjsip = real_pjsip_conf(TRANSPORT, settings.public_address, probe.uri)
    real = running_asterisk(settings.real_asterisk, lab.inside("lan"), {"pjsip.conf": pjsip})
    return stack.enter_context(real), probe


def _pjsip_conf(address: str) -> str:
    return (
        f"[{TRANSPORT}]\ntype = transport\nprotocol = udp\nbind = 0.0.0.0:5060\n"
        f"external_media_address = {address}\nexternal_signaling_address = {address}\n"
        "local_net = 192.0.2.0/24\n"
    )


def _write_ipwatch_config(pbx: Pbx, settings: Settings, directory: Path) -> None:
    stun = {"kind": "stun", "rto": "100ms", "timeout": "1s"}
    upnp = {"kind": "upnp", "url": f"http://{ROUTER_LAN}:5000/rootDesc.xml", "timeout": "1s"}
    sources: list[dict[str, Any]] = [
        {**stun, "name": "stun-a", "servers": [f"{INTERNET_SERVER}:3478"]},
        {**stun, "name": "stun-b", "servers": [f"{INTERNET_SERVER}:{SECOND_STUN_PORT}"]},
    ]
    if settings.role == "rtr":
        sources.append({"kind": "interface", "interface": "r-wan", "push": True})
    else:
        sources += [
            {"kind": "natpmp", "timeout": "1s", "push": "natpmp" in settings.push},
            {**upnp, "push": "upnp" in settings.push, **dict(settings.upnp_options)},
        ]
    lines = [
        f"interval = {json.dumps(settings.interval)}",
        f"confirm = {settings.confirm}",
        f"fast_confirm = {json.dumps(settings.fast_confirm)}",
        'quorum = "majority"',
        f"accept = {json.dumps(LAB_NETWORKS)}",
    ]
    for source in sources:
        lines += ["[[source]]", *(f"{key} = {json.dumps(v)}" for key, v in source.items())]
    lines += ["[[target]]", 'kind = "pjsip"', f"file = {json.dumps(str(pbx.pjsip))}"]
    if pbx.bind9 is not None:
        secret = directory / "tsig.secret"
        secret.write_text(pbx.bind9.tsig_secret + "\n")
        secret.chmod(0o600)
        lines += [
            "[[ddns]]",
            'kind = "rfc2136"',
            f'name = "{DDNS_NAME}"',
            f'server = "{pbx.bind9.server}"',
            f'zone = "{DDNS_ZONE}"',
            f'hostname = "{DDNS_HOST}"',
            f'tsig_name = "{pbx.bind9.tsig_name}"',
            f"tsig_secret_file = {json.dumps(str(secret))}",
            'timeout = "2s"',
            f"min_interval = {json.dumps(settings.ddns_min_interval)}",
        ]
    hooks = directory / "hooks.d"
    hooks.mkdir()
    hook = hooks / "10-record"
    hook.write_text(
        f'#!/bin/sh\necho "$1 $IPWATCH_OLD_ADDRESS $IPWATCH_NEW_ADDRESS" >> {pbx.hook_log}\n'
    )
    hook.chmod(0o755)
    lines += [
        "[asterisk]",
        'control = "console"',
        f"console_socket = {json.dumps(str(pbx.asterisk.console_path))}",
        'drain = "1s"',
        "[hooks]",
        f"dir = {json.dumps(str(hooks))}",
        'timeout = "5s"',
    ]
    pbx.config.write_text("\n".join(lines) + "\n")


# --- for the bench ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RoundTraffic:
    """Bytes on the PBX's LAN link (IP packets: IP and UDP/TCP headers included), per round."""

    rounds: int
    bytes_per_round: float  # everything sent and received
    by_source_kind: dict[str, float]  # "stun" (both servers), "natpmp", "upnp"
    stun_request_bytes: float  # one STUN Binding request
    stun_response_bytes: float  # one STUN Binding response


# name -> (what the PBX sends, what it receives), in nft syntax
_TRAFFIC = {
    "total": ('oifname "l0"', 'iifname "l0"'),
    "stun": ("udp dport { 3478, 3479 }", "udp sport { 3478, 3479 }"),
    "natpmp": ("udp dport 5351", "udp sport 5351"),
    "upnp": ("tcp dport 5000", "tcp sport 5000"),
    "stun_response": ("", f"udp sport {SECOND_STUN_PORT}"),
}
_COUNTERS = (*_TRAFFIC, "stun_rounds")  # open_pbx counts the requests to SECOND_STUN_PORT


def measure_wan_change(
    interval: float,
    changes: int,
    trigger: bool,
    push: tuple[str, ...] = (),
    real_asterisk: str | None = None,
) -> list[float]:
    """Seconds from each WAN address change to Asterisk using the new address (the stand-in's
    effective transport, or `pjsip show transport` of a `real_asterisk` of that version), with
    `ipwatch run` polling every `interval` s, or (`trigger`) with `ipwatch trigger` run right
    after each change, or with the `push` channels on ("natpmp", "upnp" or "netlink").

    Polling alone, the changes are spread over the round cycle as real ones are: each comes
    at a random moment of its own slice of the interval (stratified sampling, so five changes
    already cover the cycle evenly), counted from the last apply, which restarts the cycle.
    With push, each comes 1-3 s after the last apply (any moment: a push does not wait for the
    cycle), between addresses miniupnpd announces (not in reserved ranges)."""
    phases = [(slot + random.random()) * interval / changes for slot in range(changes)]
    if push or trigger:
        phases = [1 + 2 * random.random() for _ in range(changes)]
    random.shuffle(phases)
    seconds = []
    with _lab_directory() as directory:
        settings = Settings(
            interval=_duration(interval),
            push=push,
            public_address=PUSH_ADDRESS if push else PUBLIC_ADDRESS,
            real_asterisk=real_asterisk,
        )
        with open_pbx(directory, settings) as pbx:
            for number, phase in enumerate(phases):
                time.sleep(phase)  # the moment being sampled, not a synchronisation
                new = (
                    f"198.51.{101 + (number + 1) % 2}.{20 + number}"
                    if push
                    else (f"198.51.100.{20 + number}")
                )
                changed_at = time.monotonic()
                pbx.lab.set_wan_address(new)
                if trigger:
                    pbx.trigger()
                pbx.wait_asterisk(new, 1.2 * interval + 10)
                seconds.append(time.monotonic() - changed_at)
    return seconds


def measure_round_traffic(rounds: int = 10, interval: float = 0.5) -> RoundTraffic:
    """Bytes on the wire per steady round (four sources, no change, no DDNS), counted by nft in
    the PBX's namespace; a round is one request to the STUN server only ipwatch asks."""
    with _lab_directory() as directory:
        settings = Settings(interval=_duration(interval), ddns=False)
        with open_pbx(directory, settings) as pbx:
            lab = pbx.lab
            for name, (sent, received) in _TRAFFIC.items():
                if sent:
                    lab.count("lan", name, "output", sent)
                if received:
                    lab.count("lan", name, "input", received)

            def snapshot() -> dict[str, tuple[int, int]]:
                return {name: lab.counted("lan", name) for name in _COUNTERS}

            # From just after a round began to just after another did: whole rounds.
            pbx.wait_rounds(1, 10)
            before = snapshot()
            pbx.wait_rounds(rounds, 10 * rounds * interval + 10)
            after = snapshot()
    packets = {name: after[name][0] - before[name][0] for name in _COUNTERS}
    size = {name: after[name][1] - before[name][1] for name in _COUNTERS}
    counted = packets["stun_rounds"]
    return RoundTraffic(
        rounds=counted,
        bytes_per_round=size["total"] / counted,
        by_source_kind={kind: size[kind] / counted for kind in ("stun", "natpmp", "upnp")},
        stun_request_bytes=size["stun_rounds"] / counted,
        stun_response_bytes=size["stun_response"] / max(packets["stun_response"], 1),
    )


def _duration(seconds: float) -> str:
    return f"{round(seconds * 1000)}ms"


@contextlib.contextmanager
def _lab_directory() -> Iterator[Path]:
    """A temporary directory for one lab; outside pytest a skip becomes LabUnavailable."""
    if os.geteuid() != 0:
        raise LabUnavailable("the NAT lab needs root (network namespaces)")
    with tempfile.TemporaryDirectory(prefix="ipwatch-lab-") as temporary:
        try:
            yield Path(temporary)
        except pytest.skip.Exception as skipped:
            raise LabUnavailable(str(skipped)) from None


def main() -> None:
    """`python -m tests.lab.measure`: the lab's figures, printed."""
    polled = measure_wan_change(3.0, 5, trigger=False)
    triggered = measure_wan_change(3600.0, 3, trigger=True)
    pushed = {kind: measure_wan_change(3600.0, 3, False, (kind,)) for kind in PUSH_KINDS}
    traffic = measure_round_traffic()
    print(f"polling (3 s): median {statistics.median(polled):.2f} s, max {max(polled):.2f} s")
    print(f"trigger: median {statistics.median(triggered):.2f} s, max {max(triggered):.2f} s")
    for kind, seconds in pushed.items():
        print(f"{kind} push: median {statistics.median(seconds):.2f} s, max {max(seconds):.2f} s")
    print(traffic)


if __name__ == "__main__":
    main()
