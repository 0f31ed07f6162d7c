"""DDNS updaters: one module per kind, all of the same shape, and the runner that calls them.

A kind's module (built in, or a plugin registered under the `ipwatch.updaters` entry points) has:
- `Options`: a frozen dataclass of its own config keys (checked by ipwatch.schema);
- `SECRETS`: the names of the secrets it needs, e.g. ("token",); each comes from the key
  `<name>_file` (an Options field: a file that only its owner may read) or else from the systemd
  credential `ddns-<updater name>-<name>`; the runner reads them and the module never sees a path;
- `update(options, addresses, timeout, secrets) -> Outcome`: make the provider's record hold
  `addresses` (family -> address) within `timeout` seconds. It reads the live record first where
  the provider allows and changes nothing when it is already right. Failures raise UpdateError
  with one sentence that never contains a secret;
- optionally `RECHECK = True`: update() may be called again every `min_interval` with unchanged
  addresses (to repair a record changed by someone else). Without it an unchanged address is
  never sent twice: dyndns2 providers block clients that repeat themselves.

Modules import their heavy dependencies (dnspython) inside `update`.

`run_updaters` decides, per updater, whether to call it now: always when the addresses differ
from those the provider last accepted; otherwise only when RECHECK allows and `min_interval` has
passed. After a failure the same addresses are tried again after `min_interval` (or after what the
provider asked, e.g. Retry-After); a permanent failure (bad credentials, abuse) blocks the updater
until its config or one of its secret files changes. What it must remember between rounds is
plain JSON data the caller keeps in the state file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ipwatch import plugins
from ipwatch.addresses import Family
from ipwatch.config import UpdaterConfig
from ipwatch.errors import ConfigError, IpwatchError
from ipwatch.redact import MASK

log = logging.getLogger("ipwatch")

Status = Literal["updated", "unchanged", "failed", "blocked", "skipped"]


class UpdateError(IpwatchError):
    """An update failed. `permanent`: retrying cannot help until the user changes something
    (credentials, host name, an account blocked for abuse). `retry_after`: seconds the provider
    asked us to wait before the next request (HTTP 429 Retry-After, dyndns2 "911")."""

    def __init__(
        self, message: str, permanent: bool = False, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.retry_after = retry_after


@dataclass(frozen=True)
class Outcome:
    """What update() did: `changed` is False when the record was already right."""

    changed: bool
    message: str  # one line, e.g. "pbx.example.com A 203.0.113.7 updated"


@dataclass(frozen=True)
class UpdateResult:
    name: str
    kind: str
    status: Status
    message: str


@dataclass(frozen=True)
class _Memory:
    """What the runner keeps of one updater between rounds (stored as plain JSON)."""

    fingerprint: str = ""
    sent: dict[str, str] = dataclasses.field(default_factory=dict)  # last accepted by the provider
    tried: dict[str, str] = dataclasses.field(default_factory=dict)  # in the last attempt
    attempt: float | None = None  # when the last attempt started (time.time())
    not_before: float | None = None  # no request before this time (the provider asked)
    blocked: str | None = None  # why this updater is blocked until its config changes

    @classmethod
    def from_json(cls, data: Any, fingerprint: str) -> _Memory:
        """The remembered state, or a fresh one when it belongs to another config (or is junk)."""
        if not isinstance(data, dict) or data.get("fingerprint") != fingerprint:
            return cls(fingerprint)
        try:
            return cls(
                fingerprint,
                _addresses(data.get("sent")),
                _addresses(data.get("tried")),
                _number(data.get("attempt")),
                _number(data.get("not_before")),
                data.get("blocked") if isinstance(data.get("blocked"), str) else None,
            )
        except (TypeError, ValueError):
            return cls(fingerprint)


def _addresses(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise TypeError("not a family -> address table")
    return dict(value)


def _number(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError("not a number")
    return float(value)


def updater_module(kind: str) -> Any:
    """The module of an updater kind the loaded config uses."""
    return plugins.kinds(plugins.UPDATERS).load(kind)


def run_updaters(
    updaters: Sequence[UpdaterConfig],
    addresses: Mapping[Family, str],
    memory: Mapping[str, Any],
    now: float,
) -> tuple[list[UpdateResult], dict[str, Any]]:
    """Bring every updater's record to `addresses` where it is due; return one result per updater
    (in config order) and the memory to keep for the next call (JSON data, keyed by name).

    `now` is wall-clock time (time.time()), since the memory outlives the process.
    """
    if len(updaters) <= 1:
        done = [_run_one(u, addresses, memory.get(u.name), now) for u in updaters]
    else:
        with ThreadPoolExecutor(len(updaters), thread_name_prefix="ddns") as pool:
            done = list(
                pool.map(lambda u: _run_one(u, addresses, memory.get(u.name), now), updaters)
            )
    results = [result for result, _ in done]
    kept = {u.name: dataclasses.asdict(state) for u, (_, state) in zip(updaters, done, strict=True)}
    return results, kept


def _run_one(
    updater: UpdaterConfig, addresses: Mapping[Family, str], saved: Any, now: float
) -> tuple[UpdateResult, _Memory]:
    module = updater_module(updater.kind)
    secret_paths = _secret_paths(updater, module)
    memory = _Memory.from_json(saved, _fingerprint(updater, secret_paths))
    wanted = {str(family): address for family, address in addresses.items()}
    wait = _reason_to_wait(memory, wanted, now, updater.min_interval, _rechecks(module))
    if wait is not None:
        log.debug("ddns %s: %s", updater.name, wait[1])
        return UpdateResult(updater.name, updater.kind, *wait), memory
    attempt = dataclasses.replace(memory, tried=wanted, attempt=now)
    return _attempt(updater, module, addresses, secret_paths, attempt, now)


def _attempt(
    updater: UpdaterConfig,
    module: Any,
    addresses: Mapping[Family, str],
    secret_paths: Mapping[str, str | None],
    memory: _Memory,
    now: float,
) -> tuple[UpdateResult, _Memory]:
    secrets: dict[str, str] = {}
    try:
        secrets = _read_secrets(updater, secret_paths)
        outcome: Outcome = module.update(updater.options, addresses, updater.timeout, secrets)
        message = _scrubbed(outcome.message, secrets)
    except UpdateError as error:
        scrubbed = _scrubbed(str(error), secrets)
        return _failed(
            updater, memory, UpdateError(scrubbed, error.permanent, error.retry_after), now
        )
    except ConfigError as error:
        return _failed(updater, memory, UpdateError(str(error)), now)
    except Exception as error:  # a bug in one updater must not take the round down
        problem = _scrubbed(f"internal error: {type(error).__name__}: {error}", secrets)
        return _failed(updater, memory, UpdateError(problem), now)
    log.log(
        logging.INFO if outcome.changed else logging.DEBUG, "ddns %s: %s", updater.name, message
    )
    status: Status = "updated" if outcome.changed else "unchanged"
    done = dataclasses.replace(memory, sent=memory.tried, not_before=None)
    return UpdateResult(updater.name, updater.kind, status, message), done


def _scrubbed(message: str, secrets: Mapping[str, str]) -> str:
    """`message` without any secret in it: a plugin's (or a library's) words are not trusted."""
    for secret in secrets.values():
        message = message.replace(secret, MASK)
    return message


def _reason_to_wait(
    memory: _Memory, wanted: dict[str, str], now: float, min_interval: float, recheck: bool
) -> tuple[Status, str] | None:
    """Why the updater is not called this round (status, message), or None to call it now."""
    if memory.blocked is not None:
        return (
            "blocked",
            f"{memory.blocked} (not retried until this updater's config or secret changes)",
        )
    if not wanted:
        return "skipped", "no confirmed address to send"
    if memory.not_before is not None and now < memory.not_before:
        return (
            "skipped",
            f"the provider asked to wait; next attempt after {_clock(memory.not_before)}",
        )
    # A clock set back must not hold updates for as long as it jumped.
    recent = memory.attempt is not None and 0 <= now - memory.attempt < min_interval
    if wanted != memory.sent:
        if wanted == memory.tried and recent:
            assert memory.attempt is not None
            return (
                "skipped",
                f"last attempt failed; next after {_clock(memory.attempt + min_interval)}",
            )
        return None
    if recheck and not recent:
        return None
    return "skipped", f"{_shown(wanted)} already sent"


def _failed(
    updater: UpdaterConfig, memory: _Memory, error: UpdateError, now: float
) -> tuple[UpdateResult, _Memory]:
    message = str(error)
    if error.permanent:
        log.error("ddns %s: %s; blocked until its config or secret changes", updater.name, message)
        blocked = dataclasses.replace(memory, blocked=message)
        return UpdateResult(updater.name, updater.kind, "blocked", message), blocked
    log.warning("ddns %s: %s", updater.name, message)
    not_before = None if error.retry_after is None else now + error.retry_after
    failed = dataclasses.replace(memory, not_before=not_before)
    return UpdateResult(updater.name, updater.kind, "failed", message), failed


def _rechecks(module: Any) -> bool:
    return bool(getattr(module, "RECHECK", False))


def _secret_names(module: Any) -> tuple[str, ...]:
    return tuple(getattr(module, "SECRETS", ()))


def credential_name(updater_name: str, secret: str) -> str:
    return f"ddns-{updater_name}-{secret}"


def _secret_paths(updater: UpdaterConfig, module: Any) -> dict[str, str | None]:
    """Where each secret is read from: its `<name>_file` key, else the systemd credential."""
    paths: dict[str, str | None] = {}
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    for secret in _secret_names(module):
        path = getattr(updater.options, f"{secret}_file", None)
        if path is None and directory:
            candidate = Path(directory) / credential_name(updater.name, secret)
            path = str(candidate) if candidate.is_file() else None
        paths[secret] = path
    return paths


def _read_secrets(updater: UpdaterConfig, paths: Mapping[str, str | None]) -> dict[str, str]:
    from ipwatch.secrets import read_secret

    secrets: dict[str, str] = {}
    for secret, path in paths.items():
        if path is None:
            raise UpdateError(
                f"{secret}_file is not set and there is no systemd credential"
                f" {credential_name(updater.name, secret)}; point {secret}_file at a file"
                " (mode 600) holding it"
            )
        value = read_secret(path, credential_name(updater.name, secret))
        if not value:
            raise UpdateError(f"{path} is empty; put the {secret} in it")
        secrets[secret] = value
    return secrets


def _fingerprint(updater: UpdaterConfig, secret_paths: Mapping[str, str | None]) -> str:
    """Identify the updater's config and secret files (by their metadata, never their content):
    a change to either is the user's corrective action that lifts a block."""
    files: list[Any] = []
    for secret, path in sorted(secret_paths.items()):
        try:
            info = os.stat(path) if path else None
        except OSError:
            info = None
        stamp = None if info is None else [info.st_ino, info.st_size, info.st_mtime_ns]
        files.append([secret, path, stamp])
    text = json.dumps([repr(updater), files])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _shown(addresses: Mapping[str, str]) -> str:
    return ", ".join(addresses[family] for family in sorted(addresses))


def _clock(when: float) -> str:
    import time

    return time.strftime("%H:%M:%S", time.localtime(when))
