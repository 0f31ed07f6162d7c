"""The natpmp source's push channel: the gateway's address-change announcements (RFC 6886 §3.2.1).

When its public address changes, a NAT-PMP gateway multicasts the new one to 224.0.0.1:5350
from its port 5351. miniupnpd 2.3.1 sends exactly one such datagram per change (no repeats,
LAB.md), followed by a 24-byte PCP ANNOUNCE (version 2) to the same port: the first is the hint,
the second is counted and ignored. Some announcements carry 0.0.0.0 with epoch 0 (a WAN without
an address yet): ignored too. Epoch 0 alone is no reason to ignore one: miniupnpd restarts its
epoch at each event, and in the lab the announcement of the *new* address, sent when the old one
is deleted, carried epoch 0 (the one sent when the new address was added named the old one).

Only datagrams from the gateway's address and port 5351 count. UDP's source is easy to forge on
a LAN, which is why an announcement is only a hint: it starts a round, and the round decides.

The socket options are those that worked in the lab: SO_REUSEADDR and SO_REUSEPORT (another
NAT-PMP client on the host may listen too), bound to 0.0.0.0:5350 (a socket bound to the group
address would not see the unicast some gateways send instead), and membership of 224.0.0.1 on
the address of the interface that leads to the gateway.
"""

from __future__ import annotations

import ipaddress
import socket
import struct

from ipwatch.sources import natpmp
from ipwatch.sources.push import Changed, Channel, ChannelError, Hint

GROUP = "224.0.0.1"
CLIENT_PORT = 5350
RECEIVE_SIZE = 64  # announcements are 12 (NAT-PMP) or 24 (PCP) bytes; longer ones are refused
REOPEN_SECONDS = 600.0  # look the gateway and the interface up again now and then (DHCP)
_ANNOUNCEMENT = struct.Struct("!BBHI4s")  # version 0, opcode 128, result 0, epoch, address
_PCP_VERSION, _PCP_ANNOUNCE_SIZE = 2, 24


class Ignored(Exception):
    """A datagram that is no announcement to act on; the text says why."""


def parse_announcement(data: bytes) -> tuple[int, ipaddress.IPv4Address]:
    """Given a datagram to port 5350, return (epoch, address) of a NAT-PMP announcement.

    Raise Ignored for anything else: PCP (version 2), a wrong length, opcode or result, or an
    announcement of 0.0.0.0 (miniupnpd's, with epoch 0, when its WAN has no address).
    """
    if data[:1] == bytes([_PCP_VERSION]):
        raise Ignored(f"PCP announcement ({len(data)} bytes, version 2): not NAT-PMP")
    if len(data) != _ANNOUNCEMENT.size:
        raise Ignored(f"{len(data)} bytes, not a 12-byte NAT-PMP announcement")
    version, opcode, result, epoch, raw = _ANNOUNCEMENT.unpack(data)
    if (version, opcode, result) != (0, 128, 0):
        raise Ignored(f"version {version}, opcode {opcode}, result {result}: no announcement")
    address = ipaddress.IPv4Address(raw)
    if address.packed == bytes(4):
        raise Ignored(f"announcement of {address} (epoch {epoch}): no address to tell")
    return epoch, address


def channel(options: natpmp.Options, name: str, hint: Hint, changed: Changed) -> Announcements:
    return Announcements(options, name, hint, changed)


class Announcements(Channel):
    kind = "natpmp"

    def __init__(self, options: natpmp.Options, name: str, hint: Hint, changed: Changed) -> None:
        super().__init__(name, hint, changed)
        self.options = options

    def serve(self) -> None:
        gateway = self.options.gateway or _default_gateway()
        local = _address_toward(gateway, self.options.port)
        with _listening_socket(local) as sock:
            self.working("listening", f"{GROUP}:{CLIENT_PORT} on {local}, from {gateway}")
            # Returning now and then makes the thread look the gateway up again.
            while self.wait_readable(sock.fileno(), REOPEN_SECONDS):
                data, (sender, port) = sock.recvfrom(RECEIVE_SIZE)
                self.take(data, sender, port, gateway)
                if self.stopping.is_set():
                    return

    def take(self, data: bytes, sender: str, port: int, gateway: ipaddress.IPv4Address) -> None:
        if sender != str(gateway) or port != self.options.port:
            self.ignore(f"datagram from {sender}:{port}, not the gateway {gateway}")
            return
        try:
            epoch, address = parse_announcement(data)
        except Ignored as why:
            self.ignore(str(why))
            return
        self.event(f"announced {address} (epoch {epoch})")


def _default_gateway() -> ipaddress.IPv4Address:
    try:
        with open(natpmp.ROUTE_TABLE, encoding="ascii", errors="replace") as table:
            gateway = natpmp.default_gateway(table.read())
    except OSError as error:
        raise ChannelError(f"cannot read {natpmp.ROUTE_TABLE} ({error.strerror})") from None
    if gateway is None:
        raise ChannelError("no IPv4 default route to find the gateway by; set `gateway`")
    return gateway


def _address_toward(gateway: ipaddress.IPv4Address, port: int) -> str:
    """This host's address on the interface that reaches `gateway` (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((str(gateway), port))
        return str(probe.getsockname()[0])


def _listening_socket(local: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("0.0.0.0", CLIENT_PORT))
        membership = socket.inet_aton(GROUP) + socket.inet_aton(local)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
    except OSError as error:
        sock.close()
        raise ChannelError(
            f"cannot listen on {GROUP}:{CLIENT_PORT} on {local} ({error.strerror})"
        ) from None
    return sock
