"""Kind "natpmp": the router's own idea of its public address, asked with NAT-PMP (RFC 6886).

The request is two bytes (version 0, opcode 0) to the gateway's UDP port 5351, from a connected
socket so that the kernel drops datagrams from anyone else (§3.2 asks clients to check the
source). Retransmissions follow §3.1: wait 250 ms, doubling each time, at most 9 requests, all of
it cut short by the source's timeout. Datagrams that are not a reply (wrong version, opcode or
length) are ignored: a stray never ends the exchange.

The router reports the address of its WAN interface. Behind carrier-grade NAT or a second router
that is not what the Internet sees (or the router refuses with result 3, as miniupnpd does), which
is why this source is best paired with an outside one such as stun.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

from ipwatch.addresses import Family
from ipwatch.errors import NoPublicAddress, SourceError
from ipwatch.schema import Parser

if TYPE_CHECKING:
    from ipwatch.sources.push import Changed, Channel, Hint

DEFAULT_PORT = 5351
ROUTE_TABLE = "/proc/net/route"
FIRST_WAIT = 0.25  # §3.1
# §3.1: "after sending its ninth attempt ... conclude that this gateway does not support NAT-PMP"
MAX_REQUESTS = 9
RECEIVE_SIZE = 64  # a reply is 12 bytes; longer datagrams are cut and still parse
_REQUEST = b"\0\0"  # version 0, opcode 0: "what is your public address?"
_REPLY_OPCODE = 128  # 128 + the request's opcode
_HEADER = struct.Struct("!BBHI")  # version, opcode, result code, seconds since start of epoch
_REPLY_SIZE = _HEADER.size + 4  # ... and the external IPv4 address
_RTF_UP, _RTF_GATEWAY, _RTF_REJECT = 0x0001, 0x0002, 0x0200  # linux/route.h

# RFC 6886 §3.5 result codes: what they mean, then what the user can do about it.
_RESULTS = {
    1: (
        "unsupported version",
        "the router speaks a newer protocol only (PCP); use a upnp or stun source instead",
    ),
    2: (
        "not authorized/refused",
        "NAT-PMP is disabled on the router; enable it there or remove this source",
    ),
    3: (
        "network failure",
        "the router has no public address: its WAN link is down or not yet configured, or its"
        " WAN address is private, carrier-grade NAT (100.64.0.0/10) or otherwise reserved, in"
        " which case only an outside source such as stun can tell the public address",
    ),
    4: (
        "out of resources",
        "the router cannot serve NAT-PMP right now; this usually passes, otherwise restart it",
    ),
    5: (
        "unsupported opcode",
        "the router does not offer the public-address request; use a upnp or stun source instead",
    ),
}


class NatPmpError(Exception):
    """A datagram that gives no address: not a reply at all, or a reply with an error code."""


class MalformedReply(NatPmpError):
    """Not a reply to our request (too short, wrong version or opcode): to be ignored."""


class ResultCodeError(NatPmpError):
    """A well-formed reply whose result code says the router could not answer."""

    def __init__(self, code: int, epoch: int) -> None:
        meaning = _RESULTS.get(code, ("unknown result code",))[0]
        super().__init__(f"result {code} ({meaning})")
        self.code = code
        self.epoch = epoch


def request() -> bytes:
    """The public-address request (§3.2)."""
    return _REQUEST


def parse_reply(data: bytes) -> tuple[int, ipaddress.IPv4Address]:
    """Given a datagram from the gateway, return (seconds since start of epoch, public address).

    Raise MalformedReply when it is not a public-address reply, ResultCodeError when it is one
    with a non-zero result code. Error replies may be only 8 bytes long (§3.5, "Unsupported
    Version"), so the result code is checked before the length of a successful reply.
    """
    if len(data) < _HEADER.size:
        raise MalformedReply(f"{len(data)} bytes, shorter than any reply")
    version, opcode, result, epoch = _HEADER.unpack_from(data)
    if version != 0:
        raise MalformedReply(f"version {version}, not 0")
    if opcode != _REPLY_OPCODE:
        raise MalformedReply(f"opcode {opcode}, not {_REPLY_OPCODE}")
    if result != 0:
        raise ResultCodeError(result, epoch)
    if len(data) < _REPLY_SIZE:
        raise MalformedReply(f"{len(data)} bytes, shorter than a public-address reply")
    return epoch, ipaddress.IPv4Address(data[_HEADER.size : _REPLY_SIZE])


def default_gateway(route_table: str) -> ipaddress.IPv4Address | None:
    """Given the text of /proc/net/route, return the gateway of the usable IPv4 default route
    with the lowest metric, or None when there is none.

    The kernel prints each address as the hexadecimal of its four network-order bytes read as
    a host-order integer, so the bytes come back with the host's byte order.
    """
    best: tuple[int, ipaddress.IPv4Address] | None = None
    for line in route_table.splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        try:
            destination, gateway, flags = (int(fields[i], 16) for i in (1, 2, 3))
            metric, mask = int(fields[6]), int(fields[7], 16)
        except ValueError:  # the header line
            continue
        usable = flags & (_RTF_UP | _RTF_GATEWAY) == _RTF_UP | _RTF_GATEWAY
        if destination or mask or not usable or flags & _RTF_REJECT or gateway >> 32:
            continue
        candidate = (metric, ipaddress.IPv4Address(gateway.to_bytes(4, sys.byteorder)))
        if best is None or candidate[0] < best[0]:
            best = candidate
    return None if best is None else best[1]


def parse_gateway(value: Any) -> ipaddress.IPv4Address:
    if not isinstance(value, str):
        raise ValueError(f'expected the router\'s IPv4 address like "192.168.1.1", got {value!r}')
    try:
        return ipaddress.IPv4Address(value.strip())
    except ValueError:
        raise ValueError(
            f"{value!r} is not an IPv4 address; NAT-PMP reaches the router by its IPv4 address"
        ) from None


def parse_port(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError(f"expected a port number from 1 to 65535, got {value!r}")
    return value


@dataclass(frozen=True)
class Options:
    # None: the gateway of the default route, looked up at each ask (it may change with DHCP).
    gateway: Annotated[ipaddress.IPv4Address, Parser(parse_gateway)] | None = None
    port: Annotated[int, Parser(parse_port)] = DEFAULT_PORT
    # Also listen for the gateway's announcements (natpmp_push.py): one starts a round at once.
    push: bool = True


def push_channel(options: Options, name: str, hint: Hint, changed: Changed) -> Channel | None:
    """The announcement listener of this source, or None with `push = false`."""
    if not options.push:
        return None
    from ipwatch.sources import natpmp_push

    return natpmp_push.channel(options, name, hint, changed)


def serves(options: Options, family: Family) -> bool:
    """NAT-PMP knows only IPv4 (RFC 6886); PCP's IPv6 is another protocol."""
    return family == "ipv4"


def ask(options: Options, family: Family, timeout: float) -> str:
    """Return the public address the router reports (0.0.0.0 too: decide rejects it with its
    reason); raise SourceError for silence, a refusal or a result code, saying what to do."""
    gateway = options.gateway or _gateway_of_default_route()
    name = f"{gateway}:{options.port}"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect((str(gateway), options.port))
            return str(_exchange(sock, name, timeout))
        except ConnectionRefusedError:
            raise SourceError(
                f"{name} refused NAT-PMP (ICMP port unreachable): the router does not run it;"
                " enable NAT-PMP there, or set `gateway` if that is not the router"
            ) from None
        except OSError as error:
            raise SourceError(f"{name} cannot be reached ({error.strerror or error})") from None


def _gateway_of_default_route() -> ipaddress.IPv4Address:
    try:
        with open(ROUTE_TABLE, encoding="ascii", errors="replace") as table:
            gateway = default_gateway(table.read())
    except OSError as error:
        raise SourceError(
            f"cannot read {ROUTE_TABLE} to find the router ({error.strerror}); set `gateway`"
        ) from None
    if gateway is None:
        raise SourceError("no IPv4 default route to find the router by; set `gateway`")
    return gateway


def _exchange(sock: socket.socket, name: str, timeout: float) -> ipaddress.IPv4Address:
    started = time.monotonic()
    deadline = started + timeout
    sent = ignored = 0
    wait = FIRST_WAIT
    while sent < MAX_REQUESTS and (now := time.monotonic()) < deadline:
        sock.send(request())
        sent += 1
        until = min(now + wait, deadline)
        while (left := until - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                data = sock.recv(RECEIVE_SIZE)
            except TimeoutError:
                continue  # the loop condition decides, so a wake-up a hair early does not count
            try:
                return parse_reply(data)[1]
            except ResultCodeError as error:
                failure = NoPublicAddress if error.code == 3 else SourceError
                raise failure(_explain(name, error.code)) from None
            except MalformedReply:
                ignored += 1
        wait *= 2
    requests = f"{sent} request{'s' if sent != 1 else ''} sent"
    strays = f", {ignored} datagram(s) that were no reply ignored" if ignored else ""
    raise SourceError(
        f"no NAT-PMP answer from {name} within {time.monotonic() - started:.1f} s"
        f" ({requests}{strays}): NAT-PMP is off on the router, a firewall drops it,"
        " or `gateway` is not the router"
    )


def _explain(name: str, code: int) -> str:
    meaning, advice = _RESULTS.get(
        code, ("unknown result code", "the router's NAT-PMP is broken; use another source")
    )
    return f"{name} answered NAT-PMP result {code} ({meaning}): {advice}"
