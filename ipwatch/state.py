"""The state file STATE_DIR/state.json: what ipwatch knows between runs, and what `status` reads.

Kept as plain JSON-ready dicts so that `ipwatch status` needs nothing but json to read it. It is
written atomically and only when something meaningful changed: latencies and check times alone do
not cause a write, so a daemon polling every 30 s does not wear out a Raspberry Pi's SD card.
"""

from __future__ import annotations

import copy
import json
import os
import time
from pathlib import Path
from typing import Any

from ipwatch.errors import StateError
from ipwatch.reading import MIB, Unfit, read_regular_file, size_text

FILE_NAME = "state.json"
FORMAT_VERSION = 1
KEPT_CHANGES = 20
DEFAULT_DIR = "/var/lib/ipwatch"
# A real state file holds a few kilobytes; the cap keeps a planted one from filling the memory.
MAX_SIZE = MIB
# Fields that change on every round without meaning anything new.
_VOLATILE = frozenset({"latency_ms", "checked", "updated", "heartbeat"})

State = dict[str, Any]


def default_dir() -> str:
    """--state-dir's default: $IPWATCH_STATE_DIR, then systemd's $STATE_DIRECTORY, then /var/lib."""
    explicit = os.environ.get("IPWATCH_STATE_DIR")
    if explicit:
        return explicit
    systemd = os.environ.get("STATE_DIRECTORY")
    if systemd:
        return systemd.split(":")[0]
    return DEFAULT_DIR


def empty() -> State:
    return {"version": FORMAT_VERSION, "families": {}, "changes": [], "pending": [], "daemon": None}


def load(state_dir: Path) -> State | None:
    """Return the saved state, or None when there is none yet.

    The state directory may belong to another user (the daemon's), so the file is read without
    following a symbolic link or blocking on a FIFO, and only up to MAX_SIZE.
    """
    path = state_dir / FILE_NAME
    redo = "move it away and run `ipwatch check` again"
    try:
        data = read_regular_file(path, MAX_SIZE, follow_symlinks=False)
    except FileNotFoundError:
        return None
    except OSError as error:
        raise StateError(
            f"{path}: cannot be read ({error.strerror}); check its permissions"
        ) from None
    except Unfit as unfit:
        limit = f", far more than a state file ever holds ({size_text(MAX_SIZE)})"
        raise StateError(
            f"{path}: {unfit.reason}{limit if unfit.too_large else ''}; {redo}"
        ) from None
    try:
        state = json.loads(data)
    except ValueError:
        raise StateError(f"{path}: is not valid JSON; {redo}") from None
    except RecursionError:
        raise StateError(f"{path}: nests deeper than any state file does; {redo}") from None
    if not isinstance(state, dict) or state.get("version") != FORMAT_VERSION:
        raise StateError(f"{path}: unknown format; {redo}")
    return state


def save_if_changed(state_dir: Path, state: State, saved: State | None) -> bool:
    """Write `state` when it differs from `saved` in more than volatile fields; True if written."""
    if saved is not None and _meaningful(state) == _meaningful(saved):
        return False
    # Imported here so that `ipwatch status`, which never saves, does not pay for it.
    from ipwatch.files import write_in_state_directory

    stamped = dict(state, updated=timestamp(time.time()))
    text = json.dumps(stamped, indent=2, sort_keys=True) + "\n"
    try:
        write_in_state_directory(state_dir, FILE_NAME, text.encode(), mode=0o640)
    except OSError as error:
        raise StateError(
            f"{state_dir / FILE_NAME}: cannot be written ({error.strerror});"
            " pass --state-dir or fix the directory's permissions"
        ) from None
    return True


def record_round(state: State, family: str, summary: dict[str, Any], now: float) -> State:
    """Return a copy of `state` with one family's round summary recorded (and a change logged)."""
    updated = copy.deepcopy(state)
    families = updated.setdefault("families", {})
    before = families.get(family) or {}
    entry = dict(summary, checked=timestamp(now))
    changed = entry.get("address") != before.get("address")
    entry["since"] = timestamp(now) if changed else before.get("since")
    if "announced" in before:  # the address ipwatch last acted on; only an apply moves it
        entry["announced"] = before["announced"]
    families[family] = entry
    if changed and entry.get("address") is not None:
        change = {
            "family": family,
            "old": before.get("address"),
            "new": entry["address"],
            "at": timestamp(now),
        }
        updated["changes"] = [*updated.get("changes", []), change][-KEPT_CHANGES:]
    return updated


def last_change(state: State, family: str) -> dict[str, Any] | None:
    changes = [c for c in state.get("changes", []) if c.get("family") == family]
    return changes[-1] if changes else None


def _meaningful(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _meaningful(v) for k, v in value.items() if k not in _VOLATILE}
    if isinstance(value, list):
        return [_meaningful(v) for v in value]
    return value


def timestamp(seconds: float) -> str:
    """A time as the state file writes it (UTC, to the second)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
