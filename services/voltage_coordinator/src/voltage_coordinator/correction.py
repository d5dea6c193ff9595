"""Covering the linearisation error: re-solve with the AC-minus-linear voltage bias per node.

The bias b_n = |V_n|_AC - sqrt(v_n)_LinDistFlow, both at the same PV outputs, tightens the linear
limit to v_max - margin - b_n. It depends only weakly on the operating point, so a few rounds of
solve -> AC flow -> new bias settle; the closed-loop service does the same with measured voltages.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from derbus.messages import FeederState
from voltage_coordinator.feeder import Feeder
from voltage_coordinator.network import FloatArray, Tree
from voltage_coordinator.optimizer import Curtailment, StepInputs, linear_voltages

if TYPE_CHECKING:  # OpenDSS is loaded only where the AC flow is used (keeps start-up fast)
    from voltage_coordinator.acflow import AcFlow, AcResult


@dataclass(frozen=True)
class Corrected:
    """An AC-checked solution: the curtailment, its AC flow, the bias used and the rounds."""

    curtailment: Curtailment
    ac: AcResult
    bias_pu: FloatArray
    rounds: int
    solve_s: float


def bias_from(tree: Tree, v_measured_pu: FloatArray, v_linear_pu: FloatArray) -> FloatArray:
    """Per node AC (or measured) minus linear voltage magnitude, pu (NaN -> 0)."""
    return np.nan_to_num(v_measured_pu - v_linear_pu, nan=0.0)


def solve_ac_corrected(
    solve: Callable[[StepInputs], Curtailment],
    ac: AcFlow,
    tree: Tree,
    inputs: StepInputs,
    v_max_pu: float = 1.05,
    tol_pu: float = 2e-5,
    max_rounds: int = 6,
) -> Corrected:
    """Solve, check in the AC flow, correct the limits by the bias, until the AC flow holds.

    Args:
        solve: one linear solve (centralised or distributed) for given inputs.
        ac: the AC power flow of the same feeder.
        tree: the full compiled tree (node order of the bias).
        inputs: load level, PV availability and an optional starting bias.
        v_max_pu: the limit the AC voltages must respect, pu.
        tol_pu: stop when the bias moved less than this and the AC flow holds.
        max_rounds: bound on solve/AC rounds.
    """
    bias = inputs.v_bias_pu if inputs.v_bias_pu is not None else np.zeros(tree.size)
    total_s = 0.0
    result: Curtailment | None = None
    flow: AcResult | None = None
    rounds = 0
    for rounds in range(1, max_rounds + 1):  # noqa: B007 - rounds is reported
        result = solve(replace(inputs, v_bias_pu=bias))
        total_s += result.solve_s
        flow = ac.solve(inputs.load_mult, result.limit_kw)
        new_bias = bias_from(tree, flow.vector(tree), result.v_lin_pu)
        moved = float(np.max(np.abs(new_bias - bias)))
        bias = new_bias
        if flow.max_pu <= v_max_pu + 1e-9 and moved < tol_pu:
            break
    if result is None or flow is None:
        raise ValueError("max_rounds must be at least 1")
    return Corrected(result, flow, bias, rounds, total_s)


def inputs_from_state(feeder: Feeder, tree: Tree, state: FeederState) -> StepInputs:
    """Solve inputs from a measured feeder state: load level, PV availability, AC bias.

    The load level is the measured feeder load over the nominal load (1 when not reported);
    the bias is the measured voltage minus LinDistFlow's at the measured PV outputs (the
    closed loop's AC correction: no AC model needed in the coordinator).
    """
    nominal = feeder.total_load_kw
    load_mult = state.load_p_kw / nominal if state.load_p_kw is not None and nominal else 1.0
    v_lin = linear_voltages(feeder, tree, load_mult, state.pv_output_kw)
    measured = np.full(tree.size, np.nan)
    for i, (bus, k) in enumerate(tree.nodes):
        phases = state.v_pu.get(bus)
        if phases is not None and len(phases) > k and phases[k] is not None:
            measured[i] = float(phases[k])  # type: ignore[arg-type]
    return StepInputs(load_mult, dict(state.pv_available_kw), bias_from(tree, measured, v_lin))
