"""Distributed curtailment by an affine boundary sweep: exact in three exchange rounds.

Every fairness rule but `equal_kw` curtails each PV by the fraction of its group: one group for
the feeder, one per area, or one per PV (`none`). LinDistFlow is linear, so with the K group
fractions c every flow and squared voltage is affine in c. The area agents (a tree, rooted at
the source's area) therefore solve the LP exactly by exchanging boundary values as affine
functions of c - no penalty, no iteration count to tune:

1. backward (leaves -> source): each area sends its parent the flow into its root per phase,
   P = P0 + P1 c (P1 non-zero only for the groups with PVs below) and Q = Q0 (unity power
   factor);
2. forward (source -> leaves): each area sends its children the squared voltage of their root
   per phase, v = V0 + V1 c;
3. each area then knows its node voltages as V0_n + V1_n c and publishes the rows A c <= b its
   limits put on c (rows that cannot bind for c in [0, 1]^K are dropped) and the available
   power of each group in it; the fractions are the small LP min sum_g w_g c_g s.t. all the
   areas' rows, 0 <= c <= 1 (HiGHS), which is the centralised LP's optimum.

With one feeder-wide fraction (K = 1) each row is an interval and the LP is a max/min.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
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
)

Boundary = dict[str, float]
"""Boundary values keyed `p0:<bus>:<phase>`, `p1:<bus>:<phase>:<group>`, `q0:…`, `v0:…`, `v1:…`
(coefficients that are zero are left out)."""

_ZERO = 1e-15
_SLACK = 1e-12


@dataclass(frozen=True)
class Rows:
    """What an area's voltage limits allow: A c <= b over the group fractions (groups order).

    Attributes:
        a: (rows x groups) coefficients.
        b: right-hand sides.
        weight_mw: per group, the available power in this area (the LP's cost), MW.
    """

    a: FloatArray
    b: FloatArray
    weight_mw: FloatArray

    def to_values(self, group_ids: Sequence[str]) -> Boundary:
        """Flatten for a bus message: `b:<row>`, `a:<row>:<group>` (non-zero), `w:<group>`."""
        out: Boundary = {}
        for i, (row, rhs) in enumerate(zip(self.a, self.b, strict=True)):
            out[f"b:{i}"] = float(rhs)
            for j in np.nonzero(np.abs(row) > _ZERO)[0].tolist():
                out[f"a:{i}:{group_ids[j]}"] = float(row[j])
        for gid, w in zip(group_ids, self.weight_mw, strict=True):
            if w > 0:
                out[f"w:{gid}"] = float(w)
        return out

    @classmethod
    def from_values(cls, values: Mapping[str, float], group_ids: Sequence[str]) -> Rows:
        """Inverse of `to_values` (unknown groups raise SolverError)."""
        col = {g: j for j, g in enumerate(group_ids)}
        m = sum(1 for k in values if k.startswith("b:"))
        a = np.zeros((m, len(group_ids)))
        b = np.zeros(m)
        w = np.zeros(len(group_ids))
        try:
            for key, value in values.items():
                kind, _, rest = key.partition(":")
                if kind == "b":
                    b[int(rest)] = value
                elif kind == "a":
                    row, _, gid = rest.partition(":")
                    a[int(row), col[gid]] = value
                elif kind == "w":
                    w[col[rest]] = value
        except (KeyError, IndexError, ValueError) as err:
            raise SolverError(f"malformed area rows ({key!r}): {err}") from err
        return cls(a, b, w)


def group_order(
    feeder: Feeder, fairness: Fairness, group_by: GroupBy
) -> tuple[dict[str, str], list[str]]:
    """Group of each PV and the groups in a fixed order every agent derives alike."""
    if fairness == "equal_kw":
        raise SolverError("fairness equal_kw is solved centrally only")
    groups = pv_groups(feeder, fairness, group_by)
    ordered = list(dict.fromkeys(groups[pv.id] for pv in feeder.pvs))
    return groups, ordered


RULE_CODES: dict[tuple[str, str], int] = {
    ("equal_fraction", "feeder"): 0,
    ("equal_fraction", "area"): 1,
    ("none", "feeder"): 2,
    ("none", "area"): 2,
}
"""Fairness rule as a number in the agents' round start (exchange values are numbers)."""
RULES: dict[int, tuple[Fairness, GroupBy]] = {
    0: ("equal_fraction", "feeder"),
    1: ("equal_fraction", "area"),
    2: ("none", "feeder"),
}


class SweepAgent:
    """One area's part of the sweep (pure: inputs in, boundary values out).

    Args:
        feeder: the feeder (the agent uses its own area of it).
        spec: the area.
        limits: voltage band and margin.
        groups: fairness group of each PV (default: one for the feeder).
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
        self._limited = owned
        self.flows: tuple[FloatArray, FloatArray, FloatArray] | None = None

    @property
    def children(self) -> list[str]:
        """Root buses of the child areas (the ghosts)."""
        return list(self.spec.ghosts)

    def set_inputs(self, inputs: StepInputs) -> None:
        """Net loads affine in c: p = load - gen + gen c per group (MW), and the step's limits."""
        t = self.tree
        avail = available_mw(t, inputs.pv_available_kw)
        gen_by_group = t.pv_share @ (avail[:, None] * self._pv_group)  # (nodes x groups)
        self._p1 = gen_by_group
        self._p0 = t.load_mw * inputs.load_mult - gen_by_group.sum(axis=1)
        self._q0 = t.load_mvar * inputs.load_mult
        self._weight = avail @ self._pv_group
        bias = np.zeros(t.size)
        if inputs.v_bias_pu is not None:
            bias = np.array([inputs.v_bias_pu[self.full_index[node]] for node in t.nodes])
        lim = self.limits
        self._v2max = np.clip(lim.v_max_pu - lim.margin_pu - bias, 0.5, None) ** 2
        self._v2min = np.clip(lim.v_min_pu - bias, 0.0, None) ** 2

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
        """Voltages affine in c: the children's root values and this area's rows on c."""
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
        out: Boundary = {}
        for bus in self.spec.ghosts:
            for ph, i in self._root_nodes_of(bus):
                out[f"v0:{bus}:{ph}"] = float(v0[i])
                out.update(_sparse(f"v1:{bus}:{ph}", v1[i], self.group_ids))
        own = self._limited
        rows = binding_rows(v0[own], v1[own], self._v2max[own], self._v2min[own])
        return out, Rows(rows[0], rows[1], self._weight)


def _sparse(prefix: str, coefficients: FloatArray, group_ids: Sequence[str]) -> Boundary:
    return {
        f"{prefix}:{group_ids[j]}": float(coefficients[j])
        for j in np.nonzero(np.abs(coefficients) > _ZERO)[0].tolist()
    }


def binding_rows(
    v0: FloatArray, v1: FloatArray, v2max: FloatArray, v2min: FloatArray
) -> tuple[FloatArray, FloatArray]:
    """Rows A c <= b of v2min <= v0 + V1 c <= v2max that some c in [0, 1]^K can violate.

    Args:
        v0: squared voltages at c = 0 (pu^2), one per node.
        v1: (nodes x groups) sensitivity of the squared voltages to the fractions.
        v2max, v2min: squared limits per node.
    """
    v1 = v1.reshape(len(v0), -1)
    upper_b = v2max - v0
    upper_can_bind = np.clip(v1, 0.0, None).sum(axis=1) > upper_b + _SLACK
    lower_b = v0 - v2min
    lower_can_bind = np.clip(-v1, 0.0, None).sum(axis=1) > lower_b + _SLACK
    a = np.vstack([v1[upper_can_bind], -v1[lower_can_bind]])
    b = np.concatenate([upper_b[upper_can_bind], lower_b[lower_can_bind]])
    return a, b


def solve_fractions(rows: Sequence[Rows], group_ids: Sequence[str]) -> dict[str, float]:
    """The group fractions from every area's rows: min sum w c s.t. A c <= b, 0 <= c <= 1.

    Raises SolverError when no fractions meet every limit.
    """
    k = len(group_ids)
    weight = np.sum([r.weight_mw for r in rows], axis=0) if rows else np.zeros(k)
    a = np.vstack([r.a.reshape(-1, k) for r in rows]) if rows else np.zeros((0, k))
    b = np.concatenate([r.b for r in rows]) if rows else np.zeros(0)
    if a.shape[0] == 0:
        return dict.fromkeys(group_ids, 0.0)
    # a tiny cost on groups with no power now keeps their fractions at 0 when they do not matter
    cost = np.where(weight > 0, weight, 1e-9)
    res = linprog(cost, A_ub=a, b_ub=b, bounds=[(0.0, 1.0)] * k, method="highs")
    if res.status != 0 or res.x is None:
        raise SolverError(f"no curtailment meets the voltage limits ({res.message})")
    return {g: float(min(1.0, max(0.0, x))) for g, x in zip(group_ids, res.x, strict=True)}


class SweepSolver:
    """All sweep agents in one process (same messages as on the bus, exchanged in memory).

    Args:
        feeder: the feeder with its areas.
        limits: voltage band and margin.
        fairness: `equal_fraction` or `none`.
        group_by: `feeder` or `area` (with `equal_fraction`).
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
        self.groups, self.group_ids = group_order(feeder, fairness, group_by)
        self.specs = area_specs(feeder)
        self.agents = {
            s.id: SweepAgent(feeder, s, self.limits, self.groups, self.group_ids)
            for s in self.specs
        }
        self.tree = compile_tree(feeder)
        self.last_exchanged = 0
        """Boundary values and rows exchanged in the last solve (message size)."""

    def solve(self, inputs: StepInputs) -> Curtailment:
        """Backward sweep, forward sweep, the small LP over the areas' rows."""
        started = time.perf_counter()
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
        self.last_exchanged = (
            len(flows) + len(volts) + sum(len(r.to_values(self.group_ids)) for r in rows.values())
        )
        fractions = solve_fractions(list(rows.values()), self.group_ids)
        return group_curtailment(
            self.feeder, self.tree, inputs, self.groups, fractions,
            time.perf_counter() - started, 3,
        )  # fmt: skip


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
    flow = solve_linear(tree, p_net, tree.load_mvar * inputs.load_mult, feeder.source_v_pu**2)
    per_pv = all(gid == pid for pid, gid in groups.items())  # fairness none: no group to show
    shown = {} if per_pv else dict(fractions)
    return make_curtailment(tree, avail, frac, output, flow.v_pu, elapsed, rounds, shown)


def feeder_curtailment(
    feeder: Feeder, tree: Tree, inputs: StepInputs, c: float, elapsed: float, rounds: int
) -> Curtailment:
    """A Curtailment with one fraction `c` for every PV of the feeder (full tree order)."""
    groups = {pv.id: feeder.feeder_id for pv in feeder.pvs}
    return group_curtailment(feeder, tree, inputs, groups, {feeder.feeder_id: c}, elapsed, rounds)
