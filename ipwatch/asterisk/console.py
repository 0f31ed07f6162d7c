"""Asterisk's control socket, spoken the way `asterisk -rx` speaks it (main/asterisk.c).

On connect Asterisk's netconsole writes `hostname/pid/version\\n`. The client then writes
`cli quit after <command>` and a NUL in one write: netconsole reads once into a 512-byte buffer
and only a buffer that starts with that prefix runs the command and closes the connection, so a
split write or a longer command would not work. The output is everything up to end of file; the
protocol has no end marker, so a connection cut short looks like a short output.

Verbose messages and log lines are sent to every console, this one included. ast_remotecontrol
drops lines whose first byte is negative as a signed char: logger.c prefixes verbose messages
with a "magic" byte -(level + 1); older releases marked them with byte 127 instead. Each
command opens its own connection, as `asterisk -rx` does.
"""

from __future__ import annotations

import re
import socket
import time

from ipwatch.asterisk.link import (
    DEFAULT_TIMEOUT,
    AsteriskDropped,
    AsteriskError,
    AsteriskPermissionError,
    AsteriskProtocolError,
    AsteriskTimeout,
    AsteriskUnavailable,
    seconds,
    strip_escapes,
)
from ipwatch.asterisk.peer import check_unix

QUIT_AFTER = b"cli quit after "
CONSOLE_BUFFER = 512  # netconsole's inbuf; one byte stays for the terminating NUL
MAX_BANNER = 256  # ast_remotecontrol reads the greeting into buf[256]
MAX_OUTPUT = 4 * 1024 * 1024
RECV_SIZE = 65536
OLD_VERBOSE_PREAMBLE = 127
_LINES = re.compile(rb"[^\n]*\n|[^\n]+")


class ConsoleLink:
    """`asterisk -rx` over the control socket at `path`; holds no connection between calls."""

    def __init__(self, path: str, *, max_output: int = MAX_OUTPUT, user: str | None = None) -> None:
        self.path = path
        self._max_output = max_output
        # Asterisk's user: the process at the other end must run as it or as root.
        self._user = user

    def __repr__(self) -> str:
        return f"ConsoleLink({self.path!r})"

    def command(self, text: str, timeout: float) -> str:
        """Run one CLI command and return its output without verbose and log-preamble lines."""
        request = QUIT_AFTER + text.encode() + b"\0"
        if len(request) > CONSOLE_BUFFER - 1 or any(c in text for c in "\0\r\n"):
            raise AsteriskError(
                f"cannot send `{text[:60]}` over {self.path}: commands there are one line "
                f"of at most {CONSOLE_BUFFER - 1 - len(QUIT_AFTER) - 1} bytes"
            )
        what = f"`{text}`"
        deadline = time.monotonic() + timeout
        with self._connect(deadline, timeout) as sock:
            _, rest = self._greeting(sock, deadline, timeout)
            try:
                sock.sendall(request)
            except OSError as error:
                raise AsteriskDropped(
                    f"Asterisk closed its control socket {self.path} before {what} was sent "
                    f"({error.strerror or error})"
                ) from None
            output = self._until_closed(sock, rest, deadline, timeout, what)
        return strip_escapes(clean_output(output)).removesuffix("\n")

    def version(self, timeout: float = DEFAULT_TIMEOUT) -> str:
        """The version in netconsole's greeting (what `asterisk -r` shows on connecting)."""
        deadline = time.monotonic() + timeout
        with self._connect(deadline, timeout) as sock:
            version, _ = self._greeting(sock, deadline, timeout)
        return version

    def close(self) -> None:
        """Nothing to release: every command has its own connection."""

    def _connect(self, deadline: float, timeout: float) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self._left(deadline, timeout, "a connection"))
            sock.connect(self.path)
        except FileNotFoundError:
            sock.close()
            raise AsteriskUnavailable(
                f"no Asterisk control socket at {self.path}; is Asterisk running?"
            ) from None
        except ConnectionRefusedError:
            sock.close()
            raise AsteriskUnavailable(
                f"nothing listens on the Asterisk control socket {self.path}; is Asterisk running?"
            ) from None
        except PermissionError:
            sock.close()
            raise AsteriskPermissionError(
                f"{self.path}: permission denied; run ipwatch as the asterisk user or a member "
                "of the astctlgroup"
            ) from None
        except (TimeoutError, AsteriskTimeout):
            sock.close()
            raise AsteriskTimeout(
                f"Asterisk's control socket {self.path} did not accept a connection within "
                f"{seconds(timeout)}"
            ) from None
        except OSError as error:
            sock.close()
            raise AsteriskUnavailable(
                f"cannot connect to Asterisk's control socket {self.path}: "
                f"{error.strerror or error}"
            ) from None
        if self._user is not None:
            try:
                check_unix(sock, self._user, f"the control socket {self.path}")
            except AsteriskError:
                sock.close()
                raise
        return sock

    def _greeting(self, sock: socket.socket, deadline: float, timeout: float) -> tuple[str, bytes]:
        """Read `hostname/pid/version\\n`; return the version and any bytes after it."""
        data = b""
        while b"\n" not in data and len(data) < MAX_BANNER:
            chunk = self._recv(sock, deadline, timeout, "its greeting")
            if not chunk:
                break
            data += chunk
        line, newline, rest = data.partition(b"\n")
        parts = line.decode("utf-8", errors="replace").split("/", 2)
        if not newline or len(parts) != 3 or not parts[1].isdigit():
            raise AsteriskProtocolError(
                f"{self.path} is not an Asterisk control socket (it said {line[:60]!r})"
            )
        return parts[2], rest

    def _until_closed(
        self, sock: socket.socket, data: bytes, deadline: float, timeout: float, what: str
    ) -> bytes:
        received = bytearray(data)
        while chunk := self._recv(sock, deadline, timeout, what):
            received += chunk
            if len(received) > self._max_output:
                raise AsteriskProtocolError(
                    f"Asterisk wrote more than {self._max_output // 1024} KiB for {what} on "
                    f"{self.path}; ipwatch stops reading there"
                )
        return bytes(received)

    def _recv(self, sock: socket.socket, deadline: float, timeout: float, what: str) -> bytes:
        sock.settimeout(self._left(deadline, timeout, what))
        try:
            return sock.recv(RECV_SIZE)
        except TimeoutError:
            raise self._timeout(timeout, what) from None
        except OSError as error:
            raise AsteriskDropped(
                f"Asterisk broke the connection on {self.path} during {what} "
                f"({error.strerror or error})"
            ) from None

    def _left(self, deadline: float, timeout: float, what: str) -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise self._timeout(timeout, what)
        return left

    def _timeout(self, timeout: float, what: str) -> AsteriskTimeout:
        return AsteriskTimeout(
            f"Asterisk did not answer {what} on its control socket {self.path} "
            f"within {seconds(timeout)}"
        )


def clean_output(data: bytes) -> str:
    """Drop the lines ast_remotecontrol does not print and decode the rest.

    A line is a verbose message when its first byte has the high bit set (a negative signed
    char) or is 127; the whole line goes, however the reads split it.
    """
    lines = _LINES.findall(data)
    kept = [line for line in lines if line[0] < 0x80 and line[0] != OLD_VERBOSE_PREAMBLE]
    return b"".join(kept).decode("utf-8", errors="replace")
