"""Real coturn STUN servers on 127.0.0.1 and ::1, and ipwatch's own loopback responder.

coturn runs `--stun-only` on a free port with its pidfile and user database in a temporary
directory (LAB.md); a fixture returns only once the server has answered a Binding request, and
stops it (terminate, then wait) on teardown.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ipwatch import stun
from ipwatch.stun_responder import StunResponder
from tests.support import free_port, ipv6_loopback_available, missing, need, stop, wait_until

START_TIMEOUT = 10.0


@dataclass(frozen=True)
class Coturn:
    host: str
    port: int
    log: Path

    @property
    def server(self) -> str:
        """The address as a config file writes it: "host:port" or "[v6]:port"."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@pytest.fixture(scope="session")
def coturn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coturn]:
    """coturn answering STUN on 127.0.0.1."""
    yield from _run_coturn("127.0.0.1", tmp_path_factory.mktemp("coturn4"))


@pytest.fixture(scope="session")
def coturn6(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coturn]:
    """coturn answering STUN on ::1."""
    if not ipv6_loopback_available():
        missing("IPv6 loopback (::1) is not available")
    yield from _run_coturn("::1", tmp_path_factory.mktemp("coturn6"))


@pytest.fixture
def stun_responder() -> Iterator[StunResponder]:
    """ipwatch's STUN responder on 127.0.0.1, answering with the client's own address."""
    with StunResponder("127.0.0.1") as responder:
        yield responder


@pytest.fixture
def stun_responder6() -> Iterator[StunResponder]:
    """ipwatch's STUN responder on ::1, answering with the client's own address."""
    if not ipv6_loopback_available():
        missing("IPv6 loopback (::1) is not available")
    with StunResponder("::1") as responder:
        yield responder


def coturn_command(host: str, port: int, directory: Path) -> list[str]:
    """coturn as a STUN-only server on host:port, its pidfile and database in `directory`."""
    return [
        need("turnserver", "coturn"),
        "-n",
        "--stun-only",
        f"--listening-ip={host}",
        f"--listening-port={port}",
        "--no-tls",
        "--no-dtls",
        "--no-cli",
        "--no-software-attribute",
        "--no-rfc5780",
        "--log-file=stdout",
        "--simple-log",
        f"--pidfile={directory / 'turn.pid'}",
        f"--userdb={directory / 'turndb'}",
    ]


def _run_coturn(host: str, directory: Path) -> Iterator[Coturn]:
    port = free_port(host=host)
    log = directory / "turnserver.log"
    command = coturn_command(host, port, directory)
    with log.open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: _answers(process, host, port, log), START_TIMEOUT, f"coturn on {host}")
        yield Coturn(host, port, log)
    finally:
        stop(process)


def _answers(process: subprocess.Popen[bytes], host: str, port: int, log: Path) -> bool:
    """One Binding request with a short wait; fail at once if coturn has exited."""
    if process.poll() is not None:
        pytest.fail(f"turnserver exited with {process.returncode}: {log.read_text()[-2000:]}")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    transaction_id = stun.new_transaction_id()
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect((host, port))
        probe.settimeout(0.1)
        try:
            probe.send(stun.binding_request(transaction_id))
            stun.parse_response(probe.recv(2048), transaction_id)
        except (OSError, stun.StunError):
            return False
    return True
