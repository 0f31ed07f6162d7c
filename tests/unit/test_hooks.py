"""The hook event model: the JSON on stdin, the environment of SPEC.md, result lines."""

from __future__ import annotations

import json
import unicodedata

from hypothesis import given
from hypothesis import strategies as st

from ipwatch import cli
from ipwatch.addresses import Family
from ipwatch.hooks import (
    DEFAULT_PATH,
    EVENTS,
    Event,
    HookResult,
    hook_environment,
    synthetic_event,
)

SPEC_VARIABLES = {
    "IPWATCH_EVENT",
    "IPWATCH_FAMILY",
    "IPWATCH_OLD_ADDRESS",
    "IPWATCH_NEW_ADDRESS",
    "IPWATCH_OLD_IPV4",
    "IPWATCH_NEW_IPV4",
    "IPWATCH_OLD_IPV6",
    "IPWATCH_NEW_IPV6",
    "IPWATCH_SOURCES",
    "IPWATCH_ERROR",
    "IPWATCH_CONFIG",
}

CHANGE6 = Event(
    name="change",
    family="ipv6",
    old_ipv4="203.0.113.5",
    new_ipv4="203.0.113.5",
    old_ipv6="2001:db8::5",
    new_ipv6="2001:db8::7",
    sources=(("stun-1", "2001:db8::7"), ("dns-1", "2001:db8::7")),
    time=1_700_000_000.0,
)


def test_environment_is_exactly_the_spec_variables() -> None:
    assert CHANGE6.environment("/etc/ipwatch/ipwatch.toml") == {
        "IPWATCH_EVENT": "change",
        "IPWATCH_FAMILY": "ipv6",
        "IPWATCH_OLD_ADDRESS": "2001:db8::5",
        "IPWATCH_NEW_ADDRESS": "2001:db8::7",
        "IPWATCH_OLD_IPV4": "203.0.113.5",
        "IPWATCH_NEW_IPV4": "203.0.113.5",
        "IPWATCH_OLD_IPV6": "2001:db8::5",
        "IPWATCH_NEW_IPV6": "2001:db8::7",
        "IPWATCH_SOURCES": "stun-1=2001:db8::7 dns-1=2001:db8::7",
        "IPWATCH_ERROR": "",
        "IPWATCH_CONFIG": "/etc/ipwatch/ipwatch.toml",
    }


def test_unknown_values_are_empty_strings() -> None:
    environment = Event(name="degraded").environment("/c.toml")
    assert set(environment) == SPEC_VARIABLES
    assert {k: v for k, v in environment.items() if v} == {
        "IPWATCH_EVENT": "degraded",
        "IPWATCH_CONFIG": "/c.toml",
    }


def test_the_json_on_stdin() -> None:
    assert json.loads(CHANGE6.to_json()) == {
        "event": "change",
        "family": "ipv6",
        "old_address": "2001:db8::5",
        "new_address": "2001:db8::7",
        "ipv4": {"old": "203.0.113.5", "new": "203.0.113.5"},
        "ipv6": {"old": "2001:db8::5", "new": "2001:db8::7"},
        "sources": [
            {"name": "stun-1", "address": "2001:db8::7"},
            {"name": "dns-1", "address": "2001:db8::7"},
        ],
        "error": None,
        "time": "2023-11-14T22:13:20Z",
    }


def test_synthetic_events_use_documentation_addresses() -> None:
    for name in EVENTS:
        event = synthetic_event(name, now=0.0)
        assert (event.name, event.family, event.old_address) == (name, "ipv4", "203.0.113.5")
        assert event.new_address == (None if name == "degraded" else "203.0.113.7")
        assert (event.error is not None) == (name == "error")
    assert synthetic_event("error").environment("c")["IPWATCH_ERROR"].startswith("synthetic")


def test_a_hook_sees_none_of_the_daemons_secrets() -> None:
    daemon = {
        "PATH": "/stubs:/usr/bin",
        "HOME": "/var/lib/ipwatch",
        "LANG": "C.UTF-8",
        "CREDENTIALS_DIRECTORY": "/run/credentials/ipwatch.service",
        "NOTIFY_SOCKET": "/run/systemd/notify",
        "IPWATCH_STATE_DIR": "/var/lib/ipwatch",
        "AWS_SECRET_ACCESS_KEY": "hunter2",
        "INVOCATION_ID": "0123",
    }
    environment = hook_environment(CHANGE6, "/c.toml", daemon)
    assert set(environment) == SPEC_VARIABLES | {"PATH", "HOME", "LANG"}
    assert environment["PATH"] == "/stubs:/usr/bin"
    assert hook_environment(CHANGE6, "/c.toml", {})["PATH"] == DEFAULT_PATH


def _name_character(character: str) -> bool:
    """Letters, digits, dashes. Not st.characters(categories=...): Debian 12's hypothesis 6.67
    has no `categories`, and later versions deprecate its `whitelist_categories`."""
    category = unicodedata.category(character)
    return category[0] in "LN" or category == "Pd"


@given(
    family=st.sampled_from(["ipv4", "ipv6", None]),
    addresses=st.lists(st.none() | st.ip_addresses().map(str), min_size=4, max_size=4),
    sources=st.lists(
        st.tuples(st.text(st.characters().filter(_name_character), min_size=1), st.text()),
        max_size=5,
    ),
    error=st.none() | st.text(),
)
def test_environment_and_json_agree(
    family: Family | None,
    addresses: list[str | None],
    sources: list[tuple[str, str]],
    error: str | None,
) -> None:
    old4, new4, old6, new6 = addresses
    event = Event("error", family, old4, new4, old6, new6, tuple(sources), error)
    environment = event.environment("/c.toml")
    data = json.loads(event.to_json())
    assert set(environment) == SPEC_VARIABLES
    assert environment["IPWATCH_NEW_ADDRESS"] == (data["new_address"] or "")
    assert environment["IPWATCH_OLD_IPV6"] == (data["ipv6"]["old"] or "")
    assert environment["IPWATCH_ERROR"] == (error or "")
    assert [(s["name"], s["address"]) for s in data["sources"]] == sources
    if family is None:
        assert data["old_address"] is None and data["new_address"] is None
    else:
        assert data["new_address"] == data[family]["new"]


def test_result_lines() -> None:
    assert HookResult("10-ok", "ok", 0, "", 0.123).describe() == "10-ok: ok (0.12 s)"
    failed = HookResult("20-mail", "failed", 1, "sendmail: not found", 0.5)
    assert failed.describe() == "20-mail: failed, exit 1 (0.50 s): sendmail: not found"
    assert (
        HookResult("x", "failed", -11, "", 1.0).describe()
        == "x: failed, killed by signal 11 (1.00 s)"
    )
    refused = HookResult("y", "refused", reason="it is writable by group or others; chmod go-w /y")
    assert refused.describe() == "y: refused: it is writable by group or others; chmod go-w /y"


def test_the_cli_offers_every_event() -> None:
    assert cli.HOOK_EVENTS == EVENTS
