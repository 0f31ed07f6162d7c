"""The hooks.d runner: events in, one result per hook out; a hook can fail but never stop ipwatch.

Contract (SPEC.md "Hooks and plugins"): every executable regular file in `hooks.dir`, in byte order
of names, run as `HOOK EVENT` without a shell, the event as JSON on stdin and as `IPWATCH_*`
variables. Security follows networkd-dispatcher: a hook, or the directory holding it, that someone
other than root or the daemon's user could change is refused, because it would run with the
daemon's rights.

The environment is not the daemon's: under systemd that holds `CREDENTIALS_DIRECTORY`,
`NOTIFY_SOCKET` and whatever the unit sets, none of which a hook should see or use. A hook gets
`PATH` (the daemon's, so `Environment=PATH=...` in the unit or a test's PATH reaches hooks), the
identity and locale variables in `PASSED_THROUGH`, and the `IPWATCH_*` variables.

A hook is trusted only if nobody else could swap it between the check and the run. Its path is
resolved here, one name at a time from `/`, without letting the kernel follow anything: every
directory passed through must be owned by root or ipwatch's user and not writable by group or
others (OpenSSH's StrictModes; a sticky directory such as /tmp is allowed, since there others
cannot rename an entry they do not own), and so must every symbolic link read on the way and the
file itself. Then no other user can change what the path names, and the hook is executed by that
path: executing /proc/self/fd/N instead would give scripts `$0` = /proc/self/fd/N, breaking the
`HOOK EVENT` contract.

Each hook runs in a session of its own: at `hooks.timeout` its whole process group gets SIGTERM,
`kill_grace` seconds later SIGKILL, and processes it leaves behind when it exits are ended the
same way (work meant to outlive a hook must detach itself, e.g. with systemd-run).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import signal
import stat
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from ipwatch.redact import mask_userinfo

if TYPE_CHECKING:
    import selectors
    import subprocess

    from ipwatch.addresses import Family
    from ipwatch.config import HooksConfig

log = logging.getLogger("ipwatch")

EventName = Literal["change", "applied", "error", "degraded", "recovered", "test"]
EVENTS: tuple[EventName, ...] = ("change", "applied", "error", "degraded", "recovered", "test")
Status = Literal["ok", "failed", "tempfail", "timeout", "refused"]

EX_TEMPFAIL = 75  # sysexits.h: "try again later"; the caller reruns the hook next round
KILL_GRACE = 5.0
STDERR_TAIL = 4096
PASSED_THROUGH = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SKIPPED_PARTS = ("~", ".dpkg-", ".rpm", ".swp")  # editor and package-manager leftovers
_CHUNK = 65536  # a pipe's default capacity
_POLL = 0.05  # how often a group whose leader has exited is looked at
_AFTER_KILL = 1.0  # only a process stuck in the kernel outlives SIGKILL longer than this
# O_PATH: a directory ipwatch's user may only traverse can still be checked.
_DIRECTORY = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_LINKS = 40  # the kernel's own limit (MAXSYMLINKS)


@dataclass(frozen=True)
class Event:
    """What happened, as hooks see it. Addresses are None where unknown (no family, degraded)."""

    name: EventName
    family: Family | None = None
    old_ipv4: str | None = None
    new_ipv4: str | None = None
    old_ipv6: str | None = None
    new_ipv6: str | None = None
    sources: tuple[tuple[str, str], ...] = ()  # (source name, the address it answered)
    error: str | None = None
    time: float = field(default_factory=time.time)

    @property
    def old_address(self) -> str | None:
        return self._address("old")

    @property
    def new_address(self) -> str | None:
        return self._address("new")

    def _address(self, which: str) -> str | None:
        if self.family not in ("ipv4", "ipv6"):
            return None
        value: str | None = getattr(self, f"{which}_{self.family}")
        return value

    def to_json(self) -> str:
        """The event as one JSON object, which is what a hook reads on stdin."""
        return json.dumps(
            {
                "event": self.name,
                "family": self.family,
                "old_address": self.old_address,
                "new_address": self.new_address,
                "ipv4": {"old": self.old_ipv4, "new": self.new_ipv4},
                "ipv6": {"old": self.old_ipv6, "new": self.new_ipv6},
                "sources": [{"name": name, "address": address} for name, address in self.sources],
                "error": self.error,
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.time)),
            }
        )

    def environment(self, config_path: str) -> dict[str, str]:
        """The `IPWATCH_*` variables of SPEC.md; an unknown value is the empty string."""
        values = {
            "EVENT": self.name,
            "FAMILY": self.family,
            "OLD_ADDRESS": self.old_address,
            "NEW_ADDRESS": self.new_address,
            "OLD_IPV4": self.old_ipv4,
            "NEW_IPV4": self.new_ipv4,
            "OLD_IPV6": self.old_ipv6,
            "NEW_IPV6": self.new_ipv6,
            "SOURCES": " ".join(f"{name}={address}" for name, address in self.sources),
            "ERROR": self.error,
            "CONFIG": config_path,
        }
        return {f"IPWATCH_{key}": value or "" for key, value in values.items()}


def synthetic_event(name: EventName, now: float | None = None) -> Event:
    """An event for `ipwatch hooks test`, with documentation addresses (RFC 5737) only."""
    old, new = "203.0.113.5", "203.0.113.7"
    return Event(
        name=name,
        family="ipv4",
        old_ipv4=old,
        new_ipv4=None if name == "degraded" else new,
        sources=() if name == "degraded" else (("test", new),),
        error="synthetic error from `ipwatch hooks test`" if name == "error" else None,
        time=time.time() if now is None else now,
    )


def hook_environment(
    event: Event, config_path: str, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The whole environment of a hook: a few variables of `base` (the daemon's) and the event's."""
    base = os.environ if base is None else base
    kept = {name: base[name] for name in PASSED_THROUGH if name in base}
    kept.setdefault("PATH", DEFAULT_PATH)
    return kept | event.environment(config_path)


@dataclass(frozen=True)
class HookResult:
    name: str
    status: Status
    returncode: int | None = None  # None: not run, or killed at the timeout
    stderr_tail: str = ""  # one line, sanitised, at most about STDERR_TAIL characters
    seconds: float = 0.0
    reason: str = ""  # why it was refused, could not start, was killed or left processes behind

    def describe(self) -> str:
        """One line for people: `NAME: STATUS[, exit N] (SECONDS s)[: reason; stderr tail]`."""
        line = f"{self.name}: {self.status}"
        if self.returncode:
            code = self.returncode
            line += f", exit {code}" if code > 0 else f", killed by signal {-code}"
        if self.status != "refused":
            line += f" ({self.seconds:.2f} s)"
        details = "; ".join(part for part in (self.reason, self.stderr_tail) if part)
        return f"{line}: {details}" if details else line


@dataclass(frozen=True)
class Hook:
    name: str
    path: str
    refused: str = ""  # the reason, when the hook must not run


def discover(directory: str) -> tuple[list[Hook], str]:
    """The hooks in `directory`, in byte order of names, and a problem with the directory itself.

    A missing directory has no hooks and no problem. Names of editor or package-manager leftovers,
    and entries that are not executable regular files (symlinks are followed), are skipped.
    """
    try:
        names = os.listdir(directory)
        directory_stat = os.stat(directory)
    except FileNotFoundError:
        return [], ""
    except OSError as error:
        return (
            [],
            f"hooks.dir {directory}: cannot be read ({error.strerror}); check its permissions",
        )
    unsafe = _unsafe(directory_stat, f"directory {directory}", directory)
    hooks = []
    for name in sorted(names, key=os.fsencode):
        if name.startswith(".") or any(part in name for part in SKIPPED_PARTS):
            log.debug("hook %s: skipped (a backup or hidden name)", name)
            continue
        path = os.path.join(directory, name)
        try:
            target = os.stat(path)
        except OSError:
            log.debug("hook %s: skipped (a dangling symlink)", name)
            continue
        if not stat.S_ISREG(target.st_mode) or not os.access(path, os.X_OK):
            log.debug("hook %s: skipped (not an executable regular file)", name)
            continue
        hooks.append(Hook(name, path, unsafe or _distrust(path)))
    return hooks, ""


class _Untrusted(Exception):
    """Why a hook must not run, as one sentence."""


def _distrust(path: str) -> str:
    """Why the hook at `path` must not run, checked as the module's docstring says; empty when
    it may."""
    try:
        _resolve_trusted(os.path.abspath(path))
    except _Untrusted as untrusted:
        return str(untrusted)
    except OSError as error:
        return f"{path} cannot be checked ({error.strerror}); it runs once it can"
    return ""


def _resolve_trusted(path: str) -> None:
    """Follow `path` name by name from `/`; raise _Untrusted at the first thing not trusted."""
    pending = list(Path(path).parts[1:])
    where = Path("/")
    directory = os.open(where, _DIRECTORY)
    links = 0
    try:
        _trust(os.fstat(directory), f"directory {where}", where)
        while pending:
            name = pending.pop(0)
            found = os.stat(name, dir_fd=directory, follow_symlinks=False)
            if stat.S_ISLNK(found.st_mode):
                # Read inside a trusted directory, from a link nobody else owns: it stays put.
                _trust(found, f"symbolic link {where / name}", where / name)
                links += 1
                if links > _MAX_LINKS:
                    raise _Untrusted(f"{path} goes through more than {_MAX_LINKS} links")
                target = os.readlink(name, dir_fd=directory)
                pending[:0] = Path(target).parts
                if target.startswith("/"):
                    pending.pop(0)
                    where = Path("/")
                    directory = _move(directory, "/", where)
                continue
            where = where.parent if name == ".." else where / name
            if not pending:
                if not stat.S_ISREG(found.st_mode):
                    raise _Untrusted(f"{where} is not a regular file")
                _trust(found, "it", where, on_the_way=False)
                return
            directory = _move(directory, name, where)
    finally:
        os.close(directory)


def _move(directory: int, name: str, where: Path) -> int:
    """_step, then close the directory moved from (left open for the caller if _step raises)."""
    opened = _step(directory, name, where)
    os.close(directory)
    return opened


def _step(directory: int, name: str, where: Path) -> int:
    """Open `name` in `directory` and check it, as a directory on the way."""
    opened = os.open(name, _DIRECTORY, dir_fd=directory)
    try:
        _trust(os.fstat(opened), f"directory {where}", where)
    except BaseException:
        os.close(opened)
        raise
    return opened


def _trust(found: os.stat_result, what: str, path: Path, on_the_way: bool = True) -> None:
    problem = _unsafe(found, what, str(path))
    if problem and on_the_way and found.st_uid not in (0, os.geteuid()):
        # Handing a directory such as someone's home to root is no fix; moving the hook is.
        problem = (
            f"{what} is owned by uid {found.st_uid}, not root or ipwatch's user, who could swap"
            " the hook there; keep hooks, and the links to them, in directories only root can"
            " change"
        )
    if problem:
        raise _Untrusted(problem)


def _unsafe(found: os.stat_result, what: str, path: str) -> str:
    """Why a file or directory others could change must not be trusted; empty when it is safe."""
    if found.st_uid not in (0, os.geteuid()):
        # Not `chown root` alone: a mode such as 700 would then keep ipwatch's user out.
        return (
            f"{what} is owned by uid {found.st_uid}, not root or ipwatch's user; run chown"
            f" root:root {path} && chmod 755 {path} so that only root can change it and"
            " ipwatch's user can run it"
        )
    sticky = stat.S_ISDIR(found.st_mode) and found.st_mode & stat.S_ISVTX
    # A link's own mode is always 777 and means nothing.
    if (
        found.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        and not sticky
        and not stat.S_ISLNK(found.st_mode)
    ):
        return f"{what} is writable by group or others; chmod go-w {path}"
    return ""


def run_hooks(
    settings: HooksConfig,
    event: Event,
    config_path: str,
    only: Collection[str] | None = None,
    kill_grace: float = KILL_GRACE,
    before_each: Callable[[], None] | None = None,
) -> list[HookResult]:
    """Run every hook in `settings.dir` (or only those named in `only`) for `event`, one at a time.

    `before_each` is called before each hook (the daemon counts it as progress for its watchdog).

    Return one result per hook that was run or refused; never raise for a hook's failure. A
    directory that exists but cannot be read gives one "refused" result named after it.
    """
    hooks, problem = discover(settings.dir)
    if problem:
        log.error("%s", problem)
        return [HookResult(settings.dir, "refused", reason=problem)]
    environment = hook_environment(event, config_path)
    stdin = event.to_json().encode()
    results = []
    for hook in hooks:
        if only is not None and hook.name not in only:
            continue
        if before_each is not None:
            before_each()
        if hook.refused:
            result = HookResult(hook.name, "refused", reason=hook.refused)
        else:
            result = _run(hook, event.name, stdin, environment, settings, kill_grace)
        _log(result, event.name)
        results.append(result)
    return results


def _log(result: HookResult, event: str) -> None:
    line = f"hook {result.describe()} (event {event})"
    if result.status == "ok":
        log.info("%s", line)
    elif result.status == "tempfail":
        log.warning("%s; it runs again next round", line)
    else:
        log.warning("%s", line)


def _run(
    hook: Hook,
    event: str,
    stdin: bytes,
    environment: dict[str, str],
    settings: HooksConfig,
    kill_grace: float,
) -> HookResult:
    import subprocess

    # Again, just before the run: the check is what makes running by name safe.
    refused = _distrust(hook.path)
    if refused:
        return HookResult(hook.name, "refused", reason=refused)
    started = time.monotonic()
    try:
        process = subprocess.Popen(
            [hook.path, event],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=os.path.dirname(hook.path) or "/",
            env=environment,
            start_new_session=True,  # its own process group, so a timeout ends its children too
        )
    except OSError as error:
        hint = " (does it start with a #! line?)" if error.errno == errno.ENOEXEC else ""
        return HookResult(hook.name, "failed", reason=f"cannot start: {error.strerror}{hint}")
    run = _Supervised(process, stdin, started + settings.timeout, kill_grace)
    try:
        run.wait()
    finally:
        # Not `with process`: its wait() would hang on a hook stuck in the kernel past SIGKILL.
        for pipe in (process.stdin, process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()
    seconds = time.monotonic() - started
    tail = _one_line(bytes(run.stderr))
    if run.timed_out:
        reason = f"timed out after {settings.timeout:g} s; its process group was killed"
        return HookResult(hook.name, "timeout", None, tail, seconds, reason)
    code = process.returncode
    reason = "it left processes behind; they were ended" if run.leftovers else ""
    status: Status = "ok" if code == 0 else "tempfail" if code == EX_TEMPFAIL else "failed"
    return HookResult(hook.name, status, code, tail if status != "ok" else "", seconds, reason)


class _Supervised:
    """Feeds stdin, drains stdout and stderr (keeping a tail of stderr) and enforces the deadline.

    Every wait is on file descriptors, the hook's pidfd among them, so a hook that floods its
    output, or whose children keep the pipes open, cannot block ipwatch.
    """

    def __init__(
        self, process: subprocess.Popen[bytes], stdin: bytes, deadline: float, grace: float
    ) -> None:
        self.process = process
        self.pending = stdin
        self.grace = grace
        self.stderr = bytearray()
        self.timed_out = False
        self.leftovers = False
        self.exited = False
        self.group = process.pid  # start_new_session: the hook leads a group of its own
        self.sent = 0  # the last signal sent to the group
        self.next_step = deadline  # when the next signal is due

    def wait(self) -> None:
        import selectors

        process = self.process
        assert process.stdin and process.stdout and process.stderr
        outputs = (process.stdout.fileno(), process.stderr.fileno())
        self.selector: selectors.BaseSelector
        with selectors.DefaultSelector() as self.selector:
            os.set_blocking(process.stdin.fileno(), False)
            self.selector.register(process.stdin.fileno(), selectors.EVENT_WRITE, self._feed)
            for fd in outputs:
                os.set_blocking(fd, False)
                self.selector.register(fd, selectors.EVENT_READ, self._drain)
            pidfd = os.pidfd_open(process.pid)
            try:
                self.selector.register(pidfd, selectors.EVENT_READ, self._reap)
                self._loop()
            finally:
                os.close(pidfd)
            for fd in outputs:
                if fd in self.selector.get_map():
                    self._drain(fd, chunks=16)

    def _loop(self) -> None:
        while not (self.exited and not _group_alive(self.group)):
            now = time.monotonic()
            if now >= self.next_step and not self._escalate(now):
                return
            wait = self.next_step - now
            if self.exited:
                wait = min(wait, _POLL)  # the group's other members have no pidfd to wait on
            for key, _ in self.selector.select(max(0.0, wait)):
                key.data(key.fd)

    def _reap(self, pidfd: int) -> None:
        self.selector.unregister(pidfd)
        self.process.wait()
        self.exited = True
        if self.sent == 0 and _group_alive(self.group):
            self.leftovers = True
            self.next_step = time.monotonic()  # end them now, as a timeout would

    def _escalate(self, now: float) -> bool:
        """Send the group the signal that is due; False once SIGKILL has not ended it either."""
        if self.sent == 0:
            self.timed_out = not self.exited
            self.sent = signal.SIGTERM
            self.next_step = now + self.grace
        elif self.sent == signal.SIGTERM:
            self.sent = signal.SIGKILL
            self.next_step = now + _AFTER_KILL
        else:
            log.warning("hook process group %d survived SIGKILL (stuck in the kernel?)", self.group)
            return False
        # PermissionError: every member left runs as another user (sudo); waiting is all we can do
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.group, self.sent)
        return True

    def _feed(self, fd: int) -> None:
        try:
            written = os.write(fd, self.pending[:_CHUNK])
        except BlockingIOError:
            return
        except BrokenPipeError:
            written = len(self.pending)  # the hook does not read stdin; that is its right
        self.pending = self.pending[written:]
        if not self.pending:
            self.selector.unregister(fd)
            assert self.process.stdin
            self.process.stdin.close()

    def _drain(self, fd: int, chunks: int = 1) -> None:
        """Read up to `chunks` chunks that `fd` holds now (stdout is dropped); stop at its end."""
        for _ in range(chunks):
            try:
                chunk = os.read(fd, _CHUNK)
            except BlockingIOError:
                return
            if not chunk:
                self.selector.unregister(fd)
                return
            if self.process.stderr and fd == self.process.stderr.fileno():
                self.stderr += chunk
                del self.stderr[:-STDERR_TAIL]


def _group_alive(group: int) -> bool:
    """Whether process group `group` still has a member that is not a zombie."""
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # a member runs as another user (a setuid program); it still counts
    # kill() succeeds on zombies too, and an init that does not reap leaves them in the group.
    with os.scandir("/proc") as entries:
        return any(_alive_in(entry.name, group) for entry in entries if entry.name.isdigit())


def _alive_in(pid: str, group: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            state, _, pgrp = file.read().rpartition(b")")[2].split()[:3]
    except OSError:
        return False  # it ended meanwhile
    return state != b"Z" and int(pgrp) == group


def _one_line(raw: bytes) -> str:
    """The stderr tail as one printable line: lines joined by " | ", no control characters."""
    text = raw.decode("utf-8", errors="replace")
    lines = (
        "".join(c if c.isprintable() else " " for c in line).strip() for line in text.splitlines()
    )
    return mask_userinfo(" | ".join(line for line in lines if line))[-STDERR_TAIL:]
