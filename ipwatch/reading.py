"""Reading a file whose name another user may control, without hanging or running out of memory.

A FIFO blocks open() and read() until someone writes, `/dev/zero` never ends, and a file's type
can change between a stat() of its name and an open() of it. So the file is opened first, without
blocking, and its descriptor is what gets checked and read, at most `limit` bytes of it.

Imports only os and stat: `ipwatch status` reads the state file through this.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path

MIB = 1024 * 1024
_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


class Unfit(Exception):
    """The file is not one to read: `reason` says what it is instead ("is a FIFO", "is 2.0 MiB");
    `too_large` tells the second kind from the first."""

    def __init__(self, reason: str, *, too_large: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.too_large = too_large


def read_regular_file(
    path: Path | str,
    limit: int,
    *,
    follow_symlinks: bool = True,
    inspect: Callable[[int, os.stat_result], None] | None = None,
) -> bytes:
    """Return the content of the regular file at `path`, which must hold at most `limit` bytes.

    Raise Unfit when it is something else (a FIFO, a device, a directory, with `follow_symlinks`
    false a symbolic link) or larger, and OSError when it cannot be opened or read. `inspect`
    sees the open descriptor and its status before anything is read, and may raise to refuse it.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
    try:
        descriptor = os.open(path, flags | (0 if follow_symlinks else os.O_NOFOLLOW))
    except OSError as error:
        if error.errno == errno.ELOOP and not follow_symlinks:
            raise Unfit("is a symbolic link") from None
        raise
    try:
        found = os.fstat(descriptor)
        what = kind(found.st_mode)
        if what:
            raise Unfit(f"is {what}, not a regular file")
        if found.st_size > limit:
            raise Unfit(f"is {size_text(found.st_size)}", too_large=True)
        if inspect is not None:
            inspect(descriptor, found)
        data = _read_at_most(descriptor, limit + 1)
    finally:
        os.close(descriptor)
    if len(data) > limit:  # it grew meanwhile, or it is a /proc file whose size says nothing
        raise Unfit(f"holds more than {size_text(limit)}", too_large=True)
    return data


def kind(mode: int) -> str:
    """What a file that is not a regular file is ("a FIFO"); empty for a regular file."""
    if stat.S_ISREG(mode):
        return ""
    return next((name for test, name in _KINDS if test(mode)), "a special file")


def size_text(size: int) -> str:
    return f"{round(size / MIB, 1):g} MiB" if size >= MIB else f"{size} bytes"


def _read_at_most(descriptor: int, count: int) -> bytes:
    chunks = []
    while count > 0:
        chunk = os.read(descriptor, min(count, MIB))
        if not chunk:
            break
        chunks.append(chunk)
        count -= len(chunk)
    return b"".join(chunks)
