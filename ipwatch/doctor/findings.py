"""What `doctor` reports: findings with a stable code, and the safe fixes behind `--plan`. Pure."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ipwatch.asterisk.conf import Option, Section

Severity = Literal["error", "warning", "info"]
# Nagios-like: nothing above info is OK, a warning is WARNING, an error CRITICAL.
EXIT_STATUS: dict[Severity, int] = {"info": 0, "warning": 1, "error": 2}
# The human listing shows this many findings of one code; --json always has them all.
SHOWN_PER_CODE = 10


@dataclass(frozen=True)
class Finding:
    """One problem: `message` says what goes wrong on a call, `fix` exactly what to change.

    `file` and `line` point at the option to change, or at the header of the section that lacks
    it; both are None for what no file holds (the router, the network, a running Asterisk).
    """

    severity: Severity
    code: str
    file: str | None
    line: int | None
    object: str
    message: str
    fix: str

    def as_json(self) -> dict[str, Any]:
        return {
            "severity": self.severity,
            "code": self.code,
            "file": self.file,
            "line": self.line,
            "object": self.object,
            "message": self.message,
            "fix": self.fix,
        }


@dataclass(frozen=True)
class Fix:
    """A safe edit for `--plan`: set `key = value` in `section` of the file at `path`.

    `option` is the line that sets the key now (its value is replaced), or None to add a line.
    `kind` is the section's PJSIP type, which an `[name](+type=kind)` addition must name.
    """

    path: str
    section: Section
    key: str
    value: str
    option: Option | None = None
    kind: str = ""

    @property
    def file(self) -> str:
        """The file to edit: the option's own (an included file), or the section's."""
        return self.option.path if self.option is not None else self.path


@dataclass(frozen=True)
class Outcome:
    """What a group of checks found, and the fixes that `--plan` may write for them."""

    findings: tuple[Finding, ...] = ()
    fixes: tuple[Fix, ...] = ()

    def __add__(self, other: Outcome) -> Outcome:
        return Outcome(self.findings + other.findings, self.fixes + other.fixes)


def exit_status(findings: Iterable[Finding]) -> int:
    """0 when nothing is above info, 1 with warnings, 2 with errors."""
    return max((EXIT_STATUS[finding.severity] for finding in findings), default=0)


def ordered(findings: Iterable[Finding]) -> tuple[Finding, ...]:
    """Errors first, then warnings, then notes; within those by file and line."""
    rank = {"error": 0, "warning": 1, "info": 2}
    return tuple(
        sorted(
            findings,
            key=lambda f: (rank[f.severity], f.code, f.file or "", f.line or 0, f.object),
        )
    )


def json_text(findings: Sequence[Finding], diff: str | None = None) -> str:
    """`--json` output: one finding per line. json's indented output is written by its Python
    encoder, half a second for 40,000 findings; each line here is its C encoder's."""
    lines = ",\n".join(f"  {json.dumps(f.as_json())}" for f in findings)
    plan = f',\n"diff": {json.dumps(diff)}' if diff is not None else ""
    body = f"[\n{lines}\n]" if findings else "[]"
    return f'{{"findings": {body},\n"exit": {exit_status(findings)}{plan}}}\n'


def format_findings(findings: Sequence[Finding]) -> str:
    """One block per finding, like a compiler's: where, severity and code, then what and how."""
    if not findings:
        return "doctor: no problems found in the NAT setup\n"
    lines: list[str] = []
    shown: Counter[str] = Counter()
    for finding in findings:
        shown[finding.code] += 1
        if shown[finding.code] > SHOWN_PER_CODE:
            continue
        where = f"{finding.file}:{finding.line}: " if finding.file else ""
        lines.append(f"{where}{finding.severity}: [{finding.code}] {finding.object}: ")
        lines[-1] += finding.message
        lines.append(f"    fix: {finding.fix}")
    for code, count in shown.items():
        if count > SHOWN_PER_CODE:
            lines.append(f"... and {count - SHOWN_PER_CODE} more [{code}] (--json lists all)")
    counts = Counter(finding.severity for finding in findings)
    words: dict[Severity, str] = {"error": "error", "warning": "warning", "info": "note"}
    summary = ", ".join(
        f"{counts[s]} {word}{'s' if counts[s] != 1 else ''}" for s, word in words.items()
    )
    lines.append(f"doctor: {summary}")
    return "\n".join(lines) + "\n"
