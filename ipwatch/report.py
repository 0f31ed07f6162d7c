"""What `check` and `sources` print: the SPEC.md JSON object, or the same facts as aligned text."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from ipwatch import state as state_file
from ipwatch.addresses import FAMILIES, Family
from ipwatch.decide import Decision
from ipwatch.plan import Plan
from ipwatch.rounds import summary


def check_result(
    decisions: Mapping[Family, Decision], state: state_file.State, plan: Plan
) -> dict[str, Any]:
    """The `check --json` object: per family the address and each source, then the targets."""
    result: dict[str, Any] = {family: None for family in FAMILIES}
    for family, decision in decisions.items():
        change = state_file.last_change(state, family)
        previous = decision.previous or (change or {}).get("old")
        result[family] = {**summary(decision), "previous": previous, "changed": decision.changed}
    result["targets"] = plan.as_json()
    result["in_sync"] = plan.in_sync
    result["diff"] = plan.diff()
    result["applied"] = False
    result["asterisk"] = None
    result["running"] = None
    result["names"] = None
    return result


def format_plan(result: Mapping[str, Any]) -> str:
    """`plan`'s text: the notes and what Asterisk runs as `#` lines (which patch(1) skips),
    then the diff, or why nothing is to be changed."""
    lines = [f"# note: {note}" for target in result["targets"] for note in target["notes"]]
    running = result.get("running") or {}
    lines += [f"# asterisk: {problem}" for problem in running.get("problems") or []]
    lines += [f"# dns: {problem}" for problem in (result.get("names") or {}).get("problems") or []]
    if running.get("error"):
        lines.append(f"# asterisk: {running['error']}; whether it runs the address is unknown")
    if result["diff"]:
        return "\n".join(lines) + ("\n" if lines else "") + str(result["diff"])
    if running.get("problems"):
        lines.append("# the files are right; `ipwatch check --apply` makes Asterisk take them")
    elif names_failed(result):
        lines.append("# the files are right; Asterisk follows once the names resolve (see above)")
    elif not running.get("error"):
        lines.append("# in sync: nothing to change")
    return "\n".join(lines) + "\n"


def names_failed(result: Mapping[str, Any]) -> bool:
    return bool((result.get("names") or {}).get("problems"))


def check_exit_status(result: Mapping[str, Any]) -> int:
    """SPEC.md: 0 in sync, 1 drift not applied, 2 no confirmed address, 3 apply or verify
    failed, the reload pending, or Asterisk refused ipwatch or could not be asked."""
    families = [result[f] for f in FAMILIES if result.get(f) is not None]
    if not families or not all(f["confirmed"] for f in families):
        return 2
    asterisk = result["asterisk"] or {}
    if asterisk.get("rolled_back") or asterisk.get("action") == "pending":
        return 3
    if asterisk.get("error"):
        return 3  # Asterisk was told but does not show the address
    if (result["applied"] or asterisk.get("verified")) and not names_failed(result):
        return 0
    if (result.get("running") or {}).get("error"):
        return 3  # the files may be right, but whether Asterisk runs them is unknown
    names = result.get("names") or {}
    if names.get("problems"):
        return 3 if names.get("waited") else 1  # waited for dns_wait in vain, or not yet
    return 0 if result["in_sync"] else 1


def format_check(result: Mapping[str, Any]) -> str:
    lines: list[str] = []
    for family in FAMILIES:
        entry = result.get(family)
        if entry is not None:
            lines += [_family_headline(family, entry), *format_sources(entry["sources"])]
            if entry.get("hint"):
                lines.append(f"  note: {entry['hint']}")
    lines += _target_lines(result)
    return "\n".join(lines)


def _target_lines(result: Mapping[str, Any]) -> list[str]:
    if not result["targets"]:
        return ["targets: none configured (add [[target]] to keep Asterisk's files in sync)"]
    lines: list[str] = []
    for target in result["targets"]:
        state = "in sync" if target["in_sync"] else f"{len(target['edits'])} edit(s)"
        if result["applied"] and not target["in_sync"]:
            state += " applied"
        lines.append(f"target {target['name']} ({target['file']}): {state}")
        for edit in target["edits"]:
            old = edit["old"] if edit["old"] is not None else "(added)"
            where = f"{edit['file']}:{edit['line']}"
            lines.append(f"  {where} [{edit['section']}] {edit['key']} {old} -> {edit['new']}")
        lines += [f"  note: {note}" for note in target["notes"]]
    running = result.get("running") or {}
    lines += [f"asterisk: {problem}" for problem in running.get("problems") or []]
    lines += [f"dns: {problem}" for problem in (result.get("names") or {}).get("problems") or []]
    if running.get("error"):
        lines.append(f"asterisk: {running['error']}; whether it runs the address is unknown")
    asterisk = result.get("asterisk")
    if asterisk:
        detail = f" ({asterisk['error']})" if asterisk.get("error") else ""
        lines.append(f"asterisk: {asterisk['action']}{detail}")
    return lines


def _family_headline(family: str, entry: Mapping[str, Any]) -> str:
    agreement = f"{entry['agreement']} sources agree"
    if entry["confirmed"]:
        moved = (
            f", changed from {entry['previous']}"
            if entry.get("changed") and entry.get("previous")
            else ""
        )
        return f"{family} {entry['address']} confirmed ({agreement}{moved})"
    if entry.get("candidate"):
        return (
            f"{family} not confirmed: {entry['candidate']} seen in"
            f" {entry['candidate_rounds']} round(s)"
            f" in a row ({agreement}); {_kept(entry)}"
        )
    return f"{family} not confirmed: no quorum ({agreement}); {_kept(entry)}"


def _kept(entry: Mapping[str, Any]) -> str:
    """What holds meanwhile: the address confirmed earlier, or none at all."""
    if entry["address"]:
        return f"still using {entry['address']}"
    return "no address confirmed yet"


def format_sources(sources: list[Mapping[str, Any]]) -> list[str]:
    width = max((len(s["name"]) for s in sources), default=0)
    return [f"  {s['name']:<{width}}  {s['kind']:<9} {_verdict_text(s)}" for s in sources]


def _verdict_text(source: Mapping[str, Any]) -> str:
    latency = f"{source['latency_ms']:.1f} ms" if source.get("latency_ms") is not None else ""
    if source.get("error"):
        return f"{'-':<39} {latency:>9}  error: {source['error']}"
    verdict = f"rejected: {source['rejected']}" if source.get("rejected") else ""
    if not verdict:
        verdict = "agrees" if source.get("agrees") else "disagrees"
    return f"{source['address']:<39} {latency:>9}  {verdict}"


def sources_result(decisions: Mapping[Family, Decision]) -> dict[str, Any]:
    return {
        family: ([asdict(v) for v in decisions[family].verdicts] if family in decisions else None)
        for family in FAMILIES
    }


def any_answered(result: Mapping[str, Any]) -> bool:
    return any(s["address"] is not None for f in FAMILIES for s in (result.get(f) or []))


def format_sources_result(result: Mapping[str, Any]) -> str:
    lines: list[str] = []
    for family in FAMILIES:
        if result.get(family) is not None:
            lines += [family, *format_sources(result[family])]
    return "\n".join(lines)
