"""Which answers may be the public address: global unicast only, unless `accept` lets one in."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from typing import Literal

from ipwatch.errors import SourceError

Family = Literal["ipv4", "ipv6"]
FAMILIES: tuple[Family, ...] = ("ipv4", "ipv6")
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_n = ipaddress.ip_network

# Most specific first: the first range that contains an address names the reason.
_NOT_PUBLIC: tuple[tuple[IPNetwork, str], ...] = (
    (_n("0.0.0.0/8"), 'unspecified/"this network" address (0.0.0.0/8)'),
    (_n("10.0.0.0/8"), "private address (RFC 1918)"),
    (_n("100.64.0.0/10"), "carrier-grade NAT address (100.64.0.0/10, RFC 6598)"),
    (_n("127.0.0.0/8"), "loopback address"),
    (_n("169.254.0.0/16"), "link-local address"),
    (_n("172.16.0.0/12"), "private address (RFC 1918)"),
    (_n("192.0.0.0/24"), "IETF protocol assignment (192.0.0.0/24)"),
    (_n("192.0.2.0/24"), "documentation address (TEST-NET-1, RFC 5737)"),
    (_n("192.88.99.0/24"), "deprecated 6to4 relay anycast (192.88.99.0/24)"),
    (_n("192.168.0.0/16"), "private address (RFC 1918)"),
    (_n("198.18.0.0/15"), "benchmarking address (198.18.0.0/15, RFC 2544)"),
    (_n("198.51.100.0/24"), "documentation address (TEST-NET-2, RFC 5737)"),
    (_n("203.0.113.0/24"), "documentation address (TEST-NET-3, RFC 5737)"),
    (_n("224.0.0.0/4"), "multicast address"),
    (_n("255.255.255.255/32"), "broadcast address"),
    (_n("240.0.0.0/4"), "reserved address (240.0.0.0/4)"),
    (_n("::/128"), "unspecified address"),
    (_n("::1/128"), "loopback address"),
    (_n("::ffff:0:0/96"), "IPv4-mapped address"),
    (_n("64:ff9b::/96"), "NAT64 address (64:ff9b::/96)"),
    (_n("64:ff9b:1::/48"), "local-use NAT64 address (RFC 8215)"),
    (_n("100::/64"), "discard-only address (RFC 6666)"),
    (_n("2001:2::/48"), "benchmarking address (2001:2::/48, RFC 5180)"),
    (_n("2001:db8::/32"), "documentation address (2001:db8::/32, RFC 3849)"),
    (_n("2001::/23"), "IETF protocol assignment (2001::/23)"),
    (_n("3fff::/20"), "documentation address (3fff::/20, RFC 9637)"),
    (_n("fc00::/7"), "unique local address (ULA, fc00::/7)"),
    (_n("fe80::/10"), "link-local address"),
    (_n("ff00::/8"), "multicast address"),
)
# Inside 2001::/23 these are globally reachable (RFC 6890 registry): Teredo is not, but
# PCP anycast, TURN anycast and AMT are not host addresses either, so only ORCHIDv2 and
# the AS112 ranges would pass; none of them can be a PBX's address, so the block stays rejected.


def family_of(address: IPAddress) -> Family:
    return "ipv4" if address.version == 4 else "ipv6"


def parse_address(text: str) -> IPAddress:
    """Return the address in `text` (no zone index, no brackets); ValueError if it is not one."""
    address = ipaddress.ip_address(text.strip())
    # Python takes any text after "%" as an IPv6 zone and keeps it in str(): "2001:db8::1%x;y"
    # would carry ";" (or a line break) from a source's answer into an Asterisk config file.
    if getattr(address, "scope_id", None) is not None:
        raise ValueError(f"{text[:64]!r} has a zone index")
    return address


def rejection(address: IPAddress, accept: Iterable[IPNetwork] = ()) -> str | None:
    """Return why `address` cannot be the public address, or None when it can."""
    if any(address.version == net.version and address in net for net in accept):
        return None
    for network, reason in _NOT_PUBLIC:
        if address.version == network.version and address in network:
            return reason
    if address.version == 6 and address not in _n("2000::/3"):
        return "not a global unicast IPv6 address (outside 2000::/3)"
    return None


def check_answer(
    text: str, family: Family, accept: Iterable[IPNetwork] = ()
) -> tuple[str | None, str | None]:
    """Given a source's raw answer, return (normalised address, reason it is rejected or None)."""
    try:
        address = parse_address(text)
    except ValueError:
        zone = " (a zone index names an interface of one host)" if "%" in text else ""
        return None, f"not an IP address: {text[:64]!r}{zone}"
    if family_of(address) != family:
        return str(address), f"an {family_of(address)} address where {family} was asked"
    return str(address), rejection(address, accept)


_WORD = re.compile(r"[0-9A-Fa-f:.]+")
_LONGEST_ADDRESS = len("ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255")


def first_address(text: str, family: Family) -> IPAddress | None:
    """Return the first address of `family` among the words of `text`, or None.

    Echo services wrap the address in plain text ("203.0.113.7\\n"), JSON ({"ip": "..."}) or
    HTML ("Current IP Address: 203.0.113.7"); the words that can be addresses are runs of hex
    digits, dots and colons, trimmed of punctuation such as a final full stop.
    """
    for match in _WORD.finditer(text):
        word = match.group()
        if len(word) > _LONGEST_ADDRESS + 2:  # room for the punctuation trimmed below
            continue
        for candidate in (word, word.strip(".:")):
            try:
                address = ipaddress.ip_address(candidate)
            except ValueError:
                continue
            if family_of(address) == family:
                return address
            break
    return None


def find_address(text: str, family: Family, source: str) -> str:
    """Return the first address of `family` in `text`, or raise SourceError saying what `source`
    answered instead."""
    address = first_address(text, family)
    if address is not None:
        return str(address)
    other = first_address(text, "ipv6" if family == "ipv4" else "ipv4")
    if other is not None:
        detail = f"only the {family_of(other)} address {other}"
    elif not text.strip():
        detail = "it was empty"
    else:
        detail = f"it began {text.strip()[:40]!r}"
    raise SourceError(f"{source} gave no {family} address ({detail})")
