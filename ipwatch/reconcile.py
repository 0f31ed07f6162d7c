"""Bring Asterisk's files in line with the confirmed addresses: read, plan, write. The I/O edge.

`check`, `plan` and the daemon call these; the deciding is done by the pure plan.py/targets.py.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ipwatch import report, rounds
from ipwatch import state as state_file
from ipwatch.addresses import Family
from ipwatch.asterisk import control
from ipwatch.asterisk.conf import Document, load_tree
from ipwatch.asterisk.link import AsteriskError, Link, open_link
from ipwatch.asterisk.targets import TargetPlan
from ipwatch.config import Config, TargetConfig
from ipwatch.decide import Decision
from ipwatch.errors import IpwatchError
from ipwatch.files import Applied, apply_changes, backup_path, clean_stale_temp_files, restore
from ipwatch.observe import observe
from ipwatch.plan import Loaded, Plan, make_plan
from ipwatch.secrets import ami_secret

STARTED = time.time()
log = logging.getLogger("ipwatch")


def load(target: TargetConfig) -> Loaded:
    top = Path(target.file)
    sorcery = top.parent / "sorcery.conf"
    sorcery_document = (
        Document.parse(sorcery.read_bytes(), str(sorcery)) if sorcery.is_file() else None
    )
    return Loaded(target, load_tree(top), sorcery_document if target.kind == "pjsip" else None)


def confirmed(decisions: Mapping[Family, Decision]) -> dict[Family, str]:
    """The confirmed address of each family that has one."""
    return {
        f: d.tracking.address for f, d in decisions.items() if d.confirmed and d.tracking.address
    }


def plan(config: Config, addresses: Mapping[Family, str]) -> Plan:
    """What the targets' files must become for `addresses` (only confirmed ones are passed)."""
    return make_plan([load(target) for target in config.targets], addresses)


def apply(plan: Plan, state_dir: Path) -> Applied:
    """Write the plan's files all-or-nothing, keeping the previous versions in STATE_DIR/backups."""
    backups = state_dir / "backups"
    for change in plan.changes:
        # A SIGKILL between writing a temp file and renaming it leaves the temp file behind.
        real = Path(os.path.realpath(change.path))
        clean_stale_temp_files(real.parent, STARTED)
        clean_stale_temp_files(backup_path(backups, real).parent, STARTED)
    return apply_changes(plan.changes, backups)


class Announce(Protocol):
    """Raises an event (hooks, DDNS) about the families in `decisions`; see ipwatch.events."""

    def __call__(
        self, event: str, decisions: Mapping[Family, Decision], error: str | None = None
    ) -> None: ...


def silent(event: str, decisions: Mapping[Family, Decision], error: str | None = None) -> None:
    """`check` without --apply and `plan` tell nobody."""


def check(
    config: Config, writer: StateWriter, *, write: bool, announce: Announce = silent
) -> dict[str, Any]:
    """One full `check`: confirm the addresses, record them, plan, and with `write` apply.

    Returns the SPEC.md result object. ApplyError propagates when a file cannot be written (the
    files are then as they were); Asterisk's rejection is reported in the result instead.
    """
    trackings = {family: rounds.tracking_from(writer.saved, family) for family in config.families}
    decisions = rounds.settle(config, trackings, observe)
    writer.save(record(writer.current, decisions, time.time()))
    # What was observed stands even if planning fails.
    return converge(config, decisions, writer, write=write, announce=announce)


def record(
    state: state_file.State, decisions: Mapping[Family, Decision], now: float
) -> state_file.State:
    """`state` with each family's round recorded; a confirmed change is logged."""
    for family, decision in decisions.items():
        state = state_file.record_round(state, family, rounds.summary(decision), now)
        if decision.changed:
            log.info(
                "%s %s -> %s (%s sources)",
                family,
                decision.previous or "-",
                decision.winner,
                decision.agreement,
            )
    return state


def converge(
    config: Config,
    decisions: Mapping[Family, Decision],
    writer: StateWriter,
    *,
    write: bool,
    announce: Announce = silent,
    progress: control.Progress | None = None,
) -> dict[str, Any]:
    """Plan the targets for the confirmed addresses and, with `write`, apply and tell Asterisk.

    A confirmed change is announced (`change`) before Asterisk is touched, the outcome after
    (`applied` or `error`). `progress` hears about a long drain (and may raise to cut it short).
    """
    addresses = confirmed(decisions)
    the_plan = plan(config, addresses)
    result = report.check_result(decisions, writer.current, the_plan)
    changed = {family: d for family, d in decisions.items() if d.changed and d.confirmed}
    if write and changed:
        announce("change", changed)
    if write and not the_plan.in_sync:
        applied = apply(the_plan, writer.state_dir)
        _log_edits(the_plan)
        result["applied"] = True

        def show_progress(line: str) -> None:
            # `ipwatch status` run meanwhile says why nothing seems to happen.
            log.info("asterisk: %s", line)
            writer.save({**writer.current, "pending": [f"restart Asterisk: {line}"]})
            if progress is not None:
                progress(line)

        stale = [target for target in the_plan.targets if not target.in_sync]
        result["asterisk"] = tell_asterisk(config, stale, applied, show_progress)
        writer.save({**writer.current, "pending": _pending(result["asterisk"], the_plan)})
        _announce_outcome(announce, result["asterisk"], decisions)
    return result


def _announce_outcome(
    announce: Announce, asterisk: Mapping[str, Any], decisions: Mapping[Family, Decision]
) -> None:
    if asterisk.get("rolled_back"):
        announce("error", decisions, asterisk.get("error"))
    elif asterisk.get("verified") or asterisk["action"] == "none":
        announce("applied", decisions)


def retry_pending(
    config: Config,
    decisions: Mapping[Family, Decision],
    writer: StateWriter,
    progress: control.Progress,
) -> dict[str, Any] | None:
    """Tell Asterisk about files written while it could not be reached; None if nothing pends."""
    addresses = confirmed(decisions)
    if not writer.current.get("pending") or not addresses:
        return None
    the_plan = plan(config, addresses)
    if not the_plan.in_sync:
        return None  # the round's own apply tells Asterisk
    asterisk = tell_asterisk(config, the_plan.targets, None, progress)
    if asterisk["action"] != "pending":
        writer.save({**writer.current, "pending": []})
    return asterisk


def tell_asterisk(
    config: Config,
    targets: Sequence[TargetPlan],
    applied: Applied | None,
    progress: control.Progress,
) -> dict[str, Any]:
    """Reload or restart Asterisk for `targets`' files and verify; roll back if it rejects them.

    Returns the `asterisk` part of the result: action "reload"/"restart"/"none", or "pending"
    when Asterisk cannot be reached (the files stay: they are right for when it starts). Without
    `applied` (a retry of a pending reload) there is nothing to roll back to.
    """
    settings = config.asterisk
    if settings.control == "none" or settings.apply == "none":
        return {"action": "none", "verified": False}
    secret = ami_secret(settings.ami.secret_file) if settings.control == "ami" else None
    teller = _Teller(
        connect=lambda: open_link(settings, secret),
        kinds={target.kind for target in targets},
        drain=settings.drain,
        progress=progress,
    )
    try:
        link = teller.connect()
        action = control.choose_action(settings.apply, link.version(), teller.kinds)
        if applied is None and settings.verify and not _problems(link, targets):
            # A retry, and Asterisk already runs on the new values (it restarted meanwhile).
            link.close()
            return {"action": "none", "verified": True}
    except AsteriskError as error:
        log.error("asterisk: %s; the reload stays pending", error)
        return {"action": "pending", "verified": False, "error": str(error)}
    try:
        link = teller.act(link, action)
        problems = _problems(link, targets) if settings.verify else []
        if problems:
            raise AsteriskError("; ".join(problems))
    except AsteriskError as error:
        if applied is None:
            reason = f"Asterisk does not show the new address ({error})"
            log.error("asterisk: %s", reason)
            return {"action": action, "verified": False, "error": reason}
        restore(applied)
        teller.again(action, _old_values(targets))
        reason = f"Asterisk did not take the new address ({error}); the files were rolled back"
        log.error("asterisk: %s", reason)
        return {"action": action, "verified": False, "rolled_back": True, "error": reason}
    finally:
        link.close()
    log.info("asterisk: %s done, %s", action, "verified" if settings.verify else "not verified")
    return {"action": action, "verified": settings.verify}


@dataclass(frozen=True)
class _Teller:
    """How to reach Asterisk and what to make it re-read."""

    connect: Callable[[], Link]
    kinds: set[str]
    drain: float
    progress: control.Progress

    def act(self, link: Link, action: str) -> Link:
        if action == "reload":
            control.reload(link, self.kinds)
            return link
        link.close()
        return control.drain_and_restart(self.connect, self.drain, self.progress)

    def again(self, action: str, old: Mapping[str, Mapping[str, Mapping[str, str]]]) -> None:
        """After a roll-back: make Asterisk re-read the restored files, and check it shows `old`."""
        try:
            link = self.act(self.connect(), action)
            try:
                problems = [
                    p
                    for kind, values in old.items()
                    for p in control.mismatches(link, kind, values)
                ]
            finally:
                link.close()
        except AsteriskError as error:
            problems = [str(error)]
        for problem in problems:
            log.error("asterisk: after rolling back the files: %s", problem)


def _old_values(targets: Sequence[TargetPlan]) -> dict[str, dict[str, dict[str, str]]]:
    """kind -> section -> key -> the value each edit replaced (added keys had none)."""
    old: dict[str, dict[str, dict[str, str]]] = {}
    for target in targets:
        for edit in target.edits:
            for section in edit.affects if edit.old is not None else ():
                values = old.setdefault(target.kind, {}).setdefault(section, {})
                values[edit.key] = control.host_of(edit.old or "")
    return old


def _problems(link: Link, targets: Sequence[TargetPlan]) -> list[str]:
    return [
        problem
        for target in targets
        for problem in control.mismatches(link, target.kind, target.expected)
    ]


def _pending(asterisk: Mapping[str, Any], the_plan: Plan) -> list[str]:
    if asterisk["action"] != "pending":
        return []
    files = ", ".join(str(change.path) for change in the_plan.changes)
    return [f"reload Asterisk: {files} changed"]


def _log_edits(the_plan: Plan) -> None:
    for target in the_plan.targets:
        for edit in target.edits:
            log.info(
                "%s: %s %s %s -> %s",
                Path(edit.file).name,
                edit.section,
                edit.key,
                edit.old if edit.old is not None else "(added)",
                edit.new,
            )


class StateWriter:
    """Holds the current state and saves it when it changed; a failed save is a warning only."""

    def __init__(self, state_dir: Path, saved: state_file.State | None) -> None:
        self.state_dir = state_dir
        self.saved = saved
        self.current = saved or state_file.empty()

    @classmethod
    def open(cls, state_dir: Path) -> StateWriter:
        try:
            return cls(state_dir, state_file.load(state_dir))
        except IpwatchError as error:
            log.warning("%s", error)
            return cls(state_dir, None)

    def save(self, state: state_file.State, *, force: bool = False) -> None:
        self.current = state
        try:
            state_file.save_if_changed(self.state_dir, state, None if force else self.saved)
        except IpwatchError as error:
            log.warning("%s", error)
            return
        self.saved = state
