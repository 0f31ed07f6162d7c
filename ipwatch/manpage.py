"""The man pages ipwatch(8) and ipwatch.toml(5), and the bash completion, written at build time.

They are generated, not written by hand, so that they cannot drift: the commands, options,
their help and exit statuses come from the argparse parser that `--help` prints, and the
config keys and their defaults from the dataclasses the config is checked against. Only what
those do not hold is here: one sentence and, where the default is no example, an example per
key (tests/unit/test_manpage.py fails for a key without them), and the prose sections.

    python3 -m ipwatch.manpage DIR    writes DIR/ipwatch.8, DIR/ipwatch.toml.5, DIR/ipwatch.bash
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ipwatch import __version__, cli, config, plugins, schema

# One sentence per key, by its path: "asterisk.ami.host", "source.KIND.key", "ddns.KIND.key".
# An example follows "|" where the default does not make one (a required key, an empty list).
KEYS: dict[str, str] = {
    "interval": "How often the sources are asked.",
    "confirm": "Rounds in a row that must agree on a new address before ipwatch acts.",
    "fast_confirm": "Spacing of those confirmation rounds.",
    "quorum": 'Sources that must agree: "majority" (more than half of those with an acceptable'
    " answer) or a number.",
    "families": 'The address families to watch: "ipv4", "ipv6".',
    "accept": 'CIDRs accepted although they are not global (labs, odd ISPs).|["100.64.0.0/10"]',
    "dns_wait": "Host-name configs: the longest wait for the name to resolve to the new address.",
    "source.kind": 'The kind of source; one [[source]] table per source.|"stun"',
    "source.name": 'Its name in logs and the state (default: the kind and a number, "stun-1").|'
    '"stun-google"',
    "source.timeout": "How long one question may take.",
    "source.stun.servers": "STUN servers, host[:port] or [IPv6]:port, tried in order (RFC 8489"
    ' Binding).|["stun.l.google.com:19302", "stun.cloudflare.com:3478"]',
    "source.stun.rto": "The first retransmission timeout (RFC 8489 section 6.2.1).",
    "source.stun.retransmits": "Retransmissions after the first request.",
    "source.stun.fingerprint": "Send the FINGERPRINT attribute.",
    "source.dns.hostname": "Your (DDNS) host name: A for ipv4, AAAA for ipv6.|"
    '"pbx.example.dyndns.org"',
    "source.dns.nameservers": 'Servers asked directly, "IP" or "IP:port"; empty: the system'
    ' resolver.|["192.0.2.53"]',
    "source.dns-echo.provider": 'A resolver that echoes your address: "opendns", "google",'
    ' "cloudflare", "akamai"; or server, qname, rdtype and rdclass.|"opendns"',
    "source.dns-echo.server": 'The echoing DNS server, without provider.|"208.67.222.222"',
    "source.dns-echo.qname": 'The name asked, without provider.|"myip.opendns.com"',
    "source.dns-echo.rdtype": 'The record type asked: "A", "AAAA" or "TXT".|"A"',
    "source.dns-echo.rdclass": 'The record class asked: "IN" or "CH".|"IN"',
    "source.http.url": "A URL answering with your address (as text, JSON or HTML).|"
    '"https://api.ipify.org"',
    "source.http.max_bytes": "The most of the answer read.",
    "source.command.argv": "A program that prints the address, and its arguments; no shell.|"
    '["/usr/local/bin/router-wan-ip"]',
    "source.command.max_bytes": "The most of its output read.",
    "source.interface.interface": 'The interface whose global address is asked ("ppp0").|"ppp0"',
    "source.interface.push": "Also listen to the kernel's address events.",
    "source.natpmp.gateway": "The router asked by NAT-PMP (RFC 6886); default: the gateway of"
    ' the default route.|"192.168.1.1"',
    "source.natpmp.port": "Its NAT-PMP port.",
    "source.natpmp.push": "Also listen to the router's address announcements.",
    "source.upnp.url": "The router's UPnP IGD description (upnpc -l shows it); default:"
    ' discovery.|"http://192.168.1.1:5000/rootDesc.xml"',
    "source.upnp.discover_timeout": "How long discovery waits for answers.",
    "source.upnp.interface": 'The interface (name or IPv4 address) to discover on.|"eth0"',
    "source.upnp.push": "Also subscribe to the router's events.",
    "source.upnp.event_port": "The TCP port the router's events come to (0: any free port).",
    "source.upnp.event_timeout": "The event subscription asked for, renewed at half of it.",
    "target.kind": 'The kind of Asterisk config: "pjsip", "chan_sip" or "freepbx".|"pjsip"',
    "target.file": "pjsip, chan_sip: the top file; #include and #tryinclude are followed.|"
    '"/etc/asterisk/pjsip.conf"',
    "target.dir": "freepbx: the directory FreePBX writes its files to.",
    "target.name": 'Its name in logs and the state.|"pjsip"',
    "target.transports": "PJSIP transports edited; empty: every one that already sets an"
    ' external_* key.|["transport-udp-nat"]',
    "target.signaling": "Edit external_signaling_address.",
    "target.media": "Edit external_media_address.",
    "asterisk.control": 'How Asterisk is told: "ami", "console" (the asterisk -rx socket), "none".',
    "asterisk.apply": 'What it is told: "auto" (the least disruption its version allows),'
    ' "reload", "restart", "none".',
    "asterisk.drain": "The longest a restart waits for active calls to end.",
    "asterisk.verify": "Check that Asterisk shows the new address, else roll back.",
    "asterisk.ami.host": "AMI's address; a loopback one unless allow_remote_ami is true.",
    "asterisk.ami.port": "AMI's port.",
    "asterisk.ami.username": "The AMI user (it needs only the command privilege).",
    "asterisk.ami.secret_file": "A file holding its secret (mode 600); default: the systemd"
    ' credential ami-secret.|"/etc/ipwatch/ami.secret"',
    "asterisk.console_socket": 'Asterisk\'s control socket, for control = "console".',
    "asterisk.allow_remote_ami": "Accept an AMI host that is not loopback (clear text).",
    "asterisk.user": "The user Asterisk runs as: its AMI listener and socket must be it or root.",
    "hooks.dir": "Every executable file here runs on each event, in byte order of names.",
    "hooks.timeout": "How long one hook may run before SIGTERM (SIGKILL 5 s later).",
    "ddns.kind": 'The kind of DNS updater; one [[ddns]] table each.|"rfc2136"',
    "ddns.name": 'Its name in logs and credentials (default: "rfc2136-1", ...).|"home"',
    "ddns.timeout": "How long one update may take.",
    "ddns.min_interval": "The least time between two updates of one record.",
    "ddns.rfc2136.server": 'The zone\'s primary, "IP" or "IP:port".|"192.0.2.53"',
    "ddns.rfc2136.zone": 'The zone.|"example.org"',
    "ddns.rfc2136.hostname": 'The name updated.|"pbx.example.org"',
    "ddns.rfc2136.tsig_name": 'The TSIG key\'s name.|"pbx-key"',
    "ddns.rfc2136.tsig_secret_file": "A file with the base64 secret or tsig-keygen output;"
    ' default: the credential ddns-NAME-tsig_secret.|"/etc/ipwatch/pbx-key.key"',
    "ddns.rfc2136.tsig_algorithm": 'The TSIG algorithm: "hmac-sha256" or "hmac-sha512".',
    "ddns.rfc2136.ttl": "The TTL of the record written.",
    "ddns.dyndns2.url": 'The update URL (https).|"https://members.dyndns.org/nic/update"',
    "ddns.dyndns2.hostname": 'The name updated.|"pbx.example.dyndns.org"',
    "ddns.dyndns2.username": 'The account.|"me"',
    "ddns.dyndns2.password_file": "A file holding the password; default: the credential"
    ' ddns-NAME-password.|"/etc/ipwatch/dyndns.password"',
    "ddns.cloudflare.zone": 'The zone.|"example.org"',
    "ddns.cloudflare.record": 'The record updated.|"pbx.example.org"',
    "ddns.cloudflare.token_file": "A file holding an API token with Zone.DNS edit; default: the"
    ' credential ddns-NAME-token.|"/etc/ipwatch/cloudflare.token"',
    "ddns.cloudflare.api_url": "Cloudflare's API.",
    "ddns.duckdns.domains": 'The subdomains of duckdns.org updated.|["mypbx"]',
    "ddns.duckdns.token_file": "A file holding the token; default: the credential"
    ' ddns-NAME-token.|"/etc/ipwatch/duckdns.token"',
    "ddns.duckdns.url": "DuckDNS's update URL.",
}

_REQUIRED = dataclasses.MISSING


@dataclasses.dataclass(frozen=True)
class Key:
    """One config key as ipwatch.toml(5) shows it."""

    path: str  # "asterisk.ami.host"
    table: str  # the TOML table it is written in: "", "asterisk.ami", "[source]"
    name: str
    default: str | None  # TOML text; None: required
    text: str
    example: str


def config_keys() -> list[Key]:
    """Every key of the config, built-in source and updater kinds included, in schema order."""
    keys = list(_table_keys(config.Config, "", ""))
    # The keys every [[source]] and [[ddns]] table has, then those of each built-in kind.
    for group, plural, common in (
        ("source", plugins.SOURCES, config._SourceCommon),
        ("ddns", plugins.UPDATERS, config._UpdaterCommon),
    ):
        keys += _table_keys(common, group, f"[{group}]")
        for kind, module_name in plugins.BUILT_IN[plural].items():
            options = importlib.import_module(module_name).Options
            keys += _table_keys(options, f"{group}.{kind}", f"[{group}]", kind)
    return keys


def _table_keys(table: type, prefix: str, header: str, kind: str = "") -> Iterator[Key]:
    """The keys of `table`, then those of its sub-tables, as TOML must write them."""
    hints = schema.field_hints(table)
    subtables: list[Iterator[Key]] = []
    for item in dataclasses.fields(table):
        if not item.metadata.get("toml", True):
            continue
        hint = hints[item.name]
        path = f"{prefix}.{item.name}" if prefix else item.name
        default = _default(item)
        if dataclasses.is_dataclass(hint):
            subtables.append(_table_keys(hint, path, path))  # type: ignore[arg-type]
            continue
        if schema.is_table_list(hint):
            subtables.append(_table_keys(hint.__args__[0], path, f"[{path}]"))
            continue
        text, _, example = KEYS.get(path, "").partition("|")
        shown = _toml(default, hint)
        if not example:
            example = shown or ""
        if kind and item.name != "kind":
            text = f"kind = {json.dumps(kind)}: {text}"
        yield Key(path, header, item.name, shown, text, example)
    for keys in subtables:
        yield from keys


def _default(item: dataclasses.Field[Any]) -> Any:
    if item.default is not _REQUIRED:
        return item.default
    if item.default_factory is not _REQUIRED:
        return item.default_factory()
    return _REQUIRED


def _toml(value: Any, hint: Any) -> str | None:
    if value is _REQUIRED:
        return None
    if value is None:
        return "unset"
    if schema.is_duration(hint):
        return json.dumps(schema.format_duration(value))
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return "[" + ", ".join(json.dumps(str(element)) for element in value) + "]"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


# -- roff ---------------------------------------------------------------------------------------


def _escape(text: str) -> str:
    """Plain text as roff: backslashes and hyphens escaped, no line starting a request."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + line if line[:1] in ".'" else line for line in text.split("\n"))


def _header(name: str, section: int, title: str) -> list[str]:
    return [
        f'.TH {name.upper()} {section} "" "ipwatch {__version__}" "{title}"',
        ".SH NAME",
        f"{_escape(name)} \\- keep Asterisk's public address right on a dynamic IP"
        if section == 8
        else f"{_escape(name)} \\- the configuration file of ipwatch(8)",
    ]


def _tagged(tag: str, text: str) -> list[str]:
    return [".TP", tag, _escape(text)]


def _option_tag(action: argparse.Action) -> str:
    if not action.option_strings:
        return f"\\fI{_escape(str(action.metavar or action.dest).upper())}\\fR"
    metavar = f" \\fI{_escape(str(action.metavar))}\\fR" if action.metavar else ""
    return ", ".join(f"\\fB{_escape(flag)}\\fR{metavar}" for flag in action.option_strings)


def _help(action: argparse.Action) -> str:
    text = str(action.help or "")
    if action.choices and not action.option_strings:
        text += ": " + ", ".join(str(choice) for choice in action.choices)
    return text


def global_options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [
        action
        for action in parser._actions
        if action.option_strings and action.help != argparse.SUPPRESS
    ]


def commands(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser, str]]:
    """Every command, `config check` and `hooks test` spelt out: (name, parser, summary)."""
    found = []
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        summaries = {choice.dest: str(choice.help or "") for choice in action._choices_actions}
        for name, sub in action.choices.items():
            nested = commands(sub)
            if nested:
                found += [(f"{name} {rest}", p, s) for rest, p, s in nested]
            else:
                found.append((name, sub, summaries.get(name, "")))
    return found


@functools.cache
def _global_flags() -> frozenset[str]:
    return frozenset(
        flag for action in global_options(cli.build_parser()) for flag in action.option_strings
    )


def own_options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """A command's own arguments: not -h and not the global options it also accepts."""
    shared = _global_flags()
    return [
        action
        for action in parser._actions
        if not set(action.option_strings) & shared and not isinstance(action, argparse._HelpAction)
    ]


def _usage(name: str, parser: argparse.ArgumentParser) -> str:
    parts = [f"\\fBipwatch\\fR [\\fIOPTIONS\\fR] \\fB{_escape(name)}\\fR"]
    for action in own_options(parser):
        tag = (
            f"\\fB{_escape(action.option_strings[0])}\\fR"
            if action.option_strings
            else f"\\fI{_escape(str(action.metavar or action.dest).upper())}\\fR"
        )
        optional = action.option_strings or action.nargs == "?"
        parts.append(f"[{tag}]" if optional else tag)
    return " ".join(parts)


_SIGNALS = [
    (
        "SIGHUP",
        "`ipwatch run` reloads its config (systemctl reload ipwatch); an invalid one is"
        " logged and the old one kept.",
    ),
    ("SIGUSR1", "`ipwatch run` starts a round now; `ipwatch trigger` sends it."),
    ("SIGTERM, SIGINT", "`ipwatch run` finishes the current step and exits 0."),
]
_FILES = [
    ("/etc/ipwatch/ipwatch.toml", "The configuration, see ipwatch.toml(5)."),
    (
        "/etc/ipwatch/hooks.d/",
        "The hooks (hooks.dir); examples in /usr/share/doc/ipwatch/examples.",
    ),
    (
        "/var/lib/ipwatch/state.json",
        "The state: addresses, each source's last answer, changes,"
        " problems, the daemon's heartbeat; `ipwatch status` reads only this.",
    ),
    ("/var/lib/ipwatch/backups/", "The previous version of every file ipwatch rewrote."),
    (
        "/var/lib/ipwatch/ipwatch.lock",
        "Held by the running daemon; `ipwatch trigger` signals its pid.",
    ),
    ("/lib/systemd/system/ipwatch.service", "The systemd unit (not enabled on install)."),
]
_ENVIRONMENT = [
    ("IPWATCH_CONFIG", "The config file when -c is not given."),
    ("IPWATCH_STATE_DIR", "The state directory when --state-dir is not given."),
    ("STATE_DIRECTORY", "systemd's StateDirectory=, used after IPWATCH_STATE_DIR."),
    ("CREDENTIALS_DIRECTORY", "systemd's credentials: ami-secret, ddns-NAME-SECRET."),
    ("JOURNAL_STREAM", "When set, log lines carry sd-daemon <N> priorities, no timestamps."),
]
_EXAMPLES = [
    ("ipwatch config check", "Validate /etc/ipwatch/ipwatch.toml, read the targets and secrets."),
    ("ipwatch plan", "Show what would change, as a diff."),
    ("ipwatch check --apply", "Rewrite the files, tell Asterisk and verify, once."),
    ("systemctl enable --now ipwatch", "Run the daemon."),
    ("ipwatch status", "A Nagios check of the running daemon's state."),
    ("ipwatch hooks test change", "Run every hook with a made-up change event."),
    ("ipwatch demo", "A whole cycle offline on loopback, step by step."),
]


def ipwatch_8() -> str:
    parser = cli.build_parser()
    lines = _header("ipwatch", 8, "System Administration")
    lines += [
        ".SH SYNOPSIS",
        "\\fBipwatch\\fR [\\fB\\-c\\fR \\fICONFIG\\fR] [\\fB\\-\\-state\\-dir\\fR \\fIDIR\\fR]"
        " [\\fB\\-v\\fR|\\fB\\-q\\fR] \\fICOMMAND\\fR [\\fIARGS\\fR]",
        ".br",
        "\\fBipwatch\\fR \\fB\\-V\\fR|\\fB\\-\\-version\\fR",
        ".SH DESCRIPTION",
        _escape(str(parser.description)),
        ".PP",
        _escape(
            "ipwatch asks several independent sources (STUN, the DDNS host name, DNS and HTTP"
            " echo, the router by NAT-PMP or UPnP, an interface, a command) for the public"
            " address, confirms a change by a quorum over several rounds, rewrites only the"
            " external address values of PJSIP or chan_sip atomically with a backup, tells"
            " Asterisk with the least disruption its version allows, verifies, rolls back on"
            " failure, updates DDNS records and runs hooks."
        ),
        ".SH OPTIONS",
        _escape("Given before or after the command."),
    ]
    for action in global_options(parser):
        lines += [".TP", _option_tag(action), _escape(_help(action))]
    lines.append(".SH COMMANDS")
    for name, sub, summary in commands(parser):
        lines += [".TP", _usage(name, sub), _escape(summary[:1].upper() + summary[1:] + ".")]
        for action in own_options(sub):
            lines += [".RS", ".TP", _option_tag(action), _escape(_help(action)), ".RE"]
        if sub.epilog:
            lines += [".IP", _escape(sub.epilog)]
    lines += [
        ".SH EXIT STATUS",
        _escape(
            "Each command's own statuses are listed with it above. Any command exits 64 on bad"
            " usage, 78 on a config error, 70 on an internal error, 130 when interrupted, and"
            " 141 when the pipe it writes to is closed early."
        ),
    ]
    for title, items in (("SIGNALS", _SIGNALS), ("FILES", _FILES), ("ENVIRONMENT", _ENVIRONMENT)):
        lines.append(f".SH {title}")
        for tag, text in items:
            lines += _tagged(f"\\fB{_escape(tag)}\\fR", text)
    lines.append(".SH EXAMPLES")
    for command, text in _EXAMPLES:
        lines += _tagged(f"\\fB{_escape(command)}\\fR", text)
    lines += [
        ".SH SEE ALSO",
        "\\fBipwatch.toml\\fR(5), \\fBsystemctl\\fR(1), \\fBjournalctl\\fR(1),"
        " /usr/share/doc/ipwatch/README.md.gz",
    ]
    return "\n".join(lines) + "\n"


def ipwatch_toml_5() -> str:
    lines = _header("ipwatch.toml", 5, "File Formats")
    lines += [
        ".SH SYNOPSIS",
        "/etc/ipwatch/ipwatch.toml",
        ".SH DESCRIPTION",
        _escape(
            "One TOML file configures ipwatch(8): -c PATH, else $IPWATCH_CONFIG, else"
            ' /etc/ipwatch/ipwatch.toml. Durations are written "500ms", "30s", "5m" or'
            ' "1h". Unknown keys are errors. `ipwatch config check` reports every mistake at'
            " once, one line each with its key path (source[1].servers[0]), exits 78, and"
            " prints the effective config. Secrets never go into this file: each comes from a"
            " *_file key (mode 600) or a systemd credential."
        ),
        ".PP",
        _escape(
            'Each key below is shown with its default ("required" when it has none) and an'
            " example. [[source]] and [[ddns]] tables are repeated, one per source or updater;"
            " the keys of a kind apply to the tables with that kind."
        ),
    ]
    section = None
    for key in config_keys():
        if key.table != section:
            section = key.table
            lines.append(f".SH {_section_title(section)}")
        default = "required" if key.default is None else key.default
        lines += [
            ".TP",
            f"\\fB{_escape(key.name)}\\fR (default: {_escape(default)})",
            _escape(key.text),
            ".br",
            f"Example: \\fC{_escape(key.name)} = {_escape(key.example)}\\fR",
        ]
    lines += [
        ".SH EXAMPLE",
        ".nf",
        _escape(_EXAMPLE),
        ".fi",
        ".SH SEE ALSO",
        "\\fBipwatch\\fR(8), /usr/share/doc/ipwatch/README.md.gz",
    ]
    return "\n".join(lines) + "\n"


def _section_title(table: str) -> str:
    if not table:
        return "TOP-LEVEL KEYS"
    return _escape(f"[{table}]")


_EXAMPLE = """\
interval = "30s"
families = ["ipv4"]

[[source]]
kind = "stun"
servers = ["stun.l.google.com:19302", "stun.cloudflare.com:3478"]

[[source]]
kind = "dns-echo"
provider = "opendns"

[[target]]
kind = "pjsip"
file = "/etc/asterisk/pjsip.conf"

[asterisk]
control = "ami"
ami = { username = "ipwatch", secret_file = "/etc/ipwatch/ami.secret" }
"""


# -- bash completion ----------------------------------------------------------------------------


def bash_completion() -> str:
    """A completion function for bash: commands, their options, `hooks test` event names, and
    file names after -c and --state-dir."""
    parser = cli.build_parser()
    words: dict[str, list[str]] = {"": []}
    for name, sub, _ in commands(parser):
        parts = name.split()
        for depth, part in enumerate(parts):  # "" offers "config", "config" offers "check"
            offered = words.setdefault(" ".join(parts[:depth]), [])
            offered += [part] if part not in offered else []
        words[name] = [flag for action in own_options(sub) for flag in action.option_strings]
        words[name] += [
            str(choice)
            for action in own_options(sub)
            if not action.option_strings
            for choice in action.choices or ()
        ]
    shared = [flag for action in global_options(parser) for flag in action.option_strings]
    cases = "\n".join(
        f'        "{command}") words="{" ".join(offered)}" ;;' for command, offered in words.items()
    )
    return _COMPLETION.format(cases=cases, shared=" ".join(shared))


_COMPLETION = """\
# bash completion for ipwatch(8), generated by ipwatch.manpage from its argument parser.
_ipwatch() {{
    local cur prev command="" words word i
    cur=${{COMP_WORDS[COMP_CWORD]}}
    prev=${{COMP_WORDS[COMP_CWORD-1]}}
    case $prev in
        -c|--config) compopt -o filenames; mapfile -t COMPREPLY < <(compgen -f -- "$cur"); return ;;
        --state-dir) compopt -o filenames; mapfile -t COMPREPLY < <(compgen -d -- "$cur"); return ;;
    esac
    # The command so far: the words that are neither options nor the value of one.
    for ((i = 1; i < COMP_CWORD; i++)); do
        word=${{COMP_WORDS[i]}}
        case $word in
            -c|--config|--state-dir) ((i++)) ;;
            -*) ;;
            *) command="${{command:+$command }}$word" ;;
        esac
    done
    case $command in
{cases}
        *) words="" ;;
    esac
    # The global options are accepted before and after the command.
    mapfile -t COMPREPLY < <(compgen -W "$words {shared}" -- "$cur")
}}
complete -F _ipwatch ipwatch
"""


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python3 -m ipwatch.manpage DIR", file=sys.stderr)
        return 64
    directory = Path(argv[0])
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "ipwatch.8").write_text(ipwatch_8())
    (directory / "ipwatch.toml.5").write_text(ipwatch_toml_5())
    (directory / "ipwatch.bash").write_text(bash_completion())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
