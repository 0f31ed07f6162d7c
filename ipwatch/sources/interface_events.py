"""The interface source's push channel: the kernel's address and default-route events.

When the public address sits on this host (PPPoE on the PBX, an IPv6 prefix), the kernel tells
every rtnetlink socket that joined the multicast groups RTMGRP_IPV4_IFADDR / RTMGRP_IPV6_IFADDR
of each address added or removed, and RTMGRP_IPV4_ROUTE / RTMGRP_IPV6_ROUTE of each route. An
address event on the source's interface, or a change of a default route in the main table, is a
hint; everything else is ignored. Only messages from the kernel itself (port id 0) are read: any
local process may send to a netlink socket.

A receive queue that overflowed (ENOBUFS) lost events: that is a hint too. A PPP link that comes
back gets a new interface index, so an index that does not match is looked up again by name.
Layouts: linux/netlink.h, linux/rtnetlink.h, linux/if_addr.h (the parsing is interface.py's).
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
import time

from ipwatch.errors import SourceError
from ipwatch.sources import interface
from ipwatch.sources.interface import (
    _IFA_ADDRESS,
    _IFA_LOCAL,
    _IFADDRMSG,
    _attributes,
    _interface_index,
    _messages,
    _open_socket,
)
from ipwatch.sources.push import Changed, Channel, ChannelError, Hint

_RTMGRP_IPV4_IFADDR, _RTMGRP_IPV4_ROUTE = 0x10, 0x40
_RTMGRP_IPV6_IFADDR, _RTMGRP_IPV6_ROUTE = 0x100, 0x400
GROUPS = _RTMGRP_IPV4_IFADDR | _RTMGRP_IPV6_IFADDR | _RTMGRP_IPV4_ROUTE | _RTMGRP_IPV6_ROUTE
_RTM_NEWADDR, _RTM_DELADDR, _RTM_NEWROUTE, _RTM_DELROUTE = 20, 21, 24, 25
_RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, protocol, scope,
#                                       type, flags
_RT_TABLE_MAIN, _RTN_UNICAST = 254, 1
RECEIVE_BUFFER = 256 * 1024  # a burst of events (a VPN coming up) fits; beyond: ENOBUFS, a hint
_RECEIVE_SIZE = 65536
LOOKUP_TIMEOUT = 2.0


def channel(options: interface.Options, name: str, hint: Hint, changed: Changed) -> KernelEvents:
    return KernelEvents(options, name, hint, changed)


class KernelEvents(Channel):
    kind = "netlink"

    def __init__(self, options: interface.Options, name: str, hint: Hint, changed: Changed) -> None:
        super().__init__(name, hint, changed)
        self.options = options
        self.index: int | None = None

    def serve(self) -> None:
        with _open_socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            sock.bind((0, GROUPS))
            self.index = self.lookup()
            self.working("listening", f"address events of {self.options.interface}, default routes")
            while self.wait_readable(sock.fileno(), None):
                try:
                    datagram, (sender, _) = sock.recvfrom(_RECEIVE_SIZE)
                except OSError as error:
                    if error.errno != errno.ENOBUFS:
                        raise
                    self.event("the kernel's event queue overflowed; events were lost")
                    continue
                if sender != 0:
                    self.ignore(f"netlink message from port id {sender}, not the kernel")
                    continue
                self.take(datagram)

    def take(self, datagram: bytes) -> None:
        reasons = []
        try:
            for message_type, _, _, payload in _messages(datagram):
                reason = self.describe(message_type, payload)
                if reason is not None:
                    reasons.append(reason)
        except (SourceError, struct.error, ValueError) as error:
            self.ignore(f"malformed netlink message ({error})")
            return
        if reasons:
            self.event("; ".join(reasons))

    def describe(self, message_type: int, payload: bytes) -> str | None:
        """The event as a hint's reason, or None when it is no hint."""
        if message_type in (_RTM_NEWADDR, _RTM_DELADDR):
            family, prefix, _, _, index = _IFADDRMSG.unpack_from(payload)
            if index != self.index:
                self.index = self.lookup()  # a PPP link that came back has a new index
                if index != self.index:
                    return None
            attributes = _attributes(payload, _IFADDRMSG.size)
            raw = attributes.get(_IFA_LOCAL, attributes.get(_IFA_ADDRESS, b""))
            if len(raw) not in (4, 16):
                return None
            address = ipaddress.ip_address(raw)
            if address.is_link_local:  # fe80::/64 comes with every link, never public
                return None
            verb = "added" if message_type == _RTM_NEWADDR else "removed"
            return f"{self.options.interface}: {address}/{prefix} {verb}"
        if message_type in (_RTM_NEWROUTE, _RTM_DELROUTE):
            family, dst_len, _, _, table, _, _, route_type, _ = _RTMSG.unpack_from(payload)
            if dst_len or table != _RT_TABLE_MAIN or route_type != _RTN_UNICAST:
                return None
            verb = "added" if message_type == _RTM_NEWROUTE else "removed"
            return f"{'ipv6' if family == socket.AF_INET6 else 'ipv4'} default route {verb}"
        return None

    def lookup(self) -> int | None:
        """The interface's index now; None while it does not exist (a PPP link that is down)."""
        try:
            with _open_socket() as sock:
                return _interface_index(sock, self.options.interface, _deadline())
        except SourceError:
            return None
        except (OSError, TimeoutError) as error:
            raise ChannelError(f"cannot look up {self.options.interface} ({error})") from None


def _deadline() -> float:
    return time.monotonic() + LOOKUP_TIMEOUT
