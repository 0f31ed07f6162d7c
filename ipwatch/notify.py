"""systemd's notification protocol (sd_notify(3)) for `ipwatch run`.

Without `NOTIFY_SOCKET` (not started by systemd, or a `Type=` other than notify) every call is a
silent no-op. With it, each message is one datagram of `KEY=VALUE` lines sent to that socket.

This speaks the protocol itself instead of using PyPI's sdnotify: sdnotify connects once, so a
notify socket that was re-bound (systemd re-executed) stays unreachable for good; it encodes as
Latin-1, so a STATUS line with an arrow or an umlaut is dropped; a failed connect leaks its socket;
and by default it swallows every error. Here each datagram is addressed anew (as libsystemd does),
text goes out as UTF-8, and a failure is logged once and otherwise ignored: a vanished socket must
never stop the daemon — if pings stop arriving, systemd's watchdog is the one to act. A send that
would block gives up after `SEND_TIMEOUT`, so a stuck receiver cannot stall the loop that pings.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Mapping

log = logging.getLogger("ipwatch")

SEND_TIMEOUT = 2.0


class Notifier:
    """Sends state changes to the service manager at `$NOTIFY_SOCKET` (read when created).

    Each method sends one datagram and returns whether it was delivered (always False without a
    socket). A `status` argument adds a `STATUS=` line to the same datagram. Safe to use from
    several threads (the scheduler's and the main loop).
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self.address = (os.environ if environ is None else environ).get("NOTIFY_SOCKET", "")
        self._socket: socket.socket | None = None
        self._failing = False
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def ready(self, status: str | None = None) -> bool:
        return self.send("READY=1", status=status)

    def status(self, line: str) -> bool:
        return self.send(status=line)

    def reloading(self, status: str | None = None) -> bool:
        # MONOTONIC_USEC in the same datagram as RELOADING=1 (sd_notify(3)) lets systemd tell the
        # READY=1 that ends this reload from an earlier one; newer versions ignore RELOADING=1
        # without it (systemd.service(5), Type=notify-reload). systemd 252 ignores the field.
        now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={now_usec}", status=status)

    def stopping(self, status: str | None = None) -> bool:
        return self.send("STOPPING=1", status=status)

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def send(self, *assignments: str, status: str | None = None) -> bool:
        """Send `KEY=VALUE` assignments (and a STATUS line) as one datagram."""
        if not self.enabled:
            return False
        lines = list(assignments)
        if status is not None:
            lines.append(f"STATUS={one_line(status)}")
        with self._lock:
            return self._deliver("\n".join(lines).encode("utf-8"))

    def close(self) -> None:
        with self._lock:
            if self._socket is not None:
                self._socket.close()
                self._socket = None

    def __enter__(self) -> Notifier:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _deliver(self, datagram: bytes) -> bool:
        try:
            target = socket_address(self.address)
            if self._socket is None:
                # Unconnected: each sendto looks the path up again, finding a re-bound socket.
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._socket.settimeout(SEND_TIMEOUT)
            self._socket.sendto(datagram, target)
        except OSError as error:
            if not self._failing:
                log.warning(
                    "systemd notify socket %s: %s; notifications are skipped until it works again",
                    self.address,
                    error.strerror or error,
                )
            self._failing = True
            return False
        if self._failing:
            log.info("systemd notify socket %s: works again", self.address)
        self._failing = False
        return True


def socket_address(address: str) -> str | bytes:
    """`$NOTIFY_SOCKET` as an AF_UNIX address: an absolute path, or `@name` for the abstract
    namespace (a leading NUL byte). Anything else (a relative path; `vsock:`, which Debian 12's
    systemd 252 never sets) raises OSError."""
    if address.startswith("@"):
        return b"\0" + address[1:].encode()
    if address.startswith("/"):
        return address
    raise OSError(f"not an absolute path or an @abstract name ({address!r})")


def one_line(text: str) -> str:
    """systemd shows STATUS= as one line; a newline would end the assignment early."""
    return " ".join(text.split())


def watchdog_interval(
    environ: Mapping[str, str] | None = None, pid: int | None = None
) -> float | None:
    """Seconds between WATCHDOG=1 pings — half of `$WATCHDOG_USEC`, as sd_watchdog_enabled(3)
    advises — or None when systemd expects none from this process (`WATCHDOG_PID` names another,
    e.g. the variable was inherited from a parent) or the value is not a positive integer."""
    environ = os.environ if environ is None else environ
    owner = environ.get("WATCHDOG_PID", "").strip()
    if owner and owner != str(os.getpid() if pid is None else pid):
        return None
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 2_000_000 if usec > 0 else None
