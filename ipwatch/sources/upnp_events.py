"""The upnp source's push channel: UPnP eventing (GENA) of WANIPConnection's ExternalIPAddress.

UPnP Device Architecture 1.1 §4: a control point SUBSCRIBEs to a service's eventSubURL with a
CALLBACK URL; the device answers with a SID and a TIMEOUT, sends an initial NOTIFY (SEQ 0) with
every evented variable, then one NOTIFY per change with SEQ + 1. The channel:

- finds the event URL in the router's root description (`url`, or SSDP discovery),
- listens on TCP `event_port` for NOTIFY, and subscribes with a callback to that port on the
  address that reaches the router,
- checks that SEQ 0 arrives within INITIAL_WAIT and that every later SEQ is the next one:
  miniupnpd drops a subscriber after one failed NOTIFY delivery and never retries (LAB.md), so
  a missing SEQ 0 or a gap means events are being lost: it subscribes again (and hints),
- renews at half the granted timeout; a 412 (the router restarted or forgot the subscription)
  subscribes again at once,
- accepts a NOTIFY only from the router's address, only for the current SID and callback path,
  with a body of at most MAX_BODY bytes that parses strictly as a property set (no DOCTYPE, so
  no entity of any kind can be declared, let alone expanded).

Every NOTIFY after SEQ 0 is a hint, except one that only tells of port mappings (a LAN device
opening a port). Not only those with a new ExternalIPAddress: miniupnpd sends no NOTIFY for an
event that comes while the last one to the same subscriber is still in flight, and a WAN move
is two events a millisecond apart (the new address added, the old deleted). In the lab the
first one's NOTIFY sometimes still named the old address and the second never came; the round
it starts finds the new one. The initial NOTIFY is a hint when its address differs from the
last one heard (after a subscription was lost). Connections are served one at a time, each
within CONNECTION_DEADLINE, so a flood costs bounded memory and never more than one round at a
time (the daemon's debounce).
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import re
import secrets
import socket
import threading
import time
import urllib.parse
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from dataclasses import dataclass

from ipwatch.sources import upnp
from ipwatch.sources.push import Changed, Channel, ChannelError, Hint, stamp

INITIAL_WAIT = 5.0  # seconds for SEQ 0 to arrive after a subscription (miniupnpd: a few ms)
HTTP_TIMEOUT = 5.0
EXCHANGE_DEADLINE = 15.0  # a whole request and answer to the router
CONNECTION_DEADLINE = 2.0  # to read one whole NOTIFY
MAX_HEADER = 8 * 1024
MAX_BODY = 16 * 1024  # miniupnpd's property set is ~600 bytes
MAX_DESCRIPTION = 256 * 1024
SSDP_GROUP, SSDP_PORT = "239.255.255.250", 1900
SEARCH_TARGET = "urn:schemas-upnp-org:device:InternetGatewayDevice:1"
_SERVICES = (
    "urn:schemas-upnp-org:service:WANIPConnection:",
    "urn:schemas-upnp-org:service:WANPPPConnection:",
)
_DEVICE = "{urn:schemas-upnp-org:device-1-0}"
_EVENT = "{urn:schemas-upnp-org:event-1-0}"
_CLOSING = "Content-Length: 0\r\nConnection: close\r\n\r\n"
_PORT_MAPPING_VARIABLES = frozenset({"PortMappingNumberOfEntries", "SystemUpdateID"})
_SEQ_WRAP = 4294967295  # UDA 1.1 §4.2.1: after this SEQ comes 1, not 0


class Invalid(ChannelError):
    """A NOTIFY or document that does not parse as it must; the text says what is wrong."""


class Gone(ChannelError):
    """The router answered 412 Precondition Failed: it does not know the subscription."""


# --- pure parts ------------------------------------------------------------------------------


def strict_xml(document: bytes) -> ElementTree.Element:
    """Parse `document`, refusing any DOCTYPE: entities (internal or external) need one."""
    if re.search(rb"<!\s*(DOCTYPE|ENTITY)", document, re.IGNORECASE):
        raise Invalid("it declares a DOCTYPE or an entity")
    try:
        return ElementTree.fromstring(document)
    except ElementTree.ParseError as error:
        raise Invalid(f"not well-formed XML ({error})") from None


def parse_property_set(body: bytes) -> dict[str, str]:
    """The variables of a GENA property set: `<e:propertyset><e:property><Name>value</Name>...`."""
    root = strict_xml(body)
    if root.tag != f"{_EVENT}propertyset":
        raise Invalid(f"the root element is {root.tag}, not e:propertyset")
    variables: dict[str, str] = {}
    for item in root:
        if item.tag != f"{_EVENT}property" or len(item) != 1:
            raise Invalid(f"{item.tag} is not an e:property holding one variable")
        variable = item[0]
        if len(variable):
            raise Invalid(f"the variable {variable.tag} holds elements, not text")
        variables[variable.tag.rpartition("}")[2]] = (variable.text or "").strip()
    return variables


def event_url(description: bytes, location: str) -> str:
    """The absolute eventSubURL of the WANIPConnection (or WANPPPConnection) service."""
    root = strict_xml(description)
    base = (root.findtext(f"{_DEVICE}URLBase") or "").strip() or location
    for service in root.iter(f"{_DEVICE}service"):
        kind = (service.findtext(f"{_DEVICE}serviceType") or "").strip()
        url = (service.findtext(f"{_DEVICE}eventSubURL") or "").strip()
        if kind.startswith(_SERVICES) and url:
            return urllib.parse.urljoin(base, url)
    raise Invalid("it lists no WANIPConnection or WANPPPConnection service with an eventSubURL")


def granted_seconds(header: str | None) -> int:
    """TIMEOUT: Second-N (UDA §4.1.2); "infinite" is deprecated and read as a day."""
    value = (header or "").strip().lower()
    if value == "second-infinite":
        return 86400
    match = re.fullmatch(r"second-(\d{1,9})", value)
    if match is None:
        raise Invalid(f"TIMEOUT {header!r} is not Second-N")
    return max(1, int(match.group(1)))


@dataclass(frozen=True)
class Notify:
    path: str
    sid: str
    seq: int
    variables: dict[str, str]


def parse_notify(head: bytes, body: bytes) -> Notify:
    """A NOTIFY request (head: request line and headers, without the blank line)."""
    lines = head.decode("iso-8859-1").split("\r\n")
    method, _, rest = lines[0].partition(" ")
    path, _, version = rest.partition(" ")
    if method != "NOTIFY" or not version.startswith("HTTP/1."):
        raise Invalid(f"{lines[0][:80]!r} is not a NOTIFY request")
    headers = _headers(lines[1:])
    if headers.get("nt") != "upnp:event" or headers.get("nts") != "upnp:propchange":
        raise Invalid("NT/NTS are not upnp:event/upnp:propchange")
    seq = headers.get("seq", "")
    if not seq.isdigit() or int(seq) > _SEQ_WRAP:
        raise Invalid(f"SEQ {seq!r} is not a number")
    return Notify(path, headers.get("sid", ""), int(seq), parse_property_set(body))


def next_seq(seq: int) -> int:
    return 1 if seq >= _SEQ_WRAP else seq + 1


def _headers(lines: list[str]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in lines:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise Invalid(f"malformed header line {line[:80]!r}")
        key = name.lower()
        if key in headers:
            raise Invalid(f"header {name} given twice")
        headers[key] = value.strip()
    return headers


# --- the channel -----------------------------------------------------------------------------


def channel(options: upnp.Options, name: str, hint: Hint, changed: Changed) -> Subscription:
    return Subscription(options, name, hint, changed)


@dataclass
class _Subscribed:
    url: str
    router: str  # the router's IP address: only it may NOTIFY
    sid: str
    renew_at: float
    initial_by: float | None  # SEQ 0 is due by then; None once it came
    expected: int = 0


class Subscription(Channel):
    kind = "upnp"

    def __init__(self, options: upnp.Options, name: str, hint: Hint, changed: Changed) -> None:
        super().__init__(name, hint, changed)
        self.options = options
        self.path = f"/ipwatch/{secrets.token_hex(8)}"
        self.variables: dict[str, str] = {}  # the last value heard of each evented variable
        self.detail = ""
        self.current: _Subscribed | None = None

    def serve(self) -> None:
        try:
            location = self.options.url or discover(self.options)
            url = event_url(_fetch(location, MAX_DESCRIPTION), location)
            with _listener(self.options.event_port) as listener:
                try:
                    self.subscribe(url, listener.getsockname()[1])
                    while not self.stopping.is_set():
                        self.wait_for_notify(listener)
                finally:
                    self.unsubscribe()
        except http.client.HTTPException as error:
            raise ChannelError(f"the router's HTTP answer is broken ({error!r})") from None

    def subscribe(self, url: str, port: int) -> None:
        sid, seconds, local, router = _subscribe(url, self.path, port, self.options.event_timeout)
        now = time.monotonic()
        self.current = _Subscribed(url, router, sid, now + seconds / 2, now + INITIAL_WAIT)
        self.detail = f"{url}, callback http://{local}:{port}{self.path}"
        # Subscribed for real once SEQ 0 shows that NOTIFYs get through (take).
        self.update(state="subscribing", sid=sid, expires=stamp(time.time() + seconds))

    def wait_for_notify(self, listener: socket.socket) -> None:
        current = self.current
        assert current is not None
        due = min(current.renew_at, current.initial_by or current.renew_at)
        if self.wait_readable(listener.fileno(), max(0.0, due - time.monotonic())):
            try:
                connection, (peer, _) = listener.accept()
            except OSError as error:  # reset before it was accepted: the peer's business
                self.ignore(f"a connection that failed before it was accepted ({error})")
                return
            with connection:
                self.answer(connection, peer, current)
            return
        if self.stopping.is_set():
            return
        if current.initial_by is not None and time.monotonic() >= current.initial_by:
            raise ChannelError(
                f"no initial NOTIFY (SEQ 0) within {INITIAL_WAIT:g} s of subscribing: the router"
                f" cannot reach port {listener.getsockname()[1]} (a firewall?)"
            )
        if time.monotonic() >= current.renew_at:
            self.renew(current, listener.getsockname()[1])

    def renew(self, current: _Subscribed, port: int) -> None:
        try:
            seconds = _renew(current.url, current.sid, self.options.event_timeout)
        except Gone:
            self.event("the router forgot the subscription (412 on renewal); subscribing again")
            self.current = None
            self.subscribe(current.url, port)
            return
        current.renew_at = time.monotonic() + seconds / 2
        self.update(expires=stamp(time.time() + seconds))

    def answer(self, connection: socket.socket, peer: str, current: _Subscribed) -> None:
        if peer != current.router:
            self.ignore(f"connection from {peer}, not the router {current.router}")
            return
        try:
            head, body = _read_request(connection, time.monotonic() + CONNECTION_DEADLINE)
            notify = parse_notify(head, body)
        except (Invalid, OSError) as error:
            self.ignore(f"request from {peer} refused: {error}")
            _reply(connection, "400 Bad Request")
            return
        if notify.path != self.path or notify.sid != current.sid:
            self.ignore(f"NOTIFY for SID {notify.sid[:60]!r} {notify.path[:60]}: not ours")
            _reply(connection, "412 Precondition Failed")
            return
        _reply(connection, "200 OK")
        self.take(notify, current)

    def take(self, notify: Notify, current: _Subscribed) -> None:
        if notify.seq != current.expected:
            # Events were lost, and with miniupnpd the subscription with them.
            self.event(f"SEQ {notify.seq} where {current.expected} was due; subscribing again")
            raise ChannelError(f"NOTIFY SEQ {notify.seq} where {current.expected} was due")
        if notify.seq == 0:
            current.initial_by = None
            self.working("subscribed", self.detail)
        current.expected = next_seq(notify.seq)
        changed = {k for k, v in notify.variables.items() if self.variables.get(k) != v}
        first = not self.variables
        self.variables.update(notify.variables)
        if "ExternalIPAddress" in changed and not first:
            self.event(
                f"ExternalIPAddress {self.variables['ExternalIPAddress']} (SEQ {notify.seq})"
            )
        elif notify.seq and not (changed and changed <= _PORT_MAPPING_VARIABLES):
            what = ", ".join(sorted(changed)) or "nothing visible"
            self.event(f"NOTIFY SEQ {notify.seq} ({what} changed)")

    def unsubscribe(self) -> None:
        current, self.current = self.current, None
        if current is not None:
            with contextlib.suppress(OSError, Gone, Invalid, http.client.HTTPException):
                _request("UNSUBSCRIBE", current.url, {"SID": current.sid})


# --- HTTP ------------------------------------------------------------------------------------


def _listener(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("0.0.0.0", port))
        sock.listen(8)
    except OSError as error:
        sock.close()
        raise ChannelError(
            f"cannot listen on TCP port {port} for NOTIFY ({error.strerror})"
        ) from None
    return sock


def _subscribe(url: str, path: str, port: int, timeout: float) -> tuple[str, int, str, str]:
    """SUBSCRIBE; return (SID, granted seconds, our address toward the router, its address)."""
    parts = urllib.parse.urlsplit(url)
    with _connection(url) as connection:
        local, router = connection.sock.getsockname()[0], connection.sock.getpeername()[0]
        callback = f"<http://{local}:{port}{path}>"
        headers = {"CALLBACK": callback, "NT": "upnp:event", "TIMEOUT": f"Second-{round(timeout)}"}
        response = _send(connection, "SUBSCRIBE", parts, headers)
    sid = response.getheader("SID") or ""
    if not sid:
        raise Invalid(f"SUBSCRIBE to {url} was answered without a SID")
    return sid, granted_seconds(response.getheader("TIMEOUT")), local, router


def _renew(url: str, sid: str, timeout: float) -> int:
    response = _request("SUBSCRIBE", url, {"SID": sid, "TIMEOUT": f"Second-{round(timeout)}"})
    return granted_seconds(response.getheader("TIMEOUT"))


def _request(method: str, url: str, headers: dict[str, str]) -> http.client.HTTPResponse:
    with _connection(url) as connection:
        return _send(connection, method, urllib.parse.urlsplit(url), headers)


@contextlib.contextmanager
def _connection(url: str) -> Iterator[http.client.HTTPConnection]:
    """A connection to the router for one exchange, closed after it.

    http.client's timeout bounds each read, not the exchange: a device that sends a byte every
    few seconds would hold the channel's thread for ever. Past EXCHANGE_DEADLINE the socket is
    shut down, which ends any read under way, and the exchange fails as a ChannelError.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise Invalid(f"{url!r} is not an http:// URL")
    connection = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=HTTP_TIMEOUT)
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        if connection.sock is not None:
            with contextlib.suppress(OSError):
                connection.sock.shutdown(socket.SHUT_RDWR)

    timer = threading.Timer(EXCHANGE_DEADLINE, expire)
    timer.start()
    try:
        connection.connect()
        yield connection
    except (OSError, http.client.HTTPException):
        if expired.is_set():
            raise ChannelError(
                f"{url} did not finish answering within {EXCHANGE_DEADLINE:g} s"
            ) from None
        raise
    finally:
        timer.cancel()
        connection.close()


def _send(
    connection: http.client.HTTPConnection,
    method: str,
    parts: urllib.parse.SplitResult,
    headers: dict[str, str],
) -> http.client.HTTPResponse:
    path = parts.path or "/"
    connection.request(method, path + (f"?{parts.query}" if parts.query else ""), headers=headers)
    response = connection.getresponse()
    response.read(MAX_BODY)  # the answer to a SUBSCRIBE has no body worth reading
    if response.status == 412:
        raise Gone
    if response.status != 200:
        raise ChannelError(
            f"{method} {parts.geturl()} answered {response.status} {response.reason}"
        )
    return response


def _fetch(url: str, limit: int) -> bytes:
    """GET `url`, at most `limit` bytes (a longer description is refused, not cut)."""
    with _connection(url) as connection:
        connection.request("GET", urllib.parse.urlsplit(url).path or "/")
        response = connection.getresponse()
        if response.status != 200:
            raise ChannelError(f"{url} answered {response.status} {response.reason}")
        data = response.read(limit + 1)
    if len(data) > limit:
        raise ChannelError(f"{url} is longer than {limit} bytes")
    return data


def _read_request(connection: socket.socket, deadline: float) -> tuple[bytes, bytes]:
    """One request's head and body, within `deadline`, bounded by MAX_HEADER and MAX_BODY."""
    data = b""
    while b"\r\n\r\n" not in data:
        if len(data) > MAX_HEADER:
            raise Invalid(f"headers longer than {MAX_HEADER} bytes")
        data += _receive(connection, deadline, 4096)
    head, _, body = data.partition(b"\r\n\r\n")
    match = re.search(rb"\r\ncontent-length:[ \t]*(\d{1,9})[ \t]*(\r\n|$)", head, re.IGNORECASE)
    if match is None or re.search(rb"\r\ntransfer-encoding:", head, re.IGNORECASE):
        raise Invalid("no Content-Length (chunked bodies are not taken)")
    length = int(match.group(1))
    if length > MAX_BODY:
        raise Invalid(f"a body of {length} bytes, more than {MAX_BODY}")
    while len(body) < length:
        body += _receive(connection, deadline, length - len(body))
    return head, body[:length]


def _receive(connection: socket.socket, deadline: float, size: int) -> bytes:
    left = deadline - time.monotonic()
    if left <= 0:
        raise Invalid(f"not sent within {CONNECTION_DEADLINE:g} s")
    connection.settimeout(left)
    try:
        chunk = connection.recv(max(1, size))
    except TimeoutError:
        raise Invalid(f"not sent within {CONNECTION_DEADLINE:g} s") from None
    if not chunk:
        raise Invalid("the connection closed early")
    return chunk


def _reply(connection: socket.socket, status: str) -> None:
    with contextlib.suppress(OSError):
        connection.settimeout(CONNECTION_DEADLINE)
        connection.sendall(f"HTTP/1.1 {status}\r\n{_CLOSING}".encode())


# --- SSDP ------------------------------------------------------------------------------------


def discover(options: upnp.Options) -> str:
    """The LOCATION of the first Internet gateway answering an SSDP search, if the URL's host is
    the address that answered (a host pointing elsewhere is not taken)."""
    search = (
        "M-SEARCH * HTTP/1.1\r\n"
        f"HOST: {SSDP_GROUP}:{SSDP_PORT}\r\n"
        'MAN: "ssdp:discover"\r\n'
        f"MX: {max(1, round(options.discover_timeout))}\r\n"
        f"ST: {SEARCH_TARGET}\r\n\r\n"
    ).encode()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        if options.interface is not None and _is_ipv4(options.interface):
            sock.setsockopt(
                socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(options.interface)
            )
        sock.sendto(search, (SSDP_GROUP, SSDP_PORT))
        deadline = time.monotonic() + max(options.discover_timeout, 1.0)
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                data, (sender, _) = sock.recvfrom(2048)
            except TimeoutError:
                break
            match = re.search(rb"\r\nlocation:[ \t]*(\S+)", data, re.IGNORECASE)
            if match is None:
                continue
            location = match.group(1).decode("ascii", "replace")
            if urllib.parse.urlsplit(location).hostname == sender:
                return location
    raise ChannelError("no UPnP gateway answered SSDP discovery; set `url`")


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True
