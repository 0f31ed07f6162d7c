"""Watch the config file and the target files for changes made by someone else.

FreePBX rewrites its files on every `fwconsole reload`; an admin edits pjsip.conf by hand. The
watcher calls back with the changed path; the daemon reconciles. Directories are watched rather
than files, because editors and ipwatch itself replace files by renaming over them.

An event only wakes the daemon; what changed is decided later, in the daemon's serialised worker,
by comparing each file's (inode, size, mtime) with a snapshot, which leaves out the events of
other files in the same directories. ipwatch's own writes do show as changes; the daemon's plan
then finds the files in sync.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger("ipwatch")

Fingerprint = tuple[int, int, int] | None


def fingerprint(path: Path) -> Fingerprint:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_ino, info.st_size, info.st_mtime_ns


class FileWatcher:
    """Calls `on_change(path)` from watchdog's thread when a watched file changes."""

    def __init__(self, on_change: Callable[[Path], None]) -> None:
        # Imported here: the watchdog package is only needed by `ipwatch run`.
        from watchdog.events import FileSystemEvent, FileSystemEventHandler
        from watchdog.observers import Observer

        watcher = self

        class _Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                if event.event_type in ("opened", "closed_no_write", "closed"):
                    return
                for raw in (event.src_path, getattr(event, "dest_path", "")):
                    if raw:
                        watcher._seen(Path(os.fsdecode(raw)))

        self._handler = _Handler()
        self._observer: Any = Observer()
        self._observer.daemon = True
        self._on_change = on_change
        self._files: dict[Path, Fingerprint] = {}
        self._watches: dict[Path, Any] = {}

    def start(self) -> None:
        self._observer.start()

    def stop(self) -> None:
        self._observer.stop()
        self._observer.join(timeout=5)

    def watch(self, files: Iterable[Path]) -> None:
        """Watch exactly `files` (and the directories holding them) from now on."""
        # A file already watched keeps its snapshot: a change not yet looked at stays visible.
        self._files = {
            real: self._files[real] if real in self._files else fingerprint(real)
            for real in map(_real, files)
        }
        directories = {path.parent for path in self._files}
        for directory in set(self._watches) - directories:
            self._observer.unschedule(self._watches.pop(directory))
        for directory in directories - set(self._watches):
            try:
                self._watches[directory] = self._observer.schedule(
                    self._handler, str(directory), recursive=False
                )
            except OSError as error:
                log.warning("watch: cannot watch %s (%s); rounds still check it", directory, error)

    @property
    def files(self) -> tuple[Path, ...]:
        return tuple(self._files)

    def changed(self) -> list[Path]:
        """The watched files that differ from their snapshot (then taken anew)."""
        now = {path: fingerprint(path) for path in self._files}
        changed = [path for path, print_ in now.items() if print_ != self._files[path]]
        self._files = now
        return changed

    def _seen(self, path: Path) -> None:
        if _real(path) in self._files:
            self._on_change(path)


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))
