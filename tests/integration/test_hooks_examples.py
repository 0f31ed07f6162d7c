"""The example hooks in hooks/, each run by the real `ipwatch hooks test EVENT`.

Programs that would reach outside the test (sendmail, ssh, systemctl) are replaced by recording
stubs first on PATH, which the runner passes to hooks; curl and nft are the real ones, against
the loopback HTTP peer and inside a network namespace of the test's own.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.peers.http import HttpPeer
from tests.support import free_port, missing, need, run_ipwatch

EXAMPLES = Path(__file__).resolve().parents[2] / "hooks"
OLD, NEW = "203.0.113.5", "203.0.113.7"  # what `ipwatch hooks test` says


class Stubs:
    """Recording stand-ins for programs: each call is one JSON line (argv, stdin) in a log."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir()

    def add(self, program: str, exit_status: int = 0) -> None:
        path = self.directory / program
        log = self.directory / f"{program}.calls"
        path.write_text(
            f"#!{sys.executable}\n"
            "import json, sys\n"
            "stdin = sys.stdin.read() if sys.stdin else ''\n"
            f"with open({str(log)!r}, 'a') as log:\n"
            "    log.write(json.dumps({'argv': sys.argv[1:], 'stdin': stdin}) + '\\n')\n"
            f"sys.exit({exit_status})\n"
        )
        path.chmod(0o755)

    def calls(self, program: str) -> list[dict[str, object]]:
        log = self.directory / f"{program}.calls"
        if not log.exists():
            return []
        return [json.loads(line) for line in log.read_text().splitlines()]


@pytest.fixture
def stubs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Stubs:
    found = Stubs(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{found.directory}{os.pathsep}{os.environ['PATH']}")
    return found


@pytest.fixture
def hooks_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "hooks.d"
    directory.mkdir(mode=0o755)
    return directory


@pytest.fixture
def config(tmp_path: Path, hooks_dir: Path) -> Path:
    path = tmp_path / "ipwatch.toml"
    path.write_text(
        f'[hooks]\ndir = "{hooks_dir}"\ntimeout = "20s"\n\n'
        '[[source]]\nkind = "stun"\nservers = ["127.0.0.1:3478"]\n'
    )
    return path


def install(hooks_dir: Path, example: str, **settings: str) -> Path:
    """Copy hooks/EXAMPLE as an admin would, editing the NAME= lines of its settings block."""
    text = (EXAMPLES / example).read_text()
    for name, value in settings.items():
        text, count = re.subn(rf"(?m)^{name}=.*$", f'{name}="{value}"', text, count=1)
        assert count == 1, f"hooks/{example} has no {name}= setting"
    path = hooks_dir / example
    path.write_text(text)
    path.chmod(0o755)
    return path


def hooks_test(config: Path, event: str) -> subprocess.CompletedProcess[str]:
    return run_ipwatch("hooks", "test", event, config=config)


def assert_status(finished: subprocess.CompletedProcess[str], hook: str, status: str) -> None:
    assert finished.stdout.startswith(f"{hook}: {status}"), finished.stdout + finished.stderr
    assert finished.returncode == (0 if status == "ok" else 1)


# --- mail -----------------------------------------------------------------------------------------


def test_mail_sends_old_and_new_address(stubs: Stubs, hooks_dir: Path, config: Path) -> None:
    stubs.add("sendmail")
    install(hooks_dir, "mail", MAIL_TO="ops@example.org", MAIL_FROM="pbx@example.org")
    assert_status(hooks_test(config, "change"), "mail", "ok")
    [call] = stubs.calls("sendmail")
    assert call["argv"] == ["-t", "-oi"]
    message = str(call["stdin"])
    headers, _, body = message.partition("\n\n")
    host = os.uname().nodename
    assert headers.splitlines() == [
        "To: ops@example.org",
        "From: pbx@example.org",
        f"Subject: ipwatch on {host}: ipv4 public address {OLD} -> {NEW}",
        "Auto-Submitted: auto-generated",
        "Content-Type: text/plain; charset=utf-8",
    ]
    assert f"Old:       {OLD}\nNew:       {NEW}\nSources:   test={NEW}\n" in body
    assert f"Config:    {config}\n" in body


def test_mail_on_error_and_not_on_other_events(stubs: Stubs, hooks_dir: Path, config: Path) -> None:
    stubs.add("sendmail")
    install(hooks_dir, "mail")
    for event in ("degraded", "recovered"):
        assert_status(hooks_test(config, event), "mail", "ok")
    assert stubs.calls("sendmail") == []
    assert_status(hooks_test(config, "error"), "mail", "ok")
    [call] = stubs.calls("sendmail")
    message = str(call["stdin"])
    assert message.startswith("To: root\nSubject: ipwatch on ")
    assert f"applying {NEW} (ipv4) failed, files rolled back" in message
    assert "Error:     synthetic error from `ipwatch hooks test`" in message


def test_mail_fails_when_sendmail_does(stubs: Stubs, hooks_dir: Path, config: Path) -> None:
    stubs.add("sendmail", exit_status=69)
    install(hooks_dir, "mail")
    assert_status(hooks_test(config, "applied"), "mail", "failed, exit 69")


# --- webhook --------------------------------------------------------------------------------------


def test_webhook_posts_the_event_json(hooks_dir: Path, config: Path, http_peer: HttpPeer) -> None:
    need("curl", "curl")
    url = http_peer.answer("/ipwatch", status=204)
    headers = hooks_dir.parent / "webhook.headers"
    headers.write_text("Authorization: Bearer s3cret\n")
    install(hooks_dir, "webhook", URL=url, HEADER_FILE=str(headers))
    assert_status(hooks_test(config, "change"), "webhook", "ok")
    [request] = http_peer.requests_to("/ipwatch")
    event = json.loads(request.body)
    assert event | {"time": None} == {
        "event": "change",
        "family": "ipv4",
        "old_address": OLD,
        "new_address": NEW,
        "ipv4": {"old": OLD, "new": NEW},
        "ipv6": {"old": None, "new": None},
        "sources": [{"name": "test", "address": NEW}],
        "error": None,
        "time": None,
    }
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["X-Ipwatch-Event"] == "change"
    assert request.headers["Authorization"] == "Bearer s3cret"


def test_webhook_events_http_errors_and_unreachable_servers(
    hooks_dir: Path, config: Path, http_peer: HttpPeer
) -> None:
    need("curl", "curl")
    url = http_peer.answer("/broken", status=500)
    install(hooks_dir, "webhook", URL=url, EVENTS="change error")
    assert_status(hooks_test(config, "applied"), "webhook", "ok")
    assert http_peer.requests_to("/broken") == []
    failed = hooks_test(config, "error")
    assert_status(failed, "webhook", "failed, exit 22")
    assert "The requested URL returned error: 500" in failed.stdout
    assert len(http_peer.requests_to("/broken")) == 1

    closed = f"http://127.0.0.1:{free_port(socket.SOCK_STREAM)}/ipwatch"
    install(hooks_dir, "webhook", URL=closed)
    assert_status(hooks_test(config, "change"), "webhook", "tempfail, exit 75")


# --- nftables-set ---------------------------------------------------------------------------------


@pytest.fixture
def netns() -> Iterator[str]:
    """A network namespace of the test's own, so that nft changes nothing outside it."""
    ip = need("ip", "iproute2")
    name = f"ipwatch-hooks-{uuid.uuid4().hex[:8]}"
    created = subprocess.run([ip, "netns", "add", name], capture_output=True, text=True)
    if created.returncode != 0:
        missing(f"cannot create a network namespace ({created.stderr.strip()}); run as root")
    try:
        yield name
    finally:
        subprocess.run([ip, "netns", "del", name], check=True)


def nft_in(netns: str, *args: str, stdin: str | None = None) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", netns, need("nft", "nftables"), *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def set_elements(netns: str, name: str) -> list[str]:
    listing = json.loads(nft_in(netns, "-j", "list", "set", "inet", "pbx", name))
    [found] = [item["set"] for item in listing["nftables"] if "set" in item]
    return list(found.get("elem", []))


def test_nftables_set_holds_exactly_the_new_address(
    hooks_dir: Path, config: Path, netns: str
) -> None:
    nft_in(
        netns,
        "-f",
        "-",
        stdin="table inet pbx {\n"
        "  set public4 { type ipv4_addr; elements = { 198.51.100.1, 198.51.100.2 }; }\n"
        "  set public6 { type ipv6_addr; elements = { 2001:db8::1 }; }\n"
        "}\n",
    )
    install(hooks_dir, "nftables-set", TABLE="inet pbx", SET4="public4", SET6="public6")
    inside = ["ip", "netns", "exec", netns]

    unchanged = run_ipwatch("hooks", "test", "applied", config=config, wrapper=inside)
    assert_status(unchanged, "nftables-set", "ok")
    assert set_elements(netns, "public4") == ["198.51.100.1", "198.51.100.2"]

    assert_status(
        run_ipwatch("hooks", "test", "change", config=config, wrapper=inside), "nftables-set", "ok"
    )
    assert set_elements(netns, "public4") == [NEW]
    assert set_elements(netns, "public6") == ["2001:db8::1"]

    install(hooks_dir, "nftables-set", TABLE="inet pbx", SET4="absent")
    failed = run_ipwatch("hooks", "test", "change", config=config, wrapper=inside)
    assert_status(failed, "nftables-set", "failed, exit 1")
    assert "No such file or directory" in failed.stdout
    assert set_elements(netns, "public4") == [NEW]


# --- mikrotik and openwrt -------------------------------------------------------------------------


def test_mikrotik_updates_address_list_and_nat(stubs: Stubs, hooks_dir: Path, config: Path) -> None:
    stubs.add("ssh")
    install(hooks_dir, "mikrotik", ROUTER="ipwatch@192.0.2.1")
    assert_status(hooks_test(config, "applied"), "mikrotik", "ok")
    assert stubs.calls("ssh") == []
    assert_status(hooks_test(config, "change"), "mikrotik", "ok")
    [call] = stubs.calls("ssh")
    # -n: ssh must not forward the event JSON, which is on its stdin, to the router
    assert call["argv"] == [
        "-n",
        "-o",
        "BatchMode=yes",
        "-o",
        "ConnectTimeout=10",
        "ipwatch@192.0.2.1",
        '/ip firewall address-list remove [find where list="ipwatch-public"];'
        f' /ip firewall address-list add list="ipwatch-public" address={NEW} comment=ipwatch;'
        ' /ip firewall nat set [find where comment="ipwatch" and action=dst-nat]'
        f" dst-address={NEW};"
        ' /ip firewall nat set [find where comment="ipwatch" and action=src-nat]'
        f" to-addresses={NEW};",
    ]


def test_an_unreachable_router_is_a_temporary_failure(
    stubs: Stubs, hooks_dir: Path, config: Path
) -> None:
    stubs.add("ssh", exit_status=255)
    install(hooks_dir, "mikrotik", NAT_COMMENT="")
    install(hooks_dir, "openwrt")
    finished = hooks_test(config, "change")
    assert finished.returncode == 1
    lines = finished.stdout.splitlines()
    assert lines[0].startswith("mikrotik: tempfail, exit 75")
    assert lines[1].startswith("openwrt: tempfail, exit 75")
    assert "remove [find where list=" in str(stubs.calls("ssh")[0]["argv"])
    assert "nat set" not in str(stubs.calls("ssh")[0]["argv"])


def test_openwrt_sets_uci_options_commits_and_reloads(
    stubs: Stubs, hooks_dir: Path, config: Path
) -> None:
    stubs.add("ssh")
    install(
        hooks_dir,
        "openwrt",
        ROUTER="root@192.0.2.1",
        OPTIONS4="firewall.pbx_sip.src_dip firewall.pbx_fwd.dest_ip network.pbx.ipaddr",
    )
    assert_status(hooks_test(config, "error"), "openwrt", "ok")
    assert stubs.calls("ssh") == []
    assert_status(hooks_test(config, "change"), "openwrt", "ok")
    [call] = stubs.calls("ssh")
    argv = list(call["argv"])  # type: ignore[call-overload]
    assert argv[:6] == ["-n", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "root@192.0.2.1"]
    assert argv[6] == (
        f"uci set firewall.pbx_sip.src_dip='{NEW}' && "
        f"uci set firewall.pbx_fwd.dest_ip='{NEW}' && "
        f"uci set network.pbx.ipaddr='{NEW}' && "
        "uci commit firewall && uci commit network && /etc/init.d/firewall reload"
    )


# --- coturn ---------------------------------------------------------------------------------------

TURNSERVER_CONF = f"""# coturn
listening-port=3478
external-ip={OLD}/192.168.1.10
external-ip=2001:db8::5
realm=pbx.example.org
"""


def test_coturn_rewrites_external_ip_and_restarts(
    stubs: Stubs, hooks_dir: Path, config: Path
) -> None:
    stubs.add("systemctl")
    conf = hooks_dir.parent / "turnserver.conf"
    conf.write_text(TURNSERVER_CONF)
    conf.chmod(0o640)
    install(hooks_dir, "coturn", CONF=str(conf))

    assert_status(hooks_test(config, "change"), "coturn", "ok")
    assert conf.read_text() == TURNSERVER_CONF and stubs.calls("systemctl") == []

    before = conf.stat().st_ino
    assert_status(hooks_test(config, "applied"), "coturn", "ok")
    assert conf.read_text() == TURNSERVER_CONF.replace(f"{OLD}/", f"{NEW}/")
    assert conf.stat().st_mode & 0o777 == 0o640 and conf.stat().st_ino != before
    assert [call["argv"] for call in stubs.calls("systemctl")] == [["restart", "coturn"]]
    assert sorted(p.name for p in conf.parent.iterdir() if p.name.startswith("turnserver")) == [
        "turnserver.conf"
    ]

    assert_status(hooks_test(config, "applied"), "coturn", "ok")
    assert len(stubs.calls("systemctl")) == 1  # unchanged file: no restart


def test_coturn_adds_a_missing_external_ip(stubs: Stubs, hooks_dir: Path, config: Path) -> None:
    stubs.add("systemctl", exit_status=5)
    conf = hooks_dir.parent / "turnserver.conf"
    conf.write_text("listening-port=3478\n#external-ip=198.51.100.1\n")
    install(hooks_dir, "coturn", CONF=str(conf), SERVICE="coturn-pbx")
    assert_status(hooks_test(config, "applied"), "coturn", "failed, exit 5")
    assert (
        conf.read_text() == f"listening-port=3478\n#external-ip=198.51.100.1\nexternal-ip={NEW}\n"
    )
    assert [call["argv"] for call in stubs.calls("systemctl")] == [["restart", "coturn-pbx"]]
