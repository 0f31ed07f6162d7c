"""apply_changes under real faults: size limit, full disk, read-only mount, no permission, SIGKILL.

Each fault is made for real around a child process (tests/faults/apply_child.py): RLIMIT_FSIZE via
prlimit, a tiny tmpfs or a read-only bind mount in a private mount namespace, `nobody` via setpriv.
CI runs as root, which ignores file modes, so permission faults need another user.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ipwatch.files import (
    TEMP_PREFIX,
    FileChange,
    apply_changes,
    backup_path,
    clean_stale_temp_files,
)
from tests.support import missing, need

REPOSITORY = Path(__file__).resolve().parents[2]
NOBODY = (65534, 65534)
OLD_ADDRESS = b"203.0.113.5"
NEW_ADDRESS = b"203.0.113.7"
MOUNT_TMPFS = 'mount -t tmpfs -o size=64k,mode=0755 ipwatch-test "$1" && shift && exec "$@"'
MOUNT_READ_ONLY = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"'
KILLS = 200
KILLED_FILE_SIZE = 4 * 1024 * 1024


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory `nobody` can traverse (pytest's own temp directories are root's alone)."""
    directory = Path(tempfile.mkdtemp(prefix="ipwatch-faults-"))
    directory.chmod(0o755)
    try:
        yield directory
    finally:
        shutil.rmtree(directory)


@pytest.fixture(scope="module")
def mount_namespace() -> list[str]:
    """The command prefix entering a private mount namespace (a user namespace too, if not root)."""
    unshare = need("unshare", "util-linux")
    need("mount", "mount")
    prefix = [unshare, "-m" if os.geteuid() == 0 else "-rm", "--propagation", "private"]
    probe = subprocess.run([*prefix, "true"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        missing(f"cannot create a private mount namespace: {probe.stderr.strip()}")
    return prefix


def config_text(address: bytes, size: int = 1024) -> bytes:
    """A pjsip.conf of about `size` bytes whose transport says `address`."""
    head = b"[transport-udp-nat]\ntype=transport\nexternal_media_address=" + address + b"\n"
    line = b"; padding so that the file has the size the test needs\n"
    return head + line * max(0, (size - len(head)) // len(line))


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def change_spec(directory: Path, path: Path, old: bytes, new: bytes) -> dict[str, str]:
    """One change for the child's spec, its contents in world-readable files."""
    contents = directory / "contents"
    contents.mkdir(mode=0o755, exist_ok=True)
    old_file, new_file = contents / f"{path.name}.old", contents / f"{path.name}.new"
    old_file.write_bytes(old)
    new_file.write_bytes(new)
    return {"path": str(path), "old": str(old_file), "new": str(new_file)}


def run_child(
    prefix: list[str], directory: Path, spec: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    """Run the child's `apply` under `prefix`; return its exit status and its report."""
    spec_file = directory / "spec.json"
    spec_file.write_text(json.dumps(spec))
    spec_file.chmod(0o644)
    result = subprocess.run(
        [*prefix, sys.executable, "-m", "tests.faults.apply_child", "apply", str(spec_file)],
        cwd=REPOSITORY,
        env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    try:
        report = json.loads(result.stdout)
    except ValueError:
        pytest.fail(f"the child reported nothing (status {result.returncode}): {result.stderr}")
    return result.returncode, report


def size_limit(limit: int) -> list[str]:
    return [need("prlimit", "util-linux"), f"--fsize={limit}"]


def test_a_file_size_limit_leaves_the_file_and_says_so(shared_dir: Path) -> None:
    etc = shared_dir / "etc"
    etc.mkdir()
    target = etc / "pjsip.conf"
    old, new = config_text(OLD_ADDRESS), config_text(NEW_ADDRESS, 64 * 1024)
    target.write_bytes(old)
    spec = {
        "backup_dir": str(shared_dir / "backups"),
        "changes": [change_spec(shared_dir, target, old, new)],
    }
    status, report = run_child(size_limit(16 * 1024), shared_dir, spec)
    assert status == 3
    assert report["error"] == (
        f"{target} cannot be written: file too large (a size limit is set);"
        " raise the file size limit (LimitFSIZE= in the unit, ulimit -f), then run again;"
        " no file was changed"
    )
    assert target.read_bytes() == old
    assert os.listdir(etc) == ["pjsip.conf"]


def test_a_full_disk_leaves_the_file_and_says_so(
    shared_dir: Path, mount_namespace: list[str]
) -> None:
    small = shared_dir / "small"
    small.mkdir()
    target = small / "pjsip.conf"
    old, new = config_text(OLD_ADDRESS), config_text(NEW_ADDRESS, 100 * 1024)
    spec = {
        "backup_dir": str(shared_dir / "backups"),
        "changes": [change_spec(shared_dir, target, old, new)],
        "seed": True,
    }
    prefix = [*mount_namespace, "sh", "-c", MOUNT_TMPFS, "sh", str(small)]
    status, report = run_child(prefix, shared_dir, spec)
    assert status == 3
    assert report["error"].startswith(
        f"{target} cannot be written: no space left on device; free some space"
    )
    assert report["files"][str(target)]["sha256"] == digest(old)
    assert report["listings"][str(small)] == ["pjsip.conf"]
    assert os.listdir(small) == []  # it all happened on the tmpfs, gone with the namespace


def test_a_read_only_file_system_leaves_the_file_and_says_so(
    shared_dir: Path, mount_namespace: list[str]
) -> None:
    etc = shared_dir / "etc"
    etc.mkdir()
    target = etc / "pjsip.conf"
    old, new = config_text(OLD_ADDRESS), config_text(NEW_ADDRESS)
    target.write_bytes(old)
    before = target.stat()
    spec = {
        "backup_dir": str(shared_dir / "backups"),
        "changes": [change_spec(shared_dir, target, old, new)],
    }
    prefix = [*mount_namespace, "sh", "-c", MOUNT_READ_ONLY, "sh", str(etc)]
    status, report = run_child(prefix, shared_dir, spec)
    assert status == 3
    assert report["error"] == (
        f"{target} cannot be written: read-only file system; remount it read-write,"
        " then run again; no file was changed"
    )
    assert target.read_bytes() == old
    assert target.stat().st_mtime_ns == before.st_mtime_ns
    assert os.listdir(etc) == ["pjsip.conf"]


def runs_as_nobody(prefix: list[str]) -> None:
    """Check that `nobody` can run this Python on this checkout, else say why the test cannot."""
    probe = subprocess.run(
        [*prefix, sys.executable, "-c", "import tests.faults.apply_child"],
        cwd=REPOSITORY,
        env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"),
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        reason = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        missing(f"nobody cannot run {sys.executable} on {REPOSITORY} ({reason})")


def test_no_permission_leaves_the_file_and_says_so(shared_dir: Path) -> None:
    etc, backups = shared_dir / "etc", shared_dir / "backups"
    etc.mkdir()
    backups.mkdir()
    target = etc / "pjsip.conf"
    old, new = config_text(OLD_ADDRESS), config_text(NEW_ADDRESS)
    target.write_bytes(old)
    target.chmod(0o644)
    spec = {"backup_dir": str(backups), "changes": [change_spec(shared_dir, target, old, new)]}
    prefix: list[str] = []
    if os.geteuid() == 0:
        # Root ignores file modes: only another user meets the permission check.
        setpriv = need("setpriv", "util-linux")
        prefix = [setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
        os.chown(backups, *NOBODY)
        runs_as_nobody(prefix)
    etc.chmod(0o555)
    try:
        status, report = run_child(prefix, shared_dir, spec)
    finally:
        etc.chmod(0o755)
    assert status == 3
    assert report["error"] == (
        f"{target} cannot be written: permission denied; run ipwatch as a user allowed to write"
        " there (root), then run again; no file was changed"
    )
    assert target.read_bytes() == old
    assert os.listdir(etc) == ["pjsip.conf"]


def test_a_failure_on_the_second_file_puts_the_first_back(shared_dir: Path) -> None:
    etc = shared_dir / "etc"
    etc.mkdir()
    first, second = etc / "pjsip.conf", etc / "pjsip_transports.conf"
    first_old, first_new = config_text(OLD_ADDRESS), config_text(NEW_ADDRESS, 2048)
    second_old, second_new = config_text(OLD_ADDRESS), config_text(NEW_ADDRESS, 64 * 1024)
    first.write_bytes(first_old)
    second.write_bytes(second_old)
    first.chmod(0o640)
    os.utime(first, ns=(1_000_000_000 * 10**9, 1_000_000_000 * 10**9))
    before = first.stat()
    spec = {
        "backup_dir": str(shared_dir / "backups"),
        "changes": [
            change_spec(shared_dir, first, first_old, first_new),
            change_spec(shared_dir, second, second_old, second_new),
        ],
    }
    status, report = run_child(size_limit(16 * 1024), shared_dir, spec)
    assert status == 3
    assert report["error"].startswith(f"{second} cannot be written: file too large")
    assert report["error"].endswith("no file was changed")
    after = first.stat()
    assert after.st_ctime_ns > before.st_ctime_ns  # it was replaced, then put back
    assert first.read_bytes() == first_old
    assert after.st_mtime_ns == before.st_mtime_ns  # Asterisk sees the very file it knew
    assert after.st_mode == before.st_mode
    assert second.read_bytes() == second_old
    assert sorted(os.listdir(etc)) == ["pjsip.conf", "pjsip_transports.conf"]


def one_apply_duration(directory: Path, first: bytes, second: bytes) -> float:
    """How long one apply of the killed file takes here, so that kills spread over whole applies."""
    target, backups = directory / "probe.conf", directory / "probe-backups"
    target.write_bytes(first)
    started = time.monotonic()
    apply_changes([FileChange(target, first, second)], backups)
    return time.monotonic() - started


def leftover_temp_files(*directories: Path) -> list[str]:
    """Every name besides the real files; fails if one is not our temp file."""
    names = [n for d in directories if d.is_dir() for n in os.listdir(d) if n != "pjsip.conf"]
    assert all(n.startswith(TEMP_PREFIX + "pjsip.conf.") for n in names), names
    return names


@contextlib.contextmanager
def killer(
    target: Path, first: Path, second: Path, backups: Path
) -> Iterator[subprocess.Popen[str]]:
    """The child that forks appliers of `target` and kills each at the moment the test asks."""
    command = [sys.executable, "-m", "tests.faults.apply_child", "kill", str(target)]
    command += [str(first), str(second), str(backups)]
    child = subprocess.Popen(
        command,
        cwd=REPOSITORY,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "ready\n", child.communicate()[1]
        yield child
    finally:
        # End of input: the child kills its current applier, if any, and exits.
        try:
            child.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()


def kill_after(child: subprocess.Popen[str], delay: float) -> None:
    assert child.stdin is not None and child.stdout is not None
    child.stdin.write(f"{delay}\n")
    child.stdin.flush()
    outcome = child.stdout.readline()
    if outcome != "killed\n":
        child.stdin.close()
        pytest.fail(f"the applier was not killed but {outcome!r}: {child.communicate()[1]}")


def test_sigkill_at_any_moment_leaves_the_old_or_the_new_file(tmp_path: Path) -> None:
    first = config_text(OLD_ADDRESS, KILLED_FILE_SIZE)
    second = config_text(NEW_ADDRESS, KILLED_FILE_SIZE)
    span = 2 * one_apply_duration(tmp_path, first, second)
    etc, backups = tmp_path / "etc", tmp_path / "backups"
    etc.mkdir()
    target = etc / "pjsip.conf"
    target.write_bytes(first)
    (tmp_path / "first").write_bytes(first)
    (tmp_path / "second").write_bytes(second)
    backup = backup_path(backups, target)
    seen: set[bytes] = set()
    left_behind = 0
    with killer(target, tmp_path / "first", tmp_path / "second", backups) as child:
        for _ in range(KILLS):
            kill_after(child, random.uniform(0, span))
            content = target.read_bytes()
            assert content in (first, second)
            seen.add(content)
            assert not backup.exists() or backup.read_bytes() in (first, second)
            # Each applier cleans what the previous kill left: never more than its own remains.
            left = leftover_temp_files(etc, backup.parent)
            assert len(left) <= 2, left
            left_behind += bool(left)
            # What Asterisk's `#include *.conf` would read: never a temp file.
            assert glob.glob(str(etc / "*.conf")) == [str(target)]
    assert seen == {first, second}
    assert left_behind > 0  # some kills did land between the temp file's creation and its rename
    clean_stale_temp_files(etc, time.time())
    clean_stale_temp_files(backup.parent, time.time())
    assert leftover_temp_files(etc, backup.parent) == []
