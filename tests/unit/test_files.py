"""apply_changes, restore and clean_stale_temp_files on real files (faults: tests/faults/)."""

from __future__ import annotations

import errno
import os
import stat
import time
from pathlib import Path

import pytest

from ipwatch.errors import ApplyError
from ipwatch.files import (
    TEMP_PREFIX,
    TEMP_SUFFIX,
    Applied,
    FileChange,
    apply_changes,
    backup_path,
    clean_stale_temp_files,
    restore,
    write_in_state_directory,
)
from tests.support import missing

OLD = b"[transport-udp-nat]\nexternal_media_address=203.0.113.5\n"
NEW = b"[transport-udp-nat]\nexternal_media_address=203.0.113.7\n"
NOBODY = (65534, 65534)
SECOND_NS = 1_000_000_000


def conf(directory: Path, name: str = "pjsip.conf", content: bytes = OLD) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_bytes(content)
    return path


def test_replaces_the_file_and_keeps_the_previous_version(tmp_path: Path) -> None:
    target = conf(tmp_path / "etc")
    backups = tmp_path / "state" / "backups"
    inode = target.stat().st_ino
    applied = apply_changes([FileChange(target, OLD, NEW)], backups)
    assert target.read_bytes() == NEW
    assert target.stat().st_ino != inode  # renamed over, never rewritten in place
    backup = backups / str(target).lstrip("/")
    assert applied.backups == (backup,) == (backup_path(backups, target),)
    assert backup.read_bytes() == OLD
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600  # SIP passwords
    assert os.listdir(tmp_path / "etc") == ["pjsip.conf"]
    assert os.listdir(backup.parent) == ["pjsip.conf"]


def test_keeps_owner_group_mode_and_extended_attributes(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        missing("giving a file to another owner needs root")
    target = conf(tmp_path)
    os.chown(target, *NOBODY)
    target.chmod(0o604)
    try:
        os.setxattr(target, "user.ipwatch-test", b"kept")
    except OSError as error:
        if error.errno != errno.ENOTSUP:
            raise
        missing(f"{tmp_path} has no extended attributes")
    apply_changes([FileChange(target, OLD, NEW)], tmp_path / "backups")
    after = target.stat()
    assert (after.st_uid, after.st_gid) == NOBODY
    assert stat.S_IMODE(after.st_mode) == 0o604
    assert os.getxattr(target, "user.ipwatch-test") == b"kept"


def test_the_mtime_leaves_the_old_second_even_when_the_old_mtime_is_now(tmp_path: Path) -> None:
    # A same-size rewrite within the old mtime's second is what a coarse-timestamp file system, or
    # an Asterisk comparing whole seconds, would not notice.
    target = conf(tmp_path)
    now = time.time_ns()
    os.utime(target, ns=(now, now))
    apply_changes([FileChange(target, OLD, NEW)], tmp_path / "backups")
    mtime = target.stat().st_mtime_ns
    assert mtime // SECOND_NS != now // SECOND_NS
    assert mtime <= now + 2 * SECOND_NS


def test_the_mtime_differs_when_the_old_one_is_in_the_future(tmp_path: Path) -> None:
    target = conf(tmp_path)
    future = time.time_ns() + 3600 * SECOND_NS
    os.utime(target, ns=(future, future))
    apply_changes([FileChange(target, OLD, NEW)], tmp_path / "backups")
    assert target.stat().st_mtime_ns // SECOND_NS != future // SECOND_NS


def test_a_file_changed_since_it_was_read_stops_everything(tmp_path: Path) -> None:
    first = conf(tmp_path / "etc", "pjsip.conf")
    second = conf(tmp_path / "etc", "sip.conf", OLD + b"; edited by hand meanwhile\n")
    before = [first.stat(), second.stat()]
    changes = [FileChange(first, OLD, NEW), FileChange(second, OLD, NEW)]
    with pytest.raises(ApplyError) as raised:
        apply_changes(changes, tmp_path / "backups")
    assert str(raised.value) == f"{second} changed since it was read; run again"
    assert [first.stat(), second.stat()] == before
    assert not (tmp_path / "backups").exists()


def test_a_vanished_file_stops_everything(tmp_path: Path) -> None:
    gone = tmp_path / "pjsip.conf"
    with pytest.raises(ApplyError) as raised:
        apply_changes([FileChange(gone, OLD, NEW)], tmp_path / "backups")
    assert str(raised.value) == f"{gone} no longer exists; run again"
    assert os.listdir(tmp_path) == []


def test_nothing_to_change_writes_nothing(tmp_path: Path) -> None:
    target = conf(tmp_path / "etc")
    before = target.stat()
    assert apply_changes([], tmp_path / "backups") == Applied()
    assert apply_changes([FileChange(target, OLD, OLD)], tmp_path / "backups") == Applied()
    assert target.stat() == before
    assert not (tmp_path / "backups").exists()


def test_a_symlink_stays_a_symlink(tmp_path: Path) -> None:
    real = conf(tmp_path / "real")
    link = tmp_path / "etc" / "pjsip.conf"
    link.parent.mkdir()
    link.symlink_to(real)
    applied = apply_changes([FileChange(link, OLD, NEW)], tmp_path / "backups")
    assert link.is_symlink()
    assert real.read_bytes() == NEW
    assert applied.backups == (backup_path(tmp_path / "backups", link),)
    assert os.listdir(tmp_path / "real") == ["pjsip.conf"]


def test_restore_puts_back_content_mode_and_times(tmp_path: Path) -> None:
    first, second = conf(tmp_path, "pjsip.conf"), conf(tmp_path, "sip.conf")
    first.chmod(0o640)
    os.utime(first, ns=(1_000_000_000 * SECOND_NS, 1_000_000_000 * SECOND_NS))
    before = [first.stat(), second.stat()]
    changes = [FileChange(first, OLD, NEW), FileChange(second, OLD, NEW + b"; more\n")]
    applied = apply_changes(changes, tmp_path / "backups")
    restore(applied)
    after = [first.stat(), second.stat()]
    assert first.read_bytes() == OLD
    assert second.read_bytes() == OLD
    for old, new in zip(before, after, strict=True):
        assert (new.st_mtime_ns, new.st_mode, new.st_size) == (
            old.st_mtime_ns,
            old.st_mode,
            old.st_size,
        )
    assert sorted(os.listdir(tmp_path)) == ["backups", "pjsip.conf", "sip.conf"]


def test_restore_leaves_a_file_someone_else_rewrote_and_says_where_the_backup_is(
    tmp_path: Path,
) -> None:
    first, second = conf(tmp_path, "pjsip.conf"), conf(tmp_path, "sip.conf")
    changes = [FileChange(first, OLD, NEW), FileChange(second, OLD, NEW)]
    applied = apply_changes(changes, tmp_path / "backups")
    first.write_bytes(b"; FreePBX regenerated this\n")
    with pytest.raises(ApplyError) as raised:
        restore(applied)
    assert str(raised.value) == (
        f"{first} was rewritten by someone else;"
        f" its previous version is {backup_path(tmp_path / 'backups', first)}"
    )
    assert first.read_bytes() == b"; FreePBX regenerated this\n"
    assert second.read_bytes() == OLD


def test_clean_stale_temp_files_removes_only_ours_and_only_old_ones(tmp_path: Path) -> None:
    stale = tmp_path / f"{TEMP_PREFIX}pjsip.conf.k2j4h5{TEMP_SUFFIX}"
    kept = [
        tmp_path / "pjsip.conf",
        tmp_path / ".pjsip.conf.swp",
        tmp_path / "pjsip.conf.tmp",
        tmp_path / f"{TEMP_PREFIX}notes",
    ]
    for path in [stale, *kept]:
        path.write_bytes(OLD)
    directory = tmp_path / f"{TEMP_PREFIX}dir{TEMP_SUFFIX}"
    directory.mkdir()
    changed = stale.stat().st_ctime
    assert clean_stale_temp_files(tmp_path, changed) == []  # as new as this run: someone's
    assert clean_stale_temp_files(tmp_path, changed + 1) == [stale]
    assert sorted(tmp_path.iterdir()) == sorted([*kept, directory])
    assert clean_stale_temp_files(tmp_path / "missing", changed + 1) == []


def test_write_in_state_directory_sets_the_mode_and_leaves_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    write_in_state_directory(tmp_path, "state.json", b"{}\n", mode=0o640)
    write_in_state_directory(tmp_path, "state.json", b'{"version": 1}\n', mode=0o640)
    assert path.read_bytes() == b'{"version": 1}\n'
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert os.listdir(tmp_path) == ["state.json"]


def test_a_ten_megabyte_file(tmp_path: Path) -> None:
    line = b"; a long file, as FreePBX writes them\n"
    old = OLD + line * (10 * 1024 * 1024 // len(line))
    new = NEW + old[len(OLD) :]
    target = conf(tmp_path, content=old)
    applied = apply_changes([FileChange(target, old, new)], tmp_path / "backups")
    assert target.read_bytes() == new
    assert applied.backups[0].read_bytes() == old


def test_clean_stale_temp_files_never_goes_through_a_link(tmp_path: Path) -> None:
    """A link planted on the way (in the state directory, say) leads nowhere: nothing is removed."""
    real = tmp_path / "real" / "dir"
    real.mkdir(parents=True)
    stale = real / f"{TEMP_PREFIX}pjsip.conf.k2j4h5{TEMP_SUFFIX}"
    stale.write_bytes(OLD)
    later = stale.stat().st_ctime + 1
    (tmp_path / "link").symlink_to(tmp_path / "real")
    (tmp_path / "last").symlink_to(real)
    assert clean_stale_temp_files(tmp_path / "link" / "dir", later) == []
    assert clean_stale_temp_files(tmp_path / "last", later) == []
    assert stale.exists()
    assert clean_stale_temp_files(real, later) == [stale]


def test_the_daemons_file_digest_neither_hangs_on_a_fifo_nor_reads_a_device(
    tmp_path: Path,
) -> None:
    from ipwatch.daemon import _digest

    fifo = tmp_path / "pjsip.conf"
    os.mkfifo(fifo)
    assert _digest(fifo) is None  # a plain read would block here for ever
    assert _digest(Path("/dev/zero")) is None  # and read without end here
    regular = tmp_path / "sip.conf"
    regular.write_text("[general]\n")
    assert _digest(regular) is not None
