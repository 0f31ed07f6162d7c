"""The STUN codec against published vectors, bytes captured from coturn, and its own output."""

from __future__ import annotations

import contextlib
import ipaddress
import struct

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from ipwatch import stun
from ipwatch.stun import Mapped, StunError, StunErrorResponse

# RFC 5769 §2: all three samples share this transaction id.
RFC5769_TXID = bytes.fromhex("b7e7a701bc34d686fa87dfae")

# RFC 5769 §2.1 sample request: SOFTWARE, PRIORITY, ICE-CONTROLLED, USERNAME, MESSAGE-INTEGRITY,
# FINGERPRINT.
RFC5769_REQUEST = bytes.fromhex(
    "00010058 2112a442 b7e7a701 bc34d686 fa87dfae"
    "80220010 5354554e 20746573 7420636c 69656e74"
    "00240004 6e0001ff"
    "80290008 932ff9b1 51263b36"
    "00060009 6576746a 3a683676 59202020"
    "00080014 9aeaa70c bfd8cb56 781ef2b5 b2d3f249 c1b571a2"
    "80280004 e57a3bcf"
)

# RFC 5769 §2.2 sample IPv4 response: XOR-MAPPED-ADDRESS 192.0.2.1 port 32853.
RFC5769_IPV4_RESPONSE = bytes.fromhex(
    "0101003c 2112a442 b7e7a701 bc34d686 fa87dfae"
    "8022000b 74657374 20766563 746f7220"
    "00200008 0001a147 e112a643"
    "00080014 2b91f599 fd9e90c3 8c7489f9 2af9ba53 f06be7d7"
    "80280004 c07d4c96"
)

# RFC 5769 §2.3 sample IPv6 response: 2001:db8:1234:5678:11:2233:4455:6677 port 32853.
RFC5769_IPV6_RESPONSE = bytes.fromhex(
    "01010048 2112a442 b7e7a701 bc34d686 fa87dfae"
    "8022000b 74657374 20766563 746f7220"
    "00200014 0002a147 0113a9fa a5d3f179 bc25f4b5 bed2b9d9"
    "00080014 a382954e 4be67bf1 1784c97c 8292c275 bfe3ed41"
    "80280004 c8fb0b4c"
)

# Captured from coturn 4.6.1 (Debian 12, `turnserver -n --stun-only --no-rfc5780
# --no-software-attribute` on loopback), asked by ipwatch's client from fixed local ports
# with the transaction id b"ipwatch-test".
COTURN_TXID = b"ipwatch-test"

# Binding request with FINGERPRINT from 127.0.0.1:45123. The answer carries XOR-MAPPED-ADDRESS,
# MAPPED-ADDRESS, RESPONSE-ORIGIN (0x802b, comprehension-optional) and FINGERPRINT.
COTURN_IPV4_RESPONSE = bytes.fromhex(
    "0101002c 2112a442 69707761 7463682d 74657374"
    "00200008 00019151 5e12a443"
    "00010008 0001b043 7f000001"
    "802b0008 000187dc 7f000001"
    "80280004 eb33ba95"
)
# The same without FINGERPRINT in the request, from port 45124: coturn then sends none either.
COTURN_IPV4_RESPONSE_UNSIGNED = bytes.fromhex(
    "01010024 2112a442 69707761 7463682d 74657374"
    "00200008 00019156 5e12a443"
    "00010008 0001b044 7f000001"
    "802b0008 000187dc 7f000001"
)
# From [::1]:45127 to coturn on ::1.
COTURN_IPV6_RESPONSE = bytes.fromhex(
    "01010050 2112a442 69707761 7463682d 74657374"
    "00200014 00029155 2112a442 69707761 7463682d 74657375"
    "00010014 0002b047 00000000 00000000 00000000 00000001"
    "802b0014 000287dd 00000000 00000000 00000000 00000001"
    "80280004 8548c4b6"
)
# A request carrying the unknown comprehension-required attribute 0x0031: coturn answers 420,
# with NUL padding counted inside the reason's length, and UNKNOWN-ATTRIBUTES.
COTURN_420_RESPONSE = bytes.fromhex(
    "0111002c 2112a442 69707761 7463682d 74657374"
    "00090018 00000414 556e6b6e 6f776e20 41747472 69627574 65000000"
    "000a0002 00310000"
    "80280004 4279dcee"
)
# What coturn's own `turnutils_stunclient` sends: a bare 20-byte Binding request.
TURNUTILS_STUNCLIENT_REQUEST = bytes.fromhex("00010000 2112a442 a1d821d8 72dd17c1 37ef815e")

TXID = bytes(range(1, 13))

transaction_ids = st.binary(min_size=12, max_size=12)
ports = st.integers(0, 0xFFFF)
addresses = st.ip_addresses(v=4) | st.ip_addresses(v=6)


def success(*attributes: tuple[int, bytes], fingerprint: bool = True, txid: bytes = TXID) -> bytes:
    return stun.encode(stun.BINDING_SUCCESS, txid, attributes, fingerprint=fingerprint)


def xor_mapped(address: str, port: int = 5060, txid: bytes = TXID) -> tuple[int, bytes]:
    return stun.XOR_MAPPED_ADDRESS, stun.xor_mapped_address(address, port, txid)


def with_byte(data: bytes, index: int, value: int) -> bytes:
    return data[:index] + bytes([value]) + data[index + 1 :]


# Published vectors ---------------------------------------------------------------------------


def test_rfc5769_ipv4_response_decodes_to_the_address_the_rfc_states() -> None:
    assert stun.parse_response(RFC5769_IPV4_RESPONSE, RFC5769_TXID) == Mapped(
        ipaddress.ip_address("192.0.2.1"), 32853
    )


def test_rfc5769_ipv6_response_decodes_to_the_address_the_rfc_states() -> None:
    assert stun.parse_response(RFC5769_IPV6_RESPONSE, RFC5769_TXID) == Mapped(
        ipaddress.ip_address("2001:db8:1234:5678:11:2233:4455:6677"), 32853
    )


@pytest.mark.parametrize("vector", [RFC5769_REQUEST, RFC5769_IPV4_RESPONSE, RFC5769_IPV6_RESPONSE])
def test_rfc5769_fingerprints_verify_and_the_software_padding_is_skipped(vector: bytes) -> None:
    message = stun.decode(vector)
    assert [kind for kind, _ in message.attributes][-1] == stun.FINGERPRINT
    assert message.attributes[0][0] == 0x8022  # SOFTWARE, 11 or 16 bytes: padding walked over


def test_rfc5769_sample_request_is_a_binding_request() -> None:
    assert stun.parse_request(RFC5769_REQUEST) == RFC5769_TXID


@pytest.mark.parametrize("vector", [RFC5769_IPV4_RESPONSE, RFC5769_IPV6_RESPONSE])
def test_a_flipped_bit_in_an_rfc5769_vector_breaks_its_fingerprint(vector: bytes) -> None:
    mapped_byte = 46  # inside XOR-MAPPED-ADDRESS's address
    with pytest.raises(StunError, match="FINGERPRINT does not match"):
        stun.parse_response(with_byte(vector, mapped_byte, vector[mapped_byte] ^ 1), RFC5769_TXID)


# Captured from coturn ------------------------------------------------------------------------


def test_coturn_ipv4_answer_is_the_clients_own_address_and_port() -> None:
    expected = Mapped(ipaddress.ip_address("127.0.0.1"), 45123)
    assert stun.parse_response(COTURN_IPV4_RESPONSE, COTURN_TXID) == expected


def test_coturn_answer_without_fingerprint_is_accepted() -> None:
    expected = Mapped(ipaddress.ip_address("127.0.0.1"), 45124)
    assert stun.parse_response(COTURN_IPV4_RESPONSE_UNSIGNED, COTURN_TXID) == expected


def test_coturn_ipv6_answer_is_xored_with_cookie_and_transaction_id() -> None:
    expected = Mapped(ipaddress.ip_address("::1"), 45127)
    assert stun.parse_response(COTURN_IPV6_RESPONSE, COTURN_TXID) == expected


def test_coturn_420_error_response_gives_code_and_reason_without_its_nul_padding() -> None:
    with pytest.raises(StunErrorResponse) as raised:
        stun.parse_response(COTURN_420_RESPONSE, COTURN_TXID)
    assert (raised.value.code, raised.value.reason) == (420, "Unknown Attribute")
    assert str(raised.value) == "error 420 (Unknown Attribute)"


def test_turnutils_stunclient_request_is_understood_by_the_responder_side() -> None:
    assert stun.parse_request(TURNUTILS_STUNCLIENT_REQUEST) == bytes.fromhex(
        "a1d821d872dd17c137ef815e"
    )


def test_coturn_answers_are_responses_to_their_transaction_only() -> None:
    assert stun.is_response_to(COTURN_IPV4_RESPONSE, COTURN_TXID)
    assert stun.is_response_to(COTURN_420_RESPONSE, COTURN_TXID)
    assert not stun.is_response_to(COTURN_IPV4_RESPONSE, TXID)
    assert not stun.is_response_to(
        TURNUTILS_STUNCLIENT_REQUEST, bytes.fromhex("a1d821d872dd17c137ef815e")
    )


# Requests ------------------------------------------------------------------------------------


def test_binding_request_is_20_bytes_or_28_with_fingerprint() -> None:
    bare = stun.binding_request(TXID, fingerprint=False)
    signed = stun.binding_request(TXID)
    assert bare == struct.pack("!HHI", 0x0001, 0, 0x2112A442) + TXID
    assert len(signed) == 28
    assert signed[:2] == b"\x00\x01" and signed[2:4] == b"\x00\x08" and signed[4:20] == bare[4:]
    assert stun.decode(signed).attributes[0][0] == stun.FINGERPRINT
    assert stun.parse_request(signed) == TXID


def test_transaction_ids_are_96_random_bits() -> None:
    ids = {stun.new_transaction_id() for _ in range(64)}
    assert len(ids) == 64 and all(len(txid) == 12 for txid in ids)


def test_encode_refuses_a_transaction_id_of_the_wrong_size() -> None:
    with pytest.raises(ValueError, match="12 bytes"):
        stun.binding_request(b"short")


def test_encode_refuses_a_port_out_of_range() -> None:
    with pytest.raises(ValueError, match="port"):
        stun.binding_success(TXID, "192.0.2.1", 65536)


# Round trips ---------------------------------------------------------------------------------


@given(address=addresses, port=ports, txid=transaction_ids, fingerprint=st.booleans())
def test_success_response_round_trips(
    address: stun.IPAddress, port: int, txid: bytes, fingerprint: bool
) -> None:
    response = stun.binding_success(txid, address, port, fingerprint=fingerprint)
    assert stun.is_response_to(response, txid)
    assert stun.parse_response(response, txid) == Mapped(address, port)


@given(txid=transaction_ids, fingerprint=st.booleans())
def test_request_round_trips(txid: bytes, fingerprint: bool) -> None:
    request = stun.binding_request(txid, fingerprint=fingerprint)
    assert stun.parse_request(request) == txid
    assert not stun.is_response_to(request, txid)


@given(address=addresses, port=ports, txid=transaction_ids)
def test_mapped_address_alone_is_the_fallback(
    address: stun.IPAddress, port: int, txid: bytes
) -> None:
    response = success((stun.MAPPED_ADDRESS, stun.mapped_address(address, port)), txid=txid)
    assert stun.parse_response(response, txid) == Mapped(address, port)


@given(
    address=addresses,
    port=ports,
    txid=transaction_ids,
    index=st.integers(0, 1000),
    flip=st.integers(1, 255),
)
def test_any_changed_byte_of_a_fingerprinted_response_is_detected(
    address: stun.IPAddress, port: int, txid: bytes, index: int, flip: int
) -> None:
    response = stun.binding_success(txid, address, port)
    # The FINGERPRINT attribute's own type is the exception: changed, it names an unknown
    # comprehension-optional attribute and the message reads as one sent without FINGERPRINT,
    # which servers may do (RFC 8489 §7 leaves the extension to the usage).
    fingerprint_type = range(len(response) - 8, len(response) - 6)
    index = [i for i in range(len(response)) if i not in fingerprint_type][
        index % (len(response) - 2)
    ]
    with pytest.raises(StunError):
        stun.parse_response(with_byte(response, index, response[index] ^ flip), txid)


# Hostile input -------------------------------------------------------------------------------


@given(data=st.binary(max_size=200), txid=transaction_ids)
@example(data=b"", txid=TXID)
def test_arbitrary_bytes_raise_nothing_but_stun_error(data: bytes, txid: bytes) -> None:
    assert isinstance(stun.is_response_to(data, txid), bool)
    for parse in (lambda: stun.parse_response(data, txid), lambda: stun.parse_request(data)):
        with contextlib.suppress(StunError):
            parse()


@st.composite
def plausible_messages(draw: st.DrawFn) -> bytes:
    """A correct header around random attributes, so the attribute parsing is what gets tested."""
    body = draw(st.binary(max_size=120))
    body += bytes(-len(body) % 4)
    kind = draw(st.sampled_from([stun.BINDING_SUCCESS, stun.BINDING_ERROR, stun.BINDING_REQUEST]))
    return struct.pack("!HHI", kind, len(body), stun.MAGIC_COOKIE) + TXID + body


@given(data=plausible_messages())
def test_random_attributes_raise_nothing_but_stun_error(data: bytes) -> None:
    with contextlib.suppress(StunError):
        stun.parse_response(data, TXID)


@given(attributes=st.lists(st.tuples(st.integers(0, 0xFFFF), st.binary(max_size=24)), max_size=5))
def test_well_formed_messages_with_any_attributes_raise_nothing_but_stun_error(
    attributes: list[tuple[int, bytes]],
) -> None:
    with contextlib.suppress(StunError):
        stun.parse_response(success(*attributes), TXID)


def test_every_truncation_of_a_valid_response_is_rejected() -> None:
    response = stun.binding_success(TXID, "2001:db8::7", 5060)
    for size in range(len(response)):
        with pytest.raises(StunError):
            stun.parse_response(response[:size], TXID)


# Each check ----------------------------------------------------------------------------------

VALID = stun.binding_success(TXID, "203.0.113.7", 5060)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (VALID[:19], "shorter than a STUN header"),
        (with_byte(VALID, 0, 0x41), "first two bits"),
        (VALID[:4] + b"\x21\x12\xa4\x43" + VALID[8:], "wrong magic cookie 0x2112a443"),
        (VALID[:2] + b"\x00\x11" + VALID[4:], "not a multiple of 4"),
        (VALID[:2] + b"\x00\x18" + VALID[4:], "announces 24 bytes of attributes but 20 came"),
        (VALID + bytes(4), "announces 20 bytes of attributes but 24 came"),
        (VALID[:-1] + bytes([VALID[-1] ^ 1]), "FINGERPRINT does not match"),
    ],
)
def test_header_and_fingerprint_checks(data: bytes, message: str) -> None:
    with pytest.raises(StunError, match=message):
        stun.parse_response(data, TXID)


def test_wrong_transaction_id_is_rejected_and_not_a_response_to_ours() -> None:
    other = bytes(12)
    assert not stun.is_response_to(VALID, other)
    with pytest.raises(StunError, match="transaction id does not match"):
        stun.parse_response(VALID, other)


def test_fingerprint_must_be_last() -> None:
    signed = stun.binding_success(TXID, "203.0.113.7", 5060)
    body = signed[20:]
    moved = signed[:20] + body[12:] + body[:12]  # FINGERPRINT first, XOR-MAPPED-ADDRESS after
    with pytest.raises(StunError, match="FINGERPRINT is not the last attribute"):
        stun.parse_response(moved, TXID)


def test_fingerprint_of_the_wrong_size_is_rejected() -> None:
    data = success(xor_mapped("203.0.113.7"), (stun.FINGERPRINT, bytes(8)), fingerprint=False)
    with pytest.raises(StunError, match="FINGERPRINT has 8 bytes"):
        stun.parse_response(data, TXID)


def test_attribute_running_past_the_end_is_rejected() -> None:
    data = success(xor_mapped("203.0.113.7"), fingerprint=False)
    cut = data[:22] + b"\x00\x10" + data[24:]  # XOR-MAPPED-ADDRESS claims 16 bytes, has 8
    with pytest.raises(StunError, match="runs past the end"):
        stun.parse_response(cut, TXID)


def test_unknown_comprehension_required_attribute_is_rejected() -> None:
    data = success(xor_mapped("203.0.113.7"), (0x7FFF, b"\x01"))
    with pytest.raises(StunError, match="unknown comprehension-required attribute 0x7fff"):
        stun.parse_response(data, TXID)


@pytest.mark.parametrize("kind", [0x8000, 0x8022, 0x802B, 0xC001, 0xFFFF])
def test_unknown_comprehension_optional_attributes_are_ignored(kind: int) -> None:
    data = success((kind, b"odd length"), xor_mapped("203.0.113.7"))
    assert str(stun.parse_response(data, TXID).address) == "203.0.113.7"


def test_xor_mapped_address_wins_over_mapped_address() -> None:
    data = success(
        (stun.MAPPED_ADDRESS, stun.mapped_address("192.168.1.1", 5060)), xor_mapped("203.0.113.7")
    )
    assert str(stun.parse_response(data, TXID).address) == "203.0.113.7"


def test_first_of_repeated_attributes_counts() -> None:
    data = success(xor_mapped("203.0.113.7"), xor_mapped("203.0.113.66"))
    assert str(stun.parse_response(data, TXID).address) == "203.0.113.7"


def test_attributes_after_message_integrity_are_ignored() -> None:
    integrity = (stun.MESSAGE_INTEGRITY, bytes(20))
    data = success(xor_mapped("203.0.113.7"), integrity, xor_mapped("203.0.113.66"), (0x7FFF, b""))
    assert str(stun.parse_response(data, TXID).address) == "203.0.113.7"
    with pytest.raises(StunError, match="no XOR-MAPPED-ADDRESS or MAPPED-ADDRESS"):
        stun.parse_response(success(integrity, xor_mapped("203.0.113.7")), TXID)


def test_padding_content_is_ignored() -> None:
    data = success((0x8022, b"abc"), xor_mapped("203.0.113.7"), fingerprint=False)
    dirty = with_byte(data, 27, 0xFF)  # the padding byte after SOFTWARE's three
    assert str(stun.parse_response(dirty, TXID).address) == "203.0.113.7"


def test_response_without_any_address_is_rejected() -> None:
    with pytest.raises(StunError, match="no XOR-MAPPED-ADDRESS or MAPPED-ADDRESS"):
        stun.parse_response(success(), TXID)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (b"\x00\x01\x13", "has 3 bytes, too few"),
        (b"\x00\x03\x13\xc4" + bytes(4), "has an unknown address family 0x03"),
        (b"\x00\x01\x13\xc4" + bytes(16), "has 20 bytes; an IPv4 one has 8"),
        (b"\x00\x02\x13\xc4" + bytes(4), "has 8 bytes; an IPv6 one has 20"),
    ],
)
def test_malformed_xor_mapped_address_is_rejected(value: bytes, message: str) -> None:
    with pytest.raises(StunError, match=f"XOR-MAPPED-ADDRESS {message}"):
        stun.parse_response(success((stun.XOR_MAPPED_ADDRESS, value)), TXID)


def test_error_response_reports_code_and_reason() -> None:
    error = (stun.ERROR_CODE, stun.error_code(400, "Bad Request"))
    data = stun.encode(stun.BINDING_ERROR, TXID, [error])
    assert stun.is_response_to(data, TXID)
    with pytest.raises(StunErrorResponse, match=r"^error 400 \(Bad Request\)$"):
        stun.parse_response(data, TXID)


def test_error_reason_is_made_printable_and_short() -> None:
    error = (stun.ERROR_CODE, stun.error_code(500, "Server\x1b[31m Error " + "x" * 500))
    with pytest.raises(StunErrorResponse) as raised:
        stun.parse_response(stun.encode(stun.BINDING_ERROR, TXID, [error]), TXID)
    assert raised.value.code == 500
    assert raised.value.reason.startswith("Server?[31m Error x") and len(raised.value.reason) == 128


@pytest.mark.parametrize(
    ("attributes", "message"),
    [([], "without ERROR-CODE"), ([(stun.ERROR_CODE, b"\x00\x00")], "ERROR-CODE has 2 bytes")],
)
def test_error_response_with_a_missing_or_short_error_code(
    attributes: list[tuple[int, bytes]], message: str
) -> None:
    with pytest.raises(StunError, match=message):
        stun.parse_response(stun.encode(stun.BINDING_ERROR, TXID, attributes), TXID)


def test_a_request_is_not_a_response() -> None:
    request = stun.binding_request(TXID)
    assert not stun.is_response_to(request, TXID)
    with pytest.raises(StunError, match="not a Binding response"):
        stun.parse_response(request, TXID)


def test_a_response_of_another_method_is_not_a_binding_response() -> None:
    allocate_success = stun.encode(0x0103, TXID, [xor_mapped("203.0.113.7")])
    with pytest.raises(StunError, match=r"not a Binding response \(message type 0x0103\)"):
        stun.parse_response(allocate_success, TXID)


def test_a_response_is_not_a_request() -> None:
    with pytest.raises(StunError, match="not a Binding request"):
        stun.parse_request(VALID)
