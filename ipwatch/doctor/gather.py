"""The I/O of `doctor`: the targets' files, dnsmgr.conf and rtp.conf, what is known of the public
address, the host's routes, a running Asterisk and the router. Everything else is pure.

The public address comes from the state file, as the last `check` or daemon round confirmed it,
and so does what `cgnat` is judged on: decide.py's NAT hint and each source's last answer (a
router with no public address, a carrier-grade NAT address). Asking the sources again would
cost seconds and tell nothing newer than the daemon's last round; only without a confirmed
address in the state file are they asked, once, as `ipwatch sources` does. Doctor never writes
the state.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from ipwatch.addresses import Family
from ipwatch.asterisk.conf import Document, Tree, load_tree, read_optional_document
from ipwatch.config import AsteriskConfig, Config, TargetConfig
from ipwatch.doctor.network import (
    Network,
    PortMapping,
    Route,
    RouterAnswer,
    default_interface,
    parse_routes,
)
from ipwatch.doctor.pjsip import truth
from ipwatch.errors import IpwatchError
from ipwatch.schema import format_duration

log = logging.getLogger("ipwatch")
ROUTES = Path("/proc/net/route")
PROBE = Path(__file__).with_name("upnp_probe.py")
# Asterisk answers a show command in milliseconds; a doctor that hangs helps nobody.
COMMAND_TIMEOUT = 10.0
INTERFACE_TIMEOUT = 1.0
TreeKind = Literal["pjsip", "chan_sip"]


@dataclass(frozen=True)
class Files:
    """The trees to audit (each top file once), dnsmgr's switch and rtp.conf."""

    trees: tuple[tuple[TreeKind, Tree], ...]
    dnsmgr: bool
    rtp: Document | None


def read_files(config: Config) -> Files:
    """Read every target's tree; a file that cannot be read is a ConfFileError (exit 78)."""
    tops: dict[Path, TreeKind] = {}
    for target in config.targets:
        for kind, top in _tops(target):
            tops.setdefault(top, kind)
    trees = tuple((kind, load_tree(top)) for top, kind in tops.items())
    directory = next(iter(tops), Path("/etc/asterisk/pjsip.conf")).parent
    rtp = read_optional_document(directory / "rtp.conf")
    return Files(trees, _dnsmgr(directory / "dnsmgr.conf"), rtp)


def _tops(target: TargetConfig) -> list[tuple[TreeKind, Path]]:
    """The top files a target stands for (a freepbx one: FreePBX's pjsip.conf and sip.conf)."""
    from ipwatch.reconcile import expand

    return [
        ("chan_sip" if part.kind == "chan_sip" else "pjsip", Path(part.file))
        for part in expand(target)
    ]


def _dnsmgr(path: Path) -> bool:
    """dnsmgr is disabled unless dnsmgr.conf has `enable = yes` in [general] (LAB.md)."""
    document = read_optional_document(path)
    if document is None:
        return False
    values = [
        o.value
        for o in document.find("enable")
        if o.section is not None and o.section.name.lower() == "general"
    ]
    return bool(values) and truth(values[-1])


def network(config: Config, state_dir: Path) -> Network:
    routes = _routes()
    public, verdicts, hint = _observed(config, state_dir)
    return Network(public, _host(routes), routes, config.accept, verdicts, hint)


def _routes() -> tuple[Route, ...]:
    try:
        return parse_routes(ROUTES.read_text())
    except OSError:
        return ()


def _host(routes: Sequence[Route]) -> dict[Family, str]:
    """The host's IPv4 address on the interface of the default route."""
    from ipwatch.sources import interface

    name = default_interface(routes)
    if name is None:
        return {}
    try:
        return {"ipv4": interface.ask(interface.Options(name), "ipv4", INTERFACE_TIMEOUT)}
    except IpwatchError as error:
        log.debug("doctor: no address of %s: %s", name, error)
        return {}


def _observed(
    config: Config, state_dir: Path
) -> tuple[dict[Family, str], tuple[dict[str, Any], ...], str | None]:
    """The confirmed addresses, the last answers and the NAT hint: from the state file, or
    else from asking the sources once."""
    from ipwatch import state as state_file

    try:
        saved = state_file.load(state_dir)
    except IpwatchError as error:
        log.warning("%s; asking the sources instead", error)
        saved = None
    families = (saved or {}).get("families") or {}
    public = {
        f: e["address"] for f, e in families.items() if isinstance(e, dict) and e.get("address")
    }
    if public:
        verdicts = tuple(v for e in families.values() for v in (e.get("sources") or []))
        hints = [e["hint"] for e in families.values() if e.get("hint")]
        return public, verdicts, hints[0] if hints else None
    return _ask_sources(config)


def _ask_sources(
    config: Config,
) -> tuple[dict[Family, str], tuple[dict[str, Any], ...], str | None]:
    from ipwatch import rounds
    from ipwatch.decide import Tracking, decide
    from ipwatch.observe import observe

    policy = rounds.policy_of(config)
    public: dict[Family, str] = {}
    verdicts: list[dict[str, Any]] = []
    hint = None
    for family in config.families:
        decision = decide(family, observe(config.sources, family), Tracking(), policy)
        if decision.winner:
            public[family] = decision.winner
        verdicts += [asdict(v) for v in decision.verdicts]
        hint = hint or decision.hint
    return public, tuple(verdicts), hint


def ask_asterisk(
    settings: AsteriskConfig, commands: Sequence[str]
) -> tuple[dict[str, str], str | None]:
    """Each command's output, and why Asterisk could not be asked (None when it answered).

    A missing AMI secret is a config error (exit 78), as for every command.
    """
    from ipwatch.asterisk.link import AsteriskError, open_link
    from ipwatch.secrets import ami_secret

    secret = ami_secret(settings.ami.secret_file) if settings.control == "ami" else None
    answers: dict[str, str] = {}
    try:
        link = open_link(settings, secret)
        try:
            for command in commands:
                answers[command] = link.command(command, COMMAND_TIMEOUT)
        finally:
            link.close()
    except AsteriskError as error:
        return answers, str(error)
    return answers, None


def ask_router(config: Config, ports: Sequence[tuple[int, str]]) -> RouterAnswer | None:
    """What the router forwards of `ports` ((port, "UDP"/"TCP")), asked over UPnP through the
    first `upnp` source; None without one (ipwatch does not go looking for a router the config
    does not name). The exchange runs in upnp_probe.py, killed at the source's timeout plus the
    time discovery takes."""
    source = next((s for s in config.sources if s.kind == "upnp"), None)
    if source is None or not ports:
        return None
    options = source.options
    request = {
        "url": options.url,
        "interface": options.interface,
        "discover_timeout": options.discover_timeout,
        "ports": [list(port) for port in ports],
    }
    timeout = source.timeout + (0 if options.url else options.discover_timeout)
    try:
        done = subprocess.run(
            [sys.executable, "-I", str(PROBE), json.dumps(request)],
            capture_output=True,
            timeout=timeout,
            cwd="/",
            check=False,
        )
        answer = json.loads(done.stdout.decode(errors="replace").splitlines()[-1])
    except subprocess.TimeoutExpired:
        return RouterAnswer(source.name, error=f"no answer within {format_duration(timeout)}")
    except (OSError, ValueError, IndexError) as error:
        return RouterAnswer(source.name, error=f"the UPnP probe failed ({error})")
    if "error" in answer:
        return RouterAnswer(source.name, error=str(answer["error"]))
    mappings = tuple(
        PortMapping(int(port), str(protocol), host or None, internal, str(description or ""))
        for port, protocol, host, internal, description in answer["mappings"]
    )
    return RouterAnswer(source.name, answer.get("lan") or None, mappings)
