"""The coordinator's decision: from a measured feeder state to PV limits (no bus, no clock)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from derbus.errors import SolverError
from derbus.messages import FeederState
from voltage_coordinator.admm import DistributedSolver
from voltage_coordinator.correction import (
    AcModel,
    Settled,
    inputs_from_state,
    predicted_voltages,
    settle,
)
from voltage_coordinator.feeder import Feeder
from voltage_coordinator.network import FloatArray, compile_tree
from voltage_coordinator.optimizer import CentralisedSolver, Curtailment, StepInputs
from voltage_coordinator.settings import Settings
from voltage_coordinator.sweep import ROW_SLACK_PU, Rows, SweepSolver

NO_CURTAILMENT = 1e-6
"""Fractions below this send the PV's nameplate as limit (i.e. no curtailment)."""


@dataclass(frozen=True)
class Decision:
    """One solve of the closed loop: the inputs used, the solution and the limits to send.

    Attributes:
        step: the feeder state's step.
        inputs: the solve inputs (measured bias).
        curtailment: the solution.
        limits_kw: per PV the limit to send.
        method: `centralised`, `distributed-sweep`, `distributed-admm` or `agents`.
        predicted_pu: predicted AC voltage per node after the decision.
        bias_pu: the AC bias per node the decision was taken with (its fixed point).
        settled: the AC bias reached its fixed point (False: bounded by the largest seen).
    """

    step: int
    inputs: StepInputs
    curtailment: Curtailment
    limits_kw: dict[str, float]
    method: str
    predicted_pu: FloatArray
    bias_pu: FloatArray
    settled: bool = True


def limits_to_send(feeder: Feeder, curtailment: Curtailment) -> dict[str, float]:
    """Per PV the kW limit: available x (1 - fraction), or nameplate when not curtailed."""
    rating = {pv.id: pv.rating_kw for pv in feeder.pvs}
    return {
        pid: (rating[pid] if frac < NO_CURTAILMENT else round(curtailment.limit_kw[pid], 4))
        for pid, frac in curtailment.fraction.items()
    }


class Coordinator:
    """Builds the solvers the settings ask for and turns feeder states into decisions.

    Args:
        feeder: the feeder.
        settings: the coordinator's settings.
        model: the AC model to settle the bias on (default: an OpenDSS model of the feeder,
            built on first use when `settings.ac_model`; None and `ac_model` false: bounded).
    """

    def __init__(self, feeder: Feeder, settings: Settings, model: AcModel | None = None) -> None:
        self.feeder = feeder
        self.tree = compile_tree(feeder)
        self._model = model
        self._own_model: object | None = None
        self.configure(settings)

    def configure(self, settings: Settings) -> None:
        """(Re)build the solvers after a settings change."""
        self.settings = settings
        limits = settings.limits()
        self._centralised: CentralisedSolver | None = None  # built on first use (cvxpy is slow)
        self.sweep: SweepSolver | None = None
        self.admm: DistributedSolver | None = None
        if settings.mode == "distributed" and settings.distributed_method == "admm":
            self.admm = DistributedSolver(
                self.feeder, settings.fairness, settings.group_by, limits, settings.admm()
            )
        elif settings.mode != "centralised":
            self.sweep = SweepSolver(self.feeder, limits, settings.fairness, settings.group_by)

    @property
    def centralised(self) -> CentralisedSolver:
        """The reference LP for the current settings (built, and cvxpy loaded, on first use)."""
        if self._centralised is None:
            s = self.settings
            self._centralised = CentralisedSolver(
                self.feeder, s.fairness, s.group_by, s.limits(), s.cvx_solver
            )
        return self._centralised

    @property
    def model(self) -> AcModel | None:
        """The AC model the bias settles on (None: `ac_model` off, the bias is bounded)."""
        if self._model is None and self.settings.ac_model:
            from voltage_coordinator.acflow import AcFlow  # OpenDSS: loaded on first use

            flow = AcFlow(self.feeder)
            self._model, self._own_model = flow, flow
        return self._model if self.settings.ac_model else None

    def close(self) -> None:
        """Release the AC model this coordinator built (its engine thread)."""
        from voltage_coordinator.acflow import AcFlow

        if isinstance(self._own_model, AcFlow):
            self._own_model.close()
        self._own_model = None
        self._model = None

    @property
    def row_group_ids(self) -> list[str]:
        """The groups the areas' rows are over (agents mode)."""
        if self.sweep is None:
            raise SolverError("agents mode needs the sweep's fairness groups")
        return list(self.sweep.rows.row_group_ids)

    def inputs(self, state: FeederState) -> StepInputs:
        """Solve inputs (load level, availability, measured AC bias) from a feeder state."""
        return inputs_from_state(self.feeder, self.tree, state)

    def decide(self, state: FeederState, centralised: bool = False) -> Decision:
        """Solve for a state with the settings' method (or the centralised LP); SolverError."""
        inputs = self.inputs(state)
        solve: Callable[[StepInputs], Curtailment]
        if centralised or (self.sweep is None and self.admm is None):
            solve, method = self.centralised.solve, "centralised"
        elif self.sweep is not None:
            rows = self.sweep.sweep(inputs)
            solve, method = self._on_rows(rows, inputs), "distributed-sweep"
        else:
            solve, method = self._admm, "distributed-admm"
        return self._settle(state, inputs, solve, method)

    def from_rows(self, state: FeederState, rows: Rows) -> Decision:
        """A decision from the rows the area agents published for a state (agents mode)."""
        inputs = self.inputs(state)
        return self._settle(state, inputs, self._on_rows(rows, inputs), "agents")

    def _admm(self, inputs: StepInputs) -> Curtailment:
        assert self.admm is not None
        result, report = self.admm.solve(inputs)
        if not report.converged:
            raise SolverError(f"ADMM did not converge in {report.iterations} iterations")
        return result

    def _on_rows(self, rows: Rows, inputs: StepInputs) -> Callable[[StepInputs], Curtailment]:
        if self.sweep is None:
            raise SolverError("agents mode needs the sweep's fairness groups")
        solver = self.sweep.rows
        measured = inputs.v_bias_pu if inputs.v_bias_pu is not None else np.zeros(self.tree.size)

        def solve(with_bias: StepInputs) -> Curtailment:
            bias = with_bias.v_bias_pu if with_bias.v_bias_pu is not None else measured
            moved = float(np.max(np.abs(bias - measured), initial=0.0))
            if moved > ROW_SLACK_PU:
                raise SolverError(f"the bias moved {moved:.4f} pu, more than the rows cover")
            return solver.decide(rows, with_bias)

        return solve

    def _lower_fixed_point(
        self,
        settled: Settled,
        solve: Callable[[StepInputs], Curtailment],
        inputs: StepInputs,
        model: AcModel,
    ) -> Settled:
        """`equal_kw`: the water-filling's choice of fully curtailed PVs is discrete, so the bias
        map can have several fixed points and the one reached depends on the start. A second
        start (no bias, no residual bound) is kept when it curtails less and the prediction
        with the residual bound still holds for it."""
        s = self.settings
        other = settle(
            solve,
            model,
            self.feeder,
            self.tree,
            replace(inputs, v_bias_pu=np.zeros(self.tree.size)),
            v_max_pu=s.v_max_pu,
        )
        if (
            not other.converged
            or other.curtailment.curtailed_kw >= settled.curtailment.curtailed_kw
        ):
            return settled
        check = predicted_voltages(
            model, self.tree, inputs, other.curtailment.limit_kw, s.residual_gain
        )
        if float(check.max()) > s.v_max_pu - s.margin_pu + 1e-5:
            return settled
        rounds = settled.curtailment.bias_rounds + other.curtailment.bias_rounds
        return Settled(replace(other.curtailment, bias_rounds=rounds), other.bias_pu, check, True)

    def _settle(
        self,
        state: FeederState,
        inputs: StepInputs,
        solve: Callable[[StepInputs], Curtailment],
        method: str,
    ) -> Decision:
        s = self.settings
        settled = settle(
            solve,
            self.model,
            self.feeder,
            self.tree,
            inputs,
            residual_gain=s.residual_gain,
            v_max_pu=s.v_max_pu,
        )
        if s.fairness == "equal_kw" and self.model is not None:
            settled = self._lower_fixed_point(settled, solve, inputs, self.model)
        cut = settled.curtailment
        return Decision(
            state.step,
            inputs,
            cut,
            limits_to_send(self.feeder, cut),
            method,
            settled.predicted_pu,
            settled.bias_pu,
            settled.converged,
        )
