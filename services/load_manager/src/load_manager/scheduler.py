"""Deferrable-job scheduler: a MILP choosing each job's start against PV and base-load forecasts.

The problem (steps t of `step_s`, dt = step_s / 3600 h; all powers kW, load-referenced):

* variables: x[j,s] ∈ {0,1} job j starts at step s (its candidate starts); u[p,t] >= 0 PV
  power of pool p used by jobs at step t; z >= 0 the peak grid import.
* each job starts once: Σ_s x[j,s] = 1.
* PV is one capacity per pool and step, shared by all its jobs, so it is never promised twice:
  u[p,t] <= S_p[t], the PV surplus left after the base load (the whole neighbourhood is one
  pool with `shared_pv`, else each house), and u[p,t] <= Σ_{j in p} P_j[t] with
  P_j[t] = Σ_s x[j,s]·profile_j[t − s]. Each job's PV energy is its pro-rata share of u.
* connection limits: for each house b_h + Σ_{j∈h} P_j − pv_h <= L_h, and for the neighbourhood
  Σ_h (b_h − pv_h) + Σ_j P_j <= L_N (jobs may not push a meter past its limit).
* peak: z >= base_import[t] + Σ_j P_j[t] − Σ_p u[p,t].
* objective: min Σ_t dt·(1 + cost_weight·price_t)·(Σ_j P_j[t] − Σ_p u[p,t]) + peak_weight·z
  + ε·Σ s·x[j,s] (grid kWh, its cost, the peak; earlier start breaks ties).

Two baselines share the evaluation: `earliest` (start as early as allowed) and `greedy`
(first come, first served: each job takes the start with the most PV left, then the cheapest).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_matrix

from derbus.errors import SolverError

EPS_PER_STEP = 1e-6


@dataclass(frozen=True)
class HouseInput:
    """One house: its connection limit and forecasts on the plan grid (kW, >= 0)."""

    house_id: str
    limit_kw: float
    pv_kw: tuple[float, ...]
    base_kw: tuple[float, ...]


@dataclass(frozen=True)
class JobInput:
    """One job to place: window and power profile on the plan step (kW, consumption)."""

    job_id: str
    house_id: str
    device_id: str
    earliest_start: datetime
    latest_start: datetime
    profile_kw: tuple[float, ...]


@dataclass(frozen=True)
class Problem:
    """A scheduling instance on a grid of `n_steps` steps of `step_s` from `start`."""

    start: datetime
    step_s: int
    n_steps: int
    houses: tuple[HouseInput, ...]
    jobs: tuple[JobInput, ...]
    price_per_kwh: tuple[float, ...]
    shared_pv: bool = True
    neighbourhood_limit_kw: float | None = None
    cost_weight: float = 1.0
    peak_weight_per_kw: float = 0.0

    @property
    def dt_h(self) -> float:
        """Step length, h."""
        return self.step_s / 3600.0

    def time_of(self, index: int) -> datetime:
        """Start time of step `index`."""
        return self.start + timedelta(seconds=index * self.step_s)

    def start_time(self, job: JobInput, index: int) -> datetime:
        """When a job placed at step `index` starts (not before its earliest start)."""
        return max(self.time_of(index), job.earliest_start)

    def candidates(self, job: JobInput) -> list[int]:
        """Steps the job may start in: the step holds or follows its earliest start, the start is
        not after its latest start, and the whole profile fits in the horizon."""
        out = []
        for s in range(self.n_steps - len(job.profile_kw) + 1):
            if self.time_of(s + 1) <= job.earliest_start:
                continue
            if self.start_time(job, s) > job.latest_start:
                break
            out.append(s)
        return out

    def house(self, house_id: str) -> HouseInput:
        """The house with this id (raises KeyError)."""
        for h in self.houses:
            if h.house_id == house_id:
                return h
        raise KeyError(house_id)

    def pool_of(self, job: JobInput) -> str:
        """The PV pool a job draws from."""
        return "*" if self.shared_pv else job.house_id

    def pools(self) -> dict[str, list[float]]:
        """PV surplus after base load per pool and step, kW."""
        if self.shared_pv:
            return {
                "*": [
                    max(0.0, sum(h.pv_kw[t] - h.base_kw[t] for h in self.houses))
                    for t in range(self.n_steps)
                ]
            }
        return {
            h.house_id: [max(0.0, h.pv_kw[t] - h.base_kw[t]) for t in range(self.n_steps)]
            for h in self.houses
        }

    def base_import(self) -> list[float]:
        """Grid import without any job, kW per step (neighbourhood, or sum of houses)."""
        if self.shared_pv:
            return [
                max(0.0, sum(h.base_kw[t] - h.pv_kw[t] for h in self.houses))
                for t in range(self.n_steps)
            ]
        return [
            sum(max(0.0, h.base_kw[t] - h.pv_kw[t]) for h in self.houses)
            for t in range(self.n_steps)
        ]

    def weights(self) -> list[float]:
        """Objective weight of one grid kWh per step: 1 + cost_weight · price."""
        return [1.0 + self.cost_weight * p for p in self.price_per_kwh]


@dataclass(frozen=True)
class Placement:
    """Where a job landed and how its energy is covered (kWh)."""

    job_id: str
    start_index: int
    start: datetime
    end: datetime
    pv_kwh: float
    grid_kwh: float


@dataclass(frozen=True)
class Schedule:
    """A solved (or baseline) plan."""

    method: str
    status: str
    placements: dict[str, Placement]
    unschedulable: dict[str, str] = field(default_factory=dict)
    objective: float | None = None
    solve_time_s: float = 0.0


@dataclass(frozen=True)
class Evaluation:
    """Figures of a plan: job energy and its PV share, grid import, cost, peak-to-average."""

    job_kwh: float
    job_pv_kwh: float
    grid_import_kwh: float
    cost: float
    peak_kw: float
    par: float

    @property
    def pv_share(self) -> float:
        """Share of job energy covered by PV (0..1)."""
        return self.job_pv_kwh / self.job_kwh if self.job_kwh > 0 else 0.0


def _job_power(problem: Problem, starts: dict[str, int]) -> dict[str, list[float]]:
    out = {}
    for job in problem.jobs:
        if job.job_id not in starts:
            continue
        row = [0.0] * problem.n_steps
        for k, p in enumerate(job.profile_kw):
            row[starts[job.job_id] + k] += p
        out[job.job_id] = row
    return out


def _allocate_pro_rata(problem: Problem, power: dict[str, list[float]]) -> dict[str, list[float]]:
    """PV to each job per step: the pool's surplus shared in proportion to demand (never more)."""
    pools = problem.pools()
    by_id = {j.job_id: j for j in problem.jobs}
    alloc = {k: [0.0] * problem.n_steps for k in power}
    for t in range(problem.n_steps):
        demand: dict[str, float] = {}
        for job_id, row in power.items():
            pool = problem.pool_of(by_id[job_id])
            demand[pool] = demand.get(pool, 0.0) + row[t]
        for job_id, row in power.items():
            pool = problem.pool_of(by_id[job_id])
            if demand[pool] > 0:
                alloc[job_id][t] = row[t] * min(1.0, pools[pool][t] / demand[pool])
    return alloc


def evaluate(problem: Problem, starts: dict[str, int]) -> Evaluation:
    """Physical figures of a set of starts (PV shared pro rata within each pool)."""
    power = _job_power(problem, starts)
    alloc = _allocate_pro_rata(problem, power)
    dt = problem.dt_h
    by_id = {j.job_id: j for j in problem.jobs}
    imports = []
    for t in range(problem.n_steps):
        if problem.shared_pv:
            net = sum(h.base_kw[t] - h.pv_kw[t] for h in problem.houses)
            net += sum(row[t] for row in power.values())
            imports.append(max(0.0, net))
        else:
            total = 0.0
            for h in problem.houses:
                net = h.base_kw[t] - h.pv_kw[t]
                net += sum(r[t] for k, r in power.items() if by_id[k].house_id == h.house_id)
                total += max(0.0, net)
            imports.append(total)
    job_kwh = sum(sum(r) for r in power.values()) * dt
    pv_kwh = sum(sum(r) for r in alloc.values()) * dt
    mean = sum(imports) / len(imports) if imports else 0.0
    peak = max(imports) if imports else 0.0
    return Evaluation(
        job_kwh=job_kwh,
        job_pv_kwh=pv_kwh,
        grid_import_kwh=sum(imports) * dt,
        cost=sum(i * p for i, p in zip(imports, problem.price_per_kwh, strict=True)) * dt,
        peak_kw=peak,
        par=peak / mean if mean > 0 else 0.0,
    )


def _fits(
    problem: Problem, job: JobInput, s: int, house_load: dict[str, list[float]], total: list[float]
) -> bool:
    """Whether placing `job` at `s` keeps its house and the neighbourhood within limits."""
    house = problem.house(job.house_id)
    for k, p in enumerate(job.profile_kw):
        t = s + k
        if p <= 0:
            continue
        if (
            house_load[job.house_id][t] + p
            > max(0.0, house.limit_kw + house.pv_kw[t] - house.base_kw[t]) + 1e-9
        ):
            return False
        if problem.neighbourhood_limit_kw is not None:
            room = problem.neighbourhood_limit_kw + sum(
                h.pv_kw[t] - h.base_kw[t] for h in problem.houses
            )
            if total[t] + p > max(0.0, room) + 1e-9:
                return False
    return True


def _placements(
    problem: Problem, starts: dict[str, int], alloc: dict[str, list[float]] | None = None
) -> dict[str, Placement]:
    power = _job_power(problem, starts)
    alloc = alloc if alloc is not None else _allocate_pro_rata(problem, power)
    dt = problem.dt_h
    out = {}
    for job in problem.jobs:
        if job.job_id not in starts:
            continue
        s = starts[job.job_id]
        energy = sum(job.profile_kw) * dt
        pv = min(energy, sum(alloc[job.job_id]) * dt)
        out[job.job_id] = Placement(
            job_id=job.job_id,
            start_index=s,
            start=problem.start_time(job, s),
            end=problem.time_of(s + len(job.profile_kw)),
            pv_kwh=round(pv, 6),
            grid_kwh=round(max(0.0, energy - pv), 6),
        )
    return out


def _no_candidates(problem: Problem) -> dict[str, str]:
    return {
        j.job_id: "no start in the horizon between its earliest and latest start"
        for j in problem.jobs
        if not problem.candidates(j)
    }


def schedule_earliest(problem: Problem) -> Schedule:
    """Baseline: every job starts as early as allowed (first start within the limits)."""
    began = time.perf_counter()
    house_load = {h.house_id: [0.0] * problem.n_steps for h in problem.houses}
    total = [0.0] * problem.n_steps
    starts: dict[str, int] = {}
    unschedulable = _no_candidates(problem)
    for job in problem.jobs:
        cands = problem.candidates(job)
        if not cands:
            continue
        fitting = [s for s in cands if _fits(problem, job, s, house_load, total)]
        s = fitting[0] if fitting else cands[0]
        starts[job.job_id] = s
        for k, p in enumerate(job.profile_kw):
            house_load[job.house_id][s + k] += p
            total[s + k] += p
    return Schedule(
        "earliest",
        "ok",
        _placements(problem, starts),
        unschedulable,
        solve_time_s=time.perf_counter() - began,
    )


def schedule_greedy(problem: Problem) -> Schedule:
    """Baseline: first come (earliest start), first served; each job takes the start with the most
    PV surplus still unallocated, then the lowest weighted grid energy, then the earliest."""
    began = time.perf_counter()
    pools = {k: list(v) for k, v in problem.pools().items()}
    weights = problem.weights()
    house_load = {h.house_id: [0.0] * problem.n_steps for h in problem.houses}
    total = [0.0] * problem.n_steps
    starts: dict[str, int] = {}
    unschedulable = _no_candidates(problem)
    order = sorted(problem.jobs, key=lambda j: (j.earliest_start, j.job_id))
    for job in order:
        cands = problem.candidates(job)
        if not cands:
            continue
        residual = pools[problem.pool_of(job)]
        best: tuple[float, float, int] | None = None
        for s in cands:
            if not _fits(problem, job, s, house_load, total):
                continue
            pv = sum(min(p, residual[s + k]) for k, p in enumerate(job.profile_kw))
            grid = sum(
                weights[s + k] * (p - min(p, residual[s + k])) for k, p in enumerate(job.profile_kw)
            )
            key = (-pv, grid, s)
            if best is None or key < best:
                best = key
        s = best[2] if best is not None else cands[0]
        starts[job.job_id] = s
        for k, p in enumerate(job.profile_kw):
            residual[s + k] = max(0.0, residual[s + k] - p)
            house_load[job.house_id][s + k] += p
            total[s + k] += p
    return Schedule(
        "greedy",
        "ok",
        _placements(problem, starts),
        unschedulable,
        solve_time_s=time.perf_counter() - began,
    )


class _Rows:
    """Sparse constraint rows for scipy's milp."""

    def __init__(self) -> None:
        self.r: list[int] = []
        self.c: list[int] = []
        self.v: list[float] = []
        self.lb: list[float] = []
        self.ub: list[float] = []

    def add(self, coefs: dict[int, float], lb: float, ub: float) -> None:
        row = len(self.lb)
        for col, val in coefs.items():
            if val != 0.0:
                self.r.append(row)
                self.c.append(col)
                self.v.append(val)
        self.lb.append(lb)
        self.ub.append(ub)

    def constraint(self, n_vars: int) -> LinearConstraint:
        a = coo_matrix((self.v, (self.r, self.c)), shape=(len(self.lb), n_vars)).tocsr()
        return LinearConstraint(a, np.array(self.lb), np.array(self.ub))


def schedule_milp(problem: Problem, time_limit_s: float = 20.0, mip_gap: float = 0.01) -> Schedule:
    """Optimal starts by mixed-integer programming (HiGHS through scipy.optimize.milp).

    Args:
        problem: the instance (see the module docstring for the model).
        time_limit_s: solver time limit; the best solution found by then is used.
        mip_gap: relative optimality gap at which the solver stops.

    Raises:
        SolverError: infeasible (e.g. limits leave no room for a job) or no solution in time.
    """
    began = time.perf_counter()
    unschedulable = _no_candidates(problem)
    jobs = [j for j in problem.jobs if j.job_id not in unschedulable]
    if not jobs:
        return Schedule("milp", "empty", {}, unschedulable, 0.0, time.perf_counter() - began)
    n, dt = problem.n_steps, problem.dt_h
    weights = problem.weights()
    pools = problem.pools()
    base_import = problem.base_import()

    cost: list[float] = []
    integrality: list[int] = []
    upper: list[float] = []
    x_idx: dict[tuple[int, int], int] = {}
    cands: dict[int, list[int]] = {}
    for ji, job in enumerate(jobs):
        cands[ji] = problem.candidates(job)
        for s in cands[ji]:
            x_idx[ji, s] = len(cost)
            grid_cost = sum(weights[s + k] * p * dt for k, p in enumerate(job.profile_kw))
            cost.append(grid_cost + EPS_PER_STEP * s)
            integrality.append(1)
            upper.append(1.0)
    u_idx: dict[tuple[str, int], int] = {}
    for pool, surplus in pools.items():
        for t in range(n):
            if surplus[t] > 0:
                u_idx[pool, t] = len(cost)
                cost.append(-weights[t] * dt)
                integrality.append(0)
                upper.append(surplus[t])
    z = len(cost)
    cost.append(problem.peak_weight_per_kw)
    integrality.append(0)
    upper.append(np.inf)
    n_vars = len(cost)

    # P_j[t] as coefficients on the x variables, per step
    power: list[dict[int, float]] = [{} for _ in range(n)]
    pool_power: dict[tuple[str, int], dict[int, float]] = {}
    house_power: dict[tuple[str, int], dict[int, float]] = {}
    for ji, job in enumerate(jobs):
        pool = problem.pool_of(job)
        for s in cands[ji]:
            for k, p in enumerate(job.profile_kw):
                if p == 0:
                    continue
                col, t = x_idx[ji, s], s + k
                power[t][col] = p
                pool_power.setdefault((pool, t), {})[col] = p
                house_power.setdefault((job.house_id, t), {})[col] = p

    rows = _Rows()
    for ji in range(len(jobs)):
        rows.add({x_idx[ji, s]: 1.0 for s in cands[ji]}, 1.0, 1.0)
    for (pool, t), col in u_idx.items():
        row = {c: -v for c, v in pool_power.get((pool, t), {}).items()}
        row[col] = 1.0
        rows.add(row, -np.inf, 0.0)
    for t in range(n):
        if power[t]:
            peak_row = dict(power[t])
            for (_, tt), col in u_idx.items():
                if tt == t:
                    peak_row[col] = -1.0
            peak_row[z] = -1.0
            rows.add(peak_row, -np.inf, -base_import[t])
    for house in problem.houses:
        for t in range(n):
            coefs = house_power.get((house.house_id, t), {})
            room = max(0.0, house.limit_kw + house.pv_kw[t] - house.base_kw[t])
            if coefs and sum(coefs.values()) > room:  # only rows that can bind
                rows.add(coefs, -np.inf, room)
    if problem.neighbourhood_limit_kw is not None:
        for t in range(n):
            room = max(
                0.0,
                problem.neighbourhood_limit_kw
                + sum(h.pv_kw[t] - h.base_kw[t] for h in problem.houses),
            )
            if power[t] and sum(power[t].values()) > room:
                rows.add(power[t], -np.inf, room)

    try:
        result = milp(
            c=np.array(cost),
            constraints=[rows.constraint(n_vars)],
            integrality=np.array(integrality),
            bounds=Bounds(np.zeros(n_vars), np.array(upper)),
            options={"time_limit": time_limit_s, "mip_rel_gap": mip_gap, "disp": False},
        )
    except (ValueError, RuntimeError) as err:
        raise SolverError(f"HiGHS failed: {err}") from err
    if result.x is None:
        raise SolverError(f"no schedule: {result.message} (status {result.status})")
    x = result.x
    starts: dict[str, int] = {}
    for ji, job in enumerate(jobs):
        values = [float(x[x_idx[ji, s]]) for s in cands[ji]]
        starts[job.job_id] = cands[ji][values.index(max(values))]
    status = "optimal" if result.status == 0 else "time_limit"
    objective = float(result.fun) - EPS_PER_STEP * sum(starts.values())
    return Schedule(
        "milp",
        status,
        _placements(problem, starts),
        unschedulable,
        objective=round(objective, 9),
        solve_time_s=time.perf_counter() - began,
    )


def grid_of(problem: Problem, values: Sequence[float]) -> tuple[float, ...]:
    """Pad or cut a series to the problem's length."""
    out = list(values)[: problem.n_steps]
    return tuple(out + [0.0] * (problem.n_steps - len(out)))


def steps_for(duration_s: float, step_s: int) -> int:
    """Whole steps needed to cover a duration."""
    return max(1, math.ceil(duration_s / step_s - 1e-9))
