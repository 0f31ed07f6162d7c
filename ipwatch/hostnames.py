"""Host-name configurations: PJSIP `external_*_address = pbx.example.org`, chan_sip `externhost`.

ipwatch does not edit such a value. Asterisk resolves the name itself, through the system
resolver, and keeps what it found: dnsmgr refreshes it every `refreshinterval` (300 s by
default) when dnsmgr.conf enables it, and otherwise only a reload of a *changed* pjsip.conf
resolves it again; chan_sip re-resolves externhost lazily, every `externrefresh` seconds
(LAB.md, "Host names, dnsmgr and reloads"). So after a change ipwatch waits until the name
resolves to the confirmed address (the DDNS update is on its way: `dns_wait`), then makes
Asterisk look again at once: `dnsmgr refresh <name>`, or the file's mtime moved and
`module reload res_pjsip.so`, or `sip reload`.

The judging is pure; resolving, waiting and refreshing take their I/O as arguments.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ipwatch.addresses import Family
from ipwatch.asterisk import control
from ipwatch.asterisk.link import AsteriskError, Link
from ipwatch.asterisk.targets import HostName, TargetPlan
from ipwatch.state import timestamp

Resolve = Callable[[str, Family], frozenset[str]]
POLL_SECONDS = 0.5
CHAN_SIP = "sip reload"


@dataclass(frozen=True)
class Wanted:
    host: HostName
    address: str

    @property
    def by_pjsip(self) -> bool:
        """PJSIP shows only the name: whether it resolved again is ipwatch's own record."""
        return self.host.refresh != CHAN_SIP


def system_resolve(name: str, family: Family) -> frozenset[str]:
    """What the system resolver (getaddrinfo: /etc/hosts, then DNS) says, as Asterisk asks it."""
    kind = socket.AF_INET if family == "ipv4" else socket.AF_INET6
    try:
        found = socket.getaddrinfo(name, None, kind, socket.SOCK_DGRAM)
    except (socket.gaierror, UnicodeError):
        return frozenset()
    return frozenset(str(info[4][0]) for info in found)


def resolve_all(
    names: Sequence[Wanted], resolve: Resolve = system_resolve
) -> dict[str, frozenset[str]]:
    """What each name resolves to now, by name."""
    return {w.host.name: resolve(w.host.name, w.host.family) for w in names}


def wanted(targets: Iterable[TargetPlan], addresses: Mapping[Family, str]) -> list[Wanted]:
    """Each host name of the targets, with the address it should resolve to."""
    found: dict[str, Wanted] = {}
    for target in targets:
        for host in target.names:
            address = addresses.get(host.family)
            if address is not None:
                found.setdefault(host.name, Wanted(host, address))
    return list(found.values())


def judge(
    names: Sequence[Wanted], resolved: Mapping[str, frozenset[str]], state: Mapping[str, Any]
) -> list[str]:
    """What stands between each name and Asterisk running its address: nothing, a DNS record
    still on the old address, or (PJSIP) no refresh since the record moved."""
    problems: list[str] = []
    for want in names:
        name = want.host.name
        seen = resolved.get(name, frozenset())
        if want.address not in seen:
            now = ", ".join(sorted(seen)) or "nothing"
            problems.append(f"{name} resolves to {now}, not {want.address}")
        elif want.by_pjsip and (state.get(name) or {}).get("refreshed") != want.address:
            problems.append(
                f"Asterisk has not resolved {name} again since it moved to {want.address}"
            )
    return problems


def wait(
    names: Sequence[Wanted],
    resolve: Resolve,
    seconds: float,
    progress: Callable[[str], None],
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, frozenset[str]]:
    """Resolve every name until each gives its address or `seconds` pass; the last answers."""
    end = clock() + seconds
    resolved = resolve_all(names, resolve)
    while True:
        late = [w for w in names if w.address not in resolved[w.host.name]]
        if not late or clock() >= end:
            return resolved
        until = time.strftime("%H:%M:%S", time.localtime(time.time() + end - clock()))
        progress(
            "waiting for "
            + ", ".join(f"{w.host.name} to resolve to {w.address}" for w in late)
            + f" until {until}"
        )
        sleep(min(POLL_SECONDS, max(0.0, end - clock())))
        for want in late:
            resolved[want.host.name] = resolve(want.host.name, want.host.family)


def refresh(link: Link, want: Wanted) -> str:
    """Make Asterisk resolve a PJSIP name again now; return what did it.

    dnsmgr's state is asked, not assumed: `dnsmgr refresh` on a disabled dnsmgr does nothing,
    and a reload of an unchanged pjsip.conf does nothing either (its mtime must move). PJSIP
    before 16.18 / 18.4 re-reads on a reload but keeps the old addresses: only a restart helps.
    """
    status = link.command("dnsmgr status", control.COMMAND_TIMEOUT).lower()
    if "enabled" in status and "disabled" not in status:
        command = f"dnsmgr refresh {want.host.name}"
        link.command(command, control.COMMAND_TIMEOUT)
        link.command("pjsip send register *all", control.COMMAND_TIMEOUT)
        return command
    version = link.version()
    if not control.pjsip_reload_applies(version):
        raise AsteriskError(
            f"Asterisk {version} resolves {want.host.name} again only when it restarts (dnsmgr"
            " is off); restart it, or enable dnsmgr in dnsmgr.conf"
        )
    try:
        os.utime(want.host.file)
    except OSError as error:
        raise AsteriskError(
            f"cannot move {want.host.file}'s mtime ({error.strerror}), which a reload needs to"
            " resolve the name again; let ipwatch's user write it, or enable dnsmgr"
        ) from None
    control.reload(link, {"pjsip"})
    return "module reload res_pjsip.so"


def record(
    before: Mapping[str, Any],
    names: Sequence[Wanted],
    resolved: Mapping[str, frozenset[str]],
    refreshed: Iterable[str],
    now: float,
    dns_wait: float,
) -> dict[str, Any]:
    """The state's `names`: per name what it should and does resolve to, since when they
    disagree (and when `status` starts to warn), and the address Asterisk last re-resolved."""
    done = set(refreshed)
    state: dict[str, Any] = {}
    for want in names:
        name = want.host.name
        old = before.get(name) or {}
        seen = sorted(resolved.get(name, frozenset()))
        entry: dict[str, Any] = {"address": want.address, "resolves": seen}
        if want.address not in seen:
            since = old.get("since_seconds") if old.get("address") == want.address else None
            since = since or now
            entry.update(
                since_seconds=since, since=timestamp(since), warn_after=timestamp(since + dns_wait)
            )
        if want.by_pjsip:
            entry["refreshed"] = want.address if name in done else old.get("refreshed")
        state[name] = entry
    return state
