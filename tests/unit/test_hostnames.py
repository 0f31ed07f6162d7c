"""Host names: judging, waiting with a deadline, the state kept, and what `status` says."""

from __future__ import annotations

from ipwatch import hostnames, status
from ipwatch.asterisk.targets import HostName

NAME = "pbx.example.org"
PJSIP = hostnames.Wanted(
    HostName(NAME, "ipv4", "/etc/asterisk/pjsip.conf", 3, "reload"), "198.51.100.7"
)
SIP = hostnames.Wanted(
    HostName(NAME, "ipv4", "/etc/asterisk/sip.conf", 2, "sip reload"), "198.51.100.7"
)


def test_judge_names_the_record_and_the_missing_refresh() -> None:
    old = {NAME: frozenset({"198.51.100.5"})}
    new = {NAME: frozenset({"198.51.100.7"})}
    assert hostnames.judge([PJSIP], old, {}) == [
        f"{NAME} resolves to 198.51.100.5, not 198.51.100.7"
    ]
    assert hostnames.judge([PJSIP], new, {}) == [
        f"Asterisk has not resolved {NAME} again since it moved to 198.51.100.7"
    ]
    assert hostnames.judge([PJSIP], new, {NAME: {"refreshed": "198.51.100.7"}}) == []
    assert hostnames.judge([SIP], new, {}) == []  # `sip show settings` verifies chan_sip


def test_wait_polls_until_the_name_moves_or_the_deadline() -> None:
    now = [0.0]
    answers = iter([{"198.51.100.5"}, {"198.51.100.5"}, {"198.51.100.7"}])
    said: list[str] = []

    def resolve(name: str, family: str) -> frozenset[str]:
        return frozenset(next(answers))

    def sleep(seconds: float) -> None:
        now[0] += seconds

    resolved = hostnames.wait([PJSIP], resolve, 10, said.append, lambda: now[0], sleep)
    assert resolved == {NAME: frozenset({"198.51.100.7"})}
    assert now[0] == 2 * hostnames.POLL_SECONDS and len(said) == 2
    assert said[0].startswith(f"waiting for {NAME} to resolve to 198.51.100.7 until ")

    now[0] = 0.0
    stuck = hostnames.wait(
        [PJSIP], lambda n, f: frozenset({"198.51.100.5"}), 3, said.append, lambda: now[0], sleep
    )
    assert stuck == {NAME: frozenset({"198.51.100.5"})} and now[0] == 3


def test_status_warns_only_after_dns_wait_and_about_a_missing_refresh() -> None:
    state = hostnames.record({}, [PJSIP], {NAME: frozenset({"198.51.100.5"})}, [], 1000.0, 600.0)
    assert state[NAME]["since"] == "1970-01-01T00:16:40Z"
    base = {"version": 1, "families": {}, "changes": [], "pending": [], "daemon": None}
    early = status._name_problems(state, 1000.0 + 599)
    late = status._name_problems(state, 1000.0 + 601)
    assert early == [] and late and "longer than dns_wait" in late[0]
    # The first disagreement is kept while it lasts.
    again = hostnames.record(state, [PJSIP], {NAME: frozenset({"198.51.100.5"})}, [], 1500.0, 600.0)
    assert again[NAME]["since"] == state[NAME]["since"]
    moved = hostnames.record(again, [PJSIP], {NAME: frozenset({"198.51.100.7"})}, [], 1600.0, 600.0)
    verdict = status.evaluate({**base, "names": moved}, "/var/lib/ipwatch")
    assert verdict["exit"] == status.WARNING
    assert verdict["problems"] == [
        f"dns: Asterisk has not resolved {NAME} again since it moved to 198.51.100.7"
    ]
    done = hostnames.record(
        moved, [PJSIP], {NAME: frozenset({"198.51.100.7"})}, [NAME], 1700.0, 600.0
    )
    assert status.evaluate({**base, "names": done}, "/var/lib/ipwatch")["exit"] == status.OK
