"""A real systemd notify socket: an AF_UNIX datagram socket that records what a process sends.

`notify_socket` binds it in the test's tmp_path; `.env` is what a child process needs
(`NOTIFY_SOCKET`), so it works for `ipwatch run` in a subprocess as well as in-process. A thread
drains the socket at once — Linux queues only `net.unix.max_dgram_qlen` (10) datagrams, and a
sender blocks when the queue is full — and keeps every datagram in order.

`messages()` is everything received so far, each datagram parsed into a dict of its `KEY=VALUE`
lines. `wait_for(...)` returns the first message after the previous `wait_for`'s match that
satisfies a predicate and/or has the given fields, polling until a deadline; so a sequence
`wait_for(READY="1")`, `wait_for(RELOADING="1")`, `wait_for(READY="1")` checks the order too.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

Message = dict[str, str]


def parse(datagram: bytes) -> Message:
    """sd_notify(3): newline-separated assignments; a line without "=" is kept with value ""."""
    fields: Message = {}
    for line in datagram.decode("utf-8", errors="replace").split("\n"):
        if line:
            key, _, value = line.partition("=")
            fields[key] = value
    return fields


class NotifyListener:
    """Binds `address` (a path, or a str starting with NUL for the abstract namespace)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.env = {"NOTIFY_SOCKET": "@" + address[1:] if address.startswith("\0") else address}
        self._datagrams: list[bytes] = []
        self._cursor = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(address)
        self._socket.settimeout(0.05)  # how soon the thread notices the end of the test
        self._thread = threading.Thread(target=self._drain, name="notify-listener", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while not self._stopping.is_set():
            try:
                datagram = self._socket.recv(65536)
            except TimeoutError:
                continue
            with self._lock:
                self._datagrams.append(datagram)

    def close(self) -> None:
        self._stopping.set()
        self._thread.join()
        self._socket.close()

    def raw(self) -> list[bytes]:
        with self._lock:
            return list(self._datagrams)

    def messages(self) -> list[Message]:
        return [parse(datagram) for datagram in self.raw()]

    def wait_for(
        self,
        predicate: Callable[[Message], bool] | None = None,
        timeout: float = 10.0,
        **fields: str,
    ) -> Message:
        """The first message since the last match that passes `predicate` and has `fields`."""
        wanted = [f"{key}={value}" for key, value in fields.items()]
        wanted_text = ", ".join([*wanted, *(["a predicate"] if predicate else [])])
        deadline = time.monotonic() + timeout
        while True:
            received = self.messages()
            for index in range(self._cursor, len(received)):
                message = received[index]
                if all(message.get(k) == v for k, v in fields.items()) and (
                    predicate is None or predicate(message)
                ):
                    self._cursor = index + 1
                    return message
            if time.monotonic() > deadline:
                pytest.fail(
                    f"timed out after {timeout} s waiting for a notify message with {wanted_text}; "
                    f"received since the last match: {received[self._cursor :]}"
                )
            time.sleep(0.02)


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifyListener]:
    listener = NotifyListener(str(tmp_path / "notify.sock"))
    yield listener
    listener.close()
