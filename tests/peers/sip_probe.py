"""A small SIP peer on loopback that records what Asterisk really puts on the wire.

It is the registrar Asterisk registers to, the contact Asterisk qualifies with OPTIONS, and the
phone Asterisk calls: REGISTER gets 200 OK (with the Contact and an expiry, so Asterisk is
content), OPTIONS 200 OK, INVITE 486 Busy Here (Asterisk then ACKs; the INVITE and its SDP offer
are what the tests read). Every request is kept with its Via, Contact and SDP `c=`/`o=` lines, so
a test asserts on the bytes Asterisk sent, not on what it prints.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.peers.real_asterisk import PROBE_HOST
from tests.support import free_port, wait_until

_HEADER = re.compile(r"^([A-Za-z-]+)\s*:\s*(.*)$")
# RFC 3261 section 7.3.3 compact forms of the headers read here
_COMPACT = {
    "v": "via",
    "m": "contact",
    "f": "from",
    "t": "to",
    "i": "call-id",
    "l": "content-length",
}


@dataclass(frozen=True)
class Request:
    method: str
    headers: tuple[tuple[str, str], ...]  # (lower-case name, value), in order
    body: str
    at: float

    def all(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name]

    def first(self, name: str) -> str:
        values = self.all(name)
        return values[0] if values else ""

    @property
    def via(self) -> str:
        return self.first("via")

    @property
    def contact(self) -> str:
        return self.first("contact")

    def sdp(self, kind: str) -> str:
        """The SDP line of `kind` ("c", "o"), without the "x=" prefix."""
        for line in self.body.splitlines():
            if line.startswith(f"{kind}="):
                return line[2:]
        return ""


def parse(data: bytes, at: float) -> Request | None:
    text = data.decode("utf-8", "replace")
    head, _, body = text.partition("\r\n\r\n")
    lines = head.split("\r\n")
    if not lines or lines[0].startswith("SIP/2.0"):
        return None  # a response to something we never send
    method = lines[0].split(" ", 1)[0]
    headers = []
    for line in lines[1:]:
        match = _HEADER.match(line)
        if match:
            name = match.group(1).lower()
            headers.append((_COMPACT.get(name, name), match.group(2).strip()))
    return Request(method, tuple(headers), body, at)


def answer(request: Request) -> bytes | None:
    """The response the probe sends, or None (ACK gets none)."""
    if request.method == "ACK":
        return None
    status = {"REGISTER": "200 OK", "OPTIONS": "200 OK", "INVITE": "486 Busy Here"}.get(
        request.method, "200 OK"
    )
    lines = [f"SIP/2.0 {status}"]
    lines += [f"Via: {via}" for via in request.all("via")]
    to = request.first("to")
    lines += [
        f"From: {request.first('from')}",
        f"To: {to}" if ";tag=" in to else f"To: {to};tag=probe",
        f"Call-ID: {request.first('call-id')}",
        f"CSeq: {request.first('cseq')}",
    ]
    if request.method == "REGISTER" and request.contact:
        lines.append(f"Contact: {request.contact};expires=120")
    lines.append("Content-Length: 0")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class SipProbe:
    """Listens on PROBE_HOST:port (UDP) in a thread until closed; `requests` is what came."""

    def __init__(self, host: str = PROBE_HOST) -> None:
        self.host = host
        self.port = free_port(host=host)
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._socket.bind((host, self.port))
        self._socket.settimeout(0.2)
        self._lock = threading.Lock()
        self._requests: list[Request] = []
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def uri(self) -> str:
        return f"sip:probe@{self.host}:{self.port}"

    def _serve(self) -> None:
        while not self._closing.is_set():
            try:
                data, sender = self._socket.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            request = parse(data, time.monotonic())
            if request is None:
                continue
            with self._lock:
                self._requests.append(request)
            reply = answer(request)
            if reply is not None:
                self._socket.sendto(reply, sender)

    def requests(self, method: str | None = None) -> list[Request]:
        with self._lock:
            return [r for r in self._requests if method is None or r.method == method]

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()

    def wait_for(self, method: str, carrying: str, timeout: float = 30.0) -> Request:
        """The first `method` request whose Via and Contact (or SDP) name the address `carrying`."""

        def found() -> Request | None:
            for request in self.requests(method):
                if carries(request, carrying):
                    return request
            return None

        return wait_until(found, timeout, f"a {method} carrying {carrying} at the probe")

    def close(self) -> None:
        # The thread stops within its 0.2 s receive timeout; the socket is closed after it, so
        # a reply under way never meets a closed descriptor.
        self._closing.set()
        self._thread.join(timeout=5)
        self._socket.close()


def carries(request: Request, address: str) -> bool:
    """Whether Via and Contact, and the SDP `c=`/`o=` lines if any, all name `address`."""
    pattern = re.compile(rf"(?<![\d.]){re.escape(address)}(?![\d])")
    places = [request.via, request.contact]
    if request.body:
        places += [request.sdp("c"), request.sdp("o")]
    return all(pattern.search(place) for place in places)


@pytest.fixture(name="sip_probe")
def sip_probe_fixture() -> Iterator[SipProbe]:
    probe = SipProbe()
    yield probe
    probe.close()
