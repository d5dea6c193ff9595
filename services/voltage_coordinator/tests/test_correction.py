"""The AC bias settled inside one decision: no overshoot from a cold start, for every rule."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import replace
from datetime import UTC, datetime

import numpy as np
import pytest

from derbus.messages import FeederState
from voltage_coordinator.acflow import AcFlow, AcResult
from voltage_coordinator.coordinator import Coordinator
from voltage_coordinator.correction import settle
from voltage_coordinator.feeder import Feeder
from voltage_coordinator.optimizer import Curtailment, StepInputs
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
        ts=datetime(2026, 6, 1, 12, 0, tzinfo=UTC),
        source="test",
        feeder_id="ieee123",
        step=step,
        v_pu=measured.by_bus(),
        pv_available_kw=avail,
        pv_output_kw=avail,
        load_p_kw=ieee123.total_load_kw * load,
    )


def _after(feeder: Feeder, ac: AcFlow, state: FeederState, limits_kw: dict[str, float]) -> float:
    out = {p: min(a, limits_kw[p]) for p, a in state.pv_available_kw.items()}
    return ac.solve(feeder.profiles.load[state.step], out).max_pu


@pytest.mark.parametrize(("fairness", "group_by"), RULES)
def test_first_decision_from_a_cold_start_holds_in_ac(
    ieee123: Feeder, ac: AcFlow, cold: FeederState, fairness: str, group_by: str
) -> None:
    settings = Settings(mode="distributed", fairness=fairness, group_by=group_by)  # type: ignore[arg-type]
    coordinator = Coordinator(ieee123, settings, model=ac)
    decision = coordinator.decide(cold)
    assert decision.settled
    assert decision.curtailment.bias_rounds >= 2  # the bias moved with the curtailment
    v_first = _after(ieee123, ac, cold, decision.limits_kw)
    assert v_first <= 1.05
    assert float(decision.predicted_pu.max()) <= 1.05
    # re-solves on the state measured under the limits before (the service's cadence) tighten
    # the conservative first decision (its residual bound shrinks with the voltage change)
    state, previous = cold, decision
    for _ in range(3):
        out = {p: min(a, previous.limits_kw[p]) for p, a in cold.pv_available_kw.items()}
        measured = ac.solve(ieee123.profiles.load[cold.step], out)
        state = state.model_copy(update={"v_pu": measured.by_bus(), "pv_output_kw": out})
        again = coordinator.decide(state)
        assert _after(ieee123, ac, cold, again.limits_kw) <= 1.05
        assert again.curtailment.curtailed_kw <= previous.curtailment.curtailed_kw + 1e-6
        previous = again
    v_last = _after(ieee123, ac, cold, previous.limits_kw)
    assert v_last > 1.05 - settings.margin_pu - 1e-4  # not curtailing much more than needed


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


class _TwoFixedPoints:
    """A stand-in decision and AC model with two fixed points of the bias: no bias → 10 kW
    curtailed (AC at `v_low`), a bias of 0.005 → 20 kW (AC 1.04); the limits tell them apart."""

    def __init__(self, tree_size: int, v_low: float) -> None:
        self.n = tree_size
        self.v_low = v_low

    def decide(self, inputs: StepInputs) -> Curtailment:
        low = inputs.v_bias_pu is None or float(np.max(inputs.v_bias_pu)) < 1e-3
        cut, v_lin = (10.0, self.v_low) if low else (20.0, 1.04 - 0.005)
        return Curtailment(
            {"pv1": cut / 100},
            {"pv1": 100.0 - cut},
            {"pv1": 100.0},
            cut,
            np.full(self.n, v_lin),
            0.0,
        )

    def solve(self, load_mult: float, pv_output_kw: Mapping[str, float]) -> AcResult:
        v = self.v_low if pv_output_kw["pv1"] > 85.0 else 1.04
        return AcResult({(str(i), 0): v for i in range(self.n)}, True, 1)


@pytest.mark.parametrize(("v_low", "kept_kw"), [(1.04, 10.0), (1.06, 20.0)])
def test_equal_kw_keeps_the_lower_fixed_point_only_when_it_holds(
    duo: Feeder, v_low: float, kept_kw: float
) -> None:
    coordinator = Coordinator(duo, Settings(fairness="equal_kw", ac_model=False))
    n = coordinator.tree.size
    stub = _TwoFixedPoints(n, v_low)
    tree = replace(coordinator.tree, nodes=[(str(i), 0) for i in range(n)])
    coordinator.tree = tree
    inputs = StepInputs(1.0, {"pv1": 100.0}, np.full(n, 0.005))
    first = settle(stub.decide, stub, duo, tree, inputs)
    assert first.converged
    assert first.curtailment.curtailed_kw == 20.0  # the fixed point near the measured bias
    kept = coordinator._lower_fixed_point(first, stub.decide, inputs, stub)
    assert kept.curtailment.curtailed_kw == kept_kw
