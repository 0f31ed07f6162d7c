"""`ipwatch doctor` asks the lab's router (miniupnpd) which SIP ports it forwards: a mapping to
the PBX, and a port with none, as doctor reports them from inside the LAN namespace."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.lab.conftest import OpenLab
from tests.lab.lab import LAB_NETWORKS, LAN_HOST, PUSH_ADDRESS, PUSH_NETWORKS, ROUTER_LAN, UPNP_PORT

pytestmark = pytest.mark.integration

URL = f"http://{ROUTER_LAN}:{UPNP_PORT}/rootDesc.xml"


def test_doctor_reports_the_routers_upnp_mappings_of_the_sip_ports(
    open_lab: OpenLab, tmp_path: Path
) -> None:
    # miniupnpd forwards nothing for a reserved WAN address, nor when its STUN test (which the
    # lab's coturn, without RFC 5780, fails) says it is behind NAT: a WAN outside both, no STUN.
    lab = open_lab(public_address=PUSH_ADDRESS)
    lab.start_miniupnpd(stun=False)
    added = lab.run(
        "lan",
        [
            sys.executable,
            "-c",
            "import miniupnpc\n"
            "u = miniupnpc.UPnP()\n"
            f"u.selectigd({URL!r})\n"
            f"u.addportmapping(5060, 'UDP', {LAN_HOST!r}, 5060, 'pbx sip', '')\n",
        ],
    )
    assert added.returncode == 0, added.stderr
    pjsip = tmp_path / "pjsip.conf"
    pjsip.write_text(
        "".join(
            f"[transport-{protocol}]\ntype = transport\nprotocol = {protocol}\n"
            f"bind = 0.0.0.0:{port}\nexternal_media_address = {PUSH_ADDRESS}\n"
            f"external_signaling_address = {PUSH_ADDRESS}\nlocal_net = 192.0.2.0/24\n\n"
            for protocol, port in (("udp", 5060), ("tcp", 5062))
        )
    )
    config = tmp_path / "ipwatch.toml"
    config.write_text(
        f"accept = {json.dumps(LAB_NETWORKS + PUSH_NETWORKS)}\n"
        f'[[source]]\nkind = "upnp"\nurl = "{URL}"\ntimeout = "2s"\n'
        f'[[target]]\nkind = "pjsip"\nfile = "{pjsip}"\n[asterisk]\ncontrol = "none"\n'
    )
    config.chmod(0o600)
    done = lab.ipwatch("lan", "doctor", "--json", config=config, state_dir=tmp_path / "s")
    assert done.returncode == 0, done.stderr
    found = {
        f["object"]: f
        for f in json.loads(done.stdout)["findings"]
        if f["code"] == "sip-port-mapping"
    }
    assert set(found) == {"router UDP 5060", "router TCP 5062"}
    assert found["router UDP 5060"]["message"] == (
        f"the router forwards UDP 5060 to this host ({LAN_HOST}:5060, UPnP mapping 'pbx sip')"
    )
    assert found["router TCP 5062"]["message"].startswith(
        "the router has no UPnP mapping for TCP 5062"
    )
    assert found["router TCP 5062"]["fix"] == f"forward TCP 5062 on the router to {LAN_HOST}"
