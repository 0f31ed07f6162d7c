"""STUN Binding messages (RFC 8489): build requests and responses, parse what comes back, strictly.

Pure functions over bytes, no I/O. The client side is `binding_request`, `is_response_to` and
`parse_response`; the server side (the loopback responder used by the demo and the tests) is
`parse_request` and `binding_success`. Every problem with a received message is a `StunError`
carrying a short phrase, so callers never see struct or index errors from hostile input.
"""

from __future__ import annotations

import ipaddress
import secrets
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAGIC_COOKIE = 0x2112A442
HEADER = struct.Struct("!HHI12s")  # type, length, magic cookie, transaction id (RFC 8489 §5)
HEADER_SIZE = HEADER.size
TRANSACTION_ID_SIZE = 12

BINDING_REQUEST = 0x0001
BINDING_SUCCESS = 0x0101
BINDING_ERROR = 0x0111

MAPPED_ADDRESS = 0x0001
USERNAME = 0x0006
MESSAGE_INTEGRITY = 0x0008
ERROR_CODE = 0x0009
UNKNOWN_ATTRIBUTES = 0x000A
REALM = 0x0014
NONCE = 0x0015
MESSAGE_INTEGRITY_SHA256 = 0x001C
PASSWORD_ALGORITHM = 0x001D
USERHASH = 0x001E
XOR_MAPPED_ADDRESS = 0x0020
FINGERPRINT = 0x8028

# RFC 8489 §6.3.3: a success response with a comprehension-required attribute (below 0x8000)
# that the client does not understand fails the transaction. These are the ones RFC 8489
# defines; the authentication ones are understood in the sense that a client which sent no
# credentials has nothing to check them against (RFC 5769's vectors carry MESSAGE-INTEGRITY).
KNOWN_REQUIRED = frozenset(
    {
        MAPPED_ADDRESS,
        USERNAME,
        MESSAGE_INTEGRITY,
        ERROR_CODE,
        UNKNOWN_ATTRIBUTES,
        REALM,
        NONCE,
        MESSAGE_INTEGRITY_SHA256,
        PASSWORD_ALGORITHM,
        USERHASH,
        XOR_MAPPED_ADDRESS,
    }
)

FINGERPRINT_XOR = 0x5354554E  # "STUN", RFC 8489 §14.7
_FAMILY_IPV4 = 0x01
_FAMILY_IPV6 = 0x02
_ADDRESS_SIZES = {_FAMILY_IPV4: 4, _FAMILY_IPV6: 16}
_REASON_LIMIT = 128  # characters of an ERROR-CODE reason worth showing to a user


class StunError(ValueError):
    """A received datagram is not an acceptable STUN message; the text is one short phrase."""


class StunErrorResponse(StunError):
    """The server answered with a Binding error response (RFC 8489 §6.3.4)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"error {code} ({reason})" if reason else f"error {code}")
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class Message:
    """A decoded STUN message: its attributes in wire order, FINGERPRINT already verified."""

    type: int
    transaction_id: bytes
    attributes: tuple[tuple[int, bytes], ...]


@dataclass(frozen=True)
class Mapped:
    """The transport address the server saw the request come from."""

    address: IPAddress
    port: int


def new_transaction_id() -> bytes:
    """Return 96 random bits; RFC 8489 §5 wants them unpredictable, which also defeats spoofing."""
    return secrets.token_bytes(TRANSACTION_ID_SIZE)


def encode(
    message_type: int,
    transaction_id: bytes,
    attributes: Iterable[tuple[int, bytes]] = (),
    *,
    fingerprint: bool = True,
) -> bytes:
    """Given a type, a transaction id and (type, value) attributes, return the message bytes.

    Values are padded to 4 bytes (RFC 8489 §14); FINGERPRINT, when asked for, is computed over
    the whole message with the length field already counting it (§14.7).
    """
    if len(transaction_id) != TRANSACTION_ID_SIZE:
        raise ValueError(
            f"a transaction id has {TRANSACTION_ID_SIZE} bytes, not {len(transaction_id)}"
        )
    body = b"".join(_attribute(kind, value) for kind, value in attributes)
    if not fingerprint:
        return HEADER.pack(message_type, len(body), MAGIC_COOKIE, transaction_id) + body
    length = len(body) + 8
    unsigned = HEADER.pack(message_type, length, MAGIC_COOKIE, transaction_id) + body
    return unsigned + _attribute(FINGERPRINT, struct.pack("!I", _fingerprint(unsigned)))


def binding_request(transaction_id: bytes, *, fingerprint: bool = True) -> bytes:
    """Return a Binding request: 20 bytes, or 28 with FINGERPRINT."""
    return encode(BINDING_REQUEST, transaction_id, fingerprint=fingerprint)


def binding_success(
    transaction_id: bytes, address: str | IPAddress, port: int, *, fingerprint: bool = True
) -> bytes:
    """Return a Binding success response telling the client it was seen as `address`:`port`."""
    value = xor_mapped_address(address, port, transaction_id)
    return encode(
        BINDING_SUCCESS, transaction_id, [(XOR_MAPPED_ADDRESS, value)], fingerprint=fingerprint
    )


def xor_mapped_address(address: str | IPAddress, port: int, transaction_id: bytes) -> bytes:
    """Return the value of an XOR-MAPPED-ADDRESS attribute (RFC 8489 §14.2)."""
    ip = ipaddress.ip_address(address)
    return _address_value(ip, port, _xor_key(transaction_id))


def mapped_address(address: str | IPAddress, port: int) -> bytes:
    """Return the value of a plain MAPPED-ADDRESS attribute (RFC 8489 §14.1), as old servers use."""
    return _address_value(ipaddress.ip_address(address), port, bytes(18))


def error_code(code: int, reason: str) -> bytes:
    """Return the value of an ERROR-CODE attribute (RFC 8489 §14.8) for a code from 300 to 699."""
    if not 300 <= code <= 699:
        raise ValueError(f"an ERROR-CODE is from 300 to 699, not {code}")
    return struct.pack("!HBB", 0, code // 100, code % 100) + reason.encode()


def decode(data: bytes) -> Message:
    """Check the header and the attribute layout of any STUN message and return its parts.

    Raise StunError when the first two bits are set, the cookie is wrong, the length field does
    not match the datagram, an attribute runs past the end, or FINGERPRINT is misplaced or wrong.
    """
    if len(data) < HEADER_SIZE:
        raise StunError(f"{len(data)} bytes is shorter than a STUN header ({HEADER_SIZE})")
    message_type, length, cookie, transaction_id = HEADER.unpack_from(data)
    if message_type & 0xC000:
        raise StunError("not a STUN message (the first two bits are not zero)")
    if cookie != MAGIC_COOKIE:
        raise StunError(f"wrong magic cookie 0x{cookie:08x}")
    if length % 4:
        raise StunError(f"message length {length} is not a multiple of 4")
    if HEADER_SIZE + length != len(data):
        raise StunError(
            f"the header announces {length} bytes of attributes but {len(data) - HEADER_SIZE} came"
        )
    return Message(message_type, transaction_id, tuple(_attributes(data)))


def is_response_to(data: bytes, transaction_id: bytes) -> bool:
    """Tell whether `data` claims to answer the request `transaction_id`.

    Anything else on the socket (the late answer to an earlier transaction, noise) is ignored,
    not treated as a failure; what passes here is then checked in full by `parse_response`.
    """
    if len(data) < HEADER_SIZE:
        return False
    message_type, _, cookie, received_id = HEADER.unpack_from(data)
    is_response = message_type & 0xC000 == 0 and message_type & 0x0100 != 0  # class bit C1, §5
    return bool(is_response and cookie == MAGIC_COOKIE and received_id == transaction_id)


def parse_request(data: bytes) -> bytes:
    """Given a datagram sent to a server, return its transaction id if it is a Binding request."""
    message = decode(data)
    if message.type != BINDING_REQUEST:
        raise StunError(f"not a Binding request (message type 0x{message.type:04x})")
    return message.transaction_id


def parse_response(data: bytes, transaction_id: bytes) -> Mapped:
    """Return the address a Binding success response to `transaction_id` reports.

    XOR-MAPPED-ADDRESS is preferred; MAPPED-ADDRESS is read only when it is absent (servers
    that predate RFC 5389). Raise StunErrorResponse for an error response with its code and
    reason, and StunError for anything else that is wrong.
    """
    message = decode(data)
    if message.transaction_id != transaction_id:
        raise StunError("the transaction id does not match the request")
    attributes = _first_of_each(_before_integrity(message.attributes))
    if message.type == BINDING_ERROR:
        raise _error_response(attributes.get(ERROR_CODE))
    if message.type != BINDING_SUCCESS:
        raise StunError(f"not a Binding response (message type 0x{message.type:04x})")
    unknown = sorted(kind for kind in attributes if kind < 0x8000 and kind not in KNOWN_REQUIRED)
    if unknown:
        raise StunError(f"unknown comprehension-required attribute 0x{unknown[0]:04x}")
    if XOR_MAPPED_ADDRESS in attributes:
        return _parse_address(
            attributes[XOR_MAPPED_ADDRESS], _xor_key(transaction_id), "XOR-MAPPED-ADDRESS"
        )
    if MAPPED_ADDRESS in attributes:
        return _parse_address(attributes[MAPPED_ADDRESS], bytes(18), "MAPPED-ADDRESS")
    raise StunError("the response has no XOR-MAPPED-ADDRESS or MAPPED-ADDRESS")


def _attribute(kind: int, value: bytes) -> bytes:
    if len(value) > 0xFFFF:
        raise ValueError(f"attribute 0x{kind:04x} is {len(value)} bytes; at most 65535 fit")
    return struct.pack("!HH", kind, len(value)) + value + bytes(-len(value) % 4)


def _fingerprint(message: bytes) -> int:
    return zlib.crc32(message) ^ FINGERPRINT_XOR


def _attributes(data: bytes) -> Iterable[tuple[int, bytes]]:
    # `decode` has checked that the size is a multiple of 4, so every header here is whole.
    offset = HEADER_SIZE
    while offset < len(data):
        kind, length = struct.unpack_from("!HH", data, offset)
        end = offset + 4 + length
        if end > len(data):
            raise StunError(
                f"attribute 0x{kind:04x} of {length} bytes runs past the end of the message"
            )
        value = data[offset + 4 : end]
        if kind == FINGERPRINT:
            _check_fingerprint(data, offset, value)
        yield kind, value
        offset = end + -length % 4  # values are padded to 4 bytes; the padding's content is ignored


def _check_fingerprint(data: bytes, offset: int, value: bytes) -> None:
    if len(value) != 4:
        raise StunError(f"FINGERPRINT has {len(value)} bytes instead of 4")
    if offset + 8 != len(data):
        raise StunError("FINGERPRINT is not the last attribute")
    if struct.unpack("!I", value)[0] != _fingerprint(data[:offset]):
        raise StunError("FINGERPRINT does not match the message")


def _before_integrity(attributes: Iterable[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    # RFC 8489 §14.5/§14.6: attributes after MESSAGE-INTEGRITY(-SHA256) are not covered by it and
    # must be ignored (FINGERPRINT, the only one allowed there, is checked by `decode`).
    kept: list[tuple[int, bytes]] = []
    for kind, value in attributes:
        if kind != FINGERPRINT:
            kept.append((kind, value))
        if kind in (MESSAGE_INTEGRITY, MESSAGE_INTEGRITY_SHA256):
            break
    return kept


def _first_of_each(attributes: Iterable[tuple[int, bytes]]) -> dict[int, bytes]:
    # RFC 8489 §14: of repeated attributes only the first is processed.
    first: dict[int, bytes] = {}
    for kind, value in attributes:
        first.setdefault(kind, value)
    return first


def _xor_key(transaction_id: bytes) -> bytes:
    # The port is XORed with the cookie's top 16 bits, an IPv4 address with the cookie, an IPv6
    # address with cookie‖transaction id (RFC 8489 §14.2): 2 + 16 bytes of key.
    cookie = struct.pack("!I", MAGIC_COOKIE)
    return cookie[:2] + cookie + transaction_id


def _address_value(address: IPAddress, port: int, key: bytes) -> bytes:
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"a port is from 0 to 65535, not {port}")
    family = _FAMILY_IPV4 if address.version == 4 else _FAMILY_IPV6
    plain = struct.pack("!H", port) + address.packed
    return bytes((0, family)) + _xor(plain, key)


def _parse_address(value: bytes, key: bytes, name: str) -> Mapped:
    if len(value) < 4:
        raise StunError(f"{name} has {len(value)} bytes, too few for an address")
    family = value[1]
    size = _ADDRESS_SIZES.get(family)
    if size is None:
        raise StunError(f"{name} has an unknown address family 0x{family:02x}")
    if len(value) != 4 + size:
        raise StunError(
            f"{name} has {len(value)} bytes; an IPv{4 if size == 4 else 6} one has {4 + size}"
        )
    plain = _xor(value[2:], key)
    return Mapped(ipaddress.ip_address(plain[2:]), struct.unpack("!H", plain[:2])[0])


def _xor(data: bytes, key: bytes) -> bytes:
    return bytes(a ^ b for a, b in zip(data, key, strict=False))


def _error_response(value: bytes | None) -> StunErrorResponse | StunError:
    if value is None:
        return StunError("an error response without ERROR-CODE")
    if len(value) < 4:
        return StunError(f"ERROR-CODE has {len(value)} bytes, too few for a code")
    code = (value[2] & 0x07) * 100 + value[3]
    # coturn counts NUL padding inside the reason's length; it is not part of the text.
    reason = value[4:].decode("utf-8", errors="replace").strip("\x00 \t\r\n")
    printable = "".join(c if c.isprintable() else "?" for c in reason)
    return StunErrorResponse(code, printable[:_REASON_LIMIT])
