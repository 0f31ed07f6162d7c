"""The router sources, natpmp and upnp, against miniupnpd in the NAT lab (and NAT-PMP against a
scripted responder on loopback for the replies miniupnpd never sends); ipwatch runs as a real
subprocess inside the lab's LAN namespace, as on a PBX behind the router."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from ipwatch.errors import SourceError
from ipwatch.sources import natpmp
from tests.lab.conftest import OpenLab
from tests.lab.lab import (
    CGNAT_ROUTER_WAN,
    LAB_NETWORKS,
    NATPMP_PORT,
    PUBLIC_ADDRESS,
    ROUTER_LAN,
    Lab,
    Role,
    remove_stale_labs,
)
from tests.lab.natpmp_responder import NatPmpResponder, encode_reply
from tests.support import free_port, need, run_ipwatch, wait_until

pytestmark = pytest.mark.integration

NEW_ADDRESS = "198.51.100.20"
CHANGE_TIMEOUT = 20.0
STUN_SOURCE = {"kind": "stun", "servers": ["198.51.100.1:3478"], "rto": "100ms", "timeout": "1s"}
NATPMP_SOURCE = {"kind": "natpmp", "timeout": "1s"}  # gateway: the LAN's default route
UPNP_SOURCE = {"kind": "upnp", "timeout": "3s"}  # discovery: about 1 s
UPNP_URL_SOURCE = {
    "kind": "upnp",
    "name": "upnp-url",
    "url": f"http://{ROUTER_LAN}:5000/rootDesc.xml",
    "timeout": "1s",
}


def write_config(
    path: Path, sources: list[dict[str, Any]], *, accept: list[str] | None = None
) -> Path:
    """An ipwatch config with `sources`, confirming in one round, accepting the lab's ranges."""
    accept = LAB_NETWORKS if accept is None else accept
    lines = ["confirm = 1", f"accept = {json.dumps(accept)}"]
    for source in sources:
        lines += ["", "[[source]]", *(f"{key} = {json.dumps(v)}" for key, v in source.items())]
    path.write_text("\n".join(lines) + "\n")
    return path


def sources_json(lab: Lab, config: Path, role: Role = "lan") -> dict[str, dict[str, Any]]:
    """`ipwatch sources --json` inside the lab: each ipv4 verdict by source name."""
    result = lab.ipwatch(role, "sources", "--json", config=config)
    assert result.returncode in (0, 2), result.stderr
    return {verdict["name"]: verdict for verdict in json.loads(result.stdout)["ipv4"]}


# --- the lab: miniupnpd reporting the STUN address ----------------------------------------------


def test_router_sources_report_the_public_address_and_follow_a_change(
    router_lab: Lab, tmp_path: Path
) -> None:
    config = write_config(
        tmp_path / "ipwatch.toml", [NATPMP_SOURCE, UPNP_SOURCE, UPNP_URL_SOURCE, STUN_SOURCE]
    )
    seen = sources_json(router_lab, config)
    assert {name: v["address"] for name, v in seen.items()} == {
        "natpmp-1": PUBLIC_ADDRESS,
        "upnp-1": PUBLIC_ADDRESS,
        "upnp-url": PUBLIC_ADDRESS,
        "stun-1": PUBLIC_ADDRESS,
    }
    assert all(v["error"] is None and v["rejected"] is None and v["agrees"] for v in seen.values())

    router_lab.set_wan_address(NEW_ADDRESS)

    def all_moved() -> dict[str, dict[str, Any]] | None:
        now = sources_json(router_lab, config)
        return now if all(v["address"] == NEW_ADDRESS for v in now.values()) else None

    moved = wait_until(all_moved, CHANGE_TIMEOUT, f"every source to report {NEW_ADDRESS}")
    assert all(v["rejected"] is None for v in moved.values())


def test_without_accept_the_lab_addresses_are_rejected_with_the_reason(
    router_lab: Lab, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "ipwatch.toml", [NATPMP_SOURCE, UPNP_URL_SOURCE], accept=[])
    seen = sources_json(router_lab, config)
    reason = "documentation address (TEST-NET-2, RFC 5737)"
    assert [(v["address"], v["rejected"]) for v in seen.values()] == [(PUBLIC_ADDRESS, reason)] * 2

    text = router_lab.ipwatch("lan", "sources", config=config)
    assert text.returncode == 0, text.stderr
    assert text.stdout.count(f"{PUBLIC_ADDRESS}") == 2
    assert text.stdout.count(f"rejected: {reason}") == 2


def test_upnp_discovers_on_the_interface_it_is_given(router_lab: Lab, tmp_path: Path) -> None:
    sources = [
        {**UPNP_SOURCE, "name": f"upnp-{interface}", "interface": interface, "timeout": "1500ms"}
        for interface in ("l0", "192.0.2.2", "lo", "nosuch0")
    ]
    seen = sources_json(router_lab, write_config(tmp_path / "ipwatch.toml", sources))
    assert seen["upnp-l0"]["address"] == seen["upnp-192.0.2.2"]["address"] == PUBLIC_ADDRESS
    assert seen["upnp-lo"]["error"] == (
        "no UPnP answer within 1500ms (still discovering the router (SSDP))"
    )
    assert seen["upnp-nosuch0"]["error"] == (
        "no UPnP device answered discovery on nosuch0; enable UPnP on the router, or set `url`"
    )


def test_upnp_remembers_the_gateway_it_discovered(router_lab: Lab) -> None:
    """Discovery costs a second; the daemon's later rounds ask the gateway found at once."""
    script = (
        "import time\n"
        "from ipwatch.sources import upnp\n"
        "options = upnp.Options()\n"
        "for _ in range(3):\n"
        "    started = time.monotonic()\n"
        "    print(upnp.ask(options, 'ipv4', 3.0), time.monotonic() - started)\n"
    )
    result = router_lab.run("lan", [sys.executable, "-c", script])
    rounds = [line.split() for line in result.stdout.splitlines()]
    assert [address for address, _ in rounds] == [PUBLIC_ADDRESS] * 3
    first, *later = (float(seconds) for _, seconds in rounds)
    assert first > 0.9  # miniupnpc waits about a second for discovery answers
    assert max(later) < 0.2, rounds


# --- the lab: a router without a public address ------------------------------------------------


def test_reserved_wan_address_gives_one_error_line_per_router_source(
    open_lab: OpenLab, tmp_path: Path
) -> None:
    lab = open_lab()
    lab.start_miniupnpd(stun=False)  # 198.51.100.10 is a documentation address: "reserved"
    config = write_config(tmp_path / "ipwatch.toml", [NATPMP_SOURCE, UPNP_URL_SOURCE])
    seen = sources_json(lab, config)
    assert seen["natpmp-1"]["address"] is None
    assert seen["natpmp-1"]["error"].startswith(
        f"{ROUTER_LAN}:{NATPMP_PORT} answered NAT-PMP result 3 (network failure): the router has"
        " no public address"
    )
    assert seen["upnp-url"]["address"] is None
    assert seen["upnp-url"]["error"].startswith(
        "the router reports no external address (it has a private/reserved WAN address or is not"
        " connected)"
    )

    text = lab.ipwatch("lan", "sources", config=config)
    assert text.returncode == 2  # no source answered
    lines = text.stdout.splitlines()
    assert [line.split()[0] for line in lines[1:]] == ["natpmp-1", "upnp-url"]
    assert all("error: " in line for line in lines[1:])


def test_natpmp_without_a_server_is_refused_and_behind_a_firewall_times_out(
    lab: Lab, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "ipwatch.toml", [{"kind": "natpmp", "timeout": "1s"}])
    refused = sources_json(lab, config)["natpmp-1"]
    assert "refused NAT-PMP (ICMP port unreachable)" in refused["error"]
    assert refused["latency_ms"] < 300

    lab.drop("rtr", f"udp dport {NATPMP_PORT} drop")
    silent = sources_json(lab, config)["natpmp-1"]
    assert silent["error"].startswith(f"no NAT-PMP answer from {ROUTER_LAN}:{NATPMP_PORT} within")
    assert "(3 requests sent)" in silent["error"]  # at 0, 250 and 750 ms
    assert 1000 <= silent["latency_ms"] < 1200


def test_upnp_without_a_router_says_so_within_its_timeout(lab: Lab, tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "ipwatch.toml",
        [
            {"kind": "upnp", "timeout": "1500ms"},
            {**UPNP_URL_SOURCE, "timeout": "1s"},
        ],
    )
    seen = sources_json(lab, config)
    # miniupnpc keeps looking for about 4 s when nobody answers; the timeout cuts it short.
    assert (
        seen["upnp-1"]["error"]
        == "no UPnP answer within 1500ms (still discovering the router (SSDP))"
    )
    assert seen["upnp-1"]["latency_ms"] < 1700
    assert seen["upnp-url"]["error"].startswith(
        f"no UPnP gateway description at {UPNP_URL_SOURCE['url']}"
    )


# --- the lab: carrier-grade NAT in front of the router -----------------------------------------


def test_router_behind_carrier_grade_nat(open_lab: OpenLab, tmp_path: Path) -> None:
    """The router's WAN is 100.64.0.10 and the Internet sees 198.51.100.10. miniupnpd will not
    report a reserved address, so from the LAN the router sources fail and say why, while
    stun gives the address; on the router itself the interface source sees 100.64.0.10, and
    `check` and `status` explain that port forwarding cannot work."""
    lab = open_lab(cgnat=True)
    lab.start_coturn()
    lab.start_miniupnpd(stun=False)

    from_lan = sources_json(
        lab, write_config(tmp_path / "lan.toml", [NATPMP_SOURCE, UPNP_URL_SOURCE, STUN_SOURCE])
    )
    assert from_lan["stun-1"]["address"] == PUBLIC_ADDRESS and from_lan["stun-1"]["agrees"]
    assert "result 3 (network failure)" in from_lan["natpmp-1"]["error"]
    assert "carrier-grade NAT" in from_lan["natpmp-1"]["error"]
    assert from_lan["upnp-url"]["error"].startswith("the router reports no external address")

    config = write_config(
        tmp_path / "rtr.toml", [{"kind": "interface", "interface": "r-wan"}, STUN_SOURCE]
    )
    state_dir = tmp_path / "state"
    check = lab.ipwatch("rtr", "check", config=config, state_dir=state_dir)
    assert check.returncode == 0, check.stdout + check.stderr
    hint = (
        f"interface-1 (interface) reports {CGNAT_ROUTER_WAN} while stun-1 sees {PUBLIC_ADDRESS}:"
        " your ISP uses carrier-grade NAT (100.64.0.0/10), so port forwarding on your router"
        " alone will not reach Asterisk"
    )
    assert f"  note: {hint}" in check.stdout.splitlines()
    assert "rejected: carrier-grade NAT address (100.64.0.0/10, RFC 6598)" in check.stdout

    status = run_ipwatch("status", state_dir=state_dir)
    assert status.returncode == 1  # WARNING
    assert f"problem: ipv4: {hint}" in status.stdout.splitlines()


# --- the lab itself ----------------------------------------------------------------------------


def test_teardown_leaves_no_process_and_no_namespace(tmp_path: Path) -> None:
    with Lab.open(tmp_path) as lab:
        lab.start_coturn()
        lab.start_miniupnpd()
        # Not a server the lab started itself: teardown must find and kill it too.
        lab.run("lan", ["sh", "-c", "sleep 300 </dev/null >/dev/null 2>&1 &"])
        inside = lab.pids()
        assert len(inside) == 3
        assert len(lab.namespaces()) == 3
    wait_until(lambda: not any(_running(pid) for pid in inside), 5, "the lab's processes to end")
    assert lab.namespaces() == set()


def test_leftovers_of_a_crashed_run_are_removed(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("stale labs are only visible to root (a user namespace dies with its run)")
    ip = need("ip", "iproute2")
    gone = subprocess.Popen(["true"])
    gone.wait()  # its pid now names a process that no longer exists, like a crashed run's
    stale = f"ipw{gone.pid}x1-wan"
    subprocess.run([ip, "netns", "add", stale], check=True)
    left_running = subprocess.Popen([ip, "netns", "exec", stale, "sleep", "300"])
    try:
        wait_until(lambda: _netns_pids(stale), 5, "the leftover process to start")
        with Lab.open(tmp_path) as lab:
            assert stale not in _all_namespaces()
            assert lab.namespaces() == {lab.ns("wan"), lab.ns("rtr"), lab.ns("lan")}
            assert left_running.wait(timeout=5) == -9  # killed with its namespace
    finally:
        if left_running.poll() is None:
            left_running.kill()
            left_running.wait()
        remove_stale_labs()
    assert stale not in _all_namespaces()


def _netns_pids(name: str) -> str:
    listed = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True)
    return listed.stdout.strip()


def _all_namespaces() -> set[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in listed.stdout.splitlines() if line.strip()}


def _running(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status  # a zombie has ended; its parent just has not reaped it


# --- NAT-PMP against a scripted responder on loopback (no root needed) -------------------------


def ask_responder(responder: NatPmpResponder, timeout: float = 1.0) -> str:
    options = natpmp.Options(gateway=natpmp.parse_gateway("127.0.0.1"), port=responder.port)
    return natpmp.ask(options, "ipv4", timeout)


@pytest.mark.parametrize(
    ("code", "advice"),
    [
        (1, "unsupported version): the router speaks a newer protocol only (PCP)"),
        (2, "not authorized/refused): NAT-PMP is disabled on the router; enable it there"),
        (3, "network failure): the router has no public address"),
        (4, "out of resources): the router cannot serve NAT-PMP right now"),
        (5, "unsupported opcode): the router does not offer the public-address request"),
        (99, "unknown result code): the router's NAT-PMP is broken"),
    ],
)
def test_natpmp_result_codes_say_what_they_mean(code: int, advice: str) -> None:
    responder = NatPmpResponder([[encode_reply(7, "0.0.0.0", result=code)]])
    with responder, pytest.raises(SourceError) as caught:
        ask_responder(responder)
    assert str(caught.value).startswith(
        f"127.0.0.1:{responder.port} answered NAT-PMP result {code} ({advice}"
    )
    assert len(responder.requests) == 1


def test_natpmp_unsupported_version_reply_of_eight_bytes() -> None:
    """RFC 6886 §3.5: the "Unsupported Version" reply carries no address field."""
    responder = NatPmpResponder([[encode_reply(1, "0.0.0.0", result=1)[:8]]])
    with responder, pytest.raises(SourceError, match=r"result 1 \(unsupported version\)"):
        ask_responder(responder)


def test_natpmp_ignores_datagrams_that_are_no_reply() -> None:
    good = encode_reply(3600, "203.0.113.7")
    strays = [
        b"",
        b"\x00\x80\x00",  # shorter than any reply
        b"\x02" + good[1:],  # PCP's version
        b"\x00\x81" + good[2:],  # the reply to another opcode
        b"\x00\x00\x00\x00",  # a request, not a reply
        good[:8],  # a success without its address
    ]
    with NatPmpResponder([[*strays, good]]) as responder:
        assert ask_responder(responder) == "203.0.113.7"
    assert [data for _, data in responder.requests] == [b"\x00\x00"]


def test_natpmp_retransmits_on_the_rfc_schedule_until_the_timeout() -> None:
    with NatPmpResponder() as responder:
        started = time.monotonic()
        with pytest.raises(SourceError) as caught:
            ask_responder(responder, timeout=1.0)
        elapsed = time.monotonic() - started
    assert str(caught.value).startswith(f"no NAT-PMP answer from 127.0.0.1:{responder.port}")
    assert "(3 requests sent)" in str(caught.value)
    assert 1.0 <= elapsed < 1.2
    assert responder.request_times() == pytest.approx([0, 0.25, 0.75], abs=0.08)


def test_natpmp_answer_to_a_retransmission_counts() -> None:
    with NatPmpResponder([[], [encode_reply(5, "203.0.113.9")]]) as responder:
        assert ask_responder(responder) == "203.0.113.9"
    assert len(responder.requests) == 2


def test_natpmp_closed_port_fails_at_once() -> None:
    options = natpmp.Options(gateway=natpmp.parse_gateway("127.0.0.1"), port=free_port())
    started = time.monotonic()
    with pytest.raises(SourceError, match=r"refused NAT-PMP \(ICMP port unreachable\)"):
        natpmp.ask(options, "ipv4", 2.0)
    assert time.monotonic() - started < 0.5


def test_sources_shows_an_unspecified_router_answer_as_rejected(tmp_path: Path) -> None:
    """Some routers answer 0.0.0.0 with success while their WAN is down; decide rejects it."""
    with NatPmpResponder([[encode_reply(1, "0.0.0.0")]] * 2) as responder:
        source = {"kind": "natpmp", "gateway": "127.0.0.1", "port": responder.port}
        config = write_config(tmp_path / "ipwatch.toml", [source])
        as_json = run_ipwatch("sources", "--json", config=config)
        as_text = run_ipwatch("sources", config=config)
    [verdict] = json.loads(as_json.stdout)["ipv4"]
    reason = 'unspecified/"this network" address (0.0.0.0/8)'
    assert (verdict["address"], verdict["error"], verdict["rejected"]) == ("0.0.0.0", None, reason)
    assert f"rejected: {reason}" in as_text.stdout
