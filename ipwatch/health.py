"""Small pieces of the daemon's memory, each with one concern: whether a family has a quorum,
when an unreachable Asterisk is asked again, and whether the step under way still progresses."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from ipwatch.addresses import Family
from ipwatch.decide import Decision

PENDING_RETRY_CAP = 900.0  # an unreachable Asterisk is asked at least every 15 minutes

Turn = tuple[Literal["degraded", "recovered"], Family, Decision]


class QuorumWatch:
    """`degraded` after `confirm` rounds in a row without a quorum; `recovered` after that."""

    def __init__(self) -> None:
        self.no_quorum: dict[Family, int] = {}
        self.degraded: set[Family] = set()

    def observe(self, decisions: Mapping[Family, Decision], confirm: int) -> list[Turn]:
        """The turns this round brought, to be logged and announced."""
        turns: list[Turn] = []
        for family, decision in decisions.items():
            if decision.winner is None:
                self.no_quorum[family] = self.no_quorum.get(family, 0) + 1
                if self.no_quorum[family] >= confirm and family not in self.degraded:
                    self.degraded.add(family)
                    turns.append(("degraded", family, decision))
            else:
                self.no_quorum[family] = 0
                if family in self.degraded:
                    self.degraded.discard(family)
                    turns.append(("recovered", family, decision))
        return turns


class AsteriskRetry:
    """Ask an unreachable Asterisk less often the longer it stays away (down for hours must not
    fill the journal): after `interval`, then twice as long each time, at most 15 minutes."""

    def __init__(self) -> None:
        self.wait = 0.0
        self.at = 0.0

    def due(self, now: float) -> bool:
        return now >= self.at

    def postpone(self, now: float, interval: float) -> None:
        self.wait = min(PENDING_RETRY_CAP, max(interval, 2 * self.wait))
        self.at = now + self.wait

    def clear(self) -> None:
        self.wait = self.at = 0.0


class Liveness:
    """Whether the step under way (a round, a hook, an Asterisk command) still makes progress:
    the watchdog ping stops when it has not for longer than systemd allows; and when the state
    file is due to say "still alive" again."""

    def __init__(self) -> None:
        self.busy_since: float | None = None
        self.last_progress = 0.0
        self.last_heartbeat = float("-inf")

    def begin(self, now: float) -> None:
        self.busy_since = self.last_progress = now

    def progressed(self, now: float) -> None:
        self.last_progress = now

    def end(self) -> None:
        self.busy_since = None

    def stalled(self, now: float, allowed: float) -> float | None:
        """Seconds without progress when a step has gone quiet for `allowed` or more, else None
        (no step under way is never stalled)."""
        quiet = now - self.last_progress
        if self.busy_since is None or quiet < allowed:
            return None
        return quiet

    def heartbeat_due(self, now: float, every: float) -> bool:
        """True (and counted as done) when the last heartbeat is `every` seconds old or more."""
        if now - self.last_heartbeat < every:
            return False
        self.last_heartbeat = now
        return True
