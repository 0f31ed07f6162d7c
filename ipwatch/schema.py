"""Check plain TOML data against frozen dataclasses, collecting every problem with its key path.

A config section is a frozen dataclass: its field names are the TOML keys, a field without a
default is required, and the annotation says what is accepted. `Annotated[T, Parser(...)]`
attaches a conversion for values that need more than a type check (durations, CIDRs, host:port).
Every problem is appended to `errors` as `path: what is wrong; what to do`, so that a config with
five mistakes is fixed in one edit, not five.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import json
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar, Union

T = TypeVar("T")


@dataclass(frozen=True)
class Parser:
    """Converts one raw value; `convert` raises ValueError with a sentence fragment on bad input."""

    convert: Callable[[Any], Any]


@dataclass(frozen=True)
class NonEmpty:
    """Marks a list that must hold at least one item: `Annotated[tuple[X, ...], NonEmpty()]`."""


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    if not _BARE_KEY.fullmatch(key):
        # A quoted TOML key may hold anything, a newline even: shown quoted, an error stays
        # one line and cannot forge another.
        key = json.dumps(key)
    return f"{path}.{key}" if path else key


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_LONGEST_DURATION = 365 * 24 * 3600.0


def parse_duration(value: Any) -> float:
    """Given "500ms", "30s", "5m" or "1h", return seconds; a bare number is not accepted."""
    if not isinstance(value, str):
        raise ValueError(f'expected a duration like "30s", got {value!r}')
    match = _DURATION.fullmatch(value.strip())
    if not match:
        raise ValueError(f'{value!r} is not a duration; write it like "500ms", "30s", "5m" or "1h"')
    seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds <= 0:
        raise ValueError(f"{value!r} must be longer than zero")
    if seconds > _LONGEST_DURATION:
        # Huge values overflow timedelta in the scheduler and turn infinite past 1e308.
        raise ValueError(f'{value!r} is longer than a year; write at most "8760h"')
    return seconds


def format_duration(seconds: float) -> str:
    for unit in ("h", "m", "s"):
        amount = seconds / _UNIT_SECONDS[unit]
        if amount >= 1 and amount == int(amount):
            return f"{int(amount)}{unit}"
    return f"{round(seconds * 1000, 3):g}ms"


@dataclass(frozen=True)
class HostPort:
    """A server as host[:port] or [v6]:port; port None means the protocol's default."""

    host: str
    port: int | None = None

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"

    def with_default_port(self, port: int) -> tuple[str, int]:
        return self.host, self.port if self.port is not None else port


_HOSTNAME = re.compile(r"(?=.{1,253}$)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?\.?)+")


def parse_host_port(value: Any) -> HostPort:
    """Given "host", "host:port", "1.2.3.4:port", "::1" or "[::1]:port", return a HostPort."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f'expected "host" or "host:port", got {value!r}')
    text = value.strip()
    port_text: str | None = None
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f'{text!r} is not "[IPv6]:port"')
        port_text = rest[1:] if rest else None
        _require_ipv6(host, text)
    elif text.count(":") > 1:
        host = text
        _require_ipv6(host, text)
    else:
        host, sep, port_text_or_empty = text.partition(":")
        port_text = port_text_or_empty if sep else None
        if not _HOSTNAME.fullmatch(host):
            raise ValueError(f"{host!r} is not a valid host name or address")
    return HostPort(host, None if port_text is None else _parse_port(port_text, text))


def _require_ipv6(host: str, text: str) -> None:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        raise ValueError(
            f'{text!r} is not an IPv6 address; write IPv6 servers as "[addr]:port"'
        ) from None


def _parse_port(port_text: str, text: str) -> int:
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"{text!r} has an invalid port; use a number from 1 to 65535")
    return int(port_text)


def parse_network(value: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if not isinstance(value, str):
        raise ValueError(f'expected a CIDR like "198.51.100.0/24", got {value!r}')
    try:
        return ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise ValueError(f'{value!r} is not a CIDR; write it like "198.51.100.0/24"') from None


def parse_positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"expected a whole number of at least 1, got {value!r}")
    return value


_DURATION_PARSER = Parser(parse_duration)
Duration = Annotated[float, _DURATION_PARSER]
Server = Annotated[HostPort, Parser(parse_host_port)]
Network = Annotated[ipaddress.IPv4Network | ipaddress.IPv6Network, Parser(parse_network)]
PositiveInt = Annotated[int, Parser(parse_positive_int)]
Servers = Annotated[tuple[Server, ...], NonEmpty()]


def build(
    cls: type[T],
    raw: Any,
    path: str,
    errors: list[str],
    *,
    handled: Mapping[str, Any] | None = None,
    also_allowed: tuple[str, ...] = (),
) -> T | None:
    """Given a TOML table, return an instance of the dataclass `cls`, or None after adding errors.

    `handled` supplies values the caller already converted itself (fields of irregular shape);
    `also_allowed` names keys the caller reads elsewhere, so they are not reported as unknown.
    """
    if not isinstance(raw, Mapping):
        errors.append(f"{path or 'the file'}: expected a table, got {_describe(raw)}")
        return None
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = field_hints(cls)
    keys = [name for name, f in fields.items() if f.metadata.get("toml", True)]
    report_unknown_keys(raw, [*keys, *also_allowed], path, errors)
    values: dict[str, Any] = dict(handled or {})
    failed = False
    for name, field in fields.items():
        if name in values:
            continue
        if name not in raw:
            if (
                field.default is dataclasses.MISSING
                and field.default_factory is dataclasses.MISSING
            ):
                errors.append(f"{join(path, name)}: missing; this key is required")
                failed = True
            continue
        before = len(errors)
        values[name] = convert(hints[name], raw[name], join(path, name), errors)
        failed |= len(errors) > before
    if failed:
        return None
    try:
        return cls(**values)
    except ValueError as error:
        # A dataclass's __post_init__ checks rules that span keys ("provider or server, not both").
        errors.append(f"{path or 'the file'}: {error}")
        return None


def salvage(
    cls: type[T], raw: Mapping[str, Any], *, handled: Mapping[str, Any] | None = None
) -> T | None:
    """`cls` built from the valid keys of `raw` alone, each invalid one left at its default (a
    sub-table salvaged the same way); None if even that fails.

    After `build` reported a table's errors, rules spanning several keys ("quorum larger than
    the number of sources") can still be checked on this, so they are reported in the same run.
    """
    hints = field_hints(cls)
    values: dict[str, Any] = dict(handled or {})
    for item in dataclasses.fields(cls):  # type: ignore[arg-type]
        name = item.name
        if name in values or name not in raw:
            continue
        scratch: list[str] = []
        value = convert(hints[name], raw[name], name, scratch)
        if not scratch:
            values[name] = value
        elif dataclasses.is_dataclass(hints[name]) and isinstance(raw[name], Mapping):
            part = salvage(hints[name], raw[name])
            if part is not None:
                values[name] = part
    try:
        return cls(**values)
    except (TypeError, ValueError):  # a required key is invalid, or a rule across keys fails
        return None


def field_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


def is_duration(hint: Any) -> bool:
    return typing.get_origin(hint) is Annotated and _DURATION_PARSER in hint.__metadata__


def report_unknown_keys(
    raw: Mapping[str, Any], allowed: list[str], path: str, errors: list[str]
) -> None:
    for key in raw:
        if key in allowed:
            continue
        close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
        hint = (
            f'did you mean "{close[0]}"?' if close else f"known keys: {', '.join(sorted(allowed))}"
        )
        errors.append(f"{join(path, key)}: unknown key; {hint}")


def convert(hint: Any, value: Any, path: str, errors: list[str]) -> Any:
    """Check or convert one value against a type hint, appending an error when it does not fit."""
    origin = typing.get_origin(hint)
    if origin is Annotated:
        return _convert_annotated(hint, value, path, errors)
    if dataclasses.is_dataclass(hint):
        return build(hint, value, path, errors)  # type: ignore[arg-type]
    if origin is Literal:
        choices = typing.get_args(hint)
        if value in choices:
            return value
        errors.append(f"{path}: {value!r} is not one of {', '.join(repr(c) for c in choices)}")
        return None
    if origin is tuple:
        return _convert_list(typing.get_args(hint)[0], value, path, errors)
    if origin in (Union, types.UnionType):
        # Optional keys: TOML has no null, so None only ever comes from the default.
        inner = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        return convert(inner[0], value, path, errors)
    if _is_instance(value, hint):
        return value
    errors.append(f"{path}: expected {_NAMES.get(hint, hint)}, got {_describe(value)}")
    return None


def _convert_annotated(hint: Any, value: Any, path: str, errors: list[str]) -> Any:
    metadata = hint.__metadata__
    if NonEmpty() in metadata:
        if value == []:
            errors.append(f"{path}: empty; list at least one")
            return None
        return convert(typing.get_args(hint)[0], value, path, errors)
    parser = next(m for m in metadata if isinstance(m, Parser))
    try:
        return parser.convert(value)
    except ValueError as error:
        errors.append(f"{path}: {error}")
        return None


def is_table_list(hint: Any) -> bool:
    """True for `tuple[SomeDataclass, ...]`: a TOML array of tables such as [[target]]."""
    return typing.get_origin(hint) is tuple and dataclasses.is_dataclass(typing.get_args(hint)[0])


def _convert_list(
    item_hint: Any, value: Any, path: str, errors: list[str]
) -> tuple[Any, ...] | None:
    if not isinstance(value, list):
        errors.append(f"{path}: expected a list like [...], got {_describe(value)}")
        return None
    return tuple(convert(item_hint, item, join(path, i), errors) for i, item in enumerate(value))


def _is_instance(value: Any, hint: Any) -> bool:
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


_NAMES = {str: "a string", int: "a whole number", float: "a number", bool: "true or false"}


def _describe(value: Any) -> str:
    kind = {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a table",
    }.get(type(value), type(value).__name__)
    return f"{kind} ({value!r})" if not isinstance(value, dict | list) else kind
