"""Distributed curtailment by an affine boundary sweep: exact in three exchange rounds.

With one curtailment fraction c shared by the feeder (fairness `equal_fraction`, group `feeder`)
every LinDistFlow quantity is affine in c. So the area agents can solve the LP exactly by
exchanging only boundary values as affine functions of c:

1. backward (leaves -> source): each area sends its parent the flow into its root per phase,
   P = P0 + P1 c and Q = Q0 (PV at unity power factor);
2. forward (source -> leaves): each area sends its children the squared voltage of their root,
   v = V0 + V1 c;
3. each area then knows all its node voltages as V0_n + V1_n c and publishes the interval
   [c_lo, c_hi] its limits allow; the answer is c* = max(c_lo) (minimum curtailment), feasible
   when c* <= min(c_hi).

This is the LP's optimum (its objective grows with c), reached in a fixed number of exchanges
(no iterations, no penalty to tune), where consensus ADMM needed hundreds of iterations on the
same splitting (see admm.py and the bench).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from derbus.errors import SolverError
from voltage_coordinator.admm import AreaSpec, area_specs, compile_tree_nodes
from voltage_coordinator.feeder import PHASES, Feeder
from voltage_coordinator.network import FloatArray, Tree, compile_tree, solve_linear
from voltage_coordinator.optimizer import (
    Curtailment,
    Limits,
    StepInputs,
    available_mw,
    make_curtailment,
)

Boundary = dict[str, float]
"""Boundary values keyed `p0:<bus>:<phase>`, `p1:…`, `q0:…`, `v0:…`, `v1:…`."""


@dataclass(frozen=True)
class Bounds:
    """The fractions an area's voltage limits allow: c in [c_lo, c_hi]."""

    c_lo: float
    c_hi: float


class SweepAgent:
    """One area's part of the sweep (pure: inputs in, boundary values out).

    Args:
        feeder: the feeder (the agent uses its own area of it).
        spec: the area.
        limits: voltage band and margin.
    """

    def __init__(self, feeder: Feeder, spec: AreaSpec, limits: Limits) -> None:
        self.feeder = feeder
        self.spec = spec
        self.limits = limits
        self.tree = t = compile_tree(feeder, spec.buses, spec.ghosts)
        self.full_index = {node: i for i, node in enumerate(compile_tree_nodes(feeder))}
        eye = sp.identity(t.size, format="csc")
        self._flow_op = sp.linalg.splu((eye - t.child).tocsc())
        self._volt_op = sp.linalg.splu((eye - t.parent_map).tocsc())
        self._idx = t.index()
        self._p0 = np.zeros(t.size)
        self._p1 = np.zeros(t.size)
        self._q0 = np.zeros(t.size)
        self._v2max = np.zeros(t.size)
        self._v2min = np.zeros(t.size)
        self.flows: tuple[FloatArray, FloatArray, FloatArray] | None = None

    @property
    def children(self) -> list[str]:
        """Root buses of the child areas (the ghosts)."""
        return list(self.spec.ghosts)

    def set_inputs(self, inputs: StepInputs) -> None:
        """Net loads affine in c: p = load - gen + gen c (MW), and the step's limits."""
        t = self.tree
        gen = t.pv_share @ available_mw(t, inputs.pv_available_kw)
        self._p0 = t.load_mw * inputs.load_mult - gen
        self._p1 = gen
        self._q0 = t.load_mvar * inputs.load_mult
        bias = np.zeros(t.size)
        if inputs.v_bias_pu is not None:
            bias = np.array([inputs.v_bias_pu[self.full_index[node]] for node in t.nodes])
        lim = self.limits
        self._v2max = np.clip(lim.v_max_pu - lim.margin_pu - bias, 0.5, None) ** 2
        self._v2min = np.clip(lim.v_min_pu - bias, 0.0, None) ** 2

    def backward(self, from_children: Mapping[str, float]) -> Boundary:
        """Flows into this area's root (affine in c) given the children's root flows."""
        p0, p1, q0 = self._p0.copy(), self._p1.copy(), self._q0.copy()
        for bus in self.spec.ghosts:
            for ph in self.feeder.bus[bus].phases:
                i = self._idx[(bus, PHASES.index(ph))]
                p0[i] = from_children[f"p0:{bus}:{ph}"]
                p1[i] = from_children[f"p1:{bus}:{ph}"]
                q0[i] = from_children[f"q0:{bus}:{ph}"]
        flows = (self._flow_op.solve(p0), self._flow_op.solve(p1), self._flow_op.solve(q0))
        self.flows = flows
        out: Boundary = {}
        if self.spec.parent is not None:
            for ph in self.feeder.bus[self.spec.root_bus].phases:
                i = self._idx[(self.spec.root_bus, PHASES.index(ph))]
                out[f"p0:{self.spec.root_bus}:{ph}"] = float(flows[0][i])
                out[f"p1:{self.spec.root_bus}:{ph}"] = float(flows[1][i])
                out[f"q0:{self.spec.root_bus}:{ph}"] = float(flows[2][i])
        return out

    def forward(self, from_parent: Mapping[str, float]) -> tuple[Boundary, Bounds]:
        """Voltages affine in c: the children's root values and this area's allowed interval."""
        if self.flows is None:
            raise SolverError(f"area {self.spec.id}: forward before backward")
        t = self.tree
        p0, p1, q0 = self.flows
        rhs0 = -(t.cp @ p0 + t.cq @ q0)
        rhs1 = -(t.cp @ p1)
        root = self.spec.root_bus
        for ph in self.feeder.bus[root].phases:
            i = self._idx[(root, PHASES.index(ph))]
            if self.spec.parent is None:
                rhs0[i], rhs1[i] = self.feeder.source_v_pu**2, 0.0
            else:
                rhs0[i], rhs1[i] = from_parent[f"v0:{root}:{ph}"], from_parent[f"v1:{root}:{ph}"]
        v0, v1 = self._volt_op.solve(rhs0), self._volt_op.solve(rhs1)
        out: Boundary = {}
        for bus in self.spec.ghosts:
            for ph in self.feeder.bus[bus].phases:
                i = self._idx[(bus, PHASES.index(ph))]
                out[f"v0:{bus}:{ph}"] = float(v0[i])
                out[f"v1:{bus}:{ph}"] = float(v1[i])
        owned = [i for i, (b, _) in enumerate(t.nodes) if b not in set(self.spec.ghosts)]
        if self.spec.parent is None:
            owned = [i for i in owned if i not in set(t.root_nodes)]
        return out, interval(v0[owned], v1[owned], self._v2max[owned], self._v2min[owned])


def interval(v0: FloatArray, v1: FloatArray, v2max: FloatArray, v2min: FloatArray) -> Bounds:
    """Fractions c in [0, 1] with v2min <= v0 + v1 c <= v2max at every node."""
    lo, hi = 0.0, 1.0
    for a, b, top, bottom in zip(v0, v1, v2max, v2min, strict=True):
        # upper limit a + b c <= top
        if b < -1e-12:
            lo = max(lo, (a - top) / -b)
        elif a + max(b, 0.0) > top + 1e-12 and a > top + 1e-12:
            lo = max(lo, 2.0)  # cannot be met by curtailing: marks infeasible
        # lower limit a + b c >= bottom
        if b < -1e-12:
            hi = min(hi, (a - bottom) / -b)
        elif a < bottom - 1e-12:
            hi = min(hi, -1.0)
    return Bounds(float(lo), float(hi))


def combine(bounds: Mapping[str, Bounds]) -> float:
    """The feeder's fraction from every area's interval (raise SolverError when none fits)."""
    c_lo = max(b.c_lo for b in bounds.values())
    c_hi = min(b.c_hi for b in bounds.values())
    if c_lo > 1.0 + 1e-9:
        raise SolverError("over-voltage cannot be removed even by curtailing every PV fully")
    if c_lo > c_hi + 1e-9:
        raise SolverError(f"no fraction meets both limits (needs >= {c_lo:.4f}, <= {c_hi:.4f})")
    return min(1.0, max(0.0, c_lo))


class SweepSolver:
    """All sweep agents in one process (same messages as on the bus, exchanged in memory)."""

    def __init__(self, feeder: Feeder, limits: Limits | None = None) -> None:
        self.feeder = feeder
        self.limits = limits or Limits()
        self.specs = area_specs(feeder)
        self.agents = {s.id: SweepAgent(feeder, s, self.limits) for s in self.specs}
        self.tree = compile_tree(feeder)

    def solve(self, inputs: StepInputs) -> Curtailment:
        """Backward sweep, forward sweep, max of the areas' lower bounds."""
        started = time.perf_counter()
        for agent in self.agents.values():
            agent.set_inputs(inputs)
        flows: Boundary = {}
        for spec in reversed(self.specs):
            flows.update(self.agents[spec.id].backward(flows))
        volts: Boundary = {}
        bounds: dict[str, Bounds] = {}
        for spec in self.specs:
            out, bounds[spec.id] = self.agents[spec.id].forward(volts)
            volts.update(out)
        c = combine(bounds)
        return feeder_curtailment(
            self.feeder, self.tree, inputs, c, time.perf_counter() - started, 3
        )


def feeder_curtailment(
    feeder: Feeder, tree: Tree, inputs: StepInputs, c: float, elapsed: float, rounds: int
) -> Curtailment:
    """A Curtailment with one fraction `c` for every PV of the feeder (full tree order)."""
    avail = available_mw(tree, inputs.pv_available_kw)
    frac = np.full(len(avail), c)
    output = avail * (1 - frac)
    p_net = tree.load_mw * inputs.load_mult - tree.pv_share @ output
    flow = solve_linear(tree, p_net, tree.load_mvar * inputs.load_mult, feeder.source_v_pu**2)
    return make_curtailment(
        tree, avail, frac, output, flow.v_pu, elapsed, rounds, {feeder.feeder_id: c}
    )
