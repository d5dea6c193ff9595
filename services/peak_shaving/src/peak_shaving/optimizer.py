"""The Energy Management Application: a battery schedule LP over the outlook, built once.

Signs are load-referenced: net load (load - PV) and PCC power > 0 import; battery > 0 charges.
The constraint matrices are built once (sparse); a re-solve fills the objective and the
right-hand sides and calls the solver (ECOS, Clarabel or HiGHS) on the cached matrices. PCC
limits are soft (a large penalty per kWh beyond them), so a plan always exists and the residual
violation is reported instead of the problem becoming infeasible.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import Field

from derbus.errors import SolverError
from derbus.tariff import Tariff
from peak_shaving.site_config import SiteConfig

SolverName = Literal["ECOS", "CLARABEL", "HIGHS"]
FloatArray = NDArray[np.float64]
_OK_STATUSES = {"optimal", "optimal_inaccurate"}
MAX_HORIZON_STEPS = 31 * 288
"""Longest outlook: a 31-day month at 5-minute steps (a whole month of 15-minute steps fits)."""


class EmaConfig(SiteConfig):
    """Declared configuration of the EMA (limits and battery from `SiteConfig`)."""

    horizon_steps: int = Field(
        default=96,
        ge=2,
        le=MAX_HORIZON_STEPS,
        description="steps in the outlook (up to a 31-day month at 5-minute steps)",
    )
    step_s: int = Field(default=900, ge=60, le=3600, description="schedule step, s")
    solver: SolverName = Field(default="ECOS", description="LP solver: ECOS, CLARABEL or HIGHS")
    solver_time_limit_s: float = Field(
        default=10.0, gt=0, description="time limit per solve where the solver supports one, s"
    )
    violation_penalty_per_kwh: float = Field(
        default=1000.0, gt=0, description="cost of each kWh beyond a PCC limit (soft limits)"
    )
    change_penalty_per_kwh: float = Field(
        default=0.02, ge=0, description="cost of each kWh changed from the prior schedule (L1)"
    )
    wear_cost_per_kwh: float = Field(
        default=0.01, ge=0, description="battery wear per kWh charged or discharged"
    )
    end_soc_penalty_per_kwh: float = Field(
        default=5.0, ge=0, description="cost of each kWh short of the end-of-horizon SoC target"
    )
    reserve_penalty_per_kwh_h: float = Field(
        default=10.0,
        ge=0,
        description="cost of each kWh planned below the reserve, per hour it stays below"
        " (keep it x horizon hours below the violation penalty)",
    )
    soft_targets_second_pass: bool = Field(
        default=True,
        description="with a demand charge: after the peaks are decided (soft targets scaled so"
        " they cannot buy peak), re-solve with the full end-SoC and reserve weights and every"
        " scenario's peak held: the targets then keep energy from arbitrage, never raise a peak",
    )
    energy_cost: bool = Field(
        default=False, description="add the time-of-use energy cost (tariff) to the objective"
    )
    demand_charge: bool = Field(
        default=False,
        description="add the tariff's demand charge on the horizon peak above the month's peak",
    )
    tariff: Tariff = Field(default_factory=Tariff, description="time-of-use tariff")


@dataclass(frozen=True)
class EmaInputs:
    """Data of one solve.

    Attributes:
        start: start of the first step (aware UTC).
        net_load_kw: forecast load - PV per step, kW (+ import), length = horizon.
        soc_kwh: stored energy now, kWh.
        prior_kw: the previous schedule on the same steps, kW (+ charge); zeros when none.
        peak_floor_kw: 15-minute peak already billed this month, kW (demand charge above it).
        reserve_kwh: energy to hold at the end of each step, kWh (soft, like `reserve_pct`);
            None: `reserve_pct` of the capacity; the higher of the two applies (see
            `uncertainty_reserve_kwh`).
        price_per_kwh: import price per step from the site's price series; None: the tariff.
        export_per_kwh: export remuneration per step (with `price_per_kwh`).
    """

    start: datetime
    net_load_kw: FloatArray
    soc_kwh: float
    prior_kw: FloatArray
    peak_floor_kw: float = 0.0
    reserve_kwh: FloatArray | None = None
    price_per_kwh: FloatArray | None = None
    export_per_kwh: FloatArray | None = None


@dataclass(frozen=True)
class Schedule:
    """A solved battery schedule.

    Attributes:
        start: start of the first step.
        step_s: step length, s.
        battery_p_kw: net battery power per step, kW, + charge / - discharge.
        charge_kw, discharge_kw: the two non-negative parts, kW.
        soc_kwh: stored energy at each step boundary (horizon + 1 values), kWh.
        pcc_kw: planned PCC power per step, kW, + import.
        violation_kw: planned power beyond a PCC limit per step, kW, >= 0.
        status: the solver's status.
        objective: total objective value.
        terms: the objective's terms (violation, change, energy, demand, wear, end_soc, reserve).
        solve_time_s: wall time of the solve call, s.
        solver: solver name.
    """

    start: datetime
    step_s: int
    battery_p_kw: FloatArray
    charge_kw: FloatArray
    discharge_kw: FloatArray
    soc_kwh: FloatArray
    pcc_kw: FloatArray
    violation_kw: FloatArray
    status: str
    objective: float
    terms: dict[str, float] = field(default_factory=dict)
    solve_time_s: float = 0.0
    solver: str = "ECOS"
    target_kw: float | None = None
    scenario_peaks_kw: tuple[float, ...] = ()
    worker_pid: int = 0

    @property
    def demand_threshold_kw(self) -> float:
        """The 15-minute import the PMA holds: the decided target, else the planned peak."""
        if self.target_kw is not None:
            return self.target_kw
        return float(self.pcc_kw.max())

    @property
    def violation_kwh(self) -> float:
        """Planned energy beyond the PCC limits, kWh."""
        return float(self.violation_kw.sum() * self.step_s / 3600)

    @property
    def violation_steps(self) -> int:
        """Steps with a planned violation above 1 W."""
        return int((self.violation_kw > 1e-3).sum())

    def meta(self) -> dict[str, Any]:
        """Solve status, objective terms and timing, for the published schedule's `meta`."""
        return {
            "status": self.status,
            "solver": self.solver,
            "objective": round(self.objective, 6),
            "terms": {k: round(v, 6) for k, v in self.terms.items()},
            "solve_time_ms": round(self.solve_time_s * 1000, 3),
            "violation_kwh": round(self.violation_kwh, 6),
            "violation_steps": self.violation_steps,
            "soc_end_kwh": round(float(self.soc_kwh[-1]), 6),
            "target_kw": round(self.demand_threshold_kw, 6),
            "scenario_peaks_kw": [round(v, 6) for v in self.scenario_peaks_kw],
            "worker_pid": self.worker_pid,
        }


def tariff_prices(
    tariff: Tariff, start: datetime, steps: int, step_s: int
) -> tuple[FloatArray, FloatArray]:
    """Import price and feed-in per step (feed-in capped at the import price), per kWh."""
    times = [start + timedelta(seconds=i * step_s) for i in range(steps)]
    price = np.array([tariff.price_at(t) for t in times], dtype=float)
    feed = np.minimum(np.full(steps, tariff.feed_in_per_kwh), price)
    return price, feed


_BLOCKS = ("ch", "dis", "g_imp", "g_exp", "v_imp", "v_exp", "up", "down", "reserve_short")
"""The non-negative per-step variables of a scenario, in their order in the variable vector."""


@dataclass(frozen=True)
class LinearProgram:
    """The EMA's LP in the solvers' standard form: minimise `c @ x` subject to `a @ x == b`
    and `g @ x <= h`. `g` and `a` are fixed when the problem is built; `c`, `b`, `h` carry the
    data of a solve (what `ScheduleOptimizer.lp` returns after setting them)."""

    c: FloatArray
    g: Any  # scipy.sparse.csc_matrix
    h: FloatArray
    a: Any  # scipy.sparse.csc_matrix
    b: FloatArray
    bound_rows: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    """Rows of `g` that only say `x[j] >= 0` (a solver with column bounds takes them as such)."""

    def solve_ecos(self, **options: Any) -> dict[str, Any]:
        """ECOS on this LP, nothing around it (the reference the benchmark compares with)."""
        import ecos

        dims = {"l": int(self.h.shape[0]), "q": [], "e": 0}
        solution: dict[str, Any] = ecos.solve(
            self.c, self.g, self.h, dims, self.a, self.b, verbose=False, **options
        )
        return solution


class ScheduleOptimizer:
    """The EMA's linear program, built once as sparse matrices; `solve` only updates its data.

    Variables per step: charge and discharge power (>= 0), PCC import and export (>= 0), the
    violation beyond each limit (>= 0), the change from the prior schedule split into its
    non-negative parts, the energy short of the reserve (>= 0); the SoC at each boundary; the
    horizon peak; the end-SoC shortfall. Every constraint's coefficients are fixed by the
    configuration (horizon, step, efficiencies); the data of a solve (net load, prior schedule,
    SoC, bounds, limits, prices, weights of the soft targets, peak floor and caps) only enters
    the objective vector and the right-hand sides, so a re-solve builds three vectors and calls
    the solver on the cached matrices (ECOS, Clarabel or HiGHS, each through its own API).

    With several scenario weights it is a two-stage scenario LP: one such set of variables per
    net-load scenario, the first step's charge and discharge shared by all (what is done now
    cannot depend on which scenario comes), and the objective the weighted sum of the
    scenarios' objectives: energy spent now on arbitrage is missing in every scenario that
    needed it for its peak, at that scenario's probability.

    Args:
        config: the EMA configuration; horizon, step, efficiencies and weights are compiled in
            (make a new optimiser when they change), limits and battery bounds are data.
        weights: the scenarios' probabilities (normalised); one weight: a single trace.
    """

    def __init__(self, config: EmaConfig, weights: Sequence[float] = (1.0,)) -> None:
        import scipy.sparse as sp

        if not weights or any(w <= 0 for w in weights):
            raise SolverError("scenario weights must be positive")
        self.config = config
        n = config.horizon_steps
        dt_h = config.step_s / 3600
        eta_c, eta_d = config.charge_efficiency, config.discharge_efficiency
        self._dt_h = dt_h
        total = float(sum(weights))
        self.weights = tuple(float(w) / total for w in weights)
        count = len(self.weights)
        # one scenario's variables: the nine per-step blocks, soc (n + 1), peak, end shortfall
        at = {name: k * n for k, name in enumerate(_BLOCKS)}
        at["soc"], at["peak"], at["end_short"] = 9 * n, 10 * n + 1, 10 * n + 2
        size = 10 * n + 3
        self._at, self._size, self._n = at, size, n
        steps = np.arange(n)

        eq: list[tuple[Any, Any, Any]] = []  # (rows, columns, values), row numbers local
        ineq: list[tuple[Any, Any, Any]] = []

        def block(
            rows: list[tuple[Any, Any, Any]], first: int, terms: list[tuple[Any, float]]
        ) -> None:
            """Rows `first`, `first + 1`, ...: row t gets `value` in column `cols[t]`, for each
            (cols, value) of `terms`."""
            for cols, value in terms:
                at_cols = np.asarray(cols)
                rows.append(
                    (first + np.arange(at_cols.size), at_cols, np.full(at_cols.size, value))
                )

        eq_rows = ineq_rows = 0
        bound_rows: list[Any] = []
        bound_cols: list[Any] = []
        for s in range(count):
            o = s * size
            ch, dis = o + at["ch"] + steps, o + at["dis"] + steps
            g_imp, g_exp = o + at["g_imp"] + steps, o + at["g_exp"] + steps
            soc = o + at["soc"] + np.arange(n + 1)
            peak, end_short = o + at["peak"], o + at["end_short"]
            r = eq_rows
            # soc[0] = soc0; soc[t+1] - soc[t] - eta_c dt ch + dt / eta_d dis = 0;
            # g_imp - g_exp - ch + dis = net; ch - dis - up + down = prior
            block(eq, r, [([soc[0]], 1.0)])
            block(eq, r + 1, [(soc[1:], 1.0), (soc[:-1], -1.0), (ch, -eta_c * dt_h)])
            block(eq, r + 1, [(dis, dt_h / eta_d)])
            block(eq, r + 1 + n, [(g_imp, 1.0), (g_exp, -1.0), (ch, -1.0), (dis, 1.0)])
            up, down = o + at["up"] + steps, o + at["down"] + steps
            block(eq, r + 1 + 2 * n, [(ch, 1.0), (dis, -1.0), (up, -1.0), (down, 1.0)])
            eq_rows += 3 * n + 1
            r = ineq_rows
            nonneg = o + np.concatenate([np.arange(9 * n), [at["end_short"]]])
            block(ineq, r, [(nonneg, -1.0)])
            bound_rows.append(r + np.arange(nonneg.size))
            bound_cols.append(nonneg)
            r += 9 * n + 1
            reserve_short = o + at["reserve_short"] + steps
            v_imp, v_exp = o + at["v_imp"] + steps, o + at["v_exp"] + steps
            block(ineq, r, [(soc[1:], -1.0)])  # soc >= e_lo
            block(ineq, r + n, [(soc[1:], 1.0)])  # soc <= e_hi
            block(ineq, r + 2 * n, [(soc[1:], -1.0), (reserve_short, -1.0)])  # reserve
            block(ineq, r + 3 * n, [([soc[n]], -1.0), ([end_short], -1.0)])  # end SoC
            r += 3 * n + 1
            block(ineq, r, [(ch, 1.0)])  # ch <= ch_max
            block(ineq, r + n, [(dis, 1.0)])  # dis <= dis_max
            block(ineq, r + 2 * n, [(g_imp, 1.0), (v_imp, -1.0)])  # import cap
            block(ineq, r + 3 * n, [(g_exp, 1.0), (v_exp, -1.0)])  # export floor
            block(ineq, r + 4 * n, [(g_imp, 1.0), (np.full(n, peak), -1.0)])  # peak >= import
            block(ineq, r + 5 * n, [([peak], -1.0)])  # peak >= floor
            block(ineq, r + 5 * n + 1, [([peak], 1.0)])  # peak <= cap
            ineq_rows = r + 5 * n + 2
            if s == 0:  # every scenario's block has the same rows: its size, for the data
                self._eq_size, self._ineq_size = eq_rows, ineq_rows
        for s in range(1, count):  # non-anticipativity: the first step is one decision for all
            for name in ("ch", "dis"):
                block(eq, eq_rows, [([s * size + at[name]], 1.0), ([at[name]], -1.0)])
                eq_rows += 1
        nv = count * size

        def matrix(parts: list[tuple[Any, Any, Any]], m: int) -> Any:
            rows, cols, vals = (np.concatenate(p) for p in zip(*parts, strict=True))
            return sp.csc_matrix((vals, (rows, cols)), shape=(m, nv))

        self._a, self._g = matrix(eq, eq_rows), matrix(ineq, ineq_rows)
        self._bound_rows = np.concatenate(bound_rows).astype(np.int64)
        self._bound_cols = np.concatenate(bound_cols).astype(np.int64)
        self._b, self._h = np.zeros(eq_rows), np.zeros(ineq_rows)
        self._c = np.zeros(nv)
        self._term_costs = np.zeros((len(TERMS), nv))
        self._x: FloatArray = np.zeros(nv)
        self._import_cap = 0.0
        self._prices: tuple[Tariff, datetime, FloatArray, FloatArray] | None = None
        self.solves = 0

    # --- the data of a solve --------------------------------------------------------------

    def _set_rhs(
        self,
        nets: list[FloatArray],
        prior: FloatArray,
        soc0: float,
        e_bounds: tuple[float, float, FloatArray, float],
        power_max: tuple[float, float],
        imp: float,
        floor: float,
    ) -> None:
        """Fill `b` and `h` (the caps on the peaks are set by `_set_caps`)."""
        n = self._n
        e_lo, e_hi, e_reserve, e_end = e_bounds
        eq_size, ineq_size = self._eq_size, self._ineq_size
        for s, net in enumerate(nets):
            self._b[s * eq_size : (s + 1) * eq_size] = np.concatenate(
                ([soc0], np.zeros(n), net, prior)
            )
            self._h[s * ineq_size : (s + 1) * ineq_size] = np.concatenate(
                (
                    np.zeros(9 * n + 1),
                    np.full(n, -e_lo),
                    np.full(n, e_hi),
                    -e_reserve,
                    [-e_end],
                    np.full(n, power_max[0]),
                    np.full(n, power_max[1]),
                    np.full(n, imp),
                    np.full(n, -self.config.export_limit_kw),
                    np.zeros(n),
                    [-floor, 0.0],
                )
            )

    def _set_caps(self, caps: Sequence[float]) -> None:
        """Hold each scenario's peak at or below its cap (the last inequality of its block)."""
        for s, cap in enumerate(caps):
            self._h[(s + 1) * self._ineq_size - 1] = cap

    def _set_costs(
        self, price: FloatArray, feed: FloatArray, demand: float, soft: tuple[float, float]
    ) -> None:
        """The objective, term by term: `_term_costs[k] @ x` is term `TERMS[k]`."""
        cfg, n, at, dt = self.config, self._n, self._at, self._dt_h
        end_w, reserve_w = soft
        violation = cfg.violation_penalty_per_kwh * dt
        change = cfg.change_penalty_per_kwh * dt
        wear = cfg.wear_cost_per_kwh * dt
        per_var: dict[str, tuple[tuple[str, Any], ...]] = {
            "violation": (("v_imp", violation), ("v_exp", violation)),
            "change": (("up", change), ("down", change)),
            "energy": (("g_imp", dt * price), ("g_exp", -dt * feed)),
            "demand": (("peak", demand),),
            "wear": (("ch", wear), ("dis", wear)),
            "end_soc": (("end_short", end_w),),
            "reserve": (("reserve_short", reserve_w * dt),),
        }
        costs = self._term_costs
        costs[:] = 0.0
        for k, term in enumerate(TERMS):
            for var, value in per_var[term]:
                width = 1 if var in ("peak", "end_short") else n
                for s, weight in enumerate(self.weights):
                    first = s * self._size + at[var]
                    costs[k, first : first + width] = weight * value
        np.sum(costs, axis=0, out=self._c)

    def _tariff_prices(self, start: datetime) -> tuple[FloatArray, FloatArray]:
        """`tariff_prices` for this outlook, kept for the next solve of the same start and
        tariff (the second pass, the sites of a fleet re-planned at one time)."""
        cfg = self.config
        known = self._prices
        if known is not None and known[0] is cfg.tariff and known[1] == start:
            return known[2], known[3]
        price, feed = tariff_prices(cfg.tariff, start, cfg.horizon_steps, cfg.step_s)
        self._prices = (cfg.tariff, start, price, feed)
        return price, feed

    def lp(self) -> LinearProgram:
        """The LP with the data of the last solve (or zeros before the first)."""
        return LinearProgram(self._c, self._g, self._h, self._a, self._b, self._bound_rows)

    def value(self, name: str, scenario: int = 0) -> FloatArray:
        """A variable of the last solve (`ch`, `dis`, `soc`, ... as in the class docstring)."""
        first = scenario * self._size + self._at[name]
        width = {"soc": self._n + 1, "peak": 1, "end_short": 1}.get(name, self._n)
        out: FloatArray = self._x[first : first + width]
        return out

    # --- solving --------------------------------------------------------------------------

    def solve(
        self,
        inputs: EmaInputs,
        solver: SolverName | None = None,
        scenarios: Sequence[Scenario] | None = None,
    ) -> Schedule:
        """Solve for a battery schedule.

        Args:
            inputs: the outlook's data (net load, SoC, prior schedule, month peak).
            solver: override the configured solver.
            scenarios: one net-load trace per compiled weight (their weights are the compiled
                ones); None: `inputs.net_load_kw` (single-trace problems only).

        Returns:
            The schedule of the scenario with the highest planned peak (the first with one
            trace), with status, objective terms (probability-weighted), every scenario's
            planned peak and the solve time.

        Raises:
            SolverError: the solver failed or reported an infeasible / unbounded problem, or the
                inputs do not fit the compiled horizon or scenario count.
        """
        cfg = self.config
        n = cfg.horizon_steps
        name = solver or cfg.solver
        traces = [inputs.net_load_kw] if scenarios is None else [s.net_load_kw for s in scenarios]
        if len(traces) != len(self.weights):
            raise SolverError(f"{len(self.weights)} scenario(s) compiled, {len(traces)} given")
        nets = [np.asarray(t, dtype=float) for t in traces]
        prior = np.asarray(inputs.prior_kw, dtype=float)
        if any(net.shape != (n,) for net in nets) or prior.shape != (n,):
            raise SolverError(
                f"inputs must have {n} steps (got {[net.shape for net in nets]}, {prior.shape})"
            )
        if not (all(np.isfinite(net).all() for net in nets) and np.isfinite(prior).all()):
            raise SolverError("inputs contain NaN or infinite values")
        if not math.isfinite(inputs.soc_kwh):
            raise SolverError("initial SoC is not finite")

        cap = cfg.battery_capacity_kwh
        soc0 = inputs.soc_kwh
        # Bounds widened to include the present SoC, so a battery outside them is not infeasible.
        e_lo = min(cfg.soc_min_pct / 100 * cap, soc0)
        e_hi = max(cfg.soc_max_pct / 100 * cap, soc0)
        reserve = np.full(n, cfg.reserve_pct / 100 * cap)
        if inputs.reserve_kwh is not None:
            asked = np.asarray(inputs.reserve_kwh, dtype=float)
            if asked.shape != (n,) or not np.isfinite(asked).all():
                raise SolverError(f"reserve_kwh must hold {n} finite values")
            reserve = np.maximum(reserve, asked)
        reserve = np.minimum(reserve, cfg.soc_max_pct / 100 * cap)
        reserve_asked = bool(np.max(reserve) > 0)
        import_cap = cfg.import_limit_kw
        if cfg.demand_target_kw is not None:
            import_cap = min(import_cap, max(cfg.demand_target_kw, inputs.peak_floor_kw))
        self._import_cap = import_cap
        if cfg.energy_cost and inputs.price_per_kwh is not None:
            # negative prices count as free energy (the LP keeps its prices non-negative)
            price = np.maximum(np.asarray(inputs.price_per_kwh, dtype=float), 0.0)
            exported = inputs.export_per_kwh
            feed = np.minimum(np.zeros(n) if exported is None else np.asarray(exported), price)
            feed = np.maximum(feed, 0.0)
            if price.shape != (n,) or feed.shape != (n,) or not np.isfinite(price).all():
                raise SolverError(f"price_per_kwh and export_per_kwh must hold {n} finite values")
        elif cfg.energy_cost:
            price, feed = self._tariff_prices(inputs.start)
        else:
            price, feed = np.zeros(n), np.zeros(n)
        demand = cfg.tariff.demand_charge_per_kw if cfg.demand_charge else 0.0
        scaled = soft_target_weights(cfg, demand, reserve_asked)
        self._set_rhs(
            nets,
            prior,
            soc0,
            (e_lo, e_hi, reserve, cfg.end_soc_pct / 100 * cap),
            (cfg.battery_max_charge_kw, cfg.battery_max_discharge_kw),
            import_cap,
            max(inputs.peak_floor_kw, 0.0),
        )
        self._set_costs(price, feed, demand, scaled)
        # no cap in the first pass: above any import the plan can make (keeps the LP scaled)
        loose = max(inputs.peak_floor_kw, max(float(net.max()) for net in nets)) + 1.0
        self._set_caps([loose + cfg.battery_max_charge_kw] * len(nets))

        status, elapsed = self._run(name)
        peaks = self._peaks(nets, inputs.peak_floor_kw)
        full = (cfg.end_soc_penalty_per_kwh, cfg.reserve_penalty_per_kwh_h)
        if cfg.soft_targets_second_pass and scaled != full and self._soft_short():
            # Second pass: the soft targets at their full weight, every scenario's peak held at
            # what the first pass decided: they may keep energy from arbitrage, never buy peak.
            # Skipped when the first pass left no shortfall: its plan is then optimal for the
            # second (feasible there, and no plan the tighter caps allow costs less).
            self._set_caps([peak + PEAK_CAP_TOLERANCE_KW for peak in peaks])
            self._set_costs(price, feed, demand, full)
            status, more = self._run(name)
            elapsed += more
            peaks = self._peaks(nets, inputs.peak_floor_kw)
        pick = int(np.argmax(peaks)) if len(peaks) > 1 else 0
        return replace(
            self._schedule(inputs, nets[pick], pick, status, elapsed, name),
            scenario_peaks_kw=tuple(peaks) if len(peaks) > 1 else (),
        )

    def _run(self, name: str) -> tuple[str, float]:
        """Call the solver on the current data; the solution in `self._x`."""
        started = time.perf_counter()
        try:
            status, x = SOLVERS[name](self.lp(), self.config.solver_time_limit_s)
        except (ValueError, ArithmeticError, RuntimeError) as err:
            raise SolverError(f"{name} failed: {err}") from err
        elapsed = time.perf_counter() - started
        self.solves += 1
        if status not in _OK_STATUSES or x is None or not np.isfinite(x).all():
            raise SolverError(f"{name} returned status {status}")
        # an interior-point solver ends a hair outside x >= 0 (-1e-9): report the bound held
        x[self._bound_cols] = np.maximum(x[self._bound_cols], 0.0)
        self._x = x
        return status, elapsed

    def _soft_short(self) -> bool:
        """Whether the last solve planned any energy short of the end-SoC or reserve target."""
        short = sum(
            float(self.value(name, s).sum())
            for s in range(len(self.weights))
            for name in ("end_short", "reserve_short")
        )
        return short > SOFT_SHORT_TOLERANCE_KWH

    def _peaks(self, nets: list[FloatArray], floor: float) -> list[float]:
        return [
            max(float(np.max(net + self.value("ch", s) - self.value("dis", s))), floor, 0.0)
            for s, net in enumerate(nets)
        ]

    def scenario_schedule(
        self, base: Schedule, inputs: EmaInputs, net: FloatArray, k: int
    ) -> Schedule:
        """Scenario `k`'s schedule of the last solve (`base`: that solve's result)."""
        out = self._schedule(
            inputs, np.asarray(net, dtype=float), k, base.status, base.solve_time_s, base.solver
        )
        return replace(out, scenario_peaks_kw=base.scenario_peaks_kw)

    def _schedule(
        self,
        inputs: EmaInputs,
        net: FloatArray,
        pick: int,
        status: str,
        elapsed_s: float,
        name: str,
    ) -> Schedule:
        cfg = self.config
        ch = np.maximum(self.value("ch", pick), 0.0)
        dis = np.maximum(self.value("dis", pick), 0.0)
        battery = ch - dis
        pcc = net + battery
        violation = np.maximum.reduce(
            [pcc - self._import_cap, cfg.export_limit_kw - pcc, np.zeros_like(pcc)]
        )
        violation[violation < 1e-6] = 0.0
        terms = dict(zip(TERMS, (self._term_costs @ self._x).tolist(), strict=True))
        return Schedule(
            start=inputs.start,
            step_s=cfg.step_s,
            battery_p_kw=battery,
            charge_kw=ch,
            discharge_kw=dis,
            soc_kwh=self.value("soc", pick).copy(),
            pcc_kw=pcc,
            violation_kw=violation,
            status=status,
            objective=float(self._c @ self._x),
            terms=terms,
            solve_time_s=elapsed_s,
            solver=name,
        )


def _ecos(lp: LinearProgram, time_limit_s: float) -> tuple[str, FloatArray | None]:
    del time_limit_s  # ECOS has none: an iteration cap instead
    solution = lp.solve_ecos(max_iters=500)
    flag = solution["info"]["exitFlag"]
    status = {0: "optimal", 10: "optimal_inaccurate"}.get(flag, f"ecos exit flag {flag}")
    return status, np.asarray(solution["x"], dtype=float)


def _clarabel(lp: LinearProgram, time_limit_s: float) -> tuple[str, FloatArray | None]:
    import clarabel
    import scipy.sparse as sp

    settings = clarabel.DefaultSettings()
    settings.verbose = False
    settings.time_limit = time_limit_s
    nv = lp.c.shape[0]
    solver = clarabel.DefaultSolver(
        sp.csc_matrix((nv, nv)),
        lp.c,
        sp.vstack([lp.a, lp.g]).tocsc(),
        np.concatenate([lp.b, lp.h]),
        [clarabel.ZeroConeT(lp.b.shape[0]), clarabel.NonnegativeConeT(lp.h.shape[0])],
        settings,
    )
    solution = solver.solve()
    status = {"Solved": "optimal", "AlmostSolved": "optimal_inaccurate"}.get(
        str(solution.status), f"clarabel {solution.status}"
    )
    return status, np.asarray(solution.x, dtype=float)


def _highs(lp: LinearProgram, time_limit_s: float) -> tuple[str, FloatArray | None]:
    import highspy
    import scipy.sparse as sp

    # the rows that only bound a variable below by 0 become column bounds (a smaller model)
    rows = np.ones(lp.h.shape[0], dtype=bool)
    rows[lp.bound_rows] = False
    matrix = sp.vstack([lp.a, lp.g[rows]]).tocsc()
    inf = highspy.kHighsInf
    model = highspy.HighsLp()
    model.num_col_, model.num_row_ = matrix.shape[1], matrix.shape[0]
    model.col_cost_ = lp.c
    lower = np.full(matrix.shape[1], -inf)
    lower[lp.g[lp.bound_rows].tocsr().indices] = 0.0  # one column per bound row
    model.col_lower_ = lower
    model.col_upper_ = np.full(matrix.shape[1], inf)
    model.row_lower_ = np.concatenate([lp.b, np.full(int(rows.sum()), -inf)])
    model.row_upper_ = np.concatenate([lp.b, lp.h[rows]])
    model.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    model.a_matrix_.start_ = matrix.indptr
    model.a_matrix_.index_ = matrix.indices
    model.a_matrix_.value_ = matrix.data
    highs = highspy.Highs()  # type: ignore[no-untyped-call]
    highs.setOptionValue("output_flag", False)
    highs.setOptionValue("time_limit", time_limit_s)
    highs.passModel(model)
    highs.run()
    if highs.getModelStatus() != highspy.HighsModelStatus.kOptimal:
        return f"highs {highs.modelStatusToString(highs.getModelStatus())}", None
    return "optimal", np.asarray(highs.getSolution().col_value, dtype=float)


SolverCall = Callable[[LinearProgram, float], tuple[str, FloatArray | None]]
SOLVERS: dict[str, SolverCall] = {"ECOS": _ecos, "CLARABEL": _clarabel, "HIGHS": _highs}
"""Each solver's adapter: (the LP, time limit s) -> (status, solution or None)."""


TERMS = ("violation", "change", "energy", "demand", "wear", "end_soc", "reserve")
"""The objective's terms, in `Schedule.terms`."""


PEAK_CAP_TOLERANCE_KW = 1e-6
SOFT_SHORT_TOLERANCE_KWH = 1e-6
"""Below this, summed over the outlook, a soft target counts as met (no second pass)."""
PEAK_FLOOR_SHARE = 0.9
"""Soft SoC targets may be worth at most this share of the demand charge per kW of peak."""


def soft_target_weights(
    cfg: EmaConfig, demand_per_kw: float, reserve_asked: bool = True
) -> tuple[float, float]:
    """End-SoC and reserve penalties, scaled down so that they never pay for a higher peak.

    Raising the planned peak by 1 kW over the whole outlook stores at most
    `E = steps x step_h x charge_efficiency` kWh more; each stored kWh is worth at most
    `end + reserve x horizon_h` in the soft terms. When that gain `E x (end + reserve x
    horizon_h)` would outweigh the demand charge, both weights are scaled so that it is
    `PEAK_FLOOR_SHARE` of it: a reserve or SoC target alone never raises the month's peak
    (energy arbitrage still may, when the tariff says it pays). Without a demand charge the
    configured weights apply; without a reserve asked (`reserve_asked` False) only the end-SoC
    weight counts.

    Returns:
        (end-SoC penalty per kWh, reserve penalty per kWh and hour).
    """
    end, reserve = cfg.end_soc_penalty_per_kwh, cfg.reserve_penalty_per_kwh_h
    if demand_per_kw <= 0:
        return end, reserve
    horizon_h = cfg.horizon_steps * cfg.step_s / 3600
    stored_kwh = horizon_h * cfg.charge_efficiency
    gain = stored_kwh * (end + (reserve * horizon_h if reserve_asked else 0.0))
    if gain <= PEAK_FLOOR_SHARE * demand_per_kw:
        return end, reserve
    scale = PEAK_FLOOR_SHARE * demand_per_kw / gain
    return end * scale, reserve * scale


def _solver_options(name: str, time_limit_s: float) -> dict[str, Any]:
    if name == "CLARABEL":
        return {"time_limit": time_limit_s}
    if name == "HIGHS":
        return {"time_limit": time_limit_s}
    return {"max_iters": 500}


def uncertainty_reserve_kwh(
    upper_net_kw: FloatArray,
    threshold_kw: float,
    step_s: int,
    discharge_efficiency: float,
) -> FloatArray:
    """Energy to keep stored at the end of each step to shave an upper-quantile load.

    The load may come in at its upper quantile instead of the planned value; holding the
    15-minute import at `threshold_kw` then takes the energy of every later step's excess over
    it. Keeping that in store (a soft reserve in the EMA) stops the schedule from spending it on
    energy arbitrage before a high day shows itself.

    Args:
        upper_net_kw: upper quantile of the net load per step (e.g. p90), kW.
        threshold_kw: the demand threshold (the month's peak so far or the planned peak), kW.
        step_s: step length, s.
        discharge_efficiency: stored→AC, 0..1.

    Returns:
        Per step, the stored energy needed after it for the steps that follow, kWh.
    """
    excess = np.maximum(np.asarray(upper_net_kw, dtype=float) - threshold_kw, 0.0)
    energy = excess * step_s / 3600 / discharge_efficiency
    after = np.concatenate([np.cumsum(energy[::-1])[::-1][1:], [0.0]])
    reserve: FloatArray = after
    return reserve


@dataclass(frozen=True)
class Scenario:
    """One possible net-load trace over the outlook and its probability.

    Attributes:
        weight: probability (the weights of a set are normalised).
        net_load_kw: load - PV per step, kW.
        level: the forecast quantile level it was built from (for reports).
    """

    weight: float
    net_load_kw: FloatArray
    level: float = 0.5


SCENARIO_LEVELS: tuple[tuple[float, float], ...] = ((0.1, 0.2), (0.5, 0.6), (0.9, 0.2))
"""(quantile level, weight): p10, p50 and p90 traces standing for the strata 0-0.2, 0.2-0.8
and 0.8-1 of the forecast distribution."""
_KEY_LEVELS = {"p10": 0.1, "p50": 0.5, "p90": 0.9}


def quantile_trace(
    quantiles: Mapping[str, Sequence[float] | FloatArray], level: float
) -> FloatArray:
    """The trace at a quantile level, interpolated per step between the forecast's quantiles.

    Args:
        quantiles: `p10`, `p50`, `p90` (any of them; others are ignored), equal lengths.
        level: 0..1; outside the given levels the nearest one holds.

    Returns:
        The values per step.

    Raises:
        ValueError: no usable quantile.
    """
    known = sorted(
        (_KEY_LEVELS[k], np.asarray(v, dtype=float))
        for k, v in quantiles.items()
        if k in _KEY_LEVELS
    )
    if not known:
        raise ValueError("no p10/p50/p90 quantile to build a scenario from")
    levels = [lv for lv, _ in known]
    if level <= levels[0]:
        return known[0][1].copy()
    if level >= levels[-1]:
        return known[-1][1].copy()
    k = int(np.searchsorted(levels, level))  # levels[k - 1] < level <= levels[k]
    (lo_level, lo), (hi_level, hi) = known[k - 1], known[k]
    out: FloatArray = lo + (hi - lo) * (level - lo_level) / (hi_level - lo_level)
    return out


BIAS_DECAY_STEPS = 12.0
"""Steps over which the measured forecast error fades (e-folding: 3 h at 15 minutes)."""


def quantile_scenarios(
    load: Mapping[str, Sequence[float] | FloatArray],
    pv: Mapping[str, Sequence[float] | FloatArray] | None = None,
    levels: Sequence[tuple[float, float]] = SCENARIO_LEVELS,
    bias_kw: float = 0.0,
    bias_decay_steps: float = BIAS_DECAY_STEPS,
) -> list[Scenario]:
    """Net-load scenarios from quantile forecasts: load at level u with PV at 1 - u.

    High load goes with low PV (the case that sets a peak), one trace per (level, weight).
    `bias_kw` is the error measured now (actual net load of the last interval minus its p50
    forecast): a day-ahead forecast does not see the morning's clouds or a busy day, the meter
    does. Every trace is shifted by it, fading as `exp(-step / bias_decay_steps)`.
    """
    total = sum(w for _, w in levels)
    out = []
    shift: FloatArray | float = 0.0
    for level, weight in levels:
        net = quantile_trace(load, level)
        if pv is not None:
            net = net - quantile_trace(pv, 1.0 - level)
        if bias_kw and bias_decay_steps > 0:
            shift = bias_kw * np.exp(-np.arange(len(net)) / bias_decay_steps)
        out.append(Scenario(weight / total, net + shift, level))
    return out


OVERSHOOT = 1.0
"""How much a target below a scenario's need costs there: each kW the PMA holds below the need
spends energy that is then missing, taken to come back as `OVERSHOOT` kW above the need (up
to the scenario's peak without battery). 1: the target is the weighted median of the needs;
large: the highest need (a target below it taken to fail outright)."""


def plan_with_scenarios(
    optimizer: ScheduleOptimizer,
    inputs: EmaInputs,
    scenarios: Sequence[Scenario],
    overshoot: float = OVERSHOOT,
) -> Schedule:
    """Decide the demand target with the uncertainty in view, and the schedule for it.

    With an optimiser compiled for these scenarios (its weights), one two-stage solve: every
    scenario gets its own plan, the first step shared, so what is done now is hedged over all
    of them; each scenario's planned peak is what it needs, `need_s` (the month's peak so far
    is every scenario's floor). With a single-trace optimiser, each scenario is solved alone.

    The target handed to the PMA is the candidate `need_k` with the lowest expected billed peak,
    where a scenario that needs more than the target is taken to bill its peak without the
    battery (the PMA would drain the battery holding a target it cannot hold): a high scenario
    raises the target only as far as its probability makes it worth it. The schedule returned
    is the plan of the scenario that set the target.

    Args:
        optimizer: the compiled EMA problem.
        inputs: SoC, prior schedule, month's peak, reserve; its `net_load_kw` is not used.
        scenarios: at least one scenario of the optimiser's horizon.

    Returns:
        The schedule with `target_kw` (the 15-minute import for the PMA to hold) and the
        needs of the scenarios; `solve_time_s` sums every solve.

    Raises:
        SolverError: a solve failed, or no scenario was given.
    """
    if not scenarios:
        raise SolverError("no scenario to plan on")
    floor = max(inputs.peak_floor_kw, 0.0)
    if len(scenarios) == 1:
        plan = optimizer.solve(replace(inputs, net_load_kw=scenarios[0].net_load_kw))
        need = max(floor, float(plan.pcc_kw.max()))
        return replace(plan, target_kw=need, scenario_peaks_kw=(need,))
    if len(optimizer.weights) == len(scenarios):
        joint = optimizer.solve(inputs, scenarios=scenarios)
        needs = list(joint.scenario_peaks_kw)
        plans: list[Schedule] | None = None
        elapsed = joint.solve_time_s
    else:
        plans = [optimizer.solve(replace(inputs, net_load_kw=sc.net_load_kw)) for sc in scenarios]
        needs = [max(floor, float(p.pcc_kw.max())) for p in plans]
        elapsed = sum(p.solve_time_s for p in plans)
    total = sum(sc.weight for sc in scenarios)
    unshaved = [max(floor, float(np.max(sc.net_load_kw))) for sc in scenarios]

    def billed(target: float, need: float, raw: float) -> float:
        if need <= target + 1e-6:
            return target
        return min(max(raw, need), need + overshoot * (need - target))

    def expected(target: float) -> float:
        return sum(
            sc.weight / total * billed(target, need, raw)
            for sc, need, raw in zip(scenarios, needs, unshaved, strict=True)
        )

    best = min(range(len(scenarios)), key=lambda k: (expected(needs[k]), needs[k]))
    if plans is None:
        chosen = optimizer.scenario_schedule(joint, inputs, scenarios[best].net_load_kw, best)
    else:
        chosen = plans[best]
    return replace(
        chosen, target_kw=needs[best], scenario_peaks_kw=tuple(needs), solve_time_s=elapsed
    )


STRUCTURAL_FIELDS = (
    "horizon_steps",
    "step_s",
    "charge_efficiency",
    "discharge_efficiency",
    "violation_penalty_per_kwh",
    "change_penalty_per_kwh",
    "wear_cost_per_kwh",
)
"""EmaConfig fields compiled into the problem: a change builds a new one."""
_COMPILED: dict[tuple[Any, ...], ScheduleOptimizer] = {}


def compiled(config: EmaConfig, weights: Sequence[float] = (1.0,)) -> ScheduleOptimizer:
    """This process's compiled problem for a configuration and scenario weights (built on
    first use, then reused)."""
    key = (*(getattr(config, k) for k in STRUCTURAL_FIELDS), tuple(weights))
    optimizer = _COMPILED.get(key)
    if optimizer is None:
        optimizer = _COMPILED[key] = ScheduleOptimizer(config, weights)
    optimizer.config = config
    return optimizer


def solve_plan(
    config: EmaConfig, inputs: EmaInputs, scenarios: Sequence[Scenario] = ()
) -> Schedule:
    """One EMA plan, runnable in a worker process (arguments and result pickle).

    With scenarios: `plan_with_scenarios`; without: one solve on `inputs.net_load_kw`.
    """
    if not scenarios:
        return replace(compiled(config).solve(inputs), worker_pid=os.getpid())
    optimizer = compiled(config, [sc.weight for sc in scenarios])
    plan = plan_with_scenarios(optimizer, inputs, scenarios)
    return replace(plan, worker_pid=os.getpid())


def warm(config: EmaConfig, weights: Sequence[float] = (1.0,)) -> int:
    """Build the compiled problem in this process (solvers imported); returns the process id."""
    compiled(config, weights)
    return os.getpid()
