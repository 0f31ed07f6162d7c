"""The "http", "command" and "interface" sources against a real HTTP server, real processes and
real interfaces in a network namespace of the test's own."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ipwatch import __version__, config
from ipwatch.addresses import Family
from ipwatch.errors import ConfigError, SourceError
from ipwatch.sources import command, http, interface
from tests.peers.http import HttpPeer
from tests.support import free_port, ipv6_loopback_available, missing, need, wait_until

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CHECKIP_HTML = (
    "<html><head><title>Current IP Check</title></head>"
    "<body>Current IP Address: 203.0.113.7</body></html>\r\n"
)


def ask_http(url: str, family: Family = "ipv4", timeout: float = 2.0, max_bytes: int = 1024) -> str:
    return http.ask(http.Options(url, max_bytes), family, timeout)


def ask_command(*argv: str, family: Family = "ipv4", timeout: float = 5.0) -> str:
    return command.ask(command.Options(argv), family, timeout)


def failure(call: Callable[[], str]) -> tuple[str, float]:
    """Run `call`, which must raise SourceError; return its message and how long it took."""
    started = time.monotonic()
    with pytest.raises(SourceError) as caught:
        call()
    return str(caught.value), time.monotonic() - started


def need_ipv6_loopback() -> None:
    if not ipv6_loopback_available():
        missing("IPv6 loopback (::1) is not available")


# --- http ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    ["203.0.113.7\n", '{"ip": "203.0.113.7", "country": "ZZ"}', CHECKIP_HTML, "ip=203.0.113.7."],
    ids=["plain", "json", "checkip-html", "sentence"],
)
def test_http_finds_the_address_in_the_body(http_peer: HttpPeer, body: str) -> None:
    assert ask_http(http_peer.answer("/ip", body)) == "203.0.113.7"
    [request] = http_peer.requests_to("/ip")
    assert request.headers["User-Agent"] == f"ipwatch/{__version__}"


def test_http_ipv6_answer_over_ipv6(http_peer: HttpPeer) -> None:
    need_ipv6_loopback()
    http_peer.answer("/ip", '{"ip":"2001:db8::7"}')
    assert ask_http(http_peer.url("/ip", host="::1"), "ipv6") == "2001:db8::7"


def test_http_connects_over_the_asked_family(http_peer: HttpPeer) -> None:
    http_peer.answer("/echo", echo=True)
    assert ask_http(http_peer.url("/echo"), "ipv4") == "127.0.0.1"
    if ipv6_loopback_available():
        assert ask_http(http_peer.url("/echo", host="::1"), "ipv6") == "::1"


def test_http_resolves_the_host_name_in_the_asked_family_only(http_peer: HttpPeer) -> None:
    http_peer.answer("/echo", echo=True)
    url = f"http://localhost:{http_peer.port}/echo"
    assert ask_http(url, "ipv4") == "127.0.0.1"
    try:
        socket.getaddrinfo("localhost", http_peer.port, socket.AF_INET6, socket.SOCK_STREAM)
    except socket.gaierror:
        message, _ = failure(lambda: ask_http(url, "ipv6"))
        assert "cannot resolve localhost to an ipv6 address" in message
    else:
        need_ipv6_loopback()
        assert ask_http(url, "ipv6") == "::1"


def test_http_address_literal_of_the_other_family(http_peer: HttpPeer) -> None:
    message, _ = failure(lambda: ask_http(http_peer.answer("/ip", "203.0.113.7"), "ipv6"))
    assert message == "the url's host 127.0.0.1 is an ipv4 address, but ipv6 was asked"
    assert http_peer.seen == []


@pytest.mark.parametrize(
    ("status", "reason"), [(500, "Internal Server Error"), (503, "Service Unavailable")]
)
def test_http_error_status(http_peer: HttpPeer, status: int, reason: str) -> None:
    url = http_peer.answer("/ip", "203.0.113.7", status=status)
    message, _ = failure(lambda: ask_http(url))
    assert message == f"{url} answered {status} {reason}"


def test_http_not_found(http_peer: HttpPeer) -> None:
    message, _ = failure(lambda: ask_http(http_peer.url("/nowhere")))
    assert message == f"{http_peer.url('/nowhere')} answered 404 Not Found"


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_http_follows_a_redirect_to_another_route(http_peer: HttpPeer, status: int) -> None:
    http_peer.answer("/new", "203.0.113.9")
    assert ask_http(http_peer.redirect("/old", "/new", status)) == "203.0.113.9"
    assert [r.path for r in http_peer.seen] == ["/old", "/new"]


def test_http_redirect_loop_ends_with_an_error(http_peer: HttpPeer) -> None:
    http_peer.redirect("/a", "/b")
    http_peer.redirect("/b", http_peer.url("/a"))
    message, _ = failure(lambda: ask_http(http_peer.url("/a")))
    assert message == f"{http_peer.url('/b')} redirects in a loop (back to {http_peer.url('/a')})"
    assert len(http_peer.seen) == 2


def test_http_too_many_redirects(http_peer: HttpPeer) -> None:
    for hop in range(http.MAX_REDIRECTS + 1):
        http_peer.redirect(f"/r{hop}", f"/r{hop + 1}")
    http_peer.answer(f"/r{http.MAX_REDIRECTS + 1}", "203.0.113.7")
    message, _ = failure(lambda: ask_http(http_peer.url("/r0")))
    assert message == f"{http_peer.url('/r0')} redirected more than 3 times; not followed"
    assert len(http_peer.seen) == http.MAX_REDIRECTS + 1


def test_http_redirect_without_location(http_peer: HttpPeer) -> None:
    message, _ = failure(lambda: ask_http(http_peer.answer("/ip", status=302)))
    assert message == f"{http_peer.url('/ip')} answered 302 without a Location to follow"


def test_http_body_over_the_limit(http_peer: HttpPeer) -> None:
    padded = "203.0.113.7".ljust(1024)
    assert ask_http(http_peer.answer("/exact", padded)) == "203.0.113.7"
    message, _ = failure(lambda: ask_http(http_peer.answer("/long", padded + " ")))
    assert message.startswith(f"{http_peer.url('/long')} answered with more than 1024 bytes;")


def test_http_slow_server_times_out_within_the_budget(http_peer: HttpPeer) -> None:
    url = http_peer.answer("/slow", "203.0.113.7", delay=30)
    message, elapsed = failure(lambda: ask_http(url, timeout=0.5))
    assert message == f"no answer from {url} within 500ms"
    assert 0.5 <= elapsed < 1.0


def test_http_trickling_body_cannot_stretch_the_budget(http_peer: HttpPeer) -> None:
    # Each byte comes well within any per-read timeout; only a deadline for the whole exchange
    # stops this.
    url = http_peer.answer("/trickle", "203.0.113.7 " * 5, trickle=0.05)
    message, elapsed = failure(lambda: ask_http(url, timeout=0.5))
    assert message == f"no answer from {url} within 500ms"
    assert elapsed < 1.0


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ("", "it was empty"),
        ("<html>maintenance</html>", "it began '<html>maintenance</html>'"),
        ("2001:db8::7\n", "only the ipv6 address 2001:db8::7"),
    ],
    ids=["empty", "no-address", "other-family"],
)
def test_http_no_address_of_the_family(http_peer: HttpPeer, body: str, detail: str) -> None:
    url = http_peer.answer("/ip", body)
    message, _ = failure(lambda: ask_http(url))
    assert message == f"{url} gave no ipv4 address ({detail})"


def test_http_nothing_listening() -> None:
    url = f"http://127.0.0.1:{free_port(socket.SOCK_STREAM)}/ip"
    message, _ = failure(lambda: ask_http(url))
    assert message == f"cannot reach {url} (Connection refused)"


def test_http_credentials_are_sent_but_never_shown(
    http_peer: HttpPeer,
    other_http_peer: HttpPeer,
) -> None:
    other_http_peer.answer("/ip", "203.0.113.7")
    http_peer.redirect("/away", other_http_peer.url("/ip"))
    http_peer.answer("/broken", status=500)
    base = f"http://ip%20user:s3cret@127.0.0.1:{http_peer.port}"
    assert ask_http(f"{base}/away") == "203.0.113.7"
    message, _ = failure(lambda: ask_http(f"{base}/broken"))
    assert message == f"{http_peer.url('/broken')} answered 500 Internal Server Error"
    [first] = http_peer.requests_to("/away")
    assert first.headers["Authorization"] == "Basic " + base64.b64encode(b"ip user:s3cret").decode()
    [redirected] = other_http_peer.requests_to("/ip")
    assert "Authorization" not in redirected.headers


def test_https_with_a_trusted_certificate(
    https_peer: HttpPeer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert https_peer.ca_file is not None
    monkeypatch.setenv("SSL_CERT_FILE", str(https_peer.ca_file))
    assert ask_http(https_peer.answer("/ip", "203.0.113.7\n")) == "203.0.113.7"


def test_https_with_an_untrusted_certificate(https_peer: HttpPeer) -> None:
    url = https_peer.answer("/ip", "203.0.113.7\n")
    message, _ = failure(lambda: ask_http(url))
    assert message.startswith(f"the TLS certificate of {url} was not accepted (")
    assert https_peer.seen == []


def test_https_never_follows_a_redirect_to_http(
    https_peer: HttpPeer,
    http_peer: HttpPeer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert https_peer.ca_file is not None
    monkeypatch.setenv("SSL_CERT_FILE", str(https_peer.ca_file))
    target = http_peer.answer("/ip", "203.0.113.66")
    url = https_peer.redirect("/ip", target)
    message, _ = failure(lambda: ask_http(url))
    assert message == f"{url} redirected from https to {target}; not followed"
    assert http_peer.seen == []


# --- command ------------------------------------------------------------------------------------


def python(code: str) -> tuple[str, ...]:
    return (sys.executable, "-c", code)


def process_alive(pid: int) -> bool:
    """True while `pid` is a running (not zombie) `sleep`: a reused pid does not count."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    name, state = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2]
    return name == "sleep" and state != "Z"


def test_command_prints_an_address() -> None:
    assert ask_command(*python("print('wan address: 203.0.113.7')")) == "203.0.113.7"
    assert ask_command(*python("print('2001:db8::7')"), family="ipv6") == "2001:db8::7"


def test_command_prints_nothing() -> None:
    message, _ = failure(lambda: ask_command(*python("pass")))
    assert message == f"the command {sys.executable} gave no ipv4 address (it was empty)"


def test_command_prints_the_other_family() -> None:
    message, _ = failure(lambda: ask_command(*python("print('2001:db8::7')")))
    assert message.endswith("gave no ipv4 address (only the ipv6 address 2001:db8::7)")


def test_command_exit_status_and_last_stderr_line() -> None:
    code = "import sys; print('203.0.113.7'); sys.stderr.write('asking\\nrouter said no\\n\\n');"
    message, _ = failure(lambda: ask_command(*python(code + "sys.exit(3)")))
    assert message == f"the command {sys.executable} exited with status 3: router said no"


def test_command_killed_by_a_signal() -> None:
    message, _ = failure(lambda: ask_command("sh", "-c", "kill -KILL $$"))
    assert message == "the command sh was killed by SIGKILL and printed nothing on stderr"


def test_command_hanging_is_killed_with_its_children(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    script = 'sleep 300 & echo $! > "$1"; wait'
    message, elapsed = failure(
        lambda: ask_command("sh", "-c", script, "sh", str(pid_file), timeout=1)
    )
    assert message == "the command sh did not finish within 1s; it was killed"
    assert 1.0 <= elapsed < 1.5
    grandchild = int(pid_file.read_text())
    wait_until(lambda: not process_alive(grandchild), 5, f"grandchild {grandchild} to be killed")


def test_command_answer_does_not_wait_for_what_it_left_running(tmp_path: Path) -> None:
    # The background sleep keeps stdout open; the answer must come when sh exits, and the
    # sleep must not outlive it.
    pid_file = tmp_path / "background.pid"
    script = 'sleep 300 & echo $! > "$1"; echo 203.0.113.7'
    started = time.monotonic()
    assert ask_command("sh", "-c", script, "sh", str(pid_file), timeout=5) == "203.0.113.7"
    assert time.monotonic() - started < 1.0
    background = int(pid_file.read_text())
    wait_until(lambda: not process_alive(background), 5, f"background {background} to be killed")


def test_command_flooding_stdout_is_stopped() -> None:
    flood = python("import sys\nwhile True: sys.stdout.write('203.0.113.7 ' * 5000)")
    message, elapsed = failure(lambda: ask_command(*flood, timeout=10))
    assert message.startswith(f"the command {sys.executable} printed more than 4096 bytes;")
    assert elapsed < 2.0


def test_command_chatty_stderr_does_not_block_it() -> None:
    code = "import sys; sys.stderr.write('x' * 1_000_000); print('203.0.113.7')"
    assert ask_command(*python(code)) == "203.0.113.7"


@pytest.mark.parametrize(
    "program", ["/nonexistent/ipwatch-test-program", "ipwatch-test-no-such-program"]
)
def test_command_not_found(program: str) -> None:
    message, _ = failure(lambda: ask_command(program))
    assert message == f"the command {program} was not found; check argv[0] (no shell, no ~)"


def test_command_not_executable(tmp_path: Path) -> None:
    script = tmp_path / "myip"
    script.write_text("#!/bin/sh\necho 203.0.113.7\n")
    script.chmod(0o644)
    message, _ = failure(lambda: ask_command(str(script)))
    assert message == f"the command {script} cannot be run (permission denied)"


# --- interface ----------------------------------------------------------------------------------

# Each interface is a veth (Debian's kernels have the dummy driver, not every kernel does); only
# its own end matters. "Global" addresses are real global ones: harmless in a namespace with no
# route out, and the documentation ranges would be rejected like private ones.
NAMESPACE_SETUP = """
ip link add wan0 type veth peer name wan0p
ip addr add 203.0.113.2 peer 203.0.113.1 dev wan0
ip link add mix0 type veth peer name mix0p
ip addr add 192.168.1.10/24 dev mix0
ip addr add 100.64.1.2/10 dev mix0
ip addr add 11.22.33.44/24 dev mix0
ip link add cgn0 type veth peer name cgn0p
ip addr add 100.64.7.7/10 dev cgn0
ip link add six0 type veth peer name six0p
ip link set six0 up
ip link set six0p up
ip -6 addr add 2a0a:1::5/64 dev six0 nodad
ip -6 addr add fd00:1::1/64 dev six0 nodad
ip link add dep0 type veth peer name dep0p
ip -6 addr add fd00:2::1/64 dev dep0 nodad
ip -6 addr add 2a0a:2::dead/64 dev dep0 nodad preferred_lft 0
ip link add tent0 type veth peer name tent0p
ip link set tent0 up
ip -6 addr add fd00:3::1/64 dev tent0 nodad
ip -6 addr add 2a0a:3::7/64 dev tent0
ip link add ll0 type veth peer name ll0p
ip -6 addr add fe80::1/64 dev ll0 nodad
"""
# tent0's peer stays down: without carrier, duplicate address detection never starts and
# 2a0a:3::7 stays tentative for as long as the test needs.

ASK_IN_NAMESPACE = """
import json, sys
from ipwatch.errors import SourceError
from ipwatch.sources import interface
answers = {}
for name, family in json.loads(sys.argv[1]):
    try:
        answers[name + "/" + family] = interface.ask(interface.Options(name), family, 2.0)
    except SourceError as error:
        answers[name + "/" + family] = "error: " + str(error)
print(json.dumps(answers))
"""

EXPECTED = {
    "wan0/ipv4": "203.0.113.2",  # IFA_LOCAL, not the peer in IFA_ADDRESS
    "mix0/ipv4": "11.22.33.44",  # the global one, though added last
    "cgn0/ipv4": "100.64.7.7",  # nothing better: reported, for decide to reject
    "six0/ipv6": "2a0a:1::5",  # not the ULA, nor the link-local
    "dep0/ipv6": "fd00:2::1",  # the deprecated global one is skipped
    "tent0/ipv6": "fd00:3::1",  # the tentative global one is skipped
    "ll0/ipv6": "fe80::1",
    "six0/ipv4": "error: interface six0 has no usable ipv4 address",
    "nosuch0/ipv4": "error: no interface named nosuch0",
}


def namespace_prefix() -> list[str]:
    """The command that runs its arguments in a new, empty network namespace."""
    unshare = need("unshare", "util-linux")
    need("ip", "iproute2")
    for prefix in ([unshare, "--net"], [unshare, "--net", "--map-root-user"]):
        if subprocess.run([*prefix, "true"], capture_output=True, check=False).returncode == 0:
            return prefix
    missing("cannot create a network namespace (unshare --net), as root or in a user namespace")


@pytest.fixture(scope="module")
def interface_answers() -> dict[str, str]:
    """What the interface source answered for each EXPECTED key, asked inside a namespace."""
    queries = [key.split("/") for key in EXPECTED]
    script = f'set -e\n{NAMESPACE_SETUP}\nexec "$0" -c "$1" "$2"\n'
    result = subprocess.run(
        [
            *namespace_prefix(),
            "sh",
            "-c",
            script,
            sys.executable,
            ASK_IN_NAMESPACE,
            json.dumps(queries),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0, result.stderr
    answers: dict[str, str] = json.loads(result.stdout)
    return answers


@pytest.mark.parametrize("key", list(EXPECTED))
def test_interface_address(interface_answers: dict[str, str], key: str) -> None:
    assert interface_answers[key] == EXPECTED[key]


# --- configuration ------------------------------------------------------------------------------


def config_errors(source: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        config.parse({"source": [source]})
    return caught.value.messages


def test_valid_sources_parse_with_defaults() -> None:
    sources = config.parse(
        {
            "source": [
                {"kind": "http", "url": "https://checkip.example/"},
                {"kind": "command", "argv": ["/usr/local/bin/myip", "--v4"], "max_bytes": 100},
                {"kind": "interface", "interface": "ppp0", "name": "wan-link"},
            ]
        }
    ).sources
    assert [s.options for s in sources] == [
        http.Options("https://checkip.example/", 1024),
        command.Options(("/usr/local/bin/myip", "--v4"), 100),
        interface.Options("ppp0"),
    ]
    assert sources[2].name == "wan-link"


@pytest.mark.parametrize(
    ("source", "error"),
    [
        ({"kind": "http"}, "source[0].url: missing; this key is required"),
        ({"kind": "http", "url": 7}, "source[0].url: expected a URL like"),
        ({"kind": "http", "url": "ftp://x/"}, "source[0].url: 'ftp://x/' is not an http://"),
        ({"kind": "http", "url": "http:///ip"}, "source[0].url: 'http:///ip' has no host name"),
        ({"kind": "http", "url": "http://x:99999/"}, "source[0].url: 'http://x:99999/' is not a"),
        ({"kind": "http", "url": "http://x/a b"}, "source[0].url: 'http://x/a b' has spaces,"),
        ({"kind": "http", "url": "http://x/", "max_bytes": 0}, "source[0].max_bytes: expected"),
        ({"kind": "command"}, "source[0].argv: missing; this key is required"),
        ({"kind": "command", "argv": []}, "source[0].argv: empty; put the program first"),
        ({"kind": "command", "argv": "myip -4"}, "source[0].argv: expected a list like"),
        ({"kind": "command", "argv": ["myip", 4]}, "source[0].argv: item 1 is 4; every item"),
        ({"kind": "interface"}, "source[0].interface: missing; this key is required"),
        ({"kind": "interface", "interface": "eth 0"}, "source[0].interface: 'eth 0' is not an"),
        ({"kind": "interface", "interface": "x" * 16}, f"source[0].interface: {'x' * 16!r} is"),
    ],
)
def test_invalid_sources_are_reported(source: dict[str, Any], error: str) -> None:
    [message] = config_errors(source)
    assert message.startswith(f"<config>: {error}")


def test_url_credentials_stay_out_of_config_errors() -> None:
    [message] = config_errors({"kind": "http", "url": "gopher://me:hunter2@x/"})
    assert "hunter2" not in message and "me:" not in message
    assert (
        message
        == "<config>: source[0].url: 'gopher://********@x/' is not an http:// or https:// URL"
    )
