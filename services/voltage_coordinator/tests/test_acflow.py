"""The IEEE 123 peak PV step through the OpenDSS AC power flow, before and after curtailment."""

from __future__ import annotations

import numpy as np
import pytest

from voltage_coordinator.acflow import AcFlow
from voltage_coordinator.correction import solve_ac_corrected
from voltage_coordinator.feeder import Feeder
from voltage_coordinator.network import compile_tree
from voltage_coordinator.optimizer import CentralisedSolver, Limits, StepInputs, linear_voltages


@pytest.fixture(scope="module")
def ac(ieee123: Feeder) -> AcFlow:
    return AcFlow(ieee123)


def test_peak_step_violates_without_control_and_holds_after(
    ieee123: Feeder, ac: AcFlow, peak: tuple[float, dict[str, float]]
) -> None:
    load, avail = peak
    before = ac.solve(load, avail)
    assert before.converged
    assert before.max_pu > 1.07
    assert before.nodes_above(1.05) > 200

    solver = CentralisedSolver(ieee123, limits=Limits(margin_pu=0.0))
    fixed = solve_ac_corrected(solver.solve, ac, solver.tree, StepInputs(load, avail))
    assert fixed.ac.converged
    assert fixed.ac.max_pu <= 1.05 + 1e-9
    assert fixed.ac.nodes_above(1.05) == 0
    assert fixed.ac.max_pu > 1.049  # tight: no needless curtailment
    fractions = set(round(f, 9) for f in fixed.curtailment.fraction.values())
    assert len(fractions) == 1  # equal fraction for the whole feeder


def test_linear_model_tracks_the_ac_flow(
    ieee123: Feeder, ac: AcFlow, peak: tuple[float, dict[str, float]]
) -> None:
    load, avail = peak
    tree = compile_tree(ieee123)
    v_lin = linear_voltages(ieee123, tree, load, avail)
    v_ac = ac.solve(load, avail).vector(tree)
    assert np.max(np.abs(v_ac - v_lin)) < 0.005


def test_limits_are_applied_per_pv(ieee123: Feeder, ac: AcFlow) -> None:
    none = ac.solve(0.5, {})
    full = ac.solve(0.5, {pv.id: pv.rating_kw for pv in ieee123.pvs})
    assert full.max_pu > none.max_pu + 0.01
