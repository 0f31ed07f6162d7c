"""A real HTTP(S) server on loopback whose answers each test sets: status, body, headers, delays.

`http_peer` listens on 127.0.0.1 and, when IPv6 loopback works, on ::1 at the same port, so a
test can see which family a request arrived over. `https_peer` serves TLS with a throw-away
self-signed certificate for 127.0.0.1 (its `ca_file` is what a client must trust). The servers
are stdlib `http.server` in threads; a slow or trickling answer waits on the peer's stop event,
so teardown ends every handler at once and joins every thread.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support import free_port, ipv6_loopback_available, need, wait_until

START_TIMEOUT = 5.0
_READY_PATH = "/.ready"


@dataclass(frozen=True)
class Route:
    """What one path answers. `delay` is waited before the status line; with `trickle` the body
    is sent one byte at a time, that many seconds apart, without a Content-Length."""

    status: int = 200
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    delay: float = 0.0
    trickle: float = 0.0
    echo: bool = False  # answer with the client's own address instead of `body`


@dataclass(frozen=True)
class Seen:
    """One request as the server received it."""

    path: str
    headers: dict[str, str]
    client: str
    body: bytes = b""  # what a POST sent


@dataclass
class HttpPeer:
    host: str
    port: int
    scheme: str = "http"
    ca_file: Path | None = None
    routes: dict[str, Route] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)

    def url(self, path: str, host: str | None = None) -> str:
        host = host or self.host
        shown = f"[{host}]" if ":" in host else host
        return f"{self.scheme}://{shown}:{self.port}{path}"

    def answer(self, path: str, body: str | bytes = b"", status: int = 200, **options: Any) -> str:
        """Make `path` answer so (see Route for the other options); return its URL."""
        raw = body.encode() if isinstance(body, str) else body
        self.routes[path] = Route(status=status, body=raw, **options)
        return self.url(path)

    def redirect(self, path: str, location: str, status: int = 302) -> str:
        return self.answer(path, status=status, headers=(("Location", location),))

    def requests_to(self, path: str) -> list[Seen]:
        return [request for request in self.seen if request.path == path]


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    timeout = START_TIMEOUT  # a client that never sends its request cannot hold teardown

    def do_GET(self) -> None:
        peer = self.server.peer
        if self.path == _READY_PATH:
            self._send(Route(status=204))
            return
        peer.seen.append(Seen(self.path, dict(self.headers.items()), self._client()))
        self._send(peer.routes.get(self.path, Route(status=404, body=b"no such route\n")))

    def do_POST(self) -> None:
        peer = self.server.peer
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        peer.seen.append(Seen(self.path, dict(self.headers.items()), self._client(), body))
        self._send(peer.routes.get(self.path, Route(status=404, body=b"no such route\n")))

    def _send(self, route: Route) -> None:
        stopping = self.server.peer.stopping
        if route.delay and stopping.wait(route.delay):
            return
        body = self._client().encode() if route.echo else route.body
        try:
            self.send_response(route.status)
            for name, value in route.headers:
                self.send_header(name, value)
            if not route.trickle:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not route.trickle:
                self.wfile.write(body)
                return
            for index in range(len(body)):
                self.wfile.write(body[index : index + 1])
                self.wfile.flush()
                if stopping.wait(route.trickle):
                    return
        except (BrokenPipeError, ConnectionResetError):
            return  # the client gave up, which is what some tests are about

    def _client(self) -> str:
        return str(self.client_address[0])

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = False  # server_close() then joins every handler thread
    block_on_close = True

    def __init__(self, host: str, port: int, peer: HttpPeer) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.peer = peer
        super().__init__((host, port), _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # failed TLS handshakes and dropped clients are expected in these tests


@contextlib.contextmanager
def serve(hosts: tuple[str, ...], tls: ssl.SSLContext | None = None) -> Iterator[HttpPeer]:
    """Run one peer listening on every host in `hosts` at one port, until the block ends."""
    port = _free_port_on_all(hosts)
    peer = HttpPeer(hosts[0], port, "https" if tls else "http")
    servers = [_Server(host, port, peer) for host in hosts]
    if tls is not None:
        for server in servers:
            server.socket = tls.wrap_socket(
                server.socket, server_side=True, do_handshake_on_connect=False
            )
    threads = [
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01})
        for server in servers
    ]
    for thread in threads:
        thread.start()
    try:
        yield peer
    finally:
        peer.stopping.set()
        for server in servers:
            server.shutdown()
        for thread in threads:
            thread.join()
        for server in servers:
            server.server_close()


def wait_ready(peer: HttpPeer, host: str, context: ssl.SSLContext | None = None) -> None:
    def answers() -> bool:
        connection = (
            http.client.HTTPSConnection(host, peer.port, timeout=1, context=context)
            if context
            else http.client.HTTPConnection(host, peer.port, timeout=1)
        )
        try:
            connection.request("GET", _READY_PATH)
            return connection.getresponse().status == 204
        except OSError:
            return False
        finally:
            connection.close()

    wait_until(answers, START_TIMEOUT, f"the test HTTP server on {host} port {peer.port}")


def _free_port_on_all(hosts: tuple[str, ...]) -> int:
    while True:
        port = free_port(socket.SOCK_STREAM, hosts[0])
        if all(_can_bind(host, port) for host in hosts[1:]):
            return port


def _can_bind(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def _loopback_hosts() -> tuple[str, ...]:
    return ("127.0.0.1", "::1") if ipv6_loopback_available() else ("127.0.0.1",)


@pytest.fixture
def http_peer() -> Iterator[HttpPeer]:
    """An HTTP server on 127.0.0.1 (and ::1 at the same port when IPv6 loopback works)."""
    hosts = _loopback_hosts()
    with serve(hosts) as peer:
        for host in hosts:
            wait_ready(peer, host)
        yield peer


@pytest.fixture
def other_http_peer() -> Iterator[HttpPeer]:
    """A second, independent HTTP server on 127.0.0.1: another origin."""
    with serve(("127.0.0.1",)) as peer:
        wait_ready(peer, "127.0.0.1")
        yield peer


@pytest.fixture
def https_peer(tmp_path: Path) -> Iterator[HttpPeer]:
    """An HTTPS server on 127.0.0.1 with a self-signed certificate (trust `ca_file` to use it)."""
    certificate, key = _self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificate, key)
    client = ssl.create_default_context(cafile=str(certificate))
    with serve(("127.0.0.1",), tls=context) as peer:
        peer.ca_file = certificate
        wait_ready(peer, "127.0.0.1", client)
        yield peer


def _self_signed(directory: Path) -> tuple[Path, Path]:
    openssl = need("openssl", "openssl")
    certificate, key = directory / "peer.crt", directory / "peer.key"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
         "-keyout", str(key), "-out", str(certificate)],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    return certificate, key
