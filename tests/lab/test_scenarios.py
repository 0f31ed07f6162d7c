"""The whole system on a real network path: `ipwatch run` on a PBX behind a NAT router, two
coturn STUN servers and bind9 on the "Internet", miniupnpd on the router, the stand-in Asterisk
reached through its console socket (tests/lab/measure.py builds it all).

Each scenario changes the lab's public address and checks everything a user would look at:
pjsip.conf, what Asterisk uses, the DNS record, `ipwatch status`, and what a hook saw."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.lab.lab import INTERNET_SERVER, PUBLIC_ADDRESS
from tests.lab.measure import DDNS_NAME, Pbx, Settings, open_pbx
from tests.support import wait_until

pytestmark = pytest.mark.integration

OLD, NEW = PUBLIC_ADDRESS, "198.51.100.20"
RELOAD = "module reload res_pjsip.so"
StartPbx = Callable[..., Pbx]


@pytest.fixture
def start_pbx(tmp_path: Path) -> Iterator[StartPbx]:
    """`start_pbx(**settings)`: the lab with everything running and ipwatch settled on OLD."""
    started: list[Pbx] = []
    with contextlib.ExitStack() as stack:

        def start(**settings: Any) -> Pbx:
            began = time.monotonic()
            pbx = stack.enter_context(open_pbx(tmp_path, Settings(**settings)))
            print(f"lab setup, up to ipwatch settled on {OLD}: {time.monotonic() - began:.2f} s")
            started.append(pbx)
            return pbx

        yield start
        for pbx in started:
            print(pbx.daemon_log())  # pytest shows it when the test failed


def change_and_time(pbx: Pbx, timeout: float, *, trigger: bool = False) -> float:
    """Move the WAN to NEW (and run `ipwatch trigger`); seconds until Asterisk uses NEW."""
    changed_at = time.monotonic()
    pbx.lab.set_wan_address(NEW)
    if trigger:
        pbx.trigger()
    pbx.wait_asterisk(NEW, timeout)
    return time.monotonic() - changed_at


def ddns_problems(pbx: Pbx) -> tuple[int, list[str], str]:
    """`ipwatch status`: exit status, the problems it reports about DDNS, and the text."""
    code, report, text = pbx.status()
    return code, [p for p in report["problems"] if p.startswith(f"ddns {DDNS_NAME} ")], text


def ddns_failed(pbx: Pbx) -> tuple[int, list[str], str] | None:
    found = ddns_problems(pbx)
    return found if found[1] else None


def test_a_wan_change_is_confirmed_published_applied_and_recorded(start_pbx: StartPbx) -> None:
    pbx = start_pbx(interval="2s")
    assert pbx.hooks_seen() == [("change", "", OLD)]

    # A round within 2.2 s (interval + jitter), a confirming one 0.33 s later, then the apply.
    seconds = change_and_time(pbx, 2.2 + 0.33 + 3)
    print(f"WAN change -> Asterisk configured, polling every 2 s: {seconds:.2f} s")

    text = pbx.pjsip.read_text()
    assert text.count(NEW) == 2 and OLD not in text
    assert RELOAD in pbx.stand_in.commands("console")
    wait_until(lambda: pbx.dns_record() == [NEW], 5, f"the DNS record to hold {NEW}")
    wait_until(lambda: ("applied", OLD, NEW) in pbx.hooks_seen(), 5, "the applied hook")
    assert pbx.hooks_seen() == [("change", "", OLD), ("change", OLD, NEW), ("applied", OLD, NEW)]

    code, report, text = pbx.status()
    assert code == 0, text
    assert report["ipv4"]["address"] == NEW and report["ipv4"]["confirmed"]
    last = report["changes"][-1]
    assert (last["family"], last["old"], last["new"]) == ("ipv4", OLD, NEW)
    sources = {source["name"]: source for source in report["ipv4"]["sources"]}
    assert set(sources) == {"stun-a", "stun-b", "natpmp-1", "upnp-1"}
    # Majority of four is three: at least one router source confirmed what STUN saw.
    assert any(s["agrees"] for s in sources.values() if s["kind"] in ("natpmp", "upnp"))
    assert f"change: ipv4 {OLD} -> {NEW} at " in text
    assert report["daemon"]["alive"] is True

    assert pbx.stop_daemon() == 0
    assert f"ipv4 {OLD} -> {NEW}" in pbx.daemon_log()


def test_a_flap_inside_the_confirmation_window_changes_nothing(start_pbx: StartPbx) -> None:
    pbx = start_pbx(interval="1s", confirm=3, fast_confirm="1s")
    before = pbx.pjsip.read_text()
    commands = len(pbx.stand_in.commands())

    pbx.lab.set_wan_address(NEW)
    wait_until(lambda: pbx.ipv4().get("candidate") == NEW, 10, f"a round to see {NEW}")
    # NEW needs two more rounds of quorum, a second apart; it gets none: STUN sees OLD again.
    pbx.lab.set_wan_address(OLD)
    pbx.wait_rounds(3 + 1, 15)
    wait_until(lambda: pbx.confirmed(OLD) and not pbx.ipv4().get("candidate"), 5, "OLD again")

    assert pbx.pjsip.read_text() == before
    assert pbx.asterisk_shows(OLD)
    assert RELOAD not in pbx.stand_in.commands()[commands:]
    assert pbx.hooks_seen() == [("change", "", OLD)]
    assert pbx.dns_record() == [OLD]
    code, report, text = pbx.status()
    assert code == 0, text
    assert [change["new"] for change in report["changes"]] == [OLD]


def test_with_the_dns_server_down_the_change_applies_and_ddns_catches_up(
    start_pbx: StartPbx,
) -> None:
    pbx = start_pbx(interval="1s")  # [[ddns]] min_interval = "1s": a failure is retried soon
    pbx.lab.stop("named")

    change_and_time(pbx, 1.1 + 0.33 + 3)
    assert NEW in pbx.pjsip.read_text()
    wait_until(lambda: ("applied", OLD, NEW) in pbx.hooks_seen(), 5, "the applied hook")
    code, problems, text = wait_until(lambda: ddns_failed(pbx), 5, "the DDNS failure in status")
    assert code == 1  # WARNING
    assert problems == [
        f"ddns {DDNS_NAME} failed: {INTERNET_SERVER}:53 refused the connection; is a DNS server"
        " listening there on TCP?"
    ]
    assert f"problem: {problems[0]}" in text.splitlines()

    pbx.lab.start_bind9()
    wait_until(lambda: pbx.dns_record() == [NEW], 10, f"the retried update to set {NEW}")
    wait_until(lambda: ddns_problems(pbx)[:2] == (0, []), 5, "status without the DDNS failure")
    assert f"ddns {DDNS_NAME}: pbx-lab.ddns.test A {NEW} updated" in pbx.daemon_log()


def test_behind_carrier_grade_nat_the_stun_address_is_applied_with_a_warning(
    start_pbx: StartPbx,
) -> None:
    """The router's WAN is 100.64.0.10: miniupnpd has no public address to report, so the two
    STUN servers decide, and status explains why port forwarding on the router cannot work."""
    pbx = start_pbx(interval="1s", cgnat=True)
    change_and_time(pbx, 1.1 + 0.33 + 3)
    assert NEW in pbx.pjsip.read_text()
    wait_until(lambda: pbx.dns_record() == [NEW], 5, f"the DNS record to hold {NEW}")

    code, report, text = pbx.status()
    assert code == 1, text  # WARNING
    assert report["ipv4"]["address"] == NEW and report["ipv4"]["agreement"] == "2/4"
    hint = (
        f"natpmp-1 (natpmp) says the router has no public address while stun-a sees {NEW}: the"
        " router is behind carrier-grade NAT or another NAT, so forwarding ports on it alone will"
        " not reach Asterisk"
    )
    assert report["ipv4"]["hint"] == hint
    assert f"problem: ipv4: {hint}" in text.splitlines()
    assert "problem: ipv4: source natpmp-1 failed: " in text


def test_trigger_applies_a_change_at_once_despite_a_long_interval(start_pbx: StartPbx) -> None:
    pbx = start_pbx(interval="1h")
    rounds = pbx.rounds()
    seconds = change_and_time(pbx, 3.0, trigger=True)
    print(f"WAN change -> Asterisk configured, with `ipwatch trigger`: {seconds:.2f} s")
    assert pbx.rounds() - rounds == 2  # the triggered round and one confirming round
    wait_until(lambda: pbx.dns_record() == [NEW], 5, f"the DNS record to hold {NEW}")
