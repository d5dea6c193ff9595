"""The feeder simulation: PV limits with TTL and priority, states, reverting when limits lapse."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from derbus.messages import PvCurtailmentSet
from derbus.messages.control import Priority
from voltage_coordinator.feeder import Feeder
from voltage_coordinator.simulation import FeederSimulation

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def sim(ieee123: Feeder) -> Iterator[FeederSimulation]:
    simulation = FeederSimulation(ieee123, start_step=58, hold_step=True)
    yield simulation
    simulation.close()


def test_limits_cap_outputs_until_the_ttl_lapses(sim: FeederSimulation) -> None:
    state = sim.solve(T0)
    assert state.step == 58
    assert state.pv_output_kw == pytest.approx(state.pv_available_kw)
    v_before = max(v for vs in state.v_pu.values() for v in vs if v is not None)
    batch = PvCurtailmentSet(
        ts=T0,
        source="t",
        feeder_id="ieee123",
        ttl_s=60,
        limits_kw={pid: 0.2 * kw for pid, kw in state.pv_available_kw.items()},
        priority=Priority.GRID_OPERATOR,
    )
    ack = sim.apply(batch, T0)
    assert ack.status == "accepted"
    curtailed = sim.solve(T0 + timedelta(seconds=1))
    assert curtailed.pv_output_kw["pv2"] == pytest.approx(0.2 * state.pv_available_kw["pv2"])
    v_after = max(v for vs in curtailed.v_pu.values() for v in vs if v is not None)
    assert v_after < v_before - 0.01
    lapsed = sim.solve(T0 + timedelta(seconds=61))
    assert lapsed.pv_output_kw["pv2"] == pytest.approx(state.pv_available_kw["pv2"])


def test_unknown_pv_and_out_of_range_are_rejected(sim: FeederSimulation) -> None:
    batch = PvCurtailmentSet(
        ts=T0, source="t", feeder_id="ieee123", ttl_s=60, limits_kw={"pv2": 999.0, "nope": 1.0}
    )
    ack = sim.apply(batch, T0)
    assert ack.status == "rejected"
    assert "nope: unknown PV" in (ack.reason or "")
    assert "pv2" in (ack.reason or "")
