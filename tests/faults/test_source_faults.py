"""Every source failing in every way, seen through the real CLI: its one-line message and exit.

Each case configures one failing source and runs `ipwatch sources --json` (exit 2: none
answered) and checks the source's error sentence; then the agreement cases run `check`. The
source modules' own tests (tests/integration/test_stun.py, test_dns_sources.py,
test_http_command_sources.py) already cover these failures one call deep; here the same faults
must come out of the command a user runs as one sentence, with no traceback and no "internal
error". Cases covered elsewhere and not repeated here:

- DNS NXDOMAIN/REFUSED, echo rcodes: test_dns_sources.py (test_dns_nxdomain_*, test_echo_*)
- HTTP too many redirects, no Location: test_http_command_sources.py (test_http_too_many_*)
- command killed, not found, chatty stderr: test_http_command_sources.py (test_command_*)
- Asterisk rejecting the config: test_control.py::test_a_rejected_config_is_rolled_back
- Asterisk closing the connection: test_control.py::test_a_dropped_connection_during_the_*
- Asterisk hanging (its 30 s command timeout is too long to wait out here):
  test_asterisk_links.py::test_a_hung_command_times_out_at_the_deadline
- hooks that hang, fork children or flood output: test_hooks_runner.py
  (test_at_the_timeout_the_whole_process_group_is_killed, test_processes_a_hook_leaves_behind_*,
  test_a_flood_of_output_neither_hangs_nor_fills_memory)
- disk full, read-only, EACCES, EFBIG, SIGKILL x200: tests/faults/test_apply_faults.py
"""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ipwatch import stun
from ipwatch.stun_responder import Request, StunResponder
from tests.peers.bind9 import Bind9
from tests.peers.http import HttpPeer
from tests.support import free_port, run_ipwatch

pytestmark = pytest.mark.integration

PUBLIC, LIAR, OTHER = "192.0.2.10", "192.0.2.66", "192.0.2.99"
ACCEPT = 'accept = ["192.0.2.0/24"]\nconfirm = 1\n'


def toml(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(toml(item) for item in value) + "]"
    return json.dumps(value)


def write_config(tmp_path: Path, *sources: dict[str, Any]) -> Path:
    tables = "".join(
        "[[source]]\n" + "".join(f"{key} = {toml(value)}\n" for key, value in source.items())
        for source in sources
    )
    path = tmp_path / "ipwatch.toml"
    path.write_text(ACCEPT + tables)
    return path


def run(tmp_path: Path, command: str, *sources: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    finished = run_ipwatch(
        command, "--json", config=write_config(tmp_path, *sources), state_dir=tmp_path / "state"
    )
    assert "Traceback" not in finished.stderr and "internal error" not in finished.stdout
    return finished.returncode, json.loads(finished.stdout)


def only_error(tmp_path: Path, source: dict[str, Any]) -> str:
    """Run `sources --json` with one failing source; return its error, after the exit check."""
    status, result = run(tmp_path, "sources", {"name": "s", "timeout": "500ms", **source})
    (entry,) = result["ipv4"]
    assert status == 2, result
    assert entry["address"] is None and entry["error"], entry
    assert "\n" not in entry["error"]
    return str(entry["error"])


@pytest.fixture
def silent_udp() -> Iterator[str]:
    """A bound UDP socket that never answers: a black-holed server, as "IP:port"."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{sock.getsockname()[1]}"


def closed_port() -> str:
    return f"127.0.0.1:{free_port()}"


@pytest.fixture
def responder() -> Iterator[StunResponder]:
    with StunResponder(answer=PUBLIC) as server:
        yield server


# --- STUN ----------------------------------------------------------------------------------


def test_stun_timeout(tmp_path: Path, silent_udp: str) -> None:
    error = only_error(tmp_path, {"kind": "stun", "servers": [silent_udp]})
    assert error.startswith(f"no answer from {silent_udp} within ")


def test_stun_icmp_port_unreachable(tmp_path: Path) -> None:
    server = closed_port()
    error = only_error(tmp_path, {"kind": "stun", "servers": [server]})
    assert error == f"{server} refused (ICMP port unreachable)"


def _truncated(request: Request) -> list[bytes]:
    return [stun.binding_success(request.transaction_id, PUBLIC, 1)[:-4]]


def _wrong_transaction(request: Request) -> list[bytes]:
    return [stun.binding_success(stun.new_transaction_id(), PUBLIC, 1)]


def _bad_fingerprint(request: Request) -> list[bytes]:
    answer = bytearray(stun.binding_success(request.transaction_id, PUBLIC, 1))
    answer[-1] ^= 1
    return [bytes(answer)]


def _error_response(request: Request) -> list[bytes]:
    value = stun.error_code(500, "Server Error")
    return [stun.encode(stun.BINDING_ERROR, request.transaction_id, [(stun.ERROR_CODE, value)])]


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (lambda request: [b"\xffgarbage" * 5], "within"),  # ignored, then silence
        (_wrong_transaction, "within"),
        (_truncated, "sent a bad answer: the header announces 20 bytes of attributes but 16 came"),
        (_bad_fingerprint, "sent a bad answer: FINGERPRINT does not match the message"),
        (_error_response, "answered with error 500 (Server Error)"),
    ],
    ids=["garbage", "wrong-transaction", "truncated", "bad-fingerprint", "error-response"],
)
def test_stun_bad_answers(
    tmp_path: Path,
    responder: StunResponder,
    reply: Callable[[Request], list[bytes]],
    expected: str,
) -> None:
    responder.reply = reply
    error = only_error(tmp_path, {"kind": "stun", "servers": [responder.server], "rto": "100ms"})
    assert expected in error and responder.server in error
    if expected == "within":  # what was not an answer to us is counted, never taken
        assert "unrelated datagram(s) ignored" in error


# --- DNS -----------------------------------------------------------------------------------


def test_dns_nxdomain_through_the_cli(tmp_path: Path, bind9: Bind9) -> None:
    name = f"nothing-here.{bind9.ddns_zone}"
    source = {"kind": "dns", "hostname": name, "nameservers": [bind9.server]}
    assert only_error(tmp_path, source) == f"{bind9.server} says {name} does not exist (NXDOMAIN)"


def test_dns_refused_through_the_cli(tmp_path: Path, bind9: Bind9) -> None:
    # bind9 here serves no zone it could fail on; REFUSED is the SERVFAIL-like answer it gives.
    source = {"kind": "dns", "hostname": "pbx.example.net", "nameservers": [bind9.server]}
    assert "answered REFUSED" in only_error(tmp_path, source)


def test_dns_timeout(tmp_path: Path, silent_udp: str) -> None:
    source = {"kind": "dns", "hostname": "pbx.example.org", "nameservers": [silent_udp]}
    assert silent_udp in only_error(tmp_path, source)


def test_dns_echo_closed_port(tmp_path: Path) -> None:
    server = closed_port()
    source = {"kind": "dns-echo", "server": server, "qname": "myip.example.org", "rdtype": "A"}
    assert server in only_error(tmp_path, source)


# --- HTTP ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("route", "expected"),
    [
        ({"status": 500, "body": "boom"}, "500"),
        ({"body": "x" * 70_000}, "bytes"),
        ({"body": PUBLIC, "trickle": 0.2}, "within"),
        ({"body": PUBLIC, "delay": 2.0}, "within"),
    ],
    ids=["500", "huge-body", "slow-trickle", "slow-headers"],
)
def test_http_faults(
    tmp_path: Path, http_peer: HttpPeer, route: dict[str, Any], expected: str
) -> None:
    url = http_peer.answer("/ip", **route)
    error = only_error(tmp_path, {"kind": "http", "url": url, "max_bytes": 4096})
    assert expected in error, error


def test_http_redirect_loop(tmp_path: Path, http_peer: HttpPeer) -> None:
    http_peer.redirect("/a", http_peer.url("/b"))
    url = http_peer.redirect("/b", http_peer.url("/a"))
    assert "redirect" in only_error(tmp_path, {"kind": "http", "url": url}).lower()


def test_http_closed_port(tmp_path: Path) -> None:
    url = f"http://{closed_port()}/ip"
    assert "refused" in only_error(tmp_path, {"kind": "http", "url": url}).lower()


# --- command, NAT-PMP ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["sleep", "60"], "500ms"),
        ([sys.executable, "-c", "import sys\nwhile True: sys.stdout.write('x' * 65536)"], "bytes"),
        (["sh", "-c", "echo 'not an address'"], "not an address"),
        (["sh", "-c", "echo oops >&2; exit 3"], "oops"),
    ],
    ids=["hangs", "floods-stdout", "garbage", "fails"],
)
def test_command_faults(tmp_path: Path, argv: list[str], expected: str) -> None:
    error = only_error(tmp_path, {"kind": "command", "argv": argv, "max_bytes": 1000})
    assert expected in error, error


def test_natpmp_closed_port(tmp_path: Path) -> None:
    port = free_port()
    source = {"kind": "natpmp", "gateway": "127.0.0.1", "port": port}
    assert "refused NAT-PMP (ICMP port unreachable)" in only_error(tmp_path, source)


def test_natpmp_silence(tmp_path: Path, silent_udp: str) -> None:
    host, port = silent_udp.split(":")
    source = {"kind": "natpmp", "gateway": host, "port": int(port)}
    assert "no NAT-PMP answer from" in only_error(tmp_path, source)


# --- agreement -----------------------------------------------------------------------------


def echo(address: str, name: str) -> dict[str, Any]:
    return {"kind": "command", "name": name, "argv": ["echo", address]}


def test_sources_that_disagree_with_no_majority_confirm_nothing(tmp_path: Path) -> None:
    status, result = run(tmp_path, "check", echo(PUBLIC, "a"), echo(LIAR, "b"), echo(OTHER, "c"))
    assert status == 2
    assert result["ipv4"]["confirmed"] is False


def test_a_lying_minority_is_outvoted(tmp_path: Path) -> None:
    status, result = run(
        tmp_path, "check", echo(PUBLIC, "a"), echo(PUBLIC, "b"), echo(LIAR, "liar")
    )
    assert status == 0, result
    assert result["ipv4"]["confirmed"] is True and result["ipv4"]["address"] == PUBLIC
    agrees = {source["name"]: source["agrees"] for source in result["ipv4"]["sources"]}
    assert agrees == {"a": True, "b": True, "liar": False}
