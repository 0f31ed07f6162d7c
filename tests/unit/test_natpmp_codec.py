"""The NAT-PMP codec against replies captured from miniupnpd, random datagrams and its own
round trip; the default-gateway lookup against /proc/net/route texts."""

from __future__ import annotations

import ipaddress
import sys

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from ipwatch.sources import natpmp
from ipwatch.sources.natpmp import MalformedReply, NatPmpError, ResultCodeError
from tests.lab.natpmp_responder import encode_reply

# Captured from miniupnpd 2.3.1 (Debian 12) in the NAT lab, asked with b"\0\0": its WAN
# address learnt by STUN, then (without STUN, WAN in a reserved range) result 3, and the
# reply to an unsupported opcode 7, which is only 8 bytes long.
MINIUPNPD_REPLY = bytes.fromhex("0080000000002267c633640a")
MINIUPNPD_NETWORK_FAILURE = bytes.fromhex("008000030000241900000000")
MINIUPNPD_UNSUPPORTED_OPCODE = bytes.fromhex("0087000500002419")


def test_request_is_version_0_opcode_0() -> None:
    assert natpmp.request() == b"\x00\x00"


def test_miniupnpd_reply() -> None:
    assert natpmp.parse_reply(MINIUPNPD_REPLY) == (0x2267, ipaddress.IPv4Address("198.51.100.10"))


def test_miniupnpd_network_failure() -> None:
    with pytest.raises(ResultCodeError) as caught:
        natpmp.parse_reply(MINIUPNPD_NETWORK_FAILURE)
    assert (caught.value.code, caught.value.epoch) == (3, 0x2419)
    assert str(caught.value) == "result 3 (network failure)"


def test_reply_to_another_opcode_is_not_ours() -> None:
    with pytest.raises(MalformedReply, match="opcode 135, not 128"):
        natpmp.parse_reply(MINIUPNPD_UNSUPPORTED_OPCODE)


@pytest.mark.parametrize(
    ("datagram", "reason"),
    [
        (b"", "0 bytes, shorter than any reply"),
        (MINIUPNPD_REPLY[:7], "7 bytes, shorter than any reply"),
        (MINIUPNPD_REPLY[:11], "11 bytes, shorter than a public-address reply"),
        (b"\x02" + MINIUPNPD_REPLY[1:], "version 2, not 0"),  # PCP
        (b"\x00\x00" + MINIUPNPD_REPLY[2:], "opcode 0, not 128"),  # a request
    ],
)
def test_malformed_replies(datagram: bytes, reason: str) -> None:
    with pytest.raises(MalformedReply, match=reason):
        natpmp.parse_reply(datagram)


def test_longer_reply_is_read_up_to_its_address() -> None:
    assert natpmp.parse_reply(MINIUPNPD_REPLY + b"\x00" * 4)[1] == ipaddress.IPv4Address(
        "198.51.100.10"
    )


@given(st.binary(max_size=32))
@example(b"\x00\x80\x00\x01\x00\x00\x00\x00")
@example(MINIUPNPD_REPLY)
def test_any_datagram_parses_or_raises_only_natpmp_error(data: bytes) -> None:
    try:
        epoch, address = natpmp.parse_reply(data)
    except NatPmpError:
        return
    assert len(data) >= 12 and 0 <= epoch < 2**32 and address.version == 4


@given(
    st.integers(min_value=0, max_value=2**32 - 1),
    st.ip_addresses(v=4),
    st.integers(min_value=0, max_value=2**16 - 1),
)
def test_replies_round_trip(epoch: int, address: ipaddress.IPv4Address, result: int) -> None:
    datagram = encode_reply(epoch, str(address), result)
    if result == 0:
        assert natpmp.parse_reply(datagram) == (epoch, address)
        return
    with pytest.raises(ResultCodeError) as caught:
        natpmp.parse_reply(datagram)
    assert (caught.value.code, caught.value.epoch) == (result, epoch)


# --- /proc/net/route ---------------------------------------------------------------------------

HEADER = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT"


def hex_address(address: str) -> str:
    """As the kernel prints it: the network-order bytes read as a host-order integer."""
    return f"{int.from_bytes(ipaddress.IPv4Address(address).packed, sys.byteorder):08X}"


def route(
    destination: str, gateway: str, flags: int, metric: int = 0, mask: str = "0.0.0.0"
) -> str:
    fields = ["eth0", hex_address(destination), hex_address(gateway), f"{flags:04X}", "0", "0"]
    return "\t".join([*fields, str(metric), hex_address(mask), "0", "0", "0"])


def test_default_gateway_of_a_typical_host() -> None:
    table = [
        HEADER,
        route("0.0.0.0", "192.168.1.1", 0x0003, 100),
        route("192.168.1.0", "0.0.0.0", 0x0001, 100, "255.255.255.0"),
    ]
    assert natpmp.default_gateway("\n".join(table) + "\n") == ipaddress.IPv4Address("192.168.1.1")


def test_kernel_text_on_this_machine_reads_the_same() -> None:
    """The hex is in host byte order: on little-endian machines 192.168.1.1 is 0101A8C0."""
    if sys.byteorder == "little":
        table = f"{HEADER}\neth0\t00000000\t0101A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
        assert natpmp.default_gateway(table) == ipaddress.IPv4Address("192.168.1.1")


def test_lowest_metric_wins_and_unusable_routes_are_skipped() -> None:
    table = [
        HEADER,
        route("0.0.0.0", "10.0.0.1", 0x0003, 600),
        route("0.0.0.0", "10.0.0.2", 0x0003, 100),
        route("0.0.0.0", "10.0.0.3", 0x0002, 1),  # not up
        route("0.0.0.0", "10.0.0.4", 0x0203, 1),  # reject route
        route("10.0.0.0", "10.0.0.5", 0x0003, 1, "255.0.0.0"),  # not a default route
    ]
    assert natpmp.default_gateway("\n".join(table)) == ipaddress.IPv4Address("10.0.0.2")


@pytest.mark.parametrize(
    "table",
    ["", HEADER, f"{HEADER}\n" + route("192.168.1.0", "0.0.0.0", 0x0001, 0, "255.255.255.0")],
)
def test_no_default_route(table: str) -> None:
    assert natpmp.default_gateway(table) is None


def test_lines_that_are_not_routes_are_skipped() -> None:
    table = [HEADER, "garbage", "eth0\tzz\tzz\tzz\t0\t0\t0\tzz", route("0.0.0.0", "10.1.1.1", 3)]
    assert natpmp.default_gateway("\n".join(table)) == ipaddress.IPv4Address("10.1.1.1")


@given(st.text(max_size=400))
@example(f"{HEADER}\neth0\t0\t1FFFFFFFF\t3\t0\t0\t0\t0")
def test_any_text_gives_an_address_or_none(text: str) -> None:
    gateway = natpmp.default_gateway(text)
    assert gateway is None or gateway.version == 4
