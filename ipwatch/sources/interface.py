"""Kind "interface": the address configured on one of this host's interfaces (say, ppp0).

The addresses come from the kernel over rtnetlink (RTM_GETLINK to find the interface by name,
then an RTM_GETADDR dump), with nothing but `socket` and `struct`: no `ip` subprocess to find and
parse, it sees the network namespace the daemon runs in, and it needs only AF_NETLINK, which
systemd's RestrictAddressFamilies= can allow while denying everything else. (glibc's getifaddrs
would do the same dump, but ctypes to it is more code and hides the address flags used below.)
Message layouts are those of linux/netlink.h, linux/rtnetlink.h, linux/if_link.h and
linux/if_addr.h.
"""

from __future__ import annotations

import errno
import ipaddress
import itertools
import os
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

from ipwatch.addresses import Family, IPAddress, rejection
from ipwatch.errors import SourceError
from ipwatch.schema import Parser, format_duration

if TYPE_CHECKING:
    from ipwatch.sources.push import Changed, Channel, Hint

_NLMSG_HEADER = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
_RTATTR_HEADER = struct.Struct("=HH")  # length, type
_IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefix length, flags, scope, index
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_NLM_F_REQUEST, _NLM_F_DUMP_INTR, _NLM_F_DUMP = 0x1, 0x10, 0x300
_RTM_NEWLINK, _RTM_GETLINK, _RTM_NEWADDR, _RTM_GETADDR = 16, 18, 20, 22
_IFLA_IFNAME = 3
_IFA_ADDRESS, _IFA_LOCAL, _IFA_FLAGS = 1, 2, 8
_IFA_F_TEMPORARY, _IFA_F_DADFAILED, _IFA_F_DEPRECATED, _IFA_F_TENTATIVE = 0x01, 0x08, 0x20, 0x40
# A tentative address may still belong to another host (duplicate address detection, RFC 4862
# section 5.4), a deprecated one should not be used for new communication (section 5.5.4).
_UNUSABLE = _IFA_F_TENTATIVE | _IFA_F_DEPRECATED | _IFA_F_DADFAILED
_NLA_TYPE_MASK = 0x3FFF
_RECEIVE_SIZE = 65536
# A dump of even thousands of addresses fits in a few datagrams; this only bounds a broken reply.
_MAX_DATAGRAMS = 10000
# The kernel flags a dump that raced with a change (NLM_F_DUMP_INTR); ask again this many times.
_DUMP_ATTEMPTS = 3
_sequences = itertools.count(1)
_FAMILIES = {"ipv4": socket.AF_INET, "ipv6": socket.AF_INET6}


def parse_interface_name(value: Any) -> str:
    """Given the `interface` key, return it if Linux could name an interface so (dev_valid_name)."""
    if not isinstance(value, str):
        raise ValueError(f'expected an interface name like "ppp0", got {value!r}')
    if not 0 < len(value.encode()) < 16 or value in (".", ".."):
        raise ValueError(f"{value!r} is not an interface name; those have 1 to 15 characters")
    if any(c in "/:" or c.isspace() for c in value):
        raise ValueError(f"{value!r} is not an interface name; those have no spaces, / or :")
    return value


@dataclass(frozen=True)
class Options:
    # Not "name": that common key names the source itself (config.py).
    interface: Annotated[str, Parser(parse_interface_name)]
    # Also listen to the kernel's address and default-route events (interface_events.py).
    push: bool = True


def push_channel(options: Options, name: str, hint: Hint, changed: Changed) -> Channel | None:
    """The rtnetlink listener of this source, or None with `push = false`."""
    if not options.push:
        return None
    from ipwatch.sources import interface_events

    return interface_events.channel(options, name, hint, changed)


@dataclass(frozen=True)
class _Address:
    address: IPAddress
    flags: int


def ask(options: Options, family: Family, timeout: float) -> str:
    """Return the interface's best address of `family`: the first one that could be public,
    preferring stable over temporary IPv6 addresses (RFC 8981), else the first one at all, so
    that the decision can say why it is rejected (a CGNAT address, say)."""
    deadline = time.monotonic() + timeout
    try:
        with _open_socket() as sock:
            index = _interface_index(sock, options.interface, deadline)
            addresses = _addresses(sock, index, _FAMILIES[family], deadline)
    except TimeoutError:
        raise SourceError(
            f"the kernel did not list the addresses of {options.interface} within"
            f" {format_duration(timeout)}"
        ) from None
    except OSError as error:
        raise SourceError(
            f"cannot list the addresses of {options.interface} ({error.strerror})"
        ) from None
    if not addresses:
        raise SourceError(f"interface {options.interface} has no usable {family} address")
    return str(min(addresses, key=_rank).address)


def _rank(candidate: _Address) -> tuple[bool, bool]:
    is_temporary = candidate.address.version == 6 and bool(candidate.flags & _IFA_F_TEMPORARY)
    return rejection(candidate.address) is not None, is_temporary


def _open_socket() -> socket.socket:
    try:
        return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    except OSError as error:
        raise SourceError(
            f"cannot open a netlink socket to list addresses ({error.strerror})"
        ) from None


def _interface_index(sock: socket.socket, name: str, deadline: float) -> int:
    name_attribute = _attribute(_IFLA_IFNAME, name.encode() + b"\0")
    request = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + name_attribute
    try:
        for message_type, payload in _exchange(sock, _RTM_GETLINK, 0, request, deadline):
            if message_type == _RTM_NEWLINK:
                return int(_IFINFOMSG.unpack_from(payload)[2])
    except _KernelError as error:
        if error.errno == errno.ENODEV:
            raise SourceError(f"no interface named {name}") from None
        raise SourceError(f"the kernel refused to look up interface {name} ({error})") from None
    raise SourceError(f"the kernel's answer about interface {name} had no interface in it")


def _addresses(sock: socket.socket, index: int, family: int, deadline: float) -> list[_Address]:
    request = _IFADDRMSG.pack(family, 0, 0, 0, 0)
    for _ in range(_DUMP_ATTEMPTS):
        found: list[_Address] = []
        try:
            for message_type, payload in _exchange(
                sock, _RTM_GETADDR, _NLM_F_DUMP, request, deadline
            ):
                if message_type != _RTM_NEWADDR:
                    continue
                address = _usable_address(payload, index, family)
                if address is not None:
                    found.append(address)
        except _DumpInterrupted:
            continue
        except _KernelError as error:
            raise SourceError(f"the kernel refused to list addresses ({error})") from None
        return found
    raise SourceError("the address list kept changing while being read; trying again next round")


def _usable_address(payload: bytes, index: int, family: int) -> _Address | None:
    """Return the address of one RTM_NEWADDR message if it is on the interface and usable."""
    address_family, _, flags, _, address_index = _IFADDRMSG.unpack_from(payload)
    if address_index != index or address_family != family:
        return None
    attributes = _attributes(payload, _IFADDRMSG.size)
    if _IFA_FLAGS in attributes:  # the 8-bit field cannot hold the newer flags
        flags = struct.unpack("=I", attributes[_IFA_FLAGS][:4])[0]
    # On a point-to-point link (PPPoE) IFA_ADDRESS is the peer and IFA_LOCAL our own address;
    # elsewhere only IFA_ADDRESS may be present, and it is ours.
    raw = attributes.get(_IFA_LOCAL, attributes.get(_IFA_ADDRESS))
    if raw is None or flags & _UNUSABLE:
        return None
    return _Address(ipaddress.ip_address(raw), flags)


class _KernelError(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(os.strerror(code))
        self.errno = code


class _DumpInterrupted(Exception):
    pass


def _exchange(
    sock: socket.socket, message_type: int, flags: int, payload: bytes, deadline: float
) -> Iterator[tuple[int, bytes]]:
    """Send one request and yield (type, payload) of each reply message until the reply ends.

    A plain request ends with its one answer or error; a dump ends with NLMSG_DONE.
    """
    sequence = next(_sequences)
    header = _NLMSG_HEADER.pack(
        _NLMSG_HEADER.size + len(payload), message_type, flags | _NLM_F_REQUEST, sequence, 0
    )
    sock.sendto(header + payload, (0, 0))
    interrupted = False
    for _ in range(_MAX_DATAGRAMS):
        for reply_type, reply_flags, payload in _receive(sock, sequence, deadline):
            interrupted |= bool(reply_flags & _NLM_F_DUMP_INTR)
            if reply_type == _NLMSG_ERROR:
                code = -struct.unpack_from("=i", payload)[0]
                if code:
                    raise _KernelError(code)
                return
            if reply_type == _NLMSG_DONE:
                if interrupted:
                    raise _DumpInterrupted
                return
            yield reply_type, payload
            if not flags & _NLM_F_DUMP:
                return
    raise SourceError("the kernel's address list did not end; giving up")


def _receive(sock: socket.socket, sequence: int, deadline: float) -> list[tuple[int, int, bytes]]:
    """Receive one datagram from the kernel; return its messages that answer `sequence`."""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        sock.settimeout(left)
        datagram, (sender, _) = sock.recvfrom(_RECEIVE_SIZE)
        if sender == 0:  # port id 0 is the kernel; anything else is not an answer to us
            break
    messages = []
    for message_type, flags, message_sequence, payload in _messages(datagram):
        if message_sequence == sequence:
            messages.append((message_type, flags, payload))
    return messages


def _messages(datagram: bytes) -> Iterator[tuple[int, int, int, bytes]]:
    offset = 0
    while offset + _NLMSG_HEADER.size <= len(datagram):
        length, message_type, flags, sequence, _ = _NLMSG_HEADER.unpack_from(datagram, offset)
        if length < _NLMSG_HEADER.size or offset + length > len(datagram):
            raise SourceError("the kernel sent a malformed netlink message")
        yield message_type, flags, sequence, datagram[offset + _NLMSG_HEADER.size : offset + length]
        offset += _align(length)


def _attributes(payload: bytes, offset: int) -> dict[int, bytes]:
    """Return the route attributes (type -> value) that follow a fixed header in `payload`."""
    attributes: dict[int, bytes] = {}
    while offset + _RTATTR_HEADER.size <= len(payload):
        length, kind = _RTATTR_HEADER.unpack_from(payload, offset)
        if length < _RTATTR_HEADER.size or offset + length > len(payload):
            break
        attributes.setdefault(
            kind & _NLA_TYPE_MASK, payload[offset + _RTATTR_HEADER.size : offset + length]
        )
        offset += _align(length)
    return attributes


def _attribute(kind: int, value: bytes) -> bytes:
    length = _RTATTR_HEADER.size + len(value)
    return _RTATTR_HEADER.pack(length, kind) + value + b"\0" * (_align(length) - length)


def _align(length: int) -> int:
    return (length + 3) & ~3
