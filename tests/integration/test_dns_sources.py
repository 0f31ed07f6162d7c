"""The "dns" and "dns-echo" sources against a real BIND 9, and their config checks."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.query
import pytest

from ipwatch import config
from ipwatch.errors import ConfigError, SourceError
from ipwatch.schema import HostPort
from ipwatch.sources import dns as dns_source
from ipwatch.sources import dns_echo
from tests.peers.bind9 import Bind9
from tests.support import free_port, missing, need, wait_until

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def nameserver(text: str) -> HostPort:
    return dns_source.parse_nameserver(text)


def dead_server() -> str:
    """A loopback port nobody listens on: UDP queries there are never answered."""
    return f"127.0.0.1:{free_port()}"


def ask_dns(hostname: str, family: str, servers: list[str], timeout: float = 2.0) -> str:
    options = dns_source.Options(hostname, tuple(nameserver(s) for s in servers))
    return dns_source.ask(options, family, timeout)  # type: ignore[arg-type]


def ask_echo(family: str = "ipv4", timeout: float = 2.0, **keys: Any) -> str:
    if "server" in keys:
        keys["server"] = nameserver(keys["server"])
    return dns_echo.ask(dns_echo.Options(**keys), family, timeout)  # type: ignore[arg-type]


def logged_queries(server: Bind9, qname: str) -> list[tuple[str, str, str, str]]:
    return wait_until(
        lambda: [q for q in server.queries() if q[0] == qname], 2.0, f"named to log {qname}"
    )


# --- kind "dns", nameservers asked directly ---------------------------------------------------


def test_dns_answers_a_for_ipv4_and_aaaa_for_ipv6(bind9: Bind9) -> None:
    name = f"pbx.{bind9.ddns_zone}"
    assert ask_dns(name, "ipv4", [bind9.server]) == bind9.records[name]["A"][0]
    assert ask_dns(name, "ipv6", [bind9.server]) == bind9.records[name]["AAAA"][0]


def test_dns_asks_a_nameserver_over_ipv6(bind9: Bind9) -> None:
    if bind9.host6 is None:
        pytest.skip("this machine has no IPv6 loopback")
    name = f"pbx.{bind9.ddns_zone}"
    assert ask_dns(name, "ipv4", [f"[{bind9.host6}]:{bind9.port}"]) == "198.51.100.20"


def test_dns_takes_the_lowest_of_several_records_every_time(bind9: Bind9) -> None:
    name = f"multi.{bind9.ddns_zone}"
    # The server rotates the RRset, so "the first record" would differ between asks.
    firsts = set()
    for _ in range(3):
        response = dns.query.udp(dns.message.make_query(name, "A"), bind9.host, 2, bind9.port)
        firsts.add(response.answer[0][0].address)
    assert len(firsts) > 1
    answers = {ask_dns(name, "ipv4", [bind9.server]) for _ in range(4)}
    assert answers == {"198.51.100.30"}


def test_dns_follows_a_cname(bind9: Bind9) -> None:
    assert ask_dns(f"alias.{bind9.ddns_zone}", "ipv4", [bind9.server]) == "198.51.100.20"


def test_dns_retries_over_tcp_when_the_udp_answer_is_truncated(bind9: Bind9) -> None:
    name = f"big.{bind9.ddns_zone}"
    assert ask_dns(name, "ipv4", [bind9.server]) == "198.51.100.100"
    # BIND's query log marks a TCP query with "T" after the RD sign.
    assert any("T" in flags for _, _, _, flags in logged_queries(bind9, name))


def test_dns_nxdomain_names_the_host_and_the_server(bind9: Bind9) -> None:
    name = f"nothing-here.{bind9.ddns_zone}"
    with pytest.raises(SourceError) as caught:
        ask_dns(name, "ipv4", [bind9.server])
    assert str(caught.value) == f"{bind9.server} says {name} does not exist (NXDOMAIN)"


def test_dns_name_without_aaaa_record(bind9: Bind9) -> None:
    name = f"v4only.{bind9.ddns_zone}"
    with pytest.raises(SourceError) as caught:
        ask_dns(name, "ipv6", [bind9.server])
    assert str(caught.value) == f"{bind9.server} has no AAAA record for {name}"


def test_dns_refused_for_a_zone_the_server_does_not_serve(bind9: Bind9) -> None:
    with pytest.raises(SourceError) as caught:
        ask_dns("pbx.example.net", "ipv4", [bind9.server])
    assert str(caught.value) == (
        f"no nameserver answered for pbx.example.net A: {bind9.server} answered REFUSED"
    )


def test_dns_dead_nameserver_times_out_within_the_budget() -> None:
    dead = dead_server()
    started = time.monotonic()
    with pytest.raises(SourceError) as caught:
        ask_dns("pbx.ddns.test", "ipv4", [dead], timeout=0.5)
    elapsed = time.monotonic() - started
    assert str(caught.value) == (
        f"no nameserver answered for pbx.ddns.test A: no answer from {dead} within 0.5 s"
    )
    assert 0.45 <= elapsed < 0.9


def test_dns_falls_back_to_the_next_nameserver_in_order(bind9: Bind9) -> None:
    started = time.monotonic()
    answer = ask_dns(f"pbx.{bind9.ddns_zone}", "ipv4", [dead_server(), bind9.server], timeout=1.0)
    elapsed = time.monotonic() - started
    assert answer == "198.51.100.20"
    # The dead server had half of the budget, and the whole took no more than the budget.
    assert 0.45 <= elapsed < 1.0


def test_dns_several_dead_nameservers_are_all_named(bind9: Bind9) -> None:
    first, second = dead_server(), dead_server()
    with pytest.raises(SourceError) as caught:
        ask_dns("pbx.example.net", "ipv4", [first, second, bind9.server], timeout=0.6)
    # Each has an even share of what is left: 0.2 s, then about 0.2 s, then the rest.
    assert re.fullmatch(
        "no nameserver answered for pbx.example.net A: "
        f"no answer from {first} within 0.2 s; no answer from {second} within 0.[12] s; "
        f"{bind9.server} answered REFUSED",
        str(caught.value),
    )


def test_dns_nxdomain_is_final_and_the_next_server_is_not_asked(bind9: Bind9) -> None:
    started = time.monotonic()
    with pytest.raises(SourceError, match="NXDOMAIN"):
        ask_dns(f"nothing.{bind9.ddns_zone}", "ipv4", [bind9.server, dead_server()], timeout=2)
    assert time.monotonic() - started < 0.5


# --- kind "dns", the system resolver ----------------------------------------------------------

# Runs inside fresh network and mount namespaces: named on 127.0.0.1:53 there, and a resolv.conf
# naming it bind-mounted over /etc/resolv.conf, so the untouched system path is what is tested.
_SYSTEM_RESOLVER_CHILD = """
import json, sys
from pathlib import Path
from ipwatch.errors import SourceError
from ipwatch.sources import dns
from tests.peers.bind9 import running_bind9

results = {}
with running_bind9(Path(sys.argv[1]), port=53, ipv6=False):
    for name, family in json.loads(sys.argv[2]):
        try:
            results[f"{name} {family}"] = dns.ask(dns.Options(name), family, 2.0)
        except SourceError as error:
            results[f"{name} {family}"] = f"error: {error}"
print(json.dumps(results))
"""


def _namespace_command() -> list[str]:
    need("unshare", "util-linux")
    need("ip", "iproute2")
    need("named", "bind9")
    command = ["unshare", "--net", "--mount"]
    if os.geteuid() != 0:
        command.insert(1, "--map-root-user")
    probe = subprocess.run([*command, "true"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        missing(f"cannot create network and mount namespaces: {probe.stderr.strip()}")
    if not Path("/etc/resolv.conf").exists():
        missing("/etc/resolv.conf does not exist, so nothing can be mounted over it")
    return command


def test_dns_system_resolver_reads_resolv_conf(tmp_path: Path) -> None:
    command = _namespace_command()
    resolv_conf = tmp_path / "resolv.conf"
    resolv_conf.write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
    named_dir = tmp_path / "named"
    named_dir.mkdir()
    cases = [
        ["pbx.ddns.test", "ipv4"],
        ["pbx.ddns.test", "ipv6"],
        ["multi.ddns.test", "ipv4"],
        ["nothing.ddns.test", "ipv4"],
        ["v4only.ddns.test", "ipv6"],
        ["pbx.example.net", "ipv4"],
    ]
    script = 'ip link set lo up && mount --bind "$1" /etc/resolv.conf && shift && exec "$@"'
    child = [sys.executable, "-c", _SYSTEM_RESOLVER_CHILD, str(named_dir), json.dumps(cases)]
    result = subprocess.run(
        [*command, "sh", "-c", script, "sh", str(resolv_conf), *child],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    where = "the system resolver (127.0.0.1)"
    assert json.loads(result.stdout) == {
        "pbx.ddns.test ipv4": "198.51.100.20",
        "pbx.ddns.test ipv6": "2001:db8::20",
        "multi.ddns.test ipv4": "198.51.100.30",
        "nothing.ddns.test ipv4": (
            f"error: {where} says nothing.ddns.test does not exist (NXDOMAIN)"
        ),
        "v4only.ddns.test ipv6": f"error: {where} has no AAAA record for v4only.ddns.test",
        "pbx.example.net ipv4": (
            f"error: {where} could not answer for pbx.example.net A (its servers failed or refused)"
        ),
    }


# --- kind "dns-echo", explicit form -----------------------------------------------------------


def test_echo_a_and_aaaa_by_family_with_rd_off(bind9: Bind9) -> None:
    qname = "myip.opendns.test"
    assert ask_echo("ipv4", server=bind9.server, qname=qname) == "198.51.100.7"
    assert ask_echo("ipv6", server=bind9.server, qname=qname) == "2001:db8::7"
    logged = logged_queries(bind9, qname)
    assert {(q[1], q[2]) for q in logged} == {("IN", "A"), ("IN", "AAAA")}
    # BIND logs "+" first when the query asked for recursion, "-" when it did not.
    assert all(flags.startswith("-") for _, _, _, flags in logged)


def test_echo_txt_takes_the_bare_address_and_skips_the_ecs_string(bind9: Bind9) -> None:
    qname = "o-o.myaddr.l.google.test"
    assert "edns0-client-subnet 1.2.3.0/24" in bind9.records[qname]["TXT"]
    assert ask_echo(server=bind9.server, qname=qname, rdtype="TXT") == "198.51.100.8"


def test_echo_txt_without_an_address_of_the_family(bind9: Bind9) -> None:
    qname = "o-o.myaddr.l.google.test"
    with pytest.raises(SourceError) as caught:
        ask_echo("ipv6", server=bind9.server, qname=qname, rdtype="TXT")
    assert str(caught.value) == (
        f"{bind9.server} answered {qname} IN TXT without an ipv6 address"
        ' ("198.51.100.8"; "edns0-client-subnet 1.2.3.0/24")'
    )


def test_echo_chaos_class_txt(bind9: Bind9) -> None:
    answer = ask_echo(server=bind9.server, qname="whoami.cloudflare", rdtype="TXT", rdclass="CH")
    assert answer == "198.51.100.9"
    assert ("whoami.cloudflare", "CH", "TXT") in {q[:3] for q in bind9.queries()}


def test_echo_refuses_an_answer_owned_by_another_name(bind9: Bind9) -> None:
    # named answers the alias with its CNAME and the target's A record; neither is owned by the
    # name asked, so neither is the echo.
    with pytest.raises(SourceError) as caught:
        ask_echo(server=bind9.server, qname="alias.opendns.test")
    assert str(caught.value) == f"{bind9.server} sent no A record for alias.opendns.test IN A"


def test_echo_error_rcodes(bind9: Bind9) -> None:
    with pytest.raises(SourceError) as caught:
        ask_echo(server=bind9.server, qname="myip.example.net")
    assert str(caught.value) == f"{bind9.server} answered REFUSED to myip.example.net IN A"
    with pytest.raises(SourceError) as caught:
        ask_echo(server=bind9.server, qname="nobody.opendns.test")
    assert str(caught.value) == f"{bind9.server} answered NXDOMAIN to nobody.opendns.test IN A"


def test_echo_dead_server_times_out_within_the_budget() -> None:
    dead = dead_server()
    started = time.monotonic()
    with pytest.raises(SourceError) as caught:
        ask_echo(timeout=0.3, server=dead, qname="myip.opendns.test")
    assert (
        str(caught.value) == f"no answer from {dead} within 0.3 s (asking myip.opendns.test IN A)"
    )
    assert time.monotonic() - started < 0.7


# --- kind "dns-echo", what is sent (no network) -----------------------------------------------


def test_echo_queries_never_ask_for_recursion() -> None:
    for provider in dns_echo.PRESETS:
        question = dns_echo.question_for(dns_echo.Options(provider=provider), "ipv4")  # type: ignore[arg-type]
        query = dns_echo.build_query(question)
        assert not query.flags & dns.flags.RD
        assert str(query.question[0].name) == question.qname + "."


@pytest.mark.parametrize(
    ("provider", "family", "expected"),
    [
        ("opendns", "ipv4", "208.67.222.222:53 myip.opendns.com IN A"),
        ("opendns", "ipv6", "[2620:119:35::35]:53 myip.opendns.com IN AAAA"),
        ("google", "ipv4", "216.239.32.10:53 o-o.myaddr.l.google.com IN TXT"),
        ("google", "ipv6", "[2001:4860:4802:32::a]:53 o-o.myaddr.l.google.com IN TXT"),
        ("cloudflare", "ipv4", "1.1.1.1:53 whoami.cloudflare CH TXT"),
        ("cloudflare", "ipv6", "[2606:4700:4700::1111]:53 whoami.cloudflare CH TXT"),
        ("akamai", "ipv4", "193.108.88.1:53 whoami.akamai.net IN A"),
    ],
)
def test_echo_presets_ask_the_service_over_the_family(
    provider: str, family: str, expected: str
) -> None:
    question = dns_echo.question_for(dns_echo.Options(provider=provider), family)  # type: ignore[arg-type]
    assert f"{dns_source.server_label(question.server)} {question}" == expected


def test_echo_akamai_has_no_ipv6() -> None:
    with pytest.raises(SourceError, match=r"the akamai echo .* has no ipv6 service"):
        dns_echo.ask(dns_echo.Options(provider="akamai"), "ipv6", 1.0)


# --- config checks through ipwatch.config.parse -----------------------------------------------


def config_errors(source: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        config.parse({"source": [source]}, "ipwatch.toml")
    return caught.value.messages


def test_config_accepts_both_kinds() -> None:
    parsed = config.parse(
        {
            "source": [
                {
                    "kind": "dns",
                    "hostname": "pbx.example.org.",
                    "nameservers": ["192.0.2.53", "[::1]:5300"],
                },
                {"kind": "dns-echo", "provider": "google", "timeout": "1s"},
                {
                    "kind": "dns-echo",
                    "server": "192.0.2.1:5353",
                    "qname": "whoami.test",
                    "rdclass": "CH",
                },
            ]
        }
    )
    dns_options, preset, explicit = (s.options for s in parsed.sources)
    assert dns_options == dns_source.Options(
        "pbx.example.org.", (HostPort("192.0.2.53"), HostPort("::1", 5300))
    )
    assert preset == dns_echo.Options(provider="google")
    assert explicit == dns_echo.Options(
        server=HostPort("192.0.2.1", 5353), qname="whoami.test", rdclass="CH"
    )


def test_config_dns_nameserver_must_be_an_ip_address() -> None:
    errors = config_errors(
        {"kind": "dns", "hostname": "pbx.example.org", "nameservers": ["ns1.example.net"]}
    )
    assert errors == [
        "ipwatch.toml: source[0].nameservers[0]: 'ns1.example.net' is a host name; give the"
        ' nameserver\'s IP address as "IP" or "IP:port", since looking its name up would itself'
        " need DNS"
    ]


def test_config_dns_bad_nameservers_are_all_reported() -> None:
    errors = config_errors(
        {"kind": "dns", "hostname": "pbx.example.org", "nameservers": ["192.0.2.1:99999", "", 53]}
    )
    assert [e.split(": ")[1] for e in errors] == [
        "source[0].nameservers[0]",
        "source[0].nameservers[1]",
        "source[0].nameservers[2]",
    ]


def test_config_dns_hostname_is_required_and_checked() -> None:
    assert config_errors({"kind": "dns"}) == [
        "ipwatch.toml: source[0].hostname: missing; this key is required"
    ]
    assert config_errors({"kind": "dns", "hostname": "pbx..example.org"})[0].startswith(
        "ipwatch.toml: source[0].hostname: 'pbx..example.org' is not a DNS name;"
    )
    assert config_errors({"kind": "dns", "hostname": "192.0.2.7"}) == [
        "ipwatch.toml: source[0].hostname: '192.0.2.7' is an IP address, not a DNS name"
    ]


def test_config_echo_provider_and_server_exclude_each_other() -> None:
    errors = config_errors(
        {"kind": "dns-echo", "provider": "opendns", "server": "192.0.2.1", "qname": "x.test"}
    )
    assert errors == [
        'ipwatch.toml: source[0]: provider = "opendns" already chooses the server, qname, rdtype'
        " and rdclass; remove server, qname, or remove provider"
    ]


def test_config_echo_needs_provider_or_server_and_qname() -> None:
    assert config_errors({"kind": "dns-echo"}) == [
        'ipwatch.toml: source[0]: set provider ("opendns", "google", "cloudflare" or "akamai"),'
        " or server and qname"
    ]
    assert config_errors({"kind": "dns-echo", "server": "192.0.2.1"}) == [
        "ipwatch.toml: source[0]: server and qname go together; add qname"
    ]


def test_config_echo_unknown_provider_and_rdtype() -> None:
    errors = config_errors({"kind": "dns-echo", "provider": "quad9", "rdtype": "MX"})
    assert errors == [
        "ipwatch.toml: source[0].provider: 'quad9' is not one of 'opendns', 'google',"
        " 'cloudflare', 'akamai'",
        "ipwatch.toml: source[0].rdtype: 'MX' is not one of 'A', 'AAAA', 'TXT'",
    ]
