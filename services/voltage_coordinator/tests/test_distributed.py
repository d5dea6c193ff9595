"""Distributed solvers against the centralised reference; the ADMM stopping test."""

from __future__ import annotations

import numpy as np
import pytest

from voltage_coordinator.admm import (
    AdmmOptions,
    ConsensusState,
    DistributedSolver,
    area_specs,
    stopping_test,
)
from voltage_coordinator.feeder import Feeder
from voltage_coordinator.optimizer import CentralisedSolver, Limits, StepInputs
from voltage_coordinator.sweep import Bounds, SweepSolver, combine, interval

LIMITS = Limits(v_max_pu=1.02, v_min_pu=0.9)
DUO_INPUTS = StepInputs(1.0, {"pv1": 300.0, "pv3": 250.0})


def test_two_area_split(duo: Feeder) -> None:
    specs = {s.id: s for s in area_specs(duo)}
    assert specs["A"].buses == ["s", "1"]
    assert specs["A"].ghosts == ["2"]
    assert specs["B"].buses == ["2", "3"]
    assert specs["B"].parent == "A"


def test_admm_two_areas_approaches_the_centralised_answer(duo: Feeder) -> None:
    """Consensus ADMM is slow on this splitting (see README): after 150 iterations it is within
    10 % of the reference with a primal residual cut twenty-fold; not yet at its 1e-3 target."""
    ref = CentralisedSolver(duo, "none", "feeder", LIMITS).solve(DUO_INPUTS)
    assert ref.curtailed_kw > 10  # the limit binds
    options = AdmmOptions(rho=10.0, mu=1e9, v_scale=10.0, max_iterations=150)
    dist = DistributedSolver(duo, "none", "feeder", LIMITS, options)
    result, report = dist.solve(DUO_INPUTS, warm=False)
    assert abs(result.curtailed_kw - ref.curtailed_kw) / ref.curtailed_kw < 0.1
    assert report.history[-1][0] < report.history[0][0] / 10
    assert not report.converged  # honest: the stopping test has not been met


def test_sweep_two_areas_is_exact(duo: Feeder) -> None:
    ref = CentralisedSolver(duo, limits=LIMITS).solve(DUO_INPUTS)
    result = SweepSolver(duo, LIMITS).solve(DUO_INPUTS)
    assert result.curtailed_kw == pytest.approx(ref.curtailed_kw, rel=1e-6)
    assert result.v_lin_max_pu == pytest.approx(1.02, abs=1e-6)


def test_sweep_ieee123_peak_is_exact(ieee123: Feeder, peak: tuple[float, dict[str, float]]) -> None:
    inputs = StepInputs(*peak)
    ref = CentralisedSolver(ieee123).solve(inputs)
    result = SweepSolver(ieee123).solve(inputs)
    assert result.curtailed_kw == pytest.approx(ref.curtailed_kw, rel=1e-6)
    assert len(set(result.fraction.values())) == 1  # one fraction for the feeder


def test_stopping_test_table() -> None:
    assert stopping_test(1e-6, 1e-6, 1e-5, 1e-5)
    assert not stopping_test(1e-4, 1e-6, 1e-5, 1e-5)  # primal too large
    assert not stopping_test(1e-6, 1e-4, 1e-5, 1e-5)  # dual too large


def test_consensus_step_residuals_and_penalty_adaptation() -> None:
    opts = AdmmOptions(eps_abs=1e-6, eps_rel=0.0, mu=10.0, tau=2.0)
    state = ConsensusState.start({"v": ["A", "B"]}, {"v": 2.0}, rho=1.0)
    done = state.step({"A": {"v": 1.0}, "B": {"v": 3.0}}, opts)
    assert not done
    assert state.z["v"] == pytest.approx(2.0)
    assert state.r_primal == pytest.approx(2**0.5)  # ||(1-2, 3-2)||
    assert state.r_dual == pytest.approx(0.0)  # z did not move
    assert state.rho == pytest.approx(2.0)  # r >> s: penalty doubled, duals halved
    assert state.u[("A", "v")] == pytest.approx(-0.5)
    done = state.step({"A": {"v": 2.5}, "B": {"v": 2.5}}, opts)
    # z = mean(x + u) = mean(2.5 - 0.5, 2.5 + 0.5) = 2.5 ; both copies agree
    assert state.z["v"] == pytest.approx(2.5)
    assert state.r_primal == pytest.approx(0.0)
    assert state.r_dual == pytest.approx(2.0 * (2 * 0.5**2) ** 0.5)
    assert not done  # the dual residual is not small yet
    done = state.step({"A": {"v": 2.5}, "B": {"v": 2.5}}, opts)
    assert done


def test_interval_and_combine() -> None:
    # v = 1.1 - 0.2 c <= 1.05  ->  c >= 0.25 ; v >= 0.9 -> c <= 1
    b = interval(np.array([1.1]), np.array([-0.2]), np.array([1.05]), np.array([0.9]))
    assert b.c_lo == pytest.approx(0.25)
    assert b.c_hi == pytest.approx(1.0)
    assert combine({"A": b, "B": Bounds(0.4, 1.0)}) == pytest.approx(0.4)
