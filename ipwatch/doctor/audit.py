"""`ipwatch doctor`: gather what the checks need, run them, and collect findings and fixes."""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ipwatch.asterisk.conf import Document
from ipwatch.config import Config
from ipwatch.doctor import chan_sip, fixes, gather, live, network, pjsip
from ipwatch.doctor.findings import Finding, Outcome, ordered
from ipwatch.doctor.unified import Change

# Runs CLI commands on Asterisk: their outputs, and why it could not be asked (or None).
Ask = Callable[[Sequence[str]], tuple[dict[str, str], str | None]]
# Asks the router which of these (port, "UDP"/"TCP") it forwards; None when it is not asked.
AskRouter = Callable[[Sequence[tuple[int, str]]], network.RouterAnswer | None]


@dataclass(frozen=True)
class Report:
    findings: tuple[Finding, ...]
    changes: tuple[Change, ...]  # what the safe fixes make of the files; written by no one

    @property
    def diff(self) -> str:
        return fixes.diff(self.changes)


def run(config: Config, state_dir: Path, *, plan: bool = False) -> Report:
    """Audit the targets' NAT setup; with `plan`, also make the diff of the safe fixes."""
    files = gather.read_files(config)
    known = gather.network(config, state_dir)
    ask: Ask | None = None
    if config.asterisk.control != "none":

        def ask(commands: Sequence[str]) -> tuple[dict[str, str], str | None]:
            return gather.ask_asterisk(config.asterisk, commands)

    def router(ports: Sequence[tuple[int, str]]) -> network.RouterAnswer | None:
        return gather.ask_router(config, ports)

    return examine(files, known, ask, router, plan=plan)


def examine(
    files: gather.Files,
    known: network.Network,
    ask: Ask | None,
    router: AskRouter | None = None,
    *,
    plan: bool = False,
) -> Report:
    """The checks over what was gathered; `ask` reaches a running Asterisk and `router` the
    router (None: do not)."""
    # The checks make no reference cycles, but 10,000 endpoints make a few hundred thousand
    # objects, and each full collection walks them all: without it doctor is a fifth faster.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _examine(files, known, ask, router, plan)
    finally:
        if collecting:
            gc.enable()


def _examine(
    files: gather.Files,
    known: network.Network,
    ask: Ask | None,
    router: AskRouter | None,
    plan: bool,
) -> Report:
    outcome = network.cgnat(known)
    audits: list[pjsip.Audit] = []
    documents: dict[Path, Document] = {}
    # The SIP ports of what is behind NAT: a PBX on a public address needs no forwarding.
    ports: set[tuple[int, str]] = set()
    for kind, tree in files.trees:
        documents.update(tree.documents)
        if kind == "pjsip":
            audits.append(pjsip.audit(pjsip.read(tree), pjsip.Context(known, files.dnsmgr)))
            outcome += audits[-1].outcome
            ports |= {(t.port, t.protocol) for t in audits[-1].transports}
        else:
            found, port = chan_sip.audit(chan_sip.read(tree), known)
            outcome += found
            ports |= {(port, "UDP")} if port is not None else set()
    if ports:
        outcome += network.rtp_range(files.rtp, known.host.get("ipv4"))
        answer = router(sorted(ports)) if router is not None else None
        if answer is not None:
            outcome += network.sip_port_mappings(answer, known.host.get("ipv4"))
    if ask is not None and any(a.transports for a in audits):
        outcome += _running(ask, audits)
    changes = fixes.changes(documents, outcome.fixes) if plan else ()
    return Report(ordered(outcome.findings), changes)


def _running(ask: Ask, audits: list[pjsip.Audit]) -> Outcome:
    """Compare the files with what Asterisk runs; an Asterisk that cannot be asked is a finding."""
    answers, error = ask([command for audit in audits for command in live.commands(audit)])
    if error is not None:
        return Outcome(
            (
                Finding(
                    "warning",
                    "asterisk-unreachable",
                    None,
                    None,
                    "asterisk",
                    f"cannot ask Asterisk ({error}), so whether it runs what the files say is"
                    " unknown; the other findings come from the files alone",
                    "start Asterisk, or check `control` and its settings in [asterisk] of the"
                    " ipwatch config",
                ),
            )
        )
    total = Outcome()
    for audit in audits:
        total += live.compare(audit, answers)
    return total
