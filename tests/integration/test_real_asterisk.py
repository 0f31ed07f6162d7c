"""`check --apply` against a real Asterisk (22 and 20, built from ../shared/asterisk/): what it
puts on the wire (REGISTER and OPTIONS Via/Contact, an INVITE's SDP) before and after."""

from __future__ import annotations

import json
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
from tests.support import run_ipwatch

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
