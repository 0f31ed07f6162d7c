"""A scripted NAT-PMP "router" on loopback: it answers each request with the datagrams a test
chose (replies with any result code, strays, nothing), and records when requests came.

Routers answering 0.0.0.0 or an error code, or sending garbage, are hard to make miniupnpd
imitate; this speaks the same wire format from a real UDP socket instead.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import threading
import time
from collections.abc import Sequence
from types import TracebackType

REPLY = struct.Struct("!BBHI4s")  # version, opcode, result code, epoch seconds, IPv4 address


def encode_reply(epoch: int, address: str, result: int = 0) -> bytes:
    """A public-address reply as RFC 6886 §3.2 lays it out."""
    return REPLY.pack(0, 128, result, epoch, ipaddress.IPv4Address(address).packed)


class NatPmpResponder:
    """Answer request number n with the n-th entry of `script` (a list of datagrams); once the
    script is used up, stay silent. `requests` holds (seconds since start, datagram)."""

    def __init__(self, script: Sequence[Sequence[bytes]] = ()) -> None:
        self.script = [list(answers) for answers in script]
        self.requests: list[tuple[float, bytes]] = []
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.settimeout(0.05)
        self.port = int(self._sock.getsockname()[1])
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="natpmp-responder", daemon=True)
        self._started = time.monotonic()

    def __enter__(self) -> NatPmpResponder:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stopping.set()
        self._thread.join()
        self._sock.close()

    def request_times(self) -> list[float]:
        return [at for at, _ in self.requests]

    def _serve(self) -> None:
        while not self._stopping.is_set():
            try:
                data, client = self._sock.recvfrom(64)
            except TimeoutError:
                continue  # only to notice _stopping
            number = len(self.requests)
            self.requests.append((time.monotonic() - self._started, data))
            for answer in self.script[number] if number < len(self.script) else []:
                self._sock.sendto(answer, client)
