"""The process that talks UPnP for the `upnp` source (run by path: `python -I upnp_worker.py`).

miniupnpc reads a device description or SOAP answer whole, however long the peer keeps sending,
and bounds only each socket operation: a LAN host that streams `rootDesc.xml` for ever would fill
ipwatch's memory, and one sending a byte a second would hold a thread and a socket for ever. So
the exchange runs here, in a process of its own with a cap on its address space, which ipwatch
kills at the source's timeout. It stays up between rounds to keep the gateway it found, so that
later rounds skip discovery (a second or more), and exits when ipwatch closes its stdin.

Requests come as JSON lines on stdin ({"url", "discover_timeout", "interface"}); for each, JSON
lines go to stdout: {"progress": text} as the exchange goes on, then {"address": text},
{"error": text} or {"no_public": true}. Only the standard library and miniupnpc are imported.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import sys
from typing import Any

# Address space allowed beyond what the process holds once miniupnpc is loaded: enough for any
# real router's description (a few kilobytes) many times over.
HEADROOM = 32 * 1024 * 1024


def main() -> int:
    import miniupnpc

    _limit_memory(HEADROOM)
    gateways: dict[str, Any] = {}
    for line in sys.stdin:
        request = json.loads(line)
        try:
            address, gateways[line] = _external_address(miniupnpc, request, gateways.get(line))
        except _Failure as failure:
            _say({"error": str(failure)})
        else:
            _say({"address": address} if address else {"no_public": True})
    return 0


def _limit_memory(headroom: int) -> None:
    """Cap the address space at its present size plus `headroom`; allocations beyond fail.

    prlimit(2), not setrlimit(2): the shipped unit's SystemCallFilter=~@resources refuses the
    latter, while prlimit64 belongs to systemd's @default set.
    """
    with open("/proc/self/statm", encoding="ascii") as statm:
        size = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    resource.prlimit(0, resource.RLIMIT_AS, (size + headroom, size + headroom))


class _Failure(Exception):
    """One sentence for the user, as the source's error."""


def _say(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def _external_address(miniupnpc: Any, request: dict[str, Any], gateway: Any) -> tuple[str, Any]:
    """The address the router reports (empty when it has none) and the gateway that told it."""
    if gateway is not None:
        # A router that restarted or moved to another port fails here: look for it again.
        with contextlib.suppress(_Failure):
            return _ask_gateway(gateway), gateway
    gateway = _find_gateway(miniupnpc, request)
    return _ask_gateway(gateway), gateway


def _find_gateway(miniupnpc: Any, request: dict[str, Any]) -> Any:
    url, interface = request["url"], request["interface"]
    gateway = miniupnpc.UPnP(
        multicastif=interface, discoverdelay=round(request["discover_timeout"] * 1000)
    )
    if url is not None:
        _say({"progress": f"reading the device description at {url}"})
        try:
            gateway.selectigd(url)
        except Exception as error:
            raise _Failure(
                f"no UPnP gateway description at {url} ({error}); check `url` and that UPnP is"
                " enabled on the router"
            ) from None
        return gateway
    _say({"progress": "discovering the router (SSDP)"})
    try:
        found = gateway.discover()
    except Exception:  # miniupnpc raises Exception("Success") when nobody answered
        found = 0
    if not found:
        where, other = (
            (f"on {interface}", "")
            if interface
            else ("on the LAN", " (or `interface` when the host has several networks)")
        )
        raise _Failure(
            f"no UPnP device answered discovery {where}; enable UPnP on the router,"
            f" or set `url`{other}"
        )
    _say({"progress": f"reading the description of the {found} device(s) found"})
    try:
        gateway.selectigd()
    except Exception as error:
        raise _Failure(
            f"discovery found {found} UPnP device(s) but no Internet gateway among them ({error})"
        ) from None
    return gateway


def _ask_gateway(gateway: Any) -> str:
    """The external address as the router's GetExternalIPAddress gives it, possibly empty."""
    _say({"progress": "waiting for GetExternalIPAddress"})
    try:
        return str(gateway.externalipaddress()).strip()
    except Exception as error:
        raise _Failure(f"the router's UPnP GetExternalIPAddress failed ({error})") from None


if __name__ == "__main__":
    sys.exit(main())
