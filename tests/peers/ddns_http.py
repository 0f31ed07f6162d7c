"""A real HTTP server on loopback that plays three DDNS providers, statefully, as they document:

- dyndns2 (`GET /nic/update`, Basic auth): good / nochg / badauth (HTTP 401) / notfqdn / nohost /
  badagent, and `abuse` once a host has had more nochg answers than the provider tolerates;
  `answers` queues canned answers such as "911" for the next requests;
- Cloudflare API v4 (`/client/v4/...`, Bearer token): zones by name, DNS records by type and
  name, PATCH and POST of records, the `errors` array, 403 for a bad token, 429 with
  Retry-After once the request budget `allowance` is spent;
- DuckDNS (`GET /update?domains=&token=&ip=&ipv6=&verbose=`): OK/KO, UPDATED/NOCHANGE.

Every request is recorded (method, path, query, headers, body) so a test can see what was sent,
or that nothing was. The secrets are random per server, so a test can look for them in logs.
"""

from __future__ import annotations

import base64
import http.server
import json
import secrets
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

Answer = tuple[int, dict[str, str], bytes]


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


@dataclass
class DynDns2:
    username: str = "pbx-owner"
    password: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    hosts: dict[str, str] = field(default_factory=lambda: {"pbx.dyn.test": "198.51.100.20"})
    blocked: set[str] = field(default_factory=set)
    nochg_tolerated: int = 1  # one nochg (at start-up) is fine; the next one blocks the host
    nochg_count: dict[str, int] = field(default_factory=dict)
    answers: list[str] = field(default_factory=list)  # canned answers, first one next

    def handle(self, request: Request) -> Answer:
        if self.answers:
            return _text(200, self.answers.pop(0))
        if request.headers.get("Authorization") != _basic(self.username, self.password):
            return _text(401, "badauth")
        if not request.headers.get("User-Agent", "").startswith("ipwatch/"):
            return _text(200, "badagent")
        host = request.query.get("hostname", "")
        if "." not in host:
            return _text(200, "notfqdn")
        if host not in self.hosts:
            return _text(200, "nohost")
        if host in self.blocked:
            return _text(200, "abuse")
        address = request.query.get("myip", "")
        if address == self.hosts[host]:
            self.nochg_count[host] = self.nochg_count.get(host, 0) + 1
            if self.nochg_count[host] > self.nochg_tolerated:
                self.blocked.add(host)
                return _text(200, "abuse")
            return _text(200, f"nochg {address}")
        self.hosts[host] = address
        return _text(200, f"good {address}")


@dataclass
class Cloudflare:
    token: str = field(default_factory=lambda: secrets.token_urlsafe(30))
    zones: dict[str, str] = field(default_factory=lambda: {"example.test": uuid.uuid4().hex})
    records: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> record
    allowance: int | None = None  # requests left before 429; None: no limit
    retry_after: str = "120"

    def add(
        self, name: str, rdtype: str, content: str, proxied: bool = True, ttl: int = 300
    ) -> str:
        record_id = uuid.uuid4().hex
        zone = next(z for z in self.zones if name == z or name.endswith(f".{z}"))
        self.records[record_id] = {
            "id": record_id, "zone_id": self.zones[zone], "type": rdtype, "name": name,
            "content": content, "proxied": proxied, "ttl": ttl,
        }  # fmt: skip
        return record_id

    def find(self, name: str, rdtype: str) -> list[dict[str, Any]]:
        return [r for r in self.records.values() if r["name"] == name and r["type"] == rdtype]

    def handle(self, request: Request) -> Answer:
        if self.allowance is not None:
            if self.allowance <= 0:
                return _json(429, _errors(971, "Please wait and consider throttling your request"),
                             {"Retry-After": self.retry_after})  # fmt: skip
            self.allowance -= 1
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return _json(403, _errors(9109, "Invalid access token"))
        parts = request.path.removeprefix("/client/v4/").split("/")
        if parts == ["zones"] and request.method == "GET":
            found = [{"id": i, "name": n} for n, i in self.zones.items()
                     if n == request.query.get("name")]  # fmt: skip
            return _json(200, _ok(found))
        if len(parts) >= 3 and parts[0] == "zones" and parts[2] == "dns_records":
            if parts[1] not in self.zones.values():
                return _json(404, _errors(7003, "Could not route to /zones/..., perhaps your object identifier is invalid?"))  # fmt: skip # noqa: E501
            return self._records(request, parts[1], parts[3:])
        return _json(404, _errors(7000, "No route for that URI"))

    def _records(self, request: Request, zone_id: str, rest: list[str]) -> Answer:
        if not rest and request.method == "GET":
            q = request.query
            found = [r for r in self.records.values() if r["zone_id"] == zone_id
                     and r["type"] == q.get("type") and r["name"] == q.get("name")]  # fmt: skip
            return _json(200, _ok(found))
        data = json.loads(request.body or b"{}")
        if not rest and request.method == "POST":
            record_id = self.add(data["name"], data["type"], data["content"], data["proxied"],
                                 data["ttl"])  # fmt: skip
            return _json(200, _ok(self.records[record_id]))
        if len(rest) == 1 and request.method == "PATCH" and rest[0] in self.records:
            self.records[rest[0]].update(data)
            return _json(200, _ok(self.records[rest[0]]))
        return _json(404, _errors(81044, "Record does not exist."))


@dataclass
class DuckDns:
    token: str = field(default_factory=lambda: str(uuid.uuid4()))
    domains: dict[str, dict[str, str]] = field(
        default_factory=lambda: {"mypbx": {"ipv4": "198.51.100.20", "ipv6": ""}}
    )

    def handle(self, request: Request) -> Answer:
        q = request.query
        names = q.get("domains", "").split(",")
        if q.get("token") != self.token or not all(n in self.domains for n in names):
            return _text(200, "KO")
        new = {"ipv4": q.get("ip", ""), "ipv6": q.get("ipv6", "")}
        changed = False
        for name in names:
            for family, address in new.items():
                if address and self.domains[name][family] != address:
                    self.domains[name][family] = address
                    changed = True
        if q.get("verbose") != "true":
            return _text(200, "OK")
        return _text(
            200, f"OK\n{new['ipv4']}\n{new['ipv6']}\n{'UPDATED' if changed else 'NOCHANGE'}"
        )


@dataclass
class DdnsHttp:
    """The three providers behind one server; `base` is "http://127.0.0.1:PORT"."""

    base: str
    dyndns2: DynDns2 = field(default_factory=DynDns2)
    cloudflare: Cloudflare = field(default_factory=Cloudflare)
    duckdns: DuckDns = field(default_factory=DuckDns)
    seen: list[Request] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Misbehaviour for every request: an answer of no provider's (a redirect), a slow answer.
    override: Answer | None = None
    delay: float = 0.0
    stopping: threading.Event = field(default_factory=threading.Event)

    def url(self, path: str) -> str:
        return self.base + path

    def requests_to(self, prefix: str) -> list[Request]:
        return [r for r in self.seen if r.path.startswith(prefix)]

    def redirect(self, location: str) -> None:
        self.override = (302, {"Location": location}, b"")

    def answer(self, request: Request) -> Answer:
        if self.delay and self.stopping.wait(self.delay):
            return _text(503, "shutting down")
        with self.lock:  # the providers' state changes one request at a time
            self.seen.append(request)
            if self.override is not None:
                return self.override
            if request.path == "/nic/update":
                return self.dyndns2.handle(request)
            if request.path.startswith("/client/v4/"):
                return self.cloudflare.handle(request)
            if request.path == "/update":
                return self.duckdns.handle(request)
            return _text(404, "no such provider here")


def _basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def _text(status: int, text: str) -> Answer:
    return status, {"Content-Type": "text/plain"}, (text + "\n").encode()


def _json(status: int, data: Any, headers: dict[str, str] | None = None) -> Answer:
    return (
        status,
        {"Content-Type": "application/json", **(headers or {})},
        json.dumps(data).encode(),
    )


def _ok(result: Any) -> dict[str, Any]:
    return {"success": True, "errors": [], "messages": [], "result": result}


def _errors(code: int, message: str) -> dict[str, Any]:
    return {"success": False, "errors": [{"code": code, "message": message}], "result": None}


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    timeout = 5.0

    def _serve(self) -> None:
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        request = Request(
            self.command, url.path, dict(parse_qsl(url.query)), dict(self.headers.items()),
            self.rfile.read(length),
        )  # fmt: skip
        status, headers, body = self.server.peer.answer(request)
        try:
            self.send_response(status)
            for name, value in {**headers, "Content-Length": str(len(body))}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test)

    do_GET = do_POST = do_PATCH = do_PUT = _serve

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True

    def __init__(self, peer: DdnsHttp) -> None:
        self.peer = peer
        super().__init__(("127.0.0.1", 0), _Handler)


@pytest.fixture
def ddns_http() -> Iterator[DdnsHttp]:
    """dyndns2, Cloudflare and DuckDNS look-alikes on one loopback HTTP server."""
    peer = DdnsHttp("")
    server = _Server(peer)  # listening from here on: clients queue until it serves
    peer.base = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01})
    thread.start()
    try:
        yield peer
    finally:
        peer.stopping.set()
        server.shutdown()
        thread.join()
        server.server_close()
