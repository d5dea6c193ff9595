"""Forecaster accuracy on the SimBench 2016 profiles: what the service issues, by horizon.

Sites are driven by the SimBench load (h0-a, h0-b households, g1-a commercial; × 5 kW) and PV
(pv1, pv3; × 6 kW) profiles. Timestamps are local wall-clock time in Europe/Berlin (DST:
localized with ambiguous="infer"). Rolling-origin backtest (`forecaster.evaluation.backtest`,
the code `forecaster --train/--evaluate` runs): every fold's models, intraday update and band
calibration fitted on the data before it; forecasts issued every `--issue-every` intervals
(4 = hourly: a dense sample of the service's 15-minute issues), 96 intervals ahead each.

`--span test` (default): the last quarter (Oct-Dec 2016) held out, 3 folds. `--span
validation`: the data before 2016-10-01, its last third (Jul-Sep) held out: the span on which
features and hyper-parameters were chosen. Prints the skill vs the better of the 1-day and
7-day seasonal naive (PV: the 1-day one) and vs persistence, overall and per horizon group,
80 % coverage (PV: daylight), width and pinball; then training time per series-year and the
time of one forecast for 1,000 sites with the bare `predict` of the same rows as the reference.

    .venv/bin/python bench/bench_forecast.py [--span validation] [--series h0-a,pv1]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
from harness import local_profiles

from derbus import features as fx
from derbus.tariff import Tariff
from forecaster.calibration import GROUPS
from forecaster.catalogue import TARGETS
from forecaster.evaluation import BacktestResult, backtest
from forecaster.serving import forecast
from forecaster.training import TrainConfig, fit_final

SITE = fx.SiteContext("Europe/Berlin", "DE", 51.0, 10.0, Tariff(timezone="Europe/Berlin"))
SERIES = {  # site: (target, column, kW per unit)
    "h0-a": ("load", "h0-a_load_pu", 5.0),
    "h0-b": ("load", "h0-b_load_pu", 5.0),
    "g1-a": ("load", "g1-a_load_pu", 5.0),
    "pv1": ("pv", "pv1_pv_pu", 6.0),
    "pv3": ("pv", "pv3_pv_pu", 6.0),
}
MODELS = ("linear", "gbm", "gbm_median")
QUICK_MODELS = ("linear", "gbm_median")


def pct(v: float) -> str:
    return "–" if not np.isfinite(v) else f"{v:+.1%}"


def cov(m: dict[str, float], solar: bool) -> str:
    v = m.get("coverage_80_daylight" if solar else "coverage_80", float("nan"))
    return "–" if not np.isfinite(v) else f"{v:.1%}"


def report(name: str, r: BacktestResult, elapsed: float) -> list[str]:
    served = r.best_learned()
    o, solar = r.overall[served], r.solar
    pers = "clear_sky_persistence" if solar else "persistence"
    lines = [
        f"| {name} | {served} | {r.reference} | {o['mae']:.3f} | {r.overall[r.reference]['mae']:.3f} "
        f"| **{pct(o['skill'])}** | {pct(o.get('skill_seasonal_naive_day', float('nan')))} "
        f"| {pct(o['skill_persistence'])} ({pers}) | {pct(r.day_ahead[served]['skill'])} "
        f"| **{cov(o, solar)}** | {o.get('width_80_daylight' if solar else 'width_80'):.3f} "
        f"| {o['pinball']:.4f} | {elapsed:.0f} |"
    ]
    return lines


def group_rows(name: str, r: BacktestResult) -> list[str]:
    served = r.best_learned()
    rows = []
    for g, _, _ in GROUPS:
        m = r.by_group[served][g]
        rows.append(
            f"| {name} | {g} | {m['mae']:.3f} | {pct(m['skill'])} | {pct(m['skill_last_15min'])} "
            f"| {pct(m['skill_persistence'])} | {cov(m, r.solar)} "
            f"| {m.get('width_80_daylight' if r.solar else 'width_80'):.3f} | {m['pinball']:.4f} |"
        )
    return rows


def model_rows(name: str, r: BacktestResult) -> list[str]:
    rows = []
    for model, m in sorted(r.overall.items(), key=lambda kv: kv[1]["mae"]):
        rows.append(
            f"| {name} | {model} | {m['mae']:.3f} | {pct(m['skill'])} "
            f"| {m.get('pinball', float('nan')):.4f} "
            f"| {m.get('pinball_band', float('nan')):.4f} | {cov(m, r.solar)} |"
        )
    return rows


def timing(y: pd.Series, target_name: str, served: str, max_iter: int, sites: int) -> tuple:
    """Training on the whole year; one forecast for `sites` sites (one model, their histories)."""
    target = TARGETS[target_name]
    config = TrainConfig(
        models=MODELS, test_fraction=0.25, folds=1, max_iter=max_iter, threads=1, min_train_days=14
    )
    began, cpu = time.perf_counter(), time.process_time()
    model = fit_final(y, SITE, target, served, config)
    train_s, train_cpu = time.perf_counter() - began, time.process_time() - cpu
    issue = y.index[-96]
    history = y[y.index < issue].iloc[-(5 * fx.STEPS_PER_WEEK + fx.STEPS_PER_DAY) :]
    rng = np.random.default_rng(0)
    began, cpu = time.perf_counter(), time.process_time()
    for _ in range(sites):
        site_history = history * rng.uniform(0.5, 2.0)
        forecast(model, site_history, issue, SITE, target)
    batch_s, batch_cpu = time.perf_counter() - began, time.process_time() - cpu
    # the raw reference: the bare model's predict of the same number of rows, in one call
    from forecaster.design import design_matrix

    x = design_matrix(history, history.index[-96:], SITE, target)
    rows = pd.concat([x] * sites, ignore_index=True)
    began, cpu = time.perf_counter(), time.process_time()
    model.model.predict(rows)
    bare_s, bare_cpu = time.perf_counter() - began, time.process_time() - cpu
    return train_s, train_cpu, batch_s, batch_cpu, bare_s, bare_cpu


def table(header: str, rows: list[str]) -> None:
    """A Markdown table after a blank line."""
    print()
    print(header)
    print("|" + " --- |" * (header.count("|") - 1))
    print("\n".join(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--span", choices=("test", "validation"), default="test")
    parser.add_argument("--series", default=",".join(SERIES))
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--issue-every", type=int, default=4)
    parser.add_argument("--max-iter", type=int, default=200)
    parser.add_argument("--sites", type=int, default=1000, help="sites of the batch forecast")
    parser.add_argument("--no-timing", action="store_true")
    parser.add_argument("--timing-only", action="store_true", help="served model given by --model")
    parser.add_argument("--model", default="gbm_median")
    parser.add_argument("--models", default=",".join(MODELS), help="learned models compared")
    args = parser.parse_args()
    models = tuple(args.models.split(","))
    profiles = local_profiles()
    names = args.series.split(",")
    if args.span == "validation":
        profiles = profiles[profiles.index < pd.Timestamp("2016-10-01", tz="UTC")]
        fraction = 1 / 3
    else:
        fraction = 0.25
    print(
        f"SimBench 2016, span {args.span}: last {fraction:.0%} held out, {args.folds} folds, "
        f"an issue every {args.issue_every * 15} min, max_iter {args.max_iter}, models {models}"
    )
    results: dict[str, tuple[BacktestResult, float]] = {}
    if args.timing_only:
        print_timing(profiles, {n: args.model for n in names}, args)
        return
    for name in names:
        target_name, column, scale = SERIES[name]
        y = pd.Series(profiles[column].to_numpy(dtype=float) * scale, index=profiles.index)
        began = time.perf_counter()
        r = backtest(
            y,
            SITE,
            TARGETS[target_name],
            models,
            test_fraction=fraction,
            folds=args.folds,
            max_iter=args.max_iter,
            issue_every=args.issue_every,
        )
        results[name] = (r, time.perf_counter() - began)
        print(f"{name}: done in {results[name][1]:.0f} s", flush=True)
    table(
        "| series | served | reference | MAE kW | reference MAE | skill vs reference "
        "| skill vs 1-day naive | skill vs persistence | skill, 00:00 UTC issues only "
        "| 80 % coverage (PV: daylight) | 80 % width kW | pinball kW | backtest s |",
        [line for n, (r, t) in results.items() for line in report(n, r, t)],
    )
    table(
        "| series | horizon | MAE kW | skill vs reference | skill vs last 15 min held "
        "| skill vs persistence (PV: clear-sky index) | 80 % coverage (PV: daylight) "
        "| 80 % width kW | pinball kW |",
        [line for n, (r, _) in results.items() for line in group_rows(n, r)],
    )
    table(
        "| series | model | MAE kW | skill vs reference | pinball | pinball P10/P90 "
        "| 80 % coverage |",
        [line for n, (r, _) in results.items() for line in model_rows(n, r)],
    )
    if not args.no_timing:
        print_timing(profiles, {n: r.best_learned() for n, (r, _) in results.items()}, args)


def print_timing(profiles: pd.DataFrame, served: dict[str, str], args: argparse.Namespace) -> None:
    print()
    print(
        f"| series | served | training s (one year), wall / CPU | one forecast for "
        f"{args.sites} sites s, wall / CPU | bare predict of the same rows s, wall / CPU "
        f"| ratio (CPU) |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for name, model in served.items():
        target_name, column, scale = SERIES[name]
        y = pd.Series(profiles[column].to_numpy(dtype=float) * scale, index=profiles.index)
        t_w, t_c, b_w, b_c, r_w, r_c = timing(y, target_name, model, args.max_iter, args.sites)
        print(
            f"| {name} | {model} | {t_w:.1f} / {t_c:.1f} | {b_w:.1f} / {b_c:.1f} "
            f"| {r_w:.2f} / {r_c:.2f} | {b_c / r_c:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
