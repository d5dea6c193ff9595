"""The centralised curtailment optimiser: three-phase LinDistFlow LP with a fairness rule (cvxpy).

Variables are split as in pandapower/PyPSA: flows and voltages (network), curtailment (one value
per fairness group), constraints (balance, drop, limits, fairness), objective (minimum total
curtailed power). PV powers are generation (> 0) and enter the node balance as negative load.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from derbus.errors import SolverError
from voltage_coordinator.feeder import Feeder
from voltage_coordinator.network import FloatArray, Tree, compile_tree, solve_linear

Fairness = Literal["equal_fraction", "equal_kw", "none"]
GroupBy = Literal["feeder", "area"]

_MIN_AVAILABLE_MW = 1e-6
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class Limits:
    """Voltage band and the margins that cover the linearisation error.

    Attributes:
        v_max_pu: upper limit, pu.
        v_min_pu: lower limit, pu.
        margin_pu: kept below `v_max_pu` in the linear model, pu.
    """

    v_max_pu: float = 1.05
    v_min_pu: float = 0.95
    margin_pu: float = 0.0


@dataclass(frozen=True)
class StepInputs:
    """What one solve needs besides the feeder: load level, PV availability, AC bias.

    Attributes:
        load_mult: loads at this multiple of their nominal value.
        pv_available_kw: per PV, the power it could produce now (kW, >= 0; missing = 0).
        v_bias_pu: per node of the full tree, AC minus linear voltage magnitude (pu); the linear
            limit becomes v_max - margin - bias. None = no correction.
        pv_output_kw: per PV, the output measured with the bias (None: offline, no measurement).
        v_measured_pu: per node of the full tree, the measured voltage (NaN where not reported).
    """

    load_mult: float
    pv_available_kw: Mapping[str, float]
    v_bias_pu: FloatArray | None = None
    pv_output_kw: Mapping[str, float] | None = None
    v_measured_pu: FloatArray | None = None


@dataclass(frozen=True)
class Curtailment:
    """A solution: per PV the curtailed fraction and the resulting power limit.

    Attributes:
        fraction: per PV, curtailed share of its available power (0..1).
        limit_kw: per PV, the output limit to send (kW) = available x (1 - fraction).
        available_kw: per PV, the available power used (kW).
        curtailed_kw: total curtailed power (kW) = the objective.
        v_lin_pu: linear-model voltage magnitudes per node of the full tree (pu).
        solve_s: wall time of the solve (s).
        iterations: solver iterations, or distributed exchange rounds.
        group_fraction: per fairness group, the common fraction (equal_fraction only).
        passes: `equal_kw`: small LPs of the water-filling (one per set of fully curtailed PVs).
        bias_rounds: rounds of the AC bias fixed point in this decision (correction.settle).
    """

    fraction: dict[str, float]
    limit_kw: dict[str, float]
    available_kw: dict[str, float]
    curtailed_kw: float
    v_lin_pu: FloatArray
    solve_s: float
    iterations: int = 0
    group_fraction: dict[str, float] = field(default_factory=dict)
    passes: int = 1
    bias_rounds: int = 0

    @property
    def v_lin_max_pu(self) -> float:
        """Highest linear-model voltage, pu."""
        return float(self.v_lin_pu.max())


def squared_limits(
    limits: Limits, bias: FloatArray, slack_pu: float = 0.0
) -> tuple[FloatArray, FloatArray]:
    """Per node the squared upper and lower limits of the linear model, pu^2.

    The upper limit is v_max - margin - bias, the lower v_min - bias; `slack_pu` moves both
    inwards (to find the nodes that can come near a limit).
    """
    upper = np.clip(limits.v_max_pu - limits.margin_pu - bias - slack_pu, 0.5, None) ** 2
    lower = np.clip(limits.v_min_pu - bias + slack_pu, 0.0, None) ** 2
    return upper, lower


def pv_groups(feeder: Feeder, fairness: Fairness, group_by: GroupBy) -> dict[str, str]:
    """Fairness group of each PV: the feeder, its area, or itself (fairness `none`)."""
    if fairness == "none":
        return {pv.id: pv.id for pv in feeder.pvs}
    if group_by == "feeder":
        return {pv.id: feeder.feeder_id for pv in feeder.pvs}
    area = feeder.area_of()
    if not area:
        raise SolverError("group_by=area needs a feeder with areas")
    return {pv.id: area[pv.bus] for pv in feeder.pvs}


def available_mw(tree: Tree, pv_available_kw: Mapping[str, float]) -> FloatArray:
    """Available power per PV of a tree (MW, clipped to 0..rating)."""
    raw = np.array([float(pv_available_kw.get(pid, 0.0)) / 1000 for pid in tree.pv_ids])
    clipped: FloatArray = np.clip(raw, 0.0, tree.pv_rating_mw)
    return clipped


def linear_voltages(
    feeder: Feeder, tree: Tree, load_mult: float, pv_output_kw: Mapping[str, float]
) -> FloatArray:
    """LinDistFlow voltage magnitudes (pu) per node for given PV outputs (kW)."""
    out = np.array([float(pv_output_kw.get(pid, 0.0)) / 1000 for pid in tree.pv_ids])
    p_net = tree.load_mw * load_mult - tree.pv_share @ out
    flow = solve_linear(tree, p_net, tree.q_net_mvar(load_mult), feeder.source_v_pu**2)
    return flow.v_pu


class CentralisedSolver:
    """The reference: one LP over the whole feeder, compiled once and re-solved via Parameters.

    Args:
        feeder: the feeder.
        fairness: `equal_fraction` (one fraction per group), `equal_kw` (same curtailed kW per
            PV of a group, bounded by the smallest available PV), or `none` (minimum total).
        group_by: the fairness group (`feeder` or `area`).
        limits: voltage band and margin.
        solver: cvxpy solver name (ECOS by default).
    """

    def __init__(
        self,
        feeder: Feeder,
        fairness: Fairness = "equal_fraction",
        group_by: GroupBy = "feeder",
        limits: Limits | None = None,
        solver: str = "ECOS",
    ) -> None:
        self.feeder = feeder
        self.tree = compile_tree(feeder)
        self.fairness = fairness
        self.limits = limits or Limits()
        self.solver = solver
        groups = pv_groups(feeder, fairness, group_by)
        self.group_ids = sorted(set(groups.values()))
        t = self.tree
        k = len(t.pv_ids)
        h = np.zeros((k, len(self.group_ids)))
        for j, pid in enumerate(t.pv_ids):
            h[j, self.group_ids.index(groups[pid])] = 1.0
        self._h = h
        import cvxpy as cp  # heavy (~3 s to load): on the first solver, not at start-up

        n = t.size
        self.p_load = cp.Parameter(n, name="p_load")
        self.q_load = cp.Parameter(n, name="q_load")
        self.avail = cp.Parameter(k, nonneg=True, name="avail")
        self.mask = cp.Parameter(k, nonneg=True, name="mask")
        self.saturated_mw = cp.Parameter(k, nonneg=True, name="saturated_mw")
        self.v2_max = cp.Parameter(n, name="v2_max")
        self.v2_min = cp.Parameter(n, name="v2_min")
        self.p = cp.Variable(n, name="p")
        self.q = cp.Variable(n, name="q")
        self.v2 = cp.Variable(n, name="v2")
        self.g = cp.Variable(len(self.group_ids), name="group_curtailment")
        if fairness == "equal_kw":
            # capped equal kW: PVs smaller than the group's cut are curtailed fully (water-filling)
            # MW per PV
            shared = cp.multiply(self.mask, h @ self.g)  # type: ignore[attr-defined]
            curtailed = shared + self.saturated_mw
            bounds = [self.g >= 0, shared <= self.avail]
        else:
            # fraction x available
            curtailed = cp.multiply(self.avail, h @ self.g)  # type: ignore[attr-defined]
            bounds = [self.g >= 0, self.g <= 1]
        self._curtailed = curtailed
        output = self.avail - curtailed
        p_net = self.p_load - t.pv_share @ output
        eye = np.eye(n)
        non_root = [i for i in range(n) if i not in set(t.root_nodes)]
        drop = -(t.cp @ self.p + t.cq @ self.q)
        constraints = [
            (eye - t.child.toarray()) @ self.p == p_net,
            (eye - t.child.toarray()) @ self.q == self.q_load,
            self.v2[t.root_nodes] == feeder.source_v_pu**2,
            (self.v2 - t.parent_map @ self.v2)[non_root] == drop[non_root],
            self.v2[non_root] <= self.v2_max[non_root],
            self.v2[non_root] >= self.v2_min[non_root],
            *bounds,
        ]
        self.problem = cp.Problem(cp.Minimize(cp.sum(curtailed)), constraints)  # type: ignore[attr-defined]

    def solve(self, inputs: StepInputs) -> Curtailment:
        """Minimum curtailment keeping every node inside the band (raises SolverError)."""
        t = self.tree
        avail = available_mw(t, inputs.pv_available_kw)
        bias = inputs.v_bias_pu if inputs.v_bias_pu is not None else np.zeros(t.size)
        lim = self.limits
        self.p_load.value = t.load_mw * inputs.load_mult
        self.q_load.value = t.q_net_mvar(inputs.load_mult)
        self.avail.value = avail
        saturated = np.zeros_like(avail, dtype=bool)
        self.v2_max.value, self.v2_min.value = squared_limits(lim, bias)
        started = time.perf_counter()
        iterations = 0
        for _ in range(len(avail) + 1):
            live = (avail > _MIN_AVAILABLE_MW) & ~saturated
            self.mask.value = live.astype(float)
            self.saturated_mw.value = np.where(saturated, avail, 0.0)
            status = self._solve_once()
            iterations += int(self.problem.solver_stats.num_iters or 0)
            if self.fairness != "equal_kw":
                break
            more = self._to_saturate(avail, live, status)
            if more is None:
                break
            saturated |= more
        if status not in ("optimal", "optimal_inaccurate") or self.g.value is None:
            raise SolverError(f"curtailment LP is {status}")
        elapsed = time.perf_counter() - started
        g = np.clip(np.asarray(self.g.value), 0.0, None)
        return self._result(avail, g, saturated, elapsed, iterations)

    def _solve_once(self) -> str:
        import cvxpy as cp

        try:
            self.problem.solve(solver=self.solver)  # type: ignore[no-untyped-call]
        except cp.error.SolverError as err:
            if self.fairness == "equal_kw":  # a pass with no feasible cut can fail, not report
                return "solver_error"
            raise SolverError(f"{self.solver} failed: {err}") from err
        return str(self.problem.status)

    def _to_saturate(self, avail: FloatArray, live: BoolArray, status: str) -> BoolArray | None:
        """Equal kW: the PVs to curtail fully next (binding or, if infeasible, smallest)."""
        h = self._h
        if status in ("optimal", "optimal_inaccurate") and self.g.value is not None:
            cut = h @ np.asarray(self.g.value)
            binding = live & (cut >= avail - 1e-7)
            return binding if binding.any() else None
        if not live.any():
            return None
        pick = np.zeros_like(live, dtype=bool)
        for col in range(h.shape[1]):
            members = np.nonzero(live & (h[:, col] > 0))[0]
            if members.size:
                pick[members[np.argmin(avail[members])]] = True
        return pick

    def _result(
        self,
        avail: FloatArray,
        g: FloatArray,
        saturated: BoolArray,
        elapsed: float,
        iters: int,
    ) -> Curtailment:
        t = self.tree
        if self.fairness == "equal_kw":
            cut = np.where(saturated, avail, np.minimum(self._h @ g, avail))
            frac = np.divide(cut, avail, out=np.zeros_like(cut), where=avail > _MIN_AVAILABLE_MW)
            groups: dict[str, float] = {}
        else:
            frac = np.clip(self._h @ g, 0.0, 1.0)
            groups = {gid: float(np.clip(g[i], 0.0, 1.0)) for i, gid in enumerate(self.group_ids)}
        output = avail * (1 - frac)
        v_lin = np.sqrt(np.clip(np.asarray(self.v2.value), 0.0, None))
        return make_curtailment(t, avail, frac, output, v_lin, elapsed, iters, groups)


def make_curtailment(
    tree: Tree,
    avail: FloatArray,
    frac: FloatArray,
    output: FloatArray,
    v_lin_pu: FloatArray,
    elapsed: float,
    iterations: int,
    groups: dict[str, float],
) -> Curtailment:
    """Build a Curtailment (per-PV dicts in kW) from MW arrays over `tree.pv_ids`."""
    ids = tree.pv_ids
    return Curtailment(
        fraction={pid: float(f) for pid, f in zip(ids, frac, strict=True)},
        limit_kw={pid: float(o) * 1000 for pid, o in zip(ids, output, strict=True)},
        available_kw={pid: float(a) * 1000 for pid, a in zip(ids, avail, strict=True)},
        curtailed_kw=float(np.sum(avail - output)) * 1000,
        v_lin_pu=v_lin_pu,
        solve_s=elapsed,
        iterations=iterations,
        group_fraction=groups,
    )
