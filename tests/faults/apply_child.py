"""A process applying file changes under a fault the test set up around it (limit, mount, user).

`apply SPEC.json`: apply the changes SPEC describes, print a JSON report of the outcome and of the
files as they are afterwards (the test may not see them: a private mount vanishes with the process),
exit 0, or ApplyError's exit status with its message in the report.

`kill PATH A B BACKUP_DIR`: print "ready"; then for each line DELAY read from stdin, fork a process
that rewrites PATH from one content to the other for ever (cleaning stale temp files first, as
ipwatch does), SIGKILL it after DELAY seconds and print "killed". Forking from this one prepared
process, rather than starting Python each time, is what makes hundreds of kills fast; killing from
here, before reaping, means the pid cannot have been reused.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from ipwatch.errors import ApplyError
from ipwatch.files import FileChange, apply_changes, backup_path, clean_stale_temp_files


def main(arguments: list[str]) -> int:
    # A write beyond RLIMIT_FSIZE must fail with EFBIG rather than kill the process.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    if arguments[0] == "apply":
        return apply_once(json.loads(Path(arguments[1]).read_text()))
    if arguments[0] == "kill":
        return kill_appliers(*map(Path, arguments[1:]))
    raise SystemExit(f"unknown mode {arguments[0]!r}")


def apply_once(spec: dict[str, Any]) -> int:
    changes = [
        FileChange(Path(c["path"]), Path(c["old"]).read_bytes(), Path(c["new"]).read_bytes())
        for c in spec["changes"]
    ]
    if spec.get("seed"):
        for change in changes:
            change.path.write_bytes(change.old)
    status, error = 0, None
    try:
        apply_changes(changes, Path(spec["backup_dir"]))
    except ApplyError as failure:
        status, error = failure.exit_status, str(failure)
    print(json.dumps({"error": error, **describe([change.path for change in changes])}))
    return status


def describe(paths: list[Path]) -> dict[str, Any]:
    """Each file's digest and metadata, and the names in each of their directories."""
    files = {}
    for path in paths:
        status = path.stat()
        files[str(path)] = {
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "mtime_ns": status.st_mtime_ns,
            "ino": status.st_ino,
        }
    listings = {str(p.parent): sorted(os.listdir(p.parent)) for p in paths}
    return {"files": files, "listings": listings}


def kill_appliers(path: Path, first: Path, second: Path, backup_dir: Path) -> int:
    contents = (first.read_bytes(), second.read_bytes())
    print("ready", flush=True)
    for line in sys.stdin:
        pid = os.fork()
        if pid == 0:
            try:
                os._exit(apply_for_ever(path, contents, backup_dir))
            except BaseException:
                # Never let the fork return into this loop.
                traceback.print_exc()
                os._exit(1)
        # The random moment of the fault, chosen by the test; not a wait for anything.
        time.sleep(float(line))
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        print("killed" if os.WIFSIGNALED(status) else f"exited {status}", flush=True)
    return 0


def apply_for_ever(path: Path, contents: tuple[bytes, bytes], backup_dir: Path) -> int:
    started = time.time()
    while True:
        for directory in (path.parent, backup_path(backup_dir, path).parent):
            clean_stale_temp_files(directory, started)
        current = path.read_bytes()
        if current not in contents:
            print(f"{path} holds neither version ({len(current)} bytes)", file=sys.stderr)
            return 2
        new = contents[1] if current == contents[0] else contents[0]
        apply_changes([FileChange(path, current, new)], backup_dir)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
