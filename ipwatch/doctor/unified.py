"""Unified diffs of large files with many small changes, in linear time. Pure.

difflib compares whole files in quadratic time: a 150,000-line pjsip.conf with 30,000 added lines
takes minutes. `fixes.edit` knows where the old and new files line up (the start of each piece it
edited), so each stretch between two such points is compared alone and the results are joined.
The output is byte for byte what `difflib.unified_diff` gives (as ipwatch.plan prints it), which
a test checks.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

Opcode = tuple[str, int, int, int, int]
CONTEXT = 3


@dataclass(frozen=True)
class Change:
    """A file's content before and after, and the line indexes (from 0) where both line up."""

    path: Path
    old: bytes
    new: bytes
    sync: tuple[tuple[int, int], ...] = ((0, 0),)


def unified(change: Change) -> str:
    """The change as `diff -u` shows it, a missing final newline marked as diff marks it."""
    old, new = (_lines(data) for data in (change.old, change.new))
    name = str(change.path)
    out: list[str] = []
    for group in _grouped(_opcodes(old, new, change.sync)):
        if not out:
            out += [f"--- {name}\n", f"+++ {name}\n"]
        first, last = group[0], group[-1]
        out.append(f"@@ -{_range(first[1], last[2])} +{_range(first[3], last[4])} @@\n")
        for tag, i1, i2, j1, j2 in group:
            if tag == "equal":
                out += [" " + line for line in old[i1:i2]]
                continue
            out += ["-" + line for line in old[i1:i2]]
            out += ["+" + line for line in new[j1:j2]]
    return "".join(_terminated(line) for line in out)


def _lines(data: bytes) -> list[str]:
    return data.decode("utf-8", "surrogateescape").splitlines(keepends=True)


def _terminated(line: str) -> str:
    return line if line.endswith("\n") else line + "\n\\ No newline at end of file\n"


def _opcodes(
    old: Sequence[str], new: Sequence[str], sync: Sequence[tuple[int, int]]
) -> list[Opcode]:
    """difflib's opcodes for the whole files, computed stretch by stretch and joined."""
    joined: list[Opcode] = []
    for (i0, j0), (i1, j1) in pairwise([*sync, (len(old), len(new))]):
        matcher = difflib.SequenceMatcher(None, old[i0:i1], new[j0:j1])
        for tag, a1, a2, b1, b2 in matcher.get_opcodes():
            code = (tag, a1 + i0, a2 + i0, b1 + j0, b2 + j0)
            if joined and (tag == "equal") == (joined[-1][0] == "equal"):
                # Two stretches meet: difflib would have seen one block, equal or not.
                _, i1, _, j1, _ = joined[-1]
                joined[-1] = (_tag(tag, i1, code[2], j1, code[4]), i1, code[2], j1, code[4])
            else:
                joined.append(code)
    return joined or [("equal", 0, 0, 0, 0)]


def _tag(tag: str, i1: int, i2: int, j1: int, j2: int) -> str:
    if tag == "equal":
        return tag
    return "replace" if i1 < i2 and j1 < j2 else "delete" if i1 < i2 else "insert"


def _grouped(codes: list[Opcode]) -> Iterator[list[Opcode]]:
    """SequenceMatcher.get_grouped_opcodes(3) over given opcodes."""
    if codes[0][0] == "equal":
        tag, i1, i2, j1, j2 = codes[0]
        codes[0] = tag, max(i1, i2 - CONTEXT), i2, max(j1, j2 - CONTEXT), j2
    if codes[-1][0] == "equal":
        tag, i1, i2, j1, j2 = codes[-1]
        codes[-1] = tag, i1, min(i2, i1 + CONTEXT), j1, min(j2, j1 + CONTEXT)
    span = CONTEXT + CONTEXT
    group: list[Opcode] = []
    for tag, i1, i2, j1, j2 in codes:
        if tag == "equal" and i2 - i1 > span:
            group.append((tag, i1, min(i2, i1 + CONTEXT), j1, min(j2, j1 + CONTEXT)))
            yield group
            group = []
            i1, j1 = max(i1, i2 - CONTEXT), max(j1, j2 - CONTEXT)
        group.append((tag, i1, i2, j1, j2))
    if group and not (len(group) == 1 and group[0][0] == "equal"):
        yield group


def _range(start: int, stop: int) -> str:
    """difflib's _format_range_unified."""
    beginning = start + 1
    length = stop - start
    if length == 1:
        return f"{beginning}"
    if not length:
        beginning -= 1
    return f"{beginning},{length}"
