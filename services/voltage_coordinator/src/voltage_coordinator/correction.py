"""Covering the linearisation error: re-solve with the AC-minus-linear voltage bias per node.

The bias b_n = |V_n|_AC - sqrt(v_n)_LinDistFlow, both at the same PV outputs, tightens the linear
limit to v_max - margin - b_n. It moves with the operating point: at an uncurtailed high-PV
point it is up to -2e-3 pu on IEEE 123 (a negative bias *raises* the linear limit), smaller once
curtailed, so a decision taken with the bias measured before curtailing under-curtails (the cold
start overshoot). `settle` therefore iterates the bias to a fixed point inside one decision on
the coordinator's AC model of the feeder: bias(x) = model(x) - linear(x) + (measured - model)
at the measured point (what the model misses) + a bound of how much that may move
(`residual_gain` x the model's voltage change from the measured point: a first decision far
from the measured point is conservative, a re-solve on the next measurement tightens it). At
the fixed point the predicted AC voltage is within the tolerance of the linear limit. Without a model the bias is bounded
conservatively (a negative bias is not used).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol

import numpy as np

from derbus.messages import FeederState
from voltage_coordinator.feeder import Feeder
from voltage_coordinator.network import FloatArray, Tree
from voltage_coordinator.optimizer import Curtailment, StepInputs, linear_voltages

if TYPE_CHECKING:  # OpenDSS is loaded only where the AC flow is used (keeps start-up fast)
    from voltage_coordinator.acflow import AcResult


class AcModel(Protocol):
    """An AC power flow of the feeder (acflow.AcFlow)."""

    def solve(self, load_mult: float, pv_output_kw: Mapping[str, float]) -> AcResult:
        """Voltages for a load level and PV outputs (kW)."""
        ...


@dataclass(frozen=True)
class Settled:
    """A decision whose bias is at its fixed point (or bounded conservatively).

    Attributes:
        curtailment: the solution (its `bias_rounds` and `solve_s` cover the whole decision).
        bias_pu: the bias the solution was taken with, per node.
        predicted_pu: the predicted AC voltages after it (model + residual; linear + bias
            without a model), per node.
        converged: the fixed point was reached (False: the largest bias seen was used).
    """

    curtailment: Curtailment
    bias_pu: FloatArray
    predicted_pu: FloatArray
    converged: bool


def predicted_voltages(
    model: AcModel,
    tree: Tree,
    inputs: StepInputs,
    limit_kw: Mapping[str, float],
    residual_gain: float = 0.0,
) -> FloatArray:
    """What `settle` predicts for a decision: the model at it + the measured residual + its
    bound (residual_gain x the model's voltage change from the measured point), per node."""
    v = model.solve(inputs.load_mult, limit_kw).vector(tree)
    if inputs.pv_output_kw is None or inputs.v_measured_pu is None:
        return v
    at_measured = model.solve(inputs.load_mult, inputs.pv_output_kw).vector(tree)
    residual = np.nan_to_num(inputs.v_measured_pu - at_measured, nan=0.0)
    out: FloatArray = v + residual + residual_gain * np.abs(v - at_measured)
    return out


def settle(
    decide: Callable[[StepInputs], Curtailment],
    model: AcModel | None,
    feeder: Feeder,
    tree: Tree,
    inputs: StepInputs,
    tol_pu: float = 1e-5,
    max_rounds: int = 8,
    residual_gain: float = 0.0,
    v_max_pu: float | None = None,
) -> Settled:
    """One decision with the AC bias iterated to its fixed point (see the module docstring).

    Args:
        decide: one linear decision for given inputs (their `v_bias_pu` = the bias to use).
        model: the coordinator's AC model, or None (then a negative bias is not used).
        feeder: the feeder.
        tree: its full compiled tree (node order of the bias).
        inputs: the step's inputs (measured bias, outputs and voltages when measured).
        tol_pu: the fixed point is reached when the bias moves less than this.
        max_rounds: bound on decide/model rounds; past it the largest bias seen at each node
            is used (conservative).
        residual_gain: the residual (measured - model at the measured point) may move by this
            share of the model's voltage change from the measured point; added to the bias.
        v_max_pu: when no fixed point is reached, the least-curtailing solution whose
            predicted voltages stay at or below this is taken (else the largest bias seen).
    """
    started = time.perf_counter()
    measured = inputs.v_bias_pu if inputs.v_bias_pu is not None else np.zeros(tree.size)
    if model is None:
        bias = np.maximum(measured, 0.0)
        result = decide(replace(inputs, v_bias_pu=bias))
        result = replace(result, bias_rounds=1, solve_s=time.perf_counter() - started)
        return Settled(result, bias, result.v_lin_pu + bias, True)
    residual = np.zeros(tree.size)
    at_measured: FloatArray | None = None
    if inputs.pv_output_kw is not None and inputs.v_measured_pu is not None:
        at_measured = model.solve(inputs.load_mult, inputs.pv_output_kw).vector(tree)
        residual = np.nan_to_num(inputs.v_measured_pu - at_measured, nan=0.0)

    def predicted(limit_kw: Mapping[str, float]) -> FloatArray:
        v = model.solve(inputs.load_mult, limit_kw).vector(tree)
        # what the model misses moves with the operating point: bound it by a share of the
        # voltage change from the measured point (large only on a first decision after a
        # cold start; a re-solve on the fresh measurement then tightens it)
        moved = np.abs(v - at_measured) if at_measured is not None else 0.0
        out: FloatArray = v + residual + residual_gain * moved
        return out

    bias = measured
    seen = [bias]
    feasible: list[tuple[float, Curtailment, FloatArray, FloatArray]] = []
    for rounds in range(1, max_rounds + 1):
        result = decide(replace(inputs, v_bias_pu=bias))
        ac = predicted(result.limit_kw)
        new_bias = ac - result.v_lin_pu
        if float(np.max(np.abs(new_bias - bias))) < tol_pu:
            result = replace(result, bias_rounds=rounds, solve_s=time.perf_counter() - started)
            return Settled(result, bias, ac, True)
        if v_max_pu is not None and float(ac.max()) <= v_max_pu:
            feasible.append((result.curtailed_kw, result, bias, ac))
        # a rule with discrete choices (equal_kw's fully curtailed PVs) can cycle between two
        # biases: from the fourth round on, move half way
        bias = new_bias if rounds < 4 else (bias + new_bias) / 2
        seen.append(bias)
    if feasible:  # the least curtailment among the solutions the prediction holds for
        _, result, bias, ac = min(feasible, key=lambda item: item[0])
        result = replace(result, bias_rounds=max_rounds, solve_s=time.perf_counter() - started)
        return Settled(result, bias, ac, False)
    bias = np.max(seen, axis=0)
    result = decide(replace(inputs, v_bias_pu=bias))
    ac = predicted(result.limit_kw)
    result = replace(result, bias_rounds=max_rounds + 1, solve_s=time.perf_counter() - started)
    return Settled(result, bias, ac, False)


def bias_from(tree: Tree, v_measured_pu: FloatArray, v_linear_pu: FloatArray) -> FloatArray:
    """Per node AC (or measured) minus linear voltage magnitude, pu (NaN -> 0)."""
    return np.nan_to_num(v_measured_pu - v_linear_pu, nan=0.0)


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
    return StepInputs(
        load_mult,
        dict(state.pv_available_kw),
        bias_from(tree, measured, v_lin),
        dict(state.pv_output_kw),
        measured,
    )
