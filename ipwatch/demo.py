"""`ipwatch demo`: the whole observe → decide cycle, offline, on loopback, narrated step by step.

Real STUN servers (ipwatch's own loopback responder) stand in for the Internet; the real STUN
client, decision engine and report code do the work, so what the demo shows is what the daemon does.
"""

from __future__ import annotations

import contextlib
import textwrap
from collections.abc import Iterator

from ipwatch import config as config_module
from ipwatch.config import Config
from ipwatch.decide import Decision, Tracking, decide
from ipwatch.observe import observe
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
        "`ipwatch check` runs the same rounds against your sources;",
        "`ipwatch sources` shows what each source answers.",
    )
    return 0


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
    print(textwrap.dedent("\n".join(lines)), flush=True)


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
