"""Rounds: observe every family, decide, and summarise — shared by `check` and the daemon.

The I/O (asking sources, waiting between rounds) is passed in, so tests drive rounds with
scripted observations and no sleeps.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, replace
from typing import Any

from ipwatch.addresses import Family
from ipwatch.config import Config, SourceConfig
from ipwatch.decide import Decision, Observation, Policy, Tracking, decide

Observe = Callable[[Sequence[SourceConfig], Family], list[Observation]]
Sleep = Callable[[float], None]


def policy_of(config: Config) -> Policy:
    return Policy(quorum=config.quorum, confirm=config.confirm, accept=config.accept)


def tracking_from(state: Mapping[str, Any] | None, family: Family) -> Tracking:
    """The tracking saved for `family`, or an empty one."""
    entry = ((state or {}).get("families") or {}).get(family) or {}
    return Tracking(
        address=entry.get("address"),
        candidate=entry.get("candidate"),
        rounds=int(entry.get("candidate_rounds") or 0),
    )


def settle(
    config: Config,
    trackings: Mapping[Family, Tracking],
    observe: Observe,
    sleep: Sleep = time.sleep,
) -> dict[Family, Decision]:
    """Run up to `confirm` rounds, `fast_confirm` apart, until every family is confirmed.

    Each family starts from its known address with no candidate, so `check` always confirms a
    new address by itself instead of trusting a half-finished confirmation of an earlier run.
    """
    policy = policy_of(config)
    unsettled = {family: Tracking(address=trackings[family].address) for family in config.families}
    decisions: dict[Family, Decision] = {}
    for number in range(config.confirm):
        if number:
            sleep(config.fast_confirm)
        for family, tracking in list(unsettled.items()):
            decision = decide(family, observe(config.sources, family), tracking, policy)
            decisions[family] = decision
            if decision.confirmed:
                del unsettled[family]
            else:
                unsettled[family] = decision.tracking
        if not unsettled:
            break
    return decisions


def summary(decision: Decision) -> dict[str, Any]:
    """One family's decision as plain data, as the state file and `--json` both show it."""
    return {
        "address": decision.tracking.address,
        "confirmed": decision.confirmed,
        "agreement": decision.agreement,
        "candidate": decision.tracking.candidate,
        "candidate_rounds": decision.tracking.rounds,
        "hint": decision.hint,
        "sources": [asdict(verdict) for verdict in decision.verdicts],
    }


def answers(decision: Decision) -> str:
    """What each source said in the round, on one line: why a round found no quorum, in the log."""
    parts = []
    for verdict in decision.verdicts:
        if verdict.error:
            said = f"failed: {verdict.error}"
        elif verdict.rejected:
            said = f"{verdict.address} rejected: {verdict.rejected}"
        else:
            said = f"{verdict.address}"
        parts.append(f"{verdict.name} {said}")
    # Joined on whitespace: an error text from a server must not break the line in two.
    return " ".join("; ".join(parts).split()) or "no source can observe it"


class Backoff:
    """Ask a failing source less often: after n failures in a row it is asked again after
    `first` * 2^(n-1), at most `cap` (the next round, then 2, 4, 8 ... rounds of `first` later).
    Half a `first` (or 15 % of the wait) is allowed early, so the rounds' ±10 % jitter never
    skips one more. Meanwhile the source counts as failed, with its last error."""

    def __init__(self, first: float, cap: float) -> None:
        self.first = first
        self.cap = cap
        self._failures: dict[tuple[str, Family], int] = {}
        self._retry_at: dict[tuple[str, Family], float] = {}
        self._last_failure: dict[tuple[str, Family], Observation] = {}

    def split(
        self, sources: Sequence[SourceConfig], family: Family, now: float
    ) -> tuple[list[SourceConfig], list[Observation]]:
        """The sources to ask now, and an observation for each one still backing off."""
        due: list[SourceConfig] = []
        waiting: list[Observation] = []
        for source in sources:
            key = (source.name, family)
            if now < self._retry_at.get(key, now):
                # As the last failure, so a router's "no public address" keeps its NAT hint.
                last = self._last_failure[key]
                error = f"{last.error} (failing; asked again later)"
                waiting.append(replace(last, answer=None, latency_ms=None, error=error))
            else:
                due.append(source)
        return due, waiting

    def record(self, observations: Sequence[Observation], family: Family, now: float) -> None:
        for observation in observations:
            key = (observation.name, family)
            if observation.error is None:
                self._failures.pop(key, None)
                self._retry_at.pop(key, None)
                continue
            failures = self._failures.get(key, 0) + 1
            self._failures[key] = failures
            self._last_failure[key] = observation
            wait = min(self.cap, self.first * 2 ** (failures - 1))
            self._retry_at[key] = now + wait - max(self.first / 2, 0.15 * wait)
