"""`ipwatch demo`: the whole cycle, offline, on loopback, narrated step by step.

Real STUN servers (ipwatch's own loopback responder) stand in for the Internet and an Asterisk
simulator (ipwatch/demo_asterisk.py) for Asterisk; everything in between is the daemon's own code:
the STUN client, the decision engine, reconcile.converge (plan, atomic write, reload, verify) and
the hooks runner. The demo only drives the rounds and prints what happens.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from ipwatch import config as config_module
from ipwatch import reconcile
from ipwatch.addresses import Family
from ipwatch.asterisk.control import choose_action
from ipwatch.config import Config
from ipwatch.decide import Decision, Tracking, decide
from ipwatch.demo_asterisk import LABEL, AsteriskSimulator
from ipwatch.events import Announcer
from ipwatch.files import backup_path
from ipwatch.observe import observe
from ipwatch.report import format_sources
from ipwatch.rounds import policy_of, summary
from ipwatch.stun_responder import StunResponder

FIRST, SECOND, FLAP, LIE = "203.0.113.5", "203.0.113.7", "203.0.113.9", "203.0.113.66"
LAN_ADDRESS = "192.168.1.1"
TRANSPORT = "transport-udp-nat"
NAMES = ("stun-a", "stun-b", "stun-c", "misconfigured")
log = logging.getLogger("ipwatch")


def run_demo() -> int:
    say(
        "ipwatch demo: everything runs on this machine (loopback), nothing goes to the Internet,",
        "and nothing needs root. Asterisk is played by a simulator, labelled as such.",
        "",
        "ipwatch asks several independent sources for the router's public address, and acts only",
        "when enough of them agree for several rounds in a row. Here three loopback STUN servers",
        "play the Internet, and a fourth, misconfigured source reports the router's LAN address.",
    )
    with (
        tempfile.TemporaryDirectory(prefix="ipwatch-demo-") as temp,
        _responders(len(NAMES)) as servers,
    ):
        directory = Path(temp)
        internet, misconfigured = servers[:3], servers[3]
        _set(internet, FIRST)
        misconfigured.answer = LAN_ADDRESS
        config = _write_files(directory, servers)
        step = _Stepper(config, directory)
        with AsteriskSimulator(directory / "asterisk.ctl", directory / "pjsip.conf", step.heard):
            step.round("Round 1: every source is asked at the same time.")
            step.round("Round 2: they still agree, so the address is confirmed.")

            _set(internet, SECOND)
            say("", f"The ISP changes the address: the STUN servers now answer {SECOND}.")
            step.round("Round 3: a new candidate; one round is not enough.")
            step.round("Round 4: the second agreeing round confirms the change.")

            _set(internet, FLAP)
            say("", f"The line flaps: for one round the servers answer {FLAP} ...")
            step.round("Round 5: a candidate again.")
            _set(internet, SECOND)
            step.round(f"Round 6: ... and {SECOND} is back, so nothing changes.")

            internet[0].answer = LIE
            say("", f"One server lies and says {LIE}.")
            step.round("Round 7: a minority never wins; the address stays.")
    _explain_versions()
    say(
        "",
        f"Result: {step.tracking.address}, {step.changes} confirmed changes in 7 rounds. Next:",
        "`ipwatch sources` shows what each of your sources answers; `ipwatch plan` shows the",
        "diff for your Asterisk files; `ipwatch check --apply` confirms and rewrites them;",
        "`ipwatch run` does all of this every `interval`.",
    )
    return 0


EXAMPLE_PJSIP = f"""\
; An example pjsip.conf, as an admin wrote it: comments and layout are kept byte for byte.
[{TRANSPORT}]
type = transport
protocol = udp
bind = 0.0.0.0:5060
local_net = 192.168.1.0/24
external_media_address = {FIRST}      ; the router's public address
external_signaling_address = {FIRST}

[6001]
type = endpoint
transport = {TRANSPORT}
"""


def _write_files(directory: Path, servers: list[StunResponder]) -> Config:
    """The demo's pjsip.conf, hook and ipwatch.toml in `directory`; print them; load the config."""
    pjsip = directory / "pjsip.conf"
    pjsip.write_text(EXAMPLE_PJSIP)
    hooks = directory / "hooks.d"
    hooks.mkdir(mode=0o700)
    hook = hooks / "50-demo-log"
    output = shlex.quote(str(directory / "hook-output.txt"))
    hook.write_text(
        "#!/bin/sh\n"
        "# The event is in IPWATCH_* variables, and as JSON on stdin.\n"
        'echo "event $IPWATCH_EVENT: ${IPWATCH_OLD_ADDRESS:-none} -> $IPWATCH_NEW_ADDRESS'
        f' (sources: $IPWATCH_SOURCES)" >> {output}\n'
    )
    hook.chmod(0o700)  # the runner refuses hooks that others could change
    sources = "".join(
        f'  {{ kind = "stun", name = "{name}", servers = ["{server.server}"], timeout = "1s" }},\n'
        for name, server in zip(NAMES, servers, strict=True)
    )
    path = directory / "ipwatch.toml"
    path.write_text(
        "confirm = 2                   # agreeing rounds in a row before a new address counts\n"
        'quorum = "majority"           # of the sources that gave an acceptable answer\n'
        'accept = ["203.0.113.0/24"]   # a documentation range, so the demo may use it\n'
        f"source = [\n{sources}]\n"
        f'[[target]]\nkind = "pjsip"\nfile = "{pjsip}"\n'
        '[asterisk]\ncontrol = "console"           # the control socket `asterisk -rx` uses\n'
        f'console_socket = "{directory / "asterisk.ctl"}"   # here: the simulator\'s\n'
        f'[hooks]\ndir = "{hooks}"\n'
    )
    say(
        "",
        f"Set-up, in the temporary directory {directory}:",
        f"  pjsip.conf    a copy of an example Asterisk config, saying {FIRST}",
        "  hooks.d/      one hook, which appends each event it gets to hook-output.txt:",
        *(f"    | {line}" for line in hook.read_text().splitlines()),
        f"  asterisk.ctl  the console socket of the {LABEL},",
        "                which answers the few commands ipwatch sends like Asterisk 20 would",
        "  ipwatch.toml  the config:",
        *(f"    | {line}" for line in path.read_text().splitlines()),
    )
    return config_module.load(str(path))


class _Stepper:
    """Runs rounds as the daemon does (observe, decide, record, converge) and narrates them."""

    def __init__(self, config: Config, directory: Path) -> None:
        self.config = config
        self.tracking = Tracking()
        self.changes = 0
        self.writer = reconcile.StateWriter(directory / "state", None)
        self.announcer = Announcer(config, self.writer)
        self.pjsip = Path(config.targets[0].file)
        self.hook_output = directory / "hook-output.txt"
        self.hook_lines_shown = 0
        self.written: list[Path] = []  # files the plan writes, whose backups are yet to be shown
        self.edits_logged = False  # converge logs its edits right after writing the files

    def round(self, title: str) -> None:
        observations = observe(self.config.sources, "ipv4")
        decision = decide("ipv4", observations, self.tracking, policy_of(self.config))
        self.tracking = decision.tracking
        self.changes += decision.changed
        say(
            "",
            title,
            "  [observe]  each source's answer:",
            *("  " + line for line in format_sources(summary(decision)["sources"])),
            f"  [decide]   {explain(decision, self.config.confirm)}",
        )
        decisions: dict[Family, Decision] = {"ipv4": decision}
        self.writer.save(reconcile.record(self.writer.current, decisions, time.time()))
        addresses = reconcile.confirmed(decisions)
        if not addresses:
            return  # as the daemon: nothing to bring in line without a confirmed address
        plan = reconcile.plan(self.config, addresses)
        if plan.in_sync:
            say(
                f"  [diff]     {self.pjsip.name} already says {addresses['ipv4']}: nothing to write"
            )
        else:
            say(
                f"  [diff]     {self.pjsip.name} must change; the plan, as `ipwatch plan` shows it:"
            )
            say(*("             " + line for line in plan.diff().splitlines()))
            self.written = [change.path for change in plan.changes]
        with self._narrated_log():
            reconcile.converge(
                self.config, decisions, self.writer, write=True, announce=self.announcer
            )
        self._show_backups()

    def heard(self, command: str, output: str) -> None:
        """The simulator got `command`: show it and the interesting part of its answer."""
        self._show_backups()
        tag = "verify" if command.startswith("pjsip show transport") else "asterisk"
        lines = [line.strip() for line in output.splitlines() if line.strip()]
        if tag == "verify":
            lines = [line for line in lines if line.startswith("external_")]
        tell(tag, f"ipwatch -> {LABEL}: {command}")
        for line in lines:
            tell("", f"  {line}")

    @contextlib.contextmanager
    def _narrated_log(self) -> Iterator[None]:
        """Show ipwatch's own log lines while it applies (the CLI does not configure logging)."""
        handler = _Narration(self)
        saved = log.level, log.propagate
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
        try:
            yield
        finally:
            log.removeHandler(handler)
            log.setLevel(saved[0])
            log.propagate = saved[1]

    def logged(self, message: str) -> None:
        if message.startswith(f"{self.pjsip.name}:"):
            tell("write", f"log: {message}")
            self.edits_logged = True
            return
        self._show_backups()
        if message.startswith("hook "):
            tell("hooks", f"log: {message}")
            self._show_hook_output()
        else:
            tell("verify" if "verified" in message else "asterisk", f"log: {message}")

    def _show_backups(self) -> None:
        if not self.edits_logged:
            return
        for path in self.written:
            backup = backup_path(self.writer.state_dir / "backups", Path(os.path.realpath(path)))
            tell("write", "written atomically (temp file, fsync, rename, fsync of the directory);")
            tell("", f"the previous version is kept in {backup}")
        self.written = []
        self.edits_logged = False

    def _show_hook_output(self) -> None:
        lines = self.hook_output.read_text().splitlines() if self.hook_output.exists() else []
        for line in lines[self.hook_lines_shown :]:
            tell("", f"the hook wrote: {line}")
        self.hook_lines_shown = len(lines)


class _Narration(logging.Handler):
    def __init__(self, stepper: _Stepper) -> None:
        super().__init__(logging.INFO)
        self.stepper = stepper

    def emit(self, record: logging.LogRecord) -> None:
        self.stepper.logged(record.getMessage())


def _explain_versions() -> None:
    """What ipwatch sends depends on the Asterisk version (asterisk.apply = "auto")."""
    verify = "pjsip show transport (verify)"
    say("", "The commands depend on Asterisk's version (it says it in its greeting):")
    for version in ("20.11.0", "16.10.0"):
        if choose_action("auto", version, {"pjsip"}) == "reload":
            steps = ["module reload res_pjsip.so", "pjsip send register *all", verify]
        else:
            steps = ["core show channels count (until no calls, or `drain` runs out)"]
            steps += ["core restart now", verify]
        say(f"  Asterisk {version}: " + "; ".join(steps))
    say(
        "  (before 16.18 a reload shows the new external_* values but keeps using the old ones).",
        "  Had Asterisk not shown the new values, ipwatch would have put the backup back and",
        "  told Asterisk again, and raised an `error` event instead of `applied`.",
    )


def explain(decision: Decision, confirm: int) -> str:
    """One line on what the decision engine concluded and why."""
    tracking = decision.tracking
    votes = _votes(decision)
    if decision.winner is None:
        return f"no quorum ({votes}); keeping {tracking.address or 'nothing'}"
    if decision.changed:
        before = decision.previous or "no address yet"
        return f"ipv4 {before} -> {tracking.address} confirmed ({votes})"
    if decision.confirmed:
        return f"{tracking.address} confirmed again ({votes})"
    quorum = f"{tracking.candidate} has a quorum ({votes})"
    return f"{quorum}; candidate, round {tracking.rounds} of {confirm}; nothing is done yet"


def _votes(decision: Decision) -> str:
    """The winner's votes among the acceptable answers, which are what a majority is taken of
    (decide.py): a rejected answer does not count, so "2/4" would look like no majority."""
    acceptable = sum(verdict.acceptable for verdict in decision.verdicts)
    return f"{decision.votes} of {acceptable} acceptable answers agree"


def tell(tag: str, text: str) -> None:
    """One line of the apply trace: `[tag]` names the step, an empty tag continues the last."""
    label = f"[{tag}]" if tag else ""
    say(f"  {label:<10} {text}")


def say(*lines: str) -> None:
    print("\n".join(lines), flush=True)


@contextlib.contextmanager
def _responders(count: int) -> Iterator[list[StunResponder]]:
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(StunResponder()) for _ in range(count)]


def _set(servers: list[StunResponder], address: str) -> None:
    for server in servers:
        server.answer = address
