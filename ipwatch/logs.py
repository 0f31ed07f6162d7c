"""Where log lines go: stderr, and the priority journald files them under when it reads stderr."""

from __future__ import annotations

import logging
import os
import sys

# sd-daemon(3): a line starting with "<N>" is logged at syslog priority N, the prefix removed.
_PRIORITIES = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


class JournalFormatter(logging.Formatter):
    """Each line with its `<N>` priority prefix, so `journalctl -p warning` finds warnings; no
    timestamp, which journald adds itself."""

    def __init__(self) -> None:
        super().__init__("%(message)s")

    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITIES.get(record.levelno, _nearest(record.levelno))
        # A traceback's lines too: journald files every line by its own prefix.
        return "\n".join(f"<{priority}>{line}" for line in super().format(record).splitlines())


def _nearest(level: int) -> int:
    """The priority of the nearest standard level at or below `level` (custom levels)."""
    known = [standard for standard in _PRIORITIES if standard <= level]
    return _PRIORITIES[max(known)] if known else _PRIORITIES[logging.DEBUG]


def setup(verbose: bool, quiet: bool) -> None:
    """Log to stderr: at DEBUG with `verbose`, WARNING with `quiet`, else INFO."""
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    if to_journal():
        handler.setFormatter(JournalFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])


def to_journal() -> bool:
    """True when stderr is the journal stream systemd connected: systemd.exec(5) says to compare
    JOURNAL_STREAM's device:inode with stderr's, because a child whose stderr was redirected
    (a pipe, a file) inherits the variable."""
    stream = os.environ.get("JOURNAL_STREAM")
    if not stream:
        return False
    try:
        found = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):  # no stderr, or one without a file descriptor
        return False
    return stream == f"{found.st_dev}:{found.st_ino}"
