"""Forecaster cold start on the SimBench 2016 profiles: bands chosen on one half, scored on the other.

A site with only `hours` of measurements before an issue (1 h, 6 h, 24 h) gets the cold-start
forecast of `forecaster.coldstart` for the next 96 intervals; issues every day at 00:00 and
12:00 Europe/Berlin. Band factors (P10 and P90 as multiples of P50) are the 10 % / 90 %
quantiles of actual / P50 on January-June of h0-a (load) and pv1 (PV, daylight intervals),
then scored on July-December of h0-a, h0-b and g1-a (load) and pv1, pv3 (PV). The reference in
the same run is the simplest cold start: the measured mean held flat (load) / the measured
power-to-clear-sky ratio without a clear-sky index (PV is then the same model, so its
reference is the clear-sky output, i.e. clear-sky index 1).

    .venv/bin/python bench/bench_coldstart.py [--step-days 3]
"""

from __future__ import annotations

import argparse
import os
import time
from datetime import timedelta

import numpy as np
import pandas as pd
from harness import local_profiles

from derbus import features as fx
from derbus.tariff import Tariff
from forecaster import coldstart
from forecaster.design import day_ahead_times

SITE = fx.SiteContext("Europe/Berlin", "DE", 51.0, 10.0, Tariff(timezone="Europe/Berlin"))
HOURS = (1, 6, 24)
CAL = ("2016-01-08", "2016-07-01")
TEST = ("2016-07-01", "2016-12-30")


def issues(span: tuple[str, str], step_days: int) -> list[pd.Timestamp]:
    days = pd.date_range(span[0], span[1], freq=f"{step_days}D", tz="Europe/Berlin")
    out = [d for d in days] + [d + pd.Timedelta(hours=12) for d in days]
    return sorted(t.tz_convert("UTC") for t in out)


def run(
    series: pd.Series, solar: bool, span: tuple[str, str], step_days: int, clear: pd.Series
) -> pd.DataFrame:
    """Rows of (hours, actual, p50, reference) for every issue and forecast interval."""
    rows = []
    for issue in issues(span, step_days):
        times = day_ahead_times(issue)
        actual = series.reindex(times)
        for hours in HOURS:
            measured = series[
                (series.index >= issue - timedelta(hours=hours)) & (series.index < issue)
            ]
            if solar:
                scale = coldstart.pv_scale(measured, measured.iloc[:0], clear, None)
                if scale is None:  # no daylight in the window: the nameplate case, not scored
                    continue
                frame = coldstart.pv_forecast(scale, times, SITE)
                ghi = clear.reindex(times).to_numpy()
                reference = scale.kw_per_w_m2 * np.where(ghi >= fx.MIN_CLEAR_GHI_W_M2, ghi, 0.0)
                keep = ghi >= fx.MIN_CLEAR_GHI_W_M2  # daylight only
            else:
                load = coldstart.load_forecast(measured, times, SITE)
                assert load is not None
                frame = load
                reference = np.full(len(times), float(measured.mean()))
                keep = np.ones(len(times), dtype=bool)
            rows.append(
                pd.DataFrame(
                    {
                        "hours": hours,
                        "actual": actual.to_numpy()[keep],
                        **{q: frame[q].to_numpy()[keep] for q in ("p10", "p50", "p90")},
                        "reference": np.asarray(reference)[keep],
                    }
                )
            )
    return pd.concat(rows, ignore_index=True).dropna()


def factors(rows: pd.DataFrame) -> tuple[float, float]:
    ok = rows[rows["p50"] > 1e-6]
    ratio = ok["actual"] / ok["p50"]
    return float(ratio.quantile(0.10)), float(ratio.quantile(0.90))


def score(rows: pd.DataFrame) -> dict[str, float]:
    mae = float((rows["actual"] - rows["p50"]).abs().mean())
    ref = float((rows["actual"] - rows["reference"]).abs().mean())
    inside = (rows["actual"] >= rows["p10"] - 1e-9) & (rows["actual"] <= rows["p90"] + 1e-9)
    return {
        "nmae": mae / float(rows["actual"].mean()),
        "ratio": mae / ref,
        "coverage": float(inside.mean()),
        "n": float(len(rows)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--step-days", type=int, default=3, help="days between issue days")
    args = parser.parse_args()
    started = time.perf_counter()
    frame = local_profiles()
    clear = fx.solar_features(frame.index, SITE.latitude, SITE.longitude)["clearsky_ghi_w_m2"]
    kw = {c: frame[c] * 5.0 for c in frame.columns}
    cal_load = run(kw["h0-a_load_pu"], False, CAL, args.step_days, clear)
    cal_pv = run(kw["pv1_pv_pu"], True, CAL, args.step_days, clear)
    load_lo, load_hi = factors(cal_load)
    pv_lo, pv_hi = factors(cal_pv)
    cover = {n: score(r)["coverage"] for n, r in (("load", cal_load), ("pv", cal_pv))}
    lit = cal_pv[cal_pv["p90"] > 1e-6]
    pv_p90 = float((lit["actual"] / lit["p90"]).quantile(0.9)) * coldstart.BANDS["pv"].p90
    print(
        f"actual/P50 quantiles 10 % / 90 % on {CAL[0]}..{CAL[1]} (h0-a, pv1 daylight): load"
        f" {load_lo:.2f} / {load_hi:.2f}; PV {pv_lo:.2f} / {pv_hi:.2f}; PV actual / clear-sky"
        f" output at 90 %: {pv_p90:.2f}"
    )
    print(
        f"shipped (coldstart.BANDS): load {coldstart.BANDS['load']}, pv {coldstart.BANDS['pv']}"
        f" (PV P90: the clear-sky output); 80 % band coverage on that span: load"
        f" {cover['load']:.1%}, PV {cover['pv']:.1%}"
    )
    print(f"\nscored on {TEST[0]}..{TEST[1]} with the shipped bands")
    print(f"{'series':8s} {'hours':>5s} {'nMAE':>7s} {'MAE/ref':>8s} {'cover80':>8s} {'n':>7s}")
    for name, column, solar in (
        ("h0-a", "h0-a_load_pu", False),
        ("h0-b", "h0-b_load_pu", False),
        ("g1-a", "g1-a_load_pu", False),
        ("pv1", "pv1_pv_pu", True),
        ("pv3", "pv3_pv_pu", True),
    ):
        rows = run(kw[column], solar, TEST, args.step_days, clear)
        for hours in HOURS:
            s = score(rows[rows["hours"] == hours])
            print(
                f"{name:8s} {hours:5d} {s['nmae']:7.1%} {s['ratio']:8.2f} {s['coverage']:8.1%}"
                f" {int(s['n']):7d}"
            )
    print(
        f"\nreference: load = measured mean held flat; PV = clear-sky output (index 1)."
        f" {time.perf_counter() - started:.0f} s; load average {os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    main()
