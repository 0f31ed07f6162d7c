"""Host-name configurations on a real Asterisk and a real BIND 9: PJSIP `external_*` = a name
(dnsmgr on and off) and chan_sip `externhost`. ipwatch updates the record (RFC 2136), waits until
the system resolver gives the new address, and makes Asterisk resolve again at once; without
that, Asterisk keeps the old address (dnsmgr refreshes every 300 s, no dnsmgr never).

Asterisk resolves through the system resolver, so it runs in a private mount namespace whose
/etc/resolv.conf names the test's BIND 9 (on port 53 of a loopback address of its own), and
ipwatch runs in the same namespace (nsenter) so that it sees what Asterisk sees.
"""

from __future__ import annotations

import json
import secrets
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.peers.bind9 import Bind9, running_bind9
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
)
from tests.peers.sip_probe import SipProbe
from tests.support import missing, need, run_ipwatch

pytestmark = pytest.mark.integration


def dns_address() -> str:
    """127.0.0.1 when its port 53 is free: a resolv.conf takes no port, and named listens only
    on addresses that an interface has (127.0.0.1 on lo), not on the rest of 127/8."""
    host = "127.0.0.1"
    try:
        for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
            with socket.socket(socket.AF_INET, kind) as probe:
                probe.bind((host, 53))
    except OSError:
        missing("port 53 on 127.0.0.1 is taken: the test's name server needs it")
    return host


@pytest.fixture(name="dns", scope="module")
def dns_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bind9]:
    with running_bind9(
        tmp_path_factory.mktemp("bind9-53"), port=53, ipv6=False, host=dns_address()
    ) as server:
        yield server


def update(server: Bind9, name: str, address: str) -> None:
    """Set `name`'s A record as a DDNS provider would."""
    import dns.name
    import dns.query
    import dns.tsig
    import dns.tsigkeyring
    import dns.update

    keys = {server.tsig_name: (server.tsig_algorithm, server.tsig_secret)}
    message = dns.update.UpdateMessage(
        server.ddns_zone,
        keyring=dns.tsigkeyring.from_text(keys),
        keyname=dns.name.from_text(server.tsig_name),
        keyalgorithm=dns.tsig.HMAC_SHA256,
    )
    message.replace(name.split(".")[0], 5, "A", address)
    dns.query.tcp(message, server.host, timeout=5, port=server.port)


@dataclass
class Lab:
    asterisk: RealAsterisk
    dns: Bind9
    probe: SipProbe
    name: str
    config: Path
    state_dir: Path

    def in_namespace(self) -> list[str]:
        """Run a command in Asterisk's mount namespace: its resolver is the test's BIND 9."""
        nsenter = need("nsenter", "util-linux")
        return [nsenter, f"--target={self.asterisk.pid}", "--mount", "--"]

    def ipwatch(self, *args: str) -> tuple[int, str, str]:
        done = run_ipwatch(
            *args, config=self.config, state_dir=self.state_dir, wrapper=self.in_namespace()
        )
        return done.returncode, done.stdout, done.stderr

    def qualify(self, tech: str) -> str:
        """Asterisk's next OPTIONS to the probe: the address in its Via."""
        self.probe.clear()
        self.asterisk.cli("pjsip qualify probe" if tech == "PJSIP" else "sip qualify peer probe")
        options = self.probe.wait_for("OPTIONS", "", timeout=10)
        return options.via.split()[1].rsplit(":", 1)[0]


def start(
    tmp_path: Path,
    factory: RealFactory,
    dns: Bind9,
    probe: SipProbe,
    version: str,
    *,
    chan_sip: bool = False,
    dnsmgr: bool = False,
) -> Lab:
    name = f"pbx-{secrets.token_hex(4)}.{dns.ddns_zone}"
    update(dns, name, OLD_ADDRESS)
    asterisk = factory(version)
    registrar = f"{probe.host}:{probe.port}"
    if chan_sip:
        asterisk.write(
            "sip.conf",
            f"[general]\nudpbindaddr = 127.0.0.1:{asterisk.sip_port}\nexternhost = {name}\n"
            "localnet = 127.0.0.1/255.255.255.255\ncontext = hold\n"
            f"\n[probe]\ntype = friend\nhost = {probe.host}\nport = {probe.port}\n"
            "context = hold\ndisallow = all\nallow = ulaw\n",
        )
        target = f'kind = "chan_sip"\nfile = "{asterisk.config_dir / "sip.conf"}"\n'
    else:
        asterisk.write(
            "pjsip.conf",
            nat_transport(asterisk, name) + pjsip_probe_peer(probe.uri, registrar),
        )
        target = f'kind = "pjsip"\nfile = "{asterisk.config_dir / "pjsip.conf"}"\n'
    if dnsmgr:
        asterisk.write("dnsmgr.conf", "[general]\nenable = yes\nrefreshinterval = 300\n")
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"nameserver {dns.host}\noptions timeout:1 attempts:2\n")
    unshare = need("unshare", "util-linux")
    need("mount", "mount")
    asterisk.start(
        wrapper=[
            unshare,
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            'mount --bind "$0" /etc/resolv.conf && exec "$@"',
            str(resolv),
        ]
    )
    secret = tmp_path / "tsig.secret"
    secret.write_text(dns.tsig_secret + "\n")
    secret.chmod(0o600)
    config = ipwatch_config(tmp_path, asterisk, target)
    config.write_text(
        config.read_text().replace("confirm = 1\n", 'confirm = 1\ndns_wait = "20s"\n')
        + f'[[ddns]]\nkind = "rfc2136"\nserver = "{dns.server}"\nzone = "{dns.ddns_zone}"\n'
        f'hostname = "{name}"\ntsig_name = "{dns.tsig_name}"\n'
        f'tsig_algorithm = "{dns.tsig_algorithm}"\ntsig_secret_file = "{secret}"\n'
    )
    return Lab(asterisk, dns, probe, name, config, tmp_path / "state")


@pytest.mark.parametrize("dnsmgr", [True, False], ids=["dnsmgr-on", "dnsmgr-off"])
def test_a_pjsip_host_name_is_updated_and_resolved_again_at_once(
    dnsmgr: bool,
    tmp_path: Path,
    real_asterisk_factory: RealFactory,
    dns: Bind9,
    sip_probe: SipProbe,
) -> None:
    lab = start(tmp_path, real_asterisk_factory, dns, sip_probe, VERSIONS[0], dnsmgr=dnsmgr)
    assert lab.qualify("PJSIP") == OLD_ADDRESS

    status, planned, _ = lab.ipwatch("plan")
    how = (
        f"`dnsmgr refresh {lab.name}`" if dnsmgr else "`module reload res_pjsip.so` (dnsmgr is off)"
    )
    assert f"uses {lab.name} for external_signaling_address; after the DNS update" in planned
    assert how in planned
    status, out, err = lab.ipwatch("check", "--apply", "--json")
    refreshed = time.monotonic()
    assert status == 0, err
    result = json.loads(out)
    assert result["names"] == {"problems": [], "waited": True}
    assert lab.asterisk.transport("transport-udp-nat")["external_signaling_address"] == lab.name
    assert lab.qualify("PJSIP") == NEW_ADDRESS
    delay = time.monotonic() - refreshed
    print(f"{lab.name}: new address on the wire {delay:.2f} s after ipwatch's refresh")
    assert delay < 1.0
    # After a reload PJSIP re-creates its registrations, which register after a random delay.
    sip_probe.wait_for("REGISTER", NEW_ADDRESS, timeout=15)
    assert lab.ipwatch("check")[0] == 0
    assert run_ipwatch("status", state_dir=lab.state_dir).returncode == 0

    # Without ipwatch: the record moves, Asterisk keeps what it resolved.
    update(dns, lab.name, "198.51.100.9")
    for _ in range(3):
        assert lab.qualify("PJSIP") == NEW_ADDRESS
    checked = lab.ipwatch("check")
    assert checked[0] == 1 and "resolves to 198.51.100.9, not 198.51.100.7" in checked[1]


def test_chan_sip_externhost_is_resolved_again_with_sip_reload(
    tmp_path: Path, real_asterisk_factory: RealFactory, dns: Bind9, sip_probe: SipProbe
) -> None:
    lab = start(tmp_path, real_asterisk_factory, dns, sip_probe, CHAN_SIP_VERSION, chan_sip=True)
    assert lab.asterisk.sip_settings()["Externaddr"].startswith(OLD_ADDRESS)
    status, out, err = lab.ipwatch("check", "--apply", "--json")
    refreshed = time.monotonic()
    assert status == 0, err
    assert json.loads(out)["asterisk"] == {"action": "reload", "verified": True}
    assert lab.asterisk.sip_settings()["Externhost"] == lab.name
    assert lab.asterisk.sip_settings()["Externaddr"].startswith(NEW_ADDRESS)
    assert lab.qualify("SIP") == NEW_ADDRESS
    print(
        f"chan_sip: new address on the wire {time.monotonic() - refreshed:.2f} s after sip reload"
    )


def test_a_name_that_does_not_move_is_waited_for_then_reported(
    tmp_path: Path, real_asterisk_factory: RealFactory, dns: Bind9, sip_probe: SipProbe
) -> None:
    lab = start(tmp_path, real_asterisk_factory, dns, sip_probe, VERSIONS[0])
    # A name no updater manages, and nobody updates it: ipwatch waits dns_wait, then says so.
    text = lab.config.read_text()
    lab.config.write_text(
        text[: text.index("[[ddns]]")].replace('dns_wait = "20s"', 'dns_wait = "1s"')
    )
    status, out, err = lab.ipwatch("check", "--apply", "--json")
    assert status == 3, err
    assert json.loads(out)["names"]["problems"] == [
        f"{lab.name} resolves to {OLD_ADDRESS}, not {NEW_ADDRESS}"
    ]
    assert lab.qualify("PJSIP") == OLD_ADDRESS  # nothing was refreshed onto the old record
