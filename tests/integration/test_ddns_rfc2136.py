"""The rfc2136 updater against a real BIND 9 and a real Knot DNS, both primaries of ddns.test."""

from __future__ import annotations

import json
import logging
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ipwatch.addresses import Family
from ipwatch.config import UpdaterConfig, parse
from ipwatch.ddns import Outcome, UpdateError, rfc2136, run_updaters
from tests.support import free_port

pytestmark = pytest.mark.integration

STUN = {"kind": "stun", "servers": ["127.0.0.1:3478"]}


@dataclass(frozen=True)
class Primary:
    """A DNS server under test, as an rfc2136 updater sees it."""

    name: str
    host: str
    port: int
    key: str
    algorithm: str
    secret: str
    log: Callable[[], str]
    update_mark: str  # in the server's log once per UPDATE message it received

    def updates_received(self) -> int:
        return sum(self.update_mark in line for line in self.log().splitlines())

    @property
    def server(self) -> str:
        return f"{self.host}:{self.port}"

    def options(self, hostname: str, **changes: Any) -> rfc2136.Options:
        keys = {"tsig_name": self.key, "tsig_algorithm": self.algorithm} | changes
        return rfc2136.Options(self.server, "ddns.test", hostname, **keys)

    def update(self, hostname: str, addresses: dict[Family, str], secret: str | None = None,
               **changes: Any) -> Outcome:  # fmt: skip
        options = self.options(hostname, **changes)
        return rfc2136.update(options, addresses, 5.0, {"tsig_secret": secret or self.secret})

    def query(self, name: str, rdtype: str) -> set[str]:
        import dns.message
        import dns.query

        response = dns.query.tcp(dns.message.make_query(name, rdtype), self.host, 2, self.port)
        return {rdata.to_text() for rrset in response.answer for rdata in rrset}

    def serial(self) -> int:
        [soa] = self.query("ddns.test", "SOA")
        return int(soa.split()[2])


@pytest.fixture(params=["bind9", "knot"])
def primary(request: pytest.FixtureRequest) -> Iterator[Primary]:
    server = request.getfixturevalue(request.param)
    # BIND logs "updating zone ..." per change (and "update ... denied"); Knot "DDNS, processing".
    mark = "updat" if request.param == "bind9" else "DDNS, processing"
    yield Primary(
        request.param, server.host, server.port, server.tsig_name, server.tsig_algorithm,
        server.tsig_secret, server.log, mark,
    )  # fmt: skip


def fresh_name() -> str:
    return f"t{uuid.uuid4().hex[:10]}.ddns.test"


def test_update_creates_then_replaces_the_records(primary: Primary) -> None:
    name = fresh_name()
    before = primary.serial()
    outcome = primary.update(name, {"ipv4": "203.0.113.7", "ipv6": "2001:db8::7"})
    assert outcome == Outcome(True, f"{name} A 203.0.113.7 AAAA 2001:db8::7 updated")
    assert primary.query(name, "A") == {"203.0.113.7"}
    assert primary.query(name, "AAAA") == {"2001:db8::7"}
    assert primary.serial() > before
    assert primary.update(name, {"ipv4": "203.0.113.8"}).changed
    assert primary.query(name, "A") == {"203.0.113.8"}
    assert primary.query(name, "AAAA") == {"2001:db8::7"}  # a family not given stays


def test_already_right_sends_no_update(primary: Primary) -> None:
    name = fresh_name()
    primary.update(name, {"ipv4": "203.0.113.9"})
    serial, received = primary.serial(), primary.updates_received()
    assert received > 0  # the mark is right: the first update was seen
    outcome = primary.update(name, {"ipv4": "203.0.113.9"})
    assert outcome == Outcome(False, f"{name} A 203.0.113.9 already right")
    assert primary.updates_received() == received and primary.serial() == serial


def test_several_records_become_the_one_address(primary: Primary) -> None:
    name = "multi.ddns.test"
    assert len(primary.query(name, "A")) == 3
    assert primary.update(name, {"ipv4": "203.0.113.10"}).changed
    assert primary.query(name, "A") == {"203.0.113.10"}


def test_wrong_secret_is_named_but_never_shown(primary: Primary) -> None:
    import base64

    wrong = base64.b64encode(b"not the key, but 32 bytes long!!").decode()
    serial = primary.serial()
    with pytest.raises(UpdateError) as caught:
        primary.update(fresh_name(), {"ipv4": "203.0.113.11"}, secret=wrong)
    message = str(caught.value)
    assert message == (
        f"{primary.server} rejected the TSIG key {primary.key} (bad signature); check"
        " tsig_secret_file"
    )
    assert caught.value.permanent and wrong not in message and primary.secret not in message
    assert primary.serial() == serial


def test_unknown_key_name(primary: Primary) -> None:
    with pytest.raises(UpdateError, match=r"refused the TSIG key nobody \(hmac-.*\) as unknown"):
        primary.update(fresh_name(), {"ipv4": "203.0.113.12"}, tsig_name="nobody")


def test_bind9_refuses_a_zone_without_update_policy(bind9: Any) -> None:
    options = rfc2136.Options(bind9.server, "opendns.test", "myip.opendns.test", bind9.tsig_name)
    with pytest.raises(UpdateError) as caught:
        rfc2136.update(options, {"ipv4": "203.0.113.13"}, 5.0, {"tsig_secret": bind9.tsig_secret})
    assert str(caught.value).startswith(
        f"{bind9.server} answered REFUSED: not allowed to update opendns.test with the key"
    )
    assert caught.value.permanent


def test_knot_refuses_a_key_without_update_rights(knot: Any) -> None:
    options = rfc2136.Options(knot.server, "ddns.test", fresh_name(), knot.reader_name)
    with pytest.raises(UpdateError) as caught:
        rfc2136.update(options, {"ipv4": "203.0.113.14"}, 5.0, {"tsig_secret": knot.reader_secret})
    assert "refused the TSIG key reader (hmac-sha256) as unknown or not allowed for ddns.test" in (
        str(caught.value)
    )
    assert caught.value.permanent


def test_a_record_changed_between_read_and_update_is_not_overwritten(primary: Primary) -> None:
    name = fresh_name()
    primary.update(name, {"ipv4": "203.0.113.15"})
    options = primary.options(name)
    deadline = time.monotonic() + 5.0
    server = rfc2136._Server(options, rfc2136._keyring(options, primary.secret), deadline, 5.0)
    stale = {"A": rfc2136.read(server, "A")}
    primary.update(name, {"ipv4": "203.0.113.16"})  # someone else, in between
    with pytest.raises(UpdateError) as caught:
        rfc2136.send(server, rfc2136.build_update(server, stale, {"A": "203.0.113.17"}))
    assert str(caught.value) == (
        f"the records of {name} changed while ipwatch updated them (prerequisite failed:"
        " NXRRSET); the next attempt reads them again"
    )
    assert not caught.value.permanent
    assert primary.query(name, "A") == {"203.0.113.16"}


def test_an_alias_is_not_updated(primary: Primary) -> None:
    with pytest.raises(
        UpdateError, match=r"alias.ddns.test is an alias \(CNAME\) of pbx.ddns.test;"
    ):
        primary.update("alias.ddns.test", {"ipv4": "203.0.113.18"})


def test_no_server_and_a_silent_server_fail_within_the_timeout() -> None:
    port = free_port(socket.SOCK_STREAM)
    options = rfc2136.Options(f"127.0.0.1:{port}", "ddns.test", "pbx.ddns.test", "k")
    secrets = {"tsig_secret": "c2VjcmV0"}
    with pytest.raises(UpdateError, match="refused the connection; is a DNS server listening"):
        rfc2136.update(options, {"ipv4": "203.0.113.19"}, 1.0, secrets)
    with socket.socket() as silent:  # accepts connections (the backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        options = rfc2136.Options(address, "ddns.test", "pbx.ddns.test", "k")
        with pytest.raises(UpdateError, match=f"no answer from {address} within 300ms"):
            rfc2136.update(options, {"ipv4": "203.0.113.19"}, 0.3, secrets)


# --- through the runner, with the secret in a file ------------------------------------------------


def updater(primary: Primary, secret_file: Path, hostname: str) -> UpdaterConfig:
    table = {
        "kind": "rfc2136", "server": primary.server, "zone": "ddns.test", "hostname": hostname,
        "tsig_name": primary.key, "tsig_algorithm": primary.algorithm,
        "tsig_secret_file": str(secret_file),
    }  # fmt: skip
    [found] = parse({"source": [STUN], "ddns": [table]}).ddns
    return found


def test_runner_with_a_key_file_keeps_the_secret_out_of_logs_and_memory(
    primary: Primary, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="ipwatch")
    key_file = tmp_path / "ddns.key"  # as `tsig-keygen` prints it
    algorithm, secret = primary.algorithm, primary.secret
    key_file.write_text(
        f'key "{primary.key}" {{\n\talgorithm {algorithm};\n\tsecret "{secret}";\n}};\n'
    )
    key_file.chmod(0o600)
    name = fresh_name()
    config = updater(primary, key_file, name)
    results, memory = run_updaters([config], {"ipv4": "203.0.113.20"}, {}, now=1000.0)
    assert [(r.status, r.message) for r in results] == [
        ("updated", f"{name} A 203.0.113.20 updated")
    ]
    assert f"ddns rfc2136-1: {name} A 203.0.113.20 updated" in caplog.text
    serial = primary.serial()
    results, memory = run_updaters([config], {"ipv4": "203.0.113.20"}, memory, now=1060.0)
    assert results[0].status == "skipped"  # checked a minute ago
    received = primary.updates_received()
    results, memory = run_updaters([config], {"ipv4": "203.0.113.20"}, memory, now=1400.0)
    assert results[0].status == "unchanged" and primary.serial() == serial
    assert primary.updates_received() == received
    key_file.write_text(key_file.read_text().replace(primary.secret, "c2VjcmV0LXdyb25n"))
    results, memory = run_updaters([config], {"ipv4": "203.0.113.21"}, memory, now=1500.0)
    assert results[0].status == "blocked" and "check tsig_secret_file" in results[0].message
    visible = caplog.text + json.dumps(memory) + repr(results)
    assert primary.secret not in visible and "c2VjcmV0LXdyb25n" not in visible


def test_runner_refuses_a_secret_file_others_can_read(primary: Primary, tmp_path: Path) -> None:
    key_file = tmp_path / "ddns.key"
    key_file.write_text(primary.secret)
    key_file.chmod(0o644)
    config = updater(primary, key_file, fresh_name())
    results, memory = run_updaters([config], {"ipv4": "203.0.113.22"}, {}, now=0.0)
    assert (results[0].status, results[0].message) == (
        "failed",
        f"{key_file}: readable by group or others; run chmod 600 {key_file}",
    )
    key_file.chmod(0o600)  # the retry waits min_interval, then works
    assert run_updaters([config], {"ipv4": "203.0.113.22"}, memory, now=60.0)[0][0].status == (
        "skipped"
    )
    assert run_updaters([config], {"ipv4": "203.0.113.22"}, memory, now=300.0)[0][0].status == (
        "updated"
    )
