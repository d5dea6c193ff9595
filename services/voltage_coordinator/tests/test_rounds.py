"""The agents-mode round as a pure object: who answered, solved, timed out."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from derbus.errors import SolverError
from derbus.messages import FeederState
from voltage_coordinator.rounds import Outcome, Round
from voltage_coordinator.sweep import Rows

STATE = FeederState(
    ts=datetime(2026, 6, 1, 12, 0, tzinfo=UTC),
    source="test",
    feeder_id="duo",
    step=7,
    v_pu={},
    pv_available_kw={},
    pv_output_kw={},
)


def _rows(node: int, v0: float) -> dict[str, float]:
    return Rows(np.array([node]), np.array([v0]), np.array([[-0.1]]), np.array([1.0])).to_values(
        ["g"]
    )


def test_round_collects_every_area_then_is_solved() -> None:
    rnd = Round.start(STATE, 100.0, ["g"], ["A", "B"], round_id="r1")
    assert rnd.start_values(3) == {
        "state_ts_s": STATE.ts.timestamp(),
        "state_step": 7.0,
        "rule": 3.0,
    }
    assert rnd.offer("A", "r0", _rows(0, 1.1), True) is Outcome.IGNORED  # an older round
    assert rnd.offer("A", "r1", {"p0:x:a": 1.0}, False) is Outcome.IGNORED  # a sweep value
    assert rnd.offer("Z", "r1", _rows(0, 1.1), True) is Outcome.IGNORED  # not an area of it
    assert rnd.offer("B", "r1", _rows(5, 1.2), True) is Outcome.WAITING
    assert rnd.missing() == ["A"]
    assert rnd.offer("A", "r1", _rows(2, 1.1), True) is Outcome.SOLVED
    rows = rnd.rows()
    assert rows.node.tolist() == [2, 5]  # area order
    assert rows.weight_mw.tolist() == [2.0]


def test_round_times_out_by_the_callers_clock() -> None:
    rnd = Round.start(STATE, 100.0, ["g"], ["A"])
    assert not rnd.timed_out(119.9, 20.0)
    assert rnd.timed_out(120.0, 20.0)


def test_malformed_rows_are_refused() -> None:
    rnd = Round.start(STATE, 0.0, ["g"], ["A"], round_id="r1")
    with pytest.raises(SolverError, match="malformed"):
        rnd.offer("A", "r1", {"v:0": 1.0, "a:0:other": 1.0}, True)
    assert rnd.missing() == ["A"]
