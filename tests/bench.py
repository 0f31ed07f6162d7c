"""`make bench`: measure what matters on a Raspberry Pi; one table, each figure with its method
and, where the project set one (issue 7), its goal and whether it was met.

Everything runs on loopback (ipwatch's own STUN responders stand in for the Internet), except the
WAN-change figures, which need the network-namespace NAT lab (root) and tests/lab/measure.py.
`python -m tests.bench --no-lab` leaves the lab out (it takes about two minutes).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import importlib.util
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from ipwatch import config as config_module
from ipwatch import reconcile
from ipwatch.stun_responder import Request, StunResponder

T = TypeVar("T")
ANSWER = "203.0.113.7"
SOURCES = 3
LAB_INTERVAL = 30.0  # pure polling, the reference for push (issue 15); 5 changes take ~3 minutes
LAB_CHANGES = 5
TRIGGER_INTERVAL = 3600.0  # also the interval with push: only the push can be quick
PUSH_CHANGES = 10
PUSH_GOAL = 1.5  # median seconds from the router's change to Asterisk verified (issue 15)
LAB_STUN_SOURCES = 2
LAB_ASTERISK = "22.10.1"  # push and its polling reference run a real Asterisk on the lab's PBX
DAEMON_INTERVAL = 0.2
WARMUP_ROUNDS = 10
IDLE_ROUNDS = 60
IP_UDP_HEADERS = 28  # IPv4 (20) + UDP (8) around each datagram
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
MB = 2**20


@dataclass(frozen=True)
class Figure:
    name: str
    value: str
    method: str
    goal: str = ""
    met: bool | None = None  # None: no goal, or not measured

    @property
    def result(self) -> str:
        return "-" if self.met is None else "PASS" if self.met else "MISS"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__)
    parser.add_argument("--no-lab", action="store_true", help="skip the NAT-lab figures")
    args = parser.parse_args(argv)
    figures: list[Figure] = []
    with tempfile.TemporaryDirectory(prefix="ipwatch-bench-") as temp:
        directory = Path(temp)
        figures += _lab_figures(None if not args.no_lab else "--no-lab was given")
        figures += _daemon_figures(_subdirectory(directory, "daemon"))
        figures += _ddclient_figures(_subdirectory(directory, "ddclient"))
        figures += _status_figures(_subdirectory(directory, "status"))
        figures += _large_config_figures(directory)
        figures += _doctor_figures(_subdirectory(directory, "doctor"))
        figures += _real_asterisk_figures()
    _print_table(figures)
    return 0


def progress(text: str) -> None:
    print(f"bench: {text} ...", file=sys.stderr, flush=True)


# --- WAN change -> Asterisk configured, in the NAT lab --------------------------------------


def _lab_figures(skipped: str | None) -> list[Figure]:
    polling = f"median <= {LAB_INTERVAL / 2 + 3:g} s, max <= {LAB_INTERVAL + 3:g} s"
    rows = [
        (f"WAN change -> Asterisk configured, polling (interval {LAB_INTERVAL:g} s)", polling),
        ("WAN change -> Asterisk configured, `ipwatch trigger`", "max <= 3 s"),
        ("bytes on the PBX's LAN link per round, in the lab", ""),
    ]
    reason = skipped or _lab_unavailable()
    if reason:
        return [Figure(name, f"not measured: {reason}", "-", goal) for name, goal in rows]
    from tests.lab import measure

    method = "{} changes of the router's WAN address in the netns NAT lab (coturn x2, NAT-PMP, "
    method += "UPnP), from the change until {} shows the new address"
    real = f"the real Asterisk {LAB_ASTERISK} on the lab's PBX (pjsip show transport)"
    figures = []
    for (name, goal), trigger in zip(rows[:2], (False, True), strict=True):
        progress(f"NAT lab: {LAB_CHANGES} WAN changes, {'trigger' if trigger else 'polling'}")
        # With a trigger, an interval of an hour shows the trigger alone did it.
        interval = TRIGGER_INTERVAL if trigger else LAB_INTERVAL
        # Polling is the reference for push: the same real Asterisk.
        asterisk = None if trigger else LAB_ASTERISK
        seconds = _lab(
            functools.partial(
                measure.measure_wan_change, interval, LAB_CHANGES, trigger, (), asterisk
            )
        )
        if isinstance(seconds, str):
            figures.append(Figure(name, f"not measured: {seconds}", "-", goal))
            continue
        median, worst = statistics.median(seconds), max(seconds)
        met = (
            worst <= 3 if trigger else median <= LAB_INTERVAL / 2 + 3 and worst <= LAB_INTERVAL + 3
        )
        extra = f"; `ipwatch trigger` right after each, interval {interval:g} s" if trigger else ""
        value = f"median {median:.2f} s, max {worst:.2f} s"
        shows = "the stand-in Asterisk" if trigger else real
        figures.append(Figure(name, value, method.format(len(seconds), shows) + extra, goal, met))
    figures += _push_figures(method.format("{}", real))
    progress("NAT lab: traffic of steady rounds")
    traffic = _lab(measure.measure_round_traffic)
    name = rows[2][0]
    if isinstance(traffic, str):
        return [*figures, Figure(name, f"not measured: {traffic}", "-")]
    return [
        *figures,
        Figure(
            name,
            f"{traffic.bytes_per_round:.0f} B (STUN {traffic.stun_request_bytes:.0f} B request, "
            f"{traffic.stun_response_bytes:.0f} B response)",
            f"nft counters on the PBX's link over {traffic.rounds} rounds, IP headers included, "
            "4 sources (2 STUN, NAT-PMP, UPnP)",
        ),
    ]


_PUSH_NAMES = {
    "natpmp": "NAT-PMP announcement",
    "upnp": "UPnP NOTIFY",
    "netlink": "rtnetlink event (address on the PBX's own WAN interface)",
}


def _push_figures(method: str) -> list[Figure]:
    """Each push channel alone, polling every hour: the push must do it all."""
    from tests.lab import measure

    figures = []
    goal = f"median <= {PUSH_GOAL:g} s"
    for kind in measure.PUSH_KINDS:
        name = f"WAN change -> Asterisk configured, {_PUSH_NAMES[kind]} (interval 1 h)"
        progress(f"NAT lab: {PUSH_CHANGES} WAN changes, {kind} push")
        seconds = _lab(
            functools.partial(
                measure.measure_wan_change,
                TRIGGER_INTERVAL,
                PUSH_CHANGES,
                False,
                (kind,),
                LAB_ASTERISK,
            )
        )
        if isinstance(seconds, str):
            figures.append(Figure(name, f"not measured: {seconds}", "-", goal))
            continue
        median, worst = statistics.median(seconds), max(seconds)
        value = f"median {median:.2f} s, max {worst:.2f} s"
        where = "ipwatch on the router, an interface source" if kind == "netlink" else "LAN"
        extra = f"; only the {kind} push on, WAN addresses miniupnpd announces, {where}"
        figures.append(
            Figure(name, value, method.format(len(seconds)) + extra, goal, median <= PUSH_GOAL)
        )
    per_day = 86400 / LAB_INTERVAL, 86400 / TRIGGER_INTERVAL
    figures.append(
        Figure(
            "STUN requests per day and STUN source, polling 30 s vs push with interval 1 h",
            f"{per_day[0]:.0f} vs {per_day[1]:.0f}: {per_day[0] - per_day[1]:.0f} saved"
            f" ({LAB_STUN_SOURCES * (per_day[0] - per_day[1]):.0f} with the lab's"
            f" {LAB_STUN_SOURCES} STUN sources)",
            "one Binding request per source and round (no loss); a change adds confirm + 2"
            " rounds fast_confirm apart",
        )
    )
    return figures


def _lab(measurement: Callable[[], T]) -> T | str:
    """The measurement's result, or why the lab could not give one."""
    try:
        # The lab prints its daemon's log; the table alone goes to stdout.
        with contextlib.redirect_stdout(sys.stderr):
            return measurement()
    except KeyboardInterrupt:
        raise
    except BaseException as error:  # the lab reports its failures with pytest.fail
        return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"


def _lab_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    if importlib.util.find_spec("tests.lab.measure") is None:
        return "tests/lab/measure.py is missing"
    return None


# --- the idle daemon -------------------------------------------------------------------------


class _Wire:
    """Counts the STUN datagrams the responders receive and send."""

    def __init__(self, servers: list[StunResponder]) -> None:
        self.servers = servers
        self.datagrams = 0
        self.payload = 0
        self.largest_exchange = 0
        for server in servers:
            server.reply = self._recording(server)

    def _recording(self, server: StunResponder) -> Callable[[Request], list[bytes]]:
        def reply(request: Request) -> list[bytes]:
            response = server.respond(request)
            exchange = len(request.data) + len(response)
            self.datagrams += 2
            self.payload += exchange
            self.largest_exchange = max(self.largest_exchange, exchange)
            return [response]

        return reply

    @property
    def rounds(self) -> int:
        """Rounds the daemon ran: each asks every source once."""
        return min(server.requests for server in self.servers)

    @property
    def on_the_wire(self) -> int:
        return self.payload + self.datagrams * IP_UDP_HEADERS


def _daemon_figures(directory: Path) -> list[Figure]:
    progress(f"`ipwatch run`: {WARMUP_ROUNDS} + {IDLE_ROUNDS} rounds {DAEMON_INTERVAL:g} s apart")
    with _responders(SOURCES) as servers:
        wire = _Wire(servers)
        config = _write_config(directory, servers, f'interval = "{DAEMON_INTERVAL * 1000:g}ms"\n')
        command = ["-c", str(config), "--state-dir", str(directory / "state"), "run"]
        with _running([sys.executable, "-m", "ipwatch", *command], directory / "log") as pid:
            _wait_for(lambda: wire.rounds >= WARMUP_ROUNDS, 60, "the daemon's first rounds", pid)
            cpu, rounds, wire_bytes = _cpu_seconds(pid), wire.rounds, wire.on_the_wire
            end = WARMUP_ROUNDS + IDLE_ROUNDS
            _wait_for(lambda: wire.rounds >= end, 120, f"{end} rounds", pid)
            cpu, rounds = _cpu_seconds(pid) - cpu, wire.rounds - rounds
            wire_bytes = wire.on_the_wire - wire_bytes
            rss = _rss_bytes(pid)
    exchange = wire.largest_exchange + 2 * IP_UDP_HEADERS
    return [
        Figure(
            "`ipwatch run` idle RSS",
            f"{rss / MB:.1f} MB",
            f"VmRSS after {WARMUP_ROUNDS + IDLE_ROUNDS} rounds ({SOURCES} STUN sources, a pjsip "
            "target in sync, no Asterisk control)",
            "<= 30 MB",
            rss <= 30 * MB,
        ),
        Figure(
            "`ipwatch run` CPU per round",
            f"{cpu / rounds * 1000:.1f} ms",
            f"utime+stime delta over {rounds} rounds (/proc/PID/stat, {CLOCK_TICKS} ticks/s)",
        ),
        Figure(
            "bytes on the wire per round",
            f"{wire_bytes / rounds:.0f} B",
            f"STUN requests+responses counted at the responders over {rounds} rounds, "
            f"UDP payload + {IP_UDP_HEADERS} B IPv4/UDP headers each",
        ),
        Figure(
            "bytes per STUN request",
            f"{exchange} B",
            "largest request + its response, with IPv4/UDP headers",
            "<= 200 B",
            exchange <= 200,
        ),
    ]


def _ddclient_figures(directory: Path) -> list[Figure]:
    name = "ddclient idle RSS (same machine, same run)"
    ddclient = shutil.which("ddclient") or shutil.which("ddclient", path="/usr/sbin:/sbin")
    if ddclient is None:
        return [Figure(name, "not measured: apt-get install ddclient", "-")]
    progress("ddclient: one update to a loopback dyndns2 server, then idle")
    with _Dyndns2Server() as server:
        conf = directory / "ddclient.conf"
        conf.write_text(
            f"daemon=300\npid={directory / 'ddclient.pid'}\ncache={directory / 'ddclient.cache'}\n"
            f"use=cmd, cmd='echo {ANSWER}'\nprotocol=dyndns2\n"
            f"server=127.0.0.1:{server.port}\nssl=no\nlogin=bench\npassword=bench\n"
            "pbx.example.test\n"
        )
        conf.chmod(0o600)  # ddclient warns about a config others can read
        argv = [ddclient, "-foreground", "-file", str(conf)]
        with _running(argv, directory / "log") as pid:
            _wait_for(lambda: server.updates >= 1, 60, "ddclient's update", pid)
            cache = directory / "ddclient.cache"
            _wait_for(lambda: cache.exists() and "good" in cache.read_text(), 30, "its cache", pid)
            _wait_for(lambda: _sleeping(pid), 30, "ddclient to sleep until its next check", pid)
            rss = _rss_bytes(pid)
    return [
        Figure(
            name,
            f"{rss / MB:.1f} MB",
            "VmRSS of `ddclient -foreground` (daemon=300, use=cmd, dyndns2 to 127.0.0.1) after "
            "its first update, asleep until the next",
        )
    ]


class _Dyndns2Server:
    """A loopback dyndns2 server that accepts every update."""

    def __init__(self) -> None:
        self.updates = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.updates += 1
                body = f"good {ANSWER}".encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.http.server_address[1]

    def __enter__(self) -> _Dyndns2Server:
        threading.Thread(target=self.http.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exception: object) -> None:
        self.http.shutdown()
        self.http.server_close()


# --- the CLI ---------------------------------------------------------------------------------


def _status_figures(directory: Path) -> list[Figure]:
    progress("`ipwatch status`, `ipwatch check` and bare python")
    state = directory / "state"
    with _responders(SOURCES) as servers:
        config = _write_config(directory, servers, "confirm = 1\n")
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        check = _wall_seconds(
            lambda: _ipwatch("-c", str(config), "--state-dir", str(state), "check")
        )
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    check_cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    status = statistics.median(
        _wall_seconds(lambda: _ipwatch("--state-dir", str(state), "status")) for _ in range(10)
    )
    bare = statistics.median(_wall_seconds(lambda: _python("-c", "pass")) for _ in range(10))
    rss = _max_rss_kib(["-m", "ipwatch", "--state-dir", str(state), "status"])
    return [
        Figure(
            "`ipwatch status` wall time",
            f"{status * 1000:.0f} ms",
            "median of 10 runs, with a state file from one `check`",
            "<= 150 ms",
            status <= 0.150,
        ),
        Figure("bare `python3 -c pass`", f"{bare * 1000:.0f} ms", "median of 10, same interpreter"),
        Figure("`ipwatch status` peak RSS", f"{rss / 1024:.1f} MB", "ru_maxrss of one run"),
        Figure(
            "`ipwatch status` slowest imports",
            _top_imports("--state-dir", str(state), "status"),
            "python -X importtime, cumulative µs",
        ),
        Figure(
            "`ipwatch check` whole process",
            f"{check * 1000:.0f} ms wall, {check_cpu * 1000:.0f} ms CPU",
            f"one run, {SOURCES} STUN sources, confirm = 1, incl. interpreter start",
        ),
    ]


# --- large configs ---------------------------------------------------------------------------


def _endpoints(count: int) -> str:
    transport = (
        "[transport-udp-nat]\ntype = transport\nprotocol = udp\nbind = 0.0.0.0:5060\n"
        "local_net = 192.168.0.0/16\nexternal_media_address = 203.0.113.5\n"
        "external_signaling_address = 203.0.113.5\n\n"
    )
    endpoint = (
        "[{n}]\ntype=endpoint\ntransport=transport-udp-nat\ncontext=from-internal\ndisallow=all\n"
        "allow=ulaw,alaw\nauth={n}\naors={n}\n\n[{n}]\ntype=auth\nauth_type=userpass\n"
        "password=secret{n}\nusername={n}\n\n[{n}]\ntype=aor\nmax_contacts=1\n\n"
    )
    return transport + "".join(endpoint.format(n=n) for n in range(10000, 10000 + count))


def _plan_and_apply(directory: Path, count: int) -> tuple[float, int]:
    """Best of 5 wall time and the peak traced memory of plan + apply on `count` endpoints."""
    config = config_module.parse(
        {
            "source": [{"kind": "command", "argv": ["true"]}],
            "target": [{"kind": "pjsip", "file": str(directory / "pjsip.conf")}],
        }
    )
    best = float("inf")
    for _ in range(5):
        (directory / "pjsip.conf").write_text(_endpoints(count))
        best = min(best, _wall_seconds(lambda: _reconcile(config, directory)))
    (directory / "pjsip.conf").write_text(_endpoints(count))
    tracemalloc.start()
    _reconcile(config, directory)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return best, peak


def _reconcile(config: config_module.Config, directory: Path) -> None:
    reconcile.apply(reconcile.plan(config, {"ipv4": ANSWER}), directory / "state")


def _large_config_figures(directory: Path) -> list[Figure]:
    progress("plan + apply of large pjsip.conf files")
    figures = []
    for count in (1000, 10000):
        work = _subdirectory(directory, f"large-{count}")
        seconds, peak = _plan_and_apply(work, count)
        size = (work / "pjsip.conf").stat().st_size
        figures.append(
            Figure(
                f"plan + apply, {count} endpoints",
                f"{seconds * 1000:.0f} ms, peak {peak / MB:.1f} MB",
                f"{size / MB:.1f} MB file: read, plan, write with fsyncs; best of 5; "
                "peak by tracemalloc",
                "<= 100 ms" if count == 10000 else "",
                seconds <= 0.100 if count == 10000 else None,
            )
        )
    return figures


def _doctor_figures(directory: Path) -> list[Figure]:
    """`ipwatch doctor` on the 10,000 endpoints above, none with its NAT options, so every one
    is a finding (40,000 in all), as a user runs it: the whole process, the address from the
    state file."""
    progress("`ipwatch doctor` on 10,000 endpoints")
    (directory / "pjsip.conf").write_text(_endpoints(10000))
    config = directory / "ipwatch.toml"
    config.write_text(
        f'accept = ["203.0.113.0/24"]\n[[source]]\nkind = "command"\nargv = ["false"]\n'
        f'[[target]]\nkind = "pjsip"\nfile = "{directory / "pjsip.conf"}"\n'
        '[asterisk]\ncontrol = "none"\n'
    )
    state = directory / "state"
    state.mkdir()
    saved = {"version": 1, "families": {"ipv4": {"address": ANSWER}}, "changes": []}
    (state / "state.json").write_text(json.dumps({**saved, "pending": [], "daemon": None}))
    args = ("-c", str(config), "--state-dir", str(state), "doctor")
    checked = subprocess.run(
        [sys.executable, "-m", "ipwatch", *args, "--json"], capture_output=True, check=False
    )
    if checked.returncode != 1 or len(json.loads(checked.stdout)["findings"]) != 40001:
        raise RuntimeError(f"doctor did not find what it should: {checked.stderr[-300:]!r}")
    audit = min(_wall_seconds(lambda: _ipwatch(*args)) for _ in range(5))
    plan = min(_wall_seconds(lambda: _ipwatch(*args, "--plan")) for _ in range(2))
    (directory / "pjsip.conf").write_text(_freepbx_endpoints(10000))
    freepbx = min(_wall_seconds(lambda: _ipwatch(*args)) for _ in range(5))
    size = (directory / "pjsip.conf").stat().st_size
    method = "whole process, best of {}; 10,000 endpoints lacking 3 options and qualify"
    return [
        Figure(
            "`ipwatch doctor`, 10,000 endpoints",
            f"{audit * 1000:.0f} ms",
            method.format(5) + ": 40,000 findings",
            "<= 1 s",
            audit <= 1.0,
        ),
        Figure(
            "`ipwatch doctor --plan`, 10,000 endpoints",
            f"{plan * 1000:.0f} ms",
            method.format(2) + ": a diff adding 40,000 lines",
        ),
        Figure(
            "`ipwatch doctor`, 10,000 FreePBX-style endpoints",
            f"{freepbx * 1000:.0f} ms",
            f"whole process, best of 5; {size / MB:.1f} MB, endpoint, AOR and auth as FreePBX"
            " writes them, every NAT option set: no findings, every option line read",
            "<= 1 s",
            freepbx <= 1.0,
        ),
    ]


def _freepbx_endpoints(count: int) -> str:
    """Endpoints, AORs and auths with the options FreePBX 16 writes for an extension."""
    transport = (
        "[0.0.0.0-udp]\ntype=transport\nprotocol=udp\nbind=0.0.0.0:5060\n"
        f"external_media_address={ANSWER}\nexternal_signaling_address={ANSWER}\n"
        "local_net=192.168.1.0/24\nallow_reload=no\n\n"
    )
    endpoint = (
        "[{n}]\ntype=endpoint\naors={n}\nauth={n}-auth\ntos_audio=ef\ntos_video=af41\n"
        "cos_audio=5\ncos_video=4\nallow=ulaw,alaw,gsm,g726,g722\ncontext=from-internal\n"
        "callerid=Ext <{n}>\ndtmf_mode=rfc4733\ndirect_media=no\naggregate_mwi=yes\n"
        "use_avpf=no\nrtcp_mux=no\nmax_audio_streams=1\nmax_video_streams=1\nbundle=no\n"
        "ice_support=no\nmedia_use_received_transport=no\ntrust_rpid=yes\n"
        "user_eq_phone=no\nsend_rpid=yes\nrtp_symmetric=yes\nrewrite_contact=yes\n"
        "force_rport=yes\nlanguage=en\none_touch_recording=on\n"
        "record_on_feature=apprecord\nrecord_off_feature=apprecord\ntransport=0.0.0.0-udp\n\n"
        "[{n}]\ntype=aor\nmax_contacts=1\nremove_existing=yes\nqualify_frequency=60\n"
        "maximum_expiration=7200\nminimum_expiration=60\ndefault_expiration=3600\n\n"
        "[{n}-auth]\ntype=auth\nauth_type=userpass\npassword=secret{n}\nusername={n}\n\n"
    )
    return transport + "".join(endpoint.format(n=n) for n in range(10000, 10000 + count))


# --- a real Asterisk (tests/peers/build_asterisk.sh) --------------------------------------


def _real_asterisk_figures() -> list[Figure]:
    """How long chan_sip (5,000 peers) takes to show a new externaddr after `sip reload`
    returns: the reason verification polls. PJSIP's reload is there for comparison."""
    import pytest

    from tests.peers import real_asterisk

    progress("reloads of a real Asterisk with 5,000 peers / endpoints")
    try:
        chan_sip = _reload_delays(real_asterisk.CHAN_SIP_VERSION, "chan_sip")
        pjsip = _reload_delays(real_asterisk.VERSIONS[0], "pjsip")
    except (pytest.skip.Exception, pytest.fail.Exception) as error:
        return [Figure("reload -> new value shown, real Asterisk", "not measured", str(error))]
    return [
        Figure(
            f"{kind} reload -> new value shown, 5,000 {what}",
            f"median {statistics.median(delays):.1f} ms, max {max(delays):.1f} ms,"
            f" {sum(n > 0 for n in stale)}/{len(stale)} read stale first",
            f"Asterisk {version}: 20 reloads over the console socket; time from the reload"
            " command's answer until the show command first has the new value",
        )
        for kind, what, version, (delays, stale) in (
            ("chan_sip", "peers", real_asterisk.CHAN_SIP_VERSION, chan_sip),
            ("pjsip", "endpoints", real_asterisk.VERSIONS[0], pjsip),
        )
    ]


def _reload_delays(version: str, kind: str) -> tuple[list[float], list[int]]:
    """Per reload: milliseconds until the new value shows, and how many reads showed the old."""
    from ipwatch.asterisk.console import ConsoleLink
    from tests.peers import real_asterisk

    root = Path(tempfile.mkdtemp(prefix="ast-", dir="/tmp"))
    asterisk = real_asterisk.RealAsterisk(version, root)
    name, reload, show = (
        ("sip.conf", "sip reload", "sip show settings")
        if kind == "chan_sip"
        else ("pjsip.conf", "module reload res_pjsip.so", "pjsip show transport transport-udp-nat")
    )

    def conf(address: str) -> str:
        if kind == "chan_sip":
            peers = "".join(f"\n[peer{n}]\ntype = friend\nhost = dynamic\n" for n in range(5000))
            return (
                f"[general]\nudpbindaddr = 127.0.0.1:{asterisk.sip_port}\n"
                f"externaddr = {address}\n" + peers
            )
        endpoints = "".join(
            f"\n[e{n}]\ntype = endpoint\naors = e{n}\n\n[e{n}]\ntype = aor\n" for n in range(5000)
        )
        return real_asterisk.nat_transport(asterisk, address) + endpoints

    delays: list[float] = []
    stale: list[int] = []
    try:
        asterisk.write(name, conf("198.51.100.5"))
        asterisk.start()
        link = ConsoleLink(str(asterisk.console_path))
        for n in range(20):
            address = f"198.51.100.{10 + n}"
            asterisk.write(name, conf(address))
            link.command(reload, 30)
            answered = time.monotonic()
            reads = 0
            while address not in link.command(show, 30):
                reads += 1
            delays.append((time.monotonic() - answered) * 1000)
            stale.append(reads)
        link.close()
    finally:
        asterisk.stop()
        shutil.rmtree(root, ignore_errors=True)
    return delays, stale


# --- helpers ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _responders(count: int) -> Iterator[list[StunResponder]]:
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(StunResponder(answer=ANSWER)) for _ in range(count)]


def _write_config(directory: Path, servers: list[StunResponder], extra: str) -> Path:
    """A config with one STUN source per responder and a pjsip target already in sync."""
    pjsip = directory / "pjsip.conf"
    pjsip.write_text(_endpoints(0).replace("203.0.113.5", ANSWER))
    sources = "".join(f'[[source]]\nkind = "stun"\nservers = ["{s.server}"]\n' for s in servers)
    path = directory / "ipwatch.toml"
    path.write_text(
        f'{extra}fast_confirm = "200ms"\naccept = ["203.0.113.0/24"]\n{sources}'
        f'[[target]]\nkind = "pjsip"\nfile = "{pjsip}"\n[asterisk]\ncontrol = "none"\n'
        f'[hooks]\ndir = "{directory / "hooks.d"}"\n'
    )
    return path


@contextlib.contextmanager
def _running(argv: list[str], log: Path) -> Iterator[int]:
    """Run `argv` (output to `log`) for the duration of the block; yield its pid."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IPWATCH_")}
    with log.open("wb") as output:
        process = subprocess.Popen(argv, stdout=output, stderr=output, env=env)
    try:
        yield process.pid
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_for(probe: Callable[[], bool], timeout: float, what: str, pid: int) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline or not Path(f"/proc/{pid}").exists():
            raise RuntimeError(f"gave up waiting for {what} (pid {pid})")
        time.sleep(0.05)


def _proc_stat(pid: int) -> list[str]:
    """/proc/PID/stat from field 3 (state) on; the name before it may hold spaces."""
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()


def _cpu_seconds(pid: int) -> float:
    fields = _proc_stat(pid)
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime: fields 14, 15


def _sleeping(pid: int) -> bool:
    return _proc_stat(pid)[0] == "S"


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _subdirectory(directory: Path, name: str) -> Path:
    path = directory / name
    path.mkdir()
    return path


def _ipwatch(*args: str) -> None:
    _python("-m", "ipwatch", *args)


def _python(*args: str) -> None:
    subprocess.run([sys.executable, *args], capture_output=True, check=False)


def _wall_seconds(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def _top_imports(*args: str) -> str:
    finished = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "ipwatch", *args],
        capture_output=True,
        text=True,
        check=False,
    )
    entries = []
    for line in finished.stderr.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[1].strip().isdigit():
            entries.append((int(parts[1]), parts[2].strip()))
    top = sorted(entries, reverse=True)[:3]
    return ", ".join(f"{name} {micros}" for micros, name in top)


def _max_rss_kib(args: list[str]) -> int:
    code = (
        "import resource, subprocess, sys; subprocess.run(sys.argv[1:], capture_output=True);"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    finished = subprocess.run(
        [sys.executable, "-c", code, sys.executable, *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(finished.stdout.strip())


def _print_table(figures: list[Figure]) -> None:
    header = Figure("figure", "value", "how it was measured", "goal")
    rows = [header, *figures]
    widths = [max(len(row.name) for row in rows), max(len(row.value) for row in rows)]
    goal_width = max(len(row.goal) for row in rows)
    for row in rows:
        result = "result" if row is header else row.result
        print(
            f"{row.name:<{widths[0]}}  {row.value:<{widths[1]}}  {row.goal:<{goal_width}}  "
            f"{result:<6}  {row.method}"
        )


if __name__ == "__main__":
    sys.exit(main())
