"""One small interface to a running Asterisk, whichever way ipwatch reaches it.

A `Link` runs CLI commands and reports Asterisk's version. Two kinds exist: the manager
interface over TCP (`ami.AmiLink`) and the control socket that `asterisk -rx` uses
(`console.ConsoleLink`). Both return a command's output the same way: the text Asterisk's CLI
wrote, one final newline removed, so `lines = output.split("\\n")` gives what `asterisk -rx`
prints line by line, and the two links give equal text for the same command.

Every failure is an `AsteriskError` (exit status 3) with one sentence naming where Asterisk was
looked for; subclasses say which kind of failure it was, because a caller treats a connection
that closes under `core restart now` differently from a login that is refused.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Protocol

from ipwatch.errors import IpwatchError

if TYPE_CHECKING:
    from ipwatch.config import AsteriskConfig

DEFAULT_TIMEOUT = 10.0

# CSI sequences (ECMA-48 section 5.4): term.c colours CLI output when Asterisk was started from a
# colour terminal, and sends the codes to AMI and console clients alike.
_ESCAPE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")


class AsteriskError(IpwatchError):
    """Asterisk could not be reached, refused ipwatch, or answered something unusable."""

    exit_status = 3


class AsteriskUnavailable(AsteriskError):
    """Nothing answers where Asterisk should be: not running, or its interface is off."""


class AsteriskAuthError(AsteriskError):
    """The manager interface rejected the username or secret."""


class AsteriskPermissionError(AsteriskError):
    """Asterisk refused an action ipwatch needs: a missing AMI privilege or socket access."""


class AsteriskTimeout(AsteriskError):
    """Asterisk did not answer within the time given."""


class AsteriskDropped(AsteriskError):
    """Asterisk closed the connection before it answered (it may have acted or not)."""


class AsteriskProtocolError(AsteriskError):
    """Asterisk's reply does not follow the protocol, or is larger than ipwatch accepts."""


class Link(Protocol):
    """A way to talk to Asterisk: run a CLI command, ask the version, let go."""

    def command(self, text: str, timeout: float) -> str:
        """Run one CLI command and return its output (lines joined with "\\n")."""
        ...

    def version(self, timeout: float = DEFAULT_TIMEOUT) -> str:
        """Asterisk's version as `core show version` prints it, e.g. "20.11.0"."""
        ...

    def close(self) -> None:
        """Release the connection, if one is open; the link may not be used afterwards."""
        ...


def open_link(config: AsteriskConfig, secret: str | None) -> Link:
    """Return the link `config.control` asks for; nothing is connected until it is used.

    Raise AsteriskError when control is "none" or the manager interface has no secret.
    """
    if config.control == "ami":
        if secret is None:
            raise AsteriskError(
                "no secret for Asterisk's manager interface; set asterisk.ami.secret_file"
            )
        from ipwatch.asterisk.ami import AmiLink

        ami = config.ami
        return AmiLink(ami.host, ami.port, ami.username, secret, user=config.user)
    if config.control == "console":
        from ipwatch.asterisk.console import ConsoleLink

        return ConsoleLink(config.console_socket, user=config.user)
    raise AsteriskError('asterisk.control is "none": ipwatch does not talk to Asterisk')


def strip_escapes(text: str) -> str:
    """Remove terminal colour codes, which a reader of the output never sees."""
    return _ESCAPE.sub("", text)


def seconds(timeout: float) -> str:
    """A timeout as people write it in a sentence: "2 s", "0.5 s"."""
    return f"{timeout:g} s"


def version_from_cli(output: str) -> str | None:
    """The version in `core show version` output ("Asterisk 20.11.0 built by ..."), or None."""
    match = re.search(r"^Asterisk (\S+) built by", output, re.MULTILINE)
    return match[1] if match else None
