"""Kind "command": run a program that prints the address (a script asking a router, say).

The program is run without a shell, exactly as `argv` says, with stdin from /dev/null, in a
session and process group of its own. When it exits, when it overruns the budget, or when it
prints more than `max_bytes`, the whole group is killed: nothing it started may outlive the
question (a daemon leaking one stray process per round would never be noticed until too late).
Both pipes are read as data arrives, so a chatty stderr cannot block it and a flooding stdout
costs at most `max_bytes` plus one read of memory.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import Annotated, Any

from ipwatch.addresses import Family, find_address
from ipwatch.errors import SourceError
from ipwatch.schema import Parser, PositiveInt, format_duration

_READ_SIZE = 65536
_STDERR_TAIL = 4096


def parse_argv(value: Any) -> tuple[str, ...]:
    """Given the `argv` key, return it as a tuple if it is a non-empty list of strings."""
    if not isinstance(value, list):
        raise ValueError(f'expected a list like ["/usr/local/bin/myip", "--ipv4"], got {value!r}')
    if not value or value[0] == "":
        raise ValueError('empty; put the program first, like ["/usr/local/bin/myip"]')
    for index, item in enumerate(value):
        if not isinstance(item, str) or "\0" in item:
            raise ValueError(f"item {index} is {item!r}; every item must be a string without NUL")
    return tuple(value)


@dataclass(frozen=True)
class Options:
    argv: Annotated[tuple[str, ...], Parser(parse_argv)]
    max_bytes: PositiveInt = 4096


def ask(options: Options, family: Family, timeout: float) -> str:
    """Run the command once and return the first address of `family` it printed on stdout;
    raise SourceError naming the program (not its arguments, which may hold secrets)."""
    deadline = time.monotonic() + timeout
    program = options.argv[0]
    with _start(options.argv) as process:
        try:
            stdout, stderr = _collect(process, program, options.max_bytes, deadline, timeout)
        finally:
            _kill_group(process)
    _check_status(process.returncode, program, stderr)
    return find_address(stdout.decode("utf-8", "replace"), family, f"the command {program}")


def _start(argv: tuple[str, ...]) -> subprocess.Popen[bytes]:
    try:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
    except FileNotFoundError:
        raise SourceError(
            f"the command {argv[0]} was not found; check argv[0] (no shell, no ~)"
        ) from None
    except PermissionError:
        raise SourceError(f"the command {argv[0]} cannot be run (permission denied)") from None
    except OSError as error:
        raise SourceError(f"the command {argv[0]} cannot be started ({error.strerror})") from None


def _collect(
    process: subprocess.Popen[bytes], program: str, max_bytes: int, deadline: float, timeout: float
) -> tuple[bytes, bytes]:
    """Read stdout and the tail of stderr until the program has exited and both pipes are closed.

    The program's exit is watched through a pidfd, which does not reap it: until the caller
    reaps it, its pid cannot be reused, so killing its process group cannot hit a stranger.
    """
    assert process.stdout is not None and process.stderr is not None
    stdout = bytearray()
    stderr = bytearray()
    pidfd = os.pidfd_open(process.pid)
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ, stdout)
            selector.register(process.stderr, selectors.EVENT_READ, stderr)
            selector.register(pidfd, selectors.EVENT_READ, None)
            while selector.get_map():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SourceError(
                        f"the command {program} did not finish within {format_duration(timeout)};"
                        " it was killed"
                    )
                for key, _ in selector.select(left):
                    if key.data is None:
                        # Whatever it left running would hold the pipes open: end it now.
                        selector.unregister(pidfd)
                        _kill_group(process)
                        continue
                    chunk = os.read(key.fd, _READ_SIZE)
                    if not chunk:
                        selector.unregister(key.fileobj)
                    key.data.extend(chunk)
                    if len(stdout) > max_bytes:
                        raise SourceError(
                            f"the command {program} printed more than {max_bytes} bytes; an"
                            " address needs far fewer (or raise max_bytes)"
                        )
                    del stderr[:-_STDERR_TAIL]
    finally:
        os.close(pidfd)
    return bytes(stdout), bytes(stderr)


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    # start_new_session made the program the leader of a group whose id is its pid.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def _check_status(status: int | None, program: str, stderr: bytes) -> None:
    if status == 0:
        return
    lines = stderr.decode("utf-8", "replace").strip().splitlines()
    said = f": {lines[-1].strip()[:200]}" if lines else " and printed nothing on stderr"
    if status is not None and status < 0:
        raise SourceError(f"the command {program} was killed by {_signal_name(-status)}{said}")
    raise SourceError(f"the command {program} exited with status {status}{said}")


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
