"""The daemon's push channels: started from the config, heard through one file descriptor.

Each natpmp, upnp or interface source with `push = true` brings a channel of its own
(sources/natpmp_push.py, upnp_events.py, interface_events.py), running in its own thread. They
all report here, and this object wakes the daemon's main loop through a socket pair: one byte
while something is unread, however many hints and status changes come meanwhile, so a flood
costs a counter and a few bytes, never a queue. The main loop then turns hints into rounds,
spaced by `Debounce`.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ipwatch.config import SourceConfig
from ipwatch.sources import kind_module

if TYPE_CHECKING:  # the channels' modules are imported only when a source has push on
    from ipwatch.sources.push import Channel

log = logging.getLogger("ipwatch")


@dataclass(frozen=True)
class News:
    """What the channels said since the last `take`."""

    hints: int  # how many
    reason: str | None  # the last one's
    status_changed: bool


class Pushes:
    def __init__(self) -> None:
        self.channels: list[Channel] = []
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)
        self._lock = threading.Lock()
        self._hints = 0
        self._reason: str | None = None
        self._status_changed = False
        self._signalled = False
        self.debounce = Debounce()  # spaces the rounds the hints start

    def fileno(self) -> int:
        return self._reader.fileno()

    def start(self, sources: Sequence[SourceConfig]) -> None:
        for source in sources:
            factory = getattr(kind_module(source.kind), "push_channel", None)
            channel = factory and factory(source.options, source.name, self._hint, self._changed)
            if channel is not None:
                self.channels.append(channel)
                channel.start()
        if self.channels:
            log.info("push: %s", ", ".join(f"{c.name} ({c.kind})" for c in self.channels))

    def stop(self) -> None:
        for channel in self.channels:
            channel.stop()
        self.channels = []

    def close(self) -> None:
        self.stop()
        self._reader.close()
        self._writer.close()

    def take(self) -> News:
        with contextlib.suppress(BlockingIOError):
            self._reader.recv(64)
        with self._lock:
            news = News(self._hints, self._reason, self._status_changed)
            self._hints, self._reason, self._status_changed = 0, None, False
            self._signalled = False
        return news

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Each channel's status, by source name, for the state file."""
        return {channel.name: channel.status().as_dict() for channel in self.channels}

    def recorded(self, state: dict[str, Any]) -> dict[str, Any]:
        """`state` with the channels' status as "push" (none without channels)."""
        channels = self.snapshot()
        if channels:
            return {**state, "push": channels}
        return {key: value for key, value in state.items() if key != "push"}

    def _hint(self, reason: str) -> None:
        with self._lock:
            self._hints += 1
            self._reason = reason
            self._wake()

    def _changed(self) -> None:
        with self._lock:
            self._status_changed = True
            self._wake()

    def _wake(self) -> None:
        if not self._signalled:
            self._signalled = True
            with contextlib.suppress(OSError):
                self._writer.send(b"!")


class Debounce:
    """Rounds started by hints come at most one per `spacing` (the config's `fast_confirm`):
    the first at once, later ones at the next free slot, and hints that find a round already
    scheduled add nothing. A router's burst of events (miniupnpd announces the old address
    when a new one is added, then the new one when the old is deleted) or a forged flood thus
    gives a round now and at most one more per `spacing`."""

    def __init__(self) -> None:
        self.last = float("-inf")
        self.scheduled: float | None = None

    def delay(self, now: float, spacing: float) -> float | None:
        """Seconds until the round this hint asks for; None when one is already scheduled."""
        if self.scheduled is not None and self.scheduled > now:
            return None
        at = max(now, self.last + spacing)
        self.last = self.scheduled = at
        return at - now
