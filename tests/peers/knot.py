"""A real Knot DNS on loopback, primary for the zone "ddns.test" with the records the bind9 peer
serves, open to RFC 2136 updates signed with one TSIG key (hmac-sha512) and known to a second key
(hmac-sha256) that may not update anything.

`running_knot()` starts one in a directory and stops it; the `knot` fixture wraps it per module.
"""

from __future__ import annotations

import base64
import contextlib
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.peers.bind9 import DDNS_ZONE, IN_RECORDS, serving, zone_file
from tests.support import free_port, need, stop, wait_until

UPDATER_KEY = ("ipwatch-knot", "hmac-sha512")
READER_KEY = ("reader", "hmac-sha256")  # known to the server, granted nothing
STARTUP_TIMEOUT = 10.0


@dataclass
class Knot:
    host: str
    port: int
    directory: Path
    process: subprocess.Popen[bytes]
    secrets: dict[str, str]  # key name -> base64 secret
    zone: str = DDNS_ZONE
    tsig_name: str = UPDATER_KEY[0]
    tsig_algorithm: str = UPDATER_KEY[1]
    reader_name: str = READER_KEY[0]
    reader_algorithm: str = READER_KEY[1]

    @property
    def server(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def tsig_secret(self) -> str:
        return self.secrets[self.tsig_name]

    @property
    def reader_secret(self) -> str:
        return self.secrets[self.reader_name]

    def log(self) -> str:
        return (self.directory / "knot.log").read_text(errors="replace")


def _knot_conf(directory: Path, port: int, keys: dict[str, str]) -> str:
    algorithms = dict((UPDATER_KEY, READER_KEY))
    key_lines = "\n".join(
        f"  - id: {name}\n    algorithm: {algorithms[name]}\n    secret: {secret}"
        for name, secret in keys.items()
    )
    # Knot answers BADKEY for a key that no ACL of the zone names, even in a query: the reader's
    # `action: query` makes it a key Knot knows, with no right to update.
    return f"""
server:
  rundir: "{directory}"
  listen: 127.0.0.1@{port}
log:
  - target: stderr
    any: info
database:
  storage: "{directory}"
key:
{key_lines}
acl:
  - id: updater
    key: {UPDATER_KEY[0]}
    action: update
  - id: reader
    key: {READER_KEY[0]}
    action: query
template:
  - id: default
    storage: "{directory}"
    file: "%s.zone"
zone:
  - domain: {DDNS_ZONE}
    acl: [updater, reader]
"""


@contextlib.contextmanager
def running_knot(directory: Path) -> Iterator[Knot]:
    """Start knotd in `directory` on a free port, wait until it serves the zone, stop it."""
    knotd = need("knotd", "knot")
    port = free_port()
    keys = {
        name: base64.b64encode(secrets.token_bytes(32)).decode()
        for name, _ in (UPDATER_KEY, READER_KEY)
    }
    (directory / f"{DDNS_ZONE}.zone").write_text(zone_file(DDNS_ZONE, "IN", IN_RECORDS))
    conf = directory / "knot.conf"
    conf.write_text(_knot_conf(directory, port, keys))
    with open(directory / "knot.log", "wb") as log:
        process = subprocess.Popen([knotd, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    server = Knot("127.0.0.1", port, directory, process, keys)
    try:
        wait_until(
            lambda: serving(process, server.log, server.host, port, "knotd"),
            STARTUP_TIMEOUT,
            f"knotd to answer on port {port}",
        )
        yield server
    finally:
        stop(process)


@pytest.fixture(scope="module")
def knot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Knot]:
    """A knotd for the test module; tests that send updates should use their own names."""
    with running_knot(tmp_path_factory.mktemp("knot")) as server:
        yield server
