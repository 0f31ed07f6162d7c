"""The "dns-echo" source: ask a DNS server that answers with the address the query came from.

Such a server echoes the source address of the packet it receives, so it must be asked directly:
through a recursive resolver it would echo the resolver's address. Queries therefore go straight
to the echo server with RD off (RFC 1035 §4.1.1), over UDP, again over TCP when truncated.

Either `provider` names a known service, or `server` and `qname` (with `rdtype` and `rdclass`)
describe one; the two forms exclude each other, which `Options.__post_init__` enforces.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Literal

from ipwatch.addresses import Family, IPAddress, family_of, parse_address
from ipwatch.errors import SourceError
from ipwatch.schema import HostPort
from ipwatch.sources.dns import (
    RDTYPES,
    DnsName,
    Nameserver,
    ServerFailed,
    exchange,
    server_label,
)

if TYPE_CHECKING:
    import dns.message
    import dns.rrset

Provider = Literal["opendns", "google", "cloudflare", "akamai"]


@dataclass(frozen=True)
class Preset:
    """A known echo service; `rdtype` None means A for ipv4 and AAAA for ipv6."""

    qname: str
    rdtype: str | None
    rdclass: str
    # Asked over the family being observed, since the service echoes the query's own source.
    servers: Mapping[Family, str]


PRESETS: dict[str, Preset] = {
    "opendns": Preset(
        "myip.opendns.com", None, "IN", {"ipv4": "208.67.222.222", "ipv6": "2620:119:35::35"}
    ),
    # ns1.google.com, an authoritative server for the name; its TXT may carry a second string,
    # "edns0-client-subnet a.b.c.0/24", when a resolver forwarded ECS (RFC 7871).
    "google": Preset(
        "o-o.myaddr.l.google.com",
        "TXT",
        "IN",
        {"ipv4": "216.239.32.10", "ipv6": "2001:4860:4802:32::a"},
    ),
    "cloudflare": Preset(
        "whoami.cloudflare", "TXT", "CH", {"ipv4": "1.1.1.1", "ipv6": "2606:4700:4700::1111"}
    ),
    # ns1-1.akamaitech.net has no IPv6 echo.
    "akamai": Preset("whoami.akamai.net", "A", "IN", {"ipv4": "193.108.88.1"}),
}


@dataclass(frozen=True)
class Options:
    provider: Provider | None = None
    server: Nameserver | None = None
    qname: DnsName | None = None
    rdtype: Literal["A", "AAAA", "TXT"] | None = None
    rdclass: Literal["IN", "CH"] | None = None

    def __post_init__(self) -> None:
        """Refuse a mix of the two forms, or neither; raise ValueError with a sentence fragment."""
        explicit = [
            f.name
            for f in fields(self)
            if f.name != "provider" and getattr(self, f.name) is not None
        ]
        if self.provider is not None:
            if explicit:
                raise ValueError(
                    f'provider = "{self.provider}" already chooses the server, qname, rdtype and'
                    f" rdclass; remove {', '.join(explicit)}, or remove provider"
                )
            return
        if self.server is None and self.qname is None:
            raise ValueError(
                'set provider ("opendns", "google", "cloudflare" or "akamai"), or server and qname'
            )
        if self.server is None or self.qname is None:
            absent = "qname" if self.qname is None else "server"
            raise ValueError(f"server and qname go together; add {absent}")


@dataclass(frozen=True)
class Question:
    """Exactly what is sent, and to whom."""

    server: HostPort
    qname: str
    rdtype: str
    rdclass: str

    def __str__(self) -> str:
        return f"{self.qname} {self.rdclass} {self.rdtype}"


def serves(options: Options, family: Family) -> bool:
    """Whether this echo can see our `family` address: it echoes the query's own source address."""
    if options.provider is not None:
        return family in PRESETS[options.provider].servers
    assert options.server is not None  # by __post_init__
    return family_of(ipaddress.ip_address(options.server.host)) == family


def question_for(options: Options, family: Family) -> Question:
    """Resolve the preset or the explicit form for `family`; SourceError if it cannot serve it."""
    if options.provider is not None:
        preset = PRESETS[options.provider]
        address = preset.servers.get(family)
        if address is None:
            raise SourceError(
                f"the {options.provider} echo ({preset.qname}) has no {family} service;"
                f" use another provider for {family}"
            )
        rdtype = preset.rdtype or RDTYPES[family]
        return Question(HostPort(address), preset.qname, rdtype, preset.rdclass)
    assert options.server is not None and options.qname is not None  # by __post_init__
    rdtype = options.rdtype or RDTYPES[family]
    return Question(options.server, options.qname, rdtype, options.rdclass or "IN")


def build_query(question: Question) -> dns.message.Message:
    import dns.message

    # flags=0: RD off; an echo server must answer itself, not recurse (RFC 1035 §4.1.1).
    return dns.message.make_query(question.qname, question.rdtype, question.rdclass, flags=0)


def ask(options: Options, family: Family, timeout: float) -> str:
    """Return the address the echo server saw for `family`; raise SourceError otherwise."""
    import dns.rcode

    question = question_for(options, family)
    query = build_query(question)
    label = server_label(question.server)
    try:
        response = exchange(query, question.server, timeout)
    except ServerFailed as failure:
        raise SourceError(f"{failure} (asking {question})") from None
    if response.rcode() != dns.rcode.NOERROR:
        rcode = dns.rcode.to_text(response.rcode())
        raise SourceError(f"{label} answered {rcode} to {question}")
    # The RRset must be owned by the name asked, in the class and type asked: records for other
    # names (a CNAME, additional data) are not the echo.
    asked = query.question[0]
    rrset = response.get_rrset(response.answer, asked.name, asked.rdclass, asked.rdtype)
    if rrset is None:
        raise SourceError(f"{label} sent no {question.rdtype} record for {question}")
    found = [a for a in _addresses_in(rrset) if (a.version == 4) == (family == "ipv4")]
    if not found:
        # Sorted: the server may rotate the records, and the same answer should read the same.
        said = "; ".join(sorted(rdata.to_text() for rdata in rrset))[:120]
        raise SourceError(f"{label} answered {question} without an {family} address ({said})")
    # Echo answers hold one address; min() keeps the choice stable if one ever holds more.
    return str(min(found))


def _addresses_in(rrset: dns.rrset.RRset) -> list[IPAddress]:
    """The addresses in A/AAAA records, or the TXT strings that are bare IP addresses."""
    import dns.rdatatype

    if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
        return [ipaddress.ip_address(rdata.address) for rdata in rrset]
    addresses: list[IPAddress] = []
    for rdata in rrset:
        for text in rdata.strings:
            try:
                addresses.append(parse_address(text.decode("ascii", "replace")))
            except ValueError:
                continue  # e.g. Google's "edns0-client-subnet 198.51.100.0/24"
    return addresses
