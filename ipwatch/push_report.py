"""How `ipwatch status` judges and shows the push channels recorded in the state file (the
daemon writes each channel's status there: pushes.py, sources/push.py). Standard library only,
like status.py, which calls it."""

from __future__ import annotations

from typing import Any

WARNING = 1


def problems(channels: Any) -> list[tuple[int, str]]:
    """A channel that keeps failing is a WARNING: changes are then found by polling only."""
    found = []
    for name, channel in sorted((channels or {}).items()):
        if channel.get("state") == "failing":
            found.append(
                (
                    WARNING,
                    f"push {name} ({channel.get('kind')}) failing {channel.get('failures')}"
                    f" times in a row: {channel.get('last_error')}; only polling finds changes",
                )
            )
    return found


def lines(channels: Any) -> list[str]:
    """One line per channel: its state, where it listens, its last event and refusals."""
    shown = []
    for name, channel in sorted((channels or {}).items()):
        parts = [f"push {name} ({channel.get('kind')}): {channel.get('state')}"]
        if channel.get("detail"):
            parts[0] += f" {channel['detail']}"
        if channel.get("sid"):
            parts.append(f"SID {channel['sid']} until {channel.get('expires')}")
        if channel.get("last_event"):
            parts.append(
                f"{channel.get('events')} events, last at {channel.get('last_event_at')}:"
                f" {channel['last_event']}"
            )
        if channel.get("ignored"):
            parts.append(f"{channel['ignored']} ignored, last: {channel.get('last_ignored')}")
        if channel.get("failures"):
            parts.append(f"{channel['failures']} failures, last: {channel.get('last_error')}")
        shown.append("; ".join(parts))
    return shown
