"""HTTP(S) requests of the web-API updaters, on the client pieces of the `http` source.

Those pieces give what an update needs too: one deadline for the whole exchange (a trickling
server cannot stretch a round), no $http_proxy, and errors as one sentence naming the URL without
its query (where DuckDNS puts the token). Redirects are not followed: a request that carries
credentials goes only where the config says.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import SplitResult, quote, urlencode, urljoin, urlsplit

from ipwatch.addresses import FAMILIES, Family, family_of
from ipwatch.ddns import UpdateError
from ipwatch.errors import SourceError
from ipwatch.schema import format_duration
from ipwatch.sources.http import connect, display, exchange, explain, parse_url, request_head

MAX_BYTES = 1 << 20  # API answers here are a few kB; a megabyte means something is wrong
MAX_RETRY_AFTER = 86400.0
_LOOPBACK_NAMES = frozenset({"localhost", "localhost."})


def parse_api_url(value: Any) -> str:
    """An https:// URL (http:// only for a loopback host: tests, a local relay), since the
    request carries a password or token; ValueError otherwise."""
    text = parse_url(value)
    parts = urlsplit(text)
    if parts.username is not None:
        raise ValueError(
            f"{display(parts)} holds a user name or password; put them in their own keys"
        )
    if parts.scheme == "http" and not _is_loopback(parts.hostname or ""):
        raise ValueError(
            f"{display(parts)} is plain http://; use https://, since the request carries a"
            " password or token (http:// is accepted only for a loopback host)"
        )
    return text


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host.lower() in _LOOPBACK_NAMES


@dataclass(frozen=True)
class Response:
    status: int
    reason: str
    headers: dict[str, str]  # names in lower case
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        """The body as JSON data, or None when it is not JSON (an error page of a proxy)."""
        try:
            return json.loads(self.body)
        except ValueError:
            return None


def basic_auth(username: str, password: str) -> str:
    """An Authorization header value (RFC 7617)."""
    pair = f"{username}:{password}".encode()
    return "Basic " + base64.b64encode(pair).decode("ascii")


def request(
    method: str,
    url: str,
    timeout: float,
    *,
    deadline: float | None = None,
    query: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    body: Any = None,
) -> Response:
    """Send one request (`body`: JSON data) and return the answer, whatever its status; raise
    UpdateError for network failures, redirects and 429. It ends within `timeout` seconds, or by
    `deadline` (time.monotonic()) when several requests share one budget of `timeout`."""
    import http.client

    if deadline is None:
        deadline = time.monotonic() + timeout
    parts = urlsplit(url)
    if query:
        # "," and ":" stay readable: dyndns2 servers split myip=IPv4,IPv6 on the raw string.
        encoded = urlencode(query, safe=",:", quote_via=quote)
        parts = parts._replace(query="&".join(p for p in (parts.query, encoded) if p))
    try:
        answer = _exchange(method, parts, deadline, dict(headers or {}), body)
    except (OSError, http.client.HTTPException) as error:
        raise _failure(error, parts, timeout) from None
    if answer.status == 429:
        wait = _retry_after(answer.headers.get("retry-after"))
        later = f"; waiting {format_duration(wait)} as it asks" if wait else ""
        raise UpdateError(
            f"{display(parts)} answered 429: too many requests{later}", retry_after=wait
        )
    if 300 <= answer.status <= 399:
        target = urlsplit(urljoin(parts.geturl(), answer.headers.get("location", "")))
        raise UpdateError(
            f"{display(parts)} redirected to {display(target)}; not followed, since the request"
            " carries credentials: set the url to where it points",
            permanent=True,
        )
    return answer


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (RFC 9110 section 10.2.3: seconds or an HTTP date),
    at most a day, so a wrong date cannot silence an updater for good."""
    if value is None:
        return None
    if value.strip().isdigit():
        seconds = float(value.strip())
    else:
        from email.utils import parsedate_to_datetime

        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 1.0), MAX_RETRY_AFTER)


def _exchange(
    method: str, url: SplitResult, deadline: float, headers: dict[str, str], body: Any
) -> Response:
    payload = b"" if body is None else json.dumps(body).encode()
    if body is not None:
        headers["Content-Type"] = "application/json"
    request = _head(method, url, headers, len(payload) if body is not None else None) + payload
    with _connect_any(url, deadline) as sock, exchange(sock, request, deadline) as response:
        data = response.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise UpdateError(f"{display(url)} answered with more than {MAX_BYTES} bytes")
    found = {name.lower(): value for name, value in response.getheaders()}
    return Response(response.status, response.reason, found, data)


def _head(method: str, url: SplitResult, headers: Mapping[str, str], length: int | None) -> bytes:
    lines = []
    if length is not None:
        lines.append(f"Content-Length: {length}")
    for name, value in headers.items():
        if any(ord(c) < 0x20 or ord(c) > 0x7E for c in value):
            # Only a secret read from a file can get here; its content must not be shown.
            raise UpdateError(
                f"the {name} header would hold a line break or non-ASCII character; the secret"
                " file must hold one line of plain text",
                permanent=True,
            )
        lines.append(f"{name}: {value}")
    return request_head(method, url, url.netloc, "application/json, text/plain;q=0.9", lines)


def _connect_any(url: SplitResult, deadline: float) -> socket.socket:
    """Connect over IPv4, else IPv6 (an address literal: over its own family)."""
    try:
        families: tuple[Family, ...] = (family_of(ipaddress.ip_address(url.hostname or "")),)
    except ValueError:
        families = FAMILIES
    last: OSError | None = None
    for family in families:
        try:
            return connect(url, family, deadline)
        except TimeoutError:
            raise  # the budget is spent: the other family would fail the same way
        except OSError as error:
            last = error
    assert last is not None
    raise last


def _failure(error: Exception, url: SplitResult, timeout: float) -> UpdateError:
    if isinstance(error, socket.gaierror):
        return UpdateError(f"cannot resolve {url.hostname} ({error.strerror})")
    explained: SourceError = explain(error, url, "ipv4", timeout)
    return UpdateError(str(explained))
