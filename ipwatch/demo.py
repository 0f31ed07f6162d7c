"""`ipwatch demo`: the whole observe → decide cycle, offline, on loopback, narrated step by step.

Real STUN servers (ipwatch's own loopback responder) stand in for the Internet; the real STUN
client, decision engine and report code do the work, so what the demo shows is what the daemon does.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ipwatch import config as config_module
from ipwatch.asterisk.conf import load_tree
from ipwatch.asterisk.control import choose_action
from ipwatch.config import Config, TargetConfig
from ipwatch.decide import Decision, Tracking, decide
from ipwatch.files import apply_changes
from ipwatch.observe import observe
from ipwatch.plan import Loaded, Plan, make_plan
from ipwatch.report import format_sources
from ipwatch.rounds import policy_of, summary
from ipwatch.stun_responder import StunResponder

FIRST, SECOND, FLAP, LIE = "203.0.113.5", "203.0.113.7", "203.0.113.9", "203.0.113.66"
LAN_ADDRESS = "192.168.1.1"


def run_demo() -> int:
    say(
        "ipwatch demo: everything runs on this machine (loopback), nothing goes to the Internet.",
        "",
        "ipwatch asks several independent sources for the router's public address, and acts only",
        "when enough of them agree for several rounds in a row. Here three loopback STUN servers",
        "play the Internet, and a fourth, misconfigured source reports the router's LAN address.",
    )
    with _responders(4) as servers:
        config = _demo_config(servers)
        internet, misconfigured = servers[:3], servers[3]
        _set(internet, FIRST)
        misconfigured.answer = LAN_ADDRESS
        say(
            "",
            f"Config: confirm = {config.confirm} rounds, quorum = {config.quorum!r}, "
            'accept = ["203.0.113.0/24"] (a documentation range, so the demo may use it).',
        )
        tracking = Tracking()
        step = _Stepper(config)
        tracking = step.round(tracking, "Round 1: every source is asked at the same time.")
        tracking = step.round(tracking, "Round 2: they still agree, so the address is confirmed.")

        _set(internet, SECOND)
        say("", f"The ISP changes the address: the STUN servers now answer {SECOND}.")
        tracking = step.round(tracking, "Round 3: a new candidate; one round is not enough.")
        tracking = step.round(tracking, "Round 4: the second agreeing round confirms the change.")
        assert tracking.address is not None
        _rewrite(tracking.address)

        _set(internet, FLAP)
        say("", f"The line flaps: for one round the servers answer {FLAP} ...")
        tracking = step.round(tracking, "Round 5: a candidate again.")
        _set(internet, SECOND)
        tracking = step.round(tracking, f"Round 6: ... and {SECOND} is back, so nothing changes.")

        internet[0].answer = LIE
        say("", f"One server lies and says {LIE}.")
        tracking = step.round(tracking, "Round 7: a minority never wins; the address stays.")
    say(
        "",
        f"Result: {tracking.address}, with {step.changes} confirmed changes in 7 rounds. Next:",
        "`ipwatch sources` shows what each of your sources answers; `ipwatch plan` shows the",
        "diff for your Asterisk files; `ipwatch check --apply` confirms and rewrites them.",
    )
    return 0


EXAMPLE_PJSIP = f"""\
; An example pjsip.conf, as an admin wrote it: comments and layout are kept byte for byte.
[transport-udp-nat]
type = transport
protocol = udp
bind = 0.0.0.0:5060
local_net = 192.168.1.0/24
external_media_address = {FIRST}      ; the router's public address
external_signaling_address = {FIRST}

[6001]
type = endpoint
transport = transport-udp-nat
"""


def _rewrite(address: str) -> None:
    """Plan and apply the new address on a temporary copy of an example pjsip.conf."""
    with tempfile.TemporaryDirectory(prefix="ipwatch-demo-") as temp:
        directory = Path(temp)
        pjsip = directory / "pjsip.conf"
        pjsip.write_text(EXAMPLE_PJSIP)
        target = TargetConfig(kind="pjsip", file=str(pjsip))
        plan = make_plan([Loaded(target, load_tree(pjsip), None)], {"ipv4": address})
        say("", f"Plan: the transports of {pjsip} that set external_* must now say {address}:")
        say(*("  " + line for line in plan.diff().splitlines()))
        applied = apply_changes(plan.changes, directory / "state" / "backups")
        again = make_plan([Loaded(target, load_tree(pjsip), None)], {"ipv4": address})
        say(
            "Apply: written atomically (temp file, fsync, rename, fsync of the directory), owner",
            f"and mode kept, the old version kept in {applied.backups[0]}.",
            f"A second plan: {'in sync, nothing to write' if again.in_sync else again.diff()}.",
        )
        _explain_control(plan)


def _explain_control(plan: Plan) -> None:
    """What ipwatch would tell Asterisk next (no Asterisk runs in the demo)."""
    transports = sorted({t for target in plan.targets for t in target.expected})
    verify = [f"pjsip show transport {name}" for name in transports]
    say("", "Next ipwatch tells Asterisk, over AMI or its console socket (not run in the demo):")
    for version in ("20.11.0", "16.10.0"):
        action = choose_action("auto", version, {"pjsip"})
        if action == "reload":
            steps = ["module reload res_pjsip.so", "pjsip send register *all", *verify]
        else:
            steps = [
                "core show channels count (until 0 calls, or `drain` runs out)",
                "core restart now",
                *verify,
            ]
        say(f"  Asterisk {version} -> {action}: " + "; ".join(steps))
    say(
        "  Should Asterisk not show the new values, the files are rolled back and it is told again."
    )


class _Stepper:
    """Runs one narrated round and prints what was observed and decided."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.changes = 0

    def round(self, tracking: Tracking, title: str) -> Tracking:
        decision = decide(
            "ipv4", observe(self.config.sources, "ipv4"), tracking, policy_of(self.config)
        )
        say(
            "",
            title,
            *format_sources(summary(decision)["sources"]),
            f"  decide: {explain(decision, self.config.confirm)}",
        )
        self.changes += decision.changed
        return decision.tracking


def explain(decision: Decision, confirm: int) -> str:
    """One line on what the decision engine concluded and why."""
    tracking = decision.tracking
    if decision.winner is None:
        return f"no quorum ({decision.agreement} agree); keeping {tracking.address or 'nothing'}"
    if decision.changed:
        before = decision.previous or "no address yet"
        return f"ipv4 {before} -> {tracking.address} confirmed ({decision.agreement} sources)"
    if decision.confirmed:
        return f"{tracking.address} confirmed again ({decision.agreement} sources); nothing to do"
    quorum = f"{tracking.candidate} has a quorum ({decision.agreement})"
    return f"{quorum}; candidate, round {tracking.rounds} of {confirm}"


def say(*lines: str) -> None:
    print("\n".join(lines), flush=True)


@contextlib.contextmanager
def _responders(count: int) -> Iterator[list[StunResponder]]:
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(StunResponder()) for _ in range(count)]


def _set(servers: list[StunResponder], address: str) -> None:
    for server in servers:
        server.answer = address


def _demo_config(servers: list[StunResponder]) -> Config:
    names = ["stun-a", "stun-b", "stun-c", "misconfigured"]
    sources = [
        {"kind": "stun", "name": name, "servers": [f"127.0.0.1:{server.port}"], "timeout": "1s"}
        for name, server in zip(names, servers, strict=True)
    ]
    return config_module.parse(
        {"confirm": 2, "accept": ["203.0.113.0/24"], "source": sources}, "<demo>"
    )
