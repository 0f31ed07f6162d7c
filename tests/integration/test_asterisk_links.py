"""The two links to Asterisk (AMI over TCP, the `asterisk -rx` control socket) against the test
Asterisk: outputs as recorded from a real 22.10.1, versions, both Command answer forms, events in
between, one byte per segment, and every failure an admin can meet."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ipwatch.asterisk.ami import MAX_REPLY, AmiLink
from ipwatch.asterisk.console import ConsoleLink, clean_output
from ipwatch.asterisk.link import (
    AsteriskAuthError,
    AsteriskDropped,
    AsteriskError,
    AsteriskPermissionError,
    AsteriskProtocolError,
    AsteriskTimeout,
    AsteriskUnavailable,
    Link,
    open_link,
    strip_escapes,
)
from ipwatch.config import AmiConfig, AsteriskConfig
from tests.peers.stand_in import (
    DEFAULT_SECRET,
    DEFAULT_USER,
    RECORDED_PJSIP_CONF,
    AmiUser,
    StandInAsterisk,
    StandInFactory,
)
from tests.support import ipv6_loopback_available, missing, wait_until

pytestmark = pytest.mark.integration

RECORDED = Path(__file__).resolve().parents[1] / "data" / "asterisk" / "asterisk22"
TRANSPORT = "pjsip show transport transport-udp-nat"
DEADLINE = 5.0
KINDS = ("ami", "console")
FAST_LOGIN_FAILURE = 0.05  # the stand-in Asterisk's stand-in for manager.c's 1 s sleep
MakeLink = Callable[[StandInAsterisk, str], Link]


def recorded_output(name: str) -> str:
    """A recorded `asterisk -rx` output (cli_NN_*.txt: command line, output, exit code) as a
    link returns it: the final newline removed."""
    text = (RECORDED / name).read_text()
    output = text.split("\n", 1)[1].removesuffix("[rc=0]\n")
    return output.removesuffix("\n")


@pytest.fixture
def make_link() -> Iterator[MakeLink]:
    """Links to a stand-in Asterisk, closed at teardown."""
    links: list[Link] = []

    def make(server: StandInAsterisk, kind: str) -> Link:
        link: Link = ami(server) if kind == "ami" else ConsoleLink(str(server.console_path))
        links.append(link)
        return link

    yield make
    for link in links:
        link.close()


def ami(
    server: StandInAsterisk, secret: str = DEFAULT_SECRET, max_reply: int = MAX_REPLY
) -> AmiLink:
    return AmiLink(server.host, server.ami_port, DEFAULT_USER, secret, max_reply=max_reply)


def logins(server: StandInAsterisk) -> int:
    return server.actions().count("Login")


# ---------------------------------------------------------------------------------------------
# What a real Asterisk printed
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [None, 1], ids=["whole", "byte-at-a-time"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("command", "recording"),
    [
        ("core show version", "cli_01_core_show_version.txt"),
        ("core show channels count", "cli_02_core_show_channels_count.txt"),
        (TRANSPORT, "cli_03_pjsip_show_transport_before.txt"),
        ("pjsip show transports", "cli_04_pjsip_show_transports.txt"),
        ("pjsip send register *all", "cli_06_pjsip_send_register_all.txt"),
        ("module reload res_pjsip.so", "cli_11_module_reload_res_pjsip_noop.txt"),
        ("pjsip show transport does-not-exist", "cli_10_pjsip_show_transport_nonexistent.txt"),
    ],
)
def test_command_output_is_what_asterisk_rx_printed(
    stand_in_factory: StandInFactory,
    make_link: MakeLink,
    kind: str,
    chunk_size: int | None,
    command: str,
    recording: str,
) -> None:
    server = stand_in_factory(chunk_size=chunk_size)
    assert make_link(server, kind).command(command, DEADLINE) == recorded_output(recording)


def test_both_links_see_the_new_address_after_a_reload(
    stand_in: StandInAsterisk, make_link: MakeLink
) -> None:
    """cli_09: the recorded transport after external_* changed and res_pjsip was reloaded."""
    links = [make_link(stand_in, kind) for kind in KINDS]
    pjsip_conf = stand_in.config_dir / "pjsip.conf"
    before = pjsip_conf.stat().st_mtime_ns
    pjsip_conf.write_text(RECORDED_PJSIP_CONF.replace("198.51.100.5", "203.0.113.77"))
    os.utime(pjsip_conf, ns=(before + 1_000_000, before + 1_000_000))
    assert links[0].command("module reload res_pjsip.so", DEADLINE) == recorded_output(
        "cli_08_module_reload_res_pjsip.txt"
    )
    expected = recorded_output("cli_09_pjsip_show_transport_after_reload.txt")
    assert [link.command(TRANSPORT, DEADLINE) for link in links] == [expected, expected]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("version", ["16.10.0", "18.20.0", "20.11.0", "22.10.1", "13.38.3"])
def test_version_is_detected(
    stand_in_factory: StandInFactory, make_link: MakeLink, kind: str, version: str
) -> None:
    server = stand_in_factory(version=version)
    assert make_link(server, kind).version() == version


def test_ami_version_comes_from_core_show_version_without_the_system_privilege(
    stand_in_factory: StandInFactory,
) -> None:
    server = stand_in_factory(
        version="18.20.0", users={DEFAULT_USER: AmiUser(DEFAULT_SECRET, write="command")}
    )
    with contextlib.closing(ami(server)) as link:
        assert link.version() == "18.20.0"
        assert link.version() == "18.20.0"  # asked once per connection
    assert server.actions() == ["Challenge", "Login", "CoreSettings", "Command", "Logoff"]
    assert server.commands() == ["core show version"]


def test_asterisk_13_answers_command_with_follows_and_end_command(
    stand_in_factory: StandInFactory, make_link: MakeLink
) -> None:
    """manager.c <= 13: `Response: Follows`, raw text, `--END COMMAND--`; the output has
    empty lines and `Key: value`-looking lines that must not end or join the headers."""
    server = stand_in_factory(version="13.38.3", chunk_size=1)
    link = make_link(server, "ami")
    assert link.command(TRANSPORT, DEADLINE) == recorded_output(
        "cli_03_pjsip_show_transport_before.txt"
    )
    assert link.command("foo bar", DEADLINE) == (
        "No such command 'foo bar' (type 'core show help foo' for other possible commands)"
    )
    assert link.command("core show channels count", DEADLINE) == recorded_output(
        "cli_02_core_show_channels_count.txt"
    )


@pytest.mark.parametrize("kind", KINDS)
def test_a_failed_command_returns_its_output_as_asterisk_rx_does(
    stand_in: StandInAsterisk, make_link: MakeLink, kind: str
) -> None:
    assert make_link(stand_in, kind).command("foo bar", DEADLINE) == (
        "No such command 'foo bar' (type 'core show help foo' for other possible commands)"
    )


# ---------------------------------------------------------------------------------------------
# AMI framing: events, stale responses, one byte at a time, floods
# ---------------------------------------------------------------------------------------------


def test_ami_logs_in_by_md5_challenge_and_never_sends_the_secret(
    stand_in: StandInAsterisk,
) -> None:
    with contextlib.closing(ami(stand_in)) as link:
        link.command("core show version", DEADLINE)
    challenge, login = stand_in.received[:2]
    assert dict(challenge.headers) == {
        "Action": "Challenge",
        "AuthType": "MD5",
        "ActionID": "ipwatch-1",
    }
    assert [key for key, _ in login.headers] == [
        "Action",
        "AuthType",
        "Username",
        "Key",
        "Events",
        "ActionID",
    ]
    assert dict(login.headers)["Events"] == "off"
    sent = "".join(f"{k}: {v}\n" for message in stand_in.received for k, v in message.headers)
    assert DEFAULT_SECRET not in sent and "Secret" not in sent


def test_ami_skips_events_and_stale_responses_between_the_answers(
    stand_in_factory: StandInFactory,
) -> None:
    """An event may carry the ActionID of the action it belongs to (CoreShowChannel does): only
    a Response with our ActionID is the answer."""
    server = stand_in_factory(chunk_size=1)
    server.chatter_ignores_event_mask = True
    server.chatter = [
        "Event: CoreShowChannel\r\nActionID: ipwatch-2\r\nChannel: PJSIP/peer1-00000001\r\n\r\n",
        "Response: Success\r\nActionID: ipwatch-0\r\nMessage: Command output follows\r\n"
        "Output: stale\r\n\r\n",
        "\r\nEvent: FullyBooted\r\nPrivilege: system,all\r\nStatus: Fully Booted\r\n\r\n",
    ]
    with contextlib.closing(ami(server)) as link:
        assert link.command(TRANSPORT, DEADLINE) == recorded_output(
            "cli_03_pjsip_show_transport_before.txt"
        )
        assert link.action("CoreStatus")["CoreCurrentCalls"] == "0"
    assert logins(server) == 1


def test_ami_events_queued_between_calls_do_not_cost_a_reconnect(
    stand_in: StandInAsterisk,
) -> None:
    with contextlib.closing(ami(stand_in)) as link:
        link.command("core show version", DEADLINE)
        assert stand_in.inject_event("Event: Reload\r\nModule: res_pjsip.so", force=True) == 1
        assert link.command("core show channels count", DEADLINE).endswith("0 calls processed")
    assert logins(stand_in) == 1


def test_ami_reply_larger_than_the_limit_is_refused_not_buffered(
    stand_in: StandInAsterisk,
) -> None:
    stand_in.chatter_ignores_event_mask = True
    stand_in.chatter = ["Event: Flood\r\nData: " + "x" * 200_000 + "\r\n\r\n"]
    with contextlib.closing(ami(stand_in, max_reply=64 * 1024)) as link:
        with pytest.raises(AsteriskProtocolError) as raised:
            link.command("core show version", DEADLINE)
        assert str(raised.value) == (
            f"Asterisk's manager interface at 127.0.0.1:{stand_in.ami_port} sent more than "
            "64 KiB in one message while ipwatch waited for `core show version`"
        )
        stand_in.chatter = []
        assert link.version() == "22.10.1"
    assert logins(stand_in) == 2


def test_console_output_larger_than_the_limit_is_refused(stand_in: StandInAsterisk) -> None:
    link = ConsoleLink(str(stand_in.console_path), max_output=1024)
    with pytest.raises(AsteriskProtocolError, match="more than 1 KiB"):
        link.command(TRANSPORT, DEADLINE)


def test_the_generic_action_returns_the_response_headers(
    stand_in: StandInAsterisk,
) -> None:
    with contextlib.closing(ami(stand_in)) as link:
        status = link.action("CoreStatus")
        assert list(status)[:3] == ["Response", "ActionID", "CoreStartupDate"]
        assert link.action("CoreSettings")["AMIversion"] == "11.0.0"
        assert link.action("Reload", Module="res_pjsip.so")["Message"] == "Module Reloaded"
        with pytest.raises(AsteriskError) as raised:
            link.action("Reload", Module="res_nothing.so")
        assert str(raised.value).endswith("refused the Reload action: No such module")
        with pytest.raises(AsteriskError, match="contains a line break"):
            link.action("Reload", Module="res_pjsip.so\r\nAction: Logoff")
    assert stand_in.actions().count("Reload") == 2  # the one with a line break was not sent


# ---------------------------------------------------------------------------------------------
# Failures
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["wrong secret", "refused"])
def test_a_refused_login_is_one_sentence_without_the_secret(
    stand_in_factory: StandInFactory, fault: str
) -> None:
    server = stand_in_factory(failed_login_delay=FAST_LOGIN_FAILURE)
    server.faults.refuse_login = fault == "refused"
    secret = "not-the-secret" if fault == "wrong secret" else DEFAULT_SECRET
    with contextlib.closing(ami(server, secret)) as link:
        started = time.monotonic()
        with pytest.raises(AsteriskAuthError) as raised:
            link.command("core show version", DEADLINE)
        elapsed = time.monotonic() - started
    assert str(raised.value) == (
        f"Asterisk's manager interface at 127.0.0.1:{server.ami_port} rejected the username "
        "or secret"
    )
    assert raised.value.exit_status == 3
    assert FAST_LOGIN_FAILURE <= elapsed < 1.0
    assert server.commands() == []


def test_ami_without_the_command_privilege_says_what_to_add(
    stand_in_factory: StandInFactory,
) -> None:
    server = stand_in_factory(
        users={DEFAULT_USER: AmiUser(DEFAULT_SECRET, write="system,reporting")}
    )
    with contextlib.closing(ami(server)) as link:
        with pytest.raises(AsteriskPermissionError) as raised:
            link.command(TRANSPORT, DEADLINE)
        assert str(raised.value) == (
            f"Asterisk's manager interface at 127.0.0.1:{server.ami_port} does not let AMI user "
            "'ipwatch' run Command; add command to its write= line in manager.conf"
        )
        assert link.action("CoreStatus")["Response"] == "Success"  # the session lives on
    assert logins(server) == 1


def test_ami_without_the_system_privilege_names_it(stand_in_factory: StandInFactory) -> None:
    server = stand_in_factory(users={DEFAULT_USER: AmiUser(DEFAULT_SECRET, write="command")})
    with contextlib.closing(ami(server)) as link, pytest.raises(AsteriskPermissionError) as raised:
        link.action("Reload", Module="res_pjsip.so")
    assert str(raised.value).endswith("add system (or config) to its write= line in manager.conf")


@pytest.mark.parametrize("kind", KINDS)
def test_a_hung_command_times_out_at_the_deadline(
    stand_in: StandInAsterisk, make_link: MakeLink, kind: str
) -> None:
    stand_in.faults.hang_commands = ("pjsip show transport",)
    link = make_link(stand_in, kind)
    link.command("core show version", DEADLINE)
    started = time.monotonic()
    with pytest.raises(AsteriskTimeout) as raised:
        link.command(TRANSPORT, 0.3)
    elapsed = time.monotonic() - started
    assert 0.3 <= elapsed < 0.8
    assert f"`{TRANSPORT}`" in str(raised.value)
    assert str(raised.value).endswith("within 0.3 s")
    assert link.command("core show channels count", DEADLINE).startswith("0 active channels")


def test_ami_timeout_names_the_manager_interface(stand_in: StandInAsterisk) -> None:
    stand_in.faults.hang_commands = ("pjsip show transport",)
    with contextlib.closing(ami(stand_in)) as link, pytest.raises(AsteriskTimeout) as raised:
        link.command(TRANSPORT, 0.2)
    assert str(raised.value) == (
        f"Asterisk's manager interface at 127.0.0.1:{stand_in.ami_port} did not answer "
        f"`{TRANSPORT}` within 0.2 s"
    )


def test_ami_dropped_mid_answer_is_reported_and_not_repeated(
    stand_in: StandInAsterisk,
) -> None:
    """The command may have run: it is not sent again; the next call reconnects."""
    stand_in.faults.drop_commands = ("pjsip show transport",)
    with contextlib.closing(ami(stand_in)) as link:
        with pytest.raises(AsteriskDropped) as raised:
            link.command(TRANSPORT, DEADLINE)
        assert str(raised.value) == (
            f"Asterisk's manager interface at 127.0.0.1:{stand_in.ami_port} closed the "
            f"connection before answering `{TRANSPORT}`"
        )
        assert stand_in.commands() == [TRANSPORT]
        assert link.version() == "22.10.1"
    assert logins(stand_in) == 2


def test_console_cut_short_looks_like_a_short_output(stand_in: StandInAsterisk) -> None:
    """The console protocol ends at EOF and has no end marker: a dropped connection cannot be
    told from the end of the output, so callers must check what they parse."""
    stand_in.faults.drop_commands = ("core show channels",)
    link = ConsoleLink(str(stand_in.console_path))
    assert link.command("core show channels count", DEADLINE) == "0 active channels"


def test_ami_reconnects_once_after_asterisk_restarted(stand_in: StandInAsterisk) -> None:
    with contextlib.closing(ami(stand_in)) as link:
        assert link.version() == "22.10.1"
        stand_in.halt()
        stand_in.version = "22.11.0"
        stand_in.boot()
        assert link.command("core show version", DEADLINE).startswith("Asterisk 22.11.0 built")
        assert link.version() == "22.11.0"
        assert logins(stand_in) == 2
        stand_in.halt()
        with pytest.raises(AsteriskUnavailable):
            link.command("core show version", DEADLINE)


def test_core_restart_now_drops_ami_and_the_link_comes_back(
    stand_in_factory: StandInFactory,
) -> None:
    server = stand_in_factory(restart_downtime=0.05)
    with contextlib.closing(ami(server)) as link:
        with pytest.raises(AsteriskDropped):
            link.command("core restart now", DEADLINE)
        wait_until(lambda: server.restart_count == 1 and server.running, DEADLINE, "the restart")
        assert link.command("core show channels count", DEADLINE).startswith("0 active")
    assert server.boot_count == 2


def test_ami_not_running_is_refused(stand_in_factory: StandInFactory) -> None:
    server = stand_in_factory(running=False)
    with pytest.raises(AsteriskUnavailable) as raised:
        ami(server).command("core show version", DEADLINE)
    assert str(raised.value) == (
        f"Asterisk's manager interface at 127.0.0.1:{server.ami_port} refused the connection; "
        "is Asterisk running and manager.conf enabled?"
    )
    assert raised.value.exit_status == 3


def test_ami_over_ipv6_loopback(stand_in_factory: StandInFactory) -> None:
    if not ipv6_loopback_available():
        missing("no IPv6 loopback here")
    server = stand_in_factory(host="::1")
    with contextlib.closing(ami(server)) as link:
        assert link.version() == "22.10.1"
        server.halt()
        with pytest.raises(AsteriskUnavailable, match=rf"at \[::1\]:{server.ami_port} refused"):
            link.command("core show version", DEADLINE)


def test_a_silent_peer_on_the_ami_port_times_out() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        link = AmiLink("127.0.0.1", port, DEFAULT_USER, DEFAULT_SECRET)
        with contextlib.closing(link), pytest.raises(AsteriskTimeout) as raised:
            link.command("core show version", 0.2)  # accepted by the backlog, never greeted
    assert str(raised.value).endswith("did not answer its greeting within 0.2 s")


def test_something_else_on_the_ami_port_is_not_taken_for_asterisk() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(DEADLINE)
        port = listener.getsockname()[1]

        def greet_like_ssh() -> None:
            connection, _ = listener.accept()
            with connection:
                connection.sendall(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n")
                connection.recv(1)  # until the client hangs up

        peer = threading.Thread(target=greet_like_ssh)
        peer.start()
        link = AmiLink("127.0.0.1", port, DEFAULT_USER, DEFAULT_SECRET)
        with contextlib.closing(link), pytest.raises(AsteriskProtocolError) as raised:
            link.command("core show version", DEADLINE)
        peer.join(DEADLINE)
    assert str(raised.value) == (
        f"127.0.0.1:{port} is not Asterisk's manager interface "
        "(it said 'SSH-2.0-OpenSSH_9.2p1 Debian-2')"
    )


def test_console_not_running_means_no_socket(stand_in_factory: StandInFactory) -> None:
    server = stand_in_factory(running=False)
    with pytest.raises(AsteriskUnavailable) as raised:
        ConsoleLink(str(server.console_path)).command("core show version", DEADLINE)
    assert str(raised.value) == (
        f"no Asterisk control socket at {server.console_path}; is Asterisk running?"
    )


def test_console_socket_left_behind_by_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "asterisk.ctl"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
        stale.bind(str(path))
    with pytest.raises(AsteriskUnavailable) as raised:
        ConsoleLink(str(path)).version()
    assert str(raised.value) == (
        f"nothing listens on the Asterisk control socket {path}; is Asterisk running?"
    )


def test_console_permission_denied_says_who_may_connect(stand_in: StandInAsterisk) -> None:
    path = str(stand_in.console_path)
    os.chmod(path, 0o660)
    assert try_as_unprivileged(path) == (
        f"AsteriskPermissionError: {path}: permission denied; run ipwatch as the asterisk "
        "user or a member of the astctlgroup"
    )


def try_as_unprivileged(path: str) -> str:
    """Connect as nobody (root bypasses the socket's mode); as another user, directly."""
    if os.geteuid() != 0:
        return describe(lambda: ConsoleLink(path).version())
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with server threads running
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            os.write(write_end, describe(lambda: ConsoleLink(path).version()).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        said = pipe.read().decode()
    os.waitpid(pid, 0)
    return said


def describe(attempt: Callable[[], str]) -> str:
    try:
        return f"connected to {attempt()}"
    except AsteriskError as error:
        return f"{type(error).__name__}: {error}"


def test_console_refuses_commands_the_socket_cannot_carry(stand_in: StandInAsterisk) -> None:
    link = ConsoleLink(str(stand_in.console_path))
    with pytest.raises(AsteriskError, match="at most 495 bytes"):
        link.command("core show version " + "x" * 480, DEADLINE)
    with pytest.raises(AsteriskError, match="one line"):
        link.command("core show version\ncore stop now", DEADLINE)
    assert stand_in.commands() == []


def test_console_drops_verbose_lines_as_asterisk_rx_does() -> None:
    """logger.c prefixes verbose messages with -(level + 1) (0xFE for level 1); older releases
    used 127. A verbose message split across reads, or without a final newline, goes whole."""
    received = (
        b"\xfe    -- Reloading module 'res_pjsip.so' (Basic SIP resource)\n"
        b"Module 'res_pjsip.so' reloaded successfully.\n"
        b"\x7f  == old-style verbose\n"
        b"\n"
        b"\xff  -- trailing verbose without newline"
    )
    assert clean_output(received) == "Module 'res_pjsip.so' reloaded successfully.\n\n"
    assert clean_output("Transport:  ü\n".encode()) == "Transport:  ü\n"


def test_colour_codes_are_removed() -> None:
    assert strip_escapes("\x1b[1;31mERROR\x1b[0m[123]: res_pjsip.c") == "ERROR[123]: res_pjsip.c"


# ---------------------------------------------------------------------------------------------
# The secret, and choosing the link
# ---------------------------------------------------------------------------------------------


def test_the_secret_never_reaches_logs_messages_or_repr(
    stand_in_factory: StandInFactory, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "s3cr3t-Value"
    server = stand_in_factory(
        users={DEFAULT_USER: AmiUser(secret)}, failed_login_delay=FAST_LOGIN_FAILURE
    )
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    with contextlib.closing(ami(server, secret)) as link:
        link.command("core show version", DEADLINE)
        server.halt()
        server.boot()
        link.command("core show version", DEADLINE)
        server.faults.refuse_login = True
        server.halt()
        server.boot()
        with pytest.raises(AsteriskAuthError) as raised:
            link.command("core show version", DEADLINE)
        seen += [repr(link), str(raised.value)]
    seen += [record.getMessage() for record in caplog.records]
    assert any("reconnecting" in text for text in seen)
    assert not [text for text in seen if secret in text]


def test_open_link_follows_asterisk_control(stand_in: StandInAsterisk) -> None:
    ami_config = AmiConfig(host=stand_in.host, port=stand_in.ami_port)
    config = AsteriskConfig(
        control="ami", ami=ami_config, console_socket=str(stand_in.console_path)
    )
    with contextlib.closing(open_link(config, DEFAULT_SECRET)) as link:
        assert isinstance(link, AmiLink)
        assert link.version() == "22.10.1"
    console = AsteriskConfig(control="console", console_socket=str(stand_in.console_path))
    with contextlib.closing(open_link(console, None)) as link:
        assert isinstance(link, ConsoleLink)
        assert link.version() == "22.10.1"
    with pytest.raises(AsteriskError, match=r"set asterisk\.ami\.secret_file"):
        open_link(config, None)
    with pytest.raises(AsteriskError, match=r'asterisk\.control is "none"'):
        open_link(AsteriskConfig(control="none"), DEFAULT_SECRET)
