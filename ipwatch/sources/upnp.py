"""Kind "upnp": the router's own idea of its public address, from its UPnP Internet Gateway
Device (the SOAP action GetExternalIPAddress of WANIPConnection/WANPPPConnection).

The protocol work is miniupnpc's (its PyPI wheel: C, no dependencies, imported only when a upnp
source is asked): SSDP discovery, the device description, the SOAP call. Discovery costs at least
a second (miniupnpc waits that long for answers, and four times as long when nobody answers), so
the gateway found is kept for later rounds, and `url` skips discovery altogether.

miniupnpc bounds only each socket operation, not the whole exchange, so the exchange runs in a
helper thread and `ask` gives up at the source's timeout; the thread finishes on its own soon
after (it is a daemon thread, so it never holds up an exit).
"""

from __future__ import annotations

import queue
import threading
import urllib.parse
from dataclasses import dataclass
from typing import Annotated, Any

from ipwatch.addresses import Family
from ipwatch.errors import NoPublicAddress, SourceError
from ipwatch.schema import Duration, Parser, format_duration
from ipwatch.sources.interface import parse_interface_name

NO_EXTERNAL_ADDRESS = (
    "the router reports no external address (it has a private/reserved WAN address or is not"
    " connected); behind carrier-grade NAT only an outside source such as stun can tell the"
    " public address"
)


def parse_url(value: Any) -> str:
    """Given the `url` key, return it if it is an http:// URL (miniupnpc speaks no https)."""
    if not isinstance(value, str):
        raise ValueError(
            f'expected a URL like "http://192.168.1.1:5000/rootDesc.xml", got {value!r}'
        )
    parts = urllib.parse.urlsplit(value.strip())
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(
            f"{value!r} is not an http:// URL; give the router's root device description,"
            ' like "http://192.168.1.1:5000/rootDesc.xml"'
        )
    return value.strip()


@dataclass(frozen=True)
class Options:
    # The root device description; the LOCATION header of the router's SSDP answer, which
    # `upnpc -l` prints as "desc:".
    url: Annotated[str, Parser(parse_url)] | None = None
    discover_timeout: Duration = 1.0
    # Interface name or IPv4 address to send discovery from (miniupnpc's multicastif).
    interface: Annotated[str, Parser(parse_interface_name)] | None = None


def serves(options: Options, family: Family) -> bool:
    """GetExternalIPAddress tells an IPv4 address only; IGD:2's IPv6 service reports none."""
    return family == "ipv4"


# Gateways that answered before, by the options that found them: later rounds skip discovery.
_gateways: dict[Options, Any] = {}


def ask(options: Options, family: Family, timeout: float) -> str:
    """Return the external address the router reports; SourceError when it has none, cannot be
    found, or does not answer within `timeout`."""
    outcome: queue.SimpleQueue[tuple[str, Exception | None]] = queue.SimpleQueue()
    progress = ["starting"]

    def work() -> None:
        try:
            outcome.put((_external_address(options, progress), None))
        except Exception as error:  # handed to the asking thread, which raises it
            outcome.put(("", error))

    threading.Thread(target=work, name="upnp", daemon=True).start()
    try:
        address, error = outcome.get(timeout=timeout)
    except queue.Empty:
        _gateways.pop(options, None)
        raise SourceError(
            f"no UPnP answer within {format_duration(timeout)} (still {progress[-1]})"
        ) from None
    if error is not None:
        raise error
    return address


def _external_address(options: Options, progress: list[str]) -> str:
    gateway = _gateways.get(options)
    address = None
    if gateway is not None:
        try:
            address = _ask_gateway(gateway, progress)
        except SourceError:
            # The router restarted or moved to another port: look for it again.
            _gateways.pop(options, None)
    if address is None:
        gateway = _find_gateway(options, progress)
        address = _ask_gateway(gateway, progress)
        _gateways[options] = gateway
    if not address:
        raise NoPublicAddress(NO_EXTERNAL_ADDRESS)
    return address


def _find_gateway(options: Options, progress: list[str]) -> Any:
    import miniupnpc

    gateway = miniupnpc.UPnP(
        multicastif=options.interface, discoverdelay=round(options.discover_timeout * 1000)
    )
    if options.url is not None:
        progress.append(f"reading the device description at {options.url}")
        try:
            gateway.selectigd(options.url)
        except Exception as error:
            raise SourceError(
                f"no UPnP gateway description at {options.url} ({error}); check `url` and"
                " that UPnP is enabled on the router"
            ) from None
        return gateway
    progress.append("discovering the router (SSDP)")
    try:
        found = gateway.discover()
    except Exception:  # miniupnpc raises Exception("Success") when nobody answered
        found = 0
    if not found:
        where, other = (
            (f"on {options.interface}", "")
            if options.interface
            else ("on the LAN", " (or `interface` when the host has several networks)")
        )
        raise SourceError(
            f"no UPnP device answered discovery {where}; enable UPnP on the router,"
            f" or set `url`{other}"
        )
    progress.append(f"reading the description of the {found} device(s) found")
    try:
        gateway.selectigd()
    except Exception as error:
        raise SourceError(
            f"discovery found {found} UPnP device(s) but no Internet gateway among them ({error})"
        ) from None
    return gateway


def _ask_gateway(gateway: Any, progress: list[str]) -> str:
    """The external address as the router's GetExternalIPAddress gives it, possibly empty."""
    progress.append("waiting for GetExternalIPAddress")
    try:
        return str(gateway.externalipaddress()).strip()
    except Exception as error:
        raise SourceError(f"the router's UPnP GetExternalIPAddress failed ({error})") from None
