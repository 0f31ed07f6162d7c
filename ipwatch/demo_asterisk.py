"""An Asterisk simulator for `ipwatch demo`. It is NOT Asterisk and runs no SIP at all.

It listens on a Unix socket and speaks the console-socket protocol that `asterisk -rx` uses, so
ipwatch's real console client (ipwatch/asterisk/console.py) talks to it unchanged: on connect it
writes `hostname/pid/version\\n`; a client sends `cli quit after <command>\\0` in one write; the
simulator writes the command's output and closes. A client that only reads the greeting (to learn
the version) just closes.

It knows the handful of commands ipwatch sends, with replies shaped like a real Asterisk 20's:
`core show version`, `core show channels count` (always idle), `module reload res_pjsip.so`
(re-reads the transports' external_* values from the pjsip.conf it was given), `pjsip send
register *all`, and `pjsip show transport <id>` (what the last load read). Templates, `(+)`
sections and everything else of PJSIP are left out: the demo's pjsip.conf uses none of them.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from ipwatch.asterisk.conf import load_tree

LABEL = "Asterisk simulator (not a real Asterisk)"
VERSION = "20.11.0"
QUIT_AFTER = b"cli quit after "
CONSOLE_BUFFER = 512  # netconsole reads one command into a buffer this large
SHOWN = ("bind", "external_media_address", "external_signaling_address", "local_net", "protocol")

Heard = Callable[[str, str], None]  # (command, output): the demo narrates what was asked


class AsteriskSimulator:
    """The console socket of a pretend Asterisk at `socket_path`, serving on its own thread."""

    def __init__(self, socket_path: Path, pjsip_conf: Path, heard: Heard | None = None) -> None:
        self.socket_path = socket_path
        self.pjsip_conf = pjsip_conf
        self.heard = heard
        self.commands: list[str] = []
        self.transports = _transports(pjsip_conf)  # as read "at start-up"
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False

    def __enter__(self) -> AsteriskSimulator:
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(self.socket_path))
        self._listener.listen()
        self._thread = threading.Thread(target=self._serve, name="asterisk-simulator", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        assert self._listener is not None and self._thread is not None
        self._stopping = True
        # A connection of our own wakes the serving thread's accept().
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as wake:
            wake.connect(str(self.socket_path))
        self._thread.join()
        self._listener.close()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()

    def run(self, command: str) -> str:
        """What the simulator answers to one CLI command."""
        words = command.split()
        if command == "core show version":
            return f"Asterisk {VERSION} built by ipwatch-demo on a simulator (not a real Asterisk)"
        if command == "core show channels count":
            return "0 active channels\n0 active calls\n0 calls processed"
        if command == "module reload res_pjsip.so":
            self.transports = _transports(self.pjsip_conf)
            return "Module 'res_pjsip.so' reloaded successfully."
        if command == "pjsip send register *all":
            return "Re-register all queued"
        if words[:3] == ["pjsip", "show", "transport"] and len(words) == 4:
            return self._show_transport(words[3])
        return f"No such command '{command}' (type 'core show help {command}' for help)"

    def _show_transport(self, name: str) -> str:
        values = self.transports.get(name)
        if values is None:
            return f"Unable to find object {name}.\n"
        rows = [f" {key:<27} : {values.get(key, '')}" for key in SHOWN]
        # The layout of a real Asterisk's `pjsip show transport`, cut to the rows shown here.
        return "\n".join(
            [
                "",
                f"Transport:  {name:<25} {values.get('protocol', 'udp'):<6}"
                f"   0      0  {values.get('bind', '')}",
                "",
                " ParameterName               : ParameterValue",
                " =================================================",
                *rows,
                "",
            ]
        )

    def _serve(self) -> None:
        assert self._listener is not None
        while True:
            connection, _ = self._listener.accept()
            with connection:
                if self._stopping:
                    return
                self._answer(connection)

    def _answer(self, connection: socket.socket) -> None:
        connection.settimeout(5)
        try:
            connection.sendall(f"{socket.gethostname()}/{os.getpid()}/{VERSION}\n".encode())
            request = connection.recv(CONSOLE_BUFFER)
        except OSError:
            return
        if not request.startswith(QUIT_AFTER):
            return  # the client only wanted the version from the greeting
        command = request[len(QUIT_AFTER) :].partition(b"\0")[0].decode(errors="replace")
        output = self.run(command)
        self.commands.append(command)
        if self.heard is not None:
            self.heard(command, output)  # before the reply, so the narration keeps its order
        with contextlib.suppress(OSError):
            connection.sendall(output.encode() + b"\n")


def _transports(pjsip_conf: Path) -> dict[str, dict[str, str]]:
    """Each `type = transport` section's options as pjsip.conf sets them (the last one wins)."""
    sections: dict[str, dict[str, str]] = {}
    for item in load_tree(pjsip_conf).options():
        if item.section is not None:
            sections.setdefault(item.section.name, {})[item.option.key] = item.option.value
    return {name: values for name, values in sections.items() if values.get("type") == "transport"}
