"""`ipwatch status`: read the state file and judge it the way a Nagios check does.

Reads only the state file (json, os, time), so it answers in milliseconds and works whether or
not the daemon runs.
"""

from __future__ import annotations

import calendar
import os
import time
from typing import Any

from ipwatch import push_report
from ipwatch.addresses import FAMILIES

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
LABELS = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}


def evaluate(state: dict[str, Any] | None, state_dir: str) -> dict[str, Any]:
    """Return the `status --json` object: the state plus a verdict and the problems behind it.

    A state file of the wrong shape (edited by hand, or planted by whoever may write the state
    directory) is UNKNOWN: Nagios' verdict for a check that cannot judge, never a crash.
    """
    try:
        result = _evaluate(state, state_dir)
        format_status(result)  # what the text form prints must come out of it too
    except (AttributeError, KeyError, TypeError, ValueError):
        problem = f"{state_dir}/state.json is damaged; move it away and run `ipwatch check` again"
        return {"status": LABELS[UNKNOWN], "exit": UNKNOWN, "problems": [problem], "daemon": None}
    return result


def _evaluate(state: dict[str, Any] | None, state_dir: str) -> dict[str, Any]:
    if state is None:
        problem = f"no state in {state_dir} yet; run `ipwatch check` or start the daemon"
        return {"status": LABELS[UNKNOWN], "exit": UNKNOWN, "problems": [problem], "daemon": None}
    problems: list[tuple[int, str]] = []
    families = state.get("families") or {}
    for family in FAMILIES:
        entry = families.get(family)
        if entry is not None:
            problems += _family_problems(family, entry)
    problems += [(WARNING, f"pending: {action}") for action in state.get("pending") or []]
    for name, outcome in sorted((state.get("ddns_status") or {}).items()):
        if outcome.get("status") in ("failed", "blocked"):
            problems.append((WARNING, f"ddns {name} {outcome['status']}: {outcome['message']}"))
    problems += [
        (
            WARNING,
            f"hook {', '.join(owed['hooks'])} asked to be run again for"
            f" {owed['event'].get('name')}",
        )
        for owed in state.get("retry_hooks") or []
    ]
    problems += _asterisk_problems(state.get("asterisk"), families, time.time())
    problems += [
        (WARNING, f"dns: {text}") for text in _name_problems(state.get("names"), time.time())
    ]
    daemon = _daemon(state.get("daemon"))
    if daemon is not None:
        problems += _daemon_problems(daemon, time.time())
        if daemon["alive"]:  # a stopped daemon's channels are stopped too
            problems += push_report.problems(state.get("push"))
    level = max((level for level, _ in problems), default=OK)
    return {
        "status": LABELS[level],
        "exit": level,
        "problems": [text for _, text in problems],
        **{family: families.get(family) for family in FAMILIES},
        "changes": state.get("changes") or [],
        "pending": state.get("pending") or [],
        "asterisk": state.get("asterisk"),
        "notes": state.get("notes") or [],
        "daemon": daemon,
        "push": state.get("push") or {},
        "updated": state.get("updated"),
    }


def _family_problems(family: str, entry: dict[str, Any]) -> list[tuple[int, str]]:
    problems: list[tuple[int, str]] = []
    if entry.get("address") is None:
        problems.append((CRITICAL, f"{family}: no confirmed address"))
    elif not entry.get("confirmed"):
        what = f"candidate {entry['candidate']}" if entry.get("candidate") else "no quorum"
        problems.append(
            (WARNING, f"{family}: last round did not confirm {entry['address']} ({what})")
        )
    for source in entry.get("sources") or []:
        if source.get("error"):
            problems.append(
                (WARNING, f"{family}: source {source['name']} failed: {source['error']}")
            )
        elif source.get("rejected"):
            problems.append(
                (WARNING, f"{family}: source {source['name']} rejected: {source['rejected']}")
            )
    if entry.get("hint"):
        problems.append((WARNING, f"{family}: {entry['hint']}"))
    return problems


def _asterisk_problems(
    asterisk: Any, families: dict[str, Any], now: float
) -> list[tuple[int, str]]:
    """Never OK on the strength of the files alone: Asterisk behind them, not asked, or last
    seen right on addresses other than the confirmed ones (a run that failed before it could
    tell Asterisk, such as a file that could not be written)."""
    if not isinstance(asterisk, dict):
        return []
    if asterisk.get("in_sync") is True:
        seen = asterisk.get("addresses") or {}
        return [
            (
                WARNING,
                f"asterisk: last seen running {seen[family]}, but {entry['address']} is"
                " confirmed and not in place yet; see `ipwatch check`",
            )
            for family, entry in families.items()
            if family in seen and entry and entry.get("address") not in (None, seen[family])
        ]
    if asterisk.get("in_sync") is None:
        return [(WARNING, f"asterisk: {asterisk.get('error')} (since {asterisk.get('since')})")]
    overdue = _seconds_since(asterisk.get("critical_after"), now)
    level = CRITICAL if overdue is not None and overdue > 0 else WARNING
    since = f" (since {asterisk.get('since')})"
    return [(level, f"asterisk: {problem}{since}") for problem in asterisk.get("problems") or []]


def _name_problems(names: Any, now: float) -> list[str]:
    """Host names that resolved to the wrong address for longer than dns_wait, and PJSIP names
    Asterisk has not resolved again since they moved."""
    problems: list[str] = []
    for name, entry in (names or {}).items():
        if entry.get("address") not in entry.get("resolves", []):
            overdue = _seconds_since(entry.get("warn_after"), now)
            if overdue is not None and overdue > 0:
                shown = ", ".join(entry.get("resolves") or []) or "nothing"
                problems.append(
                    f"{name} resolves to {shown}, not {entry.get('address')}, since"
                    f" {entry.get('since')}: longer than dns_wait; is its DNS record updated?"
                )
        elif "refreshed" in entry and entry["refreshed"] != entry.get("address"):
            problems.append(
                f"Asterisk has not resolved {name} again since it moved to {entry.get('address')}"
            )
    return problems


def _daemon_problems(daemon: dict[str, Any], now: float) -> list[tuple[int, str]]:
    if not daemon["alive"]:
        stopped = f" (stopped at {daemon['stopped']})" if daemon.get("stopped") else ""
        return [(WARNING, f"the daemon (pid {daemon['pid']}) is not running{stopped}")]
    problems = []
    if daemon.get("problem"):
        problems.append((CRITICAL, f"daemon: {daemon['problem']}"))
    if daemon.get("config_problem"):  # a SIGHUP found the config file broken
        problems.append((WARNING, f"daemon: {daemon['config_problem']}"))
    if problems:
        return problems
    beat = _seconds_since(daemon.get("heartbeat"), now)
    every = float(daemon.get("heartbeat_every") or 0)
    if beat is not None and every and beat > 2 * every + 60:
        return [(WARNING, f"the daemon (pid {daemon['pid']}) last reported {beat:.0f} s ago")]
    return []


def _seconds_since(stamp: Any, now: float) -> float | None:
    try:
        then = calendar.timegm(time.strptime(str(stamp), "%Y-%m-%dT%H:%M:%SZ"))
    except ValueError:
        return None
    return now - then


def _daemon(recorded: dict[str, Any] | None) -> dict[str, Any] | None:
    if not recorded or not recorded.get("pid"):
        return None
    # A clean stop says so; after a crash or power loss the pid may belong to another process
    # by now, which only the heartbeat's age then gives away.
    alive = not recorded.get("stopped") and _pid_alive(int(recorded["pid"]))
    return {**recorded, "alive": alive}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but another user's
        return True
    return True


def format_status(result: dict[str, Any]) -> str:
    headline = f"IPWATCH {result['status']}"
    lines = []
    for family in FAMILIES:
        entry = result.get(family)
        if entry:
            since = f" since {entry['since']}" if entry.get("since") else ""
            lines.append(
                f"{family} {entry.get('address') or '-'}"
                f" ({entry.get('agreement')} sources agree{since})"
            )
            lines += [f"  {s['name']}: {_source_text(s)}" for s in entry.get("sources") or []]
    headline += " - " + (
        result["problems"][0] if result["problems"] else (lines[0] if lines else "no families")
    )
    for change in (result.get("changes") or [])[-3:]:
        lines.append(
            f"change: {change['family']} {change['old'] or '-'} -> {change['new']}"
            f" at {change['at']}"
        )
    lines += [f"problem: {problem}" for problem in result["problems"]]
    lines += [f"note: {note}" for note in result.get("notes") or []]
    lines.append(_daemon_line(result))
    lines += push_report.lines(result.get("push"))
    return "\n".join([headline, *lines])


def _daemon_line(result: dict[str, Any]) -> str:
    daemon = result.get("daemon")
    if daemon:
        return f"daemon: pid {daemon['pid']} {'running' if daemon['alive'] else 'not running'}"
    if "updated" not in result:  # the verdict on a missing or unreadable state file
        return "daemon: unknown (no readable state file)"
    # The daemon records itself when it starts, and `check` keeps that record.
    return "daemon: has not run with this state directory (the state is from `ipwatch check`)"


def _source_text(source: dict[str, Any]) -> str:
    latency = f" ({source['latency_ms']:.1f} ms)" if source.get("latency_ms") is not None else ""
    if source.get("error"):
        return f"error: {source['error']}{latency}"
    if source.get("rejected"):
        return f"{source['address']} rejected: {source['rejected']}{latency}"
    return f"{source['address']}{latency}"
