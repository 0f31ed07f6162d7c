"""Sources of the public address: one module per kind, all of the same shape.

A kind's module has:
- `Options`: a frozen dataclass of its own config keys (checked by ipwatch.schema),
- `ask(options, family, timeout) -> str`: ask once, return the address as text, or raise
  SourceError with one sentence saying what went wrong, and optionally
- `serves(options, family) -> bool`: False when the source can never observe that family (an
  IPv4-only echo service), so it is left out of that family's rounds instead of failing each one.

Modules import their heavy dependencies (dnspython) inside `ask`, so that loading the config or
running `ipwatch status` stays cheap.

Kinds are found through ipwatch.plugins: the built-in ones from its table (they are registered
in pyproject.toml too, exactly as a third-party plugin registers its own `ipwatch.sources` entry
points), the others through the entry points.
"""

from __future__ import annotations

from typing import Any

from ipwatch import plugins
from ipwatch.addresses import Family

# Kinds that report the address of this host or its router rather than what the Internet sees;
# when they disagree with an outside source, the router sits behind another NAT (CGNAT).
LOCAL_KINDS = frozenset({"interface", "natpmp", "upnp"})


def kinds() -> plugins.Kinds:
    return plugins.kinds(plugins.SOURCES)


def kind_module(kind: str) -> Any:
    """The module of a kind the loaded config uses (config loading has refused other kinds)."""
    return kinds().load(kind)


def serves(kind: str, options: Any, family: Family) -> bool:
    check = getattr(kind_module(kind), "serves", None)
    return check is None or bool(check(options, family))
