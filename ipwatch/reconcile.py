"""Bring Asterisk's files in line with the confirmed addresses: read, plan, write. The I/O edge.

`check`, `plan` and the daemon call these; the deciding is done by the pure plan.py/targets.py.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from ipwatch import hostnames, report, rounds
from ipwatch import state as state_file
from ipwatch.addresses import Family
from ipwatch.asterisk import control
from ipwatch.asterisk.conf import load_tree, read_optional_document
from ipwatch.asterisk.link import (
    AsteriskAuthError,
    AsteriskError,
    AsteriskPermissionError,
    AsteriskUnavailable,
    Link,
    open_link,
)
from ipwatch.asterisk.peer import AsteriskImpostor
from ipwatch.asterisk.targets import GENERATED_SIP, TargetPlan, dnsmgr_enabled
from ipwatch.config import AsteriskConfig, Config, TargetConfig
from ipwatch.decide import Decision
from ipwatch.errors import ApplyError, ConfigError, IpwatchError
from ipwatch.files import Applied, apply_changes, backup_path, clean_stale_temp_files, restore
from ipwatch.observe import observe
from ipwatch.plan import Loaded, Plan, make_plan
from ipwatch.secrets import ami_secret

STARTED = time.time()
# `status` turns WARNING into CRITICAL once Asterisk has run an old address for `drain` and this.
CRITICAL_MARGIN = 300.0
log = logging.getLogger("ipwatch")


def expand(target: TargetConfig) -> tuple[TargetConfig, ...]:
    """The targets a [[target]] stands for: a freepbx one is FreePBX's PJSIP files, and its
    chan_sip files where FreePBX writes them (sip_general_additional.conf exists)."""
    if target.kind != "freepbx":
        return (target,)
    directory = Path(target.dir)
    name = target.name or "freepbx"
    pjsip = replace(target, kind="pjsip", file=str(directory / "pjsip.conf"), name=name)
    parts = [replace(pjsip, freepbx=True)]
    if (directory / GENERATED_SIP).exists():
        sip = str(directory / "sip.conf")
        parts.append(replace(target, kind="chan_sip", file=sip, name=f"{name}-sip", freepbx=True))
    return tuple(parts)


def load(target: TargetConfig, asterisk_user: str | None = None) -> Loaded:
    """Read a target's files. Run as root, `asterisk_user` (asterisk.user) keeps ipwatch from
    reading or writing, on Asterisk's behalf, a file outside its directory that this user could
    not (see load_tree)."""
    top = Path(target.file)
    tree = load_tree(top, asterisk_user=asterisk_user)
    sorcery = (
        read_optional_document(top.parent / "sorcery.conf") if target.kind == "pjsip" else None
    )
    dnsmgr = dnsmgr_enabled(read_optional_document(top.parent / "dnsmgr.conf"))
    return Loaded(target, tree, sorcery, dnsmgr)


def confirmed(decisions: Mapping[Family, Decision]) -> dict[Family, str]:
    """The confirmed address of each family that has one."""
    return {
        f: d.tracking.address for f, d in decisions.items() if d.confirmed and d.tracking.address
    }


def plan(config: Config, addresses: Mapping[Family, str]) -> Plan:
    """What the targets' files must become for `addresses` (only confirmed ones are passed)."""
    return make_plan(
        [load(part, config.asterisk.user) for target in config.targets for part in expand(target)],
        addresses,
    )


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
    ask: bool = True,
) -> dict[str, Any]:
    """Compare the confirmed addresses with the files *and* with what Asterisk runs; with
    `write`, bring both in line: write the files, tell Asterisk, verify.

    "In sync" means Asterisk runs the address, not only that the files say it: files that are
    right while Asterisk still runs an old address (a reload lost, a hand edit reloaded, FreePBX
    regenerating) are not in sync, and `write` reloads without editing anything. A confirmed
    address ipwatch has not acted on yet is announced (`change`) before Asterisk is touched, the
    outcome after (`applied` or `error`). `progress` hears about a long drain (and may raise to
    cut it short). `ask=False` skips asking Asterisk (the daemon backs off while it is down).
    """
    started = time.time()
    addresses = confirmed(decisions)
    the_plan = plan(config, addresses)
    result = report.check_result(decisions, writer.current, the_plan)
    # What the targets say besides edits (FreePBX's own address, host names) is for `status`.
    writer.save({**writer.current, "notes": [n for t in the_plan.targets for n in t.notes]})
    fresh = _unannounced(decisions, writer.current)
    for family in decisions:
        result[family]["changed"] = family in fresh
    try:
        asterisk = Asterisk.of(config, the_plan.targets, ask) if addresses else None
    except ConfigError as error:
        # No secret: Asterisk cannot be asked, and `status` must not say OK meanwhile.
        unasked: dict[str, Any] = {
            "running": {"in_sync": None, "problems": [], "error": str(error)}
        }
        writer.save({**writer.current, "asterisk": _running_state(writer.current, unasked, config)})
        raise
    if asterisk is not None and (the_plan.in_sync or not write):
        result["running"] = asterisk.running()
        result["in_sync"] = the_plan.in_sync and result["running"]["in_sync"] is True
    names = hostnames.wanted(the_plan.targets, addresses) if asterisk is not None else []
    if write:
        if fresh:
            announce("change", fresh)
            writer.save(_announced(writer.current, fresh))
        # The DDNS update went out with `change`: Asterisk must not resolve before it landed.
        # A name that did not follow in an earlier run is looked up once, not waited for again.
        waits = any(w.host.family in fresh for w in names)
        resolved = _wait_for_names(names, config, writer, progress, waits)
        result["asterisk"] = _write_and_tell(the_plan, asterisk, result, writer, progress)
        refreshed = _refresh_names(asterisk, names, resolved, writer) if asterisk else []
        if result["asterisk"] is not None:
            _announce_outcome(announce, result["asterisk"], decisions)
    else:
        resolved = hostnames.resolve_all(names)
        refreshed = []
    if asterisk is None:
        if config.asterisk.control == "none" or not the_plan.targets:
            # Nothing to say about Asterisk any more: an old verdict must not linger in status.
            writer.save({k: v for k, v in writer.current.items() if k not in ("asterisk", "names")})
        return result
    _judge_names(result, names, resolved, refreshed, writer, config, started, waited=write)
    entry = _running_state(writer.current, result, config, addresses)
    writer.save({**writer.current, "asterisk": entry})
    return result


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0


def _wait_for_names(
    names: Sequence[hostnames.Wanted],
    config: Config,
    writer: StateWriter,
    progress: control.Progress | None,
    waits: bool,
) -> dict[str, frozenset[str]]:
    if not names or not waits:
        return hostnames.resolve_all(names)
    show = _progress_saver(writer, progress, "dns")
    resolved = hostnames.wait(names, hostnames.system_resolve, config.dns_wait, show)
    pending = writer.current.get("pending") or []
    if pending and str(pending[0]).startswith("dns: "):
        writer.save({**writer.current, "pending": []})
    return resolved


def _refresh_names(
    asterisk: Asterisk,
    names: Sequence[hostnames.Wanted],
    resolved: Mapping[str, frozenset[str]],
    writer: StateWriter,
) -> list[str]:
    """Make Asterisk resolve each PJSIP name again that now gives its address and has not been
    resolved again for it; chan_sip's `sip reload` came with telling Asterisk."""
    before = writer.current.get("names") or {}
    due = [
        w
        for w in names
        if w.by_pjsip
        and w.address in resolved.get(w.host.name, frozenset())
        and (before.get(w.host.name) or {}).get("refreshed") != w.address
    ]
    if not due or not asterisk.ask:
        return []
    done: list[str] = []
    try:
        link = asterisk.connect()
        try:
            for want in due:
                command = hostnames.refresh(link, want)
                log.info(
                    "asterisk: %s resolves to %s; ran `%s`", want.host.name, want.address, command
                )
                done.append(want.host.name)
        finally:
            link.close()
    except AsteriskError as error:
        log.error("asterisk: cannot make Asterisk resolve again: %s", error)
    return done


def _judge_names(
    result: dict[str, Any],
    names: Sequence[hostnames.Wanted],
    resolved: Mapping[str, frozenset[str]],
    refreshed: Sequence[str],
    writer: StateWriter,
    config: Config,
    started: float,
    *,
    waited: bool,
) -> None:
    """Record each name (an empty record once there are none) and judge it; a disagreement
    counts from when this run began, so a wait that ran out is already dns_wait old."""
    before = writer.current.get("names") or {}
    state = hostnames.record(before, names, resolved, refreshed, started, config.dns_wait)
    writer.save({**writer.current, "names": state})
    if not names:
        return
    problems = hostnames.judge(names, resolved, state)
    result["names"] = {"problems": problems, "waited": waited}
    if problems:
        result["in_sync"] = False
        for problem in problems if waited else ():
            log.error("dns: %s", problem)


def _write_and_tell(
    the_plan: Plan,
    asterisk: Asterisk | None,
    result: dict[str, Any],
    writer: StateWriter,
    progress: control.Progress | None,
) -> dict[str, Any] | None:
    """Apply the plan and make Asterisk take it; the `asterisk` part of the result, or None
    when there was nothing to do."""
    if the_plan.in_sync:
        running = result.get("running") or {}
        if asterisk is None or running.get("in_sync") is not False:
            if running.get("error"):
                return {"action": "pending", "verified": False, "error": running["error"]}
            if running.get("in_sync") and writer.current.get("pending"):
                # Asterisk took the files by itself (it was restarted meanwhile).
                log.info("asterisk: runs the new address now; nothing is pending")
                writer.save({**writer.current, "pending": []})
                return {"action": "none", "verified": True}
            return None
        if not asterisk.acts:
            return None  # apply = "none": reported (exit 1), left to the admin or a hook
        # The files are right and Asterisk runs something else: tell it, nothing to roll back.
        outcome = asterisk.tell(None, _progress_saver(writer, progress))
        result["in_sync"] = _took(outcome)
        writer.save({**writer.current, "pending": _pending(outcome, the_plan)})
        return outcome
    if asterisk is not None and not asterisk.acts:
        asterisk = None  # apply = "none": the files only
    refused = asterisk.preflight() if asterisk is not None else None
    if refused is not None:
        log.error("asterisk: %s", refused)
        return {"action": "none", "verified": False, "error": refused}
    applied = apply(the_plan, writer.state_dir)
    _log_edits(the_plan)
    result["applied"] = True
    if asterisk is None:
        return {"action": "none", "verified": False}
    outcome = asterisk.tell(applied, _progress_saver(writer, progress))
    writer.save({**writer.current, "pending": _pending(outcome, the_plan)})
    return outcome


def _progress_saver(
    writer: StateWriter, progress: control.Progress | None, what: str = "restart Asterisk"
) -> control.Progress:
    """A progress callback for a long wait (a drain, a DNS update) that logs each line and keeps
    it as pending in the state, so `ipwatch status` run meanwhile says why nothing happens."""

    def show_progress(line: str) -> None:
        log.info("%s: %s", what.split()[-1].lower(), line)
        writer.save({**writer.current, "pending": [f"{what}: {line}"]})
        if progress is not None:
            progress(line)

    return show_progress


def _unannounced(
    decisions: Mapping[Family, Decision], state: state_file.State
) -> dict[Family, Decision]:
    """Confirmed families whose address ipwatch has not acted on (`change`) yet.

    Only a run that writes moves the acted-on address: `check` and `plan` only observe, so the
    `check --apply` after them still raises `change` and runs the hooks that act on it.
    """
    families = state.get("families") or {}
    return {
        family: decision
        for family, decision in decisions.items()
        if decision.confirmed
        and (families.get(family) or {}).get("announced") != decision.tracking.address
    }


def _announced(state: state_file.State, fresh: Mapping[Family, Decision]) -> state_file.State:
    families = dict(state.get("families") or {})
    for family, decision in fresh.items():
        families[family] = {**(families.get(family) or {}), "announced": decision.tracking.address}
    return {**state, "families": families}


def _took(outcome: Mapping[str, Any]) -> bool:
    """Asterisk was told and took it: verified, or told with `verify = false`."""
    told = outcome.get("action") in ("reload", "restart")
    return bool(outcome.get("verified")) or (told and not outcome.get("error"))


def _running_state(
    state: state_file.State,
    result: Mapping[str, Any],
    config: Config,
    addresses: Mapping[Family, str] | None = None,
) -> dict[str, Any]:
    """What `ipwatch status` needs to know of Asterisk: in sync (on which addresses), behind
    (since when, and when that turns critical), or unknown because it could not be asked."""
    before = state.get("asterisk") or {}
    outcome = result.get("asterisk") or {}
    running = result.get("running") or {}
    now = time.time()
    if _took(outcome) or (running.get("in_sync") and not outcome.get("error")):
        return {
            "in_sync": True,
            "addresses": dict(addresses or {}),
            "checked": state_file.timestamp(now),
        }
    problems = running.get("problems") or []
    error = outcome.get("error") or running.get("error")
    if outcome.get("action") == "pending" or (not problems and not outcome.get("error")):
        since = before.get("since") if before.get("in_sync") is None else None
        return {
            "in_sync": None,
            "error": error,
            "since": since or state_file.timestamp(now),
            "checked": state_file.timestamp(now),
        }
    started = before.get("started") if before.get("in_sync") is False else None
    started = started or now
    return {
        "in_sync": False,
        "problems": problems or [error],
        "since": state_file.timestamp(started),
        "started": started,
        "critical_after": state_file.timestamp(started + config.asterisk.drain + CRITICAL_MARGIN),
        "checked": state_file.timestamp(now),
    }


def _announce_outcome(
    announce: Announce, asterisk: Mapping[str, Any], decisions: Mapping[Family, Decision]
) -> None:
    if asterisk.get("rolled_back"):
        announce("error", decisions, asterisk.get("error"))
    elif _took(asterisk) or (asterisk["action"] == "none" and not asterisk.get("error")):
        announce("applied", decisions)


@dataclass(frozen=True)
class Asterisk:
    """How to reach Asterisk for a set of targets, and what it must show."""

    settings: AsteriskConfig
    secret: str | None
    targets: tuple[TargetPlan, ...]
    # False while the daemon backs off from an unreachable Asterisk: it counts as unreachable.
    ask: bool = True

    @classmethod
    def of(cls, config: Config, targets: Sequence[TargetPlan], ask: bool = True) -> Asterisk | None:
        """None when ipwatch does not talk to Asterisk; a missing secret is a ConfigError now,
        before anything is written."""
        settings = config.asterisk
        if settings.control == "none" or not targets:
            return None
        secret = ami_secret(settings.ami.secret_file) if settings.control == "ami" else None
        return cls(settings, secret, tuple(targets), ask)

    @property
    def kinds(self) -> set[str]:
        return {target.kind for target in self.targets}

    def connect(self) -> Link:
        if not self.ask:
            raise AsteriskUnavailable("Asterisk was unreachable; asked again later")
        return open_link(self.settings, self.secret)

    @property
    def acts(self) -> bool:
        """Whether ipwatch reloads or restarts Asterisk (apply is not "none"); it asks anyway."""
        return self.settings.apply != "none"

    def live(self, link: Link) -> Asterisk:
        """These targets less those whose module this Asterisk has not loaded."""
        modules = {t.module for t in self.targets if t.module is not None}
        loaded = {module for module in modules if control.module_loaded(link, module)}
        kept = tuple(t for t in self.targets if t.module is None or t.module in loaded)
        return self if len(kept) == len(self.targets) else replace(self, targets=kept)

    def expected(self) -> dict[str, dict[str, dict[str, str]]]:
        merged: dict[str, dict[str, dict[str, str]]] = {}
        for target in self.targets:
            for section, values in target.expected.items():
                merged.setdefault(target.kind, {}).setdefault(section, {}).update(values)
        return merged

    def running(self) -> dict[str, Any]:
        """What Asterisk runs against what the files say: one read, no waiting."""
        try:
            link = self.connect()
            try:
                live = self.live(link)
                problems = [
                    problem
                    for kind, values in live.expected().items()
                    for problem in control.mismatches(link, kind, values)
                ]
                problems += live.unrestarted(link) if not problems else []
            finally:
                link.close()
        except AsteriskError as error:
            return {"in_sync": None, "problems": [], "error": f"cannot ask Asterisk: {error}"}
        return {"in_sync": not problems, "problems": problems, "error": None}

    def unrestarted(self, link: Link) -> list[str]:
        """PJSIP before 16.18 / 18.4 shows new external_* values after any reload but uses them
        only after a restart: there, the values shown are believed only if Asterisk started
        after the files last changed."""
        version = link.version()
        if "pjsip" not in self.kinds or control.pjsip_reload_applies(version):
            return []
        files = [f for t in self.targets if t.kind == "pjsip" for f in t.files]
        newest = max(files, key=_mtime, default=None)
        if newest is None or _mtime(newest) <= control.started_at(link):
            return []
        return [
            f"Asterisk {version} shows the files' values but uses them only after a restart, and"
            f" it has not restarted since {Path(newest).name} changed"
        ]

    def preflight(self) -> str | None:
        """Why telling Asterisk would fail after the write (a refused login, a missing
        privilege, an impostor on Asterisk's port or socket), or None. One rule: what can be
        found before writing leaves the files as they are. Asterisk not running is no such
        reason: it reads the new files when it starts, and the reload stays pending meanwhile."""
        try:
            link = self.connect()
            try:
                link.command("core show version", control.COMMAND_TIMEOUT)
            finally:
                link.close()
        except (AsteriskAuthError, AsteriskPermissionError, AsteriskImpostor) as error:
            return f"{error}; nothing was changed"
        except AsteriskError:
            pass
        return None

    def tell(self, applied: Applied | None, progress: control.Progress) -> dict[str, Any]:
        """Reload or restart Asterisk and verify; roll back `applied` if it rejects the files.

        Returns the `asterisk` part of the result: action "reload"/"restart", or "pending"
        when Asterisk cannot be reached (the files stay: they are right for when it starts).
        Without `applied` (only Asterisk was behind) there is nothing to roll back to.
        """
        try:
            link = self.connect()
        except AsteriskError as error:
            log.error("asterisk: %s; the reload stays pending", error)
            return {"action": "pending", "verified": False, "error": str(error)}
        try:
            live = self.live(link)
            teller = _Teller(self.connect, live.kinds, self.settings.drain, progress)
            action = control.choose_action(self.settings.apply, link.version(), teller.kinds)
        except AsteriskError as error:
            link.close()
            log.error("asterisk: %s; the reload stays pending", error)
            return {"action": "pending", "verified": False, "error": str(error)}
        try:
            link = teller.act(link, action)
            problems = control.settle(link, live.expected()) if self.settings.verify else []
            if problems:
                raise AsteriskError("; ".join(problems))
        except AsteriskError as error:
            if applied is None:
                reason = f"Asterisk does not show the new address ({error})"
                log.error("asterisk: %s", reason)
                return {"action": action, "verified": False, "error": reason}
            reason = f"Asterisk did not take the new address ({error}); the files were rolled back"
            try:
                restore(applied)
            except ApplyError as failed:  # a file rewritten meanwhile: Asterisk is told anyway
                reason = f"Asterisk did not take the new address ({error}); {failed}"
            teller.again(action, _old_values(live.targets))
            log.error("asterisk: %s", reason)
            return {"action": action, "verified": False, "rolled_back": True, "error": reason}
        finally:
            link.close()
        log.info(
            "asterisk: %s done, %s", action, "verified" if self.settings.verify else "not verified"
        )
        return {"action": action, "verified": self.settings.verify}


@dataclass(frozen=True)
class _Teller:
    """How to reach Asterisk and what to make it re-read."""

    connect: Callable[[], Link]
    kinds: set[str]
    drain: float
    progress: control.Progress

    def act(self, link: Link, action: str) -> Link:
        if action == "none":
            return link
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
                problems = control.settle(link, old)
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


def _pending(asterisk: Mapping[str, Any], the_plan: Plan) -> list[str]:
    if asterisk["action"] != "pending":
        return []
    files = ", ".join(str(change.path) for change in the_plan.changes)
    return [
        f"reload Asterisk: {files} changed" if files else "reload Asterisk: it runs an old address"
    ]


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
