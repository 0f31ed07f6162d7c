"""Kind "rfc2136": DNS UPDATE (RFC 2136) signed with TSIG (RFC 8945), to BIND, Knot, PowerDNS...

The zone's primary server is asked directly (over TCP, signed with the same key) what the host
name holds. When A (ipv4) and AAAA (ipv6) already hold the addresses, nothing is sent. Otherwise
one UPDATE replaces the wrong RRsets, with a prerequisite (RFC 2136 section 2.4) that each still
holds what was just read: when someone else changed the record in between, the server refuses
(NXRRSET/YXRRSET) and the next attempt reads it again, rather than overwriting a change that
ipwatch never saw.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

from ipwatch.addresses import FAMILIES, Family
from ipwatch.ddns import Outcome, UpdateError
from ipwatch.ddns.names import DnsName, Hostname, within
from ipwatch.schema import Parser, PositiveInt, format_duration, parse_host_port

if TYPE_CHECKING:
    import dns.message
    import dns.name
    import dns.update

SECRETS = ("tsig_secret",)
RECHECK = True  # reading the record costs one query, so a record changed by hand gets repaired
DNS_PORT = 53
_RDTYPE: dict[Family, str] = {"ipv4": "A", "ipv6": "AAAA"}
# The secret alone, or the key as `tsig-keygen` (BIND) or `keymgr -t` (Knot) print it.
_KEY_FILE_SECRET = re.compile(r'secret\s*(?::\s*|")\s*([A-Za-z0-9+/=]+)')


def parse_server(value: Any) -> str:
    """The zone's primary as "IP", "IP:port" or "[IPv6]:port", in that written form."""
    server = parse_host_port(value)
    try:
        ipaddress.ip_address(server.host)
    except ValueError:
        raise ValueError(
            f'{server.host!r} is not an IP address; give the zone\'s primary server as "IP" or'
            ' "IP:port" (an update goes to one server, not to a name)'
        ) from None
    return str(server)


@dataclass(frozen=True)
class Options:
    server: Annotated[str, Parser(parse_server)]  # the zone's primary
    zone: Hostname
    hostname: Hostname
    tsig_name: DnsName
    tsig_secret_file: str | None = None
    tsig_algorithm: Literal["hmac-sha256", "hmac-sha512"] = "hmac-sha256"
    ttl: PositiveInt = 60

    def __post_init__(self) -> None:
        if not within(self.hostname, self.zone):
            raise ValueError(
                f"hostname {self.hostname!r} is not inside zone {self.zone!r}; name the zone that"
                " holds it"
            )


@dataclass(frozen=True)
class _Server:
    """Where the messages go, with the key and the time left."""

    options: Options
    keyring: dict[dns.name.Name, Any]
    deadline: float
    timeout: float

    @property
    def shown(self) -> str:
        return self.options.server

    def ask(self, message: dns.message.Message) -> dns.message.Message:
        import dns.exception
        import dns.query
        import dns.tsig

        host, port = parse_host_port(self.options.server).with_default_port(DNS_PORT)
        left = self.deadline - time.monotonic()
        try:
            if left <= 0:
                raise dns.exception.Timeout
            return dns.query.tcp(message, host, timeout=left, port=port)
        except dns.tsig.PeerError as error:
            raise self._key_failure(error) from None
        except dns.exception.Timeout:
            raise UpdateError(
                f"no answer from {self.shown} within {format_duration(self.timeout)}"
            ) from None
        except ConnectionRefusedError:
            raise UpdateError(
                f"{self.shown} refused the connection; is a DNS server listening there on TCP?"
            ) from None
        except OSError as error:
            raise UpdateError(f"cannot reach {self.shown} ({error.strerror or error})") from None
        except dns.exception.DNSException as error:
            raise UpdateError(f"{self.shown} answered with invalid DNS ({error})") from None

    def _key_failure(self, error: Exception) -> UpdateError:
        import dns.tsig

        key = self.options.tsig_name
        if isinstance(error, dns.tsig.PeerBadSignature):
            return UpdateError(
                f"{self.shown} rejected the TSIG key {key} (bad signature); check tsig_secret_file",
                permanent=True,
            )
        if isinstance(error, dns.tsig.PeerBadKey):
            # BIND says BADKEY for a key it does not know; Knot also for a key its ACL
            # does not allow here.
            return UpdateError(
                f"{self.shown} refused the TSIG key {key} ({self.options.tsig_algorithm}) as"
                f" unknown or not allowed for {self.options.zone} (BADKEY); check tsig_name,"
                " tsig_algorithm and the server's update-policy (BIND) or acl (Knot)",
                permanent=True,
            )
        if isinstance(error, dns.tsig.PeerBadTime):
            return UpdateError(
                f"{self.shown} rejected the TSIG signature's time; set this host's clock (NTP)"
            )
        return UpdateError(
            f"{self.shown} rejected the TSIG key {key} ({type(error).__name__})", permanent=True
        )


def update(
    options: Options, addresses: Mapping[Family, str], timeout: float, secrets: Mapping[str, str]
) -> Outcome:
    server = _Server(
        options, _keyring(options, secrets["tsig_secret"]), time.monotonic() + timeout, timeout
    )
    wanted = {_RDTYPE[family]: addresses[family] for family in FAMILIES if family in addresses}
    current = {rdtype: read(server, rdtype) for rdtype in wanted}
    wrong = {rdtype: a for rdtype, a in wanted.items() if current[rdtype] != frozenset({a})}
    shown = " ".join(f"{rdtype} {address}" for rdtype, address in wanted.items())
    if not wrong:
        return Outcome(False, f"{options.hostname} {shown} already right")
    send(server, build_update(server, current, wrong))
    return Outcome(True, f"{options.hostname} {shown} updated")


def read(server: _Server, rdtype: str) -> frozenset[str]:
    """The addresses the host name's `rdtype` RRset holds on the server (empty: none)."""
    import dns.flags
    import dns.message
    import dns.rcode
    import dns.rdatatype

    options = server.options
    query = dns.message.make_query(options.hostname, rdtype)
    query.flags &= ~dns.flags.RD
    query.use_tsig(server.keyring, _key_name(options))
    response = server.ask(query)
    rcode = response.rcode()
    if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
        raise UpdateError(
            f"{server.shown} answered {dns.rcode.to_text(rcode)} when asked for"
            f" {options.hostname} {rdtype}; it must be the primary server of {options.zone}",
            permanent=rcode in (dns.rcode.REFUSED, dns.rcode.NOTAUTH),
        )
    if not response.flags & dns.flags.AA:
        raise UpdateError(
            f"{server.shown} is not authoritative for {options.zone}; point server at the"
            " zone's primary",
            permanent=True,
        )
    found: set[str] = set()
    for rrset in response.answer:
        if rrset.rdtype == dns.rdatatype.CNAME:
            raise UpdateError(
                f"{options.hostname} is an alias (CNAME) of"
                f" {rrset[0].target.to_text(omit_final_dot=True)}; update that name"
                " instead",
                permanent=True,
            )
        if rrset.rdtype == dns.rdatatype.from_text(rdtype):
            found.update(rdata.address for rdata in rrset)
    return frozenset(found)


def build_update(
    server: _Server, current: Mapping[str, frozenset[str]], wrong: Mapping[str, str]
) -> dns.update.UpdateMessage:
    """Replace each wrong RRset, on condition that it still holds what `current` says."""
    import dns.name
    import dns.rdataset
    import dns.update

    options = server.options
    host = dns.name.from_text(options.hostname)
    message = dns.update.UpdateMessage(
        options.zone,
        keyring=server.keyring,
        keyname=_key_name(options),
        keyalgorithm=_algorithm(options),
    )
    for rdtype, address in wrong.items():
        held = current.get(rdtype, frozenset())
        if held:
            message.present(host, dns.rdataset.from_text("IN", rdtype, 0, *held))
        else:
            message.absent(host, rdtype)
        message.replace(host, options.ttl, rdtype, address)
    return message


def send(server: _Server, message: dns.update.UpdateMessage) -> None:
    import dns.rcode

    options = server.options
    rcode = server.ask(message).rcode()
    if rcode == dns.rcode.NOERROR:
        return
    name = dns.rcode.to_text(rcode)
    if rcode in (dns.rcode.REFUSED, dns.rcode.NOTAUTH):
        raise UpdateError(
            f"{server.shown} answered {name}: not allowed to update {options.zone} with the key"
            f" {options.tsig_name}; check the zone's update-policy (BIND) or acl (Knot)",
            permanent=True,
        )
    if rcode in (dns.rcode.NXRRSET, dns.rcode.YXRRSET, dns.rcode.NXDOMAIN, dns.rcode.YXDOMAIN):
        raise UpdateError(
            f"the records of {options.hostname} changed while ipwatch updated them (prerequisite"
            f" failed: {name}); the next attempt reads them again"
        )
    if rcode == dns.rcode.NOTZONE:
        raise UpdateError(
            f"{server.shown} says {options.hostname} is not in the zone {options.zone} (NOTZONE);"
            " check zone (a delegated subdomain is a zone of its own)",
            permanent=True,
        )
    raise UpdateError(f"{server.shown} answered {name} to the update of {options.hostname}")


def _keyring(options: Options, text: str) -> dict[dns.name.Name, Any]:
    import dns.name
    import dns.tsig

    name = _key_name(options)
    return {name: dns.tsig.Key(name, _secret(text), _algorithm(options))}


def _secret(text: str) -> bytes:
    """The key's bytes from the secret file; never shown in a message."""
    found = _KEY_FILE_SECRET.search(text)
    encoded = found.group(1) if found else text.strip()
    try:
        secret = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        secret = b""
    if not secret:
        raise UpdateError(
            "tsig_secret_file does not hold a base64 TSIG secret (or a key as tsig-keygen or"
            " keymgr -t print it)",
            permanent=True,
        )
    return secret


def _key_name(options: Options) -> dns.name.Name:
    import dns.name

    return dns.name.from_text(options.tsig_name)


def _algorithm(options: Options) -> dns.name.Name:
    import dns.tsig

    return {"hmac-sha256": dns.tsig.HMAC_SHA256, "hmac-sha512": dns.tsig.HMAC_SHA512}[
        options.tsig_algorithm
    ]
