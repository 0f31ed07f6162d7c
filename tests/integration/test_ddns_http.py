"""The dyndns2, Cloudflare and DuckDNS updaters, and the runner's timing rules, against real HTTP
servers on loopback that behave as those providers document (tests/peers/ddns_http.py)."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ipwatch import __version__
from ipwatch.addresses import Family
from ipwatch.config import UpdaterConfig, parse
from ipwatch.ddns import UpdateResult, run_updaters
from tests.peers.ddns_http import DdnsHttp

pytestmark = pytest.mark.integration

STUN = {"kind": "stun", "servers": ["127.0.0.1:3478"]}
V4, V4_NEW, V6 = "203.0.113.7", "203.0.113.8", "2001:db8::7"
MINUTE = 60.0


class Runner:
    """One updater and the memory the caller would keep in its state file between calls."""

    def __init__(self, config: UpdaterConfig, secret: str) -> None:
        self.config = config
        self.secret = secret
        self.memory: dict[str, Any] = {}
        self.results: list[UpdateResult] = []

    def run(self, now: float, addresses: dict[Family, str] | None = None) -> UpdateResult:
        results, self.memory = run_updaters(
            [self.config], addresses or {"ipv4": V4}, self.memory, now
        )
        self.results += results
        return results[0]

    def shown(self) -> str:
        """Everything the runner let out, apart from the log."""
        return json.dumps(self.memory) + repr(self.results)


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.DEBUG, logger="ipwatch")
    yield caplog


def secret_file(directory: Path, name: str, value: str) -> Path:
    path = directory / name
    path.write_text(value + "\n")
    path.chmod(0o600)
    return path


def runner(tmp_path: Path, secret_key: str, secret: str, **table: Any) -> Runner:
    path = secret_file(tmp_path, secret_key, secret)
    [config] = parse({"source": [STUN], "ddns": [table | {secret_key: str(path)}]}).ddns
    return Runner(config, secret)


def assert_hidden(runner: Runner, logs: pytest.LogCaptureFixture) -> None:
    assert runner.secret not in logs.text and runner.secret not in runner.shown()


# --- dyndns2 ------------------------------------------------------------------------------------


def dyndns2(
    ddns_http: DdnsHttp, tmp_path: Path, password: str | None = None, **more: Any
) -> Runner:
    table = {"kind": "dyndns2", "url": ddns_http.url("/nic/update"), "hostname": "pbx.dyn.test",
             "username": ddns_http.dyndns2.username} | more  # fmt: skip
    return runner(tmp_path, "password_file", password or ddns_http.dyndns2.password, **table)


def test_dyndns2_sends_the_address_with_basic_auth_once(
    ddns_http: DdnsHttp, tmp_path: Path, logs: pytest.LogCaptureFixture
) -> None:
    updater = dyndns2(ddns_http, tmp_path)
    result = updater.run(0)
    assert (result.status, result.message) == ("updated", f"pbx.dyn.test {V4} updated")
    [request] = ddns_http.requests_to("/nic/update")
    assert request.query == {"hostname": "pbx.dyn.test", "myip": V4}
    pair = f"{ddns_http.dyndns2.username}:{ddns_http.dyndns2.password}".encode()
    assert request.headers["Authorization"] == "Basic " + base64.b64encode(pair).decode()
    assert request.headers["User-Agent"] == f"ipwatch/{__version__}"
    assert ddns_http.dyndns2.hosts["pbx.dyn.test"] == V4
    for later in (MINUTE, 3600, 86400 * 30):  # an unchanged address is never sent again
        assert updater.run(later).status == "skipped"
    assert len(ddns_http.requests_to("/nic/update")) == 1
    assert updater.run(86400 * 30 + 1, {"ipv4": V4_NEW}).status == "updated"
    assert "ddns dyndns2-1: pbx.dyn.test 203.0.113.8 updated" in logs.text
    assert_hidden(updater, logs)


def test_dyndns2_ipv4_and_ipv6_in_one_myip(ddns_http: DdnsHttp, tmp_path: Path) -> None:
    updater = dyndns2(ddns_http, tmp_path)
    assert updater.run(0, {"ipv4": V4, "ipv6": V6}).status == "updated"
    [request] = ddns_http.requests_to("/nic/update")
    assert request.query["myip"] == f"{V4},{V6}"
    assert ddns_http.dyndns2.hosts["pbx.dyn.test"] == f"{V4},{V6}"


def test_dyndns2_nochg_at_start_is_fine_and_not_repeated(
    ddns_http: DdnsHttp, tmp_path: Path
) -> None:
    ddns_http.dyndns2.hosts["pbx.dyn.test"] = V4
    updater = dyndns2(ddns_http, tmp_path)
    result = updater.run(0)
    assert (result.status, result.message) == (
        "unchanged",
        f"pbx.dyn.test {V4} already right (nochg)",
    )
    for later in range(1, 50):
        updater.run(later * 10 * MINUTE)
    assert len(ddns_http.requests_to("/nic/update")) == 1
    assert not ddns_http.dyndns2.blocked  # the provider never saw a second nochg


def test_dyndns2_badauth_blocks_until_the_password_file_changes(
    ddns_http: DdnsHttp, tmp_path: Path, logs: pytest.LogCaptureFixture
) -> None:
    updater = dyndns2(ddns_http, tmp_path, password="wrong-password-123")
    result = updater.run(0)
    assert (result.status, result.message) == (
        "blocked",
        "the provider rejected the user name or password; check username and password_file",
    )
    assert "blocked until its config or secret changes" in logs.text
    for later in (MINUTE, 3600, 86400):
        result = updater.run(later, {"ipv4": V4_NEW})
        assert result.status == "blocked" and "not retried until" in result.message
    assert len(ddns_http.requests_to("/nic/update")) == 1
    assert_hidden(updater, logs)
    secret_file(tmp_path, "password_file", ddns_http.dyndns2.password)
    assert updater.run(86400 + 1, {"ipv4": V4_NEW}).status == "updated"


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("notfqdn", "the provider says pbx.dyn.test is not a fully qualified domain name"),
        ("nohost", "the provider says pbx.dyn.test does not exist in this account"),
        ("abuse", "the provider has blocked pbx.dyn.test for abuse"),
        ("!donator", "the provider refused an option this account does not have"),
        ("numhost", "the provider refused the update: too many hosts"),
        ("badagent", "the provider refused this client"),
        ("good 127.0.0.1", "the provider ignored the update (answered good 127.0.0.1"),
    ],
)
def test_dyndns2_fatal_answers_block(
    ddns_http: DdnsHttp, tmp_path: Path, code: str, expected: str
) -> None:
    ddns_http.dyndns2.answers.append(code)
    updater = dyndns2(ddns_http, tmp_path)
    result = updater.run(0)
    assert result.status == "blocked" and result.message.startswith(expected)
    assert updater.run(3600, {"ipv4": V4_NEW}).status == "blocked"
    assert len(ddns_http.requests_to("/nic/update")) == 1


@pytest.mark.parametrize("code", ["911", "dnserr"])
def test_dyndns2_provider_trouble_waits_30_minutes(
    ddns_http: DdnsHttp, tmp_path: Path, code: str
) -> None:
    ddns_http.dyndns2.answers.append(code)
    updater = dyndns2(ddns_http, tmp_path, min_interval="1m")
    result = updater.run(0)
    assert (
        result.status == "failed" and f"({code}); waiting 30 minutes as it asks" in result.message
    )
    assert updater.run(29 * MINUTE, {"ipv4": V4_NEW}).status == "skipped"  # even a new address
    assert len(ddns_http.requests_to("/nic/update")) == 1
    assert updater.run(30 * MINUTE, {"ipv4": V4_NEW}).status == "updated"


def test_dyndns2_repeated_nochg_would_get_the_host_blocked(
    ddns_http: DdnsHttp, tmp_path: Path
) -> None:
    """The provider look-alike enforces the abuse rule, so the tests above prove something."""
    ddns_http.dyndns2.hosts["pbx.dyn.test"] = V4
    first, second = dyndns2(ddns_http, tmp_path), dyndns2(ddns_http, tmp_path)
    assert first.run(0).status == "unchanged"
    assert second.run(0).status == "blocked"  # a second client without the first one's memory


def test_http_updaters_give_up_at_the_timeout(ddns_http: DdnsHttp, tmp_path: Path) -> None:
    ddns_http.delay = 5.0
    updater = dyndns2(ddns_http, tmp_path, timeout="300ms")
    result = updater.run(0)
    assert (result.status, result.message) == (
        "failed",
        f"no answer from {ddns_http.url('/nic/update')} within 300ms",
    )


def test_redirects_are_not_followed_nor_shown_with_their_query(
    ddns_http: DdnsHttp, tmp_path: Path, logs: pytest.LogCaptureFixture
) -> None:
    updater = duckdns(ddns_http, tmp_path)
    ddns_http.redirect(f"https://duck.example/update?token={ddns_http.duckdns.token}")
    result = updater.run(0)
    assert (result.status, result.message) == (
        "blocked",
        f"{ddns_http.url('/update')} redirected to https://duck.example/update; not followed,"
        " since the request carries credentials: set the url to where it points",
    )
    assert_hidden(updater, logs)


# --- Cloudflare ---------------------------------------------------------------------------------


def cloudflare(
    ddns_http: DdnsHttp, tmp_path: Path, token: str | None = None, **more: Any
) -> Runner:
    table = {"kind": "cloudflare", "api_url": ddns_http.url("/client/v4"), "zone": "example.test",
             "record": "pbx.example.test"} | more  # fmt: skip
    return runner(tmp_path, "token_file", token or ddns_http.cloudflare.token, **table)


def calls(ddns_http: DdnsHttp) -> list[tuple[str, str]]:
    return [(r.method, r.path.rsplit("/", 1)[-1]) for r in ddns_http.requests_to("/client/v4/")]


def test_cloudflare_patches_only_the_content(
    ddns_http: DdnsHttp, tmp_path: Path, logs: pytest.LogCaptureFixture
) -> None:
    record = ddns_http.cloudflare.add(
        "pbx.example.test", "A", "198.51.100.1", proxied=True, ttl=120
    )
    updater = cloudflare(ddns_http, tmp_path)
    result = updater.run(0)
    assert (result.status, result.message) == ("updated", f"pbx.example.test A {V4} updated")
    assert calls(ddns_http) == [("GET", "zones"), ("GET", "dns_records"), ("PATCH", record)]
    patch = ddns_http.requests_to("/client/v4/")[-1]
    assert json.loads(patch.body) == {"content": V4}
    assert patch.headers["Authorization"] == f"Bearer {ddns_http.cloudflare.token}"
    kept = ddns_http.cloudflare.records[record]
    assert (kept["content"], kept["proxied"], kept["ttl"]) == (V4, True, 120)
    assert_hidden(updater, logs)


def test_cloudflare_rechecks_after_min_interval_and_repairs(
    ddns_http: DdnsHttp, tmp_path: Path
) -> None:
    record = ddns_http.cloudflare.add("pbx.example.test", "A", V4)
    updater = cloudflare(ddns_http, tmp_path)
    result = updater.run(0)
    assert (result.status, result.message) == (
        "unchanged",
        f"pbx.example.test A {V4} already right",
    )
    assert calls(ddns_http) == [("GET", "zones"), ("GET", "dns_records")]
    assert updater.run(4 * MINUTE).status == "skipped"
    ddns_http.cloudflare.records[record]["content"] = "198.51.100.99"  # changed by hand
    assert updater.run(5 * MINUTE).status == "updated"
    assert ddns_http.cloudflare.records[record]["content"] == V4


def test_cloudflare_creates_a_missing_record(ddns_http: DdnsHttp, tmp_path: Path) -> None:
    ddns_http.cloudflare.add("pbx.example.test", "A", V4)
    result = cloudflare(ddns_http, tmp_path).run(0, {"ipv4": V4, "ipv6": V6})
    assert result.message == f"pbx.example.test A {V4} already right; AAAA {V6} created"
    [created] = ddns_http.cloudflare.find("pbx.example.test", "AAAA")
    assert (created["content"], created["proxied"], created["ttl"]) == (V6, False, 1)


def test_cloudflare_bad_token_blocks(
    ddns_http: DdnsHttp, tmp_path: Path, logs: pytest.LogCaptureFixture
) -> None:
    updater = cloudflare(ddns_http, tmp_path, token="not-the-token-0123456789")
    result = updater.run(0)
    assert (result.status, result.message) == (
        "blocked",
        "Cloudflare refused the API token (9109 Invalid access token); check token_file, and"
        " that the token may edit DNS records of example.test",
    )
    assert updater.run(3600).status == "blocked" and len(calls(ddns_http)) == 1
    assert_hidden(updater, logs)


def test_cloudflare_429_waits_as_retry_after_says(ddns_http: DdnsHttp, tmp_path: Path) -> None:
    ddns_http.cloudflare.add("pbx.example.test", "A", "198.51.100.1")
    ddns_http.cloudflare.allowance = 1
    updater = cloudflare(ddns_http, tmp_path, min_interval="1m")
    result = updater.run(0)
    assert result.status == "failed" and result.message == (
        f"{ddns_http.url('/client/v4/zones/')}{ddns_http.cloudflare.zones['example.test']}"
        "/dns_records answered 429: too many requests; waiting 2m as it asks"
    )
    assert updater.run(MINUTE, {"ipv4": V4_NEW}).status == "skipped"
    assert len(calls(ddns_http)) == 2  # no request while it asked us to wait
    ddns_http.cloudflare.allowance = None
    assert updater.run(2 * MINUTE, {"ipv4": V4_NEW}).status == "updated"


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        ("two", "pbx.example.test has 2 A records; ipwatch keeps a single one"),
        ("no zone", "Cloudflare has no zone example.test this token can see"),
    ],
)
def test_cloudflare_what_it_will_not_guess(
    ddns_http: DdnsHttp, tmp_path: Path, setup: str, expected: str
) -> None:
    if setup == "two":
        ddns_http.cloudflare.add("pbx.example.test", "A", "198.51.100.1")
        ddns_http.cloudflare.add("pbx.example.test", "A", "198.51.100.2")
    else:
        ddns_http.cloudflare.zones = {"other.test": "z1"}
    result = cloudflare(ddns_http, tmp_path).run(0)
    assert result.status == "blocked" and result.message.startswith(expected)


# --- DuckDNS ------------------------------------------------------------------------------------


def duckdns(ddns_http: DdnsHttp, tmp_path: Path, token: str | None = None) -> Runner:
    table = {"kind": "duckdns", "url": ddns_http.url("/update"), "domains": ["mypbx.duckdns.org"]}
    return runner(tmp_path, "token_file", token or ddns_http.duckdns.token, **table)


def test_duckdns_updates_and_resends_every_min_interval(
    ddns_http: DdnsHttp, tmp_path: Path, logs: pytest.LogCaptureFixture
) -> None:
    updater = duckdns(ddns_http, tmp_path)
    result = updater.run(0, {"ipv4": V4, "ipv6": V6})
    assert (result.status, result.message) == ("updated", f"mypbx {V4} {V6} updated")
    [request] = ddns_http.requests_to("/update")
    assert request.query == {"domains": "mypbx", "token": ddns_http.duckdns.token,
                             "verbose": "true", "ip": V4, "ipv6": V6}  # fmt: skip
    assert ddns_http.duckdns.domains["mypbx"] == {"ipv4": V4, "ipv6": V6}
    assert updater.run(MINUTE, {"ipv4": V4, "ipv6": V6}).status == "skipped"
    result = updater.run(5 * MINUTE, {"ipv4": V4, "ipv6": V6})
    assert (result.status, result.message) == ("unchanged", f"mypbx {V4} {V6} already right")
    assert_hidden(updater, logs)


def test_duckdns_ko_blocks_with_an_explanation(
    ddns_http: DdnsHttp, tmp_path: Path, logs: pytest.LogCaptureFixture
) -> None:
    updater = duckdns(ddns_http, tmp_path, token="00000000-0000-0000-0000-000000000000")
    result = updater.run(0)
    assert (result.status, result.message) == (
        "blocked",
        "DuckDNS answered KO: the token or one of the domains is wrong (it does not say which);"
        " check token_file and domains",
    )
    assert_hidden(updater, logs)


# --- the runner ---------------------------------------------------------------------------------


def test_several_updaters_run_together_and_missing_secrets_are_explained(
    ddns_http: DdnsHttp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    password = secret_file(tmp_path, "pw", ddns_http.dyndns2.password)
    tables = [
        {"kind": "dyndns2", "url": ddns_http.url("/nic/update"), "hostname": "pbx.dyn.test",
         "username": ddns_http.dyndns2.username, "password_file": str(password)},
        {"kind": "duckdns", "url": ddns_http.url("/update"), "domains": ["mypbx"]},
    ]  # fmt: skip
    config = parse({"source": [STUN], "ddns": tables})
    results, memory = run_updaters(config.ddns, {"ipv4": V4}, {"gone": {"sent": {}}}, 0.0)
    assert [(r.name, r.status) for r in results] == [
        ("dyndns2-1", "updated"),
        ("duckdns-1", "failed"),
    ]
    assert results[1].message == (
        "token_file is not set and there is no systemd credential ddns-duckdns-1-token; point"
        " token_file at a file (mode 600) holding it"
    )
    assert set(memory) == {"dyndns2-1", "duckdns-1"}  # an updater no longer configured is dropped


def test_a_systemd_credential_stands_in_for_the_secret_file(
    ddns_http: DdnsHttp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    secret_file(credentials, "ddns-duck-token", ddns_http.duckdns.token)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    table = {
        "kind": "duckdns",
        "name": "duck",
        "url": ddns_http.url("/update"),
        "domains": ["mypbx"],
    }
    config = parse({"source": [STUN], "ddns": [table]})
    results, _ = run_updaters(config.ddns, {"ipv4": V4}, {}, 0.0)
    assert results[0].status == "updated"
