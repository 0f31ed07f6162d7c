"""Kind "cloudflare": Cloudflare's API v4 with an API token (`Authorization: Bearer`).

The zone's id and the record are looked up by name, the record's content compared, and only a
wrong content is changed, with PATCH so that its `proxied` flag, TTL and comment stay as the user
set them. A record missing for a family is created (not proxied, automatic TTL). The API is read
first on every call, so re-checking every `min_interval` repairs a record changed by hand
(RECHECK). 429 answers carry Retry-After, which the runner honours.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import quote

from ipwatch.addresses import FAMILIES, Family
from ipwatch.ddns import Outcome, UpdateError, web
from ipwatch.ddns.names import Hostname, within
from ipwatch.schema import Parser

SECRETS = ("token",)
RECHECK = True
_RDTYPE: dict[Family, str] = {"ipv4": "A", "ipv6": "AAAA"}
_AUTOMATIC_TTL = 1  # Cloudflare's value for "automatic"


@dataclass(frozen=True)
class Options:
    zone: Hostname
    record: Hostname
    token_file: str | None = None
    api_url: Annotated[str, Parser(web.parse_api_url)] = "https://api.cloudflare.com/client/v4"

    def __post_init__(self) -> None:
        if not within(self.record, self.zone):
            raise ValueError(
                f"record {self.record!r} is not inside zone {self.zone!r}; name the zone that"
                " holds it"
            )


@dataclass(frozen=True)
class _Api:
    base: str
    token: str
    zone: str
    timeout: float
    deadline: float  # of all the calls of one update together

    def call(
        self, method: str, path: str, query: Mapping[str, str] | None = None, body: Any = None
    ) -> Any:
        """The `result` of one API call; an UpdateError naming Cloudflare's errors otherwise."""
        response = web.request(
            method,
            f"{self.base.rstrip('/')}/{path}",
            self.timeout,
            deadline=self.deadline,
            query=query,
            body=body,
            headers={"Authorization": f"Bearer {self.token}"},
        )
        data = response.json()
        errors = _errors(data)
        if response.status in (401, 403):
            raise UpdateError(
                f"Cloudflare refused the API token ({errors or response.status}); check"
                f" token_file, and that the token may edit DNS records of {self.zone}",
                permanent=True,
            )
        if (
            not 200 <= response.status <= 299
            or not isinstance(data, dict)
            or not data.get("success")
        ):
            raise UpdateError(
                f"Cloudflare answered {method} {path.split('/')[-1] or path} with"
                f" {response.status} ({errors or 'no error given'})",
                permanent=response.status == 400,
            )
        return data.get("result")


def update(
    options: Options, addresses: Mapping[Family, str], timeout: float, secrets: Mapping[str, str]
) -> Outcome:
    deadline = time.monotonic() + timeout
    api = _Api(options.api_url, secrets["token"], options.zone, timeout, deadline)
    zones = api.call("GET", "zones", {"name": options.zone})
    if not isinstance(zones, list) or not zones or not isinstance(zones[0], dict):
        raise UpdateError(
            f"Cloudflare has no zone {options.zone} this token can see; check zone and the"
            " token's zone resources",
            permanent=True,
        )
    records = f"zones/{quote(str(zones[0].get('id')), safe='')}/dns_records"
    done = [
        _bring(api, records, options.record, _RDTYPE[family], addresses[family])
        for family in FAMILIES
        if family in addresses
    ]
    changed = any(change for change, _ in done)
    return Outcome(changed, f"{options.record} " + "; ".join(text for _, text in done))


def _bring(api: _Api, records: str, name: str, rdtype: str, address: str) -> tuple[bool, str]:
    """Make `name`'s `rdtype` record hold `address`; return (changed, what happened)."""
    found = api.call("GET", records, {"type": rdtype, "name": name})
    if not isinstance(found, list):
        raise UpdateError(f"Cloudflare answered the {rdtype} lookup of {name} without a list")
    if len(found) > 1:
        raise UpdateError(
            f"{name} has {len(found)} {rdtype} records; ipwatch keeps a single one, so delete"
            " the others",
            permanent=True,
        )
    if not found:
        body = {
            "type": rdtype,
            "name": name,
            "content": address,
            "ttl": _AUTOMATIC_TTL,
            "proxied": False,
        }
        api.call("POST", records, body=body)
        return True, f"{rdtype} {address} created"
    record = found[0]
    if isinstance(record, dict) and record.get("content") == address:
        return False, f"{rdtype} {address} already right"
    record_id = quote(str(record.get("id") if isinstance(record, dict) else ""), safe="")
    api.call("PATCH", f"{records}/{record_id}", body={"content": address})
    return True, f"{rdtype} {address} updated"


def _errors(data: Any) -> str:
    """Cloudflare's `errors` array as "code message; ..."."""
    items = data.get("errors") if isinstance(data, dict) else None
    if not isinstance(items, list):
        return ""
    parts = [
        f"{item.get('code', '?')} {item.get('message', '')}".strip()
        for item in items[:3]
        if isinstance(item, dict)
    ]
    return "; ".join(parts)
