"""Python plugins: source kinds and DDNS updaters found through entry points.

Two entry-point groups, `ipwatch.sources` and `ipwatch.updaters`, map a kind's name to a module
(or `module:object`) exposing that kind's interface (see ipwatch.sources and ipwatch.ddns).
ipwatch registers its own kinds the same way in pyproject.toml, but finds them through the table
BUILT_IN below: reading entry points means importlib.metadata, about 2.7 MB of a daemon that
should stay under 30 MB, for nothing when a config names only built-in kinds.

Entry points are read when a config names a kind that is not built in, once per process (so
installing a plugin takes a restart of the daemon); `ipwatch status` never reads them. Then
every third-party plugin is imported: one that cannot be, or lacks part of its interface, is
logged once (one line naming it and the distribution that installed it) and left out, and a
config that uses its kind gets a config error saying why. A broken plugin never stops ipwatch.
"""

from __future__ import annotations

import functools
import importlib
import logging
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

SOURCES = "ipwatch.sources"
UPDATERS = "ipwatch.updaters"

# ipwatch's own kinds, as pyproject.toml registers them (tests/unit/test_plugins.py keeps the
# two equal). A plugin cannot replace one of them.
BUILT_IN: dict[str, dict[str, str]] = {
    SOURCES: {
        "stun": "ipwatch.sources.stun",
        "dns": "ipwatch.sources.dns",
        "dns-echo": "ipwatch.sources.dns_echo",
        "http": "ipwatch.sources.http",
        "command": "ipwatch.sources.command",
        "interface": "ipwatch.sources.interface",
        "natpmp": "ipwatch.sources.natpmp",
        "upnp": "ipwatch.sources.upnp",
    },
    UPDATERS: {
        "rfc2136": "ipwatch.ddns.rfc2136",
        "dyndns2": "ipwatch.ddns.dyndns2",
        "cloudflare": "ipwatch.ddns.cloudflare",
        "duckdns": "ipwatch.ddns.duckdns",
    },
}

# What a kind's module must have to be usable, per group.
_INTERFACE = {SOURCES: ("Options", "ask"), UPDATERS: ("Options", "update")}

log = logging.getLogger("ipwatch")


class Kinds:
    """The kinds of one group: the built-in ones, and once read, each usable plugin's entry
    point and why the others are not usable."""

    def __init__(self, group: str) -> None:
        self.group = group
        self.built_in = BUILT_IN[group]
        self.entry_points: dict[str, EntryPoint] = {}
        self.broken: dict[str, str] = {}
        self._loaded: dict[str, Any] = {}
        self._plugins_read = False
        self._lock = threading.Lock()

    @property
    def names(self) -> list[str]:
        """Every usable kind, the plugins' included."""
        with self._lock:
            self._read_plugins()
            return [*self.built_in, *self.entry_points]

    def load(self, kind: Any) -> Any | None:
        """The module (or object) of `kind`, imported once; None if unknown or broken."""
        if not isinstance(kind, str):  # TOML may hold anything here, a list even
            return None
        with self._lock:
            if kind not in self._loaded:
                if kind in self.built_in:
                    self._loaded[kind] = importlib.import_module(self.built_in[kind])
                else:
                    self._read_plugins()
            return self._loaded.get(kind)

    def _read_plugins(self) -> None:
        """Read the group's entry points (once) and import the third-party ones."""
        if self._plugins_read:
            return
        self._plugins_read = True
        from importlib.metadata import entry_points

        for entry_point in entry_points(group=self.group):
            name = entry_point.name
            if name in self.built_in:
                if entry_point.value != self.built_in[name]:  # not ipwatch's own registration
                    log.warning(
                        "plugin %s = %s (%s) ignored: the kind is built into ipwatch",
                        name,
                        entry_point.value,
                        _describe(entry_point),
                    )
                continue
            if name in self.entry_points:
                log.warning(
                    "plugin %s = %s (%s) ignored: the kind is already provided by %s",
                    name,
                    entry_point.value,
                    _describe(entry_point),
                    _describe(self.entry_points[name]),
                )
                continue
            self.entry_points[name] = entry_point
        for name in list(self.entry_points):
            self._import_plugin(name)

    def _import_plugin(self, name: str) -> None:
        entry_point = self.entry_points[name]
        try:
            self._loaded[name] = _load(entry_point, self.group)
        except _Incomplete as error:
            self._report(entry_point, str(error))
        except Exception as error:  # any failure of foreign code must leave ipwatch running
            self._report(entry_point, f"failed to import ({type(error).__name__}: {error})")

    def _report(self, entry_point: EntryPoint, problem: str) -> None:
        """Log once why a plugin is left out, and keep the reason for the config error."""
        name, origin = entry_point.name, _describe(entry_point)
        log.warning("plugin %s = %s (%s) skipped: %s", name, entry_point.value, origin, problem)
        del self.entry_points[name]
        self.broken[name] = (
            f"comes from the plugin {entry_point.value} ({origin}), which {problem}; fix or"
            " uninstall that plugin"
        )

    def unknown(self, kind: Any, noun: str) -> str:
        """The sentence for a config whose `kind` is not usable (`noun`: "a source kind")."""
        if isinstance(kind, str) and kind in self.broken:
            return f"{kind!r} {self.broken[kind]}"
        known = ", ".join(f'"{name}"' for name in self.names)
        return f"{kind!r} is not {noun}; use one of {known}"


@functools.cache
def kinds(group: str) -> Kinds:
    """The kinds of `group`, one object per process."""
    return Kinds(group)


class _Incomplete(Exception):
    """A plugin loaded but lacks part of the interface."""


def _load(entry_point: EntryPoint, group: str) -> Any:
    loaded = entry_point.load()
    missing = [name for name in _INTERFACE[group] if not hasattr(loaded, name)]
    if missing:
        raise _Incomplete(f"lacks {' and '.join(missing)}")
    return loaded


def _describe(entry_point: EntryPoint) -> str:
    dist = entry_point.dist
    if dist is None:
        return f"entry point {entry_point.group}:{entry_point.name}"
    return f"{entry_point.group} entry point of {dist.name} {dist.version}"
