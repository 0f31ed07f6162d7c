"""`make bench`: measure what matters on a Raspberry Pi; one table, each figure with its method.

Runs offline on loopback (ipwatch's own STUN responders stand in for the Internet).
"""

from __future__ import annotations

import contextlib
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

from ipwatch import config as config_module
from ipwatch import reconcile, rounds
from ipwatch.decide import Tracking
from ipwatch.observe import observe
from ipwatch.stun_responder import Request, StunResponder

ANSWER = "203.0.113.7"
Row = tuple[str, str, str]


def main() -> int:
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as temp, _responders(3) as servers:
        directory = Path(temp)
        config_path = _write_config(directory, servers)
        rows += _check_figures(config_path, directory, servers)
        rows += _status_figures(config_path, directory)
        rows += _large_config_figures(directory)
    _print_table(rows)
    return 0


@contextlib.contextmanager
def _responders(count: int) -> Iterator[list[StunResponder]]:
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(StunResponder(answer=ANSWER)) for _ in range(count)]


def _write_config(directory: Path, servers: list[StunResponder]) -> Path:
    sources = "".join(f'\n[[source]]\nkind = "stun"\nservers = ["{s.server}"]\n' for s in servers)
    path = directory / "ipwatch.toml"
    path.write_text(f'confirm = 1\naccept = ["203.0.113.0/24"]\n{sources}')
    return path


def _check_figures(config_path: Path, state_dir: Path, servers: list[StunResponder]) -> list[Row]:
    sizes: list[int] = []
    for server in servers:
        server.reply = _recording(server, sizes)
    config = config_module.load(str(config_path))
    cpu = [
        _cpu_seconds(lambda: rounds.settle(config, {"ipv4": Tracking()}, observe))
        for _ in range(20)
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = _wall_seconds(
        lambda: _run("-c", str(config_path), "--state-dir", str(state_dir), "check")
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    process_cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return [
        (
            "CPU per round (3 STUN sources)",
            f"{statistics.median(cpu) * 1000:.1f} ms",
            "median of 20 in-process rounds, process_time",
        ),
        (
            "`ipwatch check` whole process",
            f"{wall * 1000:.0f} ms wall, {process_cpu * 1000:.0f} ms CPU",
            "one run, confirm = 1, incl. interpreter start",
        ),
        (
            "bytes sent per STUN request",
            f"{max(sizes)} B",
            f"largest of {len(sizes)} requests seen by the responders (UDP payload)",
        ),
    ]


def _recording(server: StunResponder, sizes: list[int]) -> Callable[[Request], list[bytes]]:
    def reply(request: Request) -> list[bytes]:
        sizes.append(len(request.data))
        return [server.respond(request)]

    return reply


def _status_figures(config_path: Path, state_dir: Path) -> list[Row]:
    status = [
        _wall_seconds(lambda: _run("--state-dir", str(state_dir), "status")) for _ in range(10)
    ]
    bare = [_wall_seconds(lambda: _run_python("-c", "pass")) for _ in range(10)]
    imports = _top_imports("--state-dir", str(state_dir), "status")
    rss = _max_rss_kib(["-m", "ipwatch", "--state-dir", str(state_dir), "status"])
    return [
        (
            "`ipwatch status` wall time",
            f"{statistics.median(status) * 1000:.0f} ms",
            "median of 10 runs",
        ),
        (
            "bare `python3 -c pass`",
            f"{statistics.median(bare) * 1000:.0f} ms",
            "median of 10 runs, same interpreter",
        ),
        ("`ipwatch status` peak RSS", f"{rss / 1024:.1f} MB", "ru_maxrss of one run"),
        ("`ipwatch status` slowest imports", imports, "python -X importtime, cumulative µs"),
    ]


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


def _large_config_figures(directory: Path) -> list[Row]:
    rows: list[Row] = []
    for count in (1000, 10000):
        work = directory / f"large-{count}"
        work.mkdir()
        seconds, peak = _plan_and_apply(work, count)
        size = (work / "pjsip.conf").stat().st_size
        rows.append(
            (
                f"plan + apply, {count} endpoints",
                f"{seconds * 1000:.0f} ms, peak {peak / 2**20:.1f} MB",
                f"{size / 2**20:.1f} MB file: read, plan, write with fsyncs;"
                " best of 5; peak by tracemalloc",
            )
        )
    return rows


def _run(*args: str) -> None:
    _run_python("-m", "ipwatch", *args)


def _run_python(*args: str) -> None:
    subprocess.run([sys.executable, *args], capture_output=True, check=False)


def _wall_seconds(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def _cpu_seconds(action: Callable[[], object]) -> float:
    started = time.process_time()
    action()
    return time.process_time() - started


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
    top = sorted(entries, reverse=True)[:5]
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


def _print_table(rows: list[Row]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    print(f"{'figure':<{widths[0]}}  {'value':<{widths[1]}}  how it was measured")
    for name, value, method in rows:
        print(f"{name:<{widths[0]}}  {value:<{widths[1]}}  {method}")


if __name__ == "__main__":
    sys.exit(main())
