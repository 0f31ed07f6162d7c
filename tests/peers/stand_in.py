"""A stand-in Asterisk: the real AMI and console (`asterisk -rx`) wire protocols over real sockets.

The tests run a real Asterisk (tests/peers/real_asterisk.py) wherever one can show what matters.
This stand-in is for what a real Asterisk built here cannot show: versions before 16.18 / 18.4
that need a restart, a hung command, a dropped connection, a rejected config, scripted call
counts and a clock under the test's control. Its replies are built from bytes recorded from a
real Asterisk 22.10.1 (tests/data/asterisk/asterisk22/) and from Asterisk's source:
main/manager.c (AMI), main/asterisk.c (console socket, restart), main/cli.c (CLI dispatch,
`core show channels`), main/loader.c (`module reload`), main/config.c (config syntax),
res/res_sorcery_config.c and res/res_pjsip/config_transport.c (what a reload keeps),
res/res_pjsip/pjsip_cli.c (`pjsip show`) and channels/chan_sip.c (`sip show settings`). Where
this module simplifies, the docstring of the piece says so.

What a test gets:
- AMI over TCP: `Login` (plain or MD5 challenge), `Logoff`, `Ping`, `Events`, `Command` (the
  `Output:` form of Asterisk >= 14, the `Response: Follows` ... `--END COMMAND--` form of <= 13),
  `CoreStatus`, `CoreSettings`, `CoreShowChannels`, `Reload`, with per-user permissions;
- the console socket: `hostname/pid/version\\n` on connect, NUL-terminated commands, and
  `cli quit after <command>\\0` (what `asterisk -rx` sends) runs the command and closes;
- one CLI behind both, with the commands ipwatch needs (see `_COMMANDS`);
- PJSIP transports loaded from the real pjsip.conf (includes, templates, inheritance) and reloaded
  only when a file changed size or mtime; what `pjsip show transport` displays and what SIP would
  put on the wire (`effective_transport`) are kept apart, because old Asterisk shows new
  `external_*` strings while still using the old addresses;
- chan_sip's [general] externaddr on versions that still ship chan_sip (<= 20);
- restarts that drop calls and connections, vanish for `restart_downtime` and come back;
- faults (`Faults`), an injectable clock, and a log of everything received.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import ipaddress
import os
import re
import secrets
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Literal, Protocol

import pytest

from tests.support import free_port

# main/manager.c AMI_VERSION per major release: 16/18/20/22 as LAB.md lists them, the others
# the last of their branch as far as we know.
AMI_VERSIONS = {
    13: "2.10.6",
    14: "3.2.0",
    15: "4.1.0",
    16: "5.0.5",
    17: "6.0.3",
    18: "7.0.3",
    19: "8.0.3",
    20: "9.0.0",
    21: "10.0.0",
    22: "11.0.0",
}
CONSOLE_BUFFER = 512  # netconsole's inbuf: a command longer than this is skipped
CLI_QUIT_AFTER = b"cli quit after "
DEFAULT_USER = "ipwatch"
DEFAULT_SECRET = "ipwatch-secret"

# The recorded 22.10.1 transport as a pjsip.conf: the stand-in Asterisk prints it byte for byte.
RECORDED_PJSIP_CONF = """\
[transport-udp-nat]
type = transport
protocol = udp
bind = 127.0.0.1:5070
external_media_address = 198.51.100.5
external_signaling_address = 198.51.100.5
local_net = 127.0.0.0/8
allow_reload = no
"""


# ---------------------------------------------------------------------------------------------
# Versions
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Version:
    major: int
    minor: int
    patch: int

    @classmethod
    def parse(cls, text: str) -> Version:
        match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
        if match is None or int(match[1]) not in AMI_VERSIONS:
            raise ValueError(f"unsupported Asterisk version {text!r}")
        return cls(int(match[1]), int(match[2]), int(match[3] or 0))

    @property
    def ami(self) -> str:
        return AMI_VERSIONS[self.major]

    @property
    def legacy_command_output(self) -> bool:
        """Before 14.0 the Command action answered `Response: Follows` with raw text."""
        return self.major <= 13

    @property
    def reload_applies_external(self) -> bool:
        """16.18, 18.4 and 19 made a reload apply external_* even with allow_reload=no."""
        return (
            (self.major == 16 and self.minor >= 18)
            or (self.major == 18 and self.minor >= 4)
            or self.major >= 19
        )

    @property
    def has_chan_sip(self) -> bool:
        """chan_sip was removed in Asterisk 21."""
        return self.major <= 20


# ---------------------------------------------------------------------------------------------
# Asterisk's config syntax (main/config.c), our own reader
# ---------------------------------------------------------------------------------------------

FileStamp = tuple[int, int]  # size, mtime in nanoseconds: what config.c compares on a reload


class ConfigInvalid(Exception):
    """config.c returned CONFIG_STATUS_FILEINVALID; the message is the line it logged."""


@dataclass
class Variable:
    name: str
    value: str
    file: str  # "" for the top file, as ast_variable_new is told
    line: int


@dataclass
class Category:
    name: str
    template: bool = False
    variables: list[Variable] = field(default_factory=list)

    def values(self, name: str) -> list[str]:
        return [v.value for v in self.variables if v.name == name]


def stamp(path: Path) -> FileStamp | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_size, info.st_mtime_ns


def unchanged(stamps: Mapping[str, FileStamp]) -> bool:
    """config.c's CONFIG_FLAG_FILEUNCHANGED test over a file and every include it read."""
    return bool(stamps) and all(stamp(Path(p)) == s for p, s in stamps.items())


class ConfigReader:
    """Reads a config file and its #includes the way main/config.c does: `;` comments unless
    `\\;`, nested `;-- --;` blocks (but not `;---`), `[name](!)` templates, `(t1,t2)` inheritance,
    `(+)` appending, `=`/`=>`/`+=`, #include/#tryinclude relative to the config dir with globs.
    Every file read is stamped even when parsing fails, as config.c records it before parsing."""

    def __init__(self, config_dir: Path, warn: Callable[[str], None]) -> None:
        self.config_dir = config_dir
        self.warn = warn
        self.categories: list[Category] = []
        self.stamps: dict[str, FileStamp] = {}
        self._current: Category | None = None
        self._top = ""

    def read(self, filename: str) -> list[Category]:
        """Raise FileNotFoundError when the file is missing, ConfigInvalid on a parse error."""
        path = self.config_dir / filename
        if not path.is_file():
            raise FileNotFoundError(path)
        self._top = str(path)
        self._read_file(path)
        return self.categories

    def _read_file(self, path: Path) -> None:
        found = stamp(path)
        if found is not None:
            self.stamps[str(path)] = found
        text = path.read_bytes().decode("utf-8", errors="replace")
        text = text.removeprefix("\ufeff")
        depth = 0
        opened = 0
        for number, raw in enumerate(text.split("\n"), start=1):
            before = depth
            line, depth = strip_comments(raw, depth)
            if before == 0 and depth > 0:
                opened = number
            line = line.strip()
            if line:
                self._line(line, path, number)
        if depth:
            self.warn(f"Unterminated comment detected beginning on line {opened}")

    def _line(self, line: str, path: Path, number: int) -> None:
        if line.startswith("["):
            self._category(line, path, number)
        elif line.startswith("#"):
            self._directive(line, path, number)
        else:
            self._variable(line, path, number)

    def _category(self, line: str, path: Path, number: int) -> None:
        close = line.find("]")
        if close < 0:
            raise ConfigInvalid(f"parse error: no closing ']', line {number} of {path}")
        name, rest = line[1:close], line[close + 1 :]
        new = Category(name)
        current = new
        appended = False
        if rest.startswith("("):
            end = rest.find(")")
            if end < 0:
                raise ConfigInvalid(f"parse error: no closing ')', line {number} of {path}")
            for option in rest[1:end].split(","):
                if option == "!":
                    current.template = True
                elif option.startswith("+"):
                    current = self._append_to(name, new, path, number)
                    appended = True
                else:
                    current.variables.extend(self._inherit(option, path, number))
        if not appended:
            self.categories.append(new)
        self._current = current

    def _append_to(self, name: str, new: Category, path: Path, number: int) -> Category:
        existing = self._find(name)
        if existing is None:
            raise ConfigInvalid(
                f"Category addition requested, but category '{name}' does not exist, "
                f"line {number} of {path}"
            )
        existing.template |= new.template
        existing.variables.extend(new.variables)
        return existing

    def _inherit(self, base_name: str, path: Path, number: int) -> list[Variable]:
        base = self._find(base_name)
        if base is None:
            raise ConfigInvalid(
                f"Inheritance requested, but category '{base_name}' does not exist, "
                f"line {number} of {path}"
            )
        return [replace(v) for v in base.variables]

    def _find(self, name: str) -> Category | None:
        return next((c for c in self.categories if c.name == name), None)

    def _directive(self, line: str, path: Path, number: int) -> None:
        match = re.match(r"#(\S*)\s*(.*)", line)
        assert match is not None
        word, argument = match[1], match[2]
        kind = word.lower()
        if kind in ("include", "tryinclude"):
            if not argument:
                self.warn(f"Directive '#{word}' needs an argument ({path}) at line {number}")
                return
            self._include(dequote(argument), kind == "tryinclude")
        elif kind in ("exec", "tryexec"):
            self.warn(
                "Cannot perform #exec unless execincludes option is enabled in asterisk.conf "
                "(options section)!"
            )
        else:
            self.warn(f"Unknown directive '#{word}' at line {number} of {path}")

    def _include(self, argument: str, optional: bool) -> None:
        pattern = argument if argument.startswith("/") else str(self.config_dir / argument)
        names = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        files = [Path(n) for n in names if Path(n).is_file()]
        if not files and not optional:
            raise ConfigInvalid(
                f"The file '{argument}' was listed as a #include but it does not exist."
            )
        for included in files:
            self._read_file(included)

    def _variable(self, line: str, path: Path, number: int) -> None:
        if self._current is None:
            raise ConfigInvalid(f"parse error: No category context for line {number} of {path}")
        where = "" if str(path) == self._top else str(path)
        equals = line.find("=")
        if equals < 0:
            self.warn(f"No '=' (equal sign) in line {number} of {path}")
            return
        if equals > 0 and line[equals - 1] == "+":
            self._append_value(line[: equals - 1].strip(), line[equals + 1 :], where, number)
            return
        name, value = line[:equals].strip(), line[equals + 1 :]
        value = value.removeprefix(">").strip()
        if not name:
            self.warn(f"No variable name in line {number} of {path}")
            return
        self._current.variables.append(Variable(name, value, where, number))

    def _append_value(self, name: str, tail: str, where: str, number: int) -> None:
        assert self._current is not None
        last = next((v for v in reversed(self._current.variables) if v.name == name), None)
        if last is None:
            self._current.variables.append(Variable(name, tail.strip(), where, number))
        else:
            last.value = (last.value + tail).strip()


def strip_comments(line: str, depth: int) -> tuple[str, int]:
    """Drop `;` comments from one line, tracking `;--` ... `--;` blocks across lines."""
    kept: list[str] = []
    i = 0
    while i < len(line):
        opens = line.startswith(";--", i) and not line.startswith(";---", i)
        if depth:
            if opens:
                depth, i = depth + 1, i + 3
            elif line.startswith("--;", i):
                depth, i = depth - 1, i + 3
            else:
                i += 1
        elif line.startswith("\\;", i):
            kept.append(";")
            i += 2
        elif opens:
            depth, i = 1, i + 3
        elif line[i] == ";":
            break
        else:
            kept.append(line[i])
            i += 1
    return "".join(kept), depth


def dequote(text: str) -> str:
    for left, right in (('"', '"'), ("<", ">")):
        if len(text) >= 2 and text[0] == left and text[-1] == right:
            return text[1:-1]
    return text


# ---------------------------------------------------------------------------------------------
# res_pjsip transports
# ---------------------------------------------------------------------------------------------

# Field -> default as `pjsip show transport` prints it (22.10.1 recording); "type" is OPT_NOOP_T
# and never printed, "local_net" is a list printed one row per entry. Every version gets this
# 22.10.1 set of fields (older ones had fewer, e.g. no tcp_keepalive_*).
TRANSPORT_DEFAULTS = {
    "allow_reload": "false",
    "allow_wildcard_certs": "No",
    "async_operations": "1",
    "bind": "",
    "ca_list_file": "",
    "ca_list_path": "",
    "cert_file": "",
    "cipher": "",
    "cos": "0",
    "domain": "",
    "external_media_address": "",
    "external_signaling_address": "",
    "external_signaling_port": "0",
    "method": "unspecified",
    "password": "",
    "priv_key_file": "",
    "protocol": "udp",
    "require_client_cert": "No",
    "symmetric_transport": "false",
    "tcp_keepalive_enable": "false",
    "tcp_keepalive_idle_time": "30",
    "tcp_keepalive_interval_time": "1",
    "tcp_keepalive_probe_count": "5",
    "tos": "0",
    "verify_client": "No",
    "verify_server": "No",
    "websocket_write_timeout": "100",
}
PROTOCOLS = ("udp", "tcp", "tls", "ws", "wss", "flow")
TLS_METHODS = ("tlsv1", "tlsv1_1", "tlsv1_2", "tlsv1_3", "sslv2", "sslv3", "sslv23")
DSCP = {f"cs{n}": n * 8 for n in range(8)} | {
    "af11": 0x0A, "af12": 0x0C, "af13": 0x0E, "af21": 0x12, "af22": 0x14, "af23": 0x16,
    "af31": 0x1A, "af32": 0x1C, "af33": 0x1E, "af41": 0x22, "af42": 0x24, "af43": 0x26,
    "ef": 0x2E,
}  # fmt: skip
TRUE_WORDS = ("yes", "true", "y", "t", "1", "on")
FALSE_WORDS = ("no", "false", "n", "f", "0", "off")
HEADER_FILLER = "." * 20
TRANSPORT_HEADER = (
    f"Transport:  <TransportId........>  <Type>  <cos>  <tos>  <BindAddress{HEADER_FILLER}>\n"
)
SEPARATOR = "=" * 90 + "\n\n"


TRANSPORT_C = "res_pjsip/config_transport.c"
OPTIONS_C = "config_options.c"


class ObjectError(Exception):
    """A transport that sorcery could not create: the (source file, line) Asterisk logged."""

    def __init__(self, *logged: tuple[str, str]) -> None:
        super().__init__(logged[-1][1])
        self.logged = logged


@dataclass(frozen=True)
class TransportObject:
    """A transport as sorcery holds it: what `pjsip show transport` prints besides `bind`."""

    id: str
    fields: tuple[tuple[str, str], ...]
    local_net: tuple[str, ...]
    bind: tuple[str, int] | None  # host, port (0 = not given)

    def get(self, name: str) -> str:
        return dict(self.fields)[name]

    @property
    def allow_reload(self) -> bool:
        return self.get("allow_reload") == "true"


@dataclass(frozen=True)
class TransportState:
    """What SIP uses: the bound socket and the resolved external addresses (None = not set or
    not resolvable, as ast_dnsmgr_lookup leaves it)."""

    protocol: str
    bind: str
    external_signaling_address: str | None
    external_signaling_port: int
    external_media_address: str | None
    local_net: tuple[str, ...]


def is_true(text: str) -> bool:
    return text.strip().lower() in TRUE_WORDS


def is_false(text: str) -> bool:
    return text.strip().lower() in FALSE_WORDS


def format_host(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_bind(text: str) -> tuple[str, int]:
    """pj_sockaddr_parse: an IP literal with an optional port (IPv6 bracketed); no names."""
    bracketed = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?", text)
    if bracketed:
        host, port = bracketed[1], bracketed[2] or "0"
    elif text.count(":") > 1:
        host, port = text, "0"
    else:
        host, _, port = text.partition(":")
        port = port or "0"
    address = ipaddress.ip_address(host)
    if not port.isdigit() or int(port) > 65535:
        raise ValueError(text)
    return str(address), int(port)


def parse_local_net(text: str) -> str:
    """acl.c ast_append_ha with sense "d": `addr[/bits|/mask]`, `!` flips the sense; printed as
    localnet_to_vl does: the masked network, `/`, the mask as an address."""
    sense = ""
    text = text.strip()
    if text.startswith("!"):
        sense, text = "!", text[1:].strip()
    host, _, mask = text.partition("/")
    address = ipaddress.ip_address(host.strip())
    bits = address.max_prefixlen
    if mask.strip().isdigit():
        netmask = int(
            ipaddress.ip_network(f"0.0.0.0/{mask}" if bits == 32 else f"::/{mask}").netmask
        )
    elif mask:
        netmask = int(ipaddress.ip_address(mask.strip()))
    else:
        netmask = (1 << bits) - 1
    kind = type(address)
    return f"{sense}{kind(int(address) & netmask)}/{kind(netmask)}"


def parse_tos(text: str) -> int:
    """acl.c ast_str2tos: a number (%i: decimal, 0x hex, 0 octal) or a DSCP name."""
    try:
        return int(text.strip(), 0) & 0xFF
    except ValueError:
        if text.strip().lower() in DSCP:
            return DSCP[text.strip().lower()] << 2
        raise


def parse_uint(text: str, low: int = 0, high: int = 2**32 - 1) -> str:
    value = int(text.strip())
    if not low <= value <= high or not text.strip().lstrip("+").isdigit():
        raise ValueError(text)
    return str(value)


class HandlerError(ValueError):
    """An option handler failed and logged this line itself (before aco's "Error parsing")."""


NUMBERS = {
    "async_operations": (0, 2**32 - 1),
    "cos": (0, 2**32 - 1),
    "external_signaling_port": (0, 65535),
    "tcp_keepalive_idle_time": (0, 2**32 - 1),
    "tcp_keepalive_interval_time": (0, 2**32 - 1),
    "tcp_keepalive_probe_count": (0, 2**32 - 1),
    "websocket_write_timeout": (1, 2**31 - 1),
}


def transport_field(name: str, value: str, transport_id: str, warn: Callable[[str], None]) -> str:
    """Parse one option the way its sorcery handler does; ValueError when the handler fails."""
    if name in ("allow_reload", "symmetric_transport", "tcp_keepalive_enable"):
        return "true" if is_true(value) else "false"
    if name in ("verify_client", "verify_server", "require_client_cert", "allow_wildcard_certs"):
        return "Yes" if is_true(value) else "No"
    if name in NUMBERS:
        return parse_uint(value, *NUMBERS[name])
    if name == "protocol":
        if value.lower() not in PROTOCOLS:
            raise ValueError(value)
        return value.lower()
    if name == "method":
        return tls_method(value)
    if name == "tos":
        return str(tos_value(value, transport_id, warn))
    files = ("ca_list_file", "ca_list_path", "cert_file", "priv_key_file")
    if name in files and value and not os.access(value, os.R_OK):
        raise HandlerError(
            f"Transport: {transport_id}: {name} {value} is either missing or not readable"
        )
    return value


def tls_method(value: str) -> str:
    if value in ("", "default"):
        return "unspecified"
    if value.lower() not in TLS_METHODS:
        raise ValueError(value)
    return value.lower()


def tos_value(value: str, transport_id: str, warn: Callable[[str], None]) -> int:
    try:
        tos = parse_tos(value)
    except ValueError:
        raise HandlerError(
            f"Error configuring transport '{transport_id}' - Could not interpret 'tos' value "
            f"'{value}'"
        ) from None
    if tos % 4:
        tos = tos >> 2 << 2
        warn(
            f"transport '{transport_id}' - 'tos' value '{value}' uses bits that are discarded "
            f"when converted to DSCP. Using equivalent {tos} instead."
        )
    return tos


def build_transport(category: Category, warn: Callable[[str], None]) -> TransportObject:
    """ast_sorcery_objectset_apply over a type=transport category, in variable order."""
    fields = dict(TRANSPORT_DEFAULTS)
    local_net: list[str] = []
    bind: tuple[str, int] | None = None
    for var in category.variables:
        where = f"at line {var.line} of {var.file}"
        if var.name == "type":
            continue
        if var.name not in TRANSPORT_DEFAULTS and var.name != "local_net":
            raise ObjectError(
                (
                    OPTIONS_C,
                    f"Could not find option suitable for category '{category.name}' named "
                    f"'{var.name}' {where}",
                )
            )
        try:
            if var.name == "local_net":
                local_net = [*local_net, parse_local_net(var.value)] if var.value else []
            elif var.name == "bind":
                bind = parse_bind(var.value)
                fields["bind"] = var.value
            else:
                fields[var.name] = transport_field(var.name, var.value, category.name, warn)
        except ValueError as error:
            logged = [(TRANSPORT_C, str(error))] if isinstance(error, HandlerError) else []
            parsing = (OPTIONS_C, f"Error parsing {var.name}={var.value} {where}")
            raise ObjectError(*logged, parsing) from None
    if fields["async_operations"] != "1":
        warn(
            f"The async_operations setting on transport '{category.name}' has been set to "
            f"'{fields['async_operations']}'. The setting can no longer be set and is always 1."
        )
        fields["async_operations"] = "1"
    return TransportObject(category.name, tuple(fields.items()), tuple(local_net), bind)


# ---------------------------------------------------------------------------------------------
# chan_sip
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SipSettings:
    """chan_sip's [general] address remapping, as `sip show settings` prints it."""

    bindaddr: str = "0.0.0.0:5060"
    externaddr: str | None = None  # "host:port", port 0 when not given
    externhost: str | None = None
    externrefresh: int = 10
    localnet: tuple[str, ...] = ()

    @property
    def remapping(self) -> str:
        if not self.localnet:
            return "Disabled, no localnet list"
        if self.externaddr is None:
            return "Disabled"
        return "Enabled using externhost" if self.externhost else "Enabled using externaddr"


def parse_externaddr(text: str) -> str:
    """ast_parse_arg(PARSE_ADDR): an IP literal with an optional port, no names."""
    host, port = parse_bind(text)
    return format_host(host, port)


# ---------------------------------------------------------------------------------------------
# AMI permissions (manager.c perms[])
# ---------------------------------------------------------------------------------------------

PERMISSIONS = {
    name: 1 << bit
    for bit, name in enumerate(
        (
            "system",
            "call",
            "log",
            "verbose",
            "command",
            "agent",
            "user",
            "config",
            "dtmf",
            "reporting",
            "cdr",
            "dialplan",
            "originate",
            "agi",
            "cc",
            "aoc",
            "test",
            "security",
            "message",
        )
    )
}
ALL_PERMISSIONS = -1
ACTION_AUTHORITY = {
    "ping": 0,
    "events": 0,
    "logoff": 0,
    "login": 0,
    "challenge": 0,
    "command": PERMISSIONS["command"],
    "coresettings": PERMISSIONS["system"] | PERMISSIONS["reporting"],
    "corestatus": PERMISSIONS["system"] | PERMISSIONS["reporting"],
    "coreshowchannels": PERMISSIONS["system"] | PERMISSIONS["reporting"],
    "reload": PERMISSIONS["config"] | PERMISSIONS["system"],
}
COMMAND_BLACKLIST = (("module", "load"), ("module", "unload"), ("restart", "gracefully"))


def permission_mask(text: str) -> int:
    """manager.c get_perm: a comma-separated list of classes; "all" is every class."""
    mask = 0
    for word in text.split(","):
        word = word.strip().lower()
        mask |= ALL_PERMISSIONS if word == "all" else PERMISSIONS.get(word, 0)
    return mask


def event_mask(text: str) -> int | None:
    """manager.c strings_to_mask for the Events header; None leaves the session's mask alone."""
    if not text:
        return None
    if text.isdigit():
        return int(text)
    if is_false(text):
        return 0
    if is_true(text):
        return ALL_PERMISSIONS
    return permission_mask(text)


@dataclass(frozen=True)
class AmiUser:
    """A manager.conf user: secret and read/write class lists."""

    secret: str
    read: str = "all"
    write: str = "all"


# ---------------------------------------------------------------------------------------------
# Server state visible to tests
# ---------------------------------------------------------------------------------------------

CHANNEL_STATES = {
    "Down": 0,
    "Rsrvd": 1,
    "OffHook": 2,
    "Dialing": 3,
    "Ring": 4,
    "Ringing": 5,
    "Up": 6,
    "Busy": 7,
}


@dataclass(frozen=True)
class Channel:
    """One active channel, as `core show channels` and CoreShowChannels report it."""

    name: str
    uniqueid: str
    state: str = "Up"
    context: str = "from-internal"
    exten: str = "100"
    priority: int = 1
    application: str = "Dial"
    data: str = ""
    caller_id_num: str = ""
    caller_id_name: str = ""
    account_code: str = ""
    bridge_id: str = ""
    seconds: int = 0


@dataclass(frozen=True)
class BuildInfo:
    """What `core show version` says besides the version (the recording's values)."""

    user: str = "root"
    host: str = "vm"
    machine: str = "x86_64"
    os: str = "Linux"
    date: str = "2026-11-23 08:46:55 UTC"


@dataclass
class Faults:
    """Misbehaviour a test switches on. Commands match by leading words, case-insensitively
    ("module reload" matches "module reload res_pjsip.so"); actions by name."""

    refuse_login: bool = False  # every Login fails as a wrong secret does
    reject_reload: bool = False  # changed transports fail to apply; the old ones are retained
    hang_commands: tuple[str, ...] = ()  # never answered (until the server stops)
    drop_commands: tuple[str, ...] = ()  # the first line is sent, then the connection closes
    hang_actions: tuple[str, ...] = ()
    drop_actions: tuple[str, ...] = ()


@dataclass(frozen=True)
class Received:
    """One CLI command or AMI action as the server received it."""

    via: Literal["ami", "console"]
    text: str  # the CLI command, or the AMI action name
    headers: tuple[tuple[str, str], ...] = ()  # AMI only, in order, Secret included


@dataclass(frozen=True)
class LogEntry:
    """A line Asterisk would have written to its log (never to an `-rx` client or AMI)."""

    level: Literal["ERROR", "WARNING", "NOTICE"]
    source: str
    message: str

    def __str__(self) -> str:
        return f"{self.level}: {self.source}: {self.message}"


# ---------------------------------------------------------------------------------------------
# The CLI (main/cli.c)
# ---------------------------------------------------------------------------------------------


Output = Callable[[str], None]  # where a CLI command writes: the console socket or AMI's buffer


class Outcome:
    SUCCESS = "success"
    FAILURE = "failure"
    SHOWUSAGE = "showusage"
    VANISH = "vanish"  # the command took Asterisk down: nothing more is written


@dataclass(frozen=True)
class CliCommand:
    words: tuple[str, ...]
    handler: str  # StandInAsterisk method name
    at_shutdown: bool = False  # ast_cli_allow_at_shutdown
    needs: Literal["", "chan_sip"] = ""

    @property
    def usage(self) -> str:
        fixed = " ".join(w for w in self.words if not w.startswith("["))
        return USAGE.get(fixed, "Invalid usage, but no usage information available.\n")


_COMMANDS = (
    CliCommand(("core", "show", "version"), "_cli_version"),
    CliCommand(("core", "show", "channels", "[concise|verbose|count]"), "_cli_channels"),
    CliCommand(("core", "show", "calls", "[uptime]"), "_cli_calls"),
    CliCommand(("core", "show", "uptime", "[seconds]"), "_cli_uptime"),
    CliCommand(("core", "show", "settings"), "_cli_settings"),
    CliCommand(("core", "restart", "now"), "_cli_restart_now", at_shutdown=True),
    CliCommand(("core", "restart", "gracefully"), "_cli_restart_gracefully", at_shutdown=True),
    CliCommand(("core", "restart", "when", "convenient"), "_cli_restart_convenient", True),
    CliCommand(("core", "stop", "now"), "_cli_stop_now", at_shutdown=True),
    CliCommand(("core", "abort", "shutdown"), "_cli_abort", at_shutdown=True),
    CliCommand(("module", "reload"), "_cli_module_reload"),
    CliCommand(("pjsip", "show", "transport"), "_cli_pjsip_transport"),
    CliCommand(("pjsip", "show", "transports"), "_cli_pjsip_transports"),
    CliCommand(("pjsip", "send", "register"), "_cli_pjsip_register"),
    CliCommand(("sip", "reload"), "_cli_sip_reload", needs="chan_sip"),
    CliCommand(("sip", "show", "settings"), "_cli_sip_settings", needs="chan_sip"),
)
# What CLI_SHOWUSAGE prints, from each command's e->usage.
USAGE = {
    "core show version": "Usage: core show version\n       Shows Asterisk version information.\n",
    "core show channels": (
        "Usage: core show channels [concise|verbose|count]\n"
        "       Lists currently defined channels and some information about them. If\n"
        "       'concise' is specified, the format is abridged and in a more easily\n"
        "       machine parsable format. If 'verbose' is specified, the output includes\n"
        "       more and longer fields. If 'count' is specified only the channel and call\n"
        "       count is output.\n"
    ),
    "core show calls": (
        "Usage: core show calls [uptime] [seconds]\n"
        "       Lists number of currently active calls and total number of calls\n"
        "       processed through PBX since last restart. If 'uptime' is specified\n"
        "       the system uptime is also displayed. If 'seconds' is specified in\n"
        "       addition to 'uptime', the system uptime is displayed in seconds.\n"
    ),
    "core show uptime": (
        "Usage: core show uptime [seconds]\n"
        "       Shows Asterisk uptime information.\n"
        "       The seconds word returns the uptime in seconds only.\n"
    ),
    "core restart now": (
        "Usage: core restart now\n"
        "       Causes Asterisk to hangup all calls and exec() itself performing a cold\n"
        "       restart.\n"
    ),
    "core restart gracefully": (
        "Usage: core restart gracefully\n"
        "       Causes Asterisk to stop accepting new calls and exec() itself performing a cold\n"
        "       restart when all active calls have ended.\n"
    ),
    "core restart when convenient": (
        "Usage: core restart when convenient\n"
        "       Causes Asterisk to perform a cold restart when all active calls have ended.\n"
    ),
    "core stop now": (
        "Usage: core stop now\n"
        "       Shuts down a running Asterisk immediately, hanging up all active calls .\n"
    ),
    "core abort shutdown": (
        "Usage: core abort shutdown\n"
        "       Causes Asterisk to abort an executing shutdown or restart, and resume normal\n"
        "       call operations.\n"
    ),
    "pjsip send register": (
        "Usage: pjsip send register <registration> | *all \n"
        "       Unregisters the specified (or all) outbound registration(s) then starts "
        "registration(s) and schedules re-registrations.\n"
    ),
    "sip show settings": (
        "Usage: sip show settings\n"
        "       Provides detailed list of the configuration of the SIP channel.\n"
    ),
}

# `module reload` names that exist besides res_pjsip and chan_sip; they reload as no-ops.
OTHER_MODULES = ("res_pjsip_outbound_registration", "res_pjsip_session", "pbx_config", "manager")


def parse_args(line: str) -> list[str]:
    """cli.c parse_args: words split on blanks; "double quotes" group, a backslash escapes."""
    words: list[str] = []
    current: list[str] | None = None
    quoted = escaped = False
    for ch in line:
        if ch == '"' and not escaped:
            quoted = not quoted
            if quoted and current is None:
                current = []
                words.append("")
        elif ch in " \t" and not (quoted or escaped):
            current = None
        elif ch == "\\" and not escaped:
            escaped = True
        else:
            if current is None:
                current = []
                words.append("")
            words[-1] += ch
            escaped = False
    return words


def word_match(word: str, cli_word: str) -> bool:
    if cli_word[0] in "[{":
        return word.lower() in cli_word[1:-1].lower().split("|")
    return word.lower() == cli_word.lower()


def find_cli(commands: Sequence[CliCommand], args: Sequence[str], loose: bool) -> CliCommand | None:
    """cli.c find_cli: the longest entry all of whose words match; `loose` (match_type -1) also
    accepts a mismatch on the last word of both, which is what find_best uses."""
    best: CliCommand | None = None
    best_length = -1
    for entry in commands:
        n = 0
        while n < len(args) and n < len(entry.words) and word_match(args[n], entry.words[n]):
            n += 1
        rest = entry.words[n:]
        if not rest or (len(rest) == 1 and rest[0].startswith("[")):
            if n == len(args):
                return entry
            if loose:
                continue
        elif n == len(args) or not (loose and n == len(args) - 1 and len(rest) == 1):
            continue
        if n > best_length:
            best, best_length = entry, n
    return best


def find_best(commands: Sequence[CliCommand], args: Sequence[str]) -> str:
    """cli.c find_best: the words typed, up to and including the first that leads nowhere.
    find_cli skips entries longer than the words so far, so this is mostly the first word, as a
    real 22 answered `core show help pjsip` for an unknown `pjsip show transport X`."""
    taken: list[str] = []
    for word in args:
        taken.append(word)
        if find_cli(commands, taken, loose=True) is None:
            break
    return " ".join(taken)


def ess(n: int) -> str:
    return "" if n == 1 else "s"


def uptime_text(seconds: int, in_seconds: bool) -> str:
    """cli.c print_uptimestr, trailing blank included."""
    if in_seconds:
        return str(seconds)
    parts = []
    for unit, size in (("year", 31536000), ("week", 604800), ("day", 86400), ("hour", 3600)):
        if seconds > size:
            count, seconds = divmod(seconds, size)
            parts.append(f"{count} {unit}{ess(count)}{',' if seconds else ''} ")
    if seconds > 60:
        count, seconds = divmod(seconds, 60)
        parts.append(f"{count} minute{ess(count)}{',' if seconds else ''} ")
    if seconds > 0 or not parts:
        parts.append(f"{seconds} second{ess(seconds)} ")
    return "".join(parts)


# ---------------------------------------------------------------------------------------------
# Sessions
# ---------------------------------------------------------------------------------------------


class _Session:
    """One accepted connection; `kill` wakes its thread from recv and makes writes fail."""

    def __init__(self, sock: socket.socket, kind: Literal["ami", "console"]) -> None:
        self.sock = sock
        self.kind = kind
        self.write_lock = threading.Lock()
        self.gone = False
        self.authenticated = False
        self.readperm = 0
        self.writeperm = 0
        self.send_events = ALL_PERMISSIONS
        self.challenge = ""

    def send(self, data: bytes, chunk: int | None = None) -> None:
        with self.write_lock:
            step = chunk or len(data) or 1
            for start in range(0, len(data), step):
                self.sock.sendall(data[start : start + step])

    def kill(self) -> None:
        self.gone = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)


class _Disconnect(Exception):
    """The session ends (Logoff, failed login, dropped command, peer gone)."""


@dataclass
class _Message:
    """An AMI message: its raw header lines, looked up the way astman_get_header does."""

    lines: list[str]

    def get(self, name: str, skip_empty: bool = False) -> str:
        for line in self.lines:
            key, colon, value = line.partition(":")
            if colon and key.lower() == name.lower():
                value = value.lstrip(" \t")
                if value or not skip_empty:
                    return value
        return ""

    def pairs(self) -> tuple[tuple[str, str], ...]:
        return tuple(
            (key, value.lstrip(" \t"))
            for key, colon, value in (line.partition(":") for line in self.lines)
            if colon
        )


# ---------------------------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------------------------


class StandInAsterisk:
    """A stand-in Asterisk on a loopback TCP port (AMI) and a unix socket (console).

    Construct, then `start()`; `stop()` (or the context manager) ends every thread and socket.
    `halt()` makes Asterisk "not running" (nothing listens) and `boot()` brings it back with a
    full config load, as a restart does. Settable at any time: `version`, `maxcalls`, `faults`,
    `chatter`, `hosts`, `users`, `set_calls()`. Observable: `received`, `log`, `transport_rows()`,
    `effective_transport()`, `sip_settings`, `reregistrations`, counters.
    """

    def __init__(
        self,
        config_dir: Path,
        console_path: Path,
        *,
        version: str = "22.10.1",
        host: str = "127.0.0.1",
        ami_port: int | None = None,
        users: Mapping[str, AmiUser] | None = None,
        clock: Callable[[], datetime] = datetime.now,
        hostname: str = "",
        pid: int | None = None,
        build: BuildInfo = BuildInfo(),
        maxcalls: int = 0,
        restart_downtime: float = 0.5,
        failed_login_delay: float = 1.0,
        auth_timeout: float = 30.0,
        chunk_size: int | None = None,
    ) -> None:
        self.config_dir = config_dir
        self.console_path = console_path
        self.version = version
        self.host = host
        self.ami_port = ami_port or free_port(socket.SOCK_STREAM, host)
        self.users = dict(users or {DEFAULT_USER: AmiUser(DEFAULT_SECRET)})
        self.clock = clock
        self.hostname = hostname or socket.gethostname()
        self.pid = pid or os.getpid()
        self.build = build
        self.maxcalls = maxcalls
        self.restart_downtime = restart_downtime
        self.failed_login_delay = failed_login_delay
        self.auth_timeout = auth_timeout
        self.chunk_size = chunk_size
        self.faults = Faults()
        self.chatter: list[str] = []
        self.chatter_ignores_event_mask = False
        self.hosts: dict[str, str] = {}
        self.received: list[Received] = []
        self.log: list[LogEntry] = []
        self.reregistrations: list[dict[str, str | None]] = []
        self.boot_count = 0
        self.reload_count = 0
        self.restart_count = 0

        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._hang_released = False
        self._running = False
        self._shutdown_pending = False
        self._shutdown_waiting = False
        self._channels: list[Channel] = []
        self._calls = 0
        self._processed = 0
        self._startup = clock()
        self._reloaded = self._startup
        self._transports: dict[str, TransportObject] = {}
        self._states: dict[str, TransportState] = {}
        self._registrations: tuple[str, ...] = ()
        self._unreloadable_warned: set[str] = set()
        self._pjsip_stamps: dict[str, FileStamp] = {}
        self._sip = SipSettings()
        self._sip_stamps: dict[str, FileStamp] = {}
        self._sessions: set[_Session] = set()
        self._threads: list[threading.Thread] = []
        self._listeners: list[tuple[socket.socket, socket.socket, threading.Thread]] = []

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, running: bool = True) -> StandInAsterisk:
        """Start the test server; with running=False Asterisk is "not running" until `boot()`."""
        if running:
            self.boot()
        return self

    def stop(self) -> None:
        """End everything: listeners, sessions, hung commands, a restart in progress."""
        with self._cond:
            self._stopping.set()
            self._cond.notify_all()
        self.halt()
        for thread in list(self._threads):
            thread.join(timeout=10)
            if thread.is_alive():
                raise RuntimeError(f"stand-in Asterisk thread {thread.name} did not end")

    def __enter__(self) -> StandInAsterisk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._running

    def boot(self) -> None:
        """Asterisk starts: every config file is loaded in full, counters start from zero."""
        with self._cond:
            if self._running or self._stopping.is_set():
                return
            now = self.clock()
            self._startup = self._reloaded = now
            self._channels, self._calls, self._processed = [], 0, 0
            self._transports, self._states, self._unreloadable_warned = {}, {}, set()
            self._shutdown_pending = self._shutdown_waiting = False
            self._load_pjsip(full=True)
            self._load_sip(full=True)
            self.boot_count += 1
            self._open_listeners()
            self._running = True
            self._cond.notify_all()

    def halt(self) -> None:
        """Asterisk is gone: nothing listens, every connection is closed, calls are dropped."""
        with self._cond:
            self._running = False
            listeners, self._listeners = self._listeners, []
            sessions = list(self._sessions)
            self._channels, self._calls = [], 0
            self._cond.notify_all()
        for listener, wake, thread in listeners:
            wake.send(b"x")
            thread.join(timeout=10)
            listener.close()
            wake.close()
        if listeners:
            self.console_path.unlink(missing_ok=True)
        for session in sessions:
            session.kill()

    def release_hung(self) -> None:
        """Let every hung command end without an answer."""
        with self._cond:
            self._hang_released = True
            self._cond.notify_all()

    # -- what tests set and read ---------------------------------------------------------------

    @property
    def parsed_version(self) -> Version:
        return Version.parse(self.version)

    def set_calls(self, calls: int, channels: int | None = None) -> None:
        """Make `calls` calls active over `channels` channels (default one per call)."""
        count = calls if channels is None else channels
        with self._cond:
            self._processed += max(0, calls - self._calls)
            self._calls = calls
            self._channels = [
                Channel(f"PJSIP/peer{i}-{i:08x}", f"1763880000.{i}", seconds=i)
                for i in range(1, count + 1)
            ]
            self._cond.notify_all()

    def set_channels(self, channels: Sequence[Channel], calls: int) -> None:
        """Make exactly these channels active, carrying `calls` calls."""
        with self._cond:
            self._processed += max(0, calls - self._calls)
            self._calls = calls
            self._channels = list(channels)
            self._cond.notify_all()

    @property
    def active_calls(self) -> int:
        return self._calls

    @property
    def startup_time(self) -> datetime:
        return self._startup

    @property
    def reload_time(self) -> datetime:
        return self._reloaded

    @property
    def sip_settings(self) -> SipSettings:
        return self._sip

    def transport_ids(self) -> list[str]:
        with self._lock:
            return sorted(self._transports)

    def transport_rows(self, transport_id: str) -> list[tuple[str, str]] | None:
        """The ParameterName/ParameterValue rows `pjsip show transport` prints, or None."""
        with self._lock:
            if transport_id not in self._transports:
                return None
            return self._rows(self._transports[transport_id], self._states[transport_id])

    def effective_transport(self, transport_id: str) -> TransportState | None:
        """What SIP would use for this transport (Via/Contact/SDP), or None if it does not exist."""
        with self._lock:
            return self._states.get(transport_id)

    def commands(self, via: Literal["ami", "console"] | None = None) -> list[str]:
        """Every CLI command received (AMI `Command` actions and console commands), in order."""
        found = []
        for record in list(self.received):
            if via is not None and record.via != via:
                continue
            if record.via == "console":
                found.append(record.text)
            elif record.text.lower() == "command":
                found.append(next((v for k, v in record.headers if k.lower() == "command"), ""))
        return found

    def actions(self) -> list[str]:
        """The names of every AMI action received, in order."""
        return [r.text for r in list(self.received) if r.via == "ami"]

    def inject_event(self, event: str, category: str = "system", force: bool = False) -> int:
        """Send an event (`Event: ...\\r\\n...` without the final blank line) to every logged-in
        AMI session whose event mask takes `category`; `force` ignores the mask. Returns how many
        sessions got it."""
        payload = event.rstrip("\r\n").replace("\r\n", "\n").replace("\n", "\r\n") + "\r\n\r\n"
        sent = 0
        for session in list(self._sessions):
            if (
                session.kind == "ami"
                and session.authenticated
                and (force or session.send_events & permission_mask(category))
            ):
                try:
                    session.send(payload.encode(), self.chunk_size)
                    sent += 1
                except OSError:
                    continue
        return sent

    # -- res_pjsip ------------------------------------------------------------------------------

    def _note(
        self, level: Literal["ERROR", "WARNING", "NOTICE"], source: str, message: str
    ) -> None:
        self.log.append(LogEntry(level, source, message))

    def _load_pjsip(self, full: bool) -> None:
        """res_pjsip's sorcery load of pjsip.conf (res_sorcery_config.c): nothing happens when
        no file it read last time changed; a file that cannot be parsed keeps every object."""
        if not full and unchanged(self._pjsip_stamps):
            return
        reader = ConfigReader(self.config_dir, lambda m: self._note("WARNING", "config.c", m))
        try:
            categories = reader.read("pjsip.conf")
        except FileNotFoundError:
            self._pjsip_stamps = {}
            self._note("ERROR", "res_sorcery_config.c", "Unable to load config file 'pjsip.conf'")
            return
        except ConfigInvalid as error:
            self._pjsip_stamps = reader.stamps
            self._note("ERROR", "config.c", str(error))
            self._note(
                "ERROR",
                "res_sorcery_config.c",
                "Contents of config file 'pjsip.conf' are invalid and cannot be parsed",
            )
            return
        self._pjsip_stamps = reader.stamps
        live = [c for c in categories if not c.template]
        self._registrations = tuple(c.name for c in live if "registration" in c.values("type"))
        self._load_transports([c for c in live if "transport" in c.values("type")], full)

    def _load_transports(self, categories: list[Category], full: bool) -> None:
        names = [c.name for c in categories]
        duplicate = next((n for i, n in enumerate(names) if n in names[:i]), None)
        if duplicate is not None:
            self._note(
                "ERROR",
                "res_sorcery_config.c",
                "Config file 'pjsip.conf' could not be loaded; configuration contains a duplicate "
                f"object: '{duplicate}' of type 'transport'",
            )
            return
        objects: dict[str, TransportObject] = {}
        states: dict[str, TransportState] = {}
        for category in categories:
            try:
                obj = build_transport(category, lambda m: self._note("WARNING", TRANSPORT_C, m))
                states[obj.id] = self._apply_transport(obj, full)
                objects[obj.id] = obj
            except ObjectError as error:
                self._reject_transport(category.name, error, objects, states)
        self._transports, self._states = objects, states

    def _reject_transport(
        self,
        name: str,
        error: ObjectError,
        objects: dict[str, TransportObject],
        states: dict[str, TransportState],
    ) -> None:
        for source, message in error.logged:
            self._note("ERROR", source, message)
        self._note(
            "ERROR",
            "res_sorcery_config.c",
            f"Could not create an object of type 'transport' with id '{name}' from configuration "
            "file 'pjsip.conf'",
        )
        if name in self._transports:
            self._note(
                "NOTICE",
                "res_sorcery_config.c",
                f"Retaining existing configuration for object of type 'transport' with id '{name}'",
            )
            objects[name], states[name] = self._transports[name], self._states[name]

    def _apply_transport(self, obj: TransportObject, full: bool) -> TransportState:
        """config_transport.c transport_apply: a new transport starts on its bind; an unchanged
        one keeps its state; a changed one is rebuilt with allow_reload=yes, otherwise it keeps
        its socket and, since 16.18/18.4/19 only, takes the new external addresses and local_net
        (older versions keep the old state whole while sorcery shows the new strings)."""
        old_obj, old_state = self._transports.get(obj.id), self._states.get(obj.id)
        fresh = self._state_for(obj, required_bind=old_state is None or obj.allow_reload)
        if self.faults.reject_reload and not full and obj != old_obj:
            raise ObjectError(
                (TRANSPORT_C, f"Transport '{obj.id}' could not be started: Address already in use")
            )
        if old_state is None or (obj == old_obj and fresh == old_state):
            return fresh if old_state is None else old_state
        if obj.allow_reload:
            return fresh
        if self.parsed_version.reload_applies_external:
            self._note(
                "NOTICE",
                TRANSPORT_C,
                f"Transport '{obj.id}' is not fully reloadable, not reloading: protocol, bind, "
                "TLS, TCP, ToS, or CoS options.",
            )
            return replace(fresh, protocol=old_state.protocol, bind=old_state.bind)
        if obj.id not in self._unreloadable_warned:
            self._unreloadable_warned.add(obj.id)
            self._note(
                "WARNING",
                TRANSPORT_C,
                f"Transport '{obj.id}' is not reloadable, maintaining previous values",
            )
        return old_state

    def _state_for(self, obj: TransportObject, required_bind: bool) -> TransportState:
        protocol = obj.get("protocol")
        bind = ""
        if obj.bind is not None:
            host, port = obj.bind
            bind = format_host(host, port or (5061 if protocol == "tls" else 5060))
        elif required_bind:
            raise ObjectError(
                (TRANSPORT_C, f"Transport '{obj.id}' could not be started as binding not specified")
            )
        return TransportState(
            protocol=protocol,
            bind=bind,
            external_signaling_address=self._resolve(obj.get("external_signaling_address")),
            external_signaling_port=int(obj.get("external_signaling_port")),
            external_media_address=self._resolve(obj.get("external_media_address")),
            local_net=obj.local_net,
        )

    def _resolve(self, name: str) -> str | None:
        """dnsmgr.c ast_dnsmgr_lookup: an address literal as is, a name through `hosts` (the test
        server resolves nothing else); an unresolvable value is not an error, just unset."""
        if not name:
            return None
        try:
            return str(ipaddress.ip_address(name.strip("[]")))
        except ValueError:
            return self.hosts.get(name)

    def _rows(self, obj: TransportObject, state: TransportState) -> list[tuple[str, str]]:
        rows = [(n, state.bind if n == "bind" else v) for n, v in obj.fields]
        rows += [("local_net", net) for net in obj.local_net]
        return sorted(rows, key=lambda row: row[0])

    # -- chan_sip -------------------------------------------------------------------------------

    def _load_sip(self, full: bool) -> None:
        """chan_sip reload_config: [general] is read again in full when sip.conf changed."""
        if not self.parsed_version.has_chan_sip or (not full and unchanged(self._sip_stamps)):
            return
        reader = ConfigReader(self.config_dir, lambda m: self._note("WARNING", "config.c", m))
        try:
            categories = reader.read("sip.conf")
        except FileNotFoundError:
            self._sip_stamps = {}
            self._note("NOTICE", "chan_sip.c", "Unable to load config sip.conf")
            return
        except ConfigInvalid as error:
            self._sip_stamps = reader.stamps
            self._note("ERROR", "config.c", str(error))
            self._note(
                "ERROR", "chan_sip.c", "Contents of sip.conf are invalid and cannot be parsed"
            )
            return
        self._sip_stamps = reader.stamps
        general = next((c for c in categories if c.name == "general" and not c.template), None)
        self._sip = self._sip_general(general or Category("general"))

    def _sip_general(self, general: Category) -> SipSettings:
        settings = SipSettings()
        for var in general.variables:
            name = var.name.lower()
            if name in ("externaddr", "externip"):
                settings = replace(settings, externaddr=self._sip_address(var.value, "externaddr"))
            elif name == "externhost":
                resolved = self.hosts.get(var.value)
                if resolved is None:
                    self._note(
                        "WARNING",
                        "chan_sip.c",
                        f"Invalid address for externhost keyword: {var.value}",
                    )
                externaddr = None if resolved is None else format_host(resolved, 0)
                settings = replace(settings, externhost=var.value, externaddr=externaddr)
            elif name == "externrefresh" and var.value.strip().isdigit():
                settings = replace(settings, externrefresh=int(var.value))
            elif name == "localnet":
                settings = self._sip_localnet(settings, var.value)
            elif name in ("udpbindaddr", "bindaddr"):
                host, port = parse_bind(var.value)
                settings = replace(settings, bindaddr=format_host(host, port or 5060))
        return settings

    def _sip_address(self, value: str, keyword: str) -> str | None:
        try:
            return parse_externaddr(value)
        except ValueError:
            self._note("WARNING", "chan_sip.c", f"Invalid address for {keyword} keyword: {value}")
            return None

    def _sip_localnet(self, settings: SipSettings, value: str) -> SipSettings:
        try:
            return replace(settings, localnet=(*settings.localnet, parse_local_net(value)))
        except ValueError:
            self._note("WARNING", "chan_sip.c", f"Invalid localnet value: {value}")
            return settings

    # -- reload, restart ------------------------------------------------------------------------

    def _reload_module(self, name: str) -> bool:
        """loader.c ast_module_reload: the reload time is stamped before the module is looked up."""
        with self._lock:
            self._reloaded = self.clock()
            self.reload_count += 1
            base = name.removesuffix(".so")
            if base == "res_pjsip":
                self._load_pjsip(full=False)
            elif base == "chan_sip" and self.parsed_version.has_chan_sip:
                self._load_sip(full=False)
            else:
                return base in OTHER_MODULES
            return True

    def _reload_all(self) -> None:
        with self._lock:
            self._reloaded = self.clock()
            self.reload_count += 1
            self._load_pjsip(full=False)
            self._load_sip(full=False)

    def _begin_restart(self, come_back: bool, issuer: _Session | None) -> None:
        """asterisk.c really_quit: hang up, tell AMI sessions, close everything; a restart comes
        back after `restart_downtime` with every config file read again."""
        with self._cond:
            self._shutdown_pending = True
            self.restart_count += int(come_back)
        restart = "True" if come_back else "False"
        event = (
            f"Event: Shutdown\r\nPrivilege: system,all\r\nShutdown: Cleanly\r\nRestart: {restart}"
        )
        for session in list(self._sessions):
            listening = session.authenticated and session.send_events & PERMISSIONS["system"]
            if session is not issuer and session.kind == "ami" and listening:
                self._send_quietly(session, event + "\r\n\r\n")
        thread = threading.Thread(
            target=self._restart, args=(come_back,), name="asterisk-restart", daemon=True
        )
        self._track(thread)
        thread.start()

    def _restart(self, come_back: bool) -> None:
        self.halt()
        if come_back and not self._stopping.wait(self.restart_downtime):
            self.boot()

    def _wait_inactive(self, nice: bool) -> bool:
        """can_safely_quit for "gracefully" (new calls refused) and "when convenient": wait for
        every channel to end; False when the shutdown was aborted or the server stops."""
        with self._cond:
            self._shutdown_waiting, self._shutdown_pending = True, nice
            self._cond.wait_for(
                lambda: self._stopping.is_set() or not self._shutdown_waiting or not self._channels
            )
            # A halt() meanwhile is a crash: nothing restarts after it.
            proceed = self._shutdown_waiting and self._running and not self._stopping.is_set()
            self._shutdown_waiting = False
            if not proceed:
                self._shutdown_pending = False
            return proceed

    def _hang(self, session: _Session) -> None:
        with self._cond:
            self._cond.wait_for(
                lambda: self._stopping.is_set() or session.gone or self._hang_released
            )

    # -- the CLI ---------------------------------------------------------------------------------

    def _available(self) -> list[CliCommand]:
        chan_sip = self.parsed_version.has_chan_sip
        return [c for c in _COMMANDS if c.needs != "chan_sip" or chan_sip]

    def _run_cli(self, line: str, out: Output, session: _Session | None) -> str:
        """cli.c ast_cli_command_full: find the command, refuse it during a shutdown unless it
        is allowed then, run it, print its usage or "failed" line."""
        args = parse_args(line)
        if not args:
            return Outcome.FAILURE
        commands = self._available()
        entry = find_cli(commands, args, loose=False)
        if entry is None:
            best = find_best(commands, args)
            out(
                f"No such command '{line}' (type 'core show help {best}' "
                "for other possible commands)\n"
            )
            return Outcome.FAILURE
        if self._shutdown_pending and not entry.at_shutdown:
            out(f"Command '{line}' cannot be run during shutdown\n")
            return Outcome.FAILURE
        handler: Callable[[list[str], Output, _Session | None], str] = getattr(self, entry.handler)
        result = handler(args, out, session)
        if result == Outcome.SHOWUSAGE:
            out(entry.usage)
            return Outcome.FAILURE
        if result == Outcome.FAILURE:
            out(f"Command '{line}' failed.\n")
        return result

    def _command_fault(self, line: str) -> Literal["", "hang", "drop"]:
        if fault_matches(self.faults.hang_commands, line):
            return "hang"
        return "drop" if fault_matches(self.faults.drop_commands, line) else ""

    def _cli_version(self, args: list[str], out: Output, session: _Session | None) -> str:
        if len(args) != 3:
            return Outcome.SHOWUSAGE
        b = self.build
        out(
            f"Asterisk {self.version} built by {b.user} @ {b.host} on a {b.machine} "
            f"running {b.os} on {b.date}\n"
        )
        return Outcome.SUCCESS

    def _cli_channels(self, args: list[str], out: Output, session: _Session | None) -> str:
        mode = args[3].lower() if len(args) == 4 else ""
        if len(args) not in (3, 4) or mode not in ("", "concise", "verbose", "count"):
            return Outcome.SHOWUSAGE
        with self._lock:
            channels, calls, processed = list(self._channels), self._calls, self._processed
        if mode == "":
            out(f"{'Channel':<20} {'Location':<20} {'State':<7} {'Application(Data)':<30}\n")
        elif mode == "verbose":
            out(
                verbose_channel_line(
                    (
                        "Channel",
                        "Context",
                        "Extension",
                        "Prio",
                        "State",
                        "Application",
                        "Data",
                        "CallerID",
                        "Duration",
                        "Accountcode",
                        "PeerAccount",
                        "BridgeID",
                    )
                )
            )
        for channel in channels if mode != "count" else []:
            out(channel_line(channel, mode))
        if mode != "concise":
            self._counts(out, len(channels), calls, processed, with_channels=True)
        return Outcome.SUCCESS

    def _counts(
        self, out: Output, channels: int, calls: int, processed: int, with_channels: bool
    ) -> None:
        if with_channels:
            out(f"{channels} active channel{ess(channels)}\n")
        if self.maxcalls:
            share = calls / self.maxcalls * 100.0
            out(
                f"{calls} of {self.maxcalls} max active call{ess(calls)} "
                f"({share:5.2f}% of capacity)\n"
            )
        else:
            out(f"{calls} active call{ess(calls)}\n")
        out(f"{processed} call{ess(processed)} processed\n")

    def _cli_calls(self, args: list[str], out: Output, session: _Session | None) -> str:
        uptime = len(args) >= 4 and args[3].lower() == "uptime"
        in_seconds = len(args) == 5 and uptime and args[4].lower() == "seconds"
        if not (len(args) == 3 or (uptime and len(args) == 4) or in_seconds):
            return Outcome.SHOWUSAGE
        with self._lock:
            channels, calls, processed = len(self._channels), self._calls, self._processed
        self._counts(out, channels, calls, processed, with_channels=False)
        if uptime:
            out(f"System uptime: {uptime_text(self._seconds_since(self._startup), in_seconds)}\n")
        return Outcome.SUCCESS

    def _cli_uptime(self, args: list[str], out: Output, session: _Session | None) -> str:
        in_seconds = len(args) == 4 and args[3].lower() == "seconds"
        if len(args) != 3 and not in_seconds:
            return Outcome.SHOWUSAGE
        out(f"System uptime: {uptime_text(self._seconds_since(self._startup), in_seconds)}\n")
        out(f"Last reload: {uptime_text(self._seconds_since(self._reloaded), in_seconds)}\n")
        return Outcome.SUCCESS

    def _seconds_since(self, moment: datetime) -> int:
        return max(0, int((self.clock() - moment).total_seconds()))

    def _cli_settings(self, args: list[str], out: Output, session: _Session | None) -> str:
        """The head of asterisk.c handle_show_settings; the later sections are left out."""
        calls = f"{self.maxcalls} (Current {len(self._channels)})" if self.maxcalls else "Not set"
        out("\nPBX Core settings\n-----------------\n")
        out(f"  Version:                     {self.version}\n")
        out("  Build Options:               BUILD_NATIVE, OPTIONAL_API\n")
        out(f"  Maximum calls:               {calls}\n")
        out("  Maximum open file handles:   1024\n")
        out(f"  Startup time:                {self._startup:%H:%M:%S}\n")
        out(f"  Last reload time:            {self._reloaded:%H:%M:%S}\n")
        return Outcome.SUCCESS

    def _cli_restart_now(self, args: list[str], out: Output, session: _Session | None) -> str:
        if len(args) != 3:
            return Outcome.SHOWUSAGE
        self._begin_restart(come_back=True, issuer=session)
        return Outcome.VANISH

    def _cli_stop_now(self, args: list[str], out: Output, session: _Session | None) -> str:
        if len(args) != 3:
            return Outcome.SHOWUSAGE
        self._begin_restart(come_back=False, issuer=session)
        return Outcome.VANISH

    def _cli_restart_gracefully(
        self, args: list[str], out: Output, session: _Session | None
    ) -> str:
        if len(args) != 3:
            return Outcome.SHOWUSAGE
        if not self._wait_inactive(nice=True):
            return Outcome.SUCCESS
        self._begin_restart(come_back=True, issuer=session)
        return Outcome.VANISH

    def _cli_restart_convenient(
        self, args: list[str], out: Output, session: _Session | None
    ) -> str:
        if len(args) != 4:
            return Outcome.SHOWUSAGE
        out("Waiting for inactivity to perform restart\n")
        if not self._wait_inactive(nice=False):
            return Outcome.SUCCESS
        self._begin_restart(come_back=True, issuer=session)
        return Outcome.VANISH

    def _cli_abort(self, args: list[str], out: Output, session: _Session | None) -> str:
        if len(args) != 3:
            return Outcome.SHOWUSAGE
        with self._cond:
            self._shutdown_waiting = self._shutdown_pending = False
            self._cond.notify_all()
        return Outcome.SUCCESS

    def _cli_module_reload(self, args: list[str], out: Output, session: _Session | None) -> str:
        if len(args) == 2:
            self._reload_all()
        for name in args[2:]:
            if self._reload_module(name):
                out(f"Module '{name}' reloaded successfully.\n")
            else:
                out(f"No such module '{name}'\n")
        return Outcome.SUCCESS

    def _cli_pjsip_transport(self, args: list[str], out: Output, session: _Session | None) -> str:
        if len(args) < 4:
            out("No object specified.\n")
            return Outcome.FAILURE
        with self._lock:
            if args[3] not in self._transports:
                out(f"Unable to find object {args[3]}.\n\n")
                return Outcome.SUCCESS
            out(self._transport_listing([args[3]], details=True) + "\n")
        return Outcome.SUCCESS

    def _cli_pjsip_transports(self, args: list[str], out: Output, session: _Session | None) -> str:
        with self._lock:
            ids = sorted(self._transports)
            if not ids:
                out("No objects found.\n\n")
                return Outcome.SUCCESS
            out(self._transport_listing(ids, details=False) + f"\nObjects found: {len(ids)}\n\n")
        return Outcome.SUCCESS

    def _transport_listing(self, ids: list[str], details: bool) -> str:
        """pjsip_cli.c ast_sip_cli_traverse_objects with config_transport.c's formatter."""
        text = "\n" + TRANSPORT_HEADER + SEPARATOR
        for transport_id in ids:
            obj, state = self._transports[transport_id], self._states[transport_id]
            protocol, cos, tos = obj.get("protocol"), obj.get("cos"), obj.get("tos")
            text += (
                f"Transport:  {transport_id:<21}  {protocol:>6}  {cos:>5}  {tos:>5}  {state.bind}\n"
            )
            if details:
                text += "\n" + objectset(self._rows(obj, state))
        return text

    def _cli_pjsip_register(self, args: list[str], out: Output, session: _Session | None) -> str:
        if len(args) != 4:
            return Outcome.SHOWUSAGE
        name = args[3]
        if name != "*all" and name not in self._registrations:
            out(f"Unable to retrieve registration {name}\n")
            return Outcome.FAILURE
        with self._lock:
            contacts = {t: s.external_signaling_address for t, s in self._states.items()}
            self.reregistrations.append(contacts)
        if name == "*all":
            out("Re-register all queued\n")
        return Outcome.SUCCESS

    def _cli_sip_reload(self, args: list[str], out: Output, session: _Session | None) -> str:
        with self._lock:
            self._load_sip(full=False)
        return Outcome.SUCCESS

    def _cli_sip_settings(self, args: list[str], out: Output, session: _Session | None) -> str:
        """chan_sip.c sip_show_settings: its first line and the address-remapping block."""
        if len(args) != 3:
            return Outcome.SHOWUSAGE
        sip = self._sip
        out("\n\nGlobal Settings:\n----------------\n")
        out(f"  UDP Bindaddress:        {sip.bindaddr}\n")
        out("\nNetwork Settings:\n---------------------------\n")
        out(f"  SIP address remapping:  {sip.remapping}\n")
        out(f"  Externhost:             {sip.externhost or '<none>'}\n")
        out(f"  Externaddr:             {sip.externaddr or '(null)'}\n")
        out(f"  Externrefresh:          {sip.externrefresh}\n")
        for i, net in enumerate(sip.localnet):
            out(f"  {'Localnet:' if i == 0 else '':<24}{net}\n")
        out("\n----\n")
        return Outcome.SUCCESS

    # -- sockets -----------------------------------------------------------------------------------

    def _track(self, thread: threading.Thread) -> None:
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)

    def _open_listeners(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        ami = socket.socket(family, socket.SOCK_STREAM)
        console = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            ami.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            ami.bind((self.host, self.ami_port))
            ami.listen(16)
            self.console_path.unlink(missing_ok=True)
            console.bind(str(self.console_path))
            console.listen(16)
        except OSError:
            ami.close()
            console.close()
            raise
        self._listen(ami, "ami")
        self._listen(console, "console")

    def _listen(self, listener: socket.socket, kind: Literal["ami", "console"]) -> None:
        wake_read, wake_write = socket.socketpair()
        thread = threading.Thread(
            target=self._accept_loop,
            args=(listener, wake_read, kind),
            name=f"asterisk-{kind}-accept",
            daemon=True,
        )
        self._track(thread)
        self._listeners.append((listener, wake_write, thread))
        thread.start()

    def _accept_loop(
        self, listener: socket.socket, wake: socket.socket, kind: Literal["ami", "console"]
    ) -> None:
        with wake, selectors.DefaultSelector() as selector:
            selector.register(listener, selectors.EVENT_READ)
            selector.register(wake, selectors.EVENT_READ)
            while True:
                for key, _ in selector.select():
                    if key.fileobj is wake:
                        return
                    try:
                        connection, _ = listener.accept()
                    except OSError:
                        continue
                    self._spawn(connection, kind)

    def _spawn(self, connection: socket.socket, kind: Literal["ami", "console"]) -> None:
        session = _Session(connection, kind)
        if kind == "ami":
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            if not self._running:
                connection.close()
                return
            self._sessions.add(session)
            thread = threading.Thread(
                target=self._serve, args=(session,), name=f"asterisk-{kind}", daemon=True
            )
            self._track(thread)
            thread.start()

    def _serve(self, session: _Session) -> None:
        try:
            if session.kind == "ami":
                self._serve_ami(session)
            else:
                self._serve_console(session)
        except (_Disconnect, OSError):
            pass
        finally:
            with self._cond:
                self._sessions.discard(session)
                session.gone = True
                self._cond.notify_all()
            session.sock.close()

    def _send_quietly(self, session: _Session, text: str) -> None:
        with contextlib.suppress(OSError):
            session.send(text.encode(), self.chunk_size)

    # -- AMI (main/manager.c) ----------------------------------------------------------------------

    def _serve_ami(self, session: _Session) -> None:
        session.send(f"Asterisk Call Manager/{self.parsed_version.ami}\r\n".encode())
        reader = _LineReader(session.sock)
        deadline = time.monotonic() + self.auth_timeout
        while True:
            lines: list[str] = []
            while line := reader.line(None if session.authenticated else deadline):
                lines.append(line)
            self._process(session, _Message(lines))

    def _process(self, session: _Session, message: _Message) -> None:
        """manager.c process_message, then the answer (events queued meanwhile go first)."""
        action = message.get("Action", skip_empty=True)
        self.received.append(Received("ami", action, message.pairs()))
        was_authenticated = session.authenticated
        reply = self._dispatch(session, message, action)
        if reply is None:
            return
        if (
            was_authenticated
            and self.chatter
            and (session.send_events or self.chatter_ignores_event_mask)
        ):
            for event in self.chatter:
                session.send(event.encode(), self.chunk_size)
        if reply.drop:
            cut = (
                reply.pieces[0] + reply.pieces[1]
                if len(reply.pieces) > 2
                else reply.pieces[0].split("\r\n")[0] + "\r\n"
            )
            session.send(cut.encode())
            raise _Disconnect
        for piece in reply.pieces:
            session.send(piece.encode(), self.chunk_size)
        if reply.close:
            raise _Disconnect

    def _dispatch(self, session: _Session, message: _Message, action: str) -> _Reply | None:
        lowered = action.lower()
        if not action:
            return self._error(message, "Missing action in request")
        if self._shutdown_pending:
            return self._error(message, "Asterisk is shutting down")
        if not session.authenticated and lowered not in ("login", "logoff", "challenge"):
            return self._error(message, "Permission denied")
        if lowered not in ACTION_AUTHORITY:
            return self._error(
                message,
                f"Invalid/unknown command: {action}. Use Action: ListCommands to show available "
                "commands.",
            )
        authority = ACTION_AUTHORITY[lowered]
        if authority and not session.writeperm & authority:
            return self._error(message, "Permission denied")
        if fault_matches(self.faults.hang_actions, action):
            self._hang(session)
            return None
        handler: Callable[[_Session, _Message], _Reply | None] = getattr(self, f"_ami_{lowered}")
        reply = handler(session, message)
        if reply is not None and fault_matches(self.faults.drop_actions, action):
            reply.drop = True
        return reply

    @staticmethod
    def _head(message: _Message, response: str) -> str:
        action_id = message.get("ActionID")
        return f"Response: {response}\r\n" + (f"ActionID: {action_id}\r\n" if action_id else "")

    def _error(self, message: _Message, text: str) -> _Reply:
        return _Reply([self._head(message, "Error") + f"Message: {text}\r\n\r\n"])

    def _ack(self, message: _Message, text: str) -> _Reply:
        return _Reply([self._head(message, "Success") + f"Message: {text}\r\n\r\n"])

    def _ami_login(self, session: _Session, message: _Message) -> _Reply:
        if session.authenticated:
            return self._ack(message, "Already authenticated")
        if not self._authenticate(session, message):
            # manager.c action_login sleeps a second before answering a failed login.
            self._stopping.wait(self.failed_login_delay)
            reply = self._error(message, "Authentication failed")
            reply.close = True
            return reply
        reply = self._ack(message, "Authentication accepted")
        if session.send_events & session.readperm & PERMISSIONS["system"]:
            reply.pieces.append(self._fully_booted())
        return reply

    def _authenticate(self, session: _Session, message: _Message) -> bool:
        username = message.get("Username")
        peer = session.sock.getpeername()[0]
        user = next((u for n, u in self.users.items() if n.lower() == username.lower()), None)
        if not username:
            return False
        if user is None:
            self._note(
                "NOTICE",
                "manager.c",
                f"{peer} tried to authenticate with nonexistent user '{username}'",
            )
            return False
        if message.get("AuthType").lower() == "md5":
            digest = hashlib.md5((session.challenge + user.secret).encode()).hexdigest()
            accepted = bool(session.challenge) and message.get("Key") == digest
        else:
            accepted = message.get("Secret") == user.secret
        if not accepted or self.faults.refuse_login:
            self._note("NOTICE", "manager.c", f"{peer} failed to authenticate as '{username}'")
            return False
        session.authenticated = True
        session.readperm, session.writeperm = (
            permission_mask(user.read),
            permission_mask(user.write),
        )
        mask = event_mask(message.get("Events"))
        if mask is not None:
            session.send_events = mask
        return True

    def _fully_booted(self) -> str:
        """The event action_login appends; Uptime/LastReload as 16's AMI 5.0.x sends them (we
        assume older versions had neither)."""
        times = ""
        if self.parsed_version.major >= 16:
            uptime, reloaded = (
                self._seconds_since(self._startup),
                self._seconds_since(self._reloaded),
            )
            times = f"Uptime: {uptime}\r\nLastReload: {reloaded}\r\n"
        return f"Event: FullyBooted\r\nPrivilege: system,all\r\n{times}Status: Fully Booted\r\n\r\n"

    def _ami_logoff(self, session: _Session, message: _Message) -> _Reply:
        reply = _Reply(
            [self._head(message, "Goodbye") + "Message: Thanks for all the fish.\r\n\r\n"]
        )
        reply.close = True
        return reply

    def _ami_challenge(self, session: _Session, message: _Message) -> _Reply:
        if message.get("AuthType").lower() != "md5":
            return self._error(message, "Must specify AuthType")
        session.challenge = session.challenge or str(secrets.randbelow(2**31))
        return _Reply([self._head(message, "Success") + f"Challenge: {session.challenge}\r\n\r\n"])

    def _ami_ping(self, session: _Session, message: _Message) -> _Reply:
        now = self.clock().timestamp()
        return _Reply(
            [self._head(message, "Success") + f"Ping: Pong\r\nTimestamp: {now:.6f}\r\n\r\n"]
        )

    def _ami_events(self, session: _Session, message: _Message) -> _Reply:
        """The Events action, simplified: any mask that is not empty is taken."""
        mask = event_mask(message.get("EventMask"))
        if mask is None:
            return self._error(message, "Invalid event mask")
        session.send_events = mask
        state = "On" if mask else "Off"
        return _Reply([self._head(message, "Success") + f"Events: {state}\r\n\r\n"])

    def _ami_command(self, session: _Session, message: _Message) -> _Reply | None:
        """manager.c action_command: the output, one `Output:` line each (>= 14), or raw text
        between `Response: Follows` and `--END COMMAND--` (<= 13)."""
        command = message.get("Command")
        if not command:
            return self._error(message, "No command provided")
        words = [w.lower() for w in command.split()]
        if any(tuple(words[: len(b)]) == b for b in COMMAND_BLACKLIST):
            return self._error(message, "Command blacklisted")
        fault = self._command_fault(command)
        if fault == "hang":
            self._hang(session)
            return None
        chunks: list[str] = []
        outcome = self._run_cli(command, chunks.append, session)
        if outcome == Outcome.VANISH:
            return None
        reply = self._command_reply(message, outcome, "".join(chunks))
        reply.drop = fault == "drop"
        return reply

    def _command_reply(self, message: _Message, outcome: str, text: str) -> _Reply:
        action_id = message.get("ActionID")
        if self.parsed_version.legacy_command_output:
            head = "Response: Follows\r\nPrivilege: Command\r\n"
            head += f"ActionID: {action_id}\r\n" if action_id else ""
            return _Reply([head, text, "--END COMMAND--\r\n\r\n"])
        response = "Success" if outcome == Outcome.SUCCESS else "Error"
        head = self._head(message, response) + "Message: Command output follows\r\n"
        lines = text.removesuffix("\n").split("\n")
        return _Reply([head, *(f"Output: {line}\r\n" for line in lines), "\r\n"])

    def _ami_corestatus(self, session: _Session, message: _Message) -> _Reply:
        start, reload = self._startup, self._reloaded
        return _Reply(
            [
                self._head(message, "Success")
                + f"CoreStartupDate: {start:%Y-%m-%d}\r\nCoreStartupTime: {start:%H:%M:%S}\r\n"
                + f"CoreReloadDate: {reload:%Y-%m-%d}\r\nCoreReloadTime: {reload:%H:%M:%S}\r\n"
                # CoreCurrentCalls is ast_active_channels(): channels, not calls.
                + f"CoreCurrentCalls: {len(self._channels)}\r\n"
                + f"CoreProcessedCalls: {self._processed}\r\n\r\n"
            ]
        )

    def _ami_coresettings(self, session: _Session, message: _Message) -> _Reply:
        """manager.c action_coresettings with a default asterisk.conf."""
        fields = (
            ("AMIversion", self.parsed_version.ami),
            ("AsteriskVersion", self.version),
            ("SystemName", ""),
            ("CoreMaxCalls", str(self.maxcalls)),
            ("CoreMaxLoadAvg", "0.000000"),
            ("CoreRunUser", ""),
            ("CoreRunGroup", ""),
            ("CoreMaxFilehandles", "0"),
            ("CoreRealTimeEnabled", "No"),
            ("CoreCDRenabled", "Yes"),
            ("CoreHTTPenabled", "No"),
            ("SoundsSearchCustomDir", "No"),
        )
        body = "".join(f"{k}: {v}\r\n" for k, v in fields)
        return _Reply([self._head(message, "Success") + body + "\r\n"])

    def _ami_coreshowchannels(self, session: _Session, message: _Message) -> _Reply:
        action_id = message.get("ActionID")
        id_text = f"ActionID: {action_id}\r\n" if action_id else ""
        with self._lock:
            channels = list(self._channels)
        start = (
            self._head(message, "Success")
            + "EventList: start\r\nMessage: Channels will follow\r\n\r\n"
        )
        events = [f"Event: CoreShowChannel\r\n{id_text}{channel_event(c)}\r\n" for c in channels]
        done = (
            f"Event: CoreShowChannelsComplete\r\n{id_text}"
            f"EventList: Complete\r\nListItems: {len(channels)}\r\n\r\n"
        )
        return _Reply([start, *events, done])

    def _ami_reload(self, session: _Session, message: _Message) -> _Reply:
        module = message.get("Module")
        if module and not self._reload_module(module):
            return self._error(message, "No such module")
        if not module:
            self._reload_all()
        return self._ack(message, "Module Reloaded")

    # -- the console socket (main/asterisk.c netconsole) -------------------------------------------

    def _serve_console(self, session: _Session) -> None:
        """The first message is `hostname/pid/version\\n`; commands end with NUL; a buffer that
        starts with `cli quit after ` runs the commands in it and the connection closes."""
        session.send(f"{self.hostname}/{self.pid}/{self.version}\n".encode())
        pending = b""
        while data := session.sock.recv(max(1, CONSOLE_BUFFER - len(pending))):
            pending += data
            quit_after = pending.startswith(CLI_QUIT_AFTER)
            *commands, pending = pending.removeprefix(CLI_QUIT_AFTER).split(b"\0")
            for command in commands:
                self._console_command(session, command.decode("utf-8", errors="replace"))
            if quit_after:
                return
            if len(pending) >= CONSOLE_BUFFER:
                self._note("ERROR", "asterisk.c", "Command too long! Skipping")
                pending = b""

    def _console_command(self, session: _Session, line: str) -> None:
        self.received.append(Received("console", line))
        fault = self._command_fault(line)
        if fault == "hang":
            self._hang(session)
            return
        if fault == "drop":
            chunks: list[str] = []
            self._run_cli(line, chunks.append, session)
            session.send(("".join(chunks).split("\n")[0] + "\n").encode())
            raise _Disconnect
        self._run_cli(line, lambda text: session.send(text.encode(), self.chunk_size), session)


@dataclass
class _Reply:
    pieces: list[str]  # written one by one, as astman_append writes them
    close: bool = False
    drop: bool = False


class _LineReader:
    """manager.c get_input: lines end with CRLF or a bare LF."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def line(self, deadline: float | None) -> str:
        while b"\n" not in self.buffer:
            timeout = None if deadline is None else deadline - time.monotonic()
            if timeout is not None and timeout <= 0:
                raise _Disconnect
            self.sock.settimeout(timeout)
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                raise _Disconnect from None
            if not data:
                raise _Disconnect
            self.buffer += data
        raw, _, self.buffer = self.buffer.partition(b"\n")
        return raw.removesuffix(b"\r").decode("utf-8", errors="replace")


def fault_matches(patterns: Sequence[str], text: str) -> bool:
    words = text.lower().split()
    return any(p.split() and words[: len(p.split())] == p.lower().split() for p in patterns)


def objectset(rows: list[tuple[str, str]]) -> str:
    """pjsip_cli.c ast_sip_cli_print_sorcery_objectset: columns as wide as the widest entry."""
    name_width = max([13, *(len(name) for name, _ in rows)])
    value_width = max([14, *(len(value) for _, value in rows)])
    text = f" {'ParameterName':<{name_width}} : ParameterValue\n"
    text += " " + "=" * (name_width + value_width + 3) + "\n"
    return text + "".join(f" {name:<{name_width}} : {value}\n" for name, value in rows)


def channel_line(channel: Channel, mode: str) -> str:
    """One channel of `core show channels` (plain, concise or verbose)."""
    c = channel
    if mode == "concise":
        app = c.application or "(None)"
        fields = [c.name, c.context, c.exten, str(c.priority), c.state, app, c.data]
        fields += [c.caller_id_num, c.account_code, "", "3", str(c.seconds), c.bridge_id]
        return "!".join([*fields, c.uniqueid]) + "\n"
    if mode == "verbose":
        head = [c.name, c.context, c.exten, str(c.priority), c.state, c.application]
        tail = [c.caller_id_num, hms(c.seconds), c.account_code, "", c.bridge_id]
        return verbose_channel_line([*head, c.data or "(Empty)", *tail])
    location = f"{c.exten}@{c.context}:{c.priority}"
    app = f"{c.application}({c.data})" if c.application else "(None)"
    return f"{c.name[:20]:<20} {location[:20]:<20} {c.state[:7]:<7} {app[:30]:<30}\n"


def hms(seconds: int) -> str:
    return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def verbose_channel_line(fields: Sequence[str]) -> str:
    widths = (20, 20, 16, 4, 7, 12, 25, 15, 8, 11, 11, 20)
    cells = [
        f"{text[:width]:>{width}}" if i in (3, 8) else f"{text[:width]:<{width}}"
        for i, (text, width) in enumerate(zip(fields, widths, strict=True))
    ]
    return " ".join(cells) + "\n"


def channel_event(channel: Channel) -> str:
    """manager_channels.c ast_manager_build_channel_state_string plus CoreShowChannel's own."""
    fields = (
        ("Channel", channel.name),
        ("ChannelState", str(CHANNEL_STATES.get(channel.state, 6))),
        ("ChannelStateDesc", channel.state),
        ("CallerIDNum", channel.caller_id_num or "<unknown>"),
        ("CallerIDName", channel.caller_id_name or "<unknown>"),
        ("ConnectedLineNum", "<unknown>"),
        ("ConnectedLineName", "<unknown>"),
        ("Language", "en"),
        ("AccountCode", channel.account_code),
        ("Context", channel.context),
        ("Exten", channel.exten),
        ("Priority", str(channel.priority)),
        ("Uniqueid", channel.uniqueid),
        ("Linkedid", channel.uniqueid),
        ("Application", channel.application),
        ("ApplicationData", channel.data),
        ("Duration", hms(channel.seconds)),
        ("BridgeId", channel.bridge_id),
    )
    return "".join(f"{key}: {value}\r\n" for key, value in fields)


# ---------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------


def write_config(directory: Path, files: Mapping[str, str]) -> Path:
    """Write Asterisk config files (name -> text) into `directory`, creating it."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory


# A PJSIP transport behind NAT, as the control, daemon and security tests start from.
OLD_ADDRESS, NEW_ADDRESS = "198.51.100.5", "198.51.100.7"
NAT_TRANSPORT = f"""\
[transport-udp-nat]
type = transport
protocol = udp
bind = 127.0.0.1:5070
external_media_address = {OLD_ADDRESS}
external_signaling_address = {OLD_ADDRESS}
local_net = 127.0.0.0/8
allow_reload = no
"""


class StandInFactory(Protocol):
    def __call__(
        self, *, files: Mapping[str, str] | None = None, running: bool = True, **options: object
    ) -> StandInAsterisk: ...


@pytest.fixture(name="stand_in")
def stand_in_fixture(tmp_path: Path) -> Iterator[StandInAsterisk]:
    """A running stand-in Asterisk 22.10.1 with the recorded pjsip.conf, AMI on a free loopback
    port (user `ipwatch`, secret `ipwatch-secret`) and its console socket in tmp_path."""
    config_dir = write_config(tmp_path / "etc-asterisk", {"pjsip.conf": RECORDED_PJSIP_CONF})
    with StandInAsterisk(config_dir, tmp_path / "asterisk.ctl") as server:
        yield server.start()


@pytest.fixture(name="stand_in_factory")
def stand_in_factory_fixture(tmp_path: Path) -> Iterator[StandInFactory]:
    """Make stand-in Asterisks with other config files (default: the recorded pjsip.conf), other
    constructor options (version, users, clock, ...) or not running; all stop at teardown."""
    servers: list[StandInAsterisk] = []

    def make(
        *, files: Mapping[str, str] | None = None, running: bool = True, **options: object
    ) -> StandInAsterisk:
        index = len(servers)
        config_dir = write_config(
            tmp_path / f"etc-asterisk-{index}", files or {"pjsip.conf": RECORDED_PJSIP_CONF}
        )
        server = StandInAsterisk(config_dir, tmp_path / f"asterisk-{index}.ctl", **options)  # type: ignore[arg-type]
        servers.append(server)
        return server.start(running)

    yield make
    for server in servers:
        server.stop()
