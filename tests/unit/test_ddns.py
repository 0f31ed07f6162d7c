"""DDNS updaters without a network: their config keys, when the runner calls them, the secrets."""

from __future__ import annotations

import tomllib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ipwatch import plugins
from ipwatch.config import UpdaterConfig, parse, render
from ipwatch.ddns import UpdateError, _Memory, _reason_to_wait, rfc2136, web
from ipwatch.errors import ConfigError

STUN = {"kind": "stun", "servers": ["stun.example.org:3478"]}
RFC2136 = {
    "kind": "rfc2136",
    "server": "192.0.2.53",
    "zone": "Example.org.",
    "hostname": "PBX.example.org",
    "tsig_name": "pbx-key",
    "tsig_secret_file": "/etc/ipwatch/tsig.key",
}
DYNDNS2 = {
    "kind": "dyndns2",
    "url": "https://members.dyndns.org/nic/update",
    "hostname": "pbx.dyndns.example",
    "username": "me",
    "password_file": "/etc/ipwatch/dyn.password",
}
CLOUDFLARE = {
    "kind": "cloudflare",
    "zone": "example.org",
    "record": "pbx.example.org",
    "token_file": "/etc/ipwatch/cf.token",
}
DUCKDNS = {"kind": "duckdns", "domains": ["mypbx.duckdns.org", "other"], "token_file": "/t"}


def updaters(*tables: dict[str, Any]) -> tuple[UpdaterConfig, ...]:
    return parse({"source": [STUN], "ddns": list(tables)}).ddns


def problems(*tables: Any) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse({"source": [STUN], "ddns": list(tables)}, "ipwatch.toml")
    return caught.value.messages


def test_ddns_tables_get_defaults_and_names_per_kind() -> None:
    found = updaters(RFC2136, DYNDNS2, RFC2136 | {"name": "backup"}, CLOUDFLARE, DUCKDNS, RFC2136)
    assert [u.name for u in found] == [
        "rfc2136-1", "dyndns2-1", "backup", "cloudflare-1", "duckdns-1", "rfc2136-3",
    ]  # fmt: skip
    first = found[0]
    assert (first.kind, first.timeout, first.min_interval) == ("rfc2136", 10.0, 300.0)
    options = first.options
    assert (options.zone, options.hostname, options.ttl) == ("example.org", "pbx.example.org", 60)
    assert options.tsig_algorithm == "hmac-sha256" and options.server == "192.0.2.53"
    assert found[4].options.domains == ("mypbx", "other")
    assert found[3].options.api_url == "https://api.cloudflare.com/client/v4"


def test_no_ddns_is_the_default() -> None:
    assert parse({"source": [STUN]}).ddns == ()


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ({"kind": "dyndns3"}, "ddns[0].kind: 'dyndns3' is not an updater kind; use one of"),
        ({}, "ddns[0].kind: None is not an updater kind"),
        ({"kind": ["rfc2136"]}, "ddns[0].kind: ['rfc2136'] is not an updater kind"),
        (RFC2136 | {"tsig_secret": "c2VjcmV0"}, "ddns[0].tsig_secret: unknown key; did you mean"),
        (RFC2136 | {"server": "ns1.example.org"}, "ddns[0].server: 'ns1.example.org' is not an IP"),
        (RFC2136 | {"server": "192.0.2.53:99999"}, "ddns[0].server: '192.0.2.53:99999' has an"),
        (RFC2136 | {"hostname": "pbx.example.com"}, "ddns[0]: hostname 'pbx.example.com' is not"),
        (RFC2136 | {"tsig_algorithm": "hmac-md5"}, "ddns[0].tsig_algorithm: 'hmac-md5' is not one"),
        (RFC2136 | {"ttl": 0}, "ddns[0].ttl: expected a whole number of at least 1"),
        (RFC2136 | {"min_interval": 300}, 'ddns[0].min_interval: expected a duration like "30s"'),
        (DYNDNS2 | {"url": "http://members.dyndns.org/nic/update"}, "is plain http://; use https"),
        (DYNDNS2 | {"url": "https://me:pw@dyn.example/nic/update"}, "holds a user name or pass"),
        (DYNDNS2 | {"hostname": "pbx"}, "ddns[0].hostname: 'pbx' is not fully qualified"),
        (DYNDNS2 | {"hostname": "pbx example.org"}, "ddns[0].hostname: 'pbx example.org' is not a"),
        ({k: v for k, v in DYNDNS2.items() if k != "username"}, "ddns[0].username: missing"),
        (CLOUDFLARE | {"record": "pbx.example.com"}, "record 'pbx.example.com' is not inside zone"),
        (DUCKDNS | {"domains": []}, "ddns[0].domains: empty; list at least one"),
        (DUCKDNS | {"domains": ["my pbx"]}, "ddns[0].domains[0]: 'my pbx' is not a DuckDNS name"),
        ([RFC2136, RFC2136 | {"name": "rfc2136-1"}], 'ddns: the name "rfc2136-1" is used 2 times'),
    ],
)
def test_bad_ddns_tables_name_the_key(table: Any, expected: str) -> None:
    found = problems(*(table if isinstance(table, list) else [table]))
    assert any(expected in line for line in found), found
    assert all(line.startswith("ipwatch.toml: ") for line in found)


def test_http_is_accepted_for_a_loopback_api_only() -> None:
    assert web.parse_api_url("http://127.0.0.1:8053/nic/update").startswith("http://")
    assert web.parse_api_url("http://[::1]/update") == "http://[::1]/update"
    assert web.parse_api_url("http://localhost/update") == "http://localhost/update"
    with pytest.raises(ValueError, match="plain http://"):
        web.parse_api_url("http://192.0.2.1/update")


def test_render_shows_ddns_tables_and_parses_back() -> None:
    raw = {"source": [STUN], "ddns": [RFC2136 | {"min_interval": "90s"}, DYNDNS2, DUCKDNS]}
    config = parse(raw)
    text = render(config)
    assert "[[ddns]]" in text and 'min_interval = "90s"' in text
    assert 'tsig_secret_file = "/etc/ipwatch/tsig.key"' in text and 'name = "duckdns-1"' in text
    assert parse(tomllib.loads(text)) == config


# --- when the runner calls an updater ------------------------------------------------------------

V4, V4_NEW = "203.0.113.7", "203.0.113.8"
MINUTE = 60.0


def wait(memory: _Memory, wanted: dict[str, str], now: float, recheck: bool = False) -> Any:
    return _reason_to_wait(memory, wanted, now, 5 * MINUTE, recheck)


def test_a_new_address_is_sent_at_once_and_a_sent_one_never_again_without_recheck() -> None:
    fresh = _Memory("f")
    assert wait(fresh, {"ipv4": V4}, 0) is None
    sent = _Memory("f", sent={"ipv4": V4}, tried={"ipv4": V4}, attempt=0)
    assert wait(sent, {"ipv4": V4}, 10_000)[0] == "skipped"
    assert wait(sent, {"ipv4": V4_NEW}, 1) is None  # a change does not wait for min_interval


def test_recheck_waits_min_interval() -> None:
    sent = _Memory("f", sent={"ipv4": V4}, tried={"ipv4": V4}, attempt=1000)
    assert wait(sent, {"ipv4": V4}, 1000 + 4 * MINUTE, recheck=True)[0] == "skipped"
    assert wait(sent, {"ipv4": V4}, 1000 + 5 * MINUTE, recheck=True) is None
    assert wait(sent, {"ipv4": V4}, 500, recheck=True) is None  # the clock was set back


def test_a_failed_address_is_retried_after_min_interval() -> None:
    failed = _Memory("f", sent={"ipv4": V4}, tried={"ipv4": V4_NEW}, attempt=1000)
    status, message = wait(failed, {"ipv4": V4_NEW}, 1000 + MINUTE)
    assert status == "skipped" and "last attempt failed; next after" in message
    assert wait(failed, {"ipv4": V4_NEW}, 1000 + 5 * MINUTE) is None


def test_blocked_and_provider_waits_hold_even_a_new_address() -> None:
    blocked = _Memory("f", blocked="the provider rejected the user name or password")
    status, message = wait(blocked, {"ipv4": V4_NEW}, 0)
    assert status == "blocked" and message.startswith("the provider rejected")
    waiting = _Memory("f", not_before=2000)
    assert wait(waiting, {"ipv4": V4_NEW}, 1999)[0] == "skipped"
    assert wait(waiting, {"ipv4": V4_NEW}, 2000) is None
    assert wait(_Memory("f"), {}, 0) == ("skipped", "no confirmed address to send")


addresses = st.dictionaries(st.sampled_from(["ipv4", "ipv6"]), st.sampled_from([V4, V4_NEW]))
times = st.none() | st.floats(0, 10_000)
memories = st.builds(
    _Memory,
    st.just("f"),
    addresses,
    addresses,
    times,
    times,
    st.none() | st.just("blocked for abuse"),
)


@given(memory=memories, wanted=addresses, now=st.floats(0, 10_000), recheck=st.booleans())
def test_the_runner_never_calls_when_it_must_not(
    memory: _Memory, wanted: dict[str, str], now: float, recheck: bool
) -> None:
    calls = wait(memory, wanted, now, recheck) is None
    if memory.blocked or not wanted:
        assert not calls
    if memory.not_before is not None and now < memory.not_before:
        assert not calls
    if wanted == memory.sent and not recheck:
        assert not calls  # dyndns2 providers block clients that repeat an address
    if memory.attempt is not None and 0 <= now - memory.attempt < 5 * MINUTE:
        assert not calls or wanted not in (memory.tried, memory.sent)
    held = memory.blocked or (memory.not_before is not None and now < memory.not_before)
    if wanted and not held and wanted not in (memory.sent, memory.tried):
        assert calls


def test_memory_of_another_config_or_junk_starts_afresh() -> None:
    kept = {"fingerprint": "f", "sent": {"ipv4": V4}, "attempt": 5, "blocked": "badauth"}
    assert _Memory.from_json(kept, "f") == _Memory("f", {"ipv4": V4}, {}, 5.0, None, "badauth")
    assert _Memory.from_json(kept, "g") == _Memory("g")
    junk: list[Any] = [
        None,
        [],
        {"fingerprint": "f", "sent": [1]},
        {"fingerprint": "f", "attempt": "x"},
    ]
    for data in junk:
        assert _Memory.from_json(data, "f") == _Memory("f")


# --- secrets ------------------------------------------------------------------------------------

SECRET = "zP3aC2x0Lq1uQ0j6cYV0nq5bR1l4v2k8c3mD9sE0fWg="


@pytest.mark.parametrize(
    "text",
    [
        f"{SECRET}\n",
        f'key "pbx-key" {{\n\talgorithm hmac-sha256;\n\tsecret "{SECRET}";\n}};\n',
        f"key:\n  - id: pbx-key\n    algorithm: hmac-sha256\n    secret: {SECRET}\n",
    ],
    ids=["bare", "tsig-keygen", "keymgr"],
)
def test_tsig_secret_files_in_the_servers_own_formats(text: str) -> None:
    import base64

    assert rfc2136._secret(text) == base64.b64decode(SECRET)


def test_a_bad_tsig_secret_is_refused_without_showing_it() -> None:
    with pytest.raises(UpdateError) as caught:
        rfc2136._secret("not base64 at all: hunter2")
    assert "hunter2" not in str(caught.value) and caught.value.permanent


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("120", 120.0), ("0", 1.0), ("9999999", web.MAX_RETRY_AFTER), ("soon", None), (None, None)],
)
def test_retry_after_in_seconds(header: str | None, seconds: float | None) -> None:
    assert web._retry_after(header) == seconds


def test_retry_after_as_a_date() -> None:
    from email.utils import formatdate
    from time import time

    found = web._retry_after(formatdate(time() + 600, usegmt=True))
    assert found is not None and 590 <= found <= 600


def test_unknown_kind_message_lists_the_registered_ones() -> None:
    kinds = plugins.kinds(plugins.UPDATERS)
    assert set(kinds.names) >= {"rfc2136", "dyndns2", "cloudflare", "duckdns"}
    assert kinds.unknown("x", "an updater kind").startswith("'x' is not an updater kind; use one")
