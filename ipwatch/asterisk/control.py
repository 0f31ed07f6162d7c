"""Make Asterisk use the new files with the least disruption its version allows, and prove it.

Policy (pure, `choose_action`): PJSIP on Asterisk >= 16.18, >= 18.4 or >= 19 applies new
`external_*` values on `module reload res_pjsip.so`, even with allow_reload=no; older versions (and
all of 17.x) show the new strings after a reload but keep using the old addresses, so only a
restart helps. chan_sip re-reads externaddr on `sip reload`.

Doing it (`tell`): reload, or drain active calls and `core restart now`; then verify that
`pjsip show transport` / `sip show settings` shows every new value. The caller rolls the files
back and calls `tell` again when verification fails.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Mapping
from typing import Literal

from ipwatch.asterisk.link import AsteriskError, Link

Action = Literal["reload", "restart", "none"]
Clock = Callable[[], float]
Sleep = Callable[[float], None]
Progress = Callable[[str], None]

COMMAND_TIMEOUT = 30.0
POLL_SECONDS = 5.0
BOOT_TIMEOUT = 120.0
VERIFY_POLL = 0.05
# chan_sip with 5,000 peers showed the new externaddr 30-50 ms after `sip reload` returned
# (Asterisk 20.20.1, 6-12 stale reads); a hundred times that allows for a slow Raspberry Pi.
VERIFY_DEADLINE = 5.0
_VERSION = re.compile(r"(\d+)\.(\d+)")
_CALLS = re.compile(r"^(\d+)(?: of \d+ max)? active calls?\b", re.MULTILINE)
_ROW = re.compile(r"^\s*(\S+)\s+:\s?(.*?)\s*$", re.MULTILINE)


def version_tuple(version: str) -> tuple[int, int]:
    match = _VERSION.search(version)
    if not match:
        raise AsteriskError(f"cannot read Asterisk's version from {version[:60]!r}")
    return int(match.group(1)), int(match.group(2))


def pjsip_reload_applies(version: str) -> bool:
    """Whether `module reload res_pjsip.so` applies new external_* values on this version."""
    major, minor = version_tuple(version)
    return (major == 16 and minor >= 18) or (major == 18 and minor >= 4) or major >= 19


def choose_action(mode: str, version: str, kinds: set[str]) -> Action:
    """The least disruptive action that makes this Asterisk use the new values of `kinds`."""
    if mode in ("reload", "restart", "none"):
        return mode  # type: ignore[return-value]
    if "pjsip" in kinds and not pjsip_reload_applies(version):
        return "restart"
    return "reload"


def active_calls(link: Link) -> int:
    output = link.command("core show channels count", COMMAND_TIMEOUT)
    match = _CALLS.search(output)
    if match is None:
        raise AsteriskError(f"unexpected answer to `core show channels count`: {output[:80]!r}")
    return int(match.group(1))


def module_loaded(link: Link, module: str) -> bool:
    """Whether Asterisk runs `module` (e.g. "chan_sip.so"), from `module show like`."""
    output = link.command(f"module show like {module}", COMMAND_TIMEOUT)
    # A module that declined to load (chan_sip without sip.conf) is listed "Not Running";
    # Asterisk 12 and older have no status column at all.
    return any(
        line.split()[:1] == [module] and "Not Running" not in line for line in output.splitlines()
    )


def started_at(link: Link) -> float:
    """The earliest Asterisk may have last started (or restarted), as a time.time() value.

    The uptime is in whole seconds, so the start may lie up to a second earlier than now minus
    the uptime: counting from that earlier moment, a file changed just after the start is never
    taken for one Asterisk read at its start."""
    output = link.command("core show uptime seconds", COMMAND_TIMEOUT)
    match = re.search(r"^System uptime:\s*(\d+)", output, re.MULTILINE)
    if match is None:
        raise AsteriskError(f"unexpected answer to `core show uptime seconds`: {output[:80]!r}")
    return time.time() - int(match.group(1)) - 1


def reload(link: Link, kinds: set[str]) -> None:
    if "pjsip" in kinds:
        output = link.command("module reload res_pjsip.so", COMMAND_TIMEOUT)
        if "reloaded successfully" not in output:
            raise AsteriskError(f"Asterisk did not reload res_pjsip.so: {output.strip()[:120]}")
        # Registrars learn the new Contact only when we register again.
        link.command("pjsip send register *all", COMMAND_TIMEOUT)
    if "chan_sip" in kinds:
        link.command("sip reload", COMMAND_TIMEOUT)


def drain_and_restart(
    connect: Callable[[], Link],
    drain: float,
    progress: Progress,
    clock: Clock = time.monotonic,
    sleep: Sleep = time.sleep,
) -> Link:
    """Wait until no call is active (or `drain` runs out), restart, and return a fresh link.

    Calls to the old public address are already broken; the ones worth waiting for are LAN calls.
    `core restart gracefully` / `when convenient` are never used: they block the session and
    may never fire.
    """
    link = connect()
    deadline = clock() + drain
    calls = active_calls(link)
    while calls and clock() < deadline:
        until = time.strftime("%H:%M:%S", time.localtime(time.time() + deadline - clock()))
        progress(f"waiting for {calls} call{'s' if calls != 1 else ''} until {until}")
        sleep(min(POLL_SECONDS, max(0.0, deadline - clock())))
        calls = active_calls(link)
    with contextlib.suppress(AsteriskError):  # Asterisk closes the connection as it goes down
        link.command("core restart now", COMMAND_TIMEOUT)
    link.close()
    return _reconnect(connect, clock, sleep)


def _reconnect(connect: Callable[[], Link], clock: Clock, sleep: Sleep) -> Link:
    deadline = clock() + BOOT_TIMEOUT
    while True:
        try:
            link = connect()
            link.command("core show version", COMMAND_TIMEOUT)
            return link
        except AsteriskError:
            if clock() > deadline:
                raise AsteriskError(
                    f"Asterisk did not come back within {BOOT_TIMEOUT:.0f} s of `core restart now`"
                ) from None
            sleep(0.2)


def shown_values(link: Link, kind: str, section: str) -> dict[str, str]:
    """What Asterisk reports for a transport (pjsip) or [general] (chan_sip), keys lower-case."""
    if kind == "pjsip":
        output = link.command(f"pjsip show transport {section}", COMMAND_TIMEOUT)
        if "Unable to find object" in output:
            return {}
        return {key.lower(): value for key, value in _ROW.findall(output)}
    output = link.command("sip show settings", COMMAND_TIMEOUT)
    return {
        key.strip().lower(): value
        for key, value in re.findall(r"^\s*([^:\n]+?):\s*(.*?)\s*$", output, re.M)
    }


def mismatches(link: Link, kind: str, expected: Mapping[str, Mapping[str, str]]) -> list[str]:
    """Each expected value Asterisk does not show, as "transport key: shows X"."""
    problems: list[str] = []
    for section, values in expected.items():
        shown = shown_values(link, kind, section)
        for key, value in values.items():
            seen = _shown(shown, kind, key)
            if seen is None or host_of(seen) != value:
                runs = f"still runs {seen}" if seen else "shows no value"
                problems.append(f"{section} {key}: Asterisk {runs}, not {value}")
    return problems


def _shown(shown: Mapping[str, str], kind: str, key: str) -> str | None:
    if kind == "pjsip":
        return shown.get(key)
    # chan_sip prints "Externaddr: 203.0.113.7:0" in `sip show settings`.
    return shown.get("externaddr") or shown.get("externip")


def settle(
    link: Link,
    expected: Mapping[str, Mapping[str, Mapping[str, str]]],
    deadline: float = VERIFY_DEADLINE,
    clock: Clock = time.monotonic,
    sleep: Sleep = time.sleep,
) -> list[str]:
    """Read Asterisk's values until they match `expected` (kind -> section -> key -> value) or
    `deadline` seconds pass; return what still differs, or [] once everything matches.

    A reload is not always done when the command returns: chan_sip's `sip reload` only queues
    the re-read, and with 5,000 peers `sip show settings` still shows the old value for several
    milliseconds afterwards (LAB.md). A single read would roll back a good change.
    """
    end = clock() + deadline
    while True:
        problems = [p for kind, values in expected.items() for p in mismatches(link, kind, values)]
        if not problems or clock() >= end:
            return problems
        sleep(VERIFY_POLL)


def host_of(value: str) -> str:
    """The address of an `address:port` value (chan_sip allows one), else the value."""
    host, colon, port = value.rpartition(":")
    return host if colon and port.isdigit() and ":" not in host else value
