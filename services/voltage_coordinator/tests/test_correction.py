"""The AC bias settled inside one decision: no overshoot from a cold start, for every rule."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from derbus.messages import FeederState
from voltage_coordinator.acflow import AcFlow
from voltage_coordinator.coordinator import Coordinator
from voltage_coordinator.feeder import Feeder
from voltage_coordinator.settings import Settings
from voltage_coordinator.sweep import RULES as RULES_BY_CODE

RULES = list(RULES_BY_CODE.values())  # every fairness rule and group


@pytest.fixture(scope="module")
def ac(ieee123: Feeder) -> Iterator[AcFlow]:
    flow = AcFlow(ieee123)
    yield flow
    flow.close()


@pytest.fixture(scope="module")
def cold(ieee123: Feeder, ac: AcFlow) -> FeederState:
    """The peak step measured with no limit in force (a restart, or a lapsed TTL)."""
    step = 58
    load = ieee123.profiles.load[step]
    avail = {pv.id: pv.rating_kw * ieee123.profiles.pv[step] for pv in ieee123.pvs}
    measured = ac.solve(load, avail)
    return FeederState(
        ts=datetime(2026, 6, 1, 12, 0, tzinfo=UTC), source="test", feeder_id="ieee123",
        step=step, v_pu=measured.by_bus(), pv_available_kw=avail, pv_output_kw=avail,
        load_p_kw=ieee123.total_load_kw * load,
    )  # fmt: skip


def _after(feeder: Feeder, ac: AcFlow, state: FeederState, limits_kw: dict[str, float]) -> float:
    out = {p: min(a, limits_kw[p]) for p, a in state.pv_available_kw.items()}
    return ac.solve(feeder.profiles.load[state.step], out).max_pu


@pytest.mark.parametrize(("fairness", "group_by"), RULES)
def test_first_decision_from_a_cold_start_holds_in_ac(
    ieee123: Feeder, ac: AcFlow, cold: FeederState, fairness: str, group_by: str
) -> None:
    settings = Settings(mode="distributed", fairness=fairness, group_by=group_by)  # type: ignore[arg-type]
    decision = Coordinator(ieee123, settings, model=ac).decide(cold)
    assert decision.settled
    assert decision.curtailment.bias_rounds >= 2  # the bias moved with the curtailment
    v_after = _after(ieee123, ac, cold, decision.limits_kw)
    assert v_after <= 1.05
    assert v_after > 1.05 - settings.margin_pu - 1e-4  # not curtailing much more than needed
    assert float(decision.predicted_pu.max()) == pytest.approx(v_after, abs=2e-5)


def test_the_measured_bias_alone_overshoots_from_a_cold_start(
    ieee123: Feeder, ac: AcFlow, cold: FeederState
) -> None:
    """What `settle` fixes: the bias measured at the uncurtailed point raises the limit."""
    coordinator = Coordinator(ieee123, Settings(mode="distributed"), model=ac)
    assert coordinator.sweep is not None
    inputs = coordinator.inputs(cold)
    assert inputs.v_bias_pu is not None
    assert inputs.v_bias_pu.min() < -1e-3
    once = coordinator.sweep.solve(inputs)  # one decision on the measured bias, no fixed point
    assert _after(ieee123, ac, cold, once.limit_kw) > 1.05


def test_without_a_model_the_bias_is_bounded_conservatively(
    ieee123: Feeder, ac: AcFlow, cold: FeederState
) -> None:
    settings = Settings(mode="distributed", ac_model=False)
    coordinator = Coordinator(ieee123, settings)
    assert coordinator.model is None
    decision = coordinator.decide(cold)
    assert decision.curtailment.bias_rounds == 1
    assert decision.bias_pu.min() >= 0.0  # a negative bias is not used
    assert _after(ieee123, ac, cold, decision.limits_kw) <= 1.05
