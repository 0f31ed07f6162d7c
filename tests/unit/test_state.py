"""The state file: atomic, written only when something meaningful changed, read by `status`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ipwatch import state as state_file
from ipwatch.decide import Observation, Policy, Tracking, decide
from ipwatch.errors import StateError
from ipwatch.rounds import summary, tracking_from
from ipwatch.status import CRITICAL, OK, UNKNOWN, WARNING, evaluate

NOW = 1_800_000_000.0
KNOWN = Tracking("81.2.69.160")


def round_summary(address: str, latency: float, tracking: Tracking = KNOWN) -> dict[str, object]:
    observations = [
        Observation("stun-1", "stun", address, latency),
        Observation("stun-2", "stun", address, latency),
    ]
    return summary(decide("ipv4", observations, tracking, Policy(confirm=1)))


def test_writes_only_when_something_meaningful_changed(tmp_path: Path) -> None:
    writes = 0
    saved = state_file.load(tmp_path)
    inodes = set()
    for round_number, (address, latency) in enumerate(
        [
            ("81.2.69.160", 10.0),
            ("81.2.69.160", 12.5),
            ("81.2.69.160", 9.1),
            ("1.1.1.1", 11.0),
            ("1.1.1.1", 3.0),
        ]
    ):
        state = state_file.record_round(
            saved or state_file.empty(), "ipv4", round_summary(address, latency), NOW + round_number
        )
        writes += state_file.save_if_changed(tmp_path, state, saved)
        inodes.add(os.stat(tmp_path / "state.json").st_ino)
        saved = state_file.load(tmp_path)
    assert writes == 2  # the first round, and the change to 1.1.1.1; latencies alone write nothing
    assert len(inodes) == 2  # each write is a rename of a new file, never an in-place rewrite
    assert saved is not None
    assert [(c["old"], c["new"]) for c in saved["changes"]] == [
        (None, "81.2.69.160"),
        ("81.2.69.160", "1.1.1.1"),
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_tracking_survives_a_save_and_load(tmp_path: Path) -> None:
    pending = Tracking("81.2.69.160", candidate="1.1.1.1", rounds=1)
    observations = [Observation("stun-1", "stun", "1.1.1.1", 5.0)]
    decision = decide("ipv4", observations, pending, Policy(confirm=3))
    state = state_file.record_round(state_file.empty(), "ipv4", summary(decision), NOW)
    state_file.save_if_changed(tmp_path, state, None)
    assert tracking_from(state_file.load(tmp_path), "ipv4") == Tracking("81.2.69.160", "1.1.1.1", 2)


def test_corrupt_state_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text("{not json")
    with pytest.raises(StateError, match=r"state.json: is not valid JSON; move it away"):
        state_file.load(tmp_path)


def test_unwritable_state_dir_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StateError, match=r"cannot be written \(.*\); pass --state-dir"):
        state_file.save_if_changed(blocker / "sub", state_file.empty(), None)


def test_changes_are_bounded() -> None:
    state = state_file.empty()
    for n in range(state_file.KEPT_CHANGES + 5):
        state = state_file.record_round(state, "ipv4", {"address": f"1.1.1.{n + 1}"}, NOW + n)
    assert len(state["changes"]) == state_file.KEPT_CHANGES
    assert state["changes"][-1]["new"] == f"1.1.1.{state_file.KEPT_CHANGES + 5}"


def test_status_levels(tmp_path: Path) -> None:
    assert evaluate(None, str(tmp_path))["exit"] == UNKNOWN
    healthy = state_file.record_round(
        state_file.empty(), "ipv4", round_summary("81.2.69.160", 4.0), NOW
    )
    assert evaluate(healthy, str(tmp_path))["exit"] == OK
    lost = state_file.record_round(
        state_file.empty(), "ipv4", round_summary("10.0.0.1", 4.0, Tracking()), NOW
    )
    assert evaluate(lost, str(tmp_path))["exit"] == CRITICAL
    dead_daemon = dict(healthy, daemon={"pid": 2**22 + 1})
    result = evaluate(dead_daemon, str(tmp_path))
    assert result["exit"] == WARNING and "is not running" in result["problems"][0]
    json.dumps(result)  # the JSON form must serialise
