"""The coordinator's decision: from a measured feeder state to PV limits (no bus, no clock)."""

from __future__ import annotations

from dataclasses import dataclass

from derbus.errors import SolverError
from derbus.messages import FeederState
from voltage_coordinator.admm import DistributedSolver
from voltage_coordinator.correction import inputs_from_state
from voltage_coordinator.feeder import Feeder
from voltage_coordinator.network import compile_tree
from voltage_coordinator.optimizer import CentralisedSolver, Curtailment, StepInputs
from voltage_coordinator.settings import Settings
from voltage_coordinator.sweep import SweepSolver, group_curtailment, kw_curtailment

NO_CURTAILMENT = 1e-6
"""Fractions below this send the PV's nameplate as limit (i.e. no curtailment)."""


@dataclass(frozen=True)
class Decision:
    """One solve of the closed loop: the inputs used, the solution and the limits to send."""

    step: int
    inputs: StepInputs
    curtailment: Curtailment
    limits_kw: dict[str, float]
    method: str


def limits_to_send(feeder: Feeder, curtailment: Curtailment) -> dict[str, float]:
    """Per PV the kW limit: available x (1 - fraction), or nameplate when not curtailed."""
    rating = {pv.id: pv.rating_kw for pv in feeder.pvs}
    return {
        pid: (rating[pid] if frac < NO_CURTAILMENT else round(curtailment.limit_kw[pid], 4))
        for pid, frac in curtailment.fraction.items()
    }


class Coordinator:
    """Builds the solvers the settings ask for and turns feeder states into decisions."""

    def __init__(self, feeder: Feeder, settings: Settings) -> None:
        self.feeder = feeder
        self.tree = compile_tree(feeder)
        self.configure(settings)

    def configure(self, settings: Settings) -> None:
        """(Re)build the solvers after a settings change."""
        self.settings = settings
        limits = settings.limits()
        self._centralised: CentralisedSolver | None = (
            None  # built on first use (cvxpy is slow to load)
        )
        self.sweep: SweepSolver | None = None
        self.admm: DistributedSolver | None = None
        if settings.mode == "distributed" and settings.distributed_method == "admm":
            self.admm = DistributedSolver(
                self.feeder, settings.fairness, settings.group_by, limits, settings.admm()
            )
        elif settings.mode != "centralised":
            # exact for every rule (equal_kw: one sweep per pass of the outer loop)
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

    def inputs(self, state: FeederState) -> StepInputs:
        """Solve inputs (load level, availability, measured AC bias) from a feeder state."""
        return inputs_from_state(self.feeder, self.tree, state)

    def decide(self, state: FeederState) -> Decision:
        """Solve for a state (raises SolverError; the service then falls back)."""
        inputs = self.inputs(state)
        if self.sweep is not None:
            result, method = self.sweep.solve(inputs), "distributed-sweep"
        elif self.admm is not None:
            result, report = self.admm.solve(inputs)
            if not report.converged:
                raise SolverError(f"ADMM did not converge in {report.iterations} iterations")
            method = "distributed-admm"
        else:
            result, method = self.centralised.solve(inputs), "centralised"
        return Decision(state.step, inputs, result, limits_to_send(self.feeder, result), method)

    def from_fractions(
        self,
        state: FeederState,
        inputs: StepInputs,
        fractions: dict[str, float],
        saturate: dict[str, float] | None = None,
        passes: int = 1,
    ) -> Decision:
        """A decision from the group values agreed by the agents on the bus.

        Args:
            state: the feeder state solved for.
            inputs: its solve inputs.
            fractions: per group the fraction, or for `equal_kw` the common cut (MW).
            saturate: `equal_kw`: the last pass's thresholds of fully curtailed PVs.
            passes: `equal_kw`: sweeps run.
        """
        if self.sweep is None:
            raise SolverError("agents mode needs the sweep's fairness groups")
        if self.sweep.equal_kw:
            result = kw_curtailment(
                self.feeder, self.tree, inputs, self.sweep.groups, fractions, saturate or {},
                0.0, passes,
            )  # fmt: skip
        else:
            result = group_curtailment(
                self.feeder, self.tree, inputs, self.sweep.groups, fractions, 0.0, 3
            )
        return Decision(state.step, inputs, result, limits_to_send(self.feeder, result), "agents")
