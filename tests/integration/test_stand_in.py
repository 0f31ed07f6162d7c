"""The stand-in Asterisk against what a real one does: recorded Asterisk 22.10.1 sessions replayed
byte for byte, replies derived from Asterisk's source, the console protocol, config loading and
reload rules, restarts, and the faults ipwatch must survive."""

from __future__ import annotations

import hashlib
import os
import socket
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from tests.peers.stand_in import (  # noqa: F401
    RECORDED_PJSIP_CONF,
    AmiUser,
    Channel,
    StandInAsterisk,
    StandInFactory,
    TransportState,
    stand_in_factory_fixture,
    stand_in_fixture,
)
from tests.support import wait_until

pytestmark = pytest.mark.integration

DATA = Path(__file__).resolve().parents[1] / "data" / "asterisk"
RECORDED = DATA / "asterisk22"
DERIVED = DATA / "derived"
STARTED = datetime(2026, 11, 23, 8, 51, 58)
RELOADED = datetime(2026, 11, 23, 8, 52, 17)
NEW_ADDRESS = RECORDED_PJSIP_CONF.replace("198.51.100.5", "203.0.113.77")
DEADLINE = 5.0


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


Message = list[tuple[str, str]]


class Ami:
    """A small AMI client: messages end at a blank line; every read has a deadline."""

    def __init__(self, server: StandInAsterisk, timeout: float = DEADLINE) -> None:
        self.sock = socket.create_connection((server.host, server.ami_port), timeout=timeout)
        self.buffer = b""
        self.banner = self.line()

    def __enter__(self) -> Ami:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, text: str) -> None:
        self.sock.sendall(text.encode())

    def action(self, name: str, action_id: str, **headers: str) -> None:
        lines = [f"Action: {name}", f"ActionID: {action_id}"]
        lines += [f"{key}: {value}" for key, value in headers.items()]
        self.send("\r\n".join(lines) + "\r\n\r\n")

    def line(self) -> str:
        while b"\n" not in self.buffer:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError(self.buffer)
            self.buffer += data
        raw, _, self.buffer = self.buffer.partition(b"\n")
        return raw.removesuffix(b"\r").decode()

    def message(self) -> Message:
        fields: Message = []
        while line := self.line():
            key, _, value = line.partition(": ")
            fields.append((key, value))
        return fields

    def response(self, action_id: str) -> Message:
        """The response with this ActionID; events and other responses before it are skipped."""
        while True:
            message = self.message()
            if dict(message).get("ActionID") == action_id and "Response" in dict(message):
                return message

    def until_closed(self) -> bytes:
        data, self.buffer = self.buffer, b""
        while chunk := self.sock.recv(65536):
            data += chunk
        return data

    def raw(self, size: int) -> bytes:
        while len(self.buffer) < size:
            data = self.sock.recv(65536)
            if not data:
                break
            self.buffer += data
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def login(
        self, user: str = "ipwatch", secret: str = "ipwatch-secret", events: str = "off"
    ) -> None:
        self.action("Login", "login", Username=user, Secret=secret, Events=events)
        assert dict(self.response("login"))["Response"] == "Success"

    def command(self, command: str, action_id: str = "cmd") -> tuple[str, list[str]]:
        self.action("Command", action_id, Command=command)
        message = self.response(action_id)
        return dict(message)["Response"], [value for key, value in message if key == "Output"]


def rx(path: Path, command: str, timeout: float = DEADLINE) -> tuple[bytes, bytes]:
    """What `asterisk -rx` does: read the banner, send `cli quit after <command>\\0`, read all."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        banner = sock.recv(512)
        sock.sendall(b"cli quit after " + command.encode() + b"\0")
        output = b""
        while chunk := sock.recv(65536):
            output += chunk
        return banner, output


def cli(server: StandInAsterisk, command: str) -> str:
    return rx(server.console_path, command)[1].decode()


def ami_session(server: StandInAsterisk, sent: bytes) -> bytes:
    with socket.create_connection((server.host, server.ami_port), timeout=DEADLINE) as sock:
        sock.sendall(sent)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received


def rewrite(path: Path, text: str) -> None:
    """Write `text` and make sure the mtime moves (Asterisk compares size and mtime in ns)."""
    before = path.stat().st_mtime_ns
    path.write_text(text)
    if path.stat().st_mtime_ns == before:
        os.utime(path, ns=(before + 1, before + 1))


def transport_value(
    server: StandInAsterisk, name: str, transport: str = "transport-udp-nat"
) -> str:
    rows = server.transport_rows(transport)
    assert rows is not None
    return dict(rows)[name]


@pytest.fixture
def recorded(stand_in_factory: StandInFactory) -> Iterator[tuple[StandInAsterisk, Clock]]:
    """The stand-in Asterisk set up as the recorded 22.10.1 was, on the recorded clock."""
    clock = Clock(STARTED)
    users = {"acceptance": AmiUser("acceptance-secret")}
    yield stand_in_factory(users=users, clock=clock, hostname="vm"), clock


# ---------------------------------------------------------------------------------------------
# The recording, byte for byte
# ---------------------------------------------------------------------------------------------


def test_the_recorded_ami_sessions_replay_byte_for_byte(
    recorded: tuple[StandInAsterisk, Clock],
) -> None:
    """Nothing is masked: the ActionIDs are the recorded client's own and echo as sent, and the
    Core*Date/Time fields come from a clock set to the recorded 08:51:58 start and 08:52:17
    reload. TCP segmentation is not compared, only the byte stream."""
    server, clock = recorded
    before = ami_session(server, (RECORDED / "ami_before_reload_sent.raw").read_bytes())
    assert before == (RECORDED / "ami_before_reload_recv.raw").read_bytes()

    rewrite(server.config_dir / "pjsip.conf", NEW_ADDRESS)
    clock.now = RELOADED
    assert cli(server, "module reload res_pjsip.so") == (
        "Module 'res_pjsip.so' reloaded successfully.\n"
    )

    after = ami_session(server, (RECORDED / "ami_after_reload_sent.raw").read_bytes())
    assert after == (RECORDED / "ami_after_reload_recv.raw").read_bytes()


@pytest.mark.parametrize(
    ("command", "recording"),
    [
        ("core show version", "cli_01_core_show_version.raw"),
        ("core show channels count", "cli_02_core_show_channels_count.raw"),
        ("pjsip show transport transport-udp-nat", "cli_03_pjsip_show_transport_before.raw"),
        ("pjsip show transports", "cli_04_pjsip_show_transports.raw"),
    ],
)
def test_console_outputs_match_the_recording(
    stand_in: StandInAsterisk, command: str, recording: str
) -> None:
    assert rx(stand_in.console_path, command)[1] == (RECORDED / recording).read_bytes()


def test_after_a_reload_the_transport_shows_the_new_address_as_recorded(
    stand_in: StandInAsterisk,
) -> None:
    rewrite(stand_in.config_dir / "pjsip.conf", NEW_ADDRESS)
    cli(stand_in, "module reload res_pjsip.so")
    shown = cli(stand_in, "pjsip show transport transport-udp-nat")
    recorded = (RECORDED / "cli_09_pjsip_show_transport_after_reload.txt").read_text()
    assert shown == recorded.split("\n", 1)[1].rsplit("[rc=0]", 1)[0]
    effective = stand_in.effective_transport("transport-udp-nat")
    assert effective is not None
    assert effective.external_signaling_address == "203.0.113.77"
    assert effective.external_media_address == "203.0.113.77"


def test_the_parameter_table_is_as_wide_as_its_widest_value(stand_in: StandInAsterisk) -> None:
    """nat_probe ran with local_net = 127.0.0.1: its separator is six characters longer."""
    config = RECORDED_PJSIP_CONF.replace("127.0.0.0/8", "127.0.0.1")
    rewrite(stand_in.config_dir / "pjsip.conf", config)
    cli(stand_in, "module reload res_pjsip.so")
    shown = cli(stand_in, "pjsip show transport transport-udp-nat")
    recorded = (RECORDED / "nat_probe" / "cli_1_show_transport.txt").read_text()
    assert shown == recorded.split("\n", 1)[1].rsplit("[rc=0]", 1)[0]


def test_a_missing_transport_is_reported_and_the_command_succeeds(
    stand_in: StandInAsterisk,
) -> None:
    assert cli(stand_in, "pjsip show transport does-not-exist") == (
        "Unable to find object does-not-exist.\n\n"
    )
    with Ami(stand_in) as ami:
        ami.login()
        response, output = ami.command("pjsip show transport does-not-exist")
    assert (response, output) == ("Success", ["Unable to find object does-not-exist.", ""])


def test_send_register_all_is_queued(stand_in: StandInAsterisk) -> None:
    recorded = (RECORDED / "cli_06_pjsip_send_register_all.txt").read_text().split("\n")[1]
    assert cli(stand_in, "pjsip send register *all") == recorded + "\n"
    assert stand_in.reregistrations == [{"transport-udp-nat": "198.51.100.5"}]


# ---------------------------------------------------------------------------------------------
# AMI
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "banner"),
    [
        ("16.10.0", "5.0.5"),
        ("18.20.0", "7.0.3"),
        ("20.11.0", "9.0.0"),
        ("22.10.1", "11.0.0"),
    ],
)
def test_the_banner_names_the_ami_version(
    stand_in_factory: StandInFactory, version: str, banner: str
) -> None:
    server = stand_in_factory(version=version)
    with Ami(server) as ami:
        assert ami.banner == f"Asterisk Call Manager/{banner}"
        ami.login()
        ami.action("CoreSettings", "settings")
        assert dict(ami.response("settings"))["AsteriskVersion"] == version


def test_command_output_before_14_is_raw_text_up_to_end_command(
    stand_in_factory: StandInFactory,
) -> None:
    server = stand_in_factory(version="13.38.3")
    with Ami(server) as ami:
        ami.login()
        ami.action("Command", "2", Command="core show version")
        expected = (DERIVED / "ami13_command_core_show_version.raw").read_bytes()
        assert ami.raw(len(expected)) == expected
        ami.action("Command", "7", Command="foo bar")
        expected = (DERIVED / "ami13_command_unknown.raw").read_bytes()
        assert ami.raw(len(expected)) == expected


@pytest.mark.parametrize(
    ("command", "action_id", "reference"),
    [
        ("foo bar", "7", "ami22_command_unknown.raw"),
        ("core abort shutdown", "8", "ami22_command_no_output.raw"),
    ],
)
def test_command_answers_as_asterisk_22_does(
    stand_in: StandInAsterisk, command: str, action_id: str, reference: str
) -> None:
    expected = (DERIVED / reference).read_bytes()
    with Ami(stand_in) as ami:
        ami.login()
        ami.action("Command", action_id, Command=command)
        assert ami.raw(len(expected)) == expected


def test_login_with_events_sends_fully_booted_and_bare_lf_is_accepted(
    stand_in_factory: StandInFactory,
) -> None:
    server = stand_in_factory(clock=Clock(STARTED))
    expected = (DERIVED / "ami22_login_events_on.raw").read_bytes()
    with Ami(server) as ami:
        ami.send("Action: Login\nUsername: ipwatch\nSecret: ipwatch-secret\nActionID: 1\n\n")
        assert ami.raw(len(expected)) == expected


def test_a_failed_login_waits_answers_and_closes(stand_in_factory: StandInFactory) -> None:
    server = stand_in_factory(failed_login_delay=0.3)
    with Ami(server) as ami:
        started = time.monotonic()
        ami.send("Action: Login\r\nUsername: ipwatch\r\nSecret: wrong\r\nActionID: 1\r\n\r\n")
        answer = ami.until_closed()
        waited = time.monotonic() - started
    assert answer == (DERIVED / "ami22_login_failed.raw").read_bytes()
    assert 0.3 <= waited < 3.0
    assert "failed to authenticate as 'ipwatch'" in str(server.log[-1])


def test_a_refused_login_fails_even_with_the_right_secret(
    stand_in_factory: StandInFactory,
) -> None:
    server = stand_in_factory(failed_login_delay=0.0)
    server.faults.refuse_login = True
    with Ami(server) as ami:
        ami.action("Login", "1", Username="ipwatch", Secret="ipwatch-secret")
        assert ami.until_closed() == (DERIVED / "ami22_login_failed.raw").read_bytes()


def test_a_user_without_the_command_class_is_denied(stand_in_factory: StandInFactory) -> None:
    server = stand_in_factory(users={"monitor": AmiUser("pw", read="all", write="system")})
    with Ami(server) as ami:
        ami.login("monitor", "pw")
        ami.action("Command", "2", Command="core show version")
        expected = (DERIVED / "ami22_command_permission_denied.raw").read_bytes()
        assert ami.raw(len(expected)) == expected
        ami.action("CoreStatus", "3")
        assert dict(ami.response("3"))["Response"] == "Success"


def test_requests_asterisk_refuses(stand_in: StandInAsterisk) -> None:
    with Ami(stand_in) as ami:
        ami.action("CoreStatus", "early")
        assert dict(ami.response("early"))["Message"] == "Permission denied"
        ami.login()
        ami.send("ActionID: none\r\n\r\n")
        assert dict(ami.response("none"))["Message"] == "Missing action in request"
        ami.action("Originate2", "odd")
        assert dict(ami.response("odd"))["Message"] == (
            "Invalid/unknown command: Originate2. Use Action: ListCommands to show available "
            "commands."
        )
        ami.action("Command", "bl", Command="module load chan_sip.so")
        assert dict(ami.response("bl"))["Message"] == "Command blacklisted"
        ami.action("Ping", "ping")
        assert dict(ami.response("ping"))["Ping"] == "Pong"


def test_a_challenge_login_uses_the_md5_of_challenge_and_secret(
    stand_in: StandInAsterisk,
) -> None:
    with Ami(stand_in) as ami:
        ami.action("Challenge", "1", AuthType="MD5")
        challenge = dict(ami.response("1"))["Challenge"]
        key = hashlib.md5((challenge + "ipwatch-secret").encode()).hexdigest()
        ami.action("Login", "2", AuthType="MD5", Username="ipwatch", Key=key, Events="off")
        assert dict(ami.response("2"))["Message"] == "Authentication accepted"


def test_events_between_responses_are_told_apart_by_action_id(
    stand_in: StandInAsterisk,
) -> None:
    stand_in.chatter = [
        "Event: PeerStatus\r\nPrivilege: system,all\r\nPeerStatus: Reachable\r\n\r\n"
    ]
    with Ami(stand_in) as ami:
        ami.action("Login", "1", Username="ipwatch", Secret="ipwatch-secret")
        assert dict(ami.message())["Response"] == "Success"
        assert dict(ami.message())["Event"] == "FullyBooted"
        ami.action("CoreStatus", "2")
        assert dict(ami.message())["Event"] == "PeerStatus"
        assert dict(ami.message())["ActionID"] == "2"
        assert stand_in.inject_event("Event: Reload\r\nModule: manager") == 1


def test_events_off_keeps_events_away_unless_forced(stand_in: StandInAsterisk) -> None:
    with Ami(stand_in) as ami:
        ami.login()
        assert stand_in.inject_event("Event: Reload\r\nModule: manager") == 0
        assert stand_in.inject_event("Event: Reload\r\nModule: x", force=True) == 1
        assert dict(ami.message())["Module"] == "x"
        stand_in.chatter = ["Event: PeerStatus\r\nPeerStatus: Lagged\r\n\r\n"]
        ami.action("Ping", "quiet")
        assert dict(ami.message())["Ping"] == "Pong"
        stand_in.chatter_ignores_event_mask = True
        ami.action("Ping", "loud")
        assert dict(ami.message())["PeerStatus"] == "Lagged"


def test_replies_split_into_single_bytes_carry_the_same_stream(
    stand_in_factory: StandInFactory,
) -> None:
    clock = Clock(STARTED)
    users = {"acceptance": AmiUser("acceptance-secret")}
    server = stand_in_factory(users=users, clock=clock, hostname="vm", chunk_size=1)
    before = ami_session(server, (RECORDED / "ami_before_reload_sent.raw").read_bytes())
    assert before == (RECORDED / "ami_before_reload_recv.raw").read_bytes()


# ---------------------------------------------------------------------------------------------
# Calls and channels
# ---------------------------------------------------------------------------------------------


def test_channel_counts_use_the_singular_for_one(stand_in: StandInAsterisk) -> None:
    stand_in.set_calls(1)
    recorded = (RECORDED / "nat_probe" / "cli_1_channels_count_in_call.txt").read_text()
    assert (
        cli(stand_in, "core show channels count")
        == recorded.split("\n", 1)[1].rsplit("[rc=0]", 1)[0]
    )


@pytest.mark.parametrize("calls", [0, 1])
def test_channel_counts_with_maxcalls_show_the_capacity(
    stand_in_factory: StandInFactory, calls: int
) -> None:
    server = stand_in_factory(maxcalls=10)
    server.set_calls(calls)
    expected = (DERIVED / f"cli_channels_count_maxcalls_{calls}.raw").read_text()
    assert cli(server, "core show channels count") == expected


def test_core_status_counts_channels_and_core_show_channels_lists_them(
    stand_in: StandInAsterisk,
) -> None:
    stand_in.set_calls(1, channels=2)
    with Ami(stand_in) as ami:
        ami.login()
        ami.action("CoreStatus", "1")
        # manager.c fills CoreCurrentCalls with ast_active_channels(): channels, not calls.
        assert dict(ami.response("1"))["CoreCurrentCalls"] == "2"
        assert ami.command("core show channels count")[1][:2] == [
            "2 active channels",
            "1 active call",
        ]
    stand_in.set_calls(1)
    expected = (DERIVED / "ami22_coreshowchannels_one.raw").read_bytes()
    with Ami(stand_in) as ami:
        ami.login()
        ami.action("CoreShowChannels", "3")
        assert ami.raw(len(expected)) == expected


def test_core_show_channels_lists_each_channel(stand_in: StandInAsterisk) -> None:
    alice = Channel("PJSIP/alice-00000001", "1763880000.1", application="Dial", data="PJSIP/bob")
    stand_in.set_channels([alice], calls=1)
    assert cli(stand_in, "core show channels") == (
        "Channel              Location             State   Application(Data)             \n"
        "PJSIP/alice-00000001 100@from-internal:1  Up      Dial(PJSIP/bob)               \n"
        "1 active channel\n1 active call\n1 call processed\n"
    )
    assert cli(stand_in, "core show channels concise") == (
        "PJSIP/alice-00000001!from-internal!100!1!Up!Dial!PJSIP/bob!!!!3!0!!1763880000.1\n"
    )
    assert cli(stand_in, "core show channels verbose").splitlines()[1].split() == [
        "PJSIP/alice-00000001", "from-internal", "100", "1", "Up", "Dial", "PJSIP/bob",
        "00:00:00",
    ]  # fmt: skip
    assert cli(stand_in, "core show channels sideways").startswith(
        "Usage: core show channels [concise|verbose|count]\n"
    )


# ---------------------------------------------------------------------------------------------
# The console socket
# ---------------------------------------------------------------------------------------------


def test_the_console_greets_with_hostname_pid_and_version(
    stand_in_factory: StandInFactory,
) -> None:
    server = stand_in_factory(hostname="pbx", pid=4242)
    banner, output = rx(server.console_path, "core show version")
    assert banner == (DERIVED / "console_banner.raw").read_bytes()
    assert output.startswith(b"Asterisk 22.10.1 built by root @ vm")


def test_a_console_without_quit_after_runs_each_command_and_stays(
    stand_in: StandInAsterisk,
) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(DEADLINE)
        sock.connect(str(stand_in.console_path))
        sock.recv(512)
        sock.sendall(b"core show uptime seconds\0core show calls\0")
        output = b""
        while not output.endswith(b"calls processed\n"):
            output += sock.recv(65536)
    lines = output.decode().splitlines()
    assert lines[0].startswith("System uptime: ") and lines[1].startswith("Last reload: ")
    assert lines[2:] == ["0 active calls", "0 calls processed"]
    assert stand_in.commands("console") == ["core show uptime seconds", "core show calls"]


def test_quit_after_without_the_nul_runs_nothing(stand_in: StandInAsterisk) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(DEADLINE)
        sock.connect(str(stand_in.console_path))
        sock.recv(512)
        sock.sendall(b"cli quit after core show version")
        assert sock.recv(65536) == b""
    assert stand_in.commands() == []


def test_unknown_commands_get_asterisk_s_hint_on_both_channels(
    stand_in: StandInAsterisk,
) -> None:
    assert cli(stand_in, "sip show peers") == (
        "No such command 'sip show peers' (type 'core show help sip' for other possible commands)\n"
    )
    assert cli(stand_in, "pjsip show endpoints") == (
        "No such command 'pjsip show endpoints' (type 'core show help pjsip' for other "
        "possible commands)\n"
    )
    with Ami(stand_in) as ami:
        ami.login()
        assert ami.command("core show nothing")[0] == "Error"
    assert stand_in.commands() == [
        "sip show peers",
        "pjsip show endpoints",
        "core show nothing",
    ]


# ---------------------------------------------------------------------------------------------
# Config files and reloads
# ---------------------------------------------------------------------------------------------


def test_a_reload_applies_nothing_unless_a_file_changed_size_or_mtime(
    stand_in: StandInAsterisk,
) -> None:
    conf = stand_in.config_dir / "pjsip.conf"
    mtime = conf.stat().st_mtime_ns
    same_size = RECORDED_PJSIP_CONF.replace("198.51.100.5", "198.51.100.6")
    conf.write_text(same_size)
    os.utime(conf, ns=(mtime, mtime))
    cli(stand_in, "module reload res_pjsip.so")
    assert transport_value(stand_in, "external_media_address") == "198.51.100.5"

    os.utime(conf, ns=(mtime + 1, mtime + 1))
    cli(stand_in, "module reload res_pjsip")
    assert transport_value(stand_in, "external_media_address") == "198.51.100.6"


def test_includes_templates_and_comments_are_followed(
    stand_in_factory: StandInFactory,
) -> None:
    files = {
        "pjsip.conf": (
            "\ufeff;--- a banner, not a block comment\n"
            "[nat-template](!)\n"
            "external_media_address = 203.0.113.10 ; trailing comment\n"
            "external_signaling_address = 203.0.113.10\n"
            ";-- a block\n[hidden]\ntype = transport\nbind = 0.0.0.0:5099\n"
            ";-- nested --; still comment\n--;\n"
            '#include "pjsip.transports.conf"\n'
            "#tryinclude <pjsip.missing.conf>\n"
        ),
        "pjsip.transports.conf": (
            "[t-udp](nat-template)\ntype = transport\nbind = 0.0.0.0\npassword = a\\;b\n"
            "local_net = 192.168.1.7/24\nlocal_net = 10.0.0.0/255.0.0.0\n"
            "[t-udp](+)\nexternal_signaling_port => 5062\n"
        ),
    }
    server = stand_in_factory(files=files)
    assert server.transport_ids() == ["t-udp"]
    rows = server.transport_rows("t-udp")
    assert rows is not None
    shown = dict(rows)
    assert shown["bind"] == "0.0.0.0:5060"
    assert shown["password"] == "a;b"
    assert shown["external_media_address"] == "203.0.113.10"
    assert shown["external_signaling_port"] == "5062"
    assert [v for k, v in rows if k == "local_net"] == [
        "192.168.1.0/255.255.255.0",
        "10.0.0.0/255.0.0.0",
    ]

    rewrite(
        server.config_dir / "pjsip.transports.conf", files["pjsip.transports.conf"] + "tos = cs3\n"
    )
    cli(server, "module reload res_pjsip.so")
    assert transport_value(server, "tos", "t-udp") == "96"


def test_a_broken_include_keeps_the_running_transports(stand_in: StandInAsterisk) -> None:
    rewrite(stand_in.config_dir / "pjsip.conf", NEW_ADDRESS + '#include "gone.conf"\n')
    assert cli(stand_in, "module reload res_pjsip.so") == (
        "Module 'res_pjsip.so' reloaded successfully.\n"
    )
    assert transport_value(stand_in, "external_media_address") == "198.51.100.5"
    messages = [entry.message for entry in stand_in.log]
    assert "The file 'gone.conf' was listed as a #include but it does not exist." in messages
    assert "Contents of config file 'pjsip.conf' are invalid and cannot be parsed" in messages


def test_a_transport_with_a_bad_value_is_retained_and_the_reload_still_succeeds(
    stand_in: StandInAsterisk,
) -> None:
    rewrite(stand_in.config_dir / "pjsip.conf", NEW_ADDRESS + "external_signaling_port = 70000\n")
    assert cli(stand_in, "module reload res_pjsip.so") == (
        "Module 'res_pjsip.so' reloaded successfully.\n"
    )
    assert transport_value(stand_in, "external_media_address") == "198.51.100.5"
    assert [str(entry) for entry in stand_in.log] == [
        "ERROR: config_options.c: Error parsing external_signaling_port=70000 at line 9 of ",
        "ERROR: res_sorcery_config.c: Could not create an object of type 'transport' with id "
        "'transport-udp-nat' from configuration file 'pjsip.conf'",
        "NOTICE: res_sorcery_config.c: Retaining existing configuration for object of type "
        "'transport' with id 'transport-udp-nat'",
    ]


@pytest.mark.parametrize(
    ("line", "logged"),
    [
        (
            "tos = loud",
            [
                "ERROR: res_pjsip/config_transport.c: Error configuring transport "
                "'transport-udp-nat' - Could not interpret 'tos' value 'loud'",
                "ERROR: config_options.c: Error parsing tos=loud at line 9 of ",
            ],
        ),
        (
            "colour = blue",
            [
                "ERROR: config_options.c: Could not find option suitable for category "
                "'transport-udp-nat' named 'colour' at line 9 of "
            ],
        ),
    ],
)
def test_what_asterisk_logs_for_a_transport_it_rejects(
    stand_in: StandInAsterisk, line: str, logged: list[str]
) -> None:
    rewrite(stand_in.config_dir / "pjsip.conf", NEW_ADDRESS + line + "\n")
    cli(stand_in, "module reload res_pjsip.so")
    assert [str(entry) for entry in stand_in.log[: len(logged)]] == logged
    assert transport_value(stand_in, "external_media_address") == "198.51.100.5"


def test_a_rejected_reload_keeps_the_old_values(stand_in: StandInAsterisk) -> None:
    stand_in.faults.reject_reload = True
    rewrite(stand_in.config_dir / "pjsip.conf", NEW_ADDRESS)
    assert cli(stand_in, "module reload res_pjsip.so") == (
        "Module 'res_pjsip.so' reloaded successfully.\n"
    )
    assert transport_value(stand_in, "external_signaling_address") == "198.51.100.5"
    assert "could not be started: Address already in use" in stand_in.log[0].message


def test_duplicate_transports_make_the_whole_file_fail(stand_in: StandInAsterisk) -> None:
    rewrite(stand_in.config_dir / "pjsip.conf", NEW_ADDRESS + NEW_ADDRESS)
    cli(stand_in, "module reload res_pjsip.so")
    assert transport_value(stand_in, "external_media_address") == "198.51.100.5"
    assert "contains a duplicate object: 'transport-udp-nat'" in stand_in.log[-1].message


def test_an_unresolvable_external_name_is_shown_but_not_used(stand_in: StandInAsterisk) -> None:
    stand_in.hosts["pbx.example.test"] = "203.0.113.99"
    config = RECORDED_PJSIP_CONF.replace(
        "external_media_address = 198.51.100.5", "external_media_address = pbx.example.test"
    ).replace(
        "external_signaling_address = 198.51.100.5", "external_signaling_address = 1.2.3.4:5060"
    )
    rewrite(stand_in.config_dir / "pjsip.conf", config)
    cli(stand_in, "module reload res_pjsip.so")
    effective = stand_in.effective_transport("transport-udp-nat")
    assert effective is not None
    assert (effective.external_media_address, effective.external_signaling_address) == (
        "203.0.113.99",
        None,
    )
    assert transport_value(stand_in, "external_signaling_address") == "1.2.3.4:5060"


@pytest.mark.parametrize(
    ("version", "applies"),
    [("16.10.0", False), ("16.18.0", True), ("17.9.0", False), ("18.3.0", False), ("18.4.0", True)],
)
def test_reload_applies_external_addresses_only_on_16_18_18_4_and_later(
    stand_in_factory: StandInFactory, version: str, applies: bool
) -> None:
    server = stand_in_factory(version=version)
    rewrite(server.config_dir / "pjsip.conf", NEW_ADDRESS)
    cli(server, "module reload res_pjsip.so")
    # Sorcery holds the new object either way, so the display changes on every version ...
    assert transport_value(server, "external_signaling_address") == "203.0.113.77"
    effective = server.effective_transport("transport-udp-nat")
    assert effective is not None
    # ... but only newer versions put the new address into Via, Contact and SDP.
    assert effective.external_signaling_address == ("203.0.113.77" if applies else "198.51.100.5")


def test_allow_reload_yes_rebuilds_the_transport_on_old_versions_too(
    stand_in_factory: StandInFactory,
) -> None:
    server = stand_in_factory(version="16.10.0")
    config = NEW_ADDRESS.replace("allow_reload = no", "allow_reload = yes")
    rewrite(server.config_dir / "pjsip.conf", config.replace("5070", "5071"))
    cli(server, "module reload res_pjsip.so")
    assert server.effective_transport("transport-udp-nat") == TransportState(
        "udp", "127.0.0.1:5071", "203.0.113.77", 0, "203.0.113.77", ("127.0.0.0/255.0.0.0",)
    )


def test_the_reload_action_and_its_reload_time(stand_in_factory: StandInFactory) -> None:
    clock = Clock(STARTED)
    server = stand_in_factory(clock=clock)
    rewrite(server.config_dir / "pjsip.conf", NEW_ADDRESS)
    clock.now = RELOADED
    with Ami(server) as ami:
        ami.login()
        ami.action("Reload", "1", Module="res_pjsip.so")
        assert dict(ami.response("1"))["Message"] == "Module Reloaded"
        ami.action("Reload", "2", Module="res_nothing.so")
        assert dict(ami.response("2"))["Message"] == "No such module"
        ami.action("CoreStatus", "3")
        status = dict(ami.response("3"))
    assert (status["CoreStartupTime"], status["CoreReloadTime"]) == ("08:51:58", "08:52:17")
    assert transport_value(server, "external_media_address") == "203.0.113.77"


# ---------------------------------------------------------------------------------------------
# chan_sip
# ---------------------------------------------------------------------------------------------

SIP_CONF = "[general]\nexternaddr = 203.0.113.5\nlocalnet = 192.168.0.0/16\n"


def test_sip_show_settings_shows_externaddr_and_sip_reload_rereads_it(
    stand_in_factory: StandInFactory,
) -> None:
    server = stand_in_factory(version="20.11.0", files={"sip.conf": SIP_CONF})
    shown = cli(server, "sip show settings")
    assert "  SIP address remapping:  Enabled using externaddr\n" in shown
    assert "  Externaddr:             203.0.113.5:0\n" in shown
    assert "  Localnet:               192.168.0.0/255.255.0.0\n" in shown
    rewrite(
        server.config_dir / "sip.conf",
        SIP_CONF.replace("externaddr", "externip").replace(".5", ".7"),
    )
    assert cli(server, "sip reload") == ""
    assert server.sip_settings.externaddr == "203.0.113.7:0"


def test_asterisk_22_has_no_chan_sip(stand_in: StandInAsterisk) -> None:
    assert cli(stand_in, "sip reload").startswith("No such command 'sip reload'")
    assert cli(stand_in, "module reload chan_sip.so") == "No such module 'chan_sip.so'\n"


# ---------------------------------------------------------------------------------------------
# Restarts and not running
# ---------------------------------------------------------------------------------------------


def test_a_restart_drops_calls_and_connections_and_rereads_the_config(
    stand_in_factory: StandInFactory,
) -> None:
    clock = Clock(STARTED)
    server = stand_in_factory(version="16.10.0", clock=clock, restart_downtime=1.0)
    rewrite(server.config_dir / "pjsip.conf", NEW_ADDRESS)
    cli(server, "module reload res_pjsip.so")
    server.set_calls(2)
    clock.now = RELOADED
    with Ami(server) as watcher, Ami(server) as ami:
        watcher.login(events="system")
        ami.login()
        ami.action("Command", "restart", Command="core restart now")
        assert ami.until_closed() == b""
        assert dict(watcher.message())["Event"] == "FullyBooted"
        assert dict(watcher.message())["Event"] == "Shutdown"
        assert watcher.until_closed() == b""
    wait_until(lambda: not server.running, DEADLINE, "the restart to begin")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((server.host, server.ami_port), timeout=DEADLINE).close()
    assert not server.console_path.exists()
    wait_until(lambda: server.running, DEADLINE, "the stand-in Asterisk to come back")
    effective = server.effective_transport("transport-udp-nat")
    assert effective is not None and effective.external_signaling_address == "203.0.113.77"
    assert (server.active_calls, server.startup_time, server.restart_count) == (0, RELOADED, 1)


def test_a_graceful_restart_waits_for_the_last_call(stand_in_factory: StandInFactory) -> None:
    server = stand_in_factory(restart_downtime=0.1)
    server.set_calls(1)
    with Ami(server) as first, Ami(server) as second:
        first.login()
        second.login()
        first.action("Command", "graceful", Command="core restart gracefully")
        wait_until(
            lambda: server.commands() == ["core restart gracefully"], DEADLINE, "the command"
        )
        wait_until(
            lambda: cli(server, "core show version").startswith("Command"), DEADLINE, "shutdown"
        )
        second.action("CoreStatus", "busy")
        assert dict(second.response("busy"))["Message"] == "Asterisk is shutting down"
        server.set_calls(0)
        assert first.until_closed() == b""
    wait_until(lambda: server.restart_count == 1 and server.running, DEADLINE, "the restart")


def test_an_aborted_graceful_restart_answers_and_keeps_running(
    stand_in: StandInAsterisk,
) -> None:
    stand_in.set_calls(1)
    with Ami(stand_in) as ami:
        ami.login()
        ami.action("Command", "graceful", Command="core restart gracefully")
        wait_until(
            lambda: "cannot be run during shutdown" in cli(stand_in, "core show version"),
            DEADLINE,
            "the shutdown to be pending",
        )
        assert cli(stand_in, "core abort shutdown") == ""
        assert dict(ami.response("graceful"))["Response"] == "Success"
    assert stand_in.running and stand_in.restart_count == 0


def test_a_server_that_is_not_running_refuses_both_sockets(
    stand_in_factory: StandInFactory,
) -> None:
    server = stand_in_factory(running=False)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((server.host, server.ami_port), timeout=DEADLINE).close()
    with pytest.raises(FileNotFoundError):
        rx(server.console_path, "core show version")
    server.boot()
    assert cli(server, "core show version").startswith("Asterisk 22.10.1 ")
    assert server.boot_count == 1


def test_core_stop_now_ends_the_console_silently(stand_in: StandInAsterisk) -> None:
    recorded = (RECORDED / "cli_12_core_stop_now.txt").read_text()
    assert recorded.split("\n")[1] == "[rc=0]"
    assert cli(stand_in, "core stop now") == ""
    wait_until(lambda: not stand_in.running, DEADLINE, "Asterisk to stop")
    assert stand_in.restart_count == 0


# ---------------------------------------------------------------------------------------------
# Faults
# ---------------------------------------------------------------------------------------------


def test_a_hung_command_never_answers_but_others_are_served(stand_in: StandInAsterisk) -> None:
    stand_in.faults.hang_commands = ("module reload",)
    with Ami(stand_in, timeout=0.3) as hung, Ami(stand_in) as other:
        hung.login()
        hung.action("Command", "1", Command="module reload res_pjsip.so")
        with pytest.raises(TimeoutError):
            hung.message()
        other.login()
        assert other.command("core show version")[0] == "Success"
        with pytest.raises(TimeoutError):
            rx(stand_in.console_path, "module reload", timeout=0.3)
    stand_in.release_hung()


def test_a_dropped_command_ends_mid_answer(stand_in: StandInAsterisk) -> None:
    stand_in.faults.drop_commands = ("pjsip show transport",)
    with Ami(stand_in) as ami:
        ami.login()
        ami.action("Command", "1", Command="pjsip show transport transport-udp-nat")
        assert ami.until_closed() == (
            b"Response: Success\r\nActionID: 1\r\nMessage: Command output follows\r\nOutput: \r\n"
        )
    assert rx(stand_in.console_path, "pjsip show transport transport-udp-nat")[1] == b"\n"


def test_a_dropped_action_ends_after_its_first_line(stand_in: StandInAsterisk) -> None:
    stand_in.faults.drop_actions = ("CoreStatus",)
    with Ami(stand_in) as ami:
        ami.login()
        ami.action("CoreStatus", "1")
        assert ami.until_closed() == b"Response: Success\r\n"


def test_everything_received_is_logged(stand_in: StandInAsterisk) -> None:
    with Ami(stand_in) as ami:
        ami.login()
        ami.command("core show channels count")
        ami.action("Logoff", "bye")
        assert dict(ami.response("bye"))["Response"] == "Goodbye"
    cli(stand_in, "pjsip show transports")
    assert stand_in.actions() == ["Login", "Command", "Logoff"]
    assert stand_in.commands() == ["core show channels count", "pjsip show transports"]
    assert ("Secret", "ipwatch-secret") in stand_in.received[0].headers


def test_stop_ends_promptly_with_clients_still_connected(
    stand_in_factory: StandInFactory,
) -> None:
    server = stand_in_factory()
    server.faults.hang_commands = ("core show version",)
    with Ami(server) as ami:
        ami.login()
        ami.action("Command", "1", Command="core show version")
        wait_until(lambda: server.commands() == ["core show version"], DEADLINE, "the command")
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 2.0
        assert ami.until_closed() == b""
    assert not server.console_path.exists()


def test_the_clock_drives_the_uptime_and_the_settings(
    stand_in_factory: StandInFactory,
) -> None:
    clock = Clock(STARTED)
    server = stand_in_factory(clock=clock, maxcalls=50)
    clock.now = STARTED + timedelta(hours=1, minutes=2, seconds=3)
    settings = cli(server, "core show settings").splitlines()
    assert "  Maximum calls:               50 (Current 0)" in settings
    assert "  Startup time:                08:51:58" in settings
    assert cli(server, "core show uptime") == (
        "System uptime: 1 hour, 2 minutes, 3 seconds \nLast reload: 1 hour, 2 minutes, 3 seconds \n"
    )
