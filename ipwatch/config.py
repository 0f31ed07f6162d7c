"""The configuration file: TOML in, frozen dataclasses out, every problem reported at once."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import stat
import tomllib
from collections import Counter
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, TypeVar

from ipwatch import plugins, schema
from ipwatch.addresses import Family
from ipwatch.errors import ConfigError
from ipwatch.redact import MASK, mask_userinfo
from ipwatch.schema import Duration, Network, Parser, PositiveInt
from ipwatch.sources import serves

DEFAULT_PATH = "/etc/ipwatch/ipwatch.toml"
SERVICE_USER = "asterisk"  # User= and Group= of contrib/systemd/ipwatch.service
T = TypeVar("T")


def parse_quorum(value: Any) -> int | Literal["majority"]:
    if value == "majority":
        return "majority"
    try:
        return schema.parse_positive_int(value)
    except ValueError:
        raise ValueError(
            f'expected "majority" or a whole number of at least 1, got {value!r}'
        ) from None


Quorum = Annotated[int | Literal["majority"], Parser(parse_quorum)]


_NOT_A_KEY = {"toml": False}


@dataclass(frozen=True)
class SourceConfig:
    kind: str
    name: str
    timeout: Duration
    options: Any = field(metadata=_NOT_A_KEY)  # the kind module's Options dataclass


@dataclass(frozen=True)
class _SourceCommon:
    kind: str
    name: str | None = None
    timeout: Duration = 2.0


@dataclass(frozen=True)
class UpdaterConfig:
    """One [[ddns]] table: a DDNS updater of a kind from ipwatch.ddns or a plugin."""

    kind: str
    name: str
    timeout: Duration
    min_interval: Duration
    options: Any = field(metadata=_NOT_A_KEY)  # the kind module's Options dataclass


@dataclass(frozen=True)
class _UpdaterCommon:
    kind: str
    name: str | None = None
    timeout: Duration = 10.0
    # Providers block clients that update too often (dyndns2 counts repeats as abuse).
    min_interval: Duration = 300.0


@dataclass(frozen=True)
class TargetConfig:
    kind: Literal["pjsip", "chan_sip", "freepbx"]
    file: str = ""  # pjsip, chan_sip: the top file
    dir: str = "/etc/asterisk"  # freepbx: the config directory FreePBX writes
    name: str | None = None
    transports: tuple[str, ...] = ()
    signaling: bool = True
    media: bool = True
    # Set for the parts a freepbx target expands into (ipwatch.reconcile.expand), not a key.
    freepbx: bool = field(default=False, metadata=_NOT_A_KEY)


@dataclass(frozen=True)
class AmiConfig:
    host: str = "127.0.0.1"
    port: int = 5038
    username: str = "ipwatch"
    secret_file: str | None = None


@dataclass(frozen=True)
class AsteriskConfig:
    control: Literal["ami", "console", "none"] = "ami"
    apply: Literal["auto", "reload", "restart", "none"] = "auto"
    drain: Duration = 900.0
    verify: bool = True
    ami: AmiConfig = field(default_factory=AmiConfig)
    console_socket: str = "/var/run/asterisk/asterisk.ctl"
    # AMI sends the secret in clear text: only a loopback host, unless the admin says otherwise.
    allow_remote_ami: bool = False
    # The user Asterisk runs as: the AMI listener and the control socket's peer must be it or
    # root, so a local impostor on a free port is never sent a login or believed.
    user: str = "asterisk"


@dataclass(frozen=True)
class HooksConfig:
    dir: str = "/etc/ipwatch/hooks.d"
    timeout: Duration = 30.0


@dataclass(frozen=True)
class Config:
    path: str = field(default="", metadata=_NOT_A_KEY)
    interval: Duration = 30.0
    confirm: PositiveInt = 2
    fast_confirm: Duration = 2.0
    quorum: Quorum = "majority"
    families: tuple[Family, ...] = ("ipv4",)
    accept: tuple[Network, ...] = ()
    # Host-name configs: the longest wait for the name to resolve to a new address.
    dns_wait: Duration = 600.0
    source: tuple[SourceConfig, ...] = field(default=(), metadata=_NOT_A_KEY)
    target: tuple[TargetConfig, ...] = ()
    asterisk: AsteriskConfig = field(default_factory=AsteriskConfig)
    hooks: HooksConfig = field(default_factory=HooksConfig)
    ddns: tuple[UpdaterConfig, ...] = field(default=(), metadata=_NOT_A_KEY)

    @property
    def sources(self) -> tuple[SourceConfig, ...]:
        return self.source

    @property
    def targets(self) -> tuple[TargetConfig, ...]:
        return self.target


def default_path() -> str:
    return os.environ.get("IPWATCH_CONFIG") or DEFAULT_PATH


def load(path: str) -> Config:
    """Read and check the config file at `path`; raise ConfigError listing every problem."""
    try:
        with open(path, "rb") as file:
            _refuse_unsafe(path, os.fstat(file.fileno()))
            raw = tomllib.load(file)
    except FileNotFoundError:
        raise ConfigError(
            [f"{path}: no such file; create it (see README) or pass -c PATH"]
        ) from None
    except OSError as error:
        raise ConfigError(
            [f"{path}: cannot be read ({error.strerror}); check its permissions"]
        ) from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError([f"{path}: not valid TOML ({error}); fix the syntax there"]) from None
    config = parse(raw, path)
    _refuse_readable_secrets(config)
    return config


def _refuse_unsafe(path: str, found: os.stat_result) -> None:
    """Refuse a config file that someone but root or ipwatch's user could change: its commands
    (source argv, hooks.dir) run as ipwatch, which may rewrite Asterisk's files."""
    if found.st_uid not in (0, os.geteuid()):
        problem = f"owned by uid {found.st_uid}, not root or ipwatch's user"
    elif found.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        problem = "writable by group or others"
    else:
        return
    user, group = _service_account()
    # Not `chown root` alone: the service runs as its own user (the shipped unit's User=), which
    # must still read the file, and exit 78 is not restarted.
    raise ConfigError(
        [
            f"{path}: {problem}; run chown root:{group} {path} && chmod 0640 {path} so that only"
            f" root can change it and {user}, the user ipwatch runs as, can read it"
        ]
    )


def _service_account() -> tuple[str, str]:
    """The user ipwatch runs as and its group: this process's, unless it is root, who checks the
    config by hand for the service running as the shipped unit's User=asterisk."""
    if os.geteuid() == 0:
        return SERVICE_USER, SERVICE_USER
    import grp
    import pwd

    try:
        user = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        user = f"uid {os.geteuid()}"
    try:
        group = grp.getgrgid(os.getegid()).gr_name
    except KeyError:
        group = str(os.getegid())
    return user, group


def _refuse_readable_secrets(config: Config) -> None:
    """Check the secret files' modes when the config loads (`config check`, SIGHUP), not only
    when a secret is first needed; a file that does not exist yet is reported when it is read."""
    errors = []
    for key, file in secret_files(config):
        try:
            mode = os.stat(file).st_mode
        except OSError:
            continue
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            errors.append(
                f"{config.path}: {key}: {file} is readable by group or others; run chmod 600 {file}"
            )
    if errors:
        raise ConfigError(errors)


def secret_files(config: Config) -> list[tuple[str, str]]:
    """The `*_file` keys that name secrets, with their key paths."""
    found = []
    if config.asterisk.ami.secret_file is not None:
        found.append(("asterisk.ami.secret_file", config.asterisk.ami.secret_file))
    for index, updater in enumerate(config.ddns):
        for item in dataclasses.fields(updater.options):
            value = getattr(updater.options, item.name)
            if _names_secret(item.name) and item.name.endswith("_file") and value is not None:
                found.append((f"ddns[{index}].{item.name}", value))
    return found


def _names_secret(key: str) -> bool:
    return any(word in key for word in _SECRET_WORDS)


def parse(raw: dict[str, Any], path: str = "<config>") -> Config:
    """Check the TOML data `raw`; raise ConfigError with every problem, each naming `path`."""
    errors: list[str] = []
    sources = _parse_kinded("source", raw, "a source kind", _SourceCommon, SourceConfig, errors)
    updaters = _parse_kinded("ddns", raw, "an updater kind", _UpdaterCommon, UpdaterConfig, errors)
    handled = {"path": path, "source": sources, "ddns": updaters}
    config = schema.build(Config, raw, "", errors, handled=handled, also_allowed=("source", "ddns"))
    checked = config
    if checked is None and isinstance(raw, dict):
        # Every problem at once: the rules across keys too, on the keys that are valid.
        checked = schema.salvage(Config, raw, handled=handled)
    if checked is not None:
        _check_consistency(checked, raw.get("source", []), errors)
    if errors:
        raise ConfigError([f"{path}: {error}" for error in errors])
    assert config is not None
    return config


# The arrays of tables whose members each name a kind, and the plugin group providing the kinds.
_KIND_GROUPS = {"source": plugins.SOURCES, "ddns": plugins.UPDATERS}


def _parse_kinded(
    key: str,
    raw: dict[str, Any],
    noun: str,
    common_class: type[Any],
    config_class: type[T],
    errors: list[str],
) -> tuple[T, ...]:
    """Read an array of tables such as [[source]], each checked against its kind's Options."""
    tables = raw.get(key, [])
    if not isinstance(tables, list):
        errors.append(f"{key}: expected [[{key}]] tables, each with a kind")
        return ()
    if not tables:
        return ()  # not even the entry points need reading
    kinds = plugins.kinds(_KIND_GROUPS[key])
    items: list[T] = []
    per_kind: Counter[str] = Counter()
    for index, table in enumerate(tables):
        path = schema.join(key, index)
        if not isinstance(table, dict):
            errors.append(f"{path}: expected a table")
            continue
        kind: Any = table.get("kind")
        module = kinds.load(kind)
        if module is None:
            errors.append(f"{schema.join(path, 'kind')}: {kinds.unknown(kind, noun)}")
            continue
        per_kind[kind] += 1
        parsed = _parse_kind_table(module, common_class, table, path, errors)
        if parsed is not None:
            common, options = parsed
            name = common.name or f"{kind}-{per_kind[kind]}"
            items.append(config_class(**{**vars(common), "name": name, "options": options}))
    return tuple(items)


def _parse_kind_table(
    module: Any, common_class: type[Any], table: dict[str, Any], path: str, errors: list[str]
) -> tuple[Any, Any] | None:
    option_keys = {f.name for f in dataclasses.fields(module.Options)}
    common = schema.build(
        common_class,
        {k: v for k, v in table.items() if k not in option_keys},
        path,
        errors,
        also_allowed=tuple(option_keys),
    )
    options = schema.build(
        module.Options, {k: v for k, v in table.items() if k in option_keys}, path, errors
    )
    if common is None or options is None:
        return None
    return common, options


def _check_consistency(config: Config, source_tables: Any, errors: list[str]) -> None:
    """Check the rules that span keys. `config` may lack the sources whose tables have errors
    (already reported): `source_tables`, the raw [[source]] array, says how many there are."""
    if not isinstance(source_tables, list):
        return  # reported by _parse_kinded
    if not source_tables:
        errors.append('source: none configured; add at least one [[source]], e.g. kind = "stun"')
    for key, items in (("source", config.sources), ("ddns", config.ddns)):
        for name, count in Counter(item.name for item in items).items():
            if count > 1:
                errors.append(
                    f'{key}: the name "{name}" is used {count} times; give each its own name'
                )
    if isinstance(config.quorum, int) and source_tables and config.quorum > len(source_tables):
        errors.append(
            f"quorum: {config.quorum} sources must agree but only {len(source_tables)} are"
            " configured; lower quorum or add sources"
        )
    all_parsed = bool(config.sources) and len(config.sources) == len(source_tables)
    for family in config.families:
        if all_parsed and not any(serves(s.kind, s.options, family) for s in config.sources):
            errors.append(
                f"families: no source can observe {family}; add a source for it or remove it"
            )
    if not config.families:
        errors.append('families: empty; list at least one of "ipv4", "ipv6"')
    _check_ami_host(config.asterisk, errors)
    _check_targets(config.targets, errors)
    if len(set(config.families)) != len(config.families):
        errors.append("families: a family is listed twice; list each once")


def _check_targets(targets: tuple[TargetConfig, ...], errors: list[str]) -> None:
    for index, target in enumerate(targets):
        where = f"target[{index}]"
        if target.kind == "freepbx" and target.file:
            errors.append(
                f'{where}.file: kind "freepbx" takes the directory FreePBX writes; set dir'
                ' (default "/etc/asterisk") instead'
            )
        elif target.kind != "freepbx" and not target.file:
            errors.append(f'{where}.file: missing; this key is required for kind "{target.kind}"')


def _check_ami_host(settings: AsteriskConfig, errors: list[str]) -> None:
    host = settings.ami.host
    if settings.control != "ami" or settings.allow_remote_ami or _is_loopback(host):
        return
    errors.append(
        f"asterisk.ami.host: {host} is not a loopback address and an AMI session is clear text"
        " (and its owner cannot be checked); use 127.0.0.1 (tunnel a remote Asterisk's AMI over"
        " SSH or TLS), or set allow_remote_ami = true in [asterisk] to accept the risk"
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name could resolve anywhere, and differently tomorrow


_SECRET_WORDS = ("secret", "password", "token", "passwd")


def render(config: Config) -> str:
    """The effective config as TOML, defaults filled in and secrets masked (`config check`)."""
    scalars, tables = _table_lines(config, "")
    for key, items in (("source", config.sources), ("ddns", config.ddns)):
        for item in items:
            common, _ = _table_lines(item, key)
            option_scalars, option_tables = _table_lines(item.options, key)
            scalars += ["", f"[[{key}]]", *common, *option_scalars, *option_tables]
    return "\n".join(scalars + tables).strip() + "\n"


def _table_lines(table: Any, prefix: str) -> tuple[list[str], list[str]]:
    """Return a table's `key = value` lines, and those of its sub-tables and arrays of tables."""
    hints = schema.field_hints(type(table))
    scalars: list[str] = []
    tables: list[str] = []
    for item in dataclasses.fields(table):
        value = getattr(table, item.name)
        header = f"{prefix}.{item.name}" if prefix else item.name
        if not item.metadata.get("toml", True) or value is None:
            continue
        if dataclasses.is_dataclass(hints[item.name]):  # not a parsed value such as HostPort
            tables += ["", f"[{header}]", *_joined(_table_lines(value, header))]
        elif schema.is_table_list(hints[item.name]):
            for element in value:
                tables += ["", f"[[{header}]]", *_joined(_table_lines(element, header))]
        else:
            scalars.append(f"{item.name} = {_toml(_plain(item.name, value, hints[item.name]))}")
    return scalars, tables


def _joined(parts: tuple[list[str], list[str]]) -> list[str]:
    return parts[0] + parts[1]


def _plain(name: str, value: Any, hint: Any) -> Any:
    if schema.is_duration(hint):
        return schema.format_duration(value)
    if isinstance(value, tuple):
        return [_plain(name, item, Any) for item in value]
    if isinstance(value, str) and _names_secret(name) and not name.endswith("_file"):
        return MASK
    if isinstance(value, str):
        return mask_userinfo(value)
    if isinstance(value, bool | int | float):
        return value
    return str(value)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    if isinstance(value, int | float):
        return repr(value)
    # TOML has no surrogate-pair escapes, which ensure_ascii would write for characters beyond
    # the BMP; DEL is the one control character JSON leaves unescaped and TOML refuses.
    return json.dumps(str(value), ensure_ascii=False).replace("\x7f", "\\u007f")
