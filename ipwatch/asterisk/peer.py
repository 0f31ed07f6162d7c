"""Is the other end of a connection really Asterisk? Judged by the user that owns its socket.

Port 5038 needs no privilege, and Asterisk is down now and then (including the restarts ipwatch
itself asks for): any local user could listen there meanwhile, take the AMI login and answer
"reloaded, shows the new address". So before a byte is sent, the socket at the other end must
belong to the user Asterisk runs as (`asterisk.user`) or to root. For TCP the kernel says who
owns the accepted socket in /proc/net/tcp{,6} (its `uid` column; the accepted socket is the
listener's user's); for the control socket SO_PEERCRED gives the peer process's uid.
"""

from __future__ import annotations

import ipaddress
import pwd
import socket
import struct

from ipwatch.asterisk.link import AsteriskDropped, AsteriskError

_PROC_TABLES = {socket.AF_INET: "/proc/net/tcp", socket.AF_INET6: "/proc/net/tcp6"}


class AsteriskImpostor(AsteriskError):
    """Something answers where Asterisk should be, but it is not Asterisk's user."""


def allowed_uids(user: str) -> frozenset[int]:
    """Root, and `user` when that user exists."""
    try:
        return frozenset({0, pwd.getpwnam(user).pw_uid})
    except KeyError:
        return frozenset({0})


def check_tcp(sock: socket.socket, user: str, where: str) -> None:
    """Raise AsteriskImpostor unless the server end of `sock` belongs to root or `user`.

    A peer this machine cannot see (another host: `allow_remote_ami`) cannot be judged and is
    let through; the config already had to allow it explicitly.
    """
    try:
        peer = sock.getpeername()
    except OSError:  # reset at once: Asterisk going down, or something that hung up
        raise AsteriskDropped(f"{where} closed the connection as soon as it was made") from None
    if not ipaddress.ip_address(peer[0].split("%")[0]).is_loopback:
        return
    owner = _tcp_owner(sock)
    _judge(owner, user, where)


def check_unix(sock: socket.socket, user: str, where: str) -> None:
    """Raise AsteriskImpostor unless the process at the other end runs as root or `user`."""
    credentials = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", credentials)
    _judge(uid, user, where)


def _judge(owner: int | None, user: str, where: str) -> None:
    if owner is not None and owner in allowed_uids(user):
        return
    who = "an unknown user" if owner is None else _name(owner)
    raise AsteriskImpostor(
        f"{where} belongs to {who}, not to Asterisk's user {user!r} or root; ipwatch sent"
        " nothing (if Asterisk runs as another user, set asterisk.user)"
    )


def _name(uid: int) -> str:
    try:
        return f"user {pwd.getpwuid(uid).pw_name!r} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _tcp_owner(sock: socket.socket) -> int | None:
    """The uid of the socket whose local end is our peer and whose remote end is us."""
    server = _proc_address(sock.family, sock.getpeername())
    client = _proc_address(sock.family, sock.getsockname())
    try:
        with open(_PROC_TABLES[sock.family], encoding="ascii") as table:
            next(table)  # the header
            for line in table:
                fields = line.split()
                if fields[1] == server and fields[2] == client:
                    return int(fields[7])
    except (OSError, KeyError, IndexError, ValueError):
        return None
    return None


def _proc_address(family: int, address: tuple[str, int] | tuple[str, int, int, int]) -> str:
    """An address as /proc/net/tcp{,6} writes it: each 32-bit word of the address read in host
    byte order, in hex, then a colon and the port in hex."""
    packed = socket.inet_pton(family, address[0].split("%")[0])
    words = struct.unpack(f"={len(packed) // 4}I", packed)
    return "".join(f"{word:08X}" for word in words) + f":{address[1]:04X}"
