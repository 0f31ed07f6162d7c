"""A real BIND 9 on loopback, authoritative for small test zones, with a TSIG key for RFC 2136.

It serves, without recursion:
- the IN zone "ddns.test" (a DDNS host name with A and AAAA, a name with three A records, a name
  with no AAAA, a CNAME, a name too big for UDP), open to updates signed with the TSIG key;
- echo-like zones that answer a fixed "public" address the way the real services do:
  "myip.opendns.test" A/AAAA (and a CNAME to it) and "o-o.myaddr.l.google.test" TXT (with an
  ECS string);
- the CH zone "cloudflare" with "whoami.cloudflare" TXT, in its own view (a view holds one class).

`running_bind9()` starts one in a directory and stops it; the `bind9` fixture wraps it per module.
"""

from __future__ import annotations

import base64
import contextlib
import re
import secrets
import socket
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support import free_port, ipv6_loopback_available, need, stop, wait_until

DDNS_ZONE = "ddns.test"
TSIG_ALGORITHM = "hmac-sha256"
TSIG_NAME = "ipwatch-test"

# name -> rdtype -> rdata as zone-file text; the order is the zone file's, highest address first,
# so a client that takes the first record of the wire order is seen to be wrong.
IN_RECORDS: dict[str, dict[str, tuple[str, ...]]] = {
    f"pbx.{DDNS_ZONE}": {"A": ("198.51.100.20",), "AAAA": ("2001:db8::20",)},
    f"multi.{DDNS_ZONE}": {"A": ("198.51.100.32", "198.51.100.31", "198.51.100.30")},
    f"v4only.{DDNS_ZONE}": {"A": ("198.51.100.40",)},
    f"alias.{DDNS_ZONE}": {"CNAME": (f"pbx.{DDNS_ZONE}.",)},
    # 40 A records do not fit a 512-byte UDP answer (RFC 1035 §4.2.1): BIND sets TC.
    f"big.{DDNS_ZONE}": {"A": tuple(f"198.51.100.{i}" for i in range(139, 99, -1))},
    "myip.opendns.test": {"A": ("198.51.100.7",), "AAAA": ("2001:db8::7",)},
    "alias.opendns.test": {"CNAME": ("myip.opendns.test.",)},
    "o-o.myaddr.l.google.test": {"TXT": ("198.51.100.8", "edns0-client-subnet 1.2.3.0/24")},
}
CH_RECORDS: dict[str, dict[str, tuple[str, ...]]] = {
    "whoami.cloudflare": {"TXT": ("198.51.100.9",)},
}
IN_ZONES = (DDNS_ZONE, "opendns.test", "google.test")
CH_ZONES = ("cloudflare",)
STARTUP_TIMEOUT = 10.0


@dataclass
class Bind9:
    """A running named: where it listens, what it serves, and its log."""

    host: str
    port: int
    host6: str | None  # "::1" when it also listens there, else None
    directory: Path
    process: subprocess.Popen[bytes]
    tsig_secret: str  # base64, for dns.tsigkeyring.from_text({tsig_name: (algorithm, secret)})
    tsig_name: str = TSIG_NAME
    tsig_algorithm: str = TSIG_ALGORITHM
    ddns_zone: str = DDNS_ZONE
    in_zones: tuple[str, ...] = IN_ZONES
    ch_zones: tuple[str, ...] = CH_ZONES
    # What the zone files held at start; updates sent to the server do not change these.
    records: dict[str, dict[str, tuple[str, ...]]] = field(default_factory=lambda: IN_RECORDS)
    ch_records: dict[str, dict[str, tuple[str, ...]]] = field(default_factory=lambda: CH_RECORDS)

    @property
    def server(self) -> str:
        """The IPv4 listener as "IP:port", the form ipwatch's config takes."""
        return f"{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.directory / "named.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def queries(self) -> list[tuple[str, str, str, str]]:
        """The query log so far as (qname, class, type, flags); flags begin "+" if RD was set."""
        return [
            (m["name"], m["cls"], m["type"], m["flags"]) for m in _QUERY_LINE.finditer(self.log())
        ]


# BIND 9.18 query log: "... query: NAME CLASS TYPE FLAGS (DEST)", FLAGS "+" or "-" for RD, then
# E(n) for EDNS, T for TCP, S for signed, and so on.
_QUERY_LINE = re.compile(r"query: (?P<name>\S+) (?P<cls>\S+) (?P<type>\S+) (?P<flags>[+-]\S*) \(")


def zone_file(zone: str, rdclass: str, records: dict[str, dict[str, tuple[str, ...]]]) -> str:
    # The NS target lies outside the zone, so no glue is needed (CH has no A records for it).
    lines = [
        "$TTL 60",
        f"@ {rdclass} SOA ns.invalid. hostmaster.invalid. 1 3600 600 86400 60",
        f"@ {rdclass} NS ns.invalid.",
    ]
    for name, by_type in records.items():
        if name != zone and not name.endswith(f".{zone}"):
            continue
        for rdtype, values in by_type.items():
            for value in values:
                rdata = f'"{value}"' if rdtype == "TXT" else value
                lines.append(f"{name}. {rdclass} {rdtype} {rdata}")
    return "\n".join(lines) + "\n"


def _named_conf(
    directory: Path, port: int, host6: str | None, secret: str, host: str = "127.0.0.1"
) -> str:
    listen6 = f"listen-on-v6 port {port} {{ {host6}; }};" if host6 else "listen-on-v6 { none; };"
    in_zones = "\n".join(
        f'    zone "{zone}" IN {{ type primary; file "{zone}.zone";'
        + (f" update-policy {{ grant {TSIG_NAME} zonesub ANY; }};" if zone == DDNS_ZONE else "")
        + " };"
        for zone in IN_ZONES
    )
    ch_zones = "\n".join(
        f'    zone "{zone}" CH {{ type primary; file "{zone}.ch.zone"; }};' for zone in CH_ZONES
    )
    return f"""
options {{
    directory "{directory}";
    pid-file "{directory}/named.pid";
    session-keyfile "{directory}/session.key";
    managed-keys-directory "{directory}";
    listen-on port {port} {{ {host}; }};
    {listen6}
    recursion no;
    notify no;
    dnssec-validation no;
    querylog yes;
    rrset-order {{ order cyclic; }};  # every answer rotates: "the first record" is seen to move
}};
controls {{ }};
key "{TSIG_NAME}" {{ algorithm {TSIG_ALGORITHM}; secret "{secret}"; }};
view "chaos" CH {{
    match-clients {{ any; }};
{ch_zones}
}};
view "internet" IN {{
    match-clients {{ any; }};
{in_zones}
}};
"""


def _write_config(
    directory: Path, port: int, host6: str | None, secret: str, host: str = "127.0.0.1"
) -> Path:
    for zone in IN_ZONES:
        (directory / f"{zone}.zone").write_text(zone_file(zone, "IN", IN_RECORDS))
    for zone in CH_ZONES:
        (directory / f"{zone}.ch.zone").write_text(zone_file(zone, "CH", CH_RECORDS))
    conf = directory / "named.conf"
    conf.write_text(_named_conf(directory, port, host6, secret, host))
    return conf


def named_setup(directory: Path, host: str, port: int) -> tuple[list[str], str]:
    """For a named started elsewhere (inside a lab namespace): write the config serving the test
    zones on host:port (IPv4 only) to `directory`; return its command line and the TSIG secret.
    Running the same command again restarts it with the same key and the updates so far."""
    named = need("named", "bind9")
    secret = base64.b64encode(secrets.token_bytes(32)).decode()
    conf = _write_config(directory, port, None, secret, host)
    return [named, "-g", "-n", "1", "-c", str(conf)], secret


def _answers(host: str, port: int) -> bool:
    import dns.exception
    import dns.message
    import dns.query
    import dns.rcode

    try:
        response = dns.query.udp(dns.message.make_query(DDNS_ZONE, "SOA"), host, 0.2, port)
    except (OSError, dns.exception.DNSException):
        return False
    return response.rcode() == dns.rcode.NOERROR


def _port_free_on_both(port: int) -> bool:
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET6, kind) as probe:
            try:
                probe.bind(("::1", port))
            except OSError:
                return False
    return True


def _pick_port(ipv6: bool) -> int:
    while True:
        port = free_port()
        if not ipv6 or _port_free_on_both(port):
            return port


@contextlib.contextmanager
def running_bind9(
    directory: Path, port: int | None = None, ipv6: bool = True, host: str = "127.0.0.1"
) -> Iterator[Bind9]:
    """Start named in `directory` on `host` (on a free port unless given), wait until it
    answers, stop it."""
    named = need("named", "bind9")
    host6 = "::1" if ipv6 and ipv6_loopback_available() else None
    port = port or _pick_port(host6 is not None)
    secret = base64.b64encode(secrets.token_bytes(32)).decode()
    conf = _write_config(directory, port, host6, secret, host)
    with open(directory / "named.log", "wb") as log:
        process = subprocess.Popen(
            [named, "-g", "-n", "1", "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT
        )
    server = Bind9(host, port, host6, directory, process, secret)
    try:
        wait_until(
            lambda: serving(process, server.log, server.host, port, "named"),
            STARTUP_TIMEOUT,
            f"named to answer on port {port}",
        )
        yield server
    finally:
        stop(process)


def serving(
    process: subprocess.Popen[bytes], log: Callable[[], str], host: str, port: int, program: str
) -> bool:
    """Whether a DNS server of ours answers for the DDNS zone yet; fail at once if it exited."""
    if process.poll() is not None:
        tail = "\n".join(log().splitlines()[-15:])
        pytest.fail(f"{program} exited with status {process.returncode}:\n{tail}")
    return _answers(host, port)


@pytest.fixture(scope="module")
def bind9(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bind9]:
    """A named for the test module; tests that send updates should use their own names."""
    with running_bind9(tmp_path_factory.mktemp("bind9")) as server:
        yield server
