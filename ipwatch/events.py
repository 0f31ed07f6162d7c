"""Events: tell the hooks (and, on a change, the DDNS updaters) what happened.

`check --apply` and the daemon raise the same events at the same points (reconcile.converge):
`change` before Asterisk is touched, then `applied` or `error`; the daemon adds `degraded` and
`recovered`. A hook that exits 75 (EX_TEMPFAIL) is run again for the same event at the next
round; the events still owed are kept in the state file, so a restart does not forget them.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from ipwatch import state as state_file
from ipwatch.addresses import FAMILIES, Family
from ipwatch.config import Config
from ipwatch.decide import Decision
from ipwatch.hooks import Event, EventName, run_hooks
from ipwatch.reconcile import StateWriter

log = logging.getLogger("ipwatch")

MAX_RETRIES = 10


class Announcer:
    """Raises events for one config; callable as reconcile.Announce."""

    def __init__(
        self, config: Config, writer: StateWriter, alive: Callable[[], None] | None = None
    ) -> None:
        self.config = config
        self.writer = writer
        self.alive = alive  # called before each hook and DDNS pass: progress for the watchdog

    def __call__(
        self, event: str, decisions: Mapping[Family, Decision], error: str | None = None
    ) -> None:
        if event == "change":
            self.update_ddns()
        owed = [
            entry
            for hook_event in events_for(event, decisions, self.writer.current, error)
            if (entry := self._run(hook_event, None, tries=0)) is not None
        ]
        if owed:
            self._owe([*(self.writer.current.get("retry_hooks") or []), *owed])

    def retry_hooks(self) -> None:
        """Run again the hooks that asked for it (exit 75) at an earlier round, at most
        MAX_RETRIES times each: a hook that always says "later" must not run for ever."""
        owed = self.writer.current.get("retry_hooks") or []
        if not owed:
            return
        still = []
        for entry in owed:
            tries = int(entry.get("tries", 0)) + 1
            again = self._run(_event_from_json(entry["event"]), set(entry["hooks"]), tries)
            if again is None:
                continue
            if tries >= MAX_RETRIES:
                log.error(
                    "hook %s: still asking to be run again for %s after %d tries; given up",
                    ", ".join(again["hooks"]),
                    entry["event"].get("name"),
                    tries,
                )
                continue
            still.append(again)
        self._owe(still)

    def update_ddns(self) -> None:
        """Bring the DDNS records to the confirmed addresses; results go to the state file.

        Called at every round: the runner asks a provider only when an address changed, a
        failed update is due again, or a recheck is due, so most calls send nothing."""
        state = self.writer.current
        addresses = confirmed_addresses(state)
        if not self.config.ddns or not addresses:
            return
        from ipwatch.ddns import run_updaters

        if self.alive is not None:
            self.alive()

        results, memory = run_updaters(
            self.config.ddns, addresses, state.get("ddns") or {}, time.time()
        )
        shown = dict(state.get("ddns_status") or {})
        for result in results:
            if result.status != "skipped":  # a wait keeps the outcome that caused it on show
                shown[result.name] = {"status": result.status, "message": result.message}
        kept = {name: shown[name] for name in memory if name in shown}
        self.writer.save({**self.writer.current, "ddns": memory, "ddns_status": kept})

    def _run(self, event: Event, only: set[str] | None, tries: int) -> dict[str, Any] | None:
        """Run the hooks; return what is owed to those that exited 75, or None."""
        results = run_hooks(
            self.config.hooks, event, self.config.path, only=only, before_each=self.alive
        )
        again = [result.name for result in results if result.status == "tempfail"]
        if not again:
            return None
        return {"event": dataclasses.asdict(event), "hooks": again, "tries": tries}

    def _owe(self, owed: list[dict[str, Any]]) -> None:
        self.writer.save({**self.writer.current, "retry_hooks": owed})


def confirmed_addresses(state: state_file.State) -> dict[Family, str]:
    families = state.get("families") or {}
    return {
        family: entry["address"]
        for family in FAMILIES
        if (entry := families.get(family)) and entry.get("address") and entry.get("confirmed")
    }


def events_for(
    name: str,
    decisions: Mapping[Family, Decision],
    state: state_file.State,
    error: str | None = None,
) -> list[Event]:
    """One event per family in `decisions`, with every family's old and new address."""
    known = {family: (state.get("families") or {}).get(family) or {} for family in FAMILIES}
    events = []
    for family, decision in decisions.items():
        addresses: dict[str, Any] = {}
        for other in FAMILIES:
            current = known[other].get("address")
            addresses[f"old_{other}"] = addresses[f"new_{other}"] = current
        change = state_file.last_change(state, family) or {}
        if name == "change" and decision.changed:
            addresses[f"old_{family}"] = decision.previous
        elif name in ("applied", "error") and change:
            addresses[f"old_{family}"] = change.get("old")
        elif name == "degraded":
            addresses[f"new_{family}"] = None
        sources = tuple((v.name, v.address) for v in decision.verdicts if v.address is not None)
        events.append(
            Event(
                name=_event_name(name),
                family=family,
                sources=sources,
                error=error,
                **addresses,
            )
        )
    return events


def _event_name(name: str) -> EventName:
    if name not in ("change", "applied", "error", "degraded", "recovered", "test"):
        raise ValueError(f"unknown event {name!r}")
    return name  # type: ignore[return-value]


def _event_from_json(raw: Mapping[str, Any]) -> Event:
    return Event(**{**raw, "sources": tuple(tuple(pair) for pair in raw.get("sources") or ())})
