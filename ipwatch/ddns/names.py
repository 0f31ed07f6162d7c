"""Domain names in the updaters' config keys: checked when the config loads, kept in one form."""

from __future__ import annotations

import re
from typing import Annotated, Any

from ipwatch.schema import Parser

_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?")


def parse_domain(value: Any) -> str:
    """Given "PBX.Example.com." or "pbx.example.com", return "pbx.example.com" (lower case,
    no final dot); ValueError for anything that is not a domain name of two labels or more."""
    name = parse_name(value)
    if "." not in name:
        raise ValueError(f'{value!r} is not fully qualified; write it like "pbx.example.com"')
    return name


def parse_name(value: Any) -> str:
    """A DNS name of one label or more (a TSIG key's name), in lower case without a final dot."""
    if not isinstance(value, str):
        raise ValueError(f'expected a domain name like "pbx.example.com", got {value!r}')
    name = value.strip().lower().removesuffix(".")
    labels = name.split(".")
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise ValueError(
            f'{value!r} is not a domain name; write it like "pbx.example.com" (international'
            " names in their xn-- form)"
        )
    return name


def within(name: str, zone: str) -> bool:
    return name == zone or name.endswith(f".{zone}")


Hostname = Annotated[str, Parser(parse_domain)]
DnsName = Annotated[str, Parser(parse_name)]
