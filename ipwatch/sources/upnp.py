"""Kind "upnp": the router's own idea of its public address, from its UPnP Internet Gateway
Device (the SOAP action GetExternalIPAddress of WANIPConnection/WANPPPConnection).

The protocol work is miniupnpc's (its PyPI wheel: C, no dependencies): SSDP discovery, the device
description, the SOAP call. miniupnpc reads each answer whole and bounds only each socket
operation, so a hostile LAN host (discovery finds anyone who answers) could stream a description
for ever and fill the memory, or send a byte a second and hold the exchange for ever. The
exchange therefore runs in a worker process (upnp_worker.py) whose address space is capped, and
`ask` kills that process at the source's timeout: the exchange stops with it, so a new one never
starts while an old one still runs, and nothing leaks from round to round.

The worker lives from one round to the next, keeping the gateway it found, since discovery costs
at least a second (miniupnpc waits that long for answers, and four times as long when nobody
answers); `url` skips discovery altogether. It costs about 10 MB and 10 ms to start, and is
started with the same Python, in isolated mode (-I), by path: no import of ipwatch in it.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import selectors
import subprocess
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from ipwatch.addresses import Family
from ipwatch.errors import NoPublicAddress, SourceError
from ipwatch.schema import Duration, Parser, format_duration
from ipwatch.sources.interface import parse_interface_name

if TYPE_CHECKING:
    from ipwatch.sources.push import Changed, Channel, Hint

NO_EXTERNAL_ADDRESS = (
    "the router reports no external address (it has a private/reserved WAN address or is not"
    " connected); behind carrier-grade NAT only an outside source such as stun can tell the"
    " public address"
)
WORKER = Path(__file__).with_name("upnp_worker.py")
# Above 1023 (the shipped unit has no CAP_NET_BIND_SERVICE), below Linux's ephemeral ports.
DEFAULT_EVENT_PORT = 28771
# A worker's line is a progress note or an answer naming a URL: far below this.
_MAX_LINE = 64 * 1024


def parse_url(value: Any) -> str:
    """Given the `url` key, return it if it is an http:// URL (miniupnpc speaks no https)."""
    if not isinstance(value, str):
        raise ValueError(
            f'expected a URL like "http://192.168.1.1:5000/rootDesc.xml", got {value!r}'
        )
    parts = urllib.parse.urlsplit(value.strip())
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(
            f"{value!r} is not an http:// URL; give the router's root device description,"
            ' like "http://192.168.1.1:5000/rootDesc.xml"'
        )
    return value.strip()


@dataclass(frozen=True)
class Options:
    # The root device description; the LOCATION header of the router's SSDP answer, which
    # `upnpc -l` prints as "desc:".
    url: Annotated[str, Parser(parse_url)] | None = None
    discover_timeout: Duration = 1.0
    # Interface name or IPv4 address to send discovery from (miniupnpc's multicastif).
    interface: Annotated[str, Parser(parse_interface_name)] | None = None
    # Also subscribe to the router's events (upnp_events.py): a new ExternalIPAddress starts a
    # round at once. The router sends them to TCP `event_port` here (0: any free port).
    push: bool = True
    event_port: Annotated[int, Parser(parse_event_port)] = DEFAULT_EVENT_PORT
    event_timeout: Duration = 1800.0  # the subscription asked for; renewed at half of it


def parse_event_port(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ValueError(f"expected a port number from 0 (any) to 65535, got {value!r}")
    return value


def push_channel(options: Options, name: str, hint: Hint, changed: Changed) -> Channel | None:
    """The event subscription of this source, or None with `push = false`."""
    if not options.push:
        return None
    from ipwatch.sources import upnp_events

    return upnp_events.channel(options, name, hint, changed)


def serves(options: Options, family: Family) -> bool:
    """GetExternalIPAddress tells an IPv4 address only; IGD:2's IPv6 service reports none."""
    return family == "ipv4"


@dataclass
class _Worker:
    """One worker process and the last thing it said it was doing."""

    process: subprocess.Popen[bytes]
    progress: str = "starting"
    buffer: bytes = b""


# One worker per upnp source (by its options); the lock keeps each to one exchange at a time.
_workers: dict[Options, _Worker] = {}
_locks: dict[Options, threading.Lock] = {}
_locks_lock = threading.Lock()


def ask(options: Options, family: Family, timeout: float) -> str:
    """Return the external address the router reports; SourceError when it has none, cannot be
    found, or does not answer within `timeout`."""
    deadline = time.monotonic() + timeout
    with _locks_lock:
        lock = _locks.setdefault(options, threading.Lock())
    if not lock.acquire(timeout=timeout):
        raise SourceError(
            f"the last UPnP exchange is still running after {format_duration(timeout)}"
        )
    try:
        reply = _exchange(options, deadline, timeout)
    finally:
        lock.release()
    if "error" in reply:
        raise SourceError(str(reply["error"]))
    if "address" not in reply:
        raise NoPublicAddress(NO_EXTERNAL_ADDRESS)
    return str(reply["address"])


def _exchange(options: Options, deadline: float, timeout: float) -> dict[str, Any]:
    """Send one request to the options' worker and return its answer. At the deadline, or when
    the worker misbehaves, kill it (the next round starts a new one)."""
    worker = _workers.get(options)
    if worker is not None and worker.process.poll() is not None:
        _stop(options)  # it ended between rounds: reap it and start another
        worker = None
    if worker is None:
        try:
            worker = _workers[options] = _start()
        except OSError as error:
            raise SourceError(
                f"cannot start the UPnP worker process ({error.strerror}); see the system log"
            ) from None
    request = {"url": options.url, "discover_timeout": options.discover_timeout}
    request["interface"] = options.interface
    assert worker.process.stdin is not None
    try:
        worker.process.stdin.write(json.dumps(request).encode() + b"\n")
        worker.process.stdin.flush()
        while (message := _next_message(worker, deadline)) is not None:
            if "progress" not in message:
                return message
            worker.progress = str(message["progress"])
    except (OSError, ValueError) as error:
        _stop(options)
        return {"error": f"the UPnP worker process failed ({error}, {_ended(worker)})"}
    _stop(options)
    raise SourceError(f"no UPnP answer within {format_duration(timeout)} (still {worker.progress})")


def _start() -> _Worker:
    process = subprocess.Popen(
        [sys.executable, "-I", str(WORKER)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd="/",
    )
    assert process.stdout is not None
    os.set_blocking(process.stdout.fileno(), False)
    return _Worker(process)


def _next_message(worker: _Worker, deadline: float) -> dict[str, Any] | None:
    """The worker's next JSON line; None at the deadline. ValueError for a line that is not one."""
    stdout = worker.process.stdout
    assert stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(stdout.fileno(), selectors.EVENT_READ)
        while b"\n" not in worker.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not selector.select(left):
                return None
            chunk = os.read(stdout.fileno(), _MAX_LINE)
            if not chunk:
                raise ValueError("it ended")
            worker.buffer += chunk
            if len(worker.buffer) > _MAX_LINE:
                raise ValueError("an answer too long")
    line, _, worker.buffer = worker.buffer.partition(b"\n")
    message = json.loads(line)
    if not isinstance(message, dict):
        raise ValueError("not an answer")
    return message


def _ended(worker: _Worker) -> str:
    code = worker.process.poll()
    return "it was still running" if code is None else f"it ended with status {code}"


def _stop(options: Options) -> None:
    """Kill the options' worker and reap it: its exchange ends here, whatever the peer does."""
    worker = _workers.pop(options, None)
    if worker is None:
        return
    worker.process.kill()
    worker.process.wait()
    for stream in (worker.process.stdin, worker.process.stdout):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


@atexit.register
def _stop_all() -> None:
    for options in list(_workers):
        _stop(options)
