"""Asterisk's manager interface (AMI) over TCP, as main/manager.c speaks it.

The server greets with `Asterisk Call Manager/<AMI version>`; then every message is `Key: Value`
lines ending in CRLF, closed by an empty line. ipwatch logs in with `Events: off`, sends an
ActionID with every action and takes the response carrying it: events and stale responses that
arrive in between are read and dropped. `Command` is answered in one of two forms: since
Asterisk 14, `Response: Success` + `Message: Command output follows` + one `Output:` line per line
of output; up to 13, `Response: Follows`, `Privilege`, `ActionID`, then the raw CLI text and
`--END COMMAND--`.

One connection is kept between calls. Before each call, whatever Asterisk sent meanwhile is read
without waiting; if it closed the connection (a restart) a new one is opened, once per call. A
connection that fails after a request was written is not retried: Asterisk may have acted on it
(`core restart now` closes the connection on purpose), so the caller decides.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import re
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from ipwatch.asterisk.link import (
    DEFAULT_TIMEOUT,
    AsteriskAuthError,
    AsteriskDropped,
    AsteriskError,
    AsteriskPermissionError,
    AsteriskProtocolError,
    AsteriskTimeout,
    AsteriskUnavailable,
    seconds,
    strip_escapes,
    version_from_cli,
)
from ipwatch.asterisk.peer import check_tcp

_log = logging.getLogger(__name__)

BANNER = "Asterisk Call Manager/"
MAX_REPLY = 4 * 1024 * 1024  # `core show channels` with thousands of calls stays far below
RECV_SIZE = 65536
LOGOFF_TIMEOUT = 1.0
END_COMMAND = "--END COMMAND--"
# manager.c <= 13 action_command writes these headers, in this order, before the raw output.
_FOLLOWS_HEADER = re.compile(r"(Privilege|ActionID):", re.IGNORECASE)
# The write privileges manager.c checks for the actions ipwatch sends (manager.conf `write=`).
_PRIVILEGES = {
    "command": "command",
    "coresettings": "system (or reporting)",
    "corestatus": "system (or reporting)",
    "reload": "system (or config)",
}


@dataclass(frozen=True)
class _Call:
    """What is being waited for, for the error messages, and until when."""

    what: str
    timeout: float
    deadline: float

    def remaining(self, where: str) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise self.timed_out(where)
        return left

    def timed_out(self, where: str) -> AsteriskTimeout:
        return AsteriskTimeout(f"{where} did not answer {self.what} within {seconds(self.timeout)}")


@dataclass
class _Message:
    """One AMI message: its headers in order, and the command output it carried."""

    headers: list[tuple[str, str]] = field(default_factory=list)
    output: list[str] = field(default_factory=list)

    def get(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    def fields(self) -> dict[str, str]:
        """The headers as a dict; the first of a repeated key wins, as astman_get_header does."""
        found: dict[str, str] = {}
        for key, value in self.headers:
            found.setdefault(key, value)
        return found


class _Wire:
    """One connection's byte stream, read line by line under a deadline, never unbounded."""

    def __init__(self, sock: socket.socket, where: str, limit: int) -> None:
        self.sock = sock
        self.where = where
        self.limit = limit
        self.buffer = bytearray()
        self.taken = 0  # bytes of the current message so far

    def line(self, call: _Call) -> str:
        while (end := self.buffer.find(b"\n")) < 0:
            if self.taken + len(self.buffer) > self.limit:
                raise self.too_large(call)
            self._fill(call)
        raw = bytes(self.buffer[:end])
        del self.buffer[: end + 1]
        self.taken += end + 1
        if self.taken > self.limit:
            raise self.too_large(call)
        return raw.removesuffix(b"\r").decode("utf-8", errors="replace")

    def too_large(self, call: _Call) -> AsteriskProtocolError:
        return AsteriskProtocolError(
            f"{self.where} sent more than {self.limit // 1024} KiB in one message while ipwatch "
            f"waited for {call.what}"
        )

    def _fill(self, call: _Call) -> None:
        self.sock.settimeout(call.remaining(self.where))
        try:
            data = self.sock.recv(RECV_SIZE)
        except TimeoutError:
            raise call.timed_out(self.where) from None
        except OSError as error:
            raise AsteriskDropped(
                f"{self.where} broke the connection before answering {call.what} "
                f"({error.strerror or error})"
            ) from None
        if not data:
            raise AsteriskDropped(
                f"{self.where} closed the connection before answering {call.what}"
            )
        self.buffer += data

    def send(self, payload: bytes, call: _Call) -> None:
        self.sock.settimeout(call.remaining(self.where))
        try:
            self.sock.sendall(payload)
        except TimeoutError:
            raise AsteriskTimeout(
                f"{self.where} did not take {call.what} within {seconds(call.timeout)}"
            ) from None
        except OSError as error:
            raise AsteriskDropped(
                f"{self.where} broke the connection before {call.what} was sent "
                f"({error.strerror or error})"
            ) from None

    def still_open(self) -> bool:
        """Read what arrived since the last call without waiting; False if the peer has gone
        (or sent more than a message may hold, which no sane manager does between actions)."""
        self.sock.setblocking(False)
        try:
            while len(self.buffer) <= self.limit:
                data = self.sock.recv(RECV_SIZE)
                if not data:
                    return False
                self.buffer += data
            return False
        except BlockingIOError:
            return True
        except OSError:
            return False

    def close(self) -> None:
        self.sock.close()


class AmiLink:
    """A logged-in AMI session to one Asterisk, opened on first use and reopened when lost.

    Calls are serialised; the secret is only ever written to the socket.
    """

    def __init__(
        self,
        host: str,
        port: int,
        username: str,
        secret: str,
        *,
        max_reply: int = MAX_REPLY,
        user: str | None = None,
    ) -> None:
        self.host = host
        # Asterisk's user: the listener must belong to it or to root before the login is sent.
        self._user = user
        self.port = port
        self.username = username
        self._secret = secret
        self._max_reply = max_reply
        self._wire: _Wire | None = None
        self._ids = itertools.count(1)
        self._version: str | None = None
        self._lock = threading.Lock()
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.where = f"Asterisk's manager interface at {self.address}"

    def __repr__(self) -> str:
        return f"AmiLink({self.username!r} at {self.address})"

    def command(self, text: str, timeout: float) -> str:
        """Run a CLI command through the Command action and return its output.

        Output that the CLI marks as failed (`Response: Error` with output, e.g. "No such
        command") is returned like any other, as `asterisk -rx` prints it.
        """
        reply = self._request("Command", {"Command": text}, f"`{text}`", timeout)
        response = (reply.get("Response") or "").lower()
        carries_output = (reply.get("Message") or "").lower() == "command output follows"
        if response in ("success", "follows") or carries_output:
            return strip_escapes("\n".join(reply.output))
        raise self._refusal("Command", reply)

    def action(
        self, name: str, *, timeout: float = DEFAULT_TIMEOUT, **fields: str
    ) -> dict[str, str]:
        """Send one action (e.g. CoreStatus, CoreSettings, Reload) and return the response's
        headers; raise AsteriskError unless the response is `Success`."""
        reply = self._request(name, fields, f"the {name} action", timeout)
        if (reply.get("Response") or "").lower() != "success":
            raise self._refusal(name, reply)
        return reply.fields()

    def version(self, timeout: float = DEFAULT_TIMEOUT) -> str:
        """Asterisk's version from CoreSettings, or from `core show version` for a user that
        may run commands but not read the system settings."""
        if self._version is None:
            deadline = time.monotonic() + timeout
            try:
                found = self.action("CoreSettings", timeout=timeout).get("AsteriskVersion")
            except AsteriskPermissionError:
                left = max(0.0, deadline - time.monotonic())
                found = version_from_cli(self.command("core show version", left))
            if not found:
                raise AsteriskProtocolError(f"{self.where} did not say which version it runs")
            self._version = found
        return self._version

    def close(self) -> None:
        """Log off, waiting a moment for the goodbye, and close the connection."""
        with self._lock:
            if self._wire is None:
                return
            action_id = f"ipwatch-{next(self._ids)}"
            call = _Call("the Logoff action", LOGOFF_TIMEOUT, time.monotonic() + LOGOFF_TIMEOUT)
            with contextlib.suppress(AsteriskError):
                self._wire.send(_encode("Logoff", {}, action_id), call)
                self._await(action_id, call)
            self._disconnect()

    # -- one request -------------------------------------------------------------------------

    def _request(self, name: str, fields: Mapping[str, str], what: str, timeout: float) -> _Message:
        call = _Call(what, timeout, time.monotonic() + timeout)
        with self._lock:
            try:
                return self._exchange(name, fields, call)
            except (AsteriskTimeout, AsteriskDropped, AsteriskProtocolError):
                # An answer may still be on its way: this connection's state is unknown.
                self._disconnect()
                raise

    def _exchange(self, name: str, fields: Mapping[str, str], call: _Call) -> _Message:
        fresh = self._ensure_connected(call)
        action_id = f"ipwatch-{next(self._ids)}"
        payload = _encode(name, fields, action_id)
        assert self._wire is not None
        try:
            self._wire.send(payload, call)
        except AsteriskDropped:
            if fresh:
                raise
            _log.debug("%s: connection lost before %s was sent; reconnecting", self.where, name)
            self._disconnect()
            self._connect(call)
            assert self._wire is not None
            self._wire.send(payload, call)
        return self._await(action_id, call)

    def _ensure_connected(self, call: _Call) -> bool:
        """Make sure a logged-in connection exists; True when it was opened just now."""
        if self._wire is not None and not self._wire.still_open():
            _log.debug("%s closed the connection since the last call; reconnecting", self.where)
            self._disconnect()
        if self._wire is not None:
            return False
        self._connect(call)
        return True

    def _await(self, action_id: str, call: _Call) -> _Message:
        assert self._wire is not None
        while True:
            message = self._read_message(self._wire, call)
            if message.get("Response") is not None and message.get("ActionID") == action_id:
                return message

    # -- connecting --------------------------------------------------------------------------

    def _connect(self, call: _Call) -> None:
        try:
            sock = socket.create_connection((self.host, self.port), call.remaining(self.where))
        except ConnectionRefusedError:
            raise AsteriskUnavailable(
                f"{self.where} refused the connection; "
                "is Asterisk running and manager.conf enabled?"
            ) from None
        except TimeoutError:
            raise AsteriskTimeout(
                f"{self.where} did not accept a connection within {seconds(call.timeout)}"
            ) from None
        except OSError as error:
            raise AsteriskUnavailable(
                f"cannot connect to {self.where}: {error.strerror or error}"
            ) from None
        if self._user is not None:
            try:
                check_tcp(sock, self._user, self.where)
            except AsteriskError:
                sock.close()
                raise
        self._wire = _Wire(sock, self.where, self._max_reply)
        self._version = None
        try:
            self._greet(replace(call, what="its greeting"))
            self._login(replace(call, what="the Login action"))
        except AsteriskError:
            self._disconnect()
            raise

    def _greet(self, call: _Call) -> None:
        assert self._wire is not None
        banner = self._wire.line(call)
        if not banner.startswith(BANNER):
            raise AsteriskProtocolError(
                f"{self.address} is not Asterisk's manager interface (it said {banner[:60]!r})"
            )
        _log.debug("%s: %s", self.where, banner)

    def _login(self, call: _Call) -> None:
        """Log in with manager.c's MD5 challenge, so the secret itself never goes on the wire:
        `Challenge` gives a random string, `Login` answers md5(challenge + secret)."""
        assert self._wire is not None
        action_id = f"ipwatch-{next(self._ids)}"
        self._wire.send(_encode("Challenge", {"AuthType": "MD5"}, action_id), call)
        reply = self._await(action_id, call)
        challenge = reply.get("Challenge")
        if (reply.get("Response") or "").lower() != "success" or not challenge:
            raise self._refusal("Challenge", reply)
        key = hashlib.md5((challenge + self._secret).encode(), usedforsecurity=False).hexdigest()
        action_id = f"ipwatch-{next(self._ids)}"
        fields = {"AuthType": "MD5", "Username": self.username, "Key": key, "Events": "off"}
        self._wire.send(_encode("Login", fields, action_id), call)
        reply = self._await(action_id, call)
        if (reply.get("Response") or "").lower() != "success":
            raise self._refusal("Login", reply)

    def _disconnect(self) -> None:
        if self._wire is not None:
            self._wire.close()
            self._wire = None

    # -- reading messages --------------------------------------------------------------------

    @staticmethod
    def _read_message(wire: _Wire, call: _Call) -> _Message:
        wire.taken = 0
        first = wire.line(call)
        while not first:  # stray empty lines between messages carry nothing
            wire.taken = 0
            first = wire.line(call)
        if first.lower().replace(" ", "") == "response:follows":
            return _read_follows(wire, call)
        message = _Message()
        line = first
        while line:
            _take_line(message, line)
            line = wire.line(call)
        return message

    def _refusal(self, action: str, reply: _Message) -> AsteriskError:
        said = reply.get("Message") or reply.get("Response") or "nothing"
        if said.lower() == "authentication failed":
            return AsteriskAuthError(f"{self.where} rejected the username or secret")
        if said.lower() == "permission denied":
            privilege = _PRIVILEGES.get(action.lower(), f"the privilege {action} needs")
            return AsteriskPermissionError(
                f"{self.where} does not let AMI user '{self.username}' run {action}; "
                f"add {privilege} to its write= line in manager.conf"
            )
        return AsteriskError(f"{self.where} refused the {action} action: {said[:120]}")


def _take_line(message: _Message, line: str) -> None:
    # `Output:` values keep their leading blanks: CLI tables are indented (manager.c writes
    # "Output: %s" with exactly one space).
    if line[:7].lower() == "output:":
        message.output.append(line[7:].removeprefix(" "))
        return
    key, colon, value = line.partition(":")
    if colon:
        message.headers.append((key.strip(), value.strip()))


def _read_follows(wire: _Wire, call: _Call) -> _Message:
    """The <= 13 form: headers, then raw lines up to `--END COMMAND--`, then an empty line. The
    marker follows the output directly, so output without a final newline shares its line."""
    message = _Message(headers=[("Response", "Follows")])
    line = wire.line(call)
    while _FOLLOWS_HEADER.match(line):
        key, _, value = line.partition(":")
        message.headers.append((key.strip(), value.strip()))
        line = wire.line(call)
    while not line.endswith(END_COMMAND):
        message.output.append(line)
        line = wire.line(call)
    if rest := line.removesuffix(END_COMMAND):
        message.output.append(rest)
    while wire.line(call):
        pass
    return message


def _encode(name: str, fields: Mapping[str, str], action_id: str) -> bytes:
    """An action as manager.c reads it; a line break in a value would start a new header."""
    lines = [f"Action: {name}"]
    for key, value in fields.items():
        if any(c in key + value for c in "\r\n"):
            raise AsteriskError(f"the {key} field of the {name} action contains a line break")
        lines.append(f"{key}: {value}")
    lines.append(f"ActionID: {action_id}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()
