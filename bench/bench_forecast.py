"""Forecaster accuracy on the SimBench 2016 profiles: last quarter held out, day-ahead issues.

Sites are driven by the SimBench household load (h0-a, h0-b) and PV (pv1, pv3) profiles, per
unit scaled to kW. Timestamps are read as local wall-clock time in Europe/Berlin: the file has a
missing 02:00-02:45 on 2016-03-27 and a repeated one on 2016-10-30, i.e. DST (localized with
ambiguous="infer"). Rolling-origin backtest over the last quarter (test_size 0.25) with daily
issues at 00:00 UTC, every fold refitted on its past. Prints MAE, skill vs seasonal naive and vs
persistence, 80 % coverage, and training / prediction times.

    .venv/bin/python bench/bench_forecast.py [--quick]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from derbus import features as fx
from derbus.tariff import Tariff
from forecaster.catalogue import TARGETS
from forecaster.design import day_ahead_times, design_matrix, training_rows
from forecaster.evaluation import backtest
from forecaster.models import finish, make_model

PROFILES = Path(__file__).resolve().parents[1] / "data" / "profiles" / "simbench_2016_15min.csv"
SITE = fx.SiteContext("Europe/Berlin", "DE", 51.0, 10.0, Tariff(timezone="Europe/Berlin"))
SERIES = [  # (site, target, column, kW per unit)
    ("h0-a", "load", "h0-a_load_pu", 5.0),
    ("h0-b", "load", "h0-b_load_pu", 5.0),
    ("pv1", "pv", "pv1_pv_pu", 6.0),
    ("pv3", "pv", "pv3_pv_pu", 6.0),
]


def load_profiles() -> pd.DataFrame:
    frame = pd.read_csv(PROFILES, parse_dates=["time"])
    local = pd.DatetimeIndex(frame.pop("time")).tz_localize("Europe/Berlin", ambiguous="infer")
    frame.index = local.tz_convert("UTC")
    return frame


def _daylight(m: dict[str, float]) -> str:
    """80 % coverage on daylight intervals (PV only; at night 0 is trivially covered)."""
    return f"{m['coverage_80_daylight']:.1%}" if "coverage_80_daylight" in m else "–"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="two series, fewer iterations")
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--max-iter", type=int, default=200)
    args = parser.parse_args()
    profiles = load_profiles()
    series = SERIES[::2] if args.quick else SERIES
    max_iter = 60 if args.quick else args.max_iter
    folds = 1 if args.quick else args.folds
    models = ("linear", "gbm", "gbm_quantile")
    print(f"SimBench 2016, test = last quarter, {folds} rolling-origin folds, max_iter {max_iter}")
    header = ("| series | target | best model | MAE kW | seasonal naive MAE | skill vs s.naive "
              "| persistence MAE | skill vs persistence | 80 % coverage | 80 % coverage, daylight "
              "| pinball | fit s (all folds) |")  # fmt: skip
    print(header)
    print("|" + " --- |" * 12)
    timing_rows = []
    for name, target_name, column, scale in series:
        target = TARGETS[target_name]
        y = pd.Series(profiles[column].to_numpy(dtype=float) * scale, index=profiles.index)
        began = time.perf_counter()
        result = backtest(y, SITE, target, models, test_fraction=0.25, folds=folds,
                          max_iter=max_iter)  # fmt: skip
        elapsed = time.perf_counter() - began
        best = result.best_learned()
        o = result.overall
        ref = "persistence"
        print(
            f"| {name} | {target_name} | {best} | {o[best]['mae']:.3f} "
            f"| {o['seasonal_naive_day']['mae']:.3f} | {o[best]['skill']:+.2%} "
            f"| {o[ref]['mae']:.3f} | {1 - o[best]['mae'] / o[ref]['mae']:+.1%} "
            f"| {o[best]['coverage_80']:.1%} | {_daylight(o[best])} | {o[best]['pinball']:.3f} "
            f"| {elapsed:.1f} |"
        )
        for model in models:
            print(f"|   | | {model} | {o[model]['mae']:.3f} | | {o[model]['skill']:+.2%} | | "
                  f"{1 - o[model]['mae'] / o[ref]['mae']:+.1%} | {o[model]['coverage_80']:.1%} "
                  f"| {_daylight(o[model])} | {o[model]['pinball']:.3f} | {result.fit_seconds.get(model, 0):.1f} |")  # fmt: skip
        # training on the whole year and one day-ahead prediction, as the service does
        x = design_matrix(y, y.index, SITE, target)
        rows = training_rows(x, target)
        began = time.perf_counter()
        model = make_model(best, max_iter).fit(x[rows], y[rows])
        fit_s = time.perf_counter() - began
        issue = y.index[-96]
        began = time.perf_counter()
        times = day_ahead_times(issue)
        xd = design_matrix(y[y.index < issue], times, SITE, target)
        finish(model.predict(xd).set_axis(times), xd, target)
        predict_ms = (time.perf_counter() - began) * 1000
        timing_rows.append((name, best, int(rows.sum()), fit_s, predict_ms))
    print()
    print("| series | model | training rows | training s | one day-ahead forecast ms |")
    print("| --- | --- | --- | --- | --- |")
    for name, best, n, fit_s, predict_ms in timing_rows:
        print(f"| {name} | {best} | {n} | {fit_s:.1f} | {predict_ms:.0f} |")


if __name__ == "__main__":
    main()
