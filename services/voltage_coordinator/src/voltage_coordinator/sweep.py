"""Distributed curtailment by an affine boundary sweep: exact in three exchange rounds.

`equal_fraction` and `none` curtail each PV by the fraction of its group: one group for the
feeder, one per area, or one per PV (`none`). LinDistFlow is linear, so with the K group
fractions c every flow and squared voltage is affine in c. The area agents (a tree, rooted at
the source's area) therefore solve the LP exactly by exchanging boundary values as affine
functions of c - no penalty, no iteration count to tune:

1. backward (leaves -> source): each area sends its parent the flow into its root per phase,
   P = P0 + P1 c (P1 non-zero only for the groups with PVs below) and Q = Q0 (unity power
   factor);
2. forward (source -> leaves): each area sends its children the squared voltage of their root
   per phase, v = V0 + V1 c;
3. each area then knows its node voltages as V0_n + V1_n c and publishes those of its nodes
   that can come near a limit (`Rows`) and its available power per group. The coordinator puts
   the limits on them (with its own AC bias per node, so it can iterate the bias to a fixed
   point without another exchange: correction.py) and solves the small LP
   min sum_g w_g c_g over them (HiGHS): the centralised LP's optimum.

`equal_kw` curtails every PV of a group by the same kW as long as it has that much: the areas
send their rows over one fraction per PV (as for `none`), and the coordinator runs the
centralised solver's water-filling on them in memory (`equal_kw_fractions`): a PV with less
available power than the common cut is curtailed fully and the small LP re-solved, the first
smallest PV of each group when no cut meets the limits. Three exchange rounds, whatever the
number of passes.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from scipy.optimize import linprog

from derbus.errors import SolverError
from voltage_coordinator.admm import AreaSpec, area_specs, compile_tree_nodes
from voltage_coordinator.feeder import PHASES, Feeder
from voltage_coordinator.network import FloatArray, Tree, compile_tree, solve_linear
from voltage_coordinator.optimizer import (
    Curtailment,
    Fairness,
    GroupBy,
    Limits,
    StepInputs,
    available_mw,
    make_curtailment,
    pv_groups,
    squared_limits,
)

Boundary = dict[str, float]
"""Boundary values keyed `p0:<bus>:<phase>`, `p1:<bus>:<phase>:<group>`, `q0:…`, `v0:…`, `v1:…`
(coefficients that are zero are left out)."""

_ZERO = 1e-15
_SLACK = 1e-12
ROW_SLACK_PU = 0.02
"""An area sends the nodes that can come within this of a limit (the bias the coordinator settles
on may differ from the measured one by up to this)."""
IntArray = npt.NDArray[np.int64]
_MIN_AVAILABLE_MW = 1e-6  # as the centralised solver: below this a PV is not curtailed
_BINDING_MW = 1e-7  # a cut within this of a PV's available power curtails it fully


@dataclass(frozen=True)
class Rows:
    """An area's node voltages, affine in the group values: v2_n = v0_n + V1_n c.

    Only nodes that can come within `ROW_SLACK_PU` of a limit for some c in [0, 1]^K are sent;
    the coordinator puts the limits on them itself (its own bias per node: see correction.py),
    so it can re-solve with a new bias without another exchange.

    Attributes:
        node: index of each row's node in the full feeder's node order.
        v0: squared voltage at c = 0 (pu^2), one per row.
        v1: (rows x groups) sensitivity of the squared voltage to the group values.
        weight_mw: per group, the available power in this area (MW): the LP's cost.
    """

    node: IntArray
    v0: FloatArray
    v1: FloatArray
    weight_mw: FloatArray

    def to_values(self, group_ids: Sequence[str]) -> Boundary:
        """Flatten for a bus message: `v:<node>`, `a:<node>:<group>` (non-zero), `w:<group>`."""
        out: Boundary = {}
        for n, v0, row in zip(self.node.tolist(), self.v0, self.v1, strict=True):
            out[f"v:{n}"] = float(v0)
            for j in np.nonzero(np.abs(row) > _ZERO)[0].tolist():
                out[f"a:{n}:{group_ids[j]}"] = float(row[j])
        for gid, w in zip(group_ids, self.weight_mw, strict=True):
            if w > 0:
                out[f"w:{gid}"] = float(w)
        return out

    @classmethod
    def from_values(cls, values: Mapping[str, float], group_ids: Sequence[str]) -> Rows:
        """Inverse of `to_values` (unknown groups or nodes raise SolverError)."""
        col = {g: j for j, g in enumerate(group_ids)}
        try:
            nodes = sorted(int(k[2:]) for k in values if k.startswith("v:"))
            row = {n: i for i, n in enumerate(nodes)}
            v0 = np.array([values[f"v:{n}"] for n in nodes], dtype=float)
            v1 = np.zeros((len(nodes), len(group_ids)))
            w = np.zeros(len(group_ids))
            for key, value in values.items():
                kind, _, rest = key.partition(":")
                if kind == "a":
                    n, _, gid = rest.partition(":")
                    v1[row[int(n)], col[gid]] = value
                elif kind == "w":
                    w[col[rest]] = value
        except (KeyError, IndexError, ValueError) as err:
            raise SolverError(f"malformed area rows: {err}") from err
        return cls(np.array(nodes, dtype=np.int64), v0, v1, w)


def stack(rows: Sequence[Rows], k: int) -> Rows:
    """Every area's rows as one (the coordinator's view of the whole feeder)."""
    if not rows:
        return Rows(np.zeros(0, dtype=np.int64), np.zeros(0), np.zeros((0, k)), np.zeros(k))
    return Rows(
        np.concatenate([r.node for r in rows]),
        np.concatenate([r.v0 for r in rows]),
        np.vstack([r.v1.reshape(-1, k) for r in rows]),
        np.sum([r.weight_mw for r in rows], axis=0),
    )


def group_order(
    feeder: Feeder, fairness: Fairness, group_by: GroupBy
) -> tuple[dict[str, str], list[str]]:
    """Group of each PV and the groups in a fixed order every agent derives alike."""
    groups = pv_groups(feeder, fairness, group_by)
    ordered = list(dict.fromkeys(groups[pv.id] for pv in feeder.pvs))
    return groups, ordered


RULE_CODES: dict[tuple[str, str], int] = {
    ("equal_fraction", "feeder"): 0,
    ("equal_fraction", "area"): 1,
    ("none", "feeder"): 2,
    ("none", "area"): 2,
    ("equal_kw", "feeder"): 3,
    ("equal_kw", "area"): 4,
}
"""Fairness rule as a number in the agents' round start (exchange values are numbers)."""
RULES: dict[int, tuple[Fairness, GroupBy]] = {
    0: ("equal_fraction", "feeder"),
    1: ("equal_fraction", "area"),
    2: ("none", "feeder"),
    3: ("equal_kw", "feeder"),
    4: ("equal_kw", "area"),
}


class SweepAgent:
    """One area's part of the sweep (pure: inputs in, boundary values out).

    Args:
        feeder: the feeder (the agent uses its own area of it).
        spec: the area.
        limits: voltage band and margin (only to choose which nodes to send).
        groups: the group of each PV (default: one for the feeder; per PV for `equal_kw`).
        group_ids: the groups in the order shared by every agent.
    """

    def __init__(
        self,
        feeder: Feeder,
        spec: AreaSpec,
        limits: Limits,
        groups: Mapping[str, str] | None = None,
        group_ids: Sequence[str] | None = None,
    ) -> None:
        self.feeder = feeder
        self.spec = spec
        self.limits = limits
        if groups is None or group_ids is None:
            groups, group_ids = group_order(feeder, "equal_fraction", "feeder")
        self.group_ids = list(group_ids)
        self.tree = t = compile_tree(feeder, spec.buses, spec.ghosts)
        col = {g: j for j, g in enumerate(self.group_ids)}
        self._pv_group = np.zeros((len(t.pv_ids), len(self.group_ids)))
        for i, pid in enumerate(t.pv_ids):
            self._pv_group[i, col[groups[pid]]] = 1.0
        self.full_index = {node: i for i, node in enumerate(compile_tree_nodes(feeder))}
        self._node_ids = np.array([self.full_index[node] for node in t.nodes], dtype=np.int64)
        eye = sp.identity(t.size, format="csc")
        self._flow_op = sp.linalg.splu((eye - t.child).tocsc())
        self._volt_op = sp.linalg.splu((eye - t.parent_map).tocsc())
        self._idx = t.index()
        k = len(self.group_ids)
        self._p0 = np.zeros(t.size)
        self._p1 = np.zeros((t.size, k))
        self._q0 = np.zeros(t.size)
        self._weight = np.zeros(k)
        self._v2max = np.zeros(t.size)
        self._v2min = np.zeros(t.size)
        ghosts = set(spec.ghosts)
        owned = [i for i, (b, _) in enumerate(t.nodes) if b not in ghosts]
        if spec.parent is None:
            owned = [i for i in owned if i not in set(t.root_nodes)]
        self._limited = np.array(owned, dtype=np.int64)
        self.flows: tuple[FloatArray, FloatArray, FloatArray] | None = None

    @property
    def children(self) -> list[str]:
        """Root buses of the child areas (the ghosts)."""
        return list(self.spec.ghosts)

    def set_inputs(self, inputs: StepInputs) -> None:
        """Net loads affine in c (MW): p = load - gen + gen c per group; the step's limits."""
        t = self.tree
        avail = available_mw(t, inputs.pv_available_kw)
        gen_by_group = t.pv_share @ (avail[:, None] * self._pv_group)  # (nodes x groups)
        self._p1 = gen_by_group
        self._p0 = t.load_mw * inputs.load_mult - gen_by_group.sum(axis=1)
        self._weight = avail @ self._pv_group
        self._q0 = t.q_net_mvar(inputs.load_mult)
        bias = np.zeros(t.size)
        if inputs.v_bias_pu is not None:
            bias = np.asarray(inputs.v_bias_pu)[self._node_ids]
        # a node is sent when it can come within ROW_SLACK_PU of a limit (the coordinator's
        # bias may differ from the measured one by less than that)
        self._v2max, self._v2min = squared_limits(self.limits, bias, slack_pu=ROW_SLACK_PU)

    def _root_nodes_of(self, bus: str) -> list[tuple[str, int]]:
        return [(ph, self._idx[(bus, PHASES.index(ph))]) for ph in self.feeder.bus[bus].phases]

    def backward(self, from_children: Mapping[str, float]) -> Boundary:
        """Flows into this area's root (affine in c) given the children's root flows."""
        p0, p1, q0 = self._p0.copy(), self._p1.copy(), self._q0.copy()
        for bus in self.spec.ghosts:
            for ph, i in self._root_nodes_of(bus):
                p0[i] = from_children[f"p0:{bus}:{ph}"]
                q0[i] = from_children[f"q0:{bus}:{ph}"]
                p1[i] = [from_children.get(f"p1:{bus}:{ph}:{g}", 0.0) for g in self.group_ids]
        flows = (self._flow_op.solve(p0), self._flow_op.solve(p1), self._flow_op.solve(q0))
        self.flows = flows
        out: Boundary = {}
        if self.spec.parent is not None:
            for ph, i in self._root_nodes_of(self.spec.root_bus):
                key = f"{self.spec.root_bus}:{ph}"
                out[f"p0:{key}"] = float(flows[0][i])
                out[f"q0:{key}"] = float(flows[2][i])
                out.update(_sparse(f"p1:{key}", flows[1][i], self.group_ids))
        return out

    def forward(self, from_parent: Mapping[str, float]) -> tuple[Boundary, Rows]:
        """Voltages affine in c: the children's root values and this area's near-limit rows."""
        if self.flows is None:
            raise SolverError(f"area {self.spec.id}: forward before backward")
        t = self.tree
        p0, p1, q0 = self.flows
        rhs0 = -(t.cp @ p0 + t.cq @ q0)
        rhs1 = -(t.cp @ p1)
        for ph, i in self._root_nodes_of(self.spec.root_bus):
            if self.spec.parent is None:
                rhs0[i], rhs1[i] = self.feeder.source_v_pu**2, 0.0
            else:
                key = f"{self.spec.root_bus}:{ph}"
                rhs0[i] = from_parent[f"v0:{key}"]
                rhs1[i] = [from_parent.get(f"v1:{key}:{g}", 0.0) for g in self.group_ids]
        v0, v1 = self._volt_op.solve(rhs0), np.asarray(self._volt_op.solve(rhs1))
        v1 = v1.reshape(t.size, -1)
        out: Boundary = {}
        for bus in self.spec.ghosts:
            for ph, i in self._root_nodes_of(bus):
                out[f"v0:{bus}:{ph}"] = float(v0[i])
                out.update(_sparse(f"v1:{bus}:{ph}", v1[i], self.group_ids))
        own = self._limited
        near = near_limit(v0[own], v1[own], self._v2max[own], self._v2min[own])
        keep = own[near]
        return out, Rows(self._node_ids[keep], v0[keep], v1[keep], self._weight)


def _sparse(prefix: str, coefficients: FloatArray, group_ids: Sequence[str]) -> Boundary:
    return {
        f"{prefix}:{group_ids[j]}": float(coefficients[j])
        for j in np.nonzero(np.abs(coefficients) > _ZERO)[0].tolist()
    }


def near_limit(
    v0: FloatArray, v1: FloatArray, v2max: FloatArray, v2min: FloatArray
) -> npt.NDArray[np.bool_]:
    """Nodes whose v0 + V1 c reaches v2max or v2min for some c in [0, 1]^K.

    Args:
        v0: squared voltages at c = 0 (pu^2), one per node.
        v1: (nodes x groups) sensitivity of the squared voltages to the group values.
        v2max, v2min: squared limits per node (already moved by the slack).
    """
    v1 = v1.reshape(len(v0), -1)
    highest = v0 + np.clip(v1, 0.0, None).sum(axis=1)
    lowest = v0 + np.clip(v1, None, 0.0).sum(axis=1)
    result: npt.NDArray[np.bool_] = (highest > v2max - _SLACK) | (lowest < v2min + _SLACK)
    return result


def solve_group_lp(
    rows: Rows,
    v2max: FloatArray,
    v2min: FloatArray,
    weight: FloatArray,
    upper: FloatArray,
    offset: FloatArray | None = None,
) -> FloatArray | None:
    """min weight . c s.t. v2min <= v0 + offset + V1 c <= v2max (per row's node), 0 <= c <= upper.

    Args:
        rows: the stacked rows (`node` indexes `v2max` / `v2min`).
        v2max, v2min: squared limits per node of the full feeder.
        weight: cost per value (a tiny one where there is no power, so it stays at 0).
        upper: bound per value.
        offset: a constant added to v0 (`equal_kw`: the fully curtailed PVs).

    Returns the values, or None when none meets every limit.
    """
    k = len(weight)
    v0 = rows.v0 if offset is None else rows.v0 + offset
    if len(v0) == 0:
        return np.zeros(k)
    a = np.vstack([rows.v1, -rows.v1])
    b = np.concatenate([v2max[rows.node] - v0, v0 - v2min[rows.node]])
    if k == 1:  # one value: an interval, the lowest point of it is the optimum
        col = a[:, 0]
        if np.any(b[col == 0] < -_SLACK):
            return None
        lo = float(np.max(b[col < 0] / col[col < 0], initial=0.0))
        hi = float(np.min(b[col > 0] / col[col > 0], initial=float(upper[0])))
        return np.array([lo]) if lo <= hi + 1e-12 else None
    cost = np.where(weight > 0, weight, 1e-9)
    bounds = [(0.0, float(u)) for u in upper]
    res = linprog(cost, A_ub=a, b_ub=b, bounds=bounds, method="highs")
    if res.status != 0 or res.x is None:
        return None
    out: FloatArray = np.clip(np.asarray(res.x, dtype=float), 0.0, upper)
    return out


def solve_fractions(
    rows: Rows, group_ids: Sequence[str], v2max: FloatArray, v2min: FloatArray
) -> dict[str, float]:
    """The group fractions from every area's rows (raises SolverError when none fits)."""
    c = solve_group_lp(rows, v2max, v2min, rows.weight_mw, np.ones(len(group_ids)))
    if c is None:
        raise SolverError("no curtailment meets the voltage limits")
    return {g: float(x) for g, x in zip(group_ids, c, strict=True)}


def equal_kw_fractions(
    rows: Rows, avail: FloatArray, member: FloatArray, v2max: FloatArray, v2min: FloatArray
) -> tuple[FloatArray, int]:
    """`equal_kw` from rows over one fraction per PV: the centralised water-filling, in memory.

    Args:
        rows: stacked rows whose groups are the PVs (columns in the order of `avail`).
        avail: available power per PV, MW.
        member: (pvs x groups) membership of the fairness groups (feeder or areas).
        v2max, v2min: squared limits per node of the full feeder.

    Returns the per-PV fractions and the number of small LPs solved. Raises SolverError when
    even curtailing every PV fully does not meet the limits.
    """
    live_any = avail > _MIN_AVAILABLE_MW
    inv = np.divide(1.0, avail, out=np.zeros_like(avail), where=live_any)
    saturated = np.zeros(len(avail), dtype=bool)
    for passes in range(1, len(avail) + 2):
        live = live_any & ~saturated
        # fraction_i = cut_g / avail_i for a shared PV, 1 for a saturated one
        coef = rows.v1 @ ((live * inv)[:, None] * member)
        offset = rows.v1 @ saturated.astype(float)
        counts = live @ member
        shared = np.where(live[:, None] & (member > 0), avail[:, None], np.inf)
        upper = np.minimum(shared.min(axis=0, initial=np.inf), 1e6)
        lp_rows = Rows(rows.node, rows.v0, coef, counts)
        cut = solve_group_lp(lp_rows, v2max, v2min, counts, upper, offset)
        if cut is None:
            if not live.any():
                raise SolverError("no curtailment meets the voltage limits")
            for col in range(member.shape[1]):
                members = np.nonzero(live & (member[:, col] > 0))[0]
                if members.size:
                    saturated[members[np.argmin(avail[members])]] = True
            continue
        per_pv = member @ cut
        binding = live & (per_pv >= avail - _BINDING_MW)
        if not binding.any():
            frac = np.where(saturated, 1.0, np.where(live, per_pv * inv, 0.0))
            return np.clip(frac, 0.0, 1.0), passes
        saturated |= binding
    raise SolverError(f"equal_kw: no fixed point after {passes} passes")


class RowSolver:
    """The coordinator's part: from the areas' rows to per-PV fractions, for any bias.

    Args:
        feeder: the feeder.
        limits: voltage band and margin.
        fairness, group_by: the rule.
    """

    def __init__(
        self,
        feeder: Feeder,
        limits: Limits,
        fairness: Fairness = "equal_fraction",
        group_by: GroupBy = "feeder",
    ) -> None:
        self.feeder = feeder
        self.limits = limits
        self.equal_kw = fairness == "equal_kw"
        self.tree = compile_tree(feeder)
        self.groups, self.group_ids = group_order(feeder, fairness, group_by)
        # the groups the areas' rows are over: per PV for equal_kw
        self.row_groups, self.row_group_ids = (
            group_order(feeder, "none", "feeder")
            if self.equal_kw
            else (self.groups, self.group_ids)
        )
        self._member = np.zeros((len(self.tree.pv_ids), len(self.group_ids)))
        for i, pid in enumerate(self.tree.pv_ids):
            self._member[i, self.group_ids.index(self.groups[pid])] = 1.0

    def decide(self, rows: Rows, inputs: StepInputs, elapsed: float = 0.0) -> Curtailment:
        """Per-PV fractions meeting the limits under `inputs.v_bias_pu` (raises SolverError)."""
        t = self.tree
        bias = inputs.v_bias_pu if inputs.v_bias_pu is not None else np.zeros(t.size)
        v2max, v2min = squared_limits(self.limits, bias)
        started = time.perf_counter()
        if self.equal_kw:
            avail = available_mw(t, inputs.pv_available_kw)
            frac, passes = equal_kw_fractions(rows, avail, self._member, v2max, v2min)
            per_pv = {pid: float(f) for pid, f in zip(t.pv_ids, frac, strict=True)}
            result = group_curtailment(
                self.feeder,
                t,
                inputs,
                {p: p for p in t.pv_ids},
                per_pv,
                elapsed + time.perf_counter() - started,
                3,
            )
            return replace(result, passes=passes)
        fractions = solve_fractions(rows, self.row_group_ids, v2max, v2min)
        return group_curtailment(
            self.feeder,
            t,
            inputs,
            self.groups,
            fractions,
            elapsed + time.perf_counter() - started,
            3,
        )


class SweepSolver:
    """All sweep agents in one process (same messages as on the bus, exchanged in memory).

    Args:
        feeder: the feeder with its areas.
        limits: voltage band and margin.
        fairness: `equal_fraction`, `equal_kw` or `none`.
        group_by: `feeder` or `area` (with `equal_fraction` or `equal_kw`).
    """

    def __init__(
        self,
        feeder: Feeder,
        limits: Limits | None = None,
        fairness: Fairness = "equal_fraction",
        group_by: GroupBy = "feeder",
    ) -> None:
        self.feeder = feeder
        self.limits = limits or Limits()
        self.rows = RowSolver(feeder, self.limits, fairness, group_by)
        self.equal_kw = self.rows.equal_kw
        self.group_ids = self.rows.group_ids
        self.specs = area_specs(feeder)
        rg, rgi = self.rows.row_groups, self.rows.row_group_ids
        self.agents = {s.id: SweepAgent(feeder, s, self.limits, rg, rgi) for s in self.specs}
        self.tree = self.rows.tree
        self.last_exchanged = 0
        """Boundary values and rows exchanged in the last sweep (message size)."""

    def sweep(self, inputs: StepInputs) -> Rows:
        """One sweep (three exchange rounds): every area's rows, stacked."""
        for agent in self.agents.values():
            agent.set_inputs(inputs)
        flows: Boundary = {}
        for spec in reversed(self.specs):
            flows.update(self.agents[spec.id].backward(flows))
        volts: Boundary = {}
        rows: dict[str, Rows] = {}
        for spec in self.specs:
            out, rows[spec.id] = self.agents[spec.id].forward(volts)
            volts.update(out)
        rgi = self.rows.row_group_ids
        self.last_exchanged = (
            len(flows) + len(volts) + sum(len(r.to_values(rgi)) for r in rows.values())
        )
        return stack(list(rows.values()), len(rgi))

    def solve(self, inputs: StepInputs) -> Curtailment:
        """Backward sweep, forward sweep, the small LP over the areas' rows."""
        started = time.perf_counter()
        rows = self.sweep(inputs)
        return self.rows.decide(rows, inputs, time.perf_counter() - started)


def group_curtailment(
    feeder: Feeder,
    tree: Tree,
    inputs: StepInputs,
    groups: Mapping[str, str],
    fractions: Mapping[str, float],
    elapsed: float,
    rounds: int,
) -> Curtailment:
    """A Curtailment from one fraction per group (full tree order; linear voltages after it)."""
    avail = available_mw(tree, inputs.pv_available_kw)
    frac = np.array([fractions.get(groups[pid], 0.0) for pid in tree.pv_ids])
    output = avail * (1 - frac)
    p_net = tree.load_mw * inputs.load_mult - tree.pv_share @ output
    flow = solve_linear(tree, p_net, tree.q_net_mvar(inputs.load_mult), feeder.source_v_pu**2)
    per_pv = all(gid == pid for pid, gid in groups.items())  # fairness none: no group to show
    shown = {} if per_pv else dict(fractions)
    return make_curtailment(tree, avail, frac, output, flow.v_pu, elapsed, rounds, shown)
