"""One daemon per state directory: the lock `ipwatch run` holds, and how `trigger` finds it.

The lock is an flock on STATE_DIR/ipwatch.lock holding the daemon's pid. The kernel drops the lock
when the process dies however it dies, so a stale pid after a crash is never taken for a daemon.
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import stat
from pathlib import Path

from ipwatch.errors import InstanceError, UnsafeStateDirectory

LOCK_NAME = "ipwatch.lock"
# The state directory may be another user's to write (the daemon's, when root runs `trigger`):
# never through a link, never blocking on a FIFO planted under the lock's name.
_OPEN = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class InstanceLock:
    """Held by the running daemon for its whole life."""

    def __init__(self, descriptor: int, path: Path) -> None:
        self._descriptor = descriptor
        self.path = path

    @classmethod
    def acquire(cls, state_dir: Path) -> InstanceLock:
        """Take the lock or raise InstanceError naming the daemon that holds it."""
        from ipwatch.files import open_state_directory

        path = state_dir / LOCK_NAME
        try:
            directory = open_state_directory(state_dir)
            try:
                descriptor = os.open(
                    LOCK_NAME, os.O_RDWR | os.O_CREAT | _OPEN, 0o640, dir_fd=directory
                )
            finally:
                os.close(directory)
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise UnsafeStateDirectory(_unsafe_lock(path, "is a symbolic link")) from None
            raise InstanceError(
                f"{path}: cannot be opened ({error.strerror}); pass --state-dir or fix the"
                " directory's permissions"
            ) from None
        _refuse_foreign(descriptor, path)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(descriptor)
            os.close(descriptor)
            raise InstanceError(
                f"another `ipwatch run` (pid {pid or '?'}) already uses {state_dir};"
                " stop it first (systemctl stop ipwatch) or pass another --state-dir"
            ) from None
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
        return cls(descriptor, path)

    def release(self) -> None:
        # The file stays: removing it would let a second daemon lock a new file while a third
        # process still holds the old one.
        os.close(self._descriptor)


def running_pid(state_dir: Path) -> int | None:
    """The pid of the daemon using `state_dir`, or None when none runs."""
    path = state_dir / LOCK_NAME
    try:
        descriptor = os.open(path, os.O_RDONLY | _OPEN)
    except FileNotFoundError:
        return None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise UnsafeStateDirectory(_unsafe_lock(path, "is a symbolic link")) from None
        raise InstanceError(
            f"{path}: cannot be read ({error.strerror}); run as root or as the daemon's user"
        ) from None
    try:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise UnsafeStateDirectory(_unsafe_lock(path, "is not a regular file"))
        try:
            fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_pid(descriptor)
        return None
    finally:
        os.close(descriptor)


def trigger(state_dir: Path) -> int:
    """Ask the running daemon for a round now (SIGUSR1); return its pid."""
    pid = running_pid(state_dir)
    if pid is None:
        raise InstanceError(
            f"no `ipwatch run` is running for {state_dir}; start it (systemctl start ipwatch)"
            " or run `ipwatch check --apply`"
        )
    try:
        os.kill(pid, signal.SIGUSR1)
    except PermissionError:
        raise InstanceError(
            f"not allowed to signal the daemon (pid {pid}); run as root or as its user"
        ) from None
    except ProcessLookupError:
        raise InstanceError(f"the daemon (pid {pid}) has just exited") from None
    return pid


def _refuse_foreign(descriptor: int, path: Path) -> None:
    """The lock is truncated and written: it must be a regular file of this user, not a file of
    someone else's that another user hard-linked there, nor a FIFO or device."""
    found = os.fstat(descriptor)
    problem = (
        "is not a regular file"
        if not stat.S_ISREG(found.st_mode)
        else f"is owned by uid {found.st_uid}"
        if found.st_uid != os.geteuid()
        else ""
    )
    if problem:
        os.close(descriptor)
        raise UnsafeStateDirectory(_unsafe_lock(path, problem))


def _unsafe_lock(path: Path, problem: str) -> str:
    return (
        f"{path}: {problem}; the lock must be a regular file of ipwatch's user (uid"
        f" {os.geteuid()}), so remove it (rm {path}) and start ipwatch again"
    )


def _read_pid(descriptor: int) -> int | None:
    text = os.pread(descriptor, 32, 0).decode("ascii", "replace").strip()
    return int(text) if text.isdigit() else None
