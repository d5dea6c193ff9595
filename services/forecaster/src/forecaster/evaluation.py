"""Metrics and the rolling-origin backtest (time-ordered: every fold trains only on its past)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from derbus import features as fx
from forecaster.calibration import (
    GROUPS,
    HORIZON,
    RESIDUAL_LAGS,
    ahead,
    daylight_of,
)
from forecaster.catalogue import BASELINES, Target
from forecaster.design import design_matrix, training_rows
from forecaster.models import QUANTILE_KEYS, QUANTILES, finish, fit_forecaster, make_model

NAIVES = ("seasonal_naive_day", "seasonal_naive_week")
CSI_MIN_CLEAR_W_M2 = 100.0
"""Clear-sky-index persistence reads the last intervals with at least this clear-sky GHI."""
CSI_INTERVALS = 4


def pinball_loss(actual: np.ndarray, predicted: np.ndarray, tau: float) -> float:
    """Mean pinball (quantile) loss of one quantile `tau`, in the target's unit."""
    diff = actual - predicted
    return float(np.mean(np.maximum(tau * diff, (tau - 1) * diff)))


def metrics(
    actual: np.ndarray, pred: pd.DataFrame, daylight: np.ndarray | None = None
) -> dict[str, float]:
    """MAE, RMSE, nMAE, pinball loss (mean of P10/P50/P90), 80 % coverage and mean width.

    Rows with a missing actual or prediction are left out; `n` says how many counted. With a
    `daylight` mask (PV: sun above the horizon) the coverage is also given on those rows only
    (`coverage_80_daylight`, `n_daylight`): at night forecast and actual are both 0, trivially
    inside the band, which inflates the coverage of all rows.
    """
    y = np.asarray(actual, dtype=float)
    p = pred[list(QUANTILE_KEYS)].to_numpy(dtype=float)
    ok = np.isfinite(y) & np.isfinite(p).all(axis=1)
    y, p = y[ok], p[ok]
    out = {
        "n": 0.0,
        "mae": float("nan"),
        "rmse": float("nan"),
        "nmae": float("nan"),
        "pinball": float("nan"),
        "coverage_80": float("nan"),
        "width_80": float("nan"),
    }
    if daylight is not None:
        out |= {"n_daylight": 0.0, "coverage_80_daylight": float("nan")}
    if len(y) == 0:
        return out
    err = y - p[:, 1]
    mean_actual = float(np.mean(np.abs(y)))
    mae = float(np.mean(np.abs(err)))
    inside = (y >= p[:, 0]) & (y <= p[:, 2])
    out |= {
        "n": float(len(y)),
        "mae": mae,
        "rmse": float(np.sqrt(np.mean(err**2))),
        "nmae": mae / mean_actual if mean_actual > 0 else float("nan"),
        "pinball": float(np.mean([pinball_loss(y, p[:, i], q) for i, q in enumerate(QUANTILES)])),
        "coverage_80": float(np.mean(inside)),
        "width_80": float(np.mean(p[:, 2] - p[:, 0])),
    }
    if daylight is not None:
        day = np.asarray(daylight, dtype=bool)[ok]
        out["n_daylight"] = float(day.sum())
        out["coverage_80_daylight"] = float(np.mean(inside[day])) if day.any() else float("nan")
    return out


def skill(mae: float, reference_mae: float) -> float:
    """Skill score over a reference: 1 - MAE / MAE_ref (0 = as good, > 0 better)."""
    return 1.0 - mae / reference_mae if reference_mae > 0 else float("nan")


def reference_of(overall: dict[str, dict[str, float]], solar: bool) -> str:
    """The baseline skill is measured against.

    Load: the better (lower MAE) of the 1-day and 7-day seasonal naive on the same intervals;
    PV: the 1-day seasonal naive (the 7-day one is far worse for weather-driven output).
    """
    if solar:
        return "seasonal_naive_day"
    present = [b for b in NAIVES if b in overall and np.isfinite(overall[b]["mae"])]
    return min(present, key=lambda b: overall[b]["mae"]) if present else NAIVES[0]


def persistence_of(solar: bool) -> str:
    """The persistence baseline: the last 15 min held (load), the clear-sky index held (PV)."""
    return "clear_sky_persistence" if solar else "persistence"


def recent_clear_sky_index(y: np.ndarray, clear: np.ndarray) -> np.ndarray:
    """At each position, measured / clear-sky GHI over the last CSI_INTERVALS intervals (up to
    and including it, within a day) whose clear-sky GHI is at least CSI_MIN_CLEAR_W_M2.

    The ratio is in kW per W/m2: times a clear-sky GHI it gives the PV output of that sky.
    """
    lit = (clear >= CSI_MIN_CLEAR_W_M2) & np.isfinite(y)
    pos = np.flatnonzero(lit)
    out = np.full(len(y), np.nan)
    if len(pos) < CSI_INTERVALS:
        return out
    sums_y = pd.Series(y[pos]).rolling(CSI_INTERVALS).sum().to_numpy()
    sums_c = pd.Series(clear[pos]).rolling(CSI_INTERVALS).sum().to_numpy()
    at = pd.Series(np.nan, index=np.arange(len(y)))
    at.iloc[pos] = sums_y / sums_c
    return np.asarray(at.ffill(limit=fx.STEPS_PER_DAY).to_numpy(dtype=float))


@dataclass
class StepScores:
    """Sums per horizon step (of issued forecasts) from which every metric is derived."""

    horizon: int = HORIZON
    sums: dict[str, np.ndarray] = field(default_factory=dict)

    KEYS = (
        "n",
        "abs",
        "sq",
        "absy",
        "pin10",
        "pin50",
        "pin90",
        "inside",
        "width",
        "n_day",
        "inside_day",
        "width_day",
    )

    def add(self, y: np.ndarray, p: np.ndarray, day: np.ndarray) -> None:
        """Add issued forecasts p (issues, steps, 3) against actuals y (issues, steps)."""
        ok = np.isfinite(y) & np.isfinite(p).all(axis=-1)
        yy = np.where(ok, y, 0.0)
        pp = np.where(ok[..., None], p, 0.0)
        err = yy - pp[..., 1]
        inside = ok & (yy >= pp[..., 0]) & (yy <= pp[..., 2])
        width = pp[..., 2] - pp[..., 0]
        dd = ok & day
        parts = {
            "n": ok,
            "abs": np.abs(err),
            "sq": err**2,
            "absy": np.abs(yy),
            "inside": inside,
            "width": width,
            "n_day": dd,
            "inside_day": inside & dd,
            "width_day": np.where(dd, width, 0.0),
        }
        for key, q in zip(("pin10", "pin50", "pin90"), QUANTILES, strict=True):
            diff = yy - pp[..., QUANTILES.index(q)]
            parts[key] = np.maximum(q * diff, (q - 1) * diff)
        for key, value in parts.items():
            total = np.where(ok, value, 0.0).sum(axis=0) if key != "n" else value.sum(axis=0)
            self.sums[key] = self.sums.get(key, np.zeros(self.horizon)) + total

    def metrics(self, lo: int = 0, hi: int | None = None, solar: bool = False) -> dict[str, float]:
        """The metrics of `metrics()` over horizon steps lo .. hi-1 (PV: daylight coverage)."""
        s = {k: float(v[lo:hi].sum()) for k, v in self.sums.items()}
        n = s.get("n", 0.0)
        nan = float("nan")
        if n == 0:
            return {
                "n": 0.0,
                "mae": nan,
                "rmse": nan,
                "nmae": nan,
                "pinball": nan,
                "coverage_80": nan,
                "width_80": nan,
            }
        out = {
            "n": n,
            "mae": s["abs"] / n,
            "rmse": float(np.sqrt(s["sq"] / n)),
            "nmae": s["abs"] / s["absy"] if s["absy"] > 0 else nan,
            "pinball": (s["pin10"] + s["pin50"] + s["pin90"]) / 3 / n,
            "pinball_band": (s["pin10"] + s["pin90"]) / 2 / n,
            "pin10": s["pin10"] / n,
            "pin50": s["pin50"] / n,
            "pin90": s["pin90"] / n,
            "coverage_80": s["inside"] / n,
            "width_80": s["width"] / n,
        }
        if solar:
            nd = s["n_day"]
            out |= {
                "n_daylight": nd,
                "coverage_80_daylight": s["inside_day"] / nd if nd else nan,
                "width_80_daylight": s["width_day"] / nd if nd else nan,
            }
        return out


def compose(point: dict[str, float], band: dict[str, float]) -> dict[str, float]:
    """Metrics of P50 from one model with P10 / P90 from another (same intervals)."""
    out = dict(point)
    for key in (
        "coverage_80",
        "width_80",
        "coverage_80_daylight",
        "width_80_daylight",
        "pin10",
        "pin90",
        "pinball_band",
    ):
        if key in band:
            out[key] = band[key]
    if "pin10" in out:
        out["pinball"] = (out["pin10"] + out["pin50"] + out["pin90"]) / 3
    return out


@dataclass
class BacktestResult:
    """Scores of the forecasts every model issued in the backtest.

    `overall`: every issue time (every `issue_every` steps) and every step of the 96 ahead;
    `by_group`: per horizon group (0-1 h, 1-6 h, 6-24 h); `day_ahead`: issues at 00:00 UTC
    only (the old day-ahead figure); `by_horizon_h`: per hour ahead. `predictions` holds the
    00:00 UTC issues (for the plot).
    """

    target: str
    solar: bool
    predictions: pd.DataFrame  # model, time, step, actual, p10, p50, p90, daylight
    overall: dict[str, dict[str, float]] = field(default_factory=dict)
    by_group: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    by_horizon_h: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    day_ahead: dict[str, dict[str, float]] = field(default_factory=dict)
    folds: list[tuple[str, str]] = field(default_factory=list)
    fit_seconds: dict[str, float] = field(default_factory=dict)
    issue_every: int = 1

    @property
    def reference(self) -> str:
        """The baseline of the skill figures (see `reference_of`)."""
        return reference_of(self.overall, self.solar)

    def learned(self) -> dict[str, dict[str, float]]:
        return {m: v for m, v in self.overall.items() if m not in BASELINES and "+" not in m}

    def best_point(self) -> str:
        """The learned model with the lowest MAE: MAE decides the point forecast (P50)."""
        learned = self.learned()
        return min(learned, key=lambda m: (learned[m]["mae"], learned[m]["pinball"]))

    def best_band(self) -> str:
        """The learned model with the lowest pinball loss of P10 and P90: it decides the band."""
        learned = self.learned()
        return min(learned, key=lambda m: (learned[m]["pinball_band"], learned[m]["mae"]))

    def best_learned(self) -> str:
        """The served combination: `point` or `point+band` (see best_point, best_band)."""
        point, band = self.best_point(), self.best_band()
        return point if point == band else f"{point}+{band}"

    def decision(self, model: str) -> tuple[bool, str]:
        """Whether `model` is promoted, and why: its MAE against the better seasonal naive."""
        ref = reference_of(self.overall, False)  # promotion: beat both seasonal naives
        mae, ref_mae = self.overall[model]["mae"], self.overall[ref]["mae"]
        others = ", ".join(
            f"{b} {self.overall[b]['mae']:.3f}" for b in NAIVES if b in self.overall and b != ref
        )
        promoted = mae < ref_mae
        text = (
            f"{model} MAE {mae:.3f} kW vs {ref} (the better seasonal naive) {ref_mae:.3f} kW"
            f"{f' ({others})' if others else ''}, skill {skill(mae, ref_mae):+.1%}; "
            f"pinball {self.overall[model]['pinball']:.4f} kW"
        )
        if not promoted:
            text += f": does not beat {ref}, not promoted"
        return promoted, text

    def beats_seasonal_naive(self, model: str) -> bool:
        """Whether `model` has a lower MAE than both seasonal naive baselines."""
        return self.decision(model)[0]


def fold_starts(index: pd.DatetimeIndex, test_fraction: float, folds: int) -> list[pd.Timestamp]:
    """Fold origins on UTC day boundaries: the last `test_fraction` split in `folds` parts."""
    first_test = index[int(len(index) * (1 - test_fraction))].ceil("1D")
    days = (index[-1].floor("1D") - first_test).days + 1
    if days < folds:
        raise ValueError(f"test period of {days} days cannot hold {folds} folds")
    return [first_test + pd.Timedelta(days=round(i * days / folds)) for i in range(folds)]


def _held(values: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A value per issue held for every step, as a band-less (issues, steps, 3) forecast."""
    return np.repeat(np.broadcast_to(values[:, None], shape)[..., None], 3, axis=-1)


def baseline_issues(
    y: np.ndarray, x: pd.DataFrame, issues: np.ndarray, solar: bool
) -> dict[str, np.ndarray]:
    """Persistence baselines issued at `issues` (no band: P10 = P50 = P90).

    `persistence`: the last 15 minutes before the issue held; for PV also
    `clear_sky_persistence`: the latest measured clear-sky index times the clear-sky profile.
    """
    idx, ok = ahead(len(y), issues)
    last = np.where(issues >= 1, y[np.clip(issues - 1, 0, None)], np.nan)
    out = {"persistence": _held(last, idx.shape)}
    if solar:
        clear = x["clearsky_ghi_w_m2"].to_numpy(dtype=float)
        csi = recent_clear_sky_index(y, clear)
        index = np.where(issues >= 1, csi[np.clip(issues - 1, 0, None)], np.nan)
        p50 = index[:, None] * clear[idx]
        out["clear_sky_persistence"] = np.repeat(p50[..., None], 3, axis=-1)
    for value in out.values():
        value[~ok] = np.nan
    return out


def backtest(
    history: pd.Series,
    site: fx.SiteContext,
    target: Target,
    models: tuple[str, ...],
    *,
    test_fraction: float,
    folds: int,
    max_iter: int = 300,
    threads: int = 1,
    issue_every: int = 1,
    update: bool = True,
    weather: pd.DataFrame | None = None,
    progress: Callable[[str], None] | None = None,
) -> BacktestResult:
    """Rolling-origin backtest of what the service issues, at dense issue times.

    Every fold's models are fitted (with their intraday update and band calibration) only on
    the data before the fold. Forecasts are issued every `issue_every` intervals of the fold
    (1: every 15 minutes, as the service does), 96 intervals ahead each, reading the actuals
    before the issue time only, and scored against the actuals.

    Args:
        history: the target on the 15-minute grid (kW).
        site: the site's context for the known-ahead features.
        target: load or PV.
        models: learned models to evaluate (baselines are always evaluated).
        test_fraction: the last part of the history used for testing (0-1).
        folds: expanding-window folds in the test part; each refits on everything before it.
        max_iter: boosting iterations of the gradient-boosted models.
        threads: BLAS/OpenMP threads for fitting (1 avoids oversubscription on a busy host).
        issue_every: steps between issue times (1 = every 15 min).
        update: use the intraday update (False: the base day-ahead forecast at every issue).
        weather: forecast weather by interval start (design.WEATHER features), or None.
        progress: called with a label after each fitted model.
    """
    index = history.index
    x_all = design_matrix(history, index, site, target, weather)
    values = history.to_numpy(dtype=float)
    starts = fold_starts(index, test_fraction, folds)
    ends = [*starts[1:], index[-1] + fx.STEP]
    names = ("seasonal_naive_day", "seasonal_naive_week", *models)
    dense: dict[str, StepScores] = {}
    midnight: dict[str, StepScores] = {}
    rows: list[pd.DataFrame] = []
    fit_seconds: dict[str, float] = {}
    for start, end in zip(starts, ends, strict=True):
        s, e = int(index.searchsorted(start)), int(index.searchsorted(end))
        lo, hi = s - RESIDUAL_LAGS, min(e + HORIZON, len(index))
        x_span, y_span = x_all.iloc[lo:hi], values[lo:hi]
        issues = np.arange(s - lo, e - lo, issue_every)
        idx, ok = ahead(len(y_span), issues)
        actual = np.where(ok, y_span[idx], np.nan)
        day = daylight_of(x_span)[idx]
        issued: dict[str, np.ndarray] = {}
        for name in names:
            began = time.perf_counter()
            x_train, y_train = x_all.iloc[:s], history.iloc[:s]
            if name in NAIVES:
                rows_ok = training_rows(x_train, target)
                model = make_model(name, max_iter, threads).fit(x_train[rows_ok], y_train[rows_ok])
                base = finish(model.predict(x_span).set_axis(x_span.index), x_span, target)
                issued[name] = base.to_numpy(dtype=float)[idx]
                issued[name][~ok] = np.nan
            else:
                fc = fit_forecaster(name, x_train, y_train, target, max_iter, threads, update)
                issued[name] = fc.issue(x_span, y_span, issues)
            fit_seconds[name] = fit_seconds.get(name, 0.0) + time.perf_counter() - began
            if progress is not None:
                progress(f"{target.name} fold {start.date()} {name}")
        issued |= baseline_issues(y_span, x_span, issues, target.solar)
        at_midnight = np.asarray(x_span.index[issues] == x_span.index[issues].floor("1D"))
        for name, p in issued.items():
            dense.setdefault(name, StepScores()).add(actual, p, day)
            midnight.setdefault(name, StepScores()).add(
                actual[at_midnight], p[at_midnight], day[at_midnight]
            )
            for i in np.flatnonzero(at_midnight):
                valid = ok[i]
                times = x_span.index[idx[i][valid]]
                frame = pd.DataFrame(p[i][valid], columns=list(QUANTILE_KEYS))
                frame["time"], frame["model"] = times, name
                frame["actual"], frame["daylight"] = actual[i][valid], day[i][valid]
                frame["step"] = np.arange(int(valid.sum()))
                rows.append(frame)
    predictions = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
    result = BacktestResult(
        target.name, target.solar, predictions, fit_seconds=fit_seconds, issue_every=issue_every
    )
    result.folds = [(s.isoformat(), e.isoformat()) for s, e in zip(starts, ends, strict=True)]
    solar = target.solar
    for name, scores in dense.items():
        result.overall[name] = scores.metrics(solar=solar)
        result.by_group[name] = {g: scores.metrics(a, b, solar) for g, a, b in GROUPS}
        result.by_horizon_h[name] = [
            {"horizon_h": float(h), **scores.metrics(4 * h, 4 * h + 4, solar)}
            for h in range(HORIZON // 4)
        ]
        result.day_ahead[name] = midnight[name].metrics(solar=solar)
    learned = [m for m in models if m in result.overall]
    if learned:
        point, band = result.best_point(), result.best_band()
        if point != band:
            both = f"{point}+{band}"
            pp = predictions[predictions["model"] == point].copy()
            bp = predictions[predictions["model"] == band]
            pp["p10"] = np.minimum(bp["p10"].to_numpy(), pp["p50"].to_numpy())
            pp["p90"] = np.maximum(bp["p90"].to_numpy(), pp["p50"].to_numpy())
            pp["model"] = both
            result.predictions = pd.concat([predictions, pp], ignore_index=True)
            result.overall[both] = compose(result.overall[point], result.overall[band])
            result.day_ahead[both] = compose(result.day_ahead[point], result.day_ahead[band])
            result.by_group[both] = {
                g: compose(result.by_group[point][g], result.by_group[band][g])
                for g, _, _ in GROUPS
            }
            result.by_horizon_h[both] = [
                compose(a, b)
                for a, b in zip(result.by_horizon_h[point], result.by_horizon_h[band], strict=True)
            ]
    _add_skills(result)
    return result


def _add_skills(result: BacktestResult) -> None:
    """Skill vs the reference naive and vs persistence, overall, per group and per day-ahead."""
    ref, pers = result.reference, persistence_of(result.solar)

    def fill(table: dict[str, dict[str, float]]) -> None:
        ref_mae = table[ref]["mae"]
        pers_mae = table[pers]["mae"] if pers in table else float("nan")
        last_mae = table["persistence"]["mae"] if "persistence" in table else float("nan")
        for values in table.values():
            values["skill"] = skill(values["mae"], ref_mae)
            values["skill_persistence"] = skill(values["mae"], pers_mae)
            values["skill_last_15min"] = skill(values["mae"], last_mae)
            for naive in NAIVES:
                if naive in table:
                    values[f"skill_{naive}"] = skill(values["mae"], table[naive]["mae"])

    fill(result.overall)
    fill(result.day_ahead)
    for g, _, _ in GROUPS:
        fill({m: result.by_group[m][g] for m in result.by_group})
    for h in range(len(result.by_horizon_h.get(ref, []))):
        fill({m: result.by_horizon_h[m][h] for m in result.by_horizon_h})


def summary_rows(result: BacktestResult) -> list[dict[str, Any]]:
    """One row per model: the overall metrics, best first."""
    return [
        {"model": m, **v} for m, v in sorted(result.overall.items(), key=lambda kv: kv[1]["mae"])
    ]
