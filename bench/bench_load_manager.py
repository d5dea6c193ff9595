"""Load manager proof of value: net-balancing rules on a SimBench day, job scheduler vs baselines.

Part 1 replays one sunny day of SimBench household load (h0-a) and PV (pv1) at 10-second cycles
through the service's own pure models (BalanceIntegrator, NetBalanceController, KPIs) in
accelerated time: the site is a pure model (PCC = base + loads − PV), not the edge simulator.

Part 2 builds a neighbourhood (houses with SimBench loads, some with PV, sharing PV) and a set of
deferrable jobs, and compares the MILP plan with "start as early as allowed" and a greedy
first-come-first-served baseline on perfect forecasts.

    .venv/bin/python bench/bench_load_manager.py            # full: 1 day, 12 houses / 60 jobs
    .venv/bin/python bench/bench_load_manager.py --quick    # smaller neighbourhood
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import random
import statistics
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from derbus.tariff import Tariff
from load_manager.balance import BalanceIntegrator, PeriodTotals
from load_manager.controller import CycleInputs, NetBalanceController
from load_manager.kpi import DayKpis
from load_manager.scheduler import (
    HouseInput,
    JobInput,
    Problem,
    Schedule,
    evaluate,
    schedule_earliest,
    schedule_greedy,
    schedule_milp,
)
from load_manager.settings import LoadConfig, Rule

DATA = Path(__file__).resolve().parents[1] / "data" / "profiles" / "simbench_2016_15min.csv"
DAY = "2016-06-09"  # a sunny day (among the highest PV energy of the year, smooth profile)
TZ = "UTC"  # SimBench timestamps are naive; read as UTC here


def load_day(day: str, columns: tuple[str, ...], days: int = 1) -> dict[str, list[float]]:
    """96·days quarter-hour values per column starting at `day`."""
    start = datetime.fromisoformat(day)
    end = start + timedelta(days=days)
    out: dict[str, list[float]] = {c: [] for c in columns}
    with DATA.open() as f:
        for row in csv.DictReader(f):
            t = datetime.fromisoformat(row["time"])
            if start <= t < end:
                for c in columns:
                    out[c].append(float(row[c]))
    return out


def interpolate(values: list[float], step_s: int, fine_s: int) -> list[float]:
    """Linear interpolation of quarter-hour means onto a fine grid (values at step centres)."""
    n = len(values) * step_s // fine_s
    out = []
    for i in range(n):
        x = (i * fine_s + fine_s / 2) / step_s - 0.5
        k = min(max(int(x // 1), 0), len(values) - 1)
        k1 = min(k + 1, len(values) - 1)
        w = min(max(x - k, 0.0), 1.0)
        out.append(values[k] * (1 - w) + values[k1] * w)
    return out


# --- part 1: net balancing -------------------------------------------------------------------
@dataclass
class RuleResult:
    name: str
    efficiency: float
    exported_wh: float
    imported_wh: float
    switchings: int
    hours_on: dict[str, float]
    gross_import_wh: float


def run_net_balancing(
    rule: Rule | None,
    *,
    period_s: int = 3600,
    pv_kwp: float = 6.0,
    load_peak_kw: float = 3.0,
    cycle_s: int = 10,
    seed: int = 1,
    ttc_target_wh: float = 0.0,
    ttc_margin_wh: float = 10.0,
    surplus_tau_s: float = 60.0,
    min_on_off_s: float = 0.0,
) -> RuleResult:
    """Replay the day; rule None = loads never switched (reference)."""
    prof = load_day(DAY, ("h0-a_load_pu", "pv1_pv_pu"))
    base = interpolate([v * load_peak_kw for v in prof["h0-a_load_pu"]], 900, cycle_s)
    pv = interpolate([v * pv_kwp for v in prof["pv1_pv_pu"]], 900, cycle_s)
    rng = random.Random(seed)
    noise = 0.0
    loads = [
        LoadConfig(
            device_id="load1",
            rated_kw=1.5,
            priority=1,
            on_wh=100,
            off_wh=-10,
            min_on_s=min_on_off_s,
            min_off_s=min_on_off_s,
        ),
        LoadConfig(
            device_id="load2",
            rated_kw=2.0,
            priority=2,
            on_wh=170,
            off_wh=100,
            min_on_s=min_on_off_s,
            min_off_s=min_on_off_s,
        ),
    ]
    ctl = NetBalanceController(
        loads,
        rule=rule or "hysteresis",
        min_on_time_rule_s=600,
        ttc_target_wh=ttc_target_wh,
        ttc_margin_wh=ttc_margin_wh,
        surplus_tau_s=surplus_tau_s,
    )
    integ = BalanceIntegrator(period_s, TZ, max_gap_s=3 * cycle_s)
    t0 = datetime.fromisoformat(DAY).replace(tzinfo=UTC)
    day = DayKpis(t0.date())
    gross_import = 0.0
    closed: list[PeriodTotals] = []
    for i in range(len(base)):
        now = t0 + timedelta(seconds=i * cycle_s)
        noise = 0.9 * noise + rng.gauss(0.0, 0.05)  # appliance noise on the base load, kW
        on_kw = sum(ld.rated_kw for ld in loads if ctl.states[ld.device_id].on)
        pcc = max(0.0, base[i] + noise) + on_kw - pv[i]
        gross_import += max(pcc, 0.0) * cycle_s / 3.6
        closed += integ.add_meter(now, pcc)
        closed += integ.add_pv(now, pv[i])
        if rule is None:
            continue
        assert integ.current is not None
        decisions = ctl.step(CycleInputs(integ.balance_wh, pcc, integ.current.end, now.hour), now)
        day.add_cycle(decisions, cycle_s)
    end = t0 + timedelta(days=1)
    closed += integ.add_meter(end, 0.0)
    closed += integ.add_pv(end, 0.0)
    closed += integ.roll(end)
    for totals in closed:
        day.add_period(totals)
    return RuleResult(
        name=rule or "no control",
        efficiency=day.efficiency or 0.0,
        exported_wh=day.exported_wh,
        imported_wh=day.imported_wh,
        switchings=sum(day.switchings.values()),
        hours_on={k: v / 3600 for k, v in day.on_s.items()},
        gross_import_wh=gross_import,
    )


def part1(quick: bool) -> list[str]:
    lines = [
        f"### Net balancing — SimBench {DAY}, h0-a household (3 kW peak) + pv1 (6 kWp), "
        "loads 1.5 kW (priority 1) and 2.0 kW, 10 s cycles",
        "",
        "| rule | period | efficiency | net exported Wh | net imported Wh | switchings/day "
        "| hours on load1 / load2 | gross import Wh |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    cases: list[tuple[Rule | None, int]] = [
        (None, 3600),
        ("hysteresis", 3600),
        ("min_on_time", 3600),
        ("time_to_consume", 3600),
    ]
    if not quick:
        cases += [("hysteresis", 900), ("time_to_consume", 900)]
    for rule, period in cases:
        r = run_net_balancing(rule, period_s=period)
        hours = " / ".join(f"{r.hours_on.get(d, 0.0):.2f}" for d in ("load1", "load2"))
        lines.append(
            f"| {r.name} | {period // 60} min | {r.efficiency:.2%} | {r.exported_wh:.0f} "
            f"| {r.imported_wh:.0f} | {r.switchings} | {hours} | {r.gross_import_wh:.0f} |"
        )
    return lines


# --- part 2: job scheduler -------------------------------------------------------------------
JOB_TYPES = {
    # name: (profile kW per 15 min, window length range h)
    "washing_machine": ((2.0, 0.6, 0.3, 0.3, 0.5, 0.3), (4, 10)),
    "dishwasher": ((1.8, 0.2, 0.2, 1.8, 0.2), (4, 12)),
    "dryer": ((2.5, 2.5, 2.5, 1.5), (3, 8)),
    "ev": ((3.7,) * 8, (6, 12)),
    "water_heater": ((2.0, 2.0, 2.0, 2.0), (6, 12)),
}


def neighbourhood(n_houses: int, n_jobs: int, seed: int = 7) -> Problem:
    """A seeded neighbourhood day on 15-minute steps, perfect forecasts, shared PV."""
    rng = random.Random(seed)
    prof = load_day(DAY, ("h0-a_load_pu", "h0-b_load_pu", "pv1_pv_pu", "pv3_pv_pu"))
    t0 = datetime.fromisoformat(DAY).replace(tzinfo=UTC)
    houses = []
    for h in range(n_houses):
        load_col = "h0-a_load_pu" if h % 2 == 0 else "h0-b_load_pu"
        shift = rng.randint(-2, 2)
        peak = rng.uniform(2.5, 4.0)
        base = [prof[load_col][(k + shift) % 96] * peak for k in range(96)]
        kwp = rng.choice([0.0, 0.0, 4.0, 5.0, 6.0, 8.0])
        pv_col = "pv1_pv_pu" if h % 3 else "pv3_pv_pu"
        pv = [v * kwp for v in prof[pv_col]]
        houses.append(HouseInput(f"house-{h + 1:02d}", 9.2, tuple(pv), tuple(base)))
    jobs = []
    kinds = list(JOB_TYPES)
    for j in range(n_jobs):
        house = houses[j % n_houses]
        kind = rng.choice(kinds)
        profile, (wmin, wmax) = JOB_TYPES[kind]
        est_step = rng.randint(6 * 4, 14 * 4)  # 06:00 - 14:00
        window_steps = rng.randint(wmin * 4, wmax * 4)
        lst_step = min(est_step + window_steps, 96 - len(profile))
        jobs.append(
            JobInput(
                f"job-{j + 1:03d}",
                house.house_id,
                kind,
                t0 + timedelta(minutes=15 * est_step),
                t0 + timedelta(minutes=15 * lst_step),
                profile,
            )
        )
    tariff = Tariff(timezone=TZ)
    prices = tuple(tariff.price_at(t0 + timedelta(minutes=15 * k)) for k in range(96))
    return Problem(
        start=t0,
        step_s=900,
        n_steps=96,
        houses=tuple(houses),
        jobs=tuple(jobs),
        price_per_kwh=prices,
        shared_pv=True,
        neighbourhood_limit_kw=12.0 * n_houses / 2,
        cost_weight=1.0,
        peak_weight_per_kw=0.05,
    )


def part2(quick: bool) -> list[str]:
    sizes = [(5, 25)] if quick else [(12, 60), (20, 100)]
    lines = []
    for n_houses, n_jobs in sizes:
        problem = neighbourhood(n_houses, n_jobs)
        job_kwh = sum(sum(j.profile_kw) for j in problem.jobs) * problem.dt_h
        pv_kwh = sum(sum(h.pv_kw) for h in problem.houses) * problem.dt_h
        lines += [
            "",
            f"### Job scheduler — {n_houses} houses sharing PV, {n_jobs} jobs "
            f"({job_kwh:.1f} kWh of jobs, {pv_kwh:.1f} kWh of PV), 96 × 15 min, perfect forecasts",
            "",
            "| plan | PV share of job energy | grid import kWh | energy cost | peak import kW "
            "| peak-to-average | solve time s |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        results: list[tuple[Schedule, float]] = []
        gaps: list[str] = []
        for fn in (schedule_earliest, schedule_greedy):
            results.append((fn(problem), 0.0))
        runs = ((20.0, 0.01),) if quick else ((20.0, 0.01), (60.0, 0.001))
        for limit_s, gap in runs:
            began = time.perf_counter()
            milp = schedule_milp(problem, time_limit_s=limit_s, mip_gap=gap)
            results.append((milp, time.perf_counter() - began))
            gaps.append(f"{gap:.1%} gap, {limit_s:.0f} s limit")
        for sched, wall in results:
            ev = evaluate(problem, {k: v.start_index for k, v in sched.placements.items()})
            if sched.method == "milp":
                label = f"MILP ({gaps.pop(0)}: {sched.status})"
            else:
                label = {
                    "earliest": "start as early as allowed",
                    "greedy": "greedy (FCFS, most PV)",
                }[sched.method]
            lines.append(
                f"| {label} | {ev.pv_share:.1%} | {ev.grid_import_kwh:.1f} | {ev.cost:.2f} "
                f"| {ev.peak_kw:.1f} | {ev.par:.2f} | {max(wall, sched.solve_time_s):.3f} |"
            )
        if milp.unschedulable:
            lines.append(f"\nunschedulable: {sorted(milp.unschedulable)}")
    lines += forecast_error_table(*sizes[0])
    return lines


def with_forecast_error(problem: Problem, error: float, seed: int = 11) -> Problem:
    """The same instance with each house's PV forecast off by a seeded factor (daily bias)
    and a per-step error, both of relative size `error`."""
    rng = random.Random(seed)
    houses = []
    for h in problem.houses:
        bias = 1.0 + rng.gauss(0.0, error)
        pv = tuple(max(0.0, v * bias * (1.0 + rng.gauss(0.0, error))) for v in h.pv_kw)
        houses.append(dataclasses.replace(h, pv_kw=pv))
    return dataclasses.replace(problem, houses=tuple(houses))


def forecast_error_table(n_houses: int, n_jobs: int) -> list[str]:
    """Plans made on erroneous PV forecasts, judged on the actual PV."""
    actual = neighbourhood(n_houses, n_jobs)
    lines = [
        "",
        f"### Job scheduler with PV forecast error — {n_houses} houses, {n_jobs} jobs; plans made "
        "on the erroneous forecast, figures on the actual PV",
        "",
        "| forecast error | plan | PV share | grid import kWh | energy cost | peak kW | PAR |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for error in (0.15, 0.30):
        forecast = with_forecast_error(actual, error)
        for fn in (schedule_earliest, schedule_greedy, schedule_milp):
            sched = fn(forecast)
            ev = evaluate(actual, {k: v.start_index for k, v in sched.placements.items()})
            lines.append(
                f"| {error:.0%} | {sched.method} | {ev.pv_share:.1%} | {ev.grid_import_kwh:.1f} "
                f"| {ev.cost:.2f} | {ev.peak_kw:.1f} | {ev.par:.2f} |"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs")
    parser.add_argument("--part", choices=["1", "2", "all"], default="all")
    args = parser.parse_args()
    lines: list[str] = []
    if args.part in ("1", "all"):
        lines += part1(args.quick)
    if args.part in ("2", "all"):
        lines += part2(args.quick)
    print("\n".join(lines))
    _ = statistics  # imported for ad-hoc analysis


if __name__ == "__main__":
    main()
