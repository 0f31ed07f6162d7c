"""Kind "http": GET a URL whose answer contains the caller's address (checkip-style services).

An echo service reports the address the request came from, so the request must travel over the
asked family: the URL's host is resolved to addresses of that family only and the connection goes
to one of those (a host without one is an error, never a silent fallback to the other family).

This is built on http.client rather than urllib.request, for four reasons:
- `timeout` is the budget of the whole exchange, redirects included: every read waits only for
  what is left of it, so a server trickling bytes cannot stretch a round (urllib's timeout
  applies to each socket operation afresh);
- urllib connects to whichever family getaddrinfo lists first, and cannot be told otherwise;
- urllib honours $http_proxy, and through a proxy the echo service would report the proxy's
  address, not ours;
- redirects follow the policy below, and a loop ends with an error naming the URL.
Name resolution uses the system resolver, whose own timeouts (resolv.conf) are not bounded here.
"""

from __future__ import annotations

import base64
import contextlib
import io
import ipaddress
import socket
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, cast
from urllib.parse import SplitResult, unquote, urljoin, urlsplit

from ipwatch import __version__
from ipwatch.addresses import Family, IPAddress, family_of, find_address
from ipwatch.errors import SourceError
from ipwatch.redact import mask_userinfo
from ipwatch.schema import Parser, PositiveInt, format_duration

if TYPE_CHECKING:
    import http.client

    from _typeshed import WriteableBuffer

# Echo services redirect at most once in practice (http -> https, or to a canonical host name);
# three allows a chain of such moves, while a misconfigured chain fails fast and names the URL
# instead of spending the budget on the ten hops urllib would follow.
MAX_REDIRECTS = 3
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_DEFAULT_PORTS = {"http": 80, "https": 443}
_ACCEPT = "text/plain, application/json;q=0.9, */*;q=0.8"


def parse_url(value: Any) -> str:
    """Given the `url` key, return it if it is an absolute http(s) URL; ValueError otherwise."""
    if not isinstance(value, str):
        raise ValueError(f'expected a URL like "https://checkip.example/", got {value!r}')
    text = value.strip()
    shown = repr(mask_userinfo(text))
    if not text.isascii() or any(c.isspace() or not c.isprintable() for c in text):
        raise ValueError(
            f"{shown} has spaces, control or non-ASCII characters; percent-encode them and"
            " write international host names in their xn-- form"
        )
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - urlsplit checks the port only when it is read
    except ValueError:
        raise ValueError(f"{shown} is not a valid URL") from None
    if parts.scheme not in _DEFAULT_PORTS:
        raise ValueError(f"{shown} is not an http:// or https:// URL")
    if not parts.hostname:
        raise ValueError(f"{shown} has no host name")
    return text


@dataclass(frozen=True)
class Options:
    url: Annotated[str, Parser(parse_url)]
    max_bytes: PositiveInt = 1024


def ask(options: Options, family: Family, timeout: float) -> str:
    """GET the URL over `family`, following redirects, and return the first address of `family`
    in the body; raise SourceError naming the URL (never its credentials) when that fails."""
    import http.client

    deadline = time.monotonic() + timeout
    origin = urlsplit(options.url)
    url = origin
    visited = {_without_userinfo(url)}
    for _ in range(MAX_REDIRECTS + 1):
        try:
            location, body = _get(url, origin, family, deadline, options.max_bytes)
        except (OSError, http.client.HTTPException) as error:
            raise explain(error, url, family, timeout) from None
        if location is None:
            return find_address(body.decode("utf-8", "replace"), family, display(url))
        url = _redirect_target(url, location, visited)
    raise SourceError(f"{display(origin)} redirected more than {MAX_REDIRECTS} times; not followed")


def display(url: SplitResult) -> str:
    """The URL as it may appear in messages and logs: no userinfo, no query (either may hold
    a secret)."""
    return f"{url.scheme}://{_host_and_port(url)}{url.path or '/'}"


def _host_and_port(url: SplitResult) -> str:
    return url.netloc.rpartition("@")[2]


def _without_userinfo(url: SplitResult) -> str:
    return url._replace(netloc=_host_and_port(url), fragment="").geturl()


def _redirect_target(url: SplitResult, location: str, visited: set[str]) -> SplitResult:
    try:
        target = urlsplit(parse_url(urljoin(url.geturl(), location)))
    except ValueError:
        shown = mask_userinfo(location[:80])
        raise SourceError(
            f"{display(url)} redirected to {shown!r}, not a usable http(s) URL"
        ) from None
    if url.scheme == "https" and target.scheme == "http":
        # Over plain http anyone on the path could choose the address we report.
        raise SourceError(
            f"{display(url)} redirected from https to {display(target)}; not followed"
        )
    key = _without_userinfo(target)
    if key in visited:
        raise SourceError(f"{display(url)} redirects in a loop (back to {display(target)})")
    visited.add(key)
    return target


def _get(
    url: SplitResult, origin: SplitResult, family: Family, deadline: float, max_bytes: int
) -> tuple[str | None, bytes]:
    """Make one request; return (redirect location, b"") or (None, body of a 2xx answer)."""
    credentials = _credentials(url, origin)
    authorization = [] if credentials is None else [f"Authorization: Basic {credentials}"]
    head = request_head("GET", url, _host_and_port(url), _ACCEPT, authorization)
    with connect(url, family, deadline) as sock, exchange(sock, head, deadline) as response:
        return _read_answer(response, url, max_bytes)


def _read_answer(
    response: http.client.HTTPResponse, url: SplitResult, max_bytes: int
) -> tuple[str | None, bytes]:
    status = response.status
    if status in _REDIRECT_STATUSES:
        location = response.getheader("Location")
        if not location:
            raise SourceError(f"{display(url)} answered {status} without a Location to follow")
        return location, b""
    if not 200 <= status <= 299:
        raise SourceError(f"{display(url)} answered {status} {response.reason}".rstrip())
    body = response.read(max_bytes + 1)
    if len(body) > max_bytes:
        raise SourceError(
            f"{display(url)} answered with more than {max_bytes} bytes; an address needs far"
            " fewer, so check the url (or raise max_bytes)"
        )
    return None, body


def _credentials(url: SplitResult, origin: SplitResult) -> str | None:
    """Userinfo (RFC 3986 section 3.2.1) becomes Basic credentials (RFC 7617), sent only to the
    configured URL's own origin so that a redirect cannot carry them elsewhere."""
    if origin.username is None or _origin(url) != _origin(origin):
        return None
    pair = f"{unquote(origin.username)}:{unquote(origin.password or '')}"
    return base64.b64encode(pair.encode()).decode("ascii")


def _origin(url: SplitResult) -> tuple[str, str | None, int]:
    return url.scheme, url.hostname, url.port or _DEFAULT_PORTS[url.scheme]


def request_head(
    method: str, url: SplitResult, host: str, accept: str, extra: Sequence[str] = ()
) -> bytes:
    """An HTTP/1.1 request head for `url` (one request per connection), ending in a blank line."""
    target = (url.path or "/") + (f"?{url.query}" if url.query else "")
    lines = [
        f"{method} {target} HTTP/1.1",
        f"Host: {host}",
        f"User-Agent: ipwatch/{__version__}",
        f"Accept: {accept}",
        "Connection: close",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


@contextlib.contextmanager
def exchange(
    sock: socket.socket, request: bytes, deadline: float
) -> Iterator[http.client.HTTPResponse]:
    """Send `request` and yield the response, its head read; every read ends by `deadline`."""
    import http.client

    sock.settimeout(remaining(deadline))
    sock.sendall(request)
    response = http.client.HTTPResponse(cast(socket.socket, DeadlineView(sock, deadline)))
    try:
        response.begin()
        yield response
    finally:
        response.close()


def connect(url: SplitResult, family: Family, deadline: float) -> socket.socket:
    """Open a connection (TLS for https) to the first reachable address of `family` of the host."""
    host = url.hostname or ""
    port = url.port or _DEFAULT_PORTS[url.scheme]
    last_error: OSError | None = None
    for address_family, address in _resolve(host, port, family):
        sock = socket.socket(address_family, socket.SOCK_STREAM)
        try:
            sock.settimeout(remaining(deadline))
            sock.connect(address)
        except OSError as error:
            sock.close()
            last_error = error
            continue
        return _start_tls(sock, host, deadline) if url.scheme == "https" else sock
    assert last_error is not None  # getaddrinfo returns at least one address or raises
    raise last_error


def _resolve(host: str, port: int, family: Family) -> list[tuple[socket.AddressFamily, Any]]:
    """Return (family, socket address) of each address of `family` that `host` has."""
    try:
        literal: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None and family_of(literal) != family:
        raise SourceError(
            f"the url's host {host} is an {family_of(literal)} address, but {family} was asked"
        )
    address_family = socket.AF_INET if family == "ipv4" else socket.AF_INET6
    found = socket.getaddrinfo(host, port, address_family, socket.SOCK_STREAM)
    return [(info[0], info[4]) for info in found]


def _start_tls(sock: socket.socket, host: str, deadline: float) -> socket.socket:
    import ssl

    try:
        sock.settimeout(remaining(deadline))
        return ssl.create_default_context().wrap_socket(sock, server_hostname=host)
    except BaseException:
        sock.close()
        raise


def remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the time budget is spent")
    return left


class DeadlineView:
    """What http.client.HTTPResponse needs of a socket (`makefile`), with every read bounded by
    the deadline of the whole exchange rather than a fresh timeout per read."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self._sock = sock
        self._deadline = deadline

    def makefile(self, mode: str) -> io.BufferedReader:
        return io.BufferedReader(_DeadlineReader(self._sock, self._deadline))


class _DeadlineReader(io.RawIOBase):
    def __init__(self, sock: socket.socket, deadline: float) -> None:
        super().__init__()
        self._sock = sock
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        self._sock.settimeout(remaining(self._deadline))
        return self._sock.recv_into(buffer)


def explain(error: Exception, url: SplitResult, family: Family, timeout: float) -> SourceError:
    """Turn a network or protocol failure into one sentence naming the URL."""
    import http.client
    import ssl

    shown = display(url)
    if isinstance(error, TimeoutError):
        return SourceError(f"no answer from {shown} within {format_duration(timeout)}")
    if isinstance(error, socket.gaierror):
        return SourceError(
            f"cannot resolve {url.hostname} to an {family} address ({error.strerror})"
        )
    if isinstance(error, ssl.SSLCertVerificationError):
        return SourceError(
            f"the TLS certificate of {shown} was not accepted ({error.verify_message})"
        )
    if isinstance(error, ssl.SSLError):
        return SourceError(f"TLS with {shown} failed ({error.reason or error})")
    if isinstance(error, http.client.RemoteDisconnected):
        return SourceError(f"{shown} closed the connection without answering")
    if isinstance(error, OSError):
        return SourceError(f"cannot reach {shown} ({error.strerror or error})")
    return SourceError(f"{shown} did not answer with valid HTTP ({type(error).__name__})")
