"""An impostor on Asterisk's AMI port or control socket gets nothing and is never believed.

Port 5038 needs no privilege, and while Asterisk is down any local user may listen there. The
impostor here is a socket created as `nobody` that answers like Asterisk would and records what
it receives; ipwatch must refuse it before sending a byte (exit 3, nothing written, never
"verified"), and its AMI login must never carry the secret even to the real Asterisk.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.peers.real_asterisk import (
    AMI_SECRET,
    NEW_ADDRESS,
    VERSIONS,
    RealFactory,
    ipwatch_config,
    nat_transport,
)
from tests.support import missing, run_ipwatch

pytestmark = pytest.mark.integration
AMI_BANNER = "Asterisk Call Manager/11.0.0\r\n"


# The impostor runs as `nobody` with Debian's python3 (root's own Python may be out of its
# reach): it greets, answers every request "Success", and appends what it receives to a file.
IMPOSTOR = """
import socket, sys
family, address, greeting, log = sys.argv[1:5]
family = socket.AF_UNIX if family == "unix" else socket.AF_INET
where = address if family == socket.AF_UNIX else ("127.0.0.1", int(address))
server = socket.socket(family, socket.SOCK_STREAM)
server.bind(where)
server.listen()
print("ready", flush=True)
while True:
    connection, _ = server.accept()
    with connection, open(log, "ab") as kept:
        kept.write(b"connection\\n")
        kept.flush()
        connection.settimeout(2)
        try:
            connection.sendall(greeting.encode())
            while data := connection.recv(4096):
                kept.write(data)
                kept.flush()
                connection.sendall(b"Response: Success\\r\\nMessage: ok\\r\\n\\r\\n")
        except OSError:
            pass
"""


class Impostor:
    """Something listening where Asterisk should be, as another local user (`nobody`)."""

    def __init__(self, kind: str, address: str, greeting: str) -> None:
        if os.geteuid() != 0:
            missing("the impostor runs as `nobody`, which needs root")
        directory = Path(tempfile.mkdtemp(prefix="impostor-"))
        python = "/usr/bin/python3"  # Debian's, which `nobody` may run
        if not os.access(python, os.X_OK):
            missing("/usr/bin/python3 is not installed (apt-get install python3)")
        directory.mkdir(mode=0o777, exist_ok=True)
        directory.chmod(0o777)
        self.log = directory / "received"
        nobody = pwd.getpwnam("nobody")
        self.process = subprocess.Popen(
            [python, "-c", IMPOSTOR, kind, address, greeting, str(self.log)],
            stdout=subprocess.PIPE,
            text=True,
            user=nobody.pw_uid,
            group=nobody.pw_gid,
            extra_groups=[],
        )
        assert self.process.stdout is not None
        assert self.process.stdout.readline() == "ready\n"

    @property
    def connections(self) -> int:
        return self._kept().count(b"connection\n")

    @property
    def received(self) -> bytes:
        return self._kept().replace(b"connection\n", b"")

    def _kept(self) -> bytes:
        return self.log.read_bytes() if self.log.exists() else b""

    def close(self) -> None:
        self.process.kill()
        self.process.communicate()
        shutil.rmtree(self.log.parent)


@contextlib.contextmanager
def impostor(kind: str, address: str, greeting: str) -> Iterator[Impostor]:
    fake = Impostor(kind, address, greeting)
    try:
        yield fake
    finally:
        fake.close()


@pytest.mark.parametrize("control", ["ami", "console"])
def test_an_impostor_where_asterisk_should_be_is_refused_before_a_byte_is_sent(
    control: str, tmp_path: Path, real_asterisk_factory: RealFactory
) -> None:
    # The real Asterisk's files and address, but it is down: the impostor took its place.
    asterisk = real_asterisk_factory(VERSIONS[0])
    asterisk.write("pjsip.conf", nat_transport(asterisk))
    pjsip = asterisk.config_dir / "pjsip.conf"
    before = pjsip.read_bytes()
    target = f'kind = "pjsip"\nfile = "{pjsip}"\n'
    config = ipwatch_config(tmp_path, asterisk, target, control=control)
    if control == "ami":
        place = ("tcp", str(asterisk.ami_port), AMI_BANNER)
    else:
        # A run directory others may write to: the only way another user gets at this path.
        asterisk.root.chmod(0o711)
        asterisk.run_dir.chmod(0o777)
        place = ("unix", str(asterisk.console_path), "pbx/1/Asterisk 22.10.1\n")
    with impostor(*place) as fake:
        finished = run_ipwatch(
            "check", "--apply", "--json", config=config, state_dir=tmp_path / "state"
        )
        assert fake.connections >= 1  # ipwatch did connect, and then said nothing
        assert fake.received == b""
    assert finished.returncode == 3, finished.stderr
    result = json.loads(finished.stdout)
    assert result["applied"] is False and result["asterisk"]["verified"] is False
    assert "belongs to user 'nobody'" in result["asterisk"]["error"]
    assert "not to Asterisk's user 'asterisk' or root" in result["asterisk"]["error"]
    assert pjsip.read_bytes() == before
    status = run_ipwatch("status", state_dir=tmp_path / "state")
    assert status.returncode != 0 and AMI_SECRET not in status.stdout


class Recorder:
    """A TCP relay on loopback (owned by root, like Asterisk here) that keeps what the client
    sends: the AMI session as it crosses the wire."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.sent = bytearray()
        self._open: list[socket.socket] = []
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        self.socket.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.socket.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            server = socket.create_connection(self.target)
            self._open += [client, server]
            threading.Thread(target=self._pipe, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, False), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, record: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(4096):
                if record:
                    self.sent += data
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._stop.set()
        self.socket.close()
        self._thread.join(timeout=5)
        for connection in self._open:
            connection.close()


@pytest.mark.parametrize("version", VERSIONS)
def test_the_real_asterisk_accepts_the_md5_login_and_the_secret_stays_off_the_wire(
    version: str, tmp_path: Path, real_asterisk_factory: RealFactory
) -> None:
    asterisk = real_asterisk_factory(version)
    asterisk.write("pjsip.conf", nat_transport(asterisk))
    asterisk.start()
    relay = Recorder(("127.0.0.1", asterisk.ami_port))
    try:
        target = f'kind = "pjsip"\nfile = "{asterisk.config_dir / "pjsip.conf"}"\n'
        config = ipwatch_config(tmp_path, asterisk, target)
        config.write_text(
            config.read_text().replace(f"port = {asterisk.ami_port}", f"port = {relay.port}")
        )
        finished = run_ipwatch("check", "--apply", "--json", config=config, state_dir=tmp_path)
    finally:
        relay.close()
    assert finished.returncode == 0, finished.stderr
    assert json.loads(finished.stdout)["asterisk"] == {"action": "reload", "verified": True}
    assert asterisk.transport("transport-udp-nat")["external_signaling_address"] == NEW_ADDRESS
    wire = bytes(relay.sent)
    assert b"Action: Challenge" in wire and b"AuthType: MD5" in wire and b"Key: " in wire
    assert AMI_SECRET.encode() not in wire and b"Secret:" not in wire
