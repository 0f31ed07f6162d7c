"""Helpers for every test: real servers skip on a laptop but fail in CI; polling with deadlines."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn, TypeVar

import pytest

T = TypeVar("T")
IN_CI = os.environ.get("CI") == "true"
SBIN_DIRS = ("/usr/sbin", "/sbin", "/usr/local/sbin")
SOURCE_TREE = Path(__file__).resolve().parents[1]


def missing(reason: str) -> NoReturn:
    """Skip with the reason on a developer's machine; in CI a missing server is a failure."""
    if IN_CI:
        pytest.fail(f"CI requires this: {reason}")
    pytest.skip(reason)


def need(program: str, package: str) -> str:
    """Return the path of `program`, or skip/fail naming the Debian package that has it."""
    found = shutil.which(program) or shutil.which(program, path=os.pathsep.join(SBIN_DIRS))
    if found is None:
        missing(f"{program} is not installed (apt-get install {package})")
    return found


def free_port(kind: socket.SocketKind = socket.SOCK_DGRAM, host: str = "127.0.0.1") -> int:
    """A port that is free for both UDP and TCP right now on `host`."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    while True:
        with socket.socket(family, kind) as first:
            first.bind((host, 0))
            port = int(first.getsockname()[1])
            other = socket.SOCK_STREAM if kind == socket.SOCK_DGRAM else socket.SOCK_DGRAM
            with socket.socket(family, other) as second:
                try:
                    second.bind((host, port))
                except OSError:
                    continue
            return port


def wait_until(probe: Callable[[], T | None], timeout: float, what: str, every: float = 0.02) -> T:
    """Poll `probe` until it returns something truthy; at the deadline fail naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


def ipv6_loopback_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


def run_ipwatch(
    *args: str,
    config: Path | None = None,
    state_dir: Path | None = None,
    timeout: float = 60,
    wrapper: list[str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a subprocess, as a user would (under `wrapper`, e.g. prlimit)."""
    command = [*(wrapper or []), sys.executable, "-m", "ipwatch"]
    if config is not None:
        command += ["-c", str(config)]
    if state_dir is not None:
        command += ["--state-dir", str(state_dir)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("IPWATCH_")}
    # This tree's ipwatch also where `python -m` cannot find it from the working directory: under
    # Debian's python3 nothing is installed, and `nsenter --mount` starts the wrapped command in /.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SOURCE_TREE), env.get("PYTHONPATH")]))
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


@contextlib.contextmanager
def ipwatch_daemon(
    config: Path, state_dir: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[str]]:
    """`ipwatch run` in a subprocess; at the end it is stopped and its log printed (pytest shows
    it when the test fails)."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("IPWATCH_")}
    command = [sys.executable, "-m", "ipwatch", "-c", str(config), "--state-dir", str(state_dir)]
    process = subprocess.Popen(
        [*command, "run"], env=environment | (env or {}), stderr=subprocess.PIPE, text=True
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
        print(process.communicate(timeout=20)[1])


def stop(process: subprocess.Popen[bytes]) -> None:
    """Terminate a server the test started, and kill it if it ignores that for 5 s."""
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
