"""Bring Asterisk's files in line with the confirmed addresses: read, plan, write. The I/O edge.

`check`, `plan` and the daemon call these; the deciding is done by the pure plan.py/targets.py.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ipwatch import report, rounds
from ipwatch import state as state_file
from ipwatch.addresses import Family
from ipwatch.asterisk import control
from ipwatch.asterisk.conf import Document, load_tree
from ipwatch.asterisk.link import AsteriskError, Link, open_link
from ipwatch.config import Config, TargetConfig
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


def check(config: Config, state_dir: Path, *, write: bool) -> dict[str, Any]:
    """One full `check`: confirm the addresses, record them, plan, and with `write` apply.

    Returns the SPEC.md result object. ApplyError propagates when a file cannot be written (the
    files are then as they were); Asterisk's rejection is reported in the result instead.
    """
    saved = _load_state(state_dir)
    writer = _StateWriter(state_dir, saved)
    trackings = {family: rounds.tracking_from(saved, family) for family in config.families}
    decisions = rounds.settle(config, trackings, observe)
    state = saved or state_file.empty()
    for family, decision in decisions.items():
        state = state_file.record_round(state, family, rounds.summary(decision), time.time())
        if decision.changed:
            log.info(
                "%s %s -> %s (%s sources)",
                family,
                decision.previous or "-",
                decision.winner,
                decision.agreement,
            )
    writer.save(state)  # what was observed stands even if planning fails
    addresses = {
        f: d.tracking.address for f, d in decisions.items() if d.confirmed and d.tracking.address
    }
    the_plan = plan(config, addresses)
    result = report.check_result(decisions, state, the_plan)
    if write and not the_plan.in_sync:
        applied = apply(the_plan, state_dir)
        _log_edits(the_plan)
        result["applied"] = True

        def show_progress(line: str) -> None:
            # `ipwatch status` run meanwhile says why nothing seems to happen.
            log.info("asterisk: %s", line)
            writer.save({**state, "pending": [f"restart Asterisk: {line}"]})

        result["asterisk"] = tell_asterisk(config, the_plan, applied, show_progress)
        state = {**state, "pending": _pending(result["asterisk"], the_plan)}
    writer.save(state)
    return result


def tell_asterisk(
    config: Config, the_plan: Plan, applied: Applied, progress: control.Progress
) -> dict[str, Any]:
    """Reload or restart Asterisk for the written files and verify; roll back if it rejects them.

    Returns the `asterisk` part of the result: action "reload"/"restart"/"none", or "pending"
    when Asterisk cannot be reached (the files stay: they are right for when it starts).
    """
    settings = config.asterisk
    if settings.control == "none" or settings.apply == "none":
        return {"action": "none", "verified": False}
    secret = ami_secret(settings.ami.secret_file) if settings.control == "ami" else None
    teller = _Teller(
        connect=lambda: open_link(settings, secret),
        kinds={target.kind for target in the_plan.targets if not target.in_sync},
        drain=settings.drain,
        progress=progress,
    )
    try:
        link = teller.connect()
        action = control.choose_action(settings.apply, link.version(), teller.kinds)
    except AsteriskError as error:
        log.error("asterisk: %s; the reload stays pending", error)
        return {"action": "pending", "verified": False, "error": str(error)}
    try:
        link = teller.act(link, action)
        problems = _problems(link, the_plan) if settings.verify else []
        if problems:
            raise AsteriskError("; ".join(problems))
    except AsteriskError as error:
        restore(applied)
        teller.again(action, _old_values(the_plan))
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


def _old_values(the_plan: Plan) -> dict[str, dict[str, dict[str, str]]]:
    """kind -> section -> key -> the value each edit replaced (added keys had none)."""
    old: dict[str, dict[str, dict[str, str]]] = {}
    for target in the_plan.targets:
        for edit in target.edits:
            for section in edit.affects if edit.old is not None else ():
                values = old.setdefault(target.kind, {}).setdefault(section, {})
                values[edit.key] = control.host_of(edit.old or "")
    return old


def _problems(link: Link, the_plan: Plan) -> list[str]:
    return [
        problem
        for target in the_plan.targets
        if not target.in_sync
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


def _load_state(state_dir: Path) -> state_file.State | None:
    try:
        return state_file.load(state_dir)
    except IpwatchError as error:
        log.warning("%s", error)
        return None


class _StateWriter:
    """Saves the state when it changed since the last save; a failure is a warning, not fatal."""

    def __init__(self, state_dir: Path, saved: state_file.State | None) -> None:
        self.state_dir = state_dir
        self.saved = saved

    def save(self, state: state_file.State) -> None:
        try:
            state_file.save_if_changed(self.state_dir, state, self.saved)
        except IpwatchError as error:
            log.warning("%s", error)
            return
        self.saved = state
