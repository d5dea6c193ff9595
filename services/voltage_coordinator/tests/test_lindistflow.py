"""LinDistFlow against a feeder solvable by hand, and the centralised LP on it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from voltage_coordinator.feeder import Feeder
from voltage_coordinator.network import compile_tree, drop_coefficients, solve_linear
from voltage_coordinator.optimizer import CentralisedSolver, Limits, StepInputs


def test_three_bus_voltages_by_hand(tiny: Feeder) -> None:
    # phase a: P2 = 0.2 - 0.5 = -0.3 MW, P1 = 0.1 + P2 = -0.2 MW, Q1 = 0.05 Mvar
    # v1 = 1 - 2 (0.1 * -0.2 + 0.2 * 0.05) = 1.02 ; v2 = 1.02 - 2 (0.05 * -0.3) = 1.05
    t = compile_tree(tiny)
    out = np.array([0.5 if pid == "pv2" else 0.0 for pid in t.pv_ids])
    flow = solve_linear(t, t.load_mw - t.pv_share @ out, t.load_mvar, 1.0)
    v2 = dict(zip(t.node_names(), flow.v2_pu, strict=True))
    p = dict(zip(t.node_names(), flow.p_mw, strict=True))
    assert p["2.a"] == pytest.approx(-0.3)
    assert p["1.a"] == pytest.approx(-0.2)
    assert v2["1.a"] == pytest.approx(1.02)
    assert v2["2.a"] == pytest.approx(1.05)
    assert v2["1.b"] == pytest.approx(1.0)
    assert v2["s.c"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("k", "m", "expected"),
    [
        (0, 0, (2 * 0.3, 2 * 0.4)),  # self: 2r, 2x
        (0, 1, (-(0.1 - math.sqrt(3) * 0.2), -(0.2 + math.sqrt(3) * 0.1))),  # a <- b
        (1, 0, (-(0.1 + math.sqrt(3) * 0.2), -(0.2 - math.sqrt(3) * 0.1))),  # b <- a
        (0, 2, (-(0.1 + math.sqrt(3) * 0.2), -(0.2 - math.sqrt(3) * 0.1))),  # a <- c
    ],
)
def test_mutual_coupling_coefficients(k: int, m: int, expected: tuple[float, float]) -> None:
    """Arnold et al. (2016): v_a = v_i + M_P P + M_Q Q with M_P[a,b] = r_ab - sqrt3 x_ab,
    M_Q[a,b] = x_ab + sqrt3 r_ab, M_P[a,c] = r_ac + sqrt3 x_ac, ...; our drop is C = -M."""
    r = [[0.3, 0.1, 0.1], [0.1, 0.3, 0.1], [0.1, 0.1, 0.3]]
    x = [[0.4, 0.2, 0.2], [0.2, 0.4, 0.2], [0.2, 0.2, 0.4]]
    assert drop_coefficients(r, x, k, m) == pytest.approx(expected)


def test_lp_curtails_exactly_what_the_limit_needs(tiny: Feeder) -> None:
    # with output o (MW): v2 = 0.90 + 0.3 o ; a limit of v2 <= 1.02 allows o = 0.4 -> c = 0.2
    solver = CentralisedSolver(tiny, limits=Limits(v_max_pu=math.sqrt(1.02), v_min_pu=0.9))
    result = solver.solve(StepInputs(1.0, {"pv2": 500.0}))
    assert result.curtailed_kw == pytest.approx(100.0, abs=1e-3)
    assert result.fraction["pv2"] == pytest.approx(0.2, abs=1e-6)
    assert result.limit_kw["pv2"] == pytest.approx(400.0, abs=1e-3)
    assert result.v_lin_max_pu == pytest.approx(math.sqrt(1.02), abs=1e-6)


def test_lp_does_nothing_when_inside_the_band(tiny: Feeder) -> None:
    result = CentralisedSolver(tiny, limits=Limits(1.05, 0.9)).solve(
        StepInputs(1.0, {"pv2": 500.0})
    )
    assert result.curtailed_kw == pytest.approx(0.0, abs=1e-4)


def test_each_injection_counted_once(ieee123: Feeder) -> None:
    """The substation flow is total load minus total PV (lossless), per phase summed."""
    t = compile_tree(ieee123)
    out = t.pv_rating_mw * 0.5
    flow = solve_linear(t, t.load_mw - t.pv_share @ out, t.load_mvar, 1.0)
    head = flow.p_mw[t.root_nodes].sum()
    assert head == pytest.approx(t.load_mw.sum() - out.sum(), abs=1e-9)
