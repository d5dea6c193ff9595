"""Distributed curtailment by an affine boundary sweep: exact in three exchange rounds per pass.

`equal_fraction` and `none` curtail each PV by the fraction of its group: one group for the
feeder, one per area, or one per PV (`none`). `equal_kw` curtails every PV of a group by the same
kW (MW in the model) as long as it has that much; LinDistFlow is linear, so with the K group
values c (fractions, or MW for `equal_kw`) every flow and squared voltage is affine in c. The area agents (a tree, rooted at
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

`equal_kw` runs the centralised solver's outer loop: a PV whose available power is below its
group's common cut is curtailed fully and the sweep is run again with it fixed (each pass is one
sweep). The pass start carries per group the threshold `s:<group>` (MW): a PV with less available
power, or exactly that much and a feeder index (position in the feeder's PV list) up to
`k:<group>` (absent: any), is fully curtailed. Each area adds to its rows the smallest available
power of a PV still shared in each group (`u:<group>`, the bound of that group's cut) and the
lowest feeder index of a PV with that power (`i:<group>`), so that when no cut meets the limits
the next pass curtails fully the one PV the centralised solver would (the first smallest).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

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
_MIN_AVAILABLE_MW = 1e-6  # as the centralised solver: below this a PV is not curtailed
_BINDING_MW = 1e-7  # a cut within this of a PV's available power curtails it fully


@dataclass(frozen=True)
class Rows:
    """What an area's voltage limits allow: A c <= b over the group fractions (groups order).

    Attributes:
        a: (rows x groups) coefficients.
        b: right-hand sides.
        weight_mw: per group, the LP's cost: the available power in this area (fractions, MW)
            or the number of PVs still shared (`equal_kw`, MW per MW of cut).
        upper: per group, the bound of the group's value from this area (`equal_kw`: the
            smallest available power of a shared PV, MW); None = no bound of its own.
        upper_index: per group, the lowest feeder index of a shared PV with that power.
    """

    a: FloatArray
    b: FloatArray
    weight_mw: FloatArray
    upper: FloatArray | None = None
    upper_index: FloatArray | None = None

    def to_values(self, group_ids: Sequence[str]) -> Boundary:
        """Flatten for a bus message: `b:<row>`, `a:<row>:<group>` (non-zero), `w:<group>`,
        `u:<group>`, `i:<group>` (finite bounds only)."""
        out: Boundary = {}
        for i, (row, rhs) in enumerate(zip(self.a, self.b, strict=True)):
            out[f"b:{i}"] = float(rhs)
            for j in np.nonzero(np.abs(row) > _ZERO)[0].tolist():
                out[f"a:{i}:{group_ids[j]}"] = float(row[j])
        for gid, w in zip(group_ids, self.weight_mw, strict=True):
            if w > 0:
                out[f"w:{gid}"] = float(w)
        if self.upper is not None:
            for gid, u in zip(group_ids, self.upper, strict=True):
                if np.isfinite(u):
                    out[f"u:{gid}"] = float(u)
        if self.upper_index is not None:
            for gid, i in zip(group_ids, self.upper_index, strict=True):
                if np.isfinite(i):
                    out[f"i:{gid}"] = float(i)
        return out

    @classmethod
    def from_values(cls, values: Mapping[str, float], group_ids: Sequence[str]) -> Rows:
        """Inverse of `to_values` (unknown groups raise SolverError)."""
        col = {g: j for j, g in enumerate(group_ids)}
        m = sum(1 for k in values if k.startswith("b:"))
        a = np.zeros((m, len(group_ids)))
        b = np.zeros(m)
        w = np.zeros(len(group_ids))
        u = np.full(len(group_ids), np.inf)
        ui = np.full(len(group_ids), np.inf)
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
                elif kind == "u":
                    u[col[rest]] = value
                elif kind == "i":
                    ui[col[rest]] = value
        except (KeyError, IndexError, ValueError) as err:
            raise SolverError(f"malformed area rows ({key!r}): {err}") from err
        bounded = np.isfinite(u).any()
        return cls(a, b, w, u if bounded else None, ui if bounded else None)


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
        limits: voltage band and margin.
        groups: fairness group of each PV (default: one for the feeder).
        group_ids: the groups in the order shared by every agent.
        equal_kw: the group values are a common cut in MW (fairness `equal_kw`), not fractions.
    """

    def __init__(
        self,
        feeder: Feeder,
        spec: AreaSpec,
        limits: Limits,
        groups: Mapping[str, str] | None = None,
        group_ids: Sequence[str] | None = None,
        equal_kw: bool = False,
    ) -> None:
        self.feeder = feeder
        self.equal_kw = equal_kw
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
        self._upper: FloatArray | None = None
        self._upper_index: FloatArray | None = None
        position = {pv.id: i for i, pv in enumerate(feeder.pvs)}
        self._pv_index = np.array([position[pid] for pid in t.pv_ids], dtype=float)
        # a bound of every group's value the row filter can use before the pass's LP: 1 for a
        # fraction, the largest nameplate in the group (MW) for a common cut
        self._box = np.ones(k)
        if equal_kw:
            self._box = np.zeros(k)
            for pv in feeder.pvs:
                j = col[groups[pv.id]]
                self._box[j] = max(self._box[j], pv.rating_kw / 1000)
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

    def set_inputs(self, inputs: StepInputs, saturate: Mapping[str, float] | None = None) -> None:
        """Net loads affine in c (MW) and the step's limits.

        Fractions: p = load - gen + gen c per group. `equal_kw`: p = load - gen of the PVs
        still shared + c per shared PV of the group; the PVs `saturate` names (thresholds
        `s:<group>`, `k:<group>`, see the module docstring) are fully curtailed.
        """
        t = self.tree
        avail = available_mw(t, inputs.pv_available_kw)
        load = t.load_mw * inputs.load_mult
        if self.equal_kw:
            live, producing = shared_pvs(
                avail, self._pv_group, self.group_ids, saturate, self._pv_index
            )
            self._p1 = t.pv_share @ (live[:, None] * self._pv_group)
            self._p0 = load - t.pv_share @ (avail * producing)
            self._weight = live @ self._pv_group
            shared = np.where((live > 0)[:, None] & (self._pv_group > 0), avail[:, None], np.inf)
            self._upper = shared.min(axis=0, initial=np.inf)
            at_min = shared == self._upper[None, :]
            index = np.where(at_min, self._pv_index[:, None], np.inf)
            self._upper_index = index.min(axis=0, initial=np.inf)
        else:
            gen_by_group = t.pv_share @ (avail[:, None] * self._pv_group)  # (nodes x groups)
            self._p1 = gen_by_group
            self._p0 = load - gen_by_group.sum(axis=1)
            self._weight = avail @ self._pv_group
        self._q0 = t.load_mvar * inputs.load_mult
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
        rows = binding_rows(v0[own], v1[own], self._v2max[own], self._v2min[own], self._box)
        return out, Rows(rows[0], rows[1], self._weight, self._upper, self._upper_index)


def _sparse(prefix: str, coefficients: FloatArray, group_ids: Sequence[str]) -> Boundary:
    return {
        f"{prefix}:{group_ids[j]}": float(coefficients[j])
        for j in np.nonzero(np.abs(coefficients) > _ZERO)[0].tolist()
    }


def binding_rows(
    v0: FloatArray,
    v1: FloatArray,
    v2max: FloatArray,
    v2min: FloatArray,
    box: FloatArray | None = None,
) -> tuple[FloatArray, FloatArray]:
    """Rows A c <= b of v2min <= v0 + V1 c <= v2max that some c in [0, box]^K can violate.

    Args:
        v0: squared voltages at c = 0 (pu^2), one per node.
        v1: (nodes x groups) sensitivity of the squared voltages to the group values.
        v2max, v2min: squared limits per node.
        box: per group, an upper bound of its value (default 1: fractions).
    """
    v1 = v1.reshape(len(v0), -1)
    ub = np.ones(v1.shape[1]) if box is None else box
    upper_b = v2max - v0
    upper_can_bind = np.clip(v1, 0.0, None) @ ub > upper_b + _SLACK
    lower_b = v0 - v2min
    lower_can_bind = np.clip(-v1, 0.0, None) @ ub > lower_b + _SLACK
    a = np.vstack([v1[upper_can_bind], -v1[lower_can_bind]])
    b = np.concatenate([upper_b[upper_can_bind], lower_b[lower_can_bind]])
    return a, b


def solve_fractions(
    rows: Sequence[Rows], group_ids: Sequence[str], cap: float = 1.0
) -> dict[str, float]:
    """The group values from every area's rows: min sum w c s.t. A c <= b, 0 <= c <= bounds.

    Args:
        rows: every area's rows.
        group_ids: the groups (columns).
        cap: upper bound of every value (1 for fractions, inf for a common cut in MW); each
            area's own `upper` bounds tighten it.

    Raises SolverError when no values meet every limit.
    """
    k = len(group_ids)
    upper = _upper(rows, k, cap)
    weight = np.sum([r.weight_mw for r in rows], axis=0) if rows else np.zeros(k)
    a = np.vstack([r.a.reshape(-1, k) for r in rows]) if rows else np.zeros((0, k))
    b = np.concatenate([r.b for r in rows]) if rows else np.zeros(0)
    if a.shape[0] == 0:
        return dict.fromkeys(group_ids, 0.0)
    # a tiny cost on groups with no power now keeps their fractions at 0 when they do not matter
    cost = np.where(weight > 0, weight, 1e-9)
    bounds = [(0.0, float(u) if np.isfinite(u) else None) for u in upper]
    res = linprog(cost, A_ub=a, b_ub=b, bounds=bounds, method="highs")
    if res.status != 0 or res.x is None:
        raise SolverError(f"no curtailment meets the voltage limits ({res.message})")
    return {g: float(min(u, max(0.0, x))) for g, x, u in zip(group_ids, res.x, upper, strict=True)}


def _upper(rows: Sequence[Rows], k: int, cap: float) -> FloatArray:
    upper = np.full(k, cap)
    for r in rows:
        if r.upper is not None:
            upper = np.minimum(upper, r.upper)
    return upper


def shared_pvs(
    avail: FloatArray,
    pv_group: FloatArray,
    group_ids: Sequence[str],
    saturate: Mapping[str, float] | None,
    pv_index: FloatArray,
) -> tuple[FloatArray, FloatArray]:
    """`equal_kw`: per PV 1.0 if it shares its group's cut, and 1.0 if it produces at all.

    Args:
        avail: available power per PV, MW.
        pv_group: (pvs x groups) membership.
        group_ids: the groups (columns of `pv_group`).
        saturate: per group `s:<group>` (MW) and `k:<group>`: a PV with less available power,
            or that much and a feeder index up to `k` (absent: any), is fully curtailed.
        pv_index: the PVs' feeder indices (positions in the feeder's PV list).
    """
    sat = saturate or {}
    threshold = np.array([sat.get(f"s:{g}", -np.inf) for g in group_ids])
    last = np.array([sat.get(f"k:{g}", np.inf) for g in group_ids])
    col = pv_group.argmax(axis=1) if len(group_ids) else np.zeros(len(avail), dtype=int)
    t = threshold[col] if len(group_ids) else np.full(len(avail), -np.inf)
    k = last[col] if len(group_ids) else np.full(len(avail), np.inf)
    saturated = (avail < t) | ((avail == t) & (pv_index <= k))
    live = (avail > _MIN_AVAILABLE_MW) & ~saturated
    return live.astype(float), (~saturated).astype(float)


def next_pass(
    rows: Sequence[Rows], group_ids: Sequence[str], saturate: Mapping[str, float]
) -> tuple[dict[str, float], dict[str, float] | None]:
    """`equal_kw` outer loop step: the pass's common cuts, and the next thresholds if any.

    As the centralised solver: when a group's cut reaches the available power of shared PVs
    (within 1e-7 MW) those PVs are curtailed fully next pass; when no cut meets the limits the
    first smallest shared PV of every group is.

    Returns:
        (cut per group in MW, None when done or the thresholds of the next pass).

    Raises SolverError when no cut meets the limits and no PV is left to curtail fully.
    """
    upper = _upper(rows, len(group_ids), np.inf)
    nxt = dict(saturate)
    try:
        cut = solve_fractions(rows, group_ids, cap=np.inf)
    except SolverError:
        if not np.isfinite(upper).any():
            raise
        for j, (gid, u) in enumerate(zip(group_ids, upper, strict=True)):
            if np.isfinite(u):
                first = min(
                    float(r.upper_index[j])
                    for r in rows
                    if r.upper is not None and r.upper_index is not None and r.upper[j] == u
                )
                nxt[f"s:{gid}"], nxt[f"k:{gid}"] = float(u), first
        return dict.fromkeys(group_ids, 0.0), nxt
    binding = [
        gid
        for gid, u in zip(group_ids, upper, strict=True)
        if np.isfinite(u) and cut[gid] >= u - _BINDING_MW
    ]
    if not binding:
        return cut, None
    for gid in binding:
        nxt[f"s:{gid}"] = cut[gid] + _BINDING_MW
        nxt.pop(f"k:{gid}", None)
    return cut, nxt


class SweepSolver:
    """All sweep agents in one process (same messages as on the bus, exchanged in memory).

    Args:
        feeder: the feeder with its areas.
        limits: voltage band and margin.
        fairness: `equal_fraction`, `equal_kw` (passes of the sweep) or `none`.
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
        self.equal_kw = fairness == "equal_kw"
        self.groups, self.group_ids = group_order(feeder, fairness, group_by)
        self.specs = area_specs(feeder)
        self.agents = {
            s.id: SweepAgent(feeder, s, self.limits, self.groups, self.group_ids, self.equal_kw)
            for s in self.specs
        }
        self.tree = compile_tree(feeder)
        self.last_exchanged = 0
        """Boundary values and rows exchanged in the last solve (message size)."""

    def solve(self, inputs: StepInputs) -> Curtailment:
        """Backward sweep, forward sweep, the small LP over the areas' rows (per pass)."""
        started = time.perf_counter()
        if not self.equal_kw:
            rows = self._sweep(inputs, None)
            fractions = solve_fractions(rows, self.group_ids)
            return group_curtailment(
                self.feeder, self.tree, inputs, self.groups, fractions,
                time.perf_counter() - started, 3,
            )  # fmt: skip
        saturate: dict[str, float] = {}
        exchanged = 0
        for passes in range(1, len(self.feeder.pvs) + 2):
            rows = self._sweep(inputs, saturate)
            exchanged += self.last_exchanged
            cut, more = next_pass(rows, self.group_ids, saturate)
            if more is None:
                self.last_exchanged = exchanged
                return kw_curtailment(
                    self.feeder, self.tree, inputs, self.groups, cut, saturate,
                    time.perf_counter() - started, passes,
                )  # fmt: skip
            saturate = more
        raise SolverError(f"equal_kw: no fixed point after {passes} passes")

    def _sweep(self, inputs: StepInputs, saturate: Mapping[str, float] | None) -> list[Rows]:
        """One sweep (three exchange rounds): every area's rows on the group values."""
        for agent in self.agents.values():
            agent.set_inputs(inputs, saturate)
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
        return list(rows.values())


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


def kw_curtailment(
    feeder: Feeder,
    tree: Tree,
    inputs: StepInputs,
    groups: Mapping[str, str],
    cut_mw: Mapping[str, float],
    saturate: Mapping[str, float],
    elapsed: float,
    passes: int,
) -> Curtailment:
    """A Curtailment from one common cut per group (`equal_kw`, MW) after `passes` sweeps.

    A PV the thresholds `saturate` name is curtailed fully, any other by min(cut, available).
    The iterations reported are the exchange rounds (three per pass).
    """
    avail = available_mw(tree, inputs.pv_available_kw)
    group_ids = list(dict.fromkeys(groups[pid] for pid in tree.pv_ids))
    member = np.zeros((len(tree.pv_ids), len(group_ids)))
    for i, pid in enumerate(tree.pv_ids):
        member[i, group_ids.index(groups[pid])] = 1.0
    position = {pv.id: i for i, pv in enumerate(feeder.pvs)}
    index = np.array([position[pid] for pid in tree.pv_ids], dtype=float)
    live, producing = shared_pvs(avail, member, group_ids, saturate, index)
    cut = np.array([cut_mw.get(groups[pid], 0.0) for pid in tree.pv_ids])
    curtailed = np.where(producing > 0, np.minimum(cut * live, avail), avail)
    frac = np.divide(curtailed, avail, out=np.zeros_like(avail), where=avail > _MIN_AVAILABLE_MW)
    output = avail - curtailed
    p_net = tree.load_mw * inputs.load_mult - tree.pv_share @ output
    flow = solve_linear(tree, p_net, tree.load_mvar * inputs.load_mult, feeder.source_v_pu**2)
    result = make_curtailment(tree, avail, frac, output, flow.v_pu, elapsed, 3 * passes, {})
    return replace(result, passes=passes)


def feeder_curtailment(
    feeder: Feeder, tree: Tree, inputs: StepInputs, c: float, elapsed: float, rounds: int
) -> Curtailment:
    """A Curtailment with one fraction `c` for every PV of the feeder (full tree order)."""
    groups = {pv.id: feeder.feeder_id for pv in feeder.pvs}
    return group_curtailment(feeder, tree, inputs, groups, {feeder.feeder_id: c}, elapsed, rounds)
