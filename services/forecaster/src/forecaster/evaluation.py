"""Metrics and the rolling-origin backtest (time-ordered: every fold trains only on its past)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from derbus import features as fx
from forecaster.catalogue import BASELINES, Target
from forecaster.design import design_matrix, training_rows
from forecaster.models import (
    QUANTILE_KEYS,
    QUANTILES,
    _residual_offsets,
    finish,
    make_model,
    persistence_forecast,
)

REFERENCE = "seasonal_naive_day"
DAYLIGHT_ELEVATION_DEG = 0.0
"""PV coverage is also measured on the intervals with the sun above this elevation only."""


def pinball_loss(actual: np.ndarray, predicted: np.ndarray, tau: float) -> float:
    """Mean pinball (quantile) loss of one quantile `tau`, in the target's unit."""
    diff = actual - predicted
    return float(np.mean(np.maximum(tau * diff, (tau - 1) * diff)))


def metrics(
    actual: np.ndarray, pred: pd.DataFrame, daylight: np.ndarray | None = None
) -> dict[str, float]:
    """MAE, RMSE, nMAE (MAE / mean actual), pinball loss (mean of P10/P50/P90), 80 % coverage.

    Rows with a missing actual or prediction are left out; `n` says how many counted. With a
    `daylight` mask (PV: sun above the horizon) the coverage is also given on those rows only
    (`coverage_80_daylight`, `n_daylight`): at night forecast and actual are both 0, trivially
    inside the band, which inflates the coverage of all rows.
    """
    y = np.asarray(actual, dtype=float)
    p = pred[list(QUANTILE_KEYS)].to_numpy(dtype=float)
    ok = np.isfinite(y) & np.isfinite(p).all(axis=1)
    y, p = y[ok], p[ok]
    out = {"n": 0.0, "mae": float("nan"), "rmse": float("nan"), "nmae": float("nan"),
           "pinball": float("nan"), "coverage_80": float("nan")}  # fmt: skip
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
    }
    if daylight is not None:
        day = np.asarray(daylight, dtype=bool)[ok]
        out["n_daylight"] = float(day.sum())
        out["coverage_80_daylight"] = float(np.mean(inside[day])) if day.any() else float("nan")
    return out


def skill(mae: float, reference_mae: float) -> float:
    """Skill score over a reference: 1 - MAE / MAE_ref (0 = as good, > 0 better)."""
    return 1.0 - mae / reference_mae if reference_mae > 0 else float("nan")


@dataclass
class BacktestResult:
    """Out-of-sample predictions of every model and their metrics."""

    target: str
    predictions: pd.DataFrame  # model, time, step, actual, p10, p50, p90, daylight
    overall: dict[str, dict[str, float]] = field(default_factory=dict)
    by_horizon_h: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    folds: list[tuple[str, str]] = field(default_factory=list)
    fit_seconds: dict[str, float] = field(default_factory=dict)

    def best_learned(self) -> str:
        """The learned model with the lowest pinball loss.

        The served product is a quantile forecast, so the choice uses the proper score of all
        three quantiles (a point model with ill-fitting bands loses to a calibrated quantile
        model of equal MAE); promotion still requires beating seasonal naive in MAE.
        """
        learned = {m: v for m, v in self.overall.items() if m not in BASELINES}
        return min(learned, key=lambda m: (learned[m]["pinball"], learned[m]["mae"]))

    def beats_seasonal_naive(self, model: str) -> bool:
        """Whether `model` has a lower MAE than both seasonal naive baselines."""
        mae = self.overall[model]["mae"]
        return all(
            mae < self.overall[b]["mae"]
            for b in ("seasonal_naive_day", "seasonal_naive_week")
            if b in self.overall
        )


def fold_starts(index: pd.DatetimeIndex, test_fraction: float, folds: int) -> list[pd.Timestamp]:
    """Fold origins on UTC day boundaries: the last `test_fraction` split in `folds` parts."""
    first_test = index[int(len(index) * (1 - test_fraction))].ceil("1D")
    days = (index[-1].floor("1D") - first_test).days + 1
    if days < folds:
        raise ValueError(f"test period of {days} days cannot hold {folds} folds")
    return [first_test + pd.Timedelta(days=round(i * days / folds)) for i in range(folds)]


def _persistence(
    y: pd.Series, times: pd.DatetimeIndex, offsets: tuple[float, float]
) -> pd.DataFrame:
    """Daily issues at 00:00 UTC: the last value before each issue, held for the day."""
    issues = times.floor("1D")
    last = y.reindex(issues - fx.STEP).to_numpy(dtype=float)
    frame = persistence_forecast(0.0, len(times), offsets)
    for col in QUANTILE_KEYS:
        frame[col] = frame[col].to_numpy() + last
    return frame


def _persistence_offsets(y: pd.Series, times: pd.DatetimeIndex) -> tuple[float, float]:
    issues = times.floor("1D")
    last = y.reindex(issues - fx.STEP).to_numpy(dtype=float)
    return _residual_offsets(y.reindex(times).to_numpy(dtype=float) - last)


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
    progress: Callable[[str], None] | None = None,
) -> BacktestResult:
    """Rolling-origin backtest with daily day-ahead issues at 00:00 UTC.

    Args:
        history: the target on the 15-minute grid (kW).
        site: the site's context for the known-ahead features.
        target: load or PV.
        models: learned models to evaluate (baselines are always evaluated).
        test_fraction: the last part of the history used for testing (0-1).
        folds: expanding-window folds in the test part; each refits on everything before it.
        max_iter: boosting iterations of the gradient-boosted models.
        threads: BLAS/OpenMP threads for fitting (1 avoids oversubscription on a busy host).
        progress: called with a label after each fitted model.
    """
    index = history.index
    x_all = design_matrix(history, index, site, target)
    rows_ok = training_rows(x_all, target)
    starts = fold_starts(index, test_fraction, folds)
    ends = [*starts[1:], index[-1] + fx.STEP]
    rows: list[pd.DataFrame] = []
    fit_seconds: dict[str, float] = {}
    for start, end in zip(starts, ends, strict=True):
        train = index < start
        test = (index >= start) & (index < end)
        train &= rows_ok
        x_train, y_train = x_all[train], history[train]
        x_test, actual = x_all[test], history[test].to_numpy(dtype=float)
        times = index[test]
        daylight = x_test["solar_elevation_deg"].to_numpy(dtype=float) > DAYLIGHT_ELEVATION_DEG
        preds: dict[str, pd.DataFrame] = {}
        for name in ("seasonal_naive_day", "seasonal_naive_week", *models):
            began = time.perf_counter()
            model = make_model(name, max_iter, threads)
            model.fit(x_train, y_train)
            preds[name] = model.predict(x_test)
            fit_seconds[name] = fit_seconds.get(name, 0.0) + time.perf_counter() - began
            if progress is not None:
                progress(f"{target.name} fold {start.date()} {name}")
        offsets = _persistence_offsets(history, index[train][fx.STEPS_PER_DAY :])
        preds["persistence"] = _persistence(history, times, offsets)
        for name, pred in preds.items():
            done = finish(pred.set_axis(times), x_test, target)
            done["model"] = name
            done["actual"] = actual
            done["step"] = ((times - times.floor("1D")) / fx.STEP).astype(int)
            done["daylight"] = daylight
            rows.append(done.reset_index(names="time"))
    predictions = pd.concat(rows, ignore_index=True)
    result = BacktestResult(target.name, predictions, fit_seconds=fit_seconds)
    result.folds = [(s.isoformat(), e.isoformat()) for s, e in zip(starts, ends, strict=True)]

    def scored(group: pd.DataFrame) -> dict[str, float]:
        day = group["daylight"].to_numpy(dtype=bool) if target.solar else None
        return metrics(group["actual"].to_numpy(), group, day)

    for name, group in predictions.groupby("model", sort=False):
        result.overall[str(name)] = scored(group)
        result.by_horizon_h[str(name)] = [
            {"horizon_h": float(h), **scored(g)} for h, g in group.groupby(group["step"] // 4)
        ]
    reference = result.overall[REFERENCE]["mae"]
    for values in result.overall.values():
        values["skill"] = skill(values["mae"], reference)
    return result


def summary_rows(result: BacktestResult) -> list[dict[str, Any]]:
    """One row per model: the overall metrics, best first."""
    return [
        {"model": m, **v} for m, v in sorted(result.overall.items(), key=lambda kv: kv[1]["mae"])
    ]
