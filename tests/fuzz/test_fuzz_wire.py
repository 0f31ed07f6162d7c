"""The STUN and NAT-PMP clients fed hostile datagrams through a real socket pair.

Each exchange runs the source's own receive loop (`_Exchange`, `_exchange`) on one end of a
datagram socket pair whose other end has queued what a hostile network could send: strays
before the genuine answer, answers mutated byte by byte, cut short or grown. The loop must
return the genuine answer, or fail with a SourceError; any other exception is a bug.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager

from hypothesis import example, given
from hypothesis import strategies as st

from ipwatch import stun
from ipwatch.errors import SourceError
from ipwatch.sources import natpmp
from ipwatch.sources import stun as stun_source
from tests.fuzz import fuzz

SILENCE = 0.005  # waited out when nothing acceptable was queued
PATIENCE = 5.0  # never reached when an answer is queued, however loaded the machine is

addresses = st.ip_addresses()
ports = st.integers(0, 0xFFFF)
attributes = st.lists(st.tuples(st.integers(0, 0xFFFF), st.binary(max_size=40)), max_size=4)
mutations = st.lists(
    st.one_of(
        st.tuples(st.just("flip"), st.integers(0, 200), st.integers(1, 255)),
        st.tuples(st.just("cut"), st.integers(0, 200), st.just(0)),
        st.tuples(st.just("insert"), st.integers(0, 200), st.integers(0, 255)),
    ),
    max_size=3,
)


@contextmanager
def socket_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with ours, theirs:
        yield ours, theirs


def mutate(data: bytes, steps: list[tuple[str, int, int]]) -> bytes:
    buffer = bytearray(data)
    for kind, position, value in steps:
        at = position % (len(buffer) + 1)
        if kind == "flip" and at < len(buffer):
            buffer[at] ^= value
        elif kind == "cut":
            del buffer[at:]
        elif kind == "insert":
            buffer[at:at] = bytes([value])
    return bytes(buffer)


@st.composite
def stun_answers(draw: st.DrawFn, transaction_id: bytes) -> bytes:
    """A success response (XOR-MAPPED, MAPPED or both, among other attributes), maybe mutated."""
    address, port = draw(addresses), draw(ports)
    extra = draw(attributes)
    if draw(st.booleans()):
        extra.insert(
            0, (stun.XOR_MAPPED_ADDRESS, stun.xor_mapped_address(address, port, transaction_id))
        )
    if draw(st.booleans()):
        extra.append((stun.MAPPED_ADDRESS, stun.mapped_address(address, port)))
    message_type = draw(st.sampled_from([stun.BINDING_SUCCESS, stun.BINDING_ERROR, 0x0102]))
    data = stun.encode(message_type, transaction_id, extra, fingerprint=draw(st.booleans()))
    return mutate(data, draw(mutations))


def stun_options() -> stun_source.Options:
    return stun_source.Options(servers=(), rto=SILENCE, retransmits=0)


@fuzz
@given(st.data(), st.lists(st.binary(max_size=80), max_size=4))
def test_stun_exchange_returns_the_genuine_answer_or_a_source_error(
    data: st.DataObject, strays: list[bytes]
) -> None:
    with socket_pair() as (ours, theirs):
        exchange = stun_source._Exchange(ours, "peer", stun_options())
        other_transaction = stun.new_transaction_id()
        strays = [*strays, data.draw(stun_answers(other_transaction))]  # someone else's answer
        answer = data.draw(stun_answers(exchange.transaction_id))
        for datagram in [*strays, answer]:
            theirs.send(datagram)
        try:
            expected: stun.Mapped | str = stun.parse_response(answer, exchange.transaction_id)
        except stun.StunError as error:
            expected = str(error)
        try:
            answered = stun.is_response_to(answer, exchange.transaction_id)
            got = exchange.run(time.monotonic() + (PATIENCE if answered else SILENCE))
        except SourceError as error:
            assert isinstance(expected, str) or not stun.is_response_to(
                answer, exchange.transaction_id
            )
            assert "\n" not in str(error)
            return
        assert got == expected


@fuzz
@given(st.binary(max_size=2100), st.binary(min_size=12, max_size=12))
@example(b"\x01\x01" + bytes(18), bytes(12))
def test_stun_parse_response_raises_only_stun_error(data: bytes, transaction_id: bytes) -> None:
    try:
        mapped = stun.parse_response(data, transaction_id)
    except stun.StunError as error:
        assert str(error) and "\n" not in str(error)
        return
    assert isinstance(mapped.address, ipaddress.IPv4Address | ipaddress.IPv6Address)
    assert 0 <= mapped.port <= 0xFFFF


natpmp_replies = st.builds(
    lambda version, opcode, result, epoch, address, tail: (
        struct.pack("!BBHI", version, opcode, result, epoch) + address.packed + tail
    ),
    st.sampled_from([0, 0, 1, 2]),
    st.sampled_from([128, 128, 0, 129, 130]),
    st.sampled_from([0, 0, 1, 2, 3, 4, 5, 0xFFFF]),
    st.integers(0, 0xFFFFFFFF),
    st.ip_addresses(v=4),
    st.binary(max_size=60),
).flatmap(lambda reply: st.builds(mutate, st.just(reply), mutations))


@fuzz
@given(st.lists(st.binary(max_size=70) | natpmp_replies, min_size=1, max_size=6))
@example([b"\0\x80\0\0\0\0\0\0"])  # an 8-byte success reply carries no address
def test_natpmp_exchange_takes_the_first_reply_and_ignores_the_rest(datagrams: list[bytes]) -> None:
    expected: ipaddress.IPv4Address | int | None = None  # an address, a result code, or silence
    for datagram in datagrams:
        try:
            expected = natpmp.parse_reply(datagram[: natpmp.RECEIVE_SIZE])[1]
        except natpmp.ResultCodeError as error:
            expected = error.code
        except natpmp.MalformedReply:
            continue
        break
    with socket_pair() as (ours, theirs):
        for datagram in datagrams:
            theirs.send(datagram)
        try:
            got = natpmp._exchange(ours, "router", SILENCE if expected is None else PATIENCE)
        except SourceError as error:
            assert "\n" not in str(error)
            if expected is None:
                assert "no NAT-PMP answer" in str(error)
            else:
                assert f"result {expected} " in str(error)
            return
    assert got == expected
