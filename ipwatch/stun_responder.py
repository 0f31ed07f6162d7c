"""A tiny STUN Binding responder on loopback, for `ipwatch demo` and for the tests.

It answers every valid Binding request with a chosen mapped address (`answer`), or with the
client's own address like a real server when `answer` is None. `reply` replaces the answer
for tests that need a server misbehaving: it gets each `Request` and returns the datagrams to
send back (none, malformed ones, answers to other transactions, several).

    with StunResponder(answer="203.0.113.7") as responder:
        ...  # servers = [responder.server]
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import TracebackType

from ipwatch import stun


@dataclass(frozen=True)
class Request:
    """One Binding request as the responder received it; `number` counts from 1."""

    data: bytes
    transaction_id: bytes
    client: tuple[str, int]
    number: int


Reply = Callable[[Request], Iterable[bytes]]


class StunResponder:
    """A Binding responder on its own thread and UDP socket; use it as a context manager."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, answer: str | None = None) -> None:
        self.host = host
        self.answer = answer
        self.reply: Reply | None = None
        self.requests = 0
        self._requested_port = port
        self._socket: socket.socket | None = None
        self._wake: tuple[socket.socket, socket.socket] | None = None
        self._thread: threading.Thread | None = None
        self._failure: Exception | None = None

    @property
    def port(self) -> int:
        if self._socket is None:
            raise RuntimeError("the responder is not running; use it in a with block")
        return int(self._socket.getsockname()[1])

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) the responder listens on."""
        return self.host, self.port

    @property
    def server(self) -> str:
        """The listening address as a config file writes it: "host:port" or "[v6]:port"."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def respond(self, request: Request) -> bytes:
        """Return the honest answer to `request`, for `reply` hooks that wrap it."""
        address = self.answer if self.answer is not None else request.client[0]
        return stun.binding_success(request.transaction_id, address, request.client[1])

    def start(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_DGRAM)
        try:
            self._socket.bind((self.host, self._requested_port))
        except OSError:
            self._socket.close()
            self._socket = None
            raise
        self._wake = socket.socketpair()
        self._thread = threading.Thread(
            target=self._serve, name=f"stun-responder-{self.port}", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        """Stop the thread, close the sockets, and re-raise what a `reply` hook raised."""
        if self._thread is not None and self._wake is not None:
            self._wake[1].send(b"\0")
            self._thread.join()
        for sock in (self._socket, *(self._wake or ())):
            if sock is not None:
                sock.close()
        self._socket = self._wake = self._thread = None
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise RuntimeError("the STUN responder's reply hook failed") from failure

    def __enter__(self) -> StunResponder:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _serve(self) -> None:
        assert self._socket is not None and self._wake is not None
        while True:
            readable, _, _ = select.select([self._socket, self._wake[0]], [], [])
            if self._wake[0] in readable:
                return
            data, client = self._socket.recvfrom(2048)
            self._handle(data, (client[0], client[1]))

    def _handle(self, data: bytes, client: tuple[str, int]) -> None:
        assert self._socket is not None
        try:
            transaction_id = stun.parse_request(data)
        except stun.StunError:
            return  # RFC 8489 §6.3: what is not a valid request is silently discarded
        self.requests += 1
        request = Request(data, transaction_id, client, self.requests)
        for datagram in self._replies(request):
            # A client that has gone away is its own problem, not a reason to stop serving.
            with contextlib.suppress(OSError):
                self._socket.sendto(datagram, client)

    def _replies(self, request: Request) -> list[bytes]:
        if self.reply is None:
            return [self.respond(request)]
        try:
            return list(self.reply(request))
        except Exception as failure:  # kept for close(), so the test that set the hook sees it
            self._failure = self._failure or failure
            return []
