"""Python plugins: source kinds and DDNS updaters found through entry points.

Two entry-point groups, `ipwatch.sources` and `ipwatch.updaters`, map a kind's name to a module
(or `module:object`) exposing that kind's interface (see ipwatch.sources and ipwatch.ddns).
ipwatch registers its own kinds the same way in pyproject.toml, so a built-in kind and a
third-party one are found, checked and reported alike.

A plugin that cannot be imported, or lacks part of its interface, is logged once (one line naming
it and the distribution that installed it) and left out; a config that uses its kind gets a config
error saying why. A broken plugin never stops ipwatch.

Entry points are read only when a config is loaded (`ipwatch status` never loads one), and once
per process: installing a plugin takes a restart of the daemon.
"""

from __future__ import annotations

import functools
import logging
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

SOURCES = "ipwatch.sources"
UPDATERS = "ipwatch.updaters"

# What a kind's module must have to be usable, per group.
_INTERFACE = {SOURCES: ("Options", "ask"), UPDATERS: ("Options", "update")}
_OWN_PACKAGE = "ipwatch"

log = logging.getLogger("ipwatch")


class Kinds:
    """The kinds of one group: each usable one's entry point, and why the others are not usable.

    Third-party plugins are imported as soon as the group is read, so that a broken one is
    reported even when no config uses it; ipwatch's own modules only when a config uses them,
    which keeps loading a config cheap.
    """

    def __init__(self, group: str) -> None:
        self.group = group
        self.entry_points: dict[str, EntryPoint] = {}
        self.broken: dict[str, str] = {}
        self._loaded: dict[str, Any] = {}
        self._lock = threading.Lock()

    @property
    def names(self) -> list[str]:
        return list(self.entry_points)

    def load(self, kind: Any) -> Any | None:
        """The module (or object) of `kind`, imported once; None if unknown or broken."""
        if not isinstance(kind, str):  # TOML may hold anything here, a list even
            return None
        with self._lock:
            if kind in self._loaded:
                return self._loaded[kind]
            entry_point = self.entry_points.get(kind)
            if entry_point is None:
                return None
            try:
                self._loaded[kind] = _load(entry_point, self.group)
            except _Incomplete as error:
                self._report(entry_point, str(error))
            except Exception as error:  # any failure of foreign code must leave ipwatch running
                self._report(entry_point, f"failed to import ({type(error).__name__}: {error})")
            return self._loaded.get(kind)

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
        if not self.entry_points:
            return (
                f"{kind!r} is not {noun}, and none is registered: ipwatch's entry points are"
                " missing, so reinstall it (pip install .)"
            )
        known = ", ".join(f'"{name}"' for name in self.entry_points)
        return f"{kind!r} is not {noun}; use one of {known}"


@functools.cache
def kinds(group: str) -> Kinds:
    """Read the entry points of `group` (once per process) and import the third-party ones."""
    from importlib.metadata import entry_points

    found = Kinds(group)
    # ipwatch's own entry points first, so that a plugin cannot replace a built-in kind.
    ordered = sorted(entry_points(group=group), key=lambda ep: not _own(ep))
    for entry_point in ordered:
        name = entry_point.name
        if name in found.entry_points:
            log.warning(
                "plugin %s = %s (%s) ignored: the kind is already provided by %s",
                name,
                entry_point.value,
                _describe(entry_point),
                _describe(found.entry_points[name]),
            )
            continue
        found.entry_points[name] = entry_point
    for name in [name for name, ep in found.entry_points.items() if not _own(ep)]:
        found.load(name)
    return found


class _Incomplete(Exception):
    """A plugin loaded but lacks part of the interface."""


def _load(entry_point: EntryPoint, group: str) -> Any:
    loaded = entry_point.load()
    missing = [name for name in _INTERFACE[group] if not hasattr(loaded, name)]
    if missing:
        raise _Incomplete(f"lacks {' and '.join(missing)}")
    return loaded


def _own(entry_point: EntryPoint) -> bool:
    # By module, not by distribution: reading a distribution's name parses its whole METADATA
    # (README included), which costs more than everything else here.
    return entry_point.module.partition(".")[0] == _OWN_PACKAGE


def _describe(entry_point: EntryPoint) -> str:
    dist = entry_point.dist
    if dist is None:
        return f"entry point {entry_point.group}:{entry_point.name}"
    return f"{entry_point.group} entry point of {dist.name} {dist.version}"
