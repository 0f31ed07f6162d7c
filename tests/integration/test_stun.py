"""The "stun" source against real coturn and against ipwatch's responder told to misbehave."""

from __future__ import annotations

import ipaddress
import itertools
import socket
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest

from ipwatch import config, stun
from ipwatch.errors import ConfigError, SourceError
from ipwatch.schema import parse_host_port
from ipwatch.sources.stun import Options, ask
from ipwatch.stun_responder import Request, StunResponder
from tests.peers.coturn import Coturn
from tests.support import free_port, need, wait_until

pytestmark = pytest.mark.integration

PUBLIC, FORGED = "203.0.113.7", "198.51.100.66"


def options(
    *servers: str, rto: float = 0.5, retransmits: int = 6, fingerprint: bool = True
) -> Options:
    return Options(tuple(parse_host_port(s) for s in servers), rto, retransmits, fingerprint)


def timed(call: Callable[[], str]) -> tuple[str, float]:
    started = time.monotonic()
    result = call()
    return result, time.monotonic() - started


def failure(call: Callable[[], str]) -> tuple[str, float]:
    started = time.monotonic()
    with pytest.raises(SourceError) as raised:
        call()
    return str(raised.value), time.monotonic() - started


@pytest.fixture
def silent() -> Iterator[socket.socket]:
    """A bound UDP socket that receives requests and never answers: a black-holed server."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        yield sock


def received(sock: socket.socket) -> list[bytes]:
    datagrams: list[bytes] = []
    while True:
        try:
            datagrams.append(sock.recv(2048))
        except BlockingIOError:
            return datagrams


def address_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"{host}:{port}"


# Real coturn ---------------------------------------------------------------------------------


def test_coturn_over_ipv4_sees_our_loopback_address(coturn: Coturn) -> None:
    assert ask(options(coturn.server), "ipv4", 2.0) == "127.0.0.1"


def test_coturn_over_ipv6_sees_our_loopback_address(coturn6: Coturn) -> None:
    assert ask(options(coturn6.server), "ipv6", 2.0) == "::1"


def test_coturn_answers_requests_without_fingerprint(coturn: Coturn) -> None:
    assert ask(options(coturn.server, fingerprint=False), "ipv4", 2.0) == "127.0.0.1"


def test_coturn_answers_quickly(coturn: Coturn) -> None:
    ask(options(coturn.server), "ipv4", 2.0)  # warm up: first-use costs are not latency
    latencies = sorted(
        timed(lambda: ask(options(coturn.server), "ipv4", 2.0))[1] for _ in range(20)
    )
    assert latencies[10] < 0.05, f"median {latencies[10] * 1000:.1f} ms"


def test_a_stun_source_from_the_config_file_asks_coturn(coturn: Coturn) -> None:
    table = {"kind": "stun", "servers": [coturn.server], "rto": "100ms", "retransmits": 2}
    source = config.parse({"source": [table]}).sources[0]
    assert source.options == options(coturn.server, rto=source.options.rto, retransmits=2)
    assert source.options.rto == pytest.approx(0.1)
    assert ask(source.options, "ipv4", source.timeout) == "127.0.0.1"


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("servers", [], r"servers: empty; list at least one"),
        (
            "servers",
            ["127.0.0.1:3478", "127.0.0.1:99999"],
            r"servers\[1\]: '127.0.0.1:99999' has an invalid port",
        ),
        ("retransmits", -1, "retransmits: expected a whole number from 0 to 10"),
        ("rto", 0.5, 'rto: expected a duration like "30s"'),
    ],
)
def test_bad_stun_options_are_config_errors_with_their_key(
    key: str, value: object, message: str
) -> None:
    table = {"kind": "stun", "servers": ["127.0.0.1"], key: value}
    with pytest.raises(ConfigError, match=rf"source\[0\]\.{message}"):
        config.parse({"source": [table]})


# Servers in order ----------------------------------------------------------------------------


def test_a_refusing_first_server_hands_over_to_the_second(coturn: Coturn) -> None:
    dead = f"127.0.0.1:{free_port()}"
    answer, elapsed = timed(lambda: ask(options(dead, coturn.server), "ipv4", 2.0))
    assert answer == "127.0.0.1"
    assert elapsed < 0.5  # the ICMP error ended the first attempt, not its share of the budget


def test_a_silent_first_server_leaves_the_second_half_the_budget(silent: socket.socket) -> None:
    with StunResponder(answer=PUBLIC) as responder:
        answer, elapsed = timed(
            lambda: ask(options(address_of(silent), responder.server), "ipv4", 1.0)
        )
    assert answer == PUBLIC
    assert len(received(silent)) == 1  # asked first, as listed; its 0.5 s share ended at the RTO
    assert 0.45 < elapsed < 0.9


def test_every_failure_is_named_when_all_servers_fail(silent: socket.socket) -> None:
    dead = f"127.0.0.1:{free_port()}"
    message, _ = failure(lambda: ask(options(dead, address_of(silent), rto=0.1), "ipv4", 0.4))
    assert message.startswith(f"all 2 servers failed: {dead} refused (ICMP port unreachable); ")
    assert f"no answer from {address_of(silent)} within " in message


def test_an_ipv6_server_is_skipped_when_asking_for_ipv4(
    stun_responder: StunResponder, stun_responder6: StunResponder
) -> None:
    servers = (stun_responder6.server, stun_responder.server)
    assert ask(options(*servers), "ipv4", 2.0) == "127.0.0.1"
    assert ask(options(*servers), "ipv6", 2.0) == "::1"
    assert (stun_responder.requests, stun_responder6.requests) == (1, 1)


def test_no_server_of_the_family_is_a_clear_error(stun_responder6: StunResponder) -> None:
    message, _ = failure(lambda: ask(options(stun_responder6.server), "ipv4", 2.0))
    hint = "(add a host name or ipv4 address)"
    assert message == f"no server can be asked over ipv4: {stun_responder6.server} {hint}"
    assert stun_responder6.requests == 0


def test_a_host_name_is_resolved_for_the_family(stun_responder: StunResponder) -> None:
    assert ask(options(f"localhost:{stun_responder.port}"), "ipv4", 2.0) == "127.0.0.1"


# Timeouts and retransmission -----------------------------------------------------------------


def test_icmp_port_unreachable_ends_the_attempt_at_once() -> None:
    dead = f"127.0.0.1:{free_port()}"
    message, elapsed = failure(lambda: ask(options(dead), "ipv4", 5.0))
    assert message == f"{dead} refused (ICMP port unreachable)"
    assert elapsed < 0.5


def test_a_silent_server_times_out_within_the_budget(silent: socket.socket) -> None:
    message, elapsed = failure(lambda: ask(options(address_of(silent), rto=0.05), "ipv4", 0.3))
    # Requests at 0, 0.05 and 0.15 s; the next would be at 0.35 s, after the budget.
    assert message == f"no answer from {address_of(silent)} within 0.3 s (3 requests sent)"
    assert 0.3 <= elapsed < 0.5
    assert len(received(silent)) == 3


def test_retransmissions_double_the_interval(stun_responder: StunResponder) -> None:
    arrivals: list[float] = []

    def note_and_drop(request: Request) -> list[bytes]:
        arrivals.append(time.monotonic())
        return []

    stun_responder.reply = note_and_drop
    failure(lambda: ask(options(stun_responder.server, rto=0.1), "ipv4", 1.0))
    wait_until(lambda: len(arrivals) == 4, 2.0, "the fourth request")
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    for gap, expected in zip(gaps, (0.1, 0.2, 0.4), strict=True):
        assert expected * 0.9 < gap < expected + 0.15, gaps


def test_after_the_last_retransmission_the_wait_is_16_rto(stun_responder: StunResponder) -> None:
    stun_responder.reply = lambda request: []
    message, elapsed = failure(
        lambda: ask(options(stun_responder.server, rto=0.02, retransmits=1), "ipv4", 5.0)
    )
    assert message.endswith("(2 requests sent)")
    assert 0.02 + 16 * 0.02 <= elapsed < 1.0  # RFC 8489 Rm: gives up long before the 5 s budget


def test_a_lost_request_is_retransmitted_and_answered(stun_responder: StunResponder) -> None:
    stun_responder.answer = PUBLIC
    stun_responder.reply = lambda request: (
        [] if request.number == 1 else [stun_responder.respond(request)]
    )
    answer, elapsed = timed(lambda: ask(options(stun_responder.server, rto=0.05), "ipv4", 2.0))
    assert answer == PUBLIC
    assert stun_responder.requests == 2
    assert 0.05 <= elapsed < 0.5


# Strays and bad answers ----------------------------------------------------------------------


def test_a_forged_answer_from_another_port_never_reaches_the_client(
    stun_responder: StunResponder,
) -> None:
    stun_responder.answer = PUBLIC

    def forge_then_answer(request: Request) -> list[bytes]:
        # Same transaction id, valid FINGERPRINT: only the connected socket can tell it apart.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as forger:
            forger.sendto(stun.binding_success(request.transaction_id, FORGED, 1), request.client)
        return [stun_responder.respond(request)]

    stun_responder.reply = forge_then_answer
    assert ask(options(stun_responder.server), "ipv4", 2.0) == PUBLIC


def test_answers_to_other_transactions_and_noise_are_ignored(stun_responder: StunResponder) -> None:
    stun_responder.answer = PUBLIC
    stun_responder.reply = lambda request: [
        stun.binding_success(bytes(12), FORGED, 1),
        b"not STUN at all",
        stun.binding_request(request.transaction_id),  # our own request reflected back
        stun_responder.respond(request),
    ]
    assert ask(options(stun_responder.server), "ipv4", 2.0) == PUBLIC


def test_ignored_datagrams_are_counted_in_the_timeout_message(
    stun_responder: StunResponder,
) -> None:
    stun_responder.reply = lambda request: [b"noise"]
    message, _ = failure(lambda: ask(options(stun_responder.server, rto=0.1), "ipv4", 0.25))
    assert message.endswith("(2 requests sent, 2 unrelated datagram(s) ignored)")


def _truncated(response: bytes) -> bytes:
    return response[:-4]


def _bad_fingerprint(response: bytes) -> bytes:
    return response[:-1] + bytes([response[-1] ^ 0xFF])


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (
            lambda txid: _truncated(stun.binding_success(txid, PUBLIC, 1)),
            "sent a bad answer: the header announces 20 bytes of attributes but 16 came",
        ),
        (
            lambda txid: _bad_fingerprint(stun.binding_success(txid, PUBLIC, 1)),
            "sent a bad answer: FINGERPRINT does not match the message",
        ),
        (
            lambda txid: stun.encode(stun.BINDING_SUCCESS, txid, [(0x0031, b"")]),
            "sent a bad answer: unknown comprehension-required attribute 0x0031",
        ),
        (
            lambda txid: stun.encode(stun.BINDING_SUCCESS, txid),
            "sent a bad answer: the response has no XOR-MAPPED-ADDRESS or MAPPED-ADDRESS",
        ),
        (
            lambda txid: stun.encode(
                stun.BINDING_ERROR, txid, [(stun.ERROR_CODE, stun.error_code(400, "Bad Request"))]
            ),
            "answered with error 400 (Bad Request)",
        ),
    ],
)
def test_a_bad_answer_is_an_error_naming_the_server(
    stun_responder: StunResponder, reply: Callable[[bytes], bytes], message: str
) -> None:
    stun_responder.reply = lambda request: [reply(request.transaction_id)]
    text, elapsed = failure(lambda: ask(options(stun_responder.server), "ipv4", 2.0))
    assert text == f"{stun_responder.server} {message}"
    assert elapsed < 0.5


def test_a_bad_answer_from_the_first_server_hands_over_to_the_second(coturn: Coturn) -> None:
    with StunResponder() as broken:
        broken.reply = lambda request: [stun.encode(stun.BINDING_SUCCESS, request.transaction_id)]
        assert ask(options(broken.server, coturn.server), "ipv4", 2.0) == "127.0.0.1"
        assert broken.requests == 1


# Request size --------------------------------------------------------------------------------


@pytest.mark.parametrize(("fingerprint", "size"), [(True, 28), (False, 20)])
def test_request_size_on_the_wire(
    stun_responder: StunResponder, fingerprint: bool, size: int
) -> None:
    sizes: list[int] = []

    def measure(request: Request) -> list[bytes]:
        sizes.append(len(request.data))
        return [stun_responder.respond(request)]

    stun_responder.reply = measure
    ask(options(stun_responder.server, fingerprint=fingerprint), "ipv4", 2.0)
    assert sizes == [size]
    assert size <= 200


# The responder itself ------------------------------------------------------------------------


def test_the_responder_answers_coturns_own_client() -> None:
    client = need("turnutils_stunclient", "coturn")
    with StunResponder(answer=PUBLIC) as responder:
        result = subprocess.run(
            [client, "-p", str(responder.port), "127.0.0.1"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    assert f"UDP reflexive addr: {PUBLIC}:" in result.stdout, result.stdout + result.stderr
    assert responder.requests >= 1


def test_the_responder_ignores_what_is_not_a_binding_request(stun_responder: StunResponder) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.connect(stun_responder.address)
        client.settimeout(2.0)
        client.send(b"hello")
        client.send(stun.binding_success(bytes(12), PUBLIC, 1))
        txid = stun.new_transaction_id()
        client.send(stun.binding_request(txid))
        answer = stun.parse_response(client.recv(2048), txid)  # the first datagram back
        assert answer == stun.Mapped(ipaddress.ip_address("127.0.0.1"), client.getsockname()[1])
    assert stun_responder.requests == 1


def test_the_responder_reports_a_failing_reply_hook_when_closed() -> None:
    def broken(request: Request) -> list[bytes]:
        raise ZeroDivisionError("a bug in a test's hook")

    responder = StunResponder()
    responder.start()
    responder.reply = broken
    failure(lambda: ask(options(responder.server, rto=0.05), "ipv4", 0.2))
    with pytest.raises(RuntimeError, match="reply hook failed") as raised:
        responder.close()
    assert isinstance(raised.value.__cause__, ZeroDivisionError)


def test_the_responder_port_is_unknown_until_it_runs() -> None:
    responder = StunResponder()
    with pytest.raises(RuntimeError, match="not running"):
        _ = responder.port
    with responder:
        assert responder.port > 0
