"""Decide the public address from one round of answers: policy, quorum, confirmation. Pure.

An address is *confirmed* when at least `quorum` sources agree on it in `confirm` rounds in a
row. A round without a quorum breaks the row, so a flapping WAN never causes a change: two
changes are always at least `confirm` rounds apart.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from dataclasses import dataclass, replace
from typing import Literal

from ipwatch.addresses import Family, IPNetwork, check_answer, parse_address
from ipwatch.sources import LOCAL_KINDS

ROUTER_KINDS = frozenset({"natpmp", "upnp"})
_CGNAT = ipaddress.ip_network("100.64.0.0/10")


@dataclass(frozen=True)
class Policy:
    quorum: int | Literal["majority"] = "majority"
    confirm: int = 2
    accept: tuple[IPNetwork, ...] = ()


@dataclass(frozen=True)
class Observation:
    """What one source said in one round: its raw answer, or the error that prevented one."""

    name: str
    kind: str
    answer: str | None
    latency_ms: float | None
    error: str | None = None
    no_public_address: bool = False  # a router said its own WAN address is not public


@dataclass(frozen=True)
class Verdict:
    """One source's answer after the address policy; `agrees` when it voted for the winner."""

    name: str
    kind: str
    address: str | None
    latency_ms: float | None
    error: str | None
    rejected: str | None
    agrees: bool
    no_public_address: bool = False

    @property
    def acceptable(self) -> bool:
        return self.address is not None and self.error is None and self.rejected is None


@dataclass(frozen=True)
class Tracking:
    """What decide carries from round to round for one family (kept in the state file)."""

    address: str | None = None
    candidate: str | None = None
    rounds: int = 0


@dataclass(frozen=True)
class Decision:
    family: Family
    tracking: Tracking
    winner: str | None
    votes: int
    verdicts: tuple[Verdict, ...]
    changed: bool
    previous: str | None
    hint: str | None

    @property
    def confirmed(self) -> bool:
        """This round's quorum agrees with the confirmed address."""
        return self.winner is not None and self.winner == self.tracking.address

    @property
    def agreement(self) -> str:
        return f"{self.votes}/{len(self.verdicts)}"


def decide(
    family: Family, observations: list[Observation], tracking: Tracking, policy: Policy
) -> Decision:
    """Given one round's observations and the tracking so far, return the round's decision."""
    judged = [_judge(o, family, policy.accept) for o in observations]
    winner, votes = _quorum_winner(judged, policy.quorum)
    verdicts = tuple(replace(v, agrees=v.acceptable and v.address == winner) for v in judged)
    new_tracking = _advance(tracking, winner, policy.confirm)
    changed = new_tracking.address != tracking.address
    return Decision(
        family=family,
        tracking=new_tracking,
        winner=winner,
        votes=votes,
        verdicts=verdicts,
        changed=changed,
        previous=tracking.address if changed else None,
        hint=_nat_hint(verdicts, winner),
    )


def _judge(observation: Observation, family: Family, accept: tuple[IPNetwork, ...]) -> Verdict:
    address, rejected = None, None
    if observation.error is None and observation.answer is not None:
        address, rejected = check_answer(observation.answer, family, accept)
    error = observation.error
    if error is None and observation.answer is None:
        error = "no answer"
    return Verdict(
        observation.name,
        observation.kind,
        address,
        observation.latency_ms,
        error,
        rejected,
        False,
        observation.no_public_address,
    )


def required_votes(quorum: int | Literal["majority"], acceptable: int) -> int:
    return acceptable // 2 + 1 if quorum == "majority" else quorum


def _quorum_winner(
    verdicts: list[Verdict], quorum: int | Literal["majority"]
) -> tuple[str | None, int]:
    """Return the address enough sources agree on (None on no quorum or a tie), and its votes."""
    counts = Counter(v.address for v in verdicts if v.acceptable)
    if not counts:
        return None, 0
    ranked = sorted(counts.values(), reverse=True)
    best_votes = ranked[0]
    if len(ranked) > 1 and ranked[1] == best_votes:
        return None, best_votes
    if best_votes < required_votes(quorum, sum(ranked)):
        return None, best_votes
    winner = next(address for address, votes in counts.items() if votes == best_votes)
    return winner, best_votes


def _advance(tracking: Tracking, winner: str | None, confirm: int) -> Tracking:
    if winner is None or winner == tracking.address:
        return Tracking(address=tracking.address)
    rounds = tracking.rounds + 1 if winner == tracking.candidate else 1
    if rounds >= confirm:
        return Tracking(address=winner)
    return Tracking(address=tracking.address, candidate=winner, rounds=rounds)


def _nat_hint(verdicts: tuple[Verdict, ...], winner: str | None) -> str | None:
    """Explain a router or interface that sees another address than the Internet does."""
    outside = [v for v in verdicts if v.agrees and v.kind not in LOCAL_KINDS]
    if winner is None or not outside:
        return None
    for verdict in verdicts:
        if verdict.no_public_address:
            return (
                f"{verdict.name} ({verdict.kind}) says the router has no public address while"
                f" {outside[0].name} sees {winner}: the router is behind carrier-grade NAT or"
                " another NAT, so forwarding ports on it alone will not reach Asterisk"
            )
        if verdict.kind not in LOCAL_KINDS or verdict.address in (None, winner):
            continue
        assert verdict.address is not None
        seen = f"{verdict.name} ({verdict.kind}) reports {verdict.address}"
        seen += f" while {outside[0].name} sees {winner}"
        if parse_address(verdict.address) in _CGNAT:
            return (
                f"{seen}: your ISP uses carrier-grade NAT (100.64.0.0/10), so port forwarding"
                " on your router alone will not reach Asterisk"
            )
        if verdict.kind in ROUTER_KINDS:
            return (
                f"{seen}: the router is behind another NAT, so forwarding ports on it is not enough"
            )
    return None
