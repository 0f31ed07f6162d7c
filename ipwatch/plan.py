"""The plan: every edit the confirmed addresses call for, as file contents and a diff. Pure."""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from ipwatch.addresses import Family
from ipwatch.asterisk.conf import Document, Tree
from ipwatch.asterisk.targets import TargetPlan, plan_target
from ipwatch.config import TargetConfig
from ipwatch.errors import ConfFileError
from ipwatch.files import FileChange


@dataclass(frozen=True)
class Plan:
    targets: tuple[TargetPlan, ...]
    changes: tuple[FileChange, ...]

    @property
    def in_sync(self) -> bool:
        return not self.changes

    def diff(self) -> str:
        """The changes as `diff -u` would show them, file by file."""
        return "".join(_unified(change) for change in self.changes)

    def as_json(self) -> list[dict[str, Any]]:
        return [
            {
                "name": target.name,
                "kind": target.kind,
                "file": target.file,
                "in_sync": target.in_sync,
                "edits": [asdict(edit) for edit in target.edits],
                "notes": list(target.notes),
            }
            for target in self.targets
        ]


@dataclass(frozen=True)
class Loaded:
    """A target's files as read: its include tree and, for PJSIP, sorcery.conf if present."""

    target: TargetConfig
    tree: Tree
    sorcery: Document | None
    dnsmgr: bool = False  # dnsmgr.conf beside it enables Asterisk's DNS manager


def make_plan(loaded: Sequence[Loaded], addresses: Mapping[Family, str]) -> Plan:
    """Given the targets' files and the confirmed addresses, return what must change."""
    plans: list[TargetPlan] = []
    edited: dict[Path, FileChange] = {}
    for item in loaded:
        plan, documents = plan_target(item.target, item.tree, addresses, item.sorcery, item.dnsmgr)
        plans.append(replace(plan, files=tuple(str(path) for path in item.tree.documents)))
        for path, document in documents.items():
            if path in edited:
                raise ConfFileError(
                    f"{path}: edited by two targets; configure it in one [[target]]"
                )
            read = item.tree.documents[path]
            edited[path] = FileChange(path, read.serialise(), document.serialise(), read.identity)
    changes = tuple(change for change in edited.values() if change.old != change.new)
    return Plan(tuple(plans), changes)


def _unified(change: FileChange) -> str:
    old, new = (_lines(data) for data in (change.old, change.new))
    diff = difflib.unified_diff(old, new, fromfile=str(change.path), tofile=str(change.path))
    return "".join(_terminated(line) for line in diff)


def _lines(data: bytes) -> list[str]:
    return data.decode("utf-8", "surrogateescape").splitlines(keepends=True)


def _terminated(line: str) -> str:
    # As diff -u marks a last line without a newline, so the output stays one line per line.
    return line if line.endswith("\n") else line + "\n\\ No newline at end of file\n"
