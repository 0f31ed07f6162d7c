"""A real Asterisk on the lab's PBX (the `lan` namespace) and a SIP peer on its "Internet".

Asterisk binds its transport to the LAN address 192.0.2.2 and qualifies a contact at
198.51.100.1 in `wan` every second, so each OPTIONS crosses the router's NAT and carries, in Via
and Contact, the external address Asterisk runs: what the peer on the Internet really sees. Its
tree lives under a short directory in /tmp, because the console socket's path must fit in a
sockaddr_un (108 bytes); ipwatch talks to it through that socket, which crosses namespaces.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

from tests.peers.real_asterisk import RealAsterisk
from tests.peers.sip_probe import SipProbe

T = TypeVar("T")
_CLONE_NEWNET = 0x40000000


def pjsip_conf(transport: str, address: str, probe_uri: str) -> str:
    """A transport behind the lab's NAT and a contact on the Internet qualified every second."""
    return (
        f"[{transport}]\ntype = transport\nprotocol = udp\nbind = 192.0.2.2:5060\n"
        f"external_media_address = {address}\nexternal_signaling_address = {address}\n"
        "local_net = 192.0.2.0/24\nallow_reload = no\n"
        f"\n[probe]\ntype = aor\ncontact = {probe_uri}\nqualify_frequency = 1\n"
        f"\n[probe]\ntype = endpoint\ntransport = {transport}\naors = probe\n"
        "context = hold\ndisallow = all\nallow = ulaw\n"
    )


@contextlib.contextmanager
def running_asterisk(
    version: str, inside: Sequence[str], files: dict[str, str]
) -> Iterator[RealAsterisk]:
    """A real Asterisk of `version` started under `inside` (the lab's prefix into a namespace)."""
    root = Path(tempfile.mkdtemp(prefix="ipwa", dir="/tmp"))
    try:
        asterisk = RealAsterisk(version, root)
        for name, text in files.items():
            asterisk.write(name, text)
        asterisk.start(inside)
        try:
            yield asterisk
        finally:
            asterisk.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def probe_in(namespace: str, host: str) -> Iterator[SipProbe]:
    """A SipProbe whose socket lives in `namespace` (set up in a thread that enters it)."""
    probe = in_namespace(namespace, lambda: SipProbe(host))
    try:
        yield probe
    finally:
        probe.close()


def in_namespace(namespace: str, make: Callable[[], T]) -> T:
    """`make()` run in a thread that entered the network namespace `namespace` (setns(2) moves
    only the calling thread); sockets it creates stay in that namespace."""
    made: list[T] = []
    failed: list[BaseException] = []

    def enter_and_make() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        descriptor = os.open(f"/run/netns/{namespace}", os.O_RDONLY)
        try:
            if libc.setns(descriptor, _CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns into {namespace}")
            made.append(make())
        except BaseException as error:
            failed.append(error)
        finally:
            os.close(descriptor)

    thread = threading.Thread(target=enter_and_make)
    thread.start()
    thread.join()
    if failed:
        raise failed[0]
    return made[0]
