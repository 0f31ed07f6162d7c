"""The "stun" source: a STUN server (RFC 8489 Binding) tells which address our request came from.

Servers are tried in order; each gets an even share of what is left of the budget, so a server
that never answers cannot starve the ones after it, while one that fails at once (ICMP port
unreachable) hands its time on. Each exchange uses a connected UDP socket, so the kernel drops
datagrams from any other source, and only an answer carrying our random transaction id counts.

Retransmissions follow RFC 8489 §6.2.1: the first request, then one after `rto`, doubling each
time, `retransmits` of them (default 6, i.e. the RFC's Rc = 7 requests), then a last wait of
16 times `rto` (Rm); the source's `timeout` cuts all of that short, which with the default 2 s
budget means requests at 0, 0.5 and 1.5 s.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from dataclasses import dataclass
from typing import Annotated, Any

from ipwatch import stun
from ipwatch.addresses import Family, family_of
from ipwatch.errors import SourceError
from ipwatch.schema import Duration, HostPort, Parser, Servers

DEFAULT_PORT = 3478
FINAL_WAIT_IN_RTOS = 16  # Rm, RFC 8489 §6.2.1
MAX_RETRANSMITS = 10
RECEIVE_SIZE = 2048  # answers are far smaller; a longer datagram is cut and fails the length check
_SOCKET_FAMILY = {"ipv4": socket.AF_INET, "ipv6": socket.AF_INET6}


def parse_retransmits(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_RETRANSMITS:
        raise ValueError(f"expected a whole number from 0 to {MAX_RETRANSMITS}, got {value!r}")
    return value


Retransmits = Annotated[int, Parser(parse_retransmits)]


@dataclass(frozen=True)
class Options:
    servers: Servers
    rto: Duration = 0.5
    retransmits: Retransmits = 6
    fingerprint: bool = True


def ask(options: Options, family: Family, timeout: float) -> str:
    """Return the address the first server to answer saw; SourceError names every failure."""
    deadline = time.monotonic() + timeout
    servers = [
        server for server in options.servers if _literal_family(server.host) in (None, family)
    ]
    if not servers:
        listed = ", ".join(str(server) for server in options.servers)
        raise SourceError(
            f"no server can be asked over {family}: {listed} (add a host name or {family} address)"
        )
    failures: list[str] = []
    for index, server in enumerate(servers):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            failures.append(f"{server} not asked (out of time)")
            continue
        share = remaining / (len(servers) - index)
        try:
            return _ask_server(server, family, options, time.monotonic() + share)
        except SourceError as failure:
            failures.append(str(failure))
    if len(failures) == 1:
        raise SourceError(failures[0])
    raise SourceError(f"all {len(failures)} servers failed: " + "; ".join(failures))


def serves(options: Options, family: Family) -> bool:
    """A server given as an address of the other family can never tell our `family` address."""
    return any(_literal_family(server.host) in (None, family) for server in options.servers)


def _literal_family(host: str) -> Family | None:
    try:
        return family_of(ipaddress.ip_address(host))
    except ValueError:
        return None


def _ask_server(server: HostPort, family: Family, options: Options, deadline: float) -> str:
    host, port = server.with_default_port(DEFAULT_PORT)
    name = str(HostPort(host, port))
    address = _resolve(host, port, family, name)
    if address[0] != host:
        name = f"{name} ({address[0]})"
    with socket.socket(_SOCKET_FAMILY[family], socket.SOCK_DGRAM) as sock:
        try:
            # Connected: the kernel discards datagrams from any other address or port (and
            # reports ICMP errors for this peer, which an unconnected socket would not).
            sock.connect(address)
            mapped = _Exchange(sock, name, options).run(deadline)
        except ConnectionRefusedError:
            raise SourceError(f"{name} refused (ICMP port unreachable)") from None
        except OSError as error:
            raise SourceError(f"{name} cannot be reached ({error.strerror or error})") from None
    return str(mapped.address)


def _resolve(host: str, port: int, family: Family, name: str) -> tuple[Any, ...]:
    try:
        found = socket.getaddrinfo(host, port, _SOCKET_FAMILY[family], socket.SOCK_DGRAM)
    except (socket.gaierror, UnicodeError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise SourceError(f"cannot resolve {name} to an {family} address ({reason})") from None
    return found[0][4]


class _Exchange:
    """One STUN transaction with one server: send, retransmit on schedule, wait for our answer."""

    def __init__(self, sock: socket.socket, name: str, options: Options) -> None:
        self.sock = sock
        self.name = name
        self.transaction_id = stun.new_transaction_id()
        self.request = stun.binding_request(self.transaction_id, fingerprint=options.fingerprint)
        # Offsets from the start: each request (RTO doubling, §6.2.1), then giving up after Rm.
        self.sends = [options.rto * (2**n - 1) for n in range(options.retransmits + 1)]
        self.give_up = self.sends[-1] + FINAL_WAIT_IN_RTOS * options.rto
        self.sent = 0
        self.ignored = 0

    def run(self, deadline: float) -> stun.Mapped:
        started = time.monotonic()
        for index in range(len(self.sends)):
            self.sock.send(self.request)
            self.sent += 1
            until = self.sends[index + 1] if index + 1 < len(self.sends) else self.give_up
            answer = self._receive(min(started + until, deadline))
            if answer is not None:
                return self._parse(answer)
            if time.monotonic() >= deadline:
                break
        raise SourceError(self._silence(time.monotonic() - started))

    def _receive(self, until: float) -> bytes | None:
        while (left := until - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(RECEIVE_SIZE)
            except TimeoutError:
                continue  # the loop condition decides, so a wake-up a hair early does not count
            if stun.is_response_to(data, self.transaction_id):
                return data
            self.ignored += 1  # RFC 8489 §6.3: not our transaction, so not our business
        return None

    def _parse(self, answer: bytes) -> stun.Mapped:
        try:
            return stun.parse_response(answer, self.transaction_id)
        except stun.StunErrorResponse as error:
            raise SourceError(f"{self.name} answered with {error}") from None
        except stun.StunError as error:
            raise SourceError(f"{self.name} sent a bad answer: {error}") from None

    def _silence(self, elapsed: float) -> str:
        requests = f"{self.sent} request{'s' if self.sent != 1 else ''} sent"
        ignored = f", {self.ignored} unrelated datagram(s) ignored" if self.ignored else ""
        return f"no answer from {self.name} within {elapsed:.2g} s ({requests}{ignored})"
