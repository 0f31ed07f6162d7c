"""Kind "dyndns2": the DynDNS update protocol (`GET /nic/update?hostname=...&myip=...`), which
many providers speak (Dyn, No-IP, Dynu, ...) and many routers and self-hosted servers too.

The protocol has no way to read the record, and the providers count an update that changes
nothing ("nochg") as abuse and block the host after a few: so this updater never sends an
address twice (no RECHECK), and the runner keeps what was last accepted. Any answer other than
good/nochg means "stop until the user acts" (Dyn's return-code rules), except `911` and `dnserr`,
which are the provider's own trouble: wait 30 minutes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated

from ipwatch.addresses import FAMILIES, Family
from ipwatch.ddns import Outcome, UpdateError, web
from ipwatch.ddns.names import Hostname
from ipwatch.schema import Parser

SECRETS = ("password",)
PROVIDER_TROUBLE_WAIT = 1800.0  # seconds: "911" asks clients to wait at least 30 minutes

# Answers that need the user to act; retrying would only make the provider block the account.
_FATAL = {
    "badauth": "rejected the user name or password; check username and password_file",
    "!donator": "refused an option this account does not have (a paid feature)",
    "notfqdn": "says {host} is not a fully qualified domain name; check hostname",
    "nohost": "says {host} does not exist in this account; check hostname and username",
    "numhost": "refused the update: too many hosts, or {host} is a round-robin name",
    "abuse": "has blocked {host} for abuse (too many updates); unblock it on the provider's site",
    "badagent": "refused this client (user agent or request method); report it to ipwatch",
}
_TROUBLE = {
    "911": "has a problem or is down for maintenance",
    "dnserr": "had a DNS error on its side",
}


@dataclass(frozen=True)
class Options:
    url: Annotated[str, Parser(web.parse_api_url)]  # e.g. https://members.dyndns.org/nic/update
    hostname: Hostname
    username: str
    password_file: str | None = None


def update(
    options: Options, addresses: Mapping[Family, str], timeout: float, secrets: Mapping[str, str]
) -> Outcome:
    """Send the addresses (IPv4 first, comma-separated as Dyn documents) and read the answer."""
    sent = [addresses[family] for family in FAMILIES if family in addresses]
    response = web.request(
        "GET",
        options.url,
        timeout,
        query={"hostname": options.hostname, "myip": ",".join(sent)},
        headers={"Authorization": web.basic_auth(options.username, secrets["password"])},
    )
    return _outcome(options, sent, response)


def _outcome(options: Options, sent: list[str], response: web.Response) -> Outcome:
    host = options.hostname
    # One line per host name; ours is the first. Some servers add HTML around errors.
    words = response.text.strip().splitlines()[0].split() if response.text.strip() else []
    code = words[0] if words else ""
    shown = " ".join(sent)
    if code == "good" and words[1:] == ["127.0.0.1"] and "127.0.0.1" not in sent:
        # Dyn's documented way of saying "request ignored: this client is not trusted".
        raise UpdateError(
            "the provider ignored the update (answered good 127.0.0.1: it does not accept this"
            " client)",
            permanent=True,
        )
    if code == "good":
        return Outcome(True, f"{host} {shown} updated")
    if code == "nochg":
        return Outcome(False, f"{host} {shown} already right (nochg)")
    if code in _FATAL:
        raise UpdateError(f"the provider {_FATAL[code].format(host=host)}", permanent=True)
    if code in _TROUBLE:
        raise UpdateError(
            f"the provider {_TROUBLE[code]} ({code}); waiting 30 minutes as it asks",
            retry_after=PROVIDER_TROUBLE_WAIT,
        )
    if response.status in (401, 403):
        raise UpdateError(
            f"the provider answered {response.status} {response.reason}; check username and"
            " password_file",
            permanent=True,
        )
    first = response.text.strip()[:60]
    raise UpdateError(f"the provider answered {response.status} with {first!r}, not a dyndns2 code")
