"""What the push channels share: a thread per channel, its status, and how it fails.

A push channel (natpmp_push.py, upnp_events.py, interface_events.py) listens for the router's
or the kernel's own word that the address changed. What it hears is a *hint*: the channel calls
`hint(reason)` and the daemon starts a round at once, in which every source is asked and quorum
and `confirm` apply as always. So a forged announcement can make ipwatch look, never apply.

Each channel runs in a thread of its own, blocked in select() on its socket and a stop pipe, so
stopping is immediate and nothing polls. A channel that fails (its socket cannot be opened, the
router refuses the subscription) tries again with a growing pause, and after FAILING_AFTER
failures in a row says so with one WARNING: ipwatch then relies on polling every `interval`
until the channel works again. A channel never raises into the daemon.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

from ipwatch.errors import SourceError

log = logging.getLogger("ipwatch")

Hint = Callable[[str], None]  # called from the channel's thread with a one-line reason
Changed = Callable[[], None]  # the channel's status changed (for the state file)

FAILING_AFTER = 3  # failures in a row before the channel counts as down (one WARNING)
FIRST_PAUSE = 1.0  # seconds before the first retry; doubling up to MAX_PAUSE
MAX_PAUSE = 300.0


class ChannelError(Exception):
    """One sentence: why the channel cannot listen (or stopped listening) right now."""


@dataclass(frozen=True)
class ChannelStatus:
    """What `ipwatch status` shows of one channel; times are UTC stamps as in the state file."""

    kind: str  # "natpmp", "upnp", "netlink"
    state: str = "starting"  # "listening", "subscribed", "retrying", "failing"
    detail: str = ""  # where it listens, whom it is subscribed to
    sid: str | None = None  # UPnP only
    expires: str | None = None  # UPnP only: when the subscription runs out unless renewed
    events: int = 0  # events taken as hints
    last_event: str | None = None
    last_event_at: str | None = None
    ignored: int = 0  # datagrams or requests refused (wrong sender, malformed, PCP, ...)
    last_ignored: str | None = None
    failures: int = 0  # in a row; 0 while the channel works
    last_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, "")}


class Channel:
    """A listening thread; subclasses implement `serve`, which blocks until `stopping` is set
    (return) or the channel fails (raise ChannelError or OSError)."""

    kind = "push"

    def __init__(self, name: str, hint: Hint, changed: Changed) -> None:
        self.name = name
        self._hint = hint
        self._changed = changed
        self._lock = threading.Lock()
        self._status = ChannelStatus(self.kind)
        self.stopping = threading.Event()
        self._stop_reader, self._stop_writer = os.pipe()
        self._thread = threading.Thread(target=self._run, name=f"push-{name}", daemon=True)

    # --- for the daemon ----------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self.stopping.set()
        with contextlib.suppress(OSError):
            os.write(self._stop_writer, b"x")
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._thread.is_alive():
            # Still in an exchange with the router (its timeouts end it soon): closing the pipe
            # now could hand its numbers to another socket the thread would then select on.
            return
        for fd in (self._stop_reader, self._stop_writer):
            with contextlib.suppress(OSError):
                os.close(fd)

    def status(self) -> ChannelStatus:
        with self._lock:
            return self._status

    # --- for subclasses ----------------------------------------------------------------

    def serve(self) -> None:
        raise NotImplementedError

    def wait_readable(self, fd: int, timeout: float | None) -> bool:
        """Wait until `fd` is readable (True), `timeout` passes or a stop comes (False)."""
        if self.stopping.is_set():
            return False
        ready, _, _ = select.select([fd, self._stop_reader], [], [], timeout)
        return fd in ready and not self.stopping.is_set()

    def pause(self, seconds: float) -> None:
        """Sleep `seconds` unless a stop comes first (a retry's pause, not a synchronisation)."""
        select.select([self._stop_reader], [], [], seconds)

    def update(self, **changes: Any) -> None:
        """Change the status; the daemon hears of it when the state (listening, ...) changed."""
        with self._lock:
            before = self._status
            self._status = replace(before, **changes)
            noteworthy = (before.state, before.sid, before.expires) != (
                self._status.state,
                self._status.sid,
                self._status.expires,
            )
        if noteworthy:
            self._changed()

    def working(self, state: str, detail: str) -> None:
        """The channel listens (again); say so once if it had been counted as down."""
        if self.status().failures >= FAILING_AFTER:
            log.info("push %s: %s again (%s)", self.name, state, detail)
        self.update(state=state, detail=detail, failures=0)

    def event(self, reason: str) -> None:
        """A hint: the address may have changed."""
        with self._lock:
            self._status = replace(
                self._status,
                events=self._status.events + 1,
                last_event=reason,
                last_event_at=stamp(),
            )
        self._hint(f"{self.name}: {reason}")

    def ignore(self, reason: str) -> None:
        """Something arrived that is no hint (a stranger, a malformed datagram): count it."""
        log.debug("push %s: ignored %s", self.name, reason)
        with self._lock:
            self._status = replace(
                self._status, ignored=self._status.ignored + 1, last_ignored=reason
            )

    # --- the thread --------------------------------------------------------------------

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.serve()
            except (ChannelError, SourceError, OSError) as error:
                self._failed(_sentence(error))
            except Exception as error:  # a bug here must not end the daemon
                log.exception("push %s: internal error", self.name)
                self._failed(f"internal error: {type(error).__name__}: {error}")
            else:
                continue
            if self.stopping.is_set():
                return
            failures = self.status().failures
            self.pause(min(MAX_PAUSE, FIRST_PAUSE * 2 ** (failures - 1)))

    def _failed(self, error: str) -> None:
        failures = self.status().failures + 1
        state = "failing" if failures >= FAILING_AFTER else "retrying"
        if failures == FAILING_AFTER:
            log.warning("push %s: %s; relying on polling until it works again", self.name, error)
        else:
            log.info("push %s: %s; trying again", self.name, error)
        self.update(state=state, failures=failures, last_error=error, sid=None, expires=None)


def stamp(seconds: float | None = None) -> str:
    """`seconds` (default: now) as the state file writes times."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _sentence(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__
