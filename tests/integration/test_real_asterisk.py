"""`check --apply` against a real Asterisk (22 and 20, built from ../shared/asterisk/): what it
puts on the wire (REGISTER and OPTIONS Via/Contact, an INVITE's SDP) before and after."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.peers.real_asterisk import (
    CHAN_SIP_VERSION,
    NEW_ADDRESS,
    OLD_ADDRESS,
    VERSIONS,
    RealAsterisk,
    RealFactory,
    ipwatch_config,
    nat_transport,
    pjsip_probe_peer,
    sip_conf,
)
from tests.peers.sip_probe import SipProbe
from tests.support import free_port, ipv6_loopback_available, missing, run_ipwatch, wait_until

pytestmark = pytest.mark.integration


def apply(tmp_path: Path, config: Path) -> tuple[int, dict[str, Any], str]:
    finished = run_ipwatch(
        "check", "--apply", "--json", config=config, state_dir=tmp_path / "state"
    )
    result = json.loads(finished.stdout) if finished.stdout.startswith("{") else {}
    return finished.returncode, result, finished.stderr


def pjsip_pbx(factory: RealFactory, version: str, probe: SipProbe) -> RealAsterisk:
    asterisk = factory(version)
    registrar = f"{probe.host}:{probe.port}"
    asterisk.write("pjsip.conf", nat_transport(asterisk) + pjsip_probe_peer(probe.uri, registrar))
    return asterisk.start()


def assert_on_the_wire(asterisk: RealAsterisk, probe: SipProbe, address: str, tech: str) -> None:
    """Asterisk's REGISTER (its own: at start, or after ipwatch's reload), OPTIONS and an
    INVITE's SDP all carry `address`."""
    probe.wait_for("REGISTER", address)
    asterisk.cli("pjsip qualify probe" if tech == "PJSIP" else "sip qualify peer probe")
    probe.wait_for("OPTIONS", address)
    asterisk.cli(f"channel originate {tech}/probe application Wait 5")
    invite = probe.wait_for("INVITE", address)
    assert f"IN IP4 {address}" in invite.sdp("c")
    probe.clear()


@pytest.mark.parametrize("control", ["ami", "console"])
@pytest.mark.parametrize("version", VERSIONS)
def test_pjsip_check_apply_puts_the_new_address_on_the_wire(
    version: str,
    control: str,
    tmp_path: Path,
    real_asterisk_factory: RealFactory,
    sip_probe: SipProbe,
) -> None:
    asterisk = pjsip_pbx(real_asterisk_factory, version, sip_probe)
    assert_on_the_wire(asterisk, sip_probe, OLD_ADDRESS, "PJSIP")
    target = f'kind = "pjsip"\nfile = "{asterisk.config_dir / "pjsip.conf"}"\n'
    status, result, stderr = apply(
        tmp_path, ipwatch_config(tmp_path, asterisk, target, control=control)
    )
    assert status == 0, stderr
    assert result["asterisk"] == {"action": "reload", "verified": True}
    assert asterisk.transport("transport-udp-nat")["external_signaling_address"] == NEW_ADDRESS
    assert_on_the_wire(asterisk, sip_probe, NEW_ADDRESS, "PJSIP")


@pytest.mark.parametrize("control", ["ami", "console"])
def test_chan_sip_check_apply_puts_the_new_address_on_the_wire(
    control: str, tmp_path: Path, real_asterisk_factory: RealFactory, sip_probe: SipProbe
) -> None:
    asterisk = real_asterisk_factory(CHAN_SIP_VERSION)
    asterisk.write("sip.conf", sip_conf(asterisk, sip_probe.host, sip_probe.port, OLD_ADDRESS))
    asterisk.start()
    assert_on_the_wire(asterisk, sip_probe, OLD_ADDRESS, "SIP")
    target = f'kind = "chan_sip"\nfile = "{asterisk.config_dir / "sip.conf"}"\n'
    status, result, stderr = apply(
        tmp_path, ipwatch_config(tmp_path, asterisk, target, control=control)
    )
    assert status == 0, stderr
    assert result["asterisk"] == {"action": "reload", "verified": True}
    assert asterisk.sip_settings()["Externaddr"].startswith(NEW_ADDRESS)
    assert_on_the_wire(asterisk, sip_probe, NEW_ADDRESS, "SIP")


def many_pjsip_endpoints(count: int) -> str:
    return "".join(
        f"\n[ext{n}]\ntype = endpoint\ntransport = transport-udp-nat\naors = ext{n}\n"
        f"auth = ext{n}\ncontext = hold\n"
        f"\n[ext{n}]\ntype = aor\nmax_contacts = 1\n"
        f"\n[ext{n}]\ntype = auth\nauth_type = userpass\nusername = ext{n}\npassword = p{n}\n"
        for n in range(count)
    )


def many_sip_peers(count: int) -> str:
    return "".join(
        f"\n[peer{n}]\ntype = friend\nhost = dynamic\nsecret = s{n}\ncontext = hold\n"
        for n in range(count)
    )


def answering(tmp_path: Path, asterisk: RealAsterisk, target: str) -> tuple[Path, Path]:
    """An ipwatch config whose source answers what the test writes into a file."""
    answer = tmp_path / "answer"
    config = ipwatch_config(tmp_path, asterisk, target)
    text = config.read_text().replace(
        f'argv = ["echo", "{NEW_ADDRESS}"]', f'argv = ["cat", "{answer}"]'
    )
    config.write_text(text)
    return config, answer


def test_chan_sip_with_5000_peers_applies_20_times_in_a_row(
    tmp_path: Path, real_asterisk_factory: RealFactory
) -> None:
    asterisk = real_asterisk_factory(CHAN_SIP_VERSION)
    asterisk.write(
        "sip.conf",
        f"[general]\nudpbindaddr = 127.0.0.1:{asterisk.sip_port}\nexternaddr = {OLD_ADDRESS}\n"
        "localnet = 127.0.0.1/255.255.255.255\n" + many_sip_peers(5000),
    )
    asterisk.start()
    target = f'kind = "chan_sip"\nfile = "{asterisk.config_dir / "sip.conf"}"\n'
    config, answer = answering(tmp_path, asterisk, target)
    for n in range(20):
        address = f"198.51.100.{100 + n}"
        answer.write_text(address + "\n")
        status, result, stderr = apply(tmp_path, config)
        assert status == 0, f"apply {n + 1}: {stderr}"
        assert result["asterisk"] == {"action": "reload", "verified": True}
        assert asterisk.sip_settings()["Externaddr"].startswith(address)


def test_pjsip_with_5000_endpoints_applies_and_verifies(
    tmp_path: Path, real_asterisk_factory: RealFactory, sip_probe: SipProbe
) -> None:
    asterisk = real_asterisk_factory(VERSIONS[0])
    registrar = f"{sip_probe.host}:{sip_probe.port}"
    asterisk.write(
        "pjsip.conf",
        nat_transport(asterisk)
        + pjsip_probe_peer(sip_probe.uri, registrar)
        + many_pjsip_endpoints(5000),
    )
    asterisk.start()
    target = f'kind = "pjsip"\nfile = "{asterisk.config_dir / "pjsip.conf"}"\n'
    status, result, stderr = apply(tmp_path, ipwatch_config(tmp_path, asterisk, target))
    assert status == 0, stderr
    assert result["asterisk"] == {"action": "reload", "verified": True}
    sip_probe.wait_for("REGISTER", NEW_ADDRESS)


def uptime(asterisk: RealAsterisk) -> int:
    """Seconds since Asterisk (re)started, from `core show uptime seconds`."""
    for line in asterisk.cli("core show uptime seconds").splitlines():
        if line.startswith("System uptime:"):
            return int(line.split(":")[1])
    raise AssertionError("no uptime")


def a_call_that_stays_up(asterisk: RealAsterisk) -> None:
    asterisk.cli("channel originate Local/s@hold application Wait 3600")
    wait_until(lambda: asterisk.active_calls() == 1, 10, "the call to be up")


def test_a_forced_restart_waits_for_a_real_call_to_end(
    tmp_path: Path, real_asterisk_factory: RealFactory
) -> None:
    asterisk = real_asterisk_factory(VERSIONS[0])
    asterisk.write("pjsip.conf", nat_transport(asterisk))
    asterisk.start()
    a_call_that_stays_up(asterisk)
    wait_until(lambda: uptime(asterisk) >= 2, 10, "Asterisk to be up for 2 s")
    target = f'kind = "pjsip"\nfile = "{asterisk.config_dir / "pjsip.conf"}"\n'
    config = ipwatch_config(tmp_path, asterisk, target, apply="restart", drain="60s")

    def hang_up_once_status_shows_the_wait() -> None:
        def waiting() -> bool:
            status = run_ipwatch("status", state_dir=tmp_path / "state").stdout
            return "restart Asterisk: waiting for 1 call until" in status

        wait_until(waiting, 20, "`ipwatch status` to show the drain")
        assert asterisk.active_calls() == 1  # nothing was restarted under the call
        asterisk.cli("channel request hangup all")

    hangup = threading.Thread(target=hang_up_once_status_shows_the_wait)
    hangup.start()
    status, result, stderr = apply(tmp_path, config)
    hangup.join()
    assert status == 0, stderr
    assert result["asterisk"] == {"action": "restart", "verified": True}
    assert uptime(asterisk) < 2  # it did restart
    assert asterisk.transport("transport-udp-nat")["external_media_address"] == NEW_ADDRESS


def test_a_forced_restart_goes_ahead_when_drain_runs_out(
    tmp_path: Path, real_asterisk_factory: RealFactory
) -> None:
    asterisk = real_asterisk_factory(VERSIONS[1])
    asterisk.write("pjsip.conf", nat_transport(asterisk))
    asterisk.start()
    a_call_that_stays_up(asterisk)
    target = f'kind = "pjsip"\nfile = "{asterisk.config_dir / "pjsip.conf"}"\n'
    config = ipwatch_config(tmp_path, asterisk, target, apply="restart", drain="1s")
    status, result, stderr = apply(tmp_path, config)
    assert status == 0, stderr
    assert "waiting for 1 call until" in stderr
    assert result["asterisk"] == {"action": "restart", "verified": True}
    assert asterisk.active_calls() == 0
    assert asterisk.transport("transport-udp-nat")["external_media_address"] == NEW_ADDRESS


TEMPLATED = """\
[nat-template](!)
type = transport
local_net = 127.0.0.1/32
local_net = ::1/128
external_media_address = {old4}
external_signaling_address = {old4}

[transport-v4](nat-template)
protocol = udp
bind = 127.0.0.1:{port4}

[transport-v6]
type = transport
protocol = udp
bind = [::1]:{port6}
local_net = ::1/128
external_media_address = {old6}
external_signaling_address = {old6}
"""


@pytest.mark.parametrize("version", VERSIONS)
def test_templates_includes_and_ipv6_transports(
    version: str, tmp_path: Path, real_asterisk_factory: RealFactory, sip_probe: SipProbe
) -> None:
    if not ipv6_loopback_available():
        missing("IPv6 loopback (::1) is not available")
    asterisk = real_asterisk_factory(version)
    port6 = free_port(host="::1")
    asterisk.write(
        "pjsip.transports.conf",
        TEMPLATED.format(
            old4=OLD_ADDRESS, old6="2001:db8::5", port4=asterisk.sip_port, port6=port6
        ),
    )
    peer = pjsip_probe_peer(sip_probe.uri, f"{sip_probe.host}:{sip_probe.port}")
    asterisk.write(
        "pjsip.conf",
        "#include pjsip.transports.conf\n" + peer.replace("transport-udp-nat", "transport-v4"),
    )
    asterisk.start()
    sip_probe.wait_for("REGISTER", OLD_ADDRESS)
    target = f'kind = "pjsip"\nfile = "{asterisk.config_dir / "pjsip.conf"}"\n'
    config = ipwatch_config(tmp_path, asterisk, target)
    text = config.read_text().replace(f'"{NEW_ADDRESS}"', f'"{NEW_ADDRESS} 2001:db8::7"')
    config.write_text('families = ["ipv4", "ipv6"]\n' + text)
    status, result, stderr = apply(tmp_path, config)
    assert status == 0, stderr
    assert result["asterisk"] == {"action": "reload", "verified": True}
    template = [
        edit for t in result["targets"] for edit in t["edits"] if edit["section"] == "nat-template"
    ]
    assert template and all(edit["affects"] == ["transport-v4"] for edit in template)
    assert asterisk.transport("transport-v4")["external_media_address"] == NEW_ADDRESS
    assert asterisk.transport("transport-v6")["external_media_address"] == "2001:db8::7"
    sip_probe.wait_for("REGISTER", NEW_ADDRESS)
