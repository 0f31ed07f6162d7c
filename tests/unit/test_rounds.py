"""Per-source backoff in the daemon's rounds (pure: the time is passed in)."""

from __future__ import annotations

from ipwatch.config import SourceConfig
from ipwatch.decide import Observation
from ipwatch.rounds import Backoff

SOURCES = [SourceConfig("stun", "good", 1.0, None), SourceConfig("stun", "bad", 1.0, None)]


def failed(name: str) -> Observation:
    return Observation(name, "stun", None, 5.0, "timed out")


def answered(name: str) -> Observation:
    return Observation(name, "stun", "81.2.69.160", 5.0)


def asked_at(backoff: Backoff, times: list[float]) -> list[float]:
    """The times among `times` at which the failing source was asked (and failed again)."""
    asked = []
    for now in times:
        due, waiting = backoff.split(SOURCES, "ipv4", now)
        names = [source.name for source in due]
        assert "good" in names and all(w.name == "bad" for w in waiting)
        if "bad" in names:
            asked.append(now)
            backoff.record([answered("good"), failed("bad")], "ipv4", now)
        else:
            assert waiting[0].error == "timed out (failing; asked again later)"
            backoff.record([answered("good")], "ipv4", now)
    return asked


def test_a_failing_source_is_asked_ever_less_often_up_to_the_cap() -> None:
    backoff = Backoff(first=2.0, cap=30.0)
    times = [2.0 * n for n in range(60)]
    # Gaps 2, 4, 8, 14, then 26: never more than the cap (30) even with the rounds' jitter.
    assert asked_at(backoff, times) == [0, 2, 6, 14, 28, 54, 80, 106]


def test_an_answer_ends_the_backoff() -> None:
    backoff = Backoff(first=2.0, cap=30.0)
    for now in (0.0, 2.0, 6.0):
        backoff.record([failed("bad")], "ipv4", now)
    backoff.record([answered("bad")], "ipv4", 6.5)
    due, waiting = backoff.split(SOURCES, "ipv4", 7.0)
    assert [s.name for s in due] == ["good", "bad"] and not waiting


def test_families_back_off_separately() -> None:
    backoff = Backoff(first=2.0, cap=30.0)
    for now in (0.0, 2.0):
        backoff.record([failed("bad")], "ipv6", now)
    assert [s.name for s in backoff.split(SOURCES, "ipv4", 3.0)[0]] == ["good", "bad"]
    assert [s.name for s in backoff.split(SOURCES, "ipv6", 3.0)[0]] == ["good"]
