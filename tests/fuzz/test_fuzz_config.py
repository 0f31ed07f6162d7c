"""Config validation on arbitrary TOML data: a Config or a ConfigError, never anything else.

Two generators: free-form tables whose keys come mostly from the schema's own vocabulary (so the
data gets past the unknown-key check and into the converters), and the every-key sample config
with values replaced at random paths (so each converter sees every kind of TOML value).
"""

from __future__ import annotations

import copy
import datetime
import math
import tomllib
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from ipwatch import config
from ipwatch.errors import ConfigError
from tests.fuzz import fuzz
from tests.fuzz.sample_config import EVERY_KEY, leaves

PATHS = [path for path, _ in leaves(EVERY_KEY)]
VOCABULARY = sorted({part for path in PATHS for part in path.replace("]", "").split(".")})
KINDS = sorted({table["kind"] for key in ("source", "ddns") for table in EVERY_KEY[key]})

toml_scalars = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["30s", "0s", "500ms", "1e9h", "9" * 400 + "h", "majority", "ipv4", "::1"]),
    st.sampled_from(["127.0.0.1:0", "[::1]:99999", "0.0.0.0/0", "http://u:p@h/", "auto", "ami"]),
    st.integers(),
    st.floats(),
    st.booleans(),
    st.datetimes(timezones=st.none() | st.just(datetime.UTC)),
    st.dates(),
    st.times(),
)
toml_values = st.recursive(
    toml_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(VOCABULARY) | st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
kinded_tables = st.lists(
    st.builds(
        lambda kind, rest: {**rest, "kind": kind},
        st.sampled_from(KINDS) | toml_values,
        st.dictionaries(st.sampled_from(VOCABULARY), toml_values, max_size=6),
    ),
    max_size=3,
)
free_form = st.dictionaries(
    st.sampled_from(VOCABULARY) | st.text(max_size=8),
    toml_values | kinded_tables,
    max_size=8,
)


@st.composite
def mutated(draw: st.DrawFn) -> dict[str, Any]:
    """The sample config with one to three values replaced, or their keys removed."""
    raw = copy.deepcopy(EVERY_KEY)
    for path in draw(st.lists(st.sampled_from(PATHS), min_size=1, max_size=3)):
        _replace(raw, path, draw(st.none() | toml_values))
    return raw


def _replace(raw: Any, path: str, value: Any) -> None:
    *parents, last = [
        int(part[1:-1]) if part.startswith("[") else part
        for part in path.replace("[", ".[").split(".")
    ]
    try:
        node = raw
        for part in parents:
            node = node[part]
        if value is None:
            del node[last]
        else:
            node[last] = value
    except (KeyError, IndexError, TypeError):
        pass  # an earlier replacement removed or reshaped a parent


def check(raw: dict[str, Any]) -> None:
    try:
        parsed = config.parse(raw, "f.toml")
    except ConfigError as error:
        assert error.messages
        for message in error.messages:
            assert message.startswith("f.toml: ") and "\n" not in message, message
        return
    # What is accepted renders to TOML that reads back as the same config (`config check`).
    rendered = config.render(parsed)
    assert config.parse(tomllib.loads(rendered), "f.toml") == parsed or "****" in rendered
    for seconds in (parsed.interval, parsed.fast_confirm, parsed.hooks.timeout):
        assert math.isfinite(seconds) and seconds > 0


@fuzz
@given(free_form)
@example({"interval": "9" * 400 + "h"})
@example({"source": [{"kind": "stun", "servers": ["h:²"]}]})
def test_any_toml_data_is_a_config_or_a_config_error(raw: dict[str, Any]) -> None:
    check(raw)


@fuzz
@given(mutated())
@example(EVERY_KEY)  # dns-echo's `server` once rendered as a [source.server] table
@example(EVERY_KEY | {"interval": "9" * 400 + "h"})
@example(EVERY_KEY | {"hooks": {"timeout": "1e3s"}})
@example(EVERY_KEY | {"target": [{"kind": "pjsip", "file": "p\U00010000\x7f.conf"}]})
@example(EVERY_KEY | {"asterisk": {"ami": {"\n": 1}}})
def test_the_full_sample_with_values_replaced(raw: dict[str, Any]) -> None:
    check(raw)
