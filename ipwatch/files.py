"""Rewriting files so that a crash leaves each one old or new, and a batch of them all or nothing.

Every replacement is a complete temp file beside the target, synced, renamed over it, and the
directory synced; the previous content is saved as a backup first, so that a failure halfway through
a batch, or Asterisk rejecting the new configuration later, can put everything back.

The state directory (state.json, the lock, backups/) may be writable by another user than the one
running ipwatch: systemd gives it to the daemon's user, and an admin runs `ipwatch check --apply` as
root beside it. Whoever can write a directory can plant a symbolic link in it, so nothing below the
state directory is reached by path: each directory is opened relative to its parent's descriptor
with O_NOFOLLOW and must be a real directory of ipwatch's own user (or root), files are created
relative to that descriptor, and root refuses a state directory of another user altogether.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pwd
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from ipwatch.errors import ApplyError, UnsafeStateDirectory
from ipwatch.reading import Unfit, read_regular_file

# Asterisk expands `#include` patterns with glob(3), which never matches a leading dot, and the
# suffix keeps even a `.*.conf` pattern away; the prefix tells clean_stale_temp_files they are ours.
TEMP_PREFIX = ".ipwatch-"
TEMP_SUFFIX = ".tmp"
SECOND_NS = 1_000_000_000
_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
# One step down a path, never through a symbolic link.
_STEP = _DIRECTORY | os.O_NOFOLLOW
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_OTHERS_WRITE = stat.S_IWGRP | stat.S_IWOTH
# A file system without extended attributes, or one vanishing meanwhile, is nothing to fail over.
XATTR_ABSENT = (errno.ENOTSUP, errno.ENODATA)
CAUSES = {
    errno.ENOSPC: ("no space left on device", "free some space on that file system"),
    errno.EDQUOT: ("disk quota exceeded", "free some space or raise the quota"),
    errno.EFBIG: (
        "file too large (a size limit is set)",
        "raise the file size limit (LimitFSIZE= in the unit, ulimit -f)",
    ),
    errno.EACCES: ("permission denied", "run ipwatch as a user allowed to write there (root)"),
    errno.EPERM: ("operation not permitted", "look for an immutable attribute (lsattr)"),
    errno.EROFS: ("read-only file system", "remount it read-write"),
    errno.EIO: ("input/output error", "check the storage device (dmesg)"),
}


@dataclass(frozen=True)
class FileChange:
    """One file to rewrite: `old` is the content the plan was computed from, `new` replaces it.

    `identity`, (st_dev, st_ino) of the file that was read, keeps the write on that file: a link
    swapped in meanwhile by whoever may write its directory could otherwise lead it elsewhere.
    """

    path: Path
    old: bytes
    new: bytes
    identity: tuple[int, int] | None = None


@dataclass(frozen=True)
class AppliedFile:
    """A file apply_changes replaced, with what restore needs to put the previous version back.

    `target` is `change.path` with symlinks resolved (the link itself is left alone); the times are
    the previous version's, which restore gives back so that Asterisk sees the file it knew.
    """

    change: FileChange
    target: Path
    backup: Path
    atime_ns: int
    mtime_ns: int


@dataclass(frozen=True)
class Applied:
    """What apply_changes replaced, for restore and for telling the user where the backups are."""

    files: tuple[AppliedFile, ...] = ()

    @property
    def backups(self) -> tuple[Path, ...]:
        return tuple(file.backup for file in self.files)


@dataclass(frozen=True)
class _Snapshot:
    """A file's content and the metadata its replacement keeps, read through one descriptor."""

    target: Path
    content: bytes
    status: os.stat_result
    xattrs: dict[str, bytes]


def apply_changes(changes: Sequence[FileChange], backup_dir: Path) -> Applied:
    """Give every file of `changes` its new content, or leave all of them as they were.

    Each file must still hold the content the plan was computed from; its previous version is saved
    under `backup_dir` (mirroring its absolute path) before it is replaced. Raise ApplyError, with
    one sentence naming the file, the cause and what to do, when a file changed meanwhile (nothing
    is written) or cannot be written (the files already replaced are put back first).
    """
    pending = [change for change in changes if change.new != change.old]
    snapshots = [_unchanged(change) for change in pending]
    files = tuple(
        _back_up(change, snapshot, backup_dir)
        for change, snapshot in zip(pending, snapshots, strict=True)
    )
    for done, (file, snapshot) in enumerate(zip(files, snapshots, strict=True), start=1):
        keep = partial(_take_over, snapshot, _new_times(snapshot.status.st_mtime_ns))
        try:
            _replace(file.target, file.change.new, keep)
        except BaseException as error:
            # The failing file too: its rename may have happened before the directory fsync failed.
            problems = _roll_back(files[:done])
            if isinstance(error, OSError):
                raise ApplyError(_failure(file.change.path, error, problems)) from error
            raise
    return Applied(files)


def restore(applied: Applied) -> None:
    """Put back the previous version of every file in `applied`, with its owner, mode and times.

    Used when Asterisk rejects the new configuration. A file someone else rewrote since is left as
    it is. Raise ApplyError naming each file that could not be put back and where its backup is.
    """
    problems = _roll_back(applied.files)
    if problems:
        raise ApplyError("; ".join(problems))


def clean_stale_temp_files(directory: Path, older_than: float) -> list[Path]:
    """Remove the temp files that applies killed halfway left in `directory`; return their paths.

    Nothing can clean up after SIGKILL or a power cut, so each run does it before applying. Only our
    own names are touched, and only those whose inode last changed before `older_than` (the time
    this run started), so a concurrent apply keeps its temp file. The ctime, not the mtime, because
    a temp file's mtime is set on purpose, possibly ahead of the clock.

    `directory` is a real path (symbolic links resolved): it is walked from `/` without following
    any link, so that a link someone planted meanwhile (in the state directory, or a directory of
    Asterisk's) cannot lead the removal elsewhere; such a directory is left alone.
    """
    descriptor = _walk_without_links(directory)
    if descriptor is None:
        return []
    removed = []
    try:
        with os.scandir(descriptor) as entries:
            for entry in entries:
                if _is_stale_temp(entry, older_than):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.name, dir_fd=descriptor)
                        removed.append(directory / entry.name)
    finally:
        os.close(descriptor)
    return removed


def open_state_directory(state_dir: Path) -> int:
    """Open the state directory (created when missing) and return its descriptor.

    Raise UnsafeStateDirectory when it belongs to another user than ipwatch's (or root): that user
    could replace anything in it by a link to a file of ours. Raise OSError when it cannot be made
    or opened.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(state_dir, _DIRECTORY)
    owner = os.fstat(descriptor).st_uid
    if owner not in (0, os.geteuid()):
        os.close(descriptor)
        raise UnsafeStateDirectory(_foreign_state_directory(state_dir, owner))
    return descriptor


def write_in_state_directory(state_dir: Path, name: str, data: bytes, mode: int) -> None:
    """Replace the file `name` in the state directory atomically; see open_state_directory."""
    directory = open_state_directory(state_dir)
    try:
        _replace_at(directory, name, data, lambda descriptor: os.fchmod(descriptor, mode))
    finally:
        os.close(directory)


def backup_path(backup_dir: Path, path: Path) -> Path:
    """Where apply_changes keeps the previous version of `path`: its absolute path, re-rooted."""
    return backup_dir / os.path.abspath(path).lstrip("/")


def _replace(target: Path, data: bytes, prepare: Callable[[int], None]) -> None:
    directory = os.open(target.parent, _DIRECTORY)
    try:
        _replace_at(directory, target.name, data, prepare)
    finally:
        os.close(directory)


def _replace_at(directory: int, name: str, data: bytes, prepare: Callable[[int], None]) -> None:
    """Rename a complete, synced temp file holding `data` over `name` in `directory`.

    `prepare` sets the temp file's metadata. The temp file sits beside the target because rename(2)
    is atomic only within one file system; the directory fsync makes the rename itself survive a
    power cut (an SD card loses it otherwise). O_EXCL|O_NOFOLLOW: a name someone planted is never
    opened, and rename(2) replaces a link at `name` instead of following it.
    """
    temp_name = f"{TEMP_PREFIX}{name}.{os.urandom(6).hex()}{TEMP_SUFFIX}"
    descriptor = os.open(temp_name, _NEW_FILE, 0o600, dir_fd=directory)
    try:
        try:
            _write_all(descriptor, data)
            prepare(descriptor)
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(temp_name, name, src_dir_fd=directory, dst_dir_fd=directory)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name, dir_fd=directory)
        raise
    os.fsync(directory)


def _write_all(descriptor: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(descriptor, view) :]


def _take_over(snapshot: _Snapshot, times_ns: tuple[int, int], descriptor: int) -> None:
    """Give the temp file the replaced file's owner, group, mode and extended attributes."""
    status = snapshot.status
    ours = os.fstat(descriptor)
    if (ours.st_uid, ours.st_gid) != (status.st_uid, status.st_gid):
        os.fchown(descriptor, status.st_uid, status.st_gid)
    # After fchown, which clears the set-user-ID and set-group-ID bits.
    os.fchmod(descriptor, stat.S_IMODE(status.st_mode))
    for name, value in snapshot.xattrs.items():
        _set_xattr(descriptor, name, value)
    # Last, because writing would move the mtime again; metadata changes move only the ctime.
    os.utime(descriptor, ns=times_ns)


def _new_times(old_mtime_ns: int) -> tuple[int, int]:
    """Access and modification times for a new version: never in the old version's second.

    Asterisk re-reads a file on reload only if its size or mtime changed (main/config.c,
    cfmstat_cmp; older versions compare whole seconds only), and a new address often keeps the
    size: a rewrite within the same second, or on coarse timestamps, would go unnoticed.
    """
    now = time.time_ns()
    if now // SECOND_NS != old_mtime_ns // SECOND_NS:
        return now, now
    return now, old_mtime_ns + SECOND_NS


def _unchanged(change: FileChange) -> _Snapshot:
    try:
        snapshot = _snapshot(Path(os.path.realpath(change.path)), len(change.old))
    except FileNotFoundError:
        raise ApplyError(f"{change.path} no longer exists; run again") from None
    except OSError as error:
        raise ApplyError(_failure(change.path, error, [], "read")) from error
    except Unfit as unfit:
        raise ApplyError(f"{change.path} {unfit.reason} now; run again") from None
    if snapshot is None:
        raise ApplyError(f"{change.path} changed since it was read; run again")
    found = snapshot.status
    if change.identity not in (None, (found.st_dev, found.st_ino)):
        raise ApplyError(f"{change.path} is no longer the file that was read; run again")
    if snapshot.content != change.old:
        raise ApplyError(f"{change.path} changed since it was read; run again")
    return snapshot


def _snapshot(target: Path, expected: int) -> _Snapshot | None:
    """The file's content, status and xattrs, read through one descriptor; None when it holds
    more than the `expected` bytes, and so not the content expected.

    The file is opened without blocking and must be a regular file (Unfit otherwise): whoever may
    write its directory could have put a FIFO in its place since it was read.
    """
    kept: list[tuple[os.stat_result, dict[str, bytes]]] = []

    def keep(descriptor: int, found: os.stat_result) -> None:
        kept.append((found, _read_xattrs(descriptor)))

    try:
        content = read_regular_file(target, expected, inspect=keep)
    except Unfit as unfit:
        if unfit.too_large:
            return None
        raise
    status, xattrs = kept[0]
    return _Snapshot(target, content, status, xattrs)


def _back_up(change: FileChange, snapshot: _Snapshot, backup_dir: Path) -> AppliedFile:
    """Save the previous version durably under `backup_dir`, before the file itself is touched.

    `backup_dir` is STATE_DIR/backups: it and every directory below it are walked from the state
    directory's descriptor, never through a link (see the module's docstring).
    """
    backup = backup_path(backup_dir, change.path)
    try:
        directory = _private_directory(backup_dir, backup.relative_to(backup_dir).parent.parts)
        try:
            # Asterisk's files hold SIP passwords: the copies are for the daemon's user only.
            _replace_at(directory, backup.name, snapshot.content, lambda fd: os.fchmod(fd, 0o600))
        finally:
            os.close(directory)
    except OSError as error:
        raise ApplyError(_failure(backup, error, [])) from error
    status = snapshot.status
    return AppliedFile(change, snapshot.target, backup, status.st_atime_ns, status.st_mtime_ns)


def _private_directory(backup_dir: Path, below: tuple[str, ...]) -> int:
    """Open (making what is missing) `backup_dir` and `below` under it, one step at a time."""
    descriptor = open_state_directory(backup_dir.parent)
    where = backup_dir.parent
    try:
        for name in (backup_dir.name, *below):
            where = where / name
            parent, descriptor = descriptor, -1
            try:
                descriptor = _own_subdirectory(parent, name, where)
            finally:
                os.close(parent)
    except BaseException:
        if descriptor >= 0:
            os.close(descriptor)
        raise
    return descriptor


def _own_subdirectory(parent: int, name: str, where: Path) -> int:
    """Open the directory `name` in `parent`, made mode 0700 if missing; it must be a real
    directory of this user (or root) that others cannot write."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, 0o700, dir_fd=parent)
        os.fsync(parent)  # the new directory survives a power cut like a file would
    try:
        descriptor = os.open(name, _STEP, dir_fd=parent)
    except OSError as error:
        if error.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        raise ApplyError(
            f"{where} is a symbolic link or not a directory, which ipwatch never follows in its"
            f" state directory; remove it (rm {where}) and run again; no file was changed"
        ) from None
    found = os.fstat(descriptor)
    problem = (
        f"belongs to {_user_name(found.st_uid)}"
        if found.st_uid not in (0, os.geteuid())
        else "is writable by group or others"
        if found.st_mode & _OTHERS_WRITE
        else ""
    )
    if problem:
        os.close(descriptor)
        raise ApplyError(
            f"{where} {problem}, so someone else could plant links in it; remove it"
            f" (rm -r {where}) and run again; no file was changed"
        )
    return descriptor


def _walk_without_links(directory: Path) -> int | None:
    """A descriptor of `directory` reached from `/` through real directories, or None."""
    descriptor = os.open("/", _DIRECTORY)
    try:
        for name in Path(os.path.abspath(directory)).parts[1:]:
            parent, descriptor = descriptor, -1
            try:
                descriptor = os.open(name, _STEP, dir_fd=parent)
            finally:
                os.close(parent)
    except OSError:
        # Missing, not a directory, or a link: nothing of ours to clean there.
        if descriptor >= 0:
            os.close(descriptor)
        return None
    return descriptor


def _foreign_state_directory(state_dir: Path, owner: int) -> str:
    who = _user_name(owner)
    if os.geteuid() == 0:
        return (
            f"{state_dir}: owned by {who}, not root; root must not write where another user can"
            f" plant symlinks, so run ipwatch as that user ({_sudo(owner)} ipwatch ...) or pass"
            " --state-dir with a directory of root's"
        )
    return (
        f"{state_dir}: owned by {who}, not by you ({_user_name(os.geteuid())}) or root; another"
        " user's directory can hold links to your files, so pass --state-dir with a directory of"
        " your own"
    )


def _user_name(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _sudo(uid: int) -> str:
    try:
        return f"sudo -u {pwd.getpwuid(uid).pw_name}"
    except KeyError:
        return f"sudo -u '#{uid}'"


def _roll_back(files: Sequence[AppliedFile]) -> list[str]:
    """Put back each file still holding our new content; return a sentence per file left wrong."""
    problems = []
    for file in files:
        where = f"its previous version is {file.backup}"
        try:
            if not _put_back(file):
                problems.append(f"{file.change.path} was rewritten by someone else; {where}")
        except OSError as error:
            cause = _explain(error)[0]
            problems.append(f"{file.change.path} could not be put back ({cause}); {where}")
    return problems


def _put_back(file: AppliedFile) -> bool:
    """Write the previous version back with its own times; False if someone else rewrote the file.

    The old times make Asterisk, which never loaded the new version or loaded it with other times,
    see exactly the file it knew.
    """
    try:
        current = _snapshot(file.target, max(len(file.change.old), len(file.change.new)))
    except Unfit:
        return False  # not a regular file any more: not ours to overwrite
    if current is not None and current.content == file.change.old:
        return True
    if current is None or current.content != file.change.new:
        return False
    times = (file.atime_ns, file.mtime_ns)
    _replace(file.target, file.change.old, partial(_take_over, current, times))
    return True


def _failure(path: Path, error: OSError, problems: list[str], verb: str = "written") -> str:
    cause, advice = _explain(error)
    outcome = "; ".join(problems) or "no file was changed"
    return f"{path} cannot be {verb}: {cause}; {advice}, then run again; {outcome}"


def _explain(error: OSError) -> tuple[str, str]:
    """The cause in words and what the user can do about it."""
    known = CAUSES.get(error.errno or 0)
    if known is not None:
        return known
    cause = error.strerror or str(error)
    return cause[:1].lower() + cause[1:], "fix that"


def _read_xattrs(descriptor: int) -> dict[str, bytes]:
    try:
        names = os.listxattr(descriptor)
    except OSError as error:
        if error.errno in XATTR_ABSENT:
            return {}
        raise
    values = {name: _get_xattr(descriptor, name) for name in names}
    return {name: value for name, value in values.items() if value is not None}


def _get_xattr(descriptor: int, name: str) -> bytes | None:
    try:
        return os.getxattr(descriptor, name)
    except OSError as error:
        if error.errno in XATTR_ABSENT:
            return None
        raise


def _set_xattr(descriptor: int, name: str, value: bytes) -> None:
    # A new file usually inherits the same SELinux label already; setting it again would need the
    # right to relabel.
    if _get_xattr(descriptor, name) == value:
        return
    try:
        os.setxattr(descriptor, name, value)
    except OSError as error:
        if error.errno not in XATTR_ABSENT:
            raise


def _is_stale_temp(entry: os.DirEntry[str], older_than: float) -> bool:
    if not (entry.name.startswith(TEMP_PREFIX) and entry.name.endswith(TEMP_SUFFIX)):
        return False
    with contextlib.suppress(FileNotFoundError):
        if entry.is_file(follow_symlinks=False):
            return entry.stat(follow_symlinks=False).st_ctime < older_than
    return False
