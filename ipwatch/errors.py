"""The errors a user can act on; each carries one sentence and the exit status SPEC.md gives it."""

from __future__ import annotations

EX_USAGE = 64
EX_CONFIG = 78


class IpwatchError(Exception):
    """An error with a one-sentence message meant for the user."""

    exit_status = 1


class ConfigError(IpwatchError):
    """The configuration is invalid; `messages` holds every problem found, one line each."""

    exit_status = EX_CONFIG

    def __init__(self, messages: list[str]) -> None:
        super().__init__("\n".join(messages))
        self.messages = messages


class SourceError(IpwatchError):
    """A source could not give an address this time."""


class NoPublicAddress(SourceError):
    """The router answered that it has no public address: its own WAN address is private,
    carrier-grade NAT or reserved, so it sits behind another NAT."""


class StateError(IpwatchError):
    """The state directory or file cannot be used."""

    exit_status = 3


class UnsafeStateDirectory(StateError):
    """The state directory, or something in it, could be another user's way to make ipwatch write
    or read a file of their choosing. Exit 78: the admin must fix the setup, not wait."""

    exit_status = EX_CONFIG


class ApplyError(IpwatchError):
    """Asterisk's files could not be rewritten or put back; the message says how they were left."""

    exit_status = 3


class ConfFileError(IpwatchError):
    """An Asterisk config file cannot be read, or cannot be managed, the way it is written.

    Exit 78 like a config error: the admin must change a file, and systemd must not restart
    ipwatch in a loop over it.
    """

    exit_status = EX_CONFIG


class InstanceError(IpwatchError):
    """No daemon to signal, or another daemon already uses the state directory."""

    exit_status = 3
