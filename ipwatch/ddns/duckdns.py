"""Kind "duckdns": DuckDNS's update API (`GET /update?domains=...&token=...&ip=...&ipv6=...`).

DuckDNS asks clients to update every five minutes whether or not the address changed, so this
updater may re-send (RECHECK). With `verbose=true` it answers `OK`, the addresses, and `UPDATED`
or `NOCHANGE`, which tells "updated" from "already right". Its only error is a bare `KO`, for a
wrong token or a domain not in the account alike: that stops the updater until the user fixes
the config or the token file. The token travels in the query string (DuckDNS's design), which
ipwatch never shows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from ipwatch.addresses import Family
from ipwatch.ddns import Outcome, UpdateError, web
from ipwatch.schema import NonEmpty, Parser

SECRETS = ("token",)
RECHECK = True
_SUFFIX = ".duckdns.org"


def parse_subdomain(value: Any) -> str:
    """Given "mypbx" or "mypbx.duckdns.org", return "mypbx"."""
    if not isinstance(value, str):
        raise ValueError(f'expected a DuckDNS name like "mypbx", got {value!r}')
    name = value.strip().lower().removesuffix(".").removesuffix(_SUFFIX)
    if not name or not all(c.isascii() and (c.isalnum() or c == "-") for c in name):
        raise ValueError(f'{value!r} is not a DuckDNS name; write it like "mypbx"')
    return name


@dataclass(frozen=True)
class Options:
    domains: Annotated[tuple[Annotated[str, Parser(parse_subdomain)], ...], NonEmpty()]
    token_file: str | None = None
    url: Annotated[str, Parser(web.parse_api_url)] = "https://www.duckdns.org/update"


def update(
    options: Options, addresses: Mapping[Family, str], timeout: float, secrets: Mapping[str, str]
) -> Outcome:
    query = {"domains": ",".join(options.domains), "token": secrets["token"], "verbose": "true"}
    if "ipv4" in addresses:
        query["ip"] = addresses["ipv4"]
    if "ipv6" in addresses:
        query["ipv6"] = addresses["ipv6"]
    response = web.request("GET", options.url, timeout, query=query)
    lines = response.text.split()
    names = ",".join(options.domains)
    shown = " ".join(addresses[family] for family in sorted(addresses))
    if response.status == 200 and lines[:1] == ["OK"]:
        changed = lines[-1:] == ["UPDATED"]
        return Outcome(changed, f"{names} {shown} {'updated' if changed else 'already right'}")
    if response.status == 200 and lines[:1] == ["KO"]:
        raise UpdateError(
            "DuckDNS answered KO: the token or one of the domains is wrong (it does not say"
            " which); check token_file and domains",
            permanent=True,
        )
    raise UpdateError(f"DuckDNS answered {response.status} {response.reason}".rstrip())
