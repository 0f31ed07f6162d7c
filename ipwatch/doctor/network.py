"""The host's side of NAT, pure: which address a transport really uses, its LAN subnet, whether
it is private, what the sources say about carrier-grade NAT, and the RTP ports to forward."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ipwatch.addresses import Family, IPAddress, IPNetwork, parse_address, rejection
from ipwatch.asterisk.conf import Document
from ipwatch.doctor.findings import Finding, Outcome

_CGNAT = ipaddress.ip_network("100.64.0.0/10")
ROUTER_KINDS = frozenset({"natpmp", "upnp"})
# res_rtp_asterisk.c: DEFAULT_RTP_START and DEFAULT_RTP_END, used when rtp.conf says nothing.
RTP_DEFAULTS = (5000, 31000)
_RTF_GATEWAY = 0x2


@dataclass(frozen=True)
class Route:
    """One IPv4 route of the main table (a line of /proc/net/route)."""

    interface: str
    network: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Address | None


@dataclass(frozen=True)
class Network:
    """What the host and the sources say: the confirmed public addresses, the host's own
    address toward the Internet (what a wildcard bind sends from), its routes, the `accept`
    ranges, and the last round's answers (state file) with decide.py's NAT hint."""

    public: Mapping[Family, str] = field(default_factory=dict)
    host: Mapping[Family, str] = field(default_factory=dict)
    routes: tuple[Route, ...] = ()
    accept: tuple[IPNetwork, ...] = ()
    verdicts: tuple[Mapping[str, Any], ...] = ()
    hint: str | None = None


def parse_routes(text: str) -> tuple[Route, ...]:
    """/proc/net/route: hexadecimal, little-endian IPv4 fields after a header line."""
    routes = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8:
            continue
        try:
            destination, gateway, flags, mask = (int(fields[i], 16) for i in (1, 2, 3, 7))
        except ValueError:
            continue
        network = ipaddress.IPv4Network(
            (_little_endian(destination), bin(mask).count("1")), strict=False
        )
        via = ipaddress.IPv4Address(_little_endian(gateway)) if flags & _RTF_GATEWAY else None
        routes.append(Route(fields[0], network, via))
    return tuple(routes)


def _little_endian(value: int) -> int:
    return int.from_bytes(value.to_bytes(4, "little"), "big")


def default_interface(routes: Sequence[Route]) -> str | None:
    """The interface of the default route, the one the Internet is reached through."""
    defaults = [r for r in routes if r.network.prefixlen == 0]
    return defaults[0].interface if defaults else None


def lan_subnet(routes: Sequence[Route], address: str) -> str | None:
    """The directly connected network that holds `address` (its most specific one), as CIDR."""
    try:
        parsed = parse_address(address)
    except ValueError:
        return None
    connected = [
        r.network
        for r in routes
        if r.gateway is None and r.network.prefixlen > 0 and parsed in r.network
    ]
    return str(max(connected, key=lambda n: n.prefixlen)) if connected else None


def bind_host(bind: str | None) -> str:
    """The address part of a PJSIP `bind` ("0.0.0.0:5060", "[::]:5060", "::"); PJSIP's default
    bind is 0.0.0.0."""
    value = (bind or "0.0.0.0").strip()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value[1:]
    if value.count(":") == 1:
        return value.partition(":")[0]
    return value


def bind_port(bind: str | None, protocol: str) -> int:
    """The port of a `bind`, or PJSIP's default for the protocol (5061 for TLS)."""
    value = (bind or "").strip()
    port = value.rpartition("]:")[2] if value.startswith("[") else value.partition(":")[2]
    has_port = value.count(":") == 1 or (value.startswith("[") and "]:" in value)
    if has_port and port.isdigit():
        return int(port)
    return 5061 if protocol.lower() == "tls" else 5060


def is_wildcard(address: str) -> bool:
    return address in ("0.0.0.0", "::", "")


def is_private(address: str, accept: Sequence[IPNetwork]) -> bool:
    """Whether `address` is one a NAT sits in front of: not global, but not loopback either
    (a transport on loopback serves this host only)."""
    try:
        parsed: IPAddress = parse_address(address)
    except ValueError:
        return False
    return not parsed.is_loopback and rejection(parsed, accept) is not None


def is_address(value: str) -> bool:
    try:
        parse_address(value)
    except ValueError:
        return False
    return True


def used_address(bind: str | None, network: Network) -> str | None:
    """The address a transport's packets leave from: its bind address, or for a wildcard bind
    the host's address toward the Internet."""
    host = bind_host(bind)
    if not is_wildcard(host):
        return host
    return network.host.get("ipv6" if ":" in host else "ipv4")


def cgnat(network: Network) -> Outcome:
    """`cgnat`: the sources (as recorded) show that the router has no public address of its own."""
    findings = []
    hint = network.hint or _own_hint(network)
    if hint is not None:
        findings.append(
            Finding(
                "error",
                "cgnat",
                None,
                None,
                "network",
                f"{hint}; calls from outside never reach Asterisk, however the router forwards",
                "ask the ISP for a public IPv4 address (or to turn off carrier-grade NAT), or"
                " put the router in bridge mode if another NAT sits in front of it; meanwhile"
                " only outgoing registrations work, kept alive by qualify",
            )
        )
    for family, address in network.public.items():
        if parse_address(address) in _CGNAT:
            findings.append(
                Finding(
                    "error",
                    "cgnat",
                    None,
                    None,
                    f"{family} address",
                    f"the confirmed address {address} is a carrier-grade NAT address (accepted by"
                    " `accept`); calls from outside never reach it",
                    "ask the ISP for a public address; remove 100.64.0.0/10 from `accept`",
                )
            )
    return Outcome(tuple(findings))


def _own_hint(network: Network) -> str | None:
    """decide.py's hint needs a winner; without one, a router or interface that reports no
    public or a CGNAT address still tells the story."""
    for verdict in network.verdicts:
        name, kind = verdict.get("name"), verdict.get("kind")
        if verdict.get("no_public_address"):
            return f"{name} ({kind}) says the router has no public address"
        address = verdict.get("address")
        if address and is_address(address) and parse_address(address) in _CGNAT:
            return f"{name} ({kind}) reports the carrier-grade NAT address {address}"
    return None


@dataclass(frozen=True)
class PortMapping:
    """What the router said of one port: where it forwards it, or nothing (`host` None)."""

    port: int
    protocol: str
    host: str | None
    internal: int | None
    description: str


@dataclass(frozen=True)
class RouterAnswer:
    """The router's UPnP answer about the SIP ports, asked through the `source` named."""

    source: str
    lan: str | None = None  # this host's address as the router sees it
    mappings: tuple[PortMapping, ...] = ()
    error: str | None = None


def sip_port_mappings(answer: RouterAnswer, host: str | None) -> Outcome:
    """`sip-port-mapping`: what the router forwards of the SIP ports, asked over UPnP. Only
    UPnP's own mappings show there, not a forwarding set in the router's web interface."""
    to = answer.lan or host or "this host"
    if answer.error is not None:
        return Outcome(
            (
                Finding(
                    "info",
                    "sip-port-mapping",
                    None,
                    None,
                    "router",
                    f"the router did not tell over UPnP ({answer.source}: {answer.error}) whether"
                    " it forwards the SIP ports; calls from outside need them forwarded",
                    f"check that the router forwards each transport's SIP port to {to}",
                ),
            )
        )
    ours = {address for address in (answer.lan, host) if address}
    findings = []
    for mapping in answer.mappings:
        port = f"{mapping.protocol} {mapping.port}"
        if mapping.host is None:
            findings.append(
                Finding(
                    "info",
                    "sip-port-mapping",
                    None,
                    None,
                    f"router {port}",
                    f"the router has no UPnP mapping for {port}; unless its web interface"
                    " forwards the port, calls from outside do not reach Asterisk",
                    f"forward {port} on the router to {to}",
                )
            )
        elif mapping.host in ours:
            findings.append(
                Finding(
                    "info",
                    "sip-port-mapping",
                    None,
                    None,
                    f"router {port}",
                    f"the router forwards {port} to this host ({mapping.host}:{mapping.internal},"
                    f" UPnP mapping {mapping.description!r})",
                    "none needed",
                )
            )
        else:
            findings.append(
                Finding(
                    "warning",
                    "sip-port-mapping",
                    None,
                    None,
                    f"router {port}",
                    f"the router forwards {port} to {mapping.host}, not to this host: calls"
                    " from outside reach that host instead of Asterisk",
                    f"point the forwarding of {port} on the router at {to}",
                )
            )
    return Outcome(tuple(findings))


def rtp_range(rtp: Document | None, lan_address: str | None) -> Outcome:
    """`rtp-range`: the UDP ports audio uses, which the router must forward to this host."""
    start, end = RTP_DEFAULTS
    origin, file, line = "Asterisk's defaults: no rtp.conf", None, None
    if rtp is not None:
        origin = "Asterisk's defaults: rtp.conf does not set them"
        for option in rtp.find("rtpstart") + rtp.find("rtpend"):
            in_general = option.section is not None and option.section.name.lower() == "general"
            if not in_general or not option.value.strip().isdigit():
                continue
            if option.key.lower() == "rtpstart":
                start = int(option.value)
            else:
                end = int(option.value)
            origin, file, line = "rtp.conf", rtp.path, line or option.line
    to = f" to {lan_address}" if lan_address else " to this host"
    return Outcome(
        (
            Finding(
                "info",
                "rtp-range",
                file,
                line,
                "rtp",
                f"audio uses UDP ports {start}-{end} ({origin}); when the router does not forward"
                " them, calls from outside connect with no audio unless the phone sends first",
                f"forward UDP {start}-{end} on the router{to}, and the SIP port of each"
                " transport; open them in the host's firewall too",
            ),
        )
    )
