"""The decision engine: policy, quorum, confirmation; pure, so tested over generated rounds."""

from __future__ import annotations

import ipaddress
import itertools

from hypothesis import given
from hypothesis import strategies as st

from ipwatch.decide import Observation, Policy, Tracking, decide

PUBLIC = ["8.8.8.8", "1.1.1.1", "9.9.9.9", "81.2.69.160"]


def said(
    name: str, answer: str | None, kind: str = "stun", error: str | None = None
) -> Observation:
    return Observation(name, kind, answer, 10.0, error)


def round_of(*answers: str | None) -> list[Observation]:
    return [said(f"s{i}", a, error=None if a else "timeout") for i, a in enumerate(answers)]


def test_agreeing_sources_confirm_after_confirm_rounds() -> None:
    policy = Policy(confirm=2)
    first = decide("ipv4", round_of("8.8.8.8", "8.8.8.8"), Tracking(), policy)
    assert (first.winner, first.confirmed, first.changed) == ("8.8.8.8", False, False)
    assert first.tracking == Tracking(address=None, candidate="8.8.8.8", rounds=1)
    second = decide("ipv4", round_of("8.8.8.8", "8.8.8.8"), first.tracking, policy)
    assert (second.confirmed, second.changed, second.previous) == (True, True, None)
    assert second.tracking == Tracking(address="8.8.8.8")


def test_change_reports_previous_address() -> None:
    decision = decide(
        "ipv4", round_of("1.1.1.1"), Tracking("8.8.8.8", "1.1.1.1", 1), Policy(confirm=2)
    )
    assert (
        decision.changed
        and decision.previous == "8.8.8.8"
        and decision.tracking.address == "1.1.1.1"
    )


def test_private_answer_is_rejected_and_does_not_count() -> None:
    decision = decide(
        "ipv4", round_of("8.8.8.8", "10.1.2.3", "8.8.8.8"), Tracking("8.8.8.8"), Policy()
    )
    rejected = {v.name: v.rejected for v in decision.verdicts}
    assert rejected == {"s0": None, "s1": "private address (RFC 1918)", "s2": None}
    assert decision.confirmed and decision.agreement == "2/3"
    assert [v.agrees for v in decision.verdicts] == [True, False, True]


def test_documentation_range_is_rejected_unless_accepted() -> None:
    observations = round_of("203.0.113.7")
    assert decide("ipv4", observations, Tracking(), Policy(confirm=1)).winner is None
    accepted = Policy(confirm=1, accept=(ipaddress.ip_network("203.0.113.0/24"),))
    assert decide("ipv4", observations, Tracking(), accepted).tracking.address == "203.0.113.7"


def test_wrong_family_and_garbage_are_rejected() -> None:
    decision = decide("ipv4", round_of("2001:4860::8888", "not-an-ip"), Tracking(), Policy())
    assert decision.verdicts[0].rejected == "an ipv6 address where ipv4 was asked"
    assert decision.verdicts[1].rejected == "not an IP address: 'not-an-ip'"
    assert decision.verdicts[1].address is None
    assert decision.winner is None


def test_round_without_quorum_breaks_the_confirmation_row() -> None:
    policy = Policy(confirm=2)
    candidate = decide("ipv4", round_of("1.1.1.1", "1.1.1.1"), Tracking("8.8.8.8"), policy).tracking
    split = decide("ipv4", round_of("1.1.1.1", "9.9.9.9"), candidate, policy)
    assert split.winner is None and split.tracking == Tracking("8.8.8.8")
    again = decide("ipv4", round_of("1.1.1.1", "1.1.1.1"), split.tracking, policy)
    assert not again.changed and again.tracking.rounds == 1


def test_integer_quorum_needs_that_many_agreeing_sources() -> None:
    policy = Policy(quorum=2, confirm=1)
    assert decide("ipv4", round_of("8.8.8.8", None, None), Tracking(), policy).winner is None
    assert (
        decide("ipv4", round_of("8.8.8.8", "8.8.8.8", None), Tracking(), policy).winner == "8.8.8.8"
    )


def test_tie_has_no_winner_even_when_both_meet_an_integer_quorum() -> None:
    decision = decide(
        "ipv4", round_of("8.8.8.8", "8.8.8.8", "1.1.1.1", "1.1.1.1"), Tracking(), Policy(quorum=2)
    )
    assert decision.winner is None


def test_cgnat_router_address_gives_a_hint() -> None:
    observations = [said("stun-1", "81.2.69.160"), said("router", "100.64.3.4", kind="natpmp")]
    decision = decide("ipv4", observations, Tracking("81.2.69.160"), Policy())
    assert decision.confirmed
    assert (
        decision.hint is not None
        and "carrier-grade NAT" in decision.hint
        and "100.64.3.4" in decision.hint
    )


def test_router_behind_another_nat_gives_a_hint() -> None:
    observations = [
        said("stun-1", "81.2.69.160"),
        said("stun-2", "81.2.69.160"),
        said("igd", "1.1.1.1", "upnp"),
    ]
    decision = decide("ipv4", observations, Tracking("81.2.69.160"), Policy())
    assert decision.hint is not None and "behind another NAT" in decision.hint


def test_private_interface_address_is_no_nat_hint() -> None:
    observations = [said("stun-1", "81.2.69.160"), said("eth0", "192.168.1.10", kind="interface")]
    assert decide("ipv4", observations, Tracking(), Policy()).hint is None


# --- properties -----------------------------------------------------------------------------

addresses = st.sampled_from(PUBLIC)
rounds_of_answers = st.lists(
    st.lists(st.one_of(st.none(), addresses), min_size=1, max_size=5), max_size=40
)


@given(rounds_of_answers, st.integers(min_value=1, max_value=4))
def test_changes_are_at_least_a_confirmation_window_apart(
    rounds: list[list[str | None]], confirm: int
) -> None:
    """A flapping sequence never yields two changes inside one confirmation window."""
    tracking, change_rounds = Tracking(), []
    for number, answers in enumerate(rounds):
        decision = decide("ipv4", round_of(*answers), tracking, Policy(confirm=confirm))
        if decision.changed:
            change_rounds.append(number)
        tracking = decision.tracking
    assert all(later - earlier >= confirm for earlier, later in itertools.pairwise(change_rounds))


@given(
    honest=st.integers(min_value=1, max_value=6),
    liars=st.lists(addresses, max_size=6),
    truth=addresses,
)
def test_a_lying_minority_never_wins(honest: int, liars: list[str], truth: str) -> None:
    liars = [lie for lie in liars if lie != truth][: honest - 1 if honest > 1 else 0]
    observations = round_of(*([truth] * honest), *liars)
    decision = decide("ipv4", observations, Tracking(truth), Policy(confirm=1))
    assert decision.winner == truth


@given(
    st.lists(st.one_of(st.none(), addresses, st.just("10.0.0.1")), min_size=1, max_size=7),
    st.randoms(),
)
def test_the_result_does_not_depend_on_source_order(
    answers: list[str | None], random: object
) -> None:
    observations = round_of(*answers)
    shuffled = list(observations)
    random.shuffle(shuffled)  # type: ignore[attr-defined]
    for policy in (Policy(confirm=1), Policy(quorum=2, confirm=1)):
        one, other = (decide("ipv4", o, Tracking(), policy) for o in (observations, shuffled))
        assert (one.winner, one.votes, one.tracking) == (other.winner, other.votes, other.tracking)
        assert sorted(one.verdicts, key=lambda v: v.name) == sorted(
            other.verdicts, key=lambda v: v.name
        )


def test_a_router_without_a_public_address_explains_cgnat() -> None:
    observations = [
        Observation("stun-1", "stun", "81.2.69.160", 10.0),
        Observation("stun-2", "stun", "81.2.69.160", 10.0),
        Observation("natpmp-1", "natpmp", None, 1.0, "result 3", no_public_address=True),
    ]
    decision = decide("ipv4", observations, Tracking(), Policy(confirm=1))
    assert decision.winner == "81.2.69.160"
    assert decision.hint is not None
    assert "natpmp-1 (natpmp) says the router has no public address" in decision.hint
    assert "carrier-grade NAT" in decision.hint


def test_a_router_that_merely_fails_gives_no_hint() -> None:
    observations = [
        Observation("stun-1", "stun", "81.2.69.160", 10.0),
        Observation("natpmp-1", "natpmp", None, 1.0, "no NAT-PMP answer"),
    ]
    assert decide("ipv4", observations, Tracking(), Policy(confirm=1)).hint is None
