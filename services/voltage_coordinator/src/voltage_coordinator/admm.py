"""Distributed curtailment: area agents agreeing on boundary values by consensus ADMM.

Each area owns the buses below its root down to the next areas' roots. At a boundary the parent
area sees the child's root as a "ghost" leaf whose whole downstream is one free injection per
phase; the child sees its root voltage as free. The shared (consensus) values per boundary are
the squared voltage and the P/Q flow per phase of the child's root, plus the common curtailment
fraction of a fairness group spanning several areas. Only these values are exchanged.

ADMM (scaled form, Boyd et al. 2011 sec. 7): each agent minimises its curtailment plus
rho/2 ||W x_a - z + u_a||^2; z is the average of the copies (plus duals); u_a += W x_a - z.
Stopping: primal residual r = ||W x - z|| and dual residual s = rho ||z - z_prev|| below
sqrt(n) eps_abs + eps_rel (...) ; rho adapts by residual balancing (x tau when r > mu s, / tau when
s > mu r, duals rescaled). The consensus state is a pure function of the broadcast copies, so every
agent can keep an identical copy of it: the same decisions (z, rho, stop) everywhere.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import networkx as nx
import numpy as np

from derbus.errors import SolverError
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


@dataclass(frozen=True)
class AdmmOptions:
    """ADMM tuning.

    Attributes:
        rho: initial penalty.
        eps_abs, eps_rel: stopping tolerances (Boyd's absolute / relative).
        max_iterations: hard bound on iterations.
        mu, tau: residual balancing (adapt when one residual is mu times the other, by tau).
        v_scale: weight of squared voltages (pu^2) in the consensus against flows (MW).
        fraction_scale: weight of a shared fraction.
        solver: cvxpy solver of the area subproblems.
    """

    rho: float = 1.0
    eps_abs: float = 1e-5
    eps_rel: float = 1e-4
    max_iterations: int = 100
    mu: float = 5.0
    tau: float = 2.0
    v_scale: float = 10.0
    fraction_scale: float = 1.0
    flow_scale: float = 1.0
    solver: str = "CLARABEL"


@dataclass(frozen=True)
class AreaSpec:
    """Where an area sits: its buses, its root, the child roots it sees as ghosts."""

    id: str
    root_bus: str
    buses: list[str]
    ghosts: list[str]
    parent: str | None


def area_specs(feeder: Feeder) -> list[AreaSpec]:
    """The areas of a feeder in topological order (the source's area first)."""
    owner = feeder.area_of()
    if not owner:
        raise SolverError("the feeder declares no areas")
    g: nx.DiGraph = feeder.graph
    specs = []
    for area in feeder.areas:
        buses = [b for b in nx.topological_sort(g) if owner[b] == area.id]
        ghosts = [child for b in buses for child in g.successors(b) if owner[child] != area.id]
        parents = list(g.predecessors(area.root_bus))
        specs.append(
            AreaSpec(area.id, area.root_bus, buses, ghosts, owner[parents[0]] if parents else None)
        )
    order = {b: i for i, b in enumerate(nx.topological_sort(g))}
    return sorted(specs, key=lambda s: order[s.root_bus])


def boundary_keys(feeder: Feeder, bus: str) -> list[str]:
    """Consensus keys of a boundary bus: `v:`, `p:`, `q:` per phase."""
    return [f"{kind}:{bus}:{ph}" for kind in ("v", "p", "q") for ph in feeder.bus[bus].phases]


class AreaProblem:
    """One area agent's subproblem (compiled once; re-solved through Parameters).

    Args:
        feeder: the whole feeder (the agent reads only its own part).
        spec: the area.
        groups: fairness group per PV.
        shared_groups: groups spanning several areas (their fraction is a consensus value).
        limits: voltage band and margin.
        options: ADMM options (scales, solver).
    """

    def __init__(
        self,
        feeder: Feeder,
        spec: AreaSpec,
        groups: Mapping[str, str],
        shared_groups: set[str],
        limits: Limits,
        options: AdmmOptions,
    ) -> None:
        self.feeder = feeder
        self.spec = spec
        self.limits = limits
        self.options = options
        self.tree = t = compile_tree(feeder, spec.buses, spec.ghosts)
        self.full_index = {node: i for i, node in enumerate(compile_tree_nodes(feeder))}
        self.group_ids = sorted({groups[pid] for pid in t.pv_ids} | set(shared_groups))
        h = np.zeros((len(t.pv_ids), len(self.group_ids)))
        for j, pid in enumerate(t.pv_ids):
            h[j, self.group_ids.index(groups[pid])] = 1.0
        self._h = h
        n = t.size
        is_source = spec.parent is None
        idx = t.index()
        # consensus keys and the matching local expressions
        keys: list[str] = []
        rows: list[tuple[str, int]] = []  # (kind, node index) per key, kind v/p/q
        bounds = ([spec.root_bus] if not is_source else []) + list(spec.ghosts)
        for bus in bounds:
            for kind in ("v", "p", "q"):
                for ph in feeder.bus[bus].phases:
                    keys.append(f"{kind}:{bus}:{ph}")
                    rows.append((kind, idx[(bus, PHASES.index(ph))]))
        self.shared_group_ids = [g for g in self.group_ids if g in shared_groups]
        keys.extend(f"c:{g}" for g in self.shared_group_ids)
        self.keys = keys
        import cvxpy as cp  # heavy (~3 s to load): on the first solver, not at start-up

        self.p_load = cp.Parameter(n)
        self.q_load = cp.Parameter(n)
        self.avail = cp.Parameter(len(t.pv_ids), nonneg=True)
        self.v2_max = cp.Parameter(n)
        self.v2_min = cp.Parameter(n)
        self.sqrt_half_rho = cp.Parameter(nonneg=True)
        self.target = cp.Parameter(len(keys))  # sqrt(rho/2) (z - u)
        self.p = cp.Variable(n)
        self.q = cp.Variable(n)
        self.v2 = cp.Variable(n)
        self.g = cp.Variable(len(self.group_ids))
        curtailed = cp.multiply(self.avail, h @ self.g)  # type: ignore[attr-defined]
        p_net = self.p_load - t.pv_share @ (self.avail - curtailed)
        eye = np.eye(n)
        ghost = set(t.ghost_nodes)
        balanced = [i for i in range(n) if i not in ghost]  # ghost injections are free
        roots = set(t.root_nodes)
        inner = [i for i in range(n) if i not in roots]
        child = t.child.toarray()
        drop = -(t.cp @ self.p + t.cq @ self.q)
        constraints = [
            ((eye - child) @ self.p)[balanced] == p_net[balanced],
            ((eye - child) @ self.q)[balanced] == self.q_load[balanced],
            (self.v2 - t.parent_map @ self.v2)[inner] == drop[inner],
            self.g >= 0,
            self.g <= 1,
        ]
        limited = inner if is_source else list(range(n))
        constraints += [
            self.v2[limited] <= self.v2_max[limited],
            self.v2[limited] >= self.v2_min[limited],
        ]
        if is_source:
            constraints.append(self.v2[t.root_nodes] == feeder.source_v_pu**2)
        parts = []
        scale = {"v": options.v_scale, "p": options.flow_scale, "q": options.flow_scale}
        var = {"v": self.v2, "p": self.p, "q": self.q}
        self.v_ref = feeder.source_v_pu**2  # voltages are exchanged as deviations (conditioning)
        for kind, node in rows:
            offset = self.v_ref if kind == "v" else 0.0
            parts.append(scale[kind] * (var[kind][node] - offset))
        for gid in self.shared_group_ids:
            parts.append(options.fraction_scale * self.g[self.group_ids.index(gid)])
        self.copies = cp.hstack(parts) if parts else None  # type: ignore[attr-defined]
        # a shared fraction's cost (the group's total available power x fraction) is carried by
        # the source area alone - the same sum at consensus, but the other areas then only
        # enforce their limits on their copy instead of pulling it down (much faster ADMM)
        self.local_cost = cp.Parameter(len(self.group_ids), nonneg=True)
        objective = self.local_cost @ self.g
        if self.copies is not None:
            objective = objective + cp.sum_squares(self.sqrt_half_rho * self.copies - self.target)  # type: ignore[attr-defined]
        self.problem = cp.Problem(cp.Minimize(objective), constraints)

    def set_inputs(
        self, inputs: StepInputs, group_totals: Mapping[str, float] | None = None
    ) -> FloatArray:
        """Load the step's data; `group_totals` = available MW of each shared group (feeder-wide)."""
        t = self.tree
        avail = available_mw(t, inputs.pv_available_kw)
        lim = self.limits
        bias = np.zeros(t.size)
        if inputs.v_bias_pu is not None:
            bias = np.array([inputs.v_bias_pu[self.full_index[node]] for node in t.nodes])
        self.p_load.value = t.load_mw * inputs.load_mult
        self.q_load.value = t.q_net_mvar(inputs.load_mult)
        self.avail.value = avail
        cost = self._h.T @ avail
        for i, gid in enumerate(self.group_ids):
            if gid in self.shared_group_ids:
                cost[i] = (group_totals or {}).get(gid, 0.0) if self.spec.parent is None else 0.0
        self.local_cost.value = cost
        self.v2_max.value = np.clip(lim.v_max_pu - lim.margin_pu - bias, 0.5, None) ** 2
        self.v2_min.value = np.clip(lim.v_min_pu - bias, 0.0, None) ** 2
        return avail

    def solve(self, z: Mapping[str, float], u: Mapping[str, float], rho: float) -> dict[str, float]:
        """Local step: minimise curtailment + rho/2 ||W x - z + u||^2; returns W x per key."""
        import cvxpy as cp

        if self.keys:
            half = math.sqrt(rho / 2)
            self.sqrt_half_rho.value = half
            self.target.value = np.array([half * (z[k] - u[k]) for k in self.keys])
        else:
            self.sqrt_half_rho.value = 0.0
            self.target.value = np.zeros(0)
        try:
            self.problem.solve(solver=self.options.solver)  # type: ignore[no-untyped-call]
        except cp.error.SolverError as err:
            raise SolverError(f"area {self.spec.id}: {err}") from err
        if self.problem.status not in ("optimal", "optimal_inaccurate") or self.g.value is None:
            raise SolverError(f"area {self.spec.id}: subproblem is {self.problem.status}")
        if self.copies is None:
            return {}
        values = np.asarray(self.copies.value, dtype=float).ravel()
        return dict(zip(self.keys, (float(v) for v in values), strict=True))

    def fractions(self) -> dict[str, float]:
        """Local fraction per group after a solve."""
        g = np.clip(np.asarray(self.g.value, dtype=float), 0.0, 1.0)
        return {gid: float(g[i]) for i, gid in enumerate(self.group_ids)}

    def initial_values(
        self,
        flow_v2: FloatArray,
        flow_p: FloatArray,
        flow_q: FloatArray,
        full_index: Mapping[tuple[str, int], int],
    ) -> dict[str, float]:
        """Scaled boundary values from a full-feeder linear flow (a cold start)."""
        out: dict[str, float] = {}
        for key in self.keys:
            kind, bus, ph = key.split(":") if key.count(":") == 2 else (key[0], "", "")
            if kind == "c":
                out[key] = 0.0
                continue
            i = full_index[(bus, PHASES.index(ph))]
            value = {
                "v": (flow_v2[i] - self.v_ref) * self.options.v_scale,
                "p": flow_p[i] * self.options.flow_scale,
                "q": flow_q[i] * self.options.flow_scale,
            }[kind]
            out[key] = float(value)
        return out


def group_totals_mw(
    feeder: Feeder, groups: Mapping[str, str], inputs: StepInputs
) -> dict[str, float]:
    """Available MW per fairness group (one number per group, shared with the source area)."""
    totals: dict[str, float] = {}
    for pv in feeder.pvs:
        avail = min(max(0.0, float(inputs.pv_available_kw.get(pv.id, 0.0))), pv.rating_kw)
        totals[groups[pv.id]] = totals.get(groups[pv.id], 0.0) + avail / 1000
    return totals


def compile_tree_nodes(feeder: Feeder) -> list[tuple[str, int]]:
    """Node order of the full compiled tree (cached on the feeder's graph order)."""
    return [
        (bus, PHASES.index(p))
        for bus in nx.topological_sort(feeder.graph)
        for p in feeder.bus[bus].phases
    ]


@dataclass
class ConsensusState:
    """The consensus part of ADMM, identical in every agent (a pure function of the copies).

    Attributes:
        holders: key -> areas holding a copy.
        z: consensus value per key (scaled).
        u: scaled dual per (area, key).
        rho: current penalty.
        iteration: completed iterations.
    """

    holders: dict[str, list[str]]
    z: dict[str, float]
    u: dict[tuple[str, str], float]
    rho: float
    iteration: int = 0
    r_primal: float = math.inf
    r_dual: float = math.inf
    converged: bool = False
    history: list[tuple[float, float, float]] = field(default_factory=list)

    @classmethod
    def start(
        cls, holders: dict[str, list[str]], z0: Mapping[str, float], rho: float
    ) -> ConsensusState:
        """A cold start: duals at zero."""
        u = {(a, k): 0.0 for k, areas in holders.items() for a in areas}
        return cls(holders, {k: float(z0[k]) for k in holders}, u, rho)

    def duals_of(self, area: str) -> dict[str, float]:
        """The scaled duals of one area."""
        return {k: v for (a, k), v in self.u.items() if a == area}

    def step(self, copies: Mapping[str, Mapping[str, float]], options: AdmmOptions) -> bool:
        """z and u updates, residuals, stopping test and penalty adaptation; True when done."""
        z_old = self.z
        z_new = {
            k: sum(copies[a][k] + self.u[(a, k)] for a in areas) / len(areas)
            for k, areas in self.holders.items()
        }
        r2 = s2 = x2 = zx2 = 0.0
        for k, areas in self.holders.items():
            for a in areas:
                x = copies[a][k]
                self.u[(a, k)] += x - z_new[k]
                r2 += (x - z_new[k]) ** 2
                s2 += (z_new[k] - z_old[k]) ** 2
                x2 += x * x
                zx2 += z_new[k] ** 2
        u2 = sum(v * v for v in self.u.values())
        n = max(1, len(self.u))
        self.r_primal = math.sqrt(r2)
        self.r_dual = self.rho * math.sqrt(s2)
        eps_pri = math.sqrt(n) * options.eps_abs + options.eps_rel * max(
            math.sqrt(x2), math.sqrt(zx2)
        )
        eps_dual = math.sqrt(n) * options.eps_abs + options.eps_rel * self.rho * math.sqrt(u2)
        self.z = z_new
        self.iteration += 1
        self.history.append((self.r_primal, self.r_dual, self.rho))
        self.converged = stopping_test(self.r_primal, self.r_dual, eps_pri, eps_dual)
        if not self.converged:
            self._adapt(options)
        return self.converged

    def _adapt(self, options: AdmmOptions) -> None:
        factor = 1.0
        if self.r_primal > options.mu * self.r_dual:
            factor = options.tau
        elif self.r_dual > options.mu * self.r_primal:
            factor = 1 / options.tau
        if factor != 1.0:
            self.rho *= factor
            self.u = {key: v / factor for key, v in self.u.items()}


def stopping_test(r_primal: float, r_dual: float, eps_primal: float, eps_dual: float) -> bool:
    """Boyd's test: both residuals within their tolerances."""
    return r_primal <= eps_primal and r_dual <= eps_dual


@dataclass(frozen=True)
class AdmmReport:
    """How a distributed solve went."""

    iterations: int
    converged: bool
    r_primal: float
    r_dual: float
    rho: float
    wall_s: float
    max_area_s: float
    history: list[tuple[float, float, float]]


class DistributedSolver:
    """All area agents in one process, exchanging copies in memory (same maths as on the bus).

    Args:
        feeder: the feeder with its areas.
        fairness: `equal_fraction` or `none` (`equal_kw` is centralised only).
        group_by: `feeder` or `area`.
        limits: voltage band and margin.
        options: ADMM options.
    """

    def __init__(
        self,
        feeder: Feeder,
        fairness: Fairness = "equal_fraction",
        group_by: GroupBy = "feeder",
        limits: Limits | None = None,
        options: AdmmOptions | None = None,
    ) -> None:
        if fairness == "equal_kw":
            raise SolverError("fairness equal_kw is solved centrally only")
        self.feeder = feeder
        self.options = options or AdmmOptions()
        self.limits = limits or Limits()
        self.groups = pv_groups(feeder, fairness, group_by)
        self.specs = area_specs(feeder)
        owner = feeder.area_of()
        areas_of_group: dict[str, set[str]] = {}
        for pv in feeder.pvs:
            areas_of_group.setdefault(self.groups[pv.id], set()).add(owner[pv.bus])
        # a group is shared when it spans areas; every area joins it (it may have no PV now)
        self.shared = {g for g, a in areas_of_group.items() if len(a) > 1}
        self.agents = {
            s.id: AreaProblem(feeder, s, self.groups, self.shared, self.limits, self.options)
            for s in self.specs
        }
        self.tree = compile_tree(feeder)
        self.full_index = self.tree.index()
        holders: dict[str, list[str]] = {}
        for aid, agent in self.agents.items():
            for k in agent.keys:
                holders.setdefault(k, []).append(aid)
        self.holders = holders
        self.last: ConsensusState | None = None

    def cold_start(self, inputs: StepInputs) -> ConsensusState:
        """Consensus state from the uncurtailed linear flow (no optimisation)."""
        t = self.tree
        avail = available_mw(t, inputs.pv_available_kw)
        p_net = t.load_mw * inputs.load_mult - t.pv_share @ avail
        flow = solve_linear(t, p_net, t.q_net_mvar(inputs.load_mult), self.feeder.source_v_pu**2)
        z0: dict[str, float] = {}
        for agent in self.agents.values():
            z0.update(agent.initial_values(flow.v2_pu, flow.p_mw, flow.q_mvar, self.full_index))
        return ConsensusState.start(self.holders, z0, self.options.rho)

    def solve(self, inputs: StepInputs, warm: bool = True) -> tuple[Curtailment, AdmmReport]:
        """Run ADMM to convergence (or `max_iterations`); raise SolverError on failure."""
        started = time.perf_counter()
        totals = group_totals_mw(self.feeder, self.groups, inputs)
        for agent in self.agents.values():
            agent.set_inputs(inputs, totals)
        state = self.cold_start(inputs)
        if warm and self.last is not None:
            state = replace(self.last, iteration=0, converged=False, history=[])
            state.r_primal = state.r_dual = math.inf
        max_area = 0.0
        while state.iteration < self.options.max_iterations:
            copies = {}
            slowest = 0.0
            for aid, agent in self.agents.items():
                t0 = time.perf_counter()
                copies[aid] = agent.solve(state.z, state.duals_of(aid), state.rho)
                slowest = max(slowest, time.perf_counter() - t0)
            max_area += slowest
            if state.step(copies, self.options):
                break
        self.last = state
        result = self.assemble(inputs, state, time.perf_counter() - started)
        report = AdmmReport(
            state.iteration,
            state.converged,
            state.r_primal,
            state.r_dual,
            state.rho,
            time.perf_counter() - started,
            max_area,
            list(state.history),
        )
        return result, report

    def assemble(self, inputs: StepInputs, state: ConsensusState, elapsed: float) -> Curtailment:
        """The feeder's curtailment from the agents' last solves and the consensus fractions."""
        return assemble_curtailment(
            self.feeder,
            self.tree,
            inputs,
            self.groups,
            {aid: a.fractions() for aid, a in self.agents.items()},
            state.z,
            self.options.fraction_scale,
            elapsed,
            state.iteration,
        )


def assemble_curtailment(
    feeder: Feeder,
    tree: Tree,
    inputs: StepInputs,
    groups: Mapping[str, str],
    area_fractions: Mapping[str, Mapping[str, float]],
    z: Mapping[str, float],
    fraction_scale: float,
    elapsed: float,
    iterations: int,
) -> Curtailment:
    """Per-PV fractions: a shared group's consensus value, else the owning area's own value."""
    owner = feeder.area_of()
    bus_of = {pv.id: pv.bus for pv in feeder.pvs}
    avail = available_mw(tree, inputs.pv_available_kw)
    frac = np.zeros(len(tree.pv_ids))
    group_fraction: dict[str, float] = {}
    for j, pid in enumerate(tree.pv_ids):
        gid = groups[pid]
        key = f"c:{gid}"
        if key in z:
            value = z[key] / fraction_scale
        else:
            value = area_fractions[owner[bus_of[pid]]].get(gid, 0.0)
        frac[j] = min(1.0, max(0.0, value))
        group_fraction[gid] = float(frac[j])
    output = avail * (1 - frac)
    p_net = tree.load_mw * inputs.load_mult - tree.pv_share @ output
    flow = solve_linear(tree, p_net, tree.q_net_mvar(inputs.load_mult), feeder.source_v_pu**2)
    groups_out = group_fraction if len(set(groups.values())) < len(groups) else {}
    return make_curtailment(tree, avail, frac, output, flow.v_pu, elapsed, iterations, groups_out)
