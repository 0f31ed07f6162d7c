"""The "dns" source: look up a (dynamic DNS) host name, A for ipv4 and AAAA for ipv6.

What a DDNS name holds is what the updater last published, so this source lags behind the real
address by the record's TTL and the updater's interval; it is a cross-check for the live sources,
and it tells whether the published name is still right.

Without `nameservers` the system resolver (/etc/resolv.conf) is asked. With them, each is asked
directly, in order, within the source's total timeout: asking the DDNS provider's own servers sees
a change at once, where a caching resolver would keep the old answer until its TTL runs out.

The helpers for asking one server (`exchange`, `ServerFailed`, `lowest_address`, the name and
server parsers) are shared with the "dns-echo" source.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

from ipwatch.addresses import Family
from ipwatch.errors import SourceError
from ipwatch.schema import HostPort, Parser, parse_host_port

if TYPE_CHECKING:
    import dns.message
    import dns.rrset

DNS_PORT = 53
RDTYPES: dict[Family, str] = {"ipv4": "A", "ipv6": "AAAA"}

# RFC 1035 §2.3.1 letters, digits and hyphens, plus "_" which RFC 2181 §11 allows in any label.
_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


def parse_dns_name(value: Any) -> str:
    """Given a DNS name such as "pbx.example.org" (a final dot is allowed), return it stripped."""
    if not isinstance(value, str):
        raise ValueError(f'expected a DNS name like "pbx.example.org", got {value!r}')
    name = value.strip()
    body = name[:-1] if name.endswith(".") else name
    # RFC 1035 §2.3.4: 255 octets on the wire are 253 characters of text without the final dot.
    if not body or len(body) > 253 or not all(_LABEL.fullmatch(label) for label in body.split(".")):
        raise ValueError(
            f"{value!r} is not a DNS name; use labels of letters, digits and hyphens separated by"
            " dots (write internationalised names in their xn-- form)"
        )
    if _is_ip_address(body):
        raise ValueError(f"{value!r} is an IP address, not a DNS name")
    return name


def parse_nameserver(value: Any) -> HostPort:
    """Given "IP" or "IP:port" ("[IPv6]:port"), return the server; host names are refused."""
    server = parse_host_port(value)
    if not _is_ip_address(server.host):
        raise ValueError(
            f"{server.host!r} is a host name; give the nameserver's IP address as"
            ' "IP" or "IP:port", since looking its name up would itself need DNS'
        )
    return server


def _is_ip_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


DnsName = Annotated[str, Parser(parse_dns_name)]
Nameserver = Annotated[HostPort, Parser(parse_nameserver)]


@dataclass(frozen=True)
class Options:
    hostname: DnsName
    nameservers: tuple[Nameserver, ...] = ()


def ask(options: Options, family: Family, timeout: float) -> str:
    """Return the lowest address the name has for `family`; raise SourceError if it has none."""
    rdtype = RDTYPES[family]
    if not options.nameservers:
        return _ask_system_resolver(options.hostname, rdtype, timeout)
    return _ask_nameservers(options.hostname, rdtype, options.nameservers, timeout)


class ServerFailed(Exception):
    """One server gave no usable answer; its message says which server and what went wrong."""


def server_label(server: HostPort) -> str:
    """The server as "host:port", port always shown, so messages say exactly what was asked."""
    return str(HostPort(*server.with_default_port(DNS_PORT)))


def seconds(amount: float) -> str:
    return f"{amount:.1f} s"


def exchange(query: dns.message.Message, server: HostPort, timeout: float) -> dns.message.Message:
    """Send `query` to `server` and return the response, all within `timeout` seconds.

    UDP first; a truncated answer (TC set) is asked again over TCP (RFC 1035 §4.2.1, RFC 7766 §5).
    Raise ServerFailed when no valid response came; the rcode is left to the caller.
    """
    import dns.exception
    import dns.flags
    import dns.query

    host, port = server.with_default_port(DNS_PORT)
    label = server_label(server)
    deadline = time.monotonic() + timeout
    try:
        response = _udp(query, host, port, deadline)
        if response.flags & dns.flags.TC:
            response = dns.query.tcp(query, host, max(deadline - time.monotonic(), 0.0), port)
    except dns.exception.Timeout:
        raise ServerFailed(f"no answer from {label} within {seconds(timeout)}") from None
    except OSError as error:
        raise ServerFailed(f"{label} could not be reached ({error.strerror or error})") from None
    except (EOFError, dns.exception.DNSException) as error:
        reason = str(error) or type(error).__name__
        raise ServerFailed(f"{label} sent an unusable answer ({reason})") from None
    return response


def _udp(query: dns.message.Message, host: str, port: int, deadline: float) -> dns.message.Message:
    """Send `query` over UDP and wait until `deadline` for the server's reply.

    A stray, forged or garbled datagram must not end the wait: only a reply from the server with
    our id and question counts (RFC 5452 §9.1). dnspython's `udp(ignore_errors=True)` does this
    from 2.4 on; this loop does it with Debian 12's 2.3 as well.
    """
    import dns.exception
    import dns.inet
    import dns.message

    with socket.socket(dns.inet.af_for_address(host), socket.SOCK_DGRAM) as sock:
        sock.sendto(query.to_wire(), (host, port))
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                wire, sender = sock.recvfrom(65535)
            except TimeoutError:
                break
            if not _same_address(sender, host, port):
                continue
            try:
                response = dns.message.from_wire(wire)
            except (dns.exception.DNSException, ValueError):
                continue
            if query.is_response(response):
                return response
    raise dns.exception.Timeout


def _same_address(sender: tuple[Any, ...], host: str, port: int) -> bool:
    return sender[1] == port and ipaddress.ip_address(sender[0]) == ipaddress.ip_address(host)


def lowest_address(rrset: dns.rrset.RRset) -> str:
    """Return the numerically lowest address of an A or AAAA RRset.

    An RRset has no order (RFC 2181 §5) and servers shuffle or rotate it between answers (BIND
    answers in random order by default), so taking the first record would make a name with several
    addresses look like a new address every round and upset decide.py's hysteresis; the lowest
    is the same every time.
    """
    return str(min(ipaddress.ip_address(rdata.address) for rdata in rrset))


def _ask_nameservers(
    hostname: str, rdtype: str, servers: tuple[HostPort, ...], timeout: float
) -> str:
    import dns.message

    deadline = time.monotonic() + timeout
    problems: list[str] = []
    for index, server in enumerate(servers):
        # An even share of what is left, so one dead server leaves time for the next ones.
        share = max(deadline - time.monotonic(), 0.0) / (len(servers) - index)
        try:
            response = exchange(dns.message.make_query(hostname, rdtype), server, share)
            return _address_from(response, hostname, rdtype, server_label(server))
        except ServerFailed as failure:
            problems.append(str(failure))
    raise SourceError(f"no nameserver answered for {hostname} {rdtype}: {'; '.join(problems)}")


def _address_from(response: dns.message.Message, hostname: str, rdtype: str, label: str) -> str:
    """Read the answer; NXDOMAIN and NODATA are final, other rcodes let the next server try.

    A stub resolver moves on after SERVFAIL or REFUSED but takes a name error or an empty
    answer as the truth about the zone (RFC 1034 §5.3.3, RFC 2308 §2).
    """
    import dns.exception
    import dns.message
    import dns.rcode

    rcode = response.rcode()
    if rcode == dns.rcode.NXDOMAIN:
        raise SourceError(f"{label} says {hostname} does not exist (NXDOMAIN)")
    if rcode != dns.rcode.NOERROR:
        raise ServerFailed(f"{label} answered {dns.rcode.to_text(rcode)}")
    # from_wire() makes a QueryMessage of any answer to a query; the check only tells mypy so.
    assert isinstance(response, dns.message.QueryMessage)
    try:
        # Follows a CNAME chain within the answer, as a DDNS name is often an alias.
        rrset = response.resolve_chaining().answer
    except dns.exception.DNSException as error:
        raise ServerFailed(f"{label} sent an unusable answer ({error})") from None
    if rrset is None:
        raise SourceError(f"{label} has no {rdtype} record for {hostname}")
    return lowest_address(rrset)


def _ask_system_resolver(hostname: str, rdtype: str, timeout: float) -> str:
    import dns.exception
    import dns.resolver

    try:
        resolver = dns.resolver.Resolver()
    except dns.exception.DNSException as error:
        raise SourceError(f"the system resolver cannot be used ({error})") from None
    where = f"the system resolver ({', '.join(str(n) for n in resolver.nameservers)})"
    try:
        # search=False: the configured name is meant as written, never with a search suffix.
        answer = resolver.resolve(hostname, rdtype, lifetime=timeout, search=False)
    except dns.resolver.NXDOMAIN:
        raise SourceError(f"{where} says {hostname} does not exist (NXDOMAIN)") from None
    except dns.resolver.NoAnswer:
        raise SourceError(f"{where} has no {rdtype} record for {hostname}") from None
    except dns.exception.Timeout:
        raise SourceError(
            f"no answer from {where} for {hostname} {rdtype} within {seconds(timeout)}"
        ) from None
    except dns.resolver.NoNameservers:
        raise SourceError(
            f"{where} could not answer for {hostname} {rdtype} (its servers failed or refused)"
        ) from None
    except dns.exception.DNSException as error:
        raise SourceError(f"{where} could not look up {hostname} {rdtype} ({error})") from None
    assert answer.rrset is not None  # resolve() raises NoAnswer instead of returning no RRset
    return lowest_address(answer.rrset)
