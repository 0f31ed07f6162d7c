"""Security properties through the real CLI and real peers: secrets planted everywhere never come
out, files others could change are refused, AMI stays on loopback, and text from the outside never
reaches an Asterisk config file as anything but a plain IP address."""

from __future__ import annotations

import base64
import grp
import ipaddress
import json
import os
import pwd
import re
import secrets
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ipwatch import config as config_file
from ipwatch.addresses import FAMILIES, Family, IPAddress, check_answer
from ipwatch.asterisk.conf import load_tree
from ipwatch.asterisk.targets import plan_target
from ipwatch.config import TargetConfig
from tests.peers.bind9 import Bind9
from tests.peers.ddns_http import DdnsHttp
from tests.peers.http import HttpPeer
from tests.peers.stand_in import NAT_TRANSPORT as PJSIP
from tests.peers.stand_in import NEW_ADDRESS as NEW
from tests.peers.stand_in import OLD_ADDRESS as OLD
from tests.peers.stand_in import AmiUser, StandInAsterisk
from tests.support import run_ipwatch

HOOK = '#!/bin/sh\nenv >"{dump}/env.$1"\ncat >"{dump}/stdin.$1"\n'
Factory = Callable[..., StandInAsterisk]


def planted(label: str) -> str:
    """A secret no output could contain by chance."""
    return f"Zq7{label}{secrets.token_hex(8)}"


def secret_file(directory: Path, name: str, value: str, mode: int = 0o600) -> Path:
    path = directory / name
    path.write_text(value + "\n")
    path.chmod(mode)
    return path


def everything_written(*directories: Path) -> str:
    """Every file under `directories` (state, backups, hook dumps), as text."""
    texts = []
    for directory in directories:
        for path in sorted(directory.rglob("*")):
            if path.is_file():
                texts.append(f"{path}: {path.read_bytes().decode('utf-8', 'replace')}")
    return "\n".join(texts)


@pytest.fixture
def no_credentials(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    yield


# --- secrets --------------------------------------------------------------------------------


@pytest.mark.parametrize("right", [True, False], ids=["right-secrets", "wrong-secrets"])
@pytest.mark.usefixtures("no_credentials")
def test_planted_secrets_appear_in_no_output_file_or_hook(
    right: bool,
    tmp_path: Path,
    stand_in_factory: Factory,
    ddns_http: DdnsHttp,
    http_peer: HttpPeer,
    bind9: Bind9,
) -> None:
    ami = planted("ami")
    server = stand_in_factory(
        files={"pjsip.conf": PJSIP}, users={"ipwatch": AmiUser(ami)}, failed_login_delay=0.05
    )
    url_user, url_password = planted("user"), planted("urlpw")
    given = {
        "ami": ami if right else planted("amiwrong"),
        "password": ddns_http.dyndns2.password if right else planted("dynwrong"),
        "cloudflare": ddns_http.cloudflare.token if right else planted("cfwrong"),
        "duckdns": ddns_http.duckdns.token if right else planted("duckwrong"),
        "tsig": bind9.tsig_secret if right else base64.b64encode(secrets.token_bytes(32)).decode(),
    }
    files = {name: secret_file(tmp_path, name, value) for name, value in given.items()}
    hooks, dump, state = tmp_path / "hooks.d", tmp_path / "dump", tmp_path / "state"
    hooks.mkdir()
    dump.mkdir()
    (hooks / "10-dump").write_text(HOOK.format(dump=dump))
    (hooks / "10-dump").chmod(0o755)
    http_peer.answer("/ip", f"{NEW}\n")
    url = http_peer.url("/ip").replace("//", f"//{url_user}:{url_password}@", 1)
    config = tmp_path / "ipwatch.toml"
    config.write_text(
        f'confirm = 1\naccept = ["198.51.100.0/24"]\n'
        f'[[source]]\nkind = "http"\nurl = "{url}"\n'
        f'[[source]]\nkind = "command"\nargv = ["echo", "{NEW}"]\n'
        f'[[target]]\nkind = "pjsip"\nfile = "{server.config_dir / "pjsip.conf"}"\n'
        f'[hooks]\ndir = "{hooks}"\n'
        f'[asterisk]\ndrain = "1s"\nconsole_socket = "{server.console_path}"\n'
        f'ami = {{ host = "127.0.0.1", port = {server.ami_port}, username = "ipwatch",'
        f' secret_file = "{files["ami"]}" }}\n'
        f'[[ddns]]\nkind = "dyndns2"\nurl = "{ddns_http.url("/nic/update")}"\n'
        f'hostname = "pbx.dyn.test"\nusername = "{ddns_http.dyndns2.username}"\n'
        f'password_file = "{files["password"]}"\n'
        f'[[ddns]]\nkind = "cloudflare"\napi_url = "{ddns_http.url("/client/v4")}"\n'
        f'zone = "example.test"\nrecord = "pbx.example.test"\n'
        f'token_file = "{files["cloudflare"]}"\n'
        f'[[ddns]]\nkind = "duckdns"\nurl = "{ddns_http.url("/update")}"\ndomains = ["mypbx"]\n'
        f'token_file = "{files["duckdns"]}"\n'
        f'[[ddns]]\nkind = "rfc2136"\nserver = "{bind9.host}:{bind9.port}"\nzone = "ddns.test"\n'
        f'hostname = "t{secrets.token_hex(5)}.ddns.test"\ntsig_name = "{bind9.tsig_name}"\n'
        f'tsig_algorithm = "{bind9.tsig_algorithm}"\ntsig_secret_file = "{files["tsig"]}"\n'
    )
    applied = run_ipwatch("-v", "check", "--apply", "--json", config=config, state_dir=state)
    runs = [applied] + [
        run_ipwatch(*command, config=config, state_dir=state)
        for command in (
            ("-v", "sources", "--json"),
            ("-v", "plan", "--json"),
            ("status",),
            ("status", "--json"),
            ("-v", "config", "check"),
            ("-v", "hooks", "test", "error"),
        )
    ]
    shown = "\n".join(run.stdout + run.stderr for run in runs) + everything_written(state, dump)
    for name, value in {**given, "url user": url_user, "url password": url_password}.items():
        assert value not in shown, f"the {name} secret was shown"
    for secret in (ami, ddns_http.dyndns2.password, ddns_http.cloudflare.token, bind9.tsig_secret):
        assert secret not in shown
    assert (dump / "env.change").is_file() and (dump / "stdin.error").is_file()  # hooks ran
    assert ddns_http.requests_to("/nic/update") and ddns_http.requests_to("/update")
    assert ddns_http.requests_to("/client/v4/") and http_peer.requests_to("/ip")
    if right:
        assert applied.returncode == 0, applied.stderr
        assert ddns_http.duckdns.domains["mypbx"]["ipv4"] == NEW
    else:
        assert applied.returncode == 3 and "rejected the username or secret" in applied.stderr
        assert "check tsig_secret_file" in applied.stderr  # the wrong key was tried and named
    assert stat.S_IMODE((state / "state.json").stat().st_mode) == 0o640
    backups = state / "backups"
    if not right:  # the refused login was found before anything was written
        assert not backups.exists()
        return
    assert stat.S_IMODE(backups.stat().st_mode) == 0o700
    copies = [path for path in backups.rglob("*") if path.is_file()]
    assert copies and all(stat.S_IMODE(path.stat().st_mode) == 0o600 for path in copies)


# --- secret files and systemd credentials ---------------------------------------------------


def ami_config(tmp_path: Path, server: StandInAsterisk, secret_key: str = "") -> Path:
    config = tmp_path / "ipwatch.toml"
    config.write_text(
        f'confirm = 1\naccept = ["198.51.100.0/24"]\n'
        f'[[source]]\nkind = "command"\nargv = ["echo", "{NEW}"]\n'
        f'[[target]]\nkind = "pjsip"\nfile = "{server.config_dir / "pjsip.conf"}"\n'
        f'[hooks]\ndir = "{tmp_path / "no-hooks"}"\n'
        f'[asterisk]\ndrain = "1s"\n'
        f'ami = {{ host = "127.0.0.1", port = {server.ami_port}, username = "ipwatch"'
        f"{secret_key} }}\n"
    )
    return config


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660])
@pytest.mark.usefixtures("no_credentials")
def test_secret_files_others_can_read_are_refused_when_the_config_loads(
    mode: int, tmp_path: Path, ddns_http: DdnsHttp
) -> None:
    ami = secret_file(tmp_path, "ami.secret", planted("ami"), mode)
    token = secret_file(tmp_path, "duck.token", planted("duck"), mode)
    config = tmp_path / "ipwatch.toml"
    config.write_text(
        '[[source]]\nkind = "command"\nargv = ["echo", "198.51.100.7"]\n'
        f'[asterisk]\nami = {{ secret_file = "{ami}" }}\n'
        f'[[ddns]]\nkind = "duckdns"\nurl = "{ddns_http.url("/update")}"\ndomains = ["mypbx"]\n'
        f'token_file = "{token}"\n'
    )
    for command in (("config", "check"), ("check",)):
        finished = run_ipwatch(*command, config=config, state_dir=tmp_path / "state")
        assert finished.returncode == 78
        assert finished.stderr.splitlines() == [
            f"ipwatch: {config}: asterisk.ami.secret_file: {ami} is readable by group or others;"
            f" run chmod 600 {ami}",
            f"ipwatch: {config}: ddns[0].token_file: {token} is readable by group or others;"
            f" run chmod 600 {token}",
        ]
    assert not ddns_http.requests_to("/update")


def test_systemd_credentials_stand_in_for_secret_files(
    tmp_path: Path,
    stand_in_factory: Factory,
    ddns_http: DdnsHttp,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ami = planted("ami")
    server = stand_in_factory(files={"pjsip.conf": PJSIP}, users={"ipwatch": AmiUser(ami)})
    credentials = tmp_path / "credentials"
    credentials.mkdir(mode=0o700)
    secret_file(credentials, "ami-secret", ami, 0o400)  # as systemd's LoadCredential= leaves it
    secret_file(credentials, "ddns-duck-token", ddns_http.duckdns.token, 0o400)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    config = ami_config(tmp_path, server)
    with config.open("a") as file:
        file.write(
            f'[[ddns]]\nkind = "duckdns"\nname = "duck"\nurl = "{ddns_http.url("/update")}"\n'
            'domains = ["mypbx"]\n'
        )
    finished = run_ipwatch("check", "--apply", config=config, state_dir=tmp_path / "state")
    assert finished.returncode == 0, finished.stderr
    assert f"external_media_address = {NEW}" in (server.config_dir / "pjsip.conf").read_text()
    assert ddns_http.duckdns.domains["mypbx"]["ipv4"] == NEW
    (credentials / "ami-secret").chmod(0o440)
    (server.config_dir / "pjsip.conf").write_text(PJSIP)
    refused = run_ipwatch("check", "--apply", config=config, state_dir=tmp_path / "state")
    where = credentials / "ami-secret"
    assert refused.returncode == 78
    assert f"{where}: readable by group or others; run chmod 600 {where}" in refused.stderr
    assert ami not in refused.stdout + refused.stderr


# --- the config file ------------------------------------------------------------------------


def plain_config(directory: Path) -> Path:
    config = directory / "ipwatch.toml"
    config.write_text('[[source]]\nkind = "command"\nargv = ["echo", "198.51.100.7"]\n')
    config.chmod(0o644)
    return config


def fix_by_root(config: Path) -> str:
    """The advice for an unsafe config file. Root checks it for the service, which runs as the
    shipped unit's User=asterisk: root:root 0640 would stop the service (exit 78, no restart)."""
    user, group = "asterisk", "asterisk"
    if os.geteuid() != 0:  # the user running ipwatch reads it
        user, group = pwd.getpwuid(os.geteuid()).pw_name, grp.getgrgid(os.getegid()).gr_name
    return (
        f"run chown root:{group} {config} && chmod 0640 {config} so that only root can change it"
        f" and {user}, the user ipwatch runs as, can read it"
    )


@pytest.mark.parametrize("mode", [0o664, 0o646, 0o666, 0o620])
def test_a_config_file_others_can_write_is_refused(mode: int, tmp_path: Path) -> None:
    config = plain_config(tmp_path)
    config.chmod(mode)
    for command in (("config", "check"), ("check",), ("run",)):
        finished = run_ipwatch(*command, config=config, state_dir=tmp_path / "state")
        assert (finished.returncode, finished.stderr) == (
            78,
            f"ipwatch: {config}: writable by group or others; {fix_by_root(config)}\n",
        )


def test_a_config_file_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("giving a file to another user needs root")
    config = plain_config(tmp_path)
    os.chown(config, 65534, 0)
    finished = run_ipwatch("config", "check", config=config)
    assert (finished.returncode, finished.stderr) == (
        78,
        f"ipwatch: {config}: owned by uid 65534, not root or ipwatch's user;"
        f" {fix_by_root(config)}\n",
    )


def test_a_root_owned_config_may_be_checked_by_another_user() -> None:
    """`config check` by an admin's own account, on the usual root-owned 0644 file."""
    if os.geteuid() != 0:
        pytest.skip("switching to another user needs root")
    directory = Path(tempfile.mkdtemp(prefix="ipwatch-config-"))
    try:
        directory.chmod(0o755)
        config = plain_config(directory)
        os.seteuid(65534)
        try:
            loaded = config_file.load(str(config))
        finally:
            os.seteuid(0)
        assert loaded.sources[0].kind == "command"
    finally:
        (directory / "ipwatch.toml").unlink()
        directory.rmdir()


# --- AMI stays on loopback ------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.53", "::1", "localhost"])
def test_ami_on_loopback_is_accepted(host: str, tmp_path: Path) -> None:
    config = plain_config(tmp_path)
    with config.open("a") as file:
        file.write(f'[asterisk]\nami = {{ host = "{host}" }}\n')
    finished = run_ipwatch("config", "check", config=config)
    assert finished.returncode == 0, finished.stderr
    assert "allow_remote_ami = false" in finished.stdout


@pytest.mark.parametrize("host", ["192.0.2.10", "2001:db8::5", "pbx.example.com", "0.0.0.0"])
def test_ami_elsewhere_needs_allow_remote_ami(host: str, tmp_path: Path) -> None:
    config = plain_config(tmp_path)
    original = config.read_text()
    config.write_text(original + f'[asterisk]\nami = {{ host = "{host}" }}\n')
    refused = run_ipwatch("config", "check", config=config)
    assert (refused.returncode, refused.stderr) == (
        78,
        f"ipwatch: {config}: asterisk.ami.host: {host} is not a loopback address and an AMI"
        " session is clear text (and its owner cannot be checked); use 127.0.0.1 (tunnel a"
        " remote Asterisk's AMI over SSH or"
        " TLS), or set allow_remote_ami = true in [asterisk] to accept the risk\n",
    )
    for table in (f'allow_remote_ami = true\nami = {{ host = "{host}" }}', 'control = "console"'):
        config.write_text(original + f"[asterisk]\n{table}\n")
        accepted = run_ipwatch("config", "check", config=config)
        assert accepted.returncode == 0, accepted.stderr


# --- addresses from the outside -------------------------------------------------------------

HOSTILE = [
    "198.51.100.7\n#include /etc/shadow",
    "198.51.100.7;x",
    "198.51.100.7 #exec /bin/sh",
    "198.51.100.7\r\nexternal_signaling_address = 192.0.2.66",
    "2001:4860::8888%eth0",
    "2001:4860::8888%x;y",
    "2001:4860::8888%x\n#include /etc/shadow",
    "fe80::1%eth0",
    "[2001:4860::8888]",
    "",
]


@pytest.mark.parametrize("answer", HOSTILE)
def test_hostile_raw_answers_are_rejected_with_a_reason(answer: str) -> None:
    """UPnP and dns-echo TXT answers are raw text: only a whole, plain address is taken."""
    family: Family = "ipv6" if ":" in answer.split("\n")[0] else "ipv4"
    address, reason = check_answer(answer, family)
    assert reason is not None and reason.startswith("not an IP address")
    assert address is None


def test_a_zone_index_is_named_in_the_reason() -> None:
    assert check_answer("2001:4860::8888%eth0", "ipv6") == (
        None,
        "not an IP address: '2001:4860::8888%eth0' (a zone index names an interface of one host)",
    )


def test_dns_echo_txt_strings_with_a_zone_are_not_addresses() -> None:
    import dns.rrset

    from ipwatch.sources.dns_echo import _addresses_in

    rrset = dns.rrset.from_text(
        "o-o.myaddr.l.google.com.", 60, "IN", "TXT", '"2001:4860::8888%x;y"', '"2001:4860::8889"'
    )
    assert [str(address) for address in _addresses_in(rrset)] == ["2001:4860::8889"]


@pytest.mark.parametrize("answer", [text for text in HOSTILE if text.startswith("198.")])
def test_text_around_an_address_never_reaches_pjsip_conf(answer: str, tmp_path: Path) -> None:
    """`command` and `http` take the first address out of free text; only that goes in the file."""
    target = tmp_path / "pjsip.conf"
    target.write_text(PJSIP)
    printer = tmp_path / "print"
    printer.write_text(f"#!/bin/sh\nprintf '%s' {json.dumps(answer)}\n")
    printer.chmod(0o755)
    config = tmp_path / "ipwatch.toml"
    config.write_text(
        f'confirm = 1\naccept = ["198.51.100.0/24"]\n'
        f'[[source]]\nkind = "command"\nargv = ["{printer}"]\n'
        f'[[target]]\nkind = "pjsip"\nfile = "{target}"\n[asterisk]\ncontrol = "none"\n'
    )
    finished = run_ipwatch("check", "--apply", config=config, state_dir=tmp_path / "state")
    assert finished.returncode == 0, finished.stderr
    assert target.read_text() == PJSIP.replace(OLD, NEW)


@pytest.mark.parametrize(
    "address",
    ["198.51.100.7;x", "198.51.100.7\n#include x", " 198.51.100.7", "2001:4860::8888%x", "::1"],
)
def test_the_planner_refuses_anything_but_a_plain_address(address: str, tmp_path: Path) -> None:
    """Defence in depth: even an address that slipped past the sources is not written."""
    path = tmp_path / "pjsip.conf"
    path.write_text(PJSIP)
    target = TargetConfig("pjsip", str(path))
    with pytest.raises(ValueError, match="not a plain IP address"):
        plan_target(target, load_tree(path), {"ipv4": address})
    plan, _ = plan_target(target, load_tree(path), {"ipv4": NEW})  # the same file, a plain one
    assert {edit.new for edit in plan.edits} == {NEW}


@given(
    address=st.ip_addresses(),
    suffix=st.sampled_from(["", "%eth0", "%x;y", "%1\n#include x", "\n", ";", " #exec x"]),
    noise=st.text(max_size=8),
)
def test_whatever_an_answer_holds_an_accepted_one_is_a_plain_address(
    address: IPAddress, suffix: str, noise: str
) -> None:
    everything = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))
    for text in (f"{address}{suffix}{noise}", f"{noise}{address}{suffix}"):
        for family in FAMILIES:
            accepted, reason = check_answer(text, family, everything)
            if reason is None:
                assert accepted is not None and re.fullmatch(r"[0-9a-f:.]+", accepted)
                assert str(ipaddress.ip_address(accepted)) == accepted
