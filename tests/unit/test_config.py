"""Config parsing and validation: every problem at once, each with its key path and a fix."""

from __future__ import annotations

import ipaddress
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ipwatch import config as config_module
from ipwatch.config import Config, load, parse, render
from ipwatch.errors import ConfigError
from ipwatch.redact import mask_userinfo
from ipwatch.schema import HostPort, format_duration, parse_duration, parse_host_port

STUN = {"kind": "stun", "servers": ["stun.l.google.com:19302"]}


def problems(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse(raw, "/etc/ipwatch/ipwatch.toml")
    return caught.value.messages


def test_defaults_follow_the_spec() -> None:
    config = parse({"source": [STUN]})
    assert (config.interval, config.confirm, config.fast_confirm, config.quorum) == (
        30.0,
        2,
        2.0,
        "majority",
    )
    assert config.families == ("ipv4",) and config.accept == ()
    assert config.sources[0].name == "stun-1" and config.sources[0].timeout == 2.0
    assert config.sources[0].options.servers == (HostPort("stun.l.google.com", 19302),)
    assert config.asterisk.ami.port == 5038 and config.asterisk.drain == 900.0
    assert config.hooks.timeout == 30.0


def test_default_names_count_per_kind() -> None:
    config = parse({"source": [STUN, {"kind": "dns", "hostname": "pbx.example.org"}, STUN]})
    assert [s.name for s in config.sources] == ["stun-1", "dns-1", "stun-2"]


def test_every_problem_is_reported_at_once_with_its_path() -> None:
    found = problems(
        {
            "intervall": "30s",
            "confirm": 0,
            "fast_confirm": "2 seconds",
            "accept": ["198.51.100.0/33"],
            "source": [
                STUN,
                {"kind": "stun", "servers": ["stun.example.org:99999"], "timout": "1s"},
            ],
            "asterisk": {"drain": 5},
        }
    )
    prefix = "/etc/ipwatch/ipwatch.toml: "
    assert all(p.startswith(prefix) for p in found)
    text = "\n".join(found)
    assert 'intervall: unknown key; did you mean "interval"?' in text
    assert "confirm: expected a whole number of at least 1, got 0" in text
    assert "fast_confirm: '2 seconds' is not a duration" in text
    assert "accept[0]: '198.51.100.0/33' is not a CIDR" in text
    assert "source[1].servers[0]: 'stun.example.org:99999' has an invalid port" in text
    assert 'source[1].timout: unknown key; did you mean "timeout"?' in text
    assert 'asterisk.drain: expected a duration like "30s", got 5' in text
    assert len(found) == 7


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({}, 'source: none configured; add at least one [[source]], e.g. kind = "stun"'),
        ({"source": [{"kind": "stunn"}]}, "source[0].kind: 'stunn' is not a source kind"),
        ({"source": [{"kind": "stun"}]}, "source[0].servers: missing; this key is required"),
        ({"source": [STUN], "quorum": 3}, "quorum: 3 sources must agree but only 1 are configured"),
        ({"source": [STUN], "quorum": "most"}, 'quorum: expected "majority" or a whole number'),
        (
            {"source": [STUN], "families": ["ipv5"]},
            "families[0]: 'ipv5' is not one of 'ipv4', 'ipv6'",
        ),
        ({"source": [STUN], "families": []}, "families: empty"),
        ({"source": [STUN, {**STUN, "name": "stun-1"}]}, 'the name "stun-1" is used 2 times'),
        ({"source": STUN}, "source: expected [[source]] tables"),
        (
            {"source": [STUN], "asterisk": {"control": "ssh"}},
            "asterisk.control: 'ssh' is not one of",
        ),
        (
            {"source": [STUN], "asterisk": {"ami": {"port": "5038"}}},
            "asterisk.ami.port: expected a whole number",
        ),
        (
            {"source": [STUN], "target": [{"kind": "pjsip"}]},
            "target[0].file: missing; this key is required",
        ),
        (
            {"source": [{**STUN, "servers": ["[::1"]}]},
            "source[0].servers[0]: '[::1' is not \"[IPv6]:port\"",
        ),
        (
            {"source": [{**STUN, "servers": "a:1"}]},
            "source[0].servers: expected a list like [...], got a string",
        ),
    ],
)
def test_bad_values_name_the_key(raw: dict[str, Any], expected: str) -> None:
    assert any(expected in p for p in problems(raw)), problems(raw)


def test_load_reports_missing_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"ipwatch.toml: no such file; create it"):
        load(str(tmp_path / "ipwatch.toml"))
    broken = tmp_path / "broken.toml"
    broken.write_text('interval = "30s\n')
    with pytest.raises(
        ConfigError, match=r"broken.toml: not valid TOML \(.*line 1.*\); fix the syntax there"
    ):
        load(str(broken))


def test_render_masks_url_passwords_and_round_trips() -> None:
    raw = {
        "interval": "5m",
        "accept": ["198.51.100.0/24"],
        "source": [STUN, {"kind": "http", "url": "https://user:hunter2@example.org/ip"}],
        "target": [{"kind": "pjsip", "file": "/etc/asterisk/pjsip.conf", "transports": ["t1"]}],
        "asterisk": {"ami": {"secret_file": "/etc/ipwatch/ami.secret"}},
    }
    text = render(parse(raw))
    assert "hunter2" not in text and "https://********@example.org/ip" in text
    assert 'interval = "5m"' in text and 'secret_file = "/etc/ipwatch/ami.secret"' in text
    reparsed = parse(tomllib.loads(text.replace("********", "user:hunter2")))
    assert reparsed == parse(raw)


durations = st.one_of(
    st.integers(min_value=1, max_value=10**6).map(lambda n: f"{n}ms"),
    st.integers(min_value=1, max_value=10**5).map(lambda n: f"{n}s"),
    st.integers(min_value=1, max_value=10**4).map(lambda n: f"{n}m"),
    st.integers(min_value=1, max_value=100).map(lambda n: f"{n}h"),
)


@given(durations)
def test_durations_format_back_to_the_same_length_of_time(text: str) -> None:
    seconds = parse_duration(text)
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds)


@given(
    interval=durations,
    confirm=st.integers(min_value=1, max_value=9),
    families=st.sampled_from([["ipv4"], ["ipv6"], ["ipv4", "ipv6"]]),
    accept=st.lists(st.ip_addresses().map(lambda a: str(ipaddress.ip_network(a))), max_size=3),
    ports=st.lists(st.integers(min_value=1, max_value=65535), min_size=1, max_size=3),
)
def test_rendered_config_parses_back_to_the_same_config(
    interval: str, confirm: int, families: list[str], accept: list[str], ports: list[int]
) -> None:
    raw = {
        "interval": interval,
        "confirm": confirm,
        "families": families,
        "accept": accept,
        "source": [
            {
                "kind": "stun",
                "servers": [f"[::1]:{p}" for p in ports] + [f"h.example:{p}" for p in ports],
            }
        ],
    }
    config = parse(raw)
    assert parse(tomllib.loads(render(config))) == config


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("stun.example.org", HostPort("stun.example.org")),
        ("stun.example.org:3478", HostPort("stun.example.org", 3478)),
        ("192.0.2.1:53", HostPort("192.0.2.1", 53)),
        ("::1", HostPort("::1")),
        ("[2001:db8::1]:3478", HostPort("2001:db8::1", 3478)),
    ],
)
def test_host_port_forms(text: str, expected: HostPort) -> None:
    assert parse_host_port(text) == expected
    assert parse_host_port(str(expected)) == expected


def test_config_path_is_not_a_key() -> None:
    assert any("path: unknown key" in p for p in problems({"source": [STUN], "path": "/x"}))


def test_default_path_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IPWATCH_CONFIG", raising=False)
    assert config_module.default_path() == "/etc/ipwatch/ipwatch.toml"
    monkeypatch.setenv("IPWATCH_CONFIG", "/tmp/x.toml")
    assert config_module.default_path() == "/tmp/x.toml"


def test_config_is_frozen() -> None:
    config: Config = parse({"source": [STUN]})
    with pytest.raises(AttributeError):
        config.confirm = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("https://me:p@ss@host/ip", "https://********@host/ip"),
        ("https://TOKEN@host/ip", "https://********@host/ip"),
        ("see http://a:b@x/ and https://c@y/z", "see http://********@x/ and https://********@y/z"),
        ("https://host/ip?next=a@b", "https://host/ip?next=a@b"),
        ("no url here", "no url here"),
    ],
)
def test_url_credentials_are_masked(text: str, shown: str) -> None:
    assert mask_userinfo(text) == shown


def test_a_family_no_source_can_observe_is_an_error() -> None:
    v4_only = [
        {"kind": "stun", "servers": ["192.0.2.1"]},
        {"kind": "dns-echo", "provider": "akamai"},
    ]
    found = problems({"families": ["ipv4", "ipv6"], "source": v4_only})
    assert found == [
        "/etc/ipwatch/ipwatch.toml: families: no source can observe ipv6; add a source for it or"
        " remove it"
    ]
    both = parse({"families": ["ipv4", "ipv6"], "source": [*v4_only, STUN]})
    assert len(both.sources) == 3


def test_the_service_user_in_the_advice_is_the_shipped_units() -> None:
    unit = (Path(__file__).parents[2] / "contrib/systemd/ipwatch.service").read_text()
    settings = dict(line.split("=", 1) for line in unit.splitlines() if line[:1].isalpha())
    assert settings["User"] == settings["Group"] == config_module.SERVICE_USER


def test_rules_across_keys_are_reported_with_the_per_key_problems() -> None:
    found = problems(
        {
            "interval": "soon",
            "quorum": 3,
            "families": ["ipv4", "ipv4"],
            "source": [STUN, {"kind": "stun", "servers": ["stun.example.org:99999"]}],
            "asterisk": {"drain": 5, "ami": {"host": "192.0.2.1"}},
        }
    )
    assert [p.removeprefix("/etc/ipwatch/ipwatch.toml: ").split(":")[0] for p in found] == [
        "source[1].servers[0]",
        "interval",
        "asterisk.drain",
        "quorum",
        "asterisk.ami.host",
        "families",
    ]
    assert "quorum: 3 sources must agree but only 2 are configured" in found[3]
