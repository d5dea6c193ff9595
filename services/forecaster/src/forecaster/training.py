"""Train a site's target: backtest every model, fit the chosen ones on the whole window, register.

The choice, per site and target, on the rolling-origin backtest of what the service issues:
the **point forecast (P50)** is the learned model with the lowest MAE, the **band (P10 / P90)**
that of the learned model with the lowest pinball loss of P10 and P90 (the same model or
another: then served as `point+band`). Both metrics are reported for every model. The version
is promoted (served) only if its MAE beats the better of the 1-day and 7-day seasonal naive;
the reason names that baseline with both MAEs. Otherwise the version is kept for inspection
and the previous promoted version (or the seasonal naive fallback) keeps serving.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from derbus import features as fx
from forecaster.catalogue import Target
from forecaster.design import design_matrix, feature_names
from forecaster.evaluation import BacktestResult, backtest
from forecaster.models import Forecaster, fit_forecaster
from forecaster.registry import Registry
from forecaster.report import write_report


@dataclass(frozen=True)
class TrainConfig:
    """How to train (from the settings)."""

    models: tuple[str, ...]
    test_fraction: float
    folds: int
    max_iter: int
    threads: int
    min_train_days: float
    issue_every: int = 1
    """Steps between the backtest's issue times (1: every 15 minutes, as the service issues)."""


@dataclass
class TrainOutcome:
    """What a training did."""

    site_id: str
    target: str
    version: str | None
    model: str | None
    promoted: bool
    reason: str
    metrics: dict[str, dict[str, float]]
    report: Path | None = None
    fit_seconds: float = 0.0


def enough_history(history: pd.Series, min_days: float) -> bool:
    """Whether the target has at least `min_days` of values."""
    return bool(history.notna().sum() >= min_days * fx.STEPS_PER_DAY)


def fit_final(
    history: pd.Series,
    site: fx.SiteContext,
    target: Target,
    name: str,
    config: TrainConfig,
    weather: pd.DataFrame | None = None,
) -> Forecaster:
    """Fit `point` or `point+band` on the history (with its intraday update and calibration)."""
    x = design_matrix(history, history.index, site, target, weather)
    point, _, band = name.partition("+")
    fitted = fit_forecaster(point, x, history, target, config.max_iter, config.threads)
    if band:
        fitted.band = fit_forecaster(band, x, history, target, config.max_iter, config.threads)
    return fitted


def usable_weather(weather: pd.DataFrame | None, index: pd.DatetimeIndex) -> pd.DataFrame | None:
    """The weather when it covers at least half of the training intervals, else None."""
    if weather is None:
        return None
    known = weather.reindex(index).notna().all(axis=1).mean()
    return weather if known >= 0.5 else None


def evaluate(
    history: pd.Series,
    site: fx.SiteContext,
    target: Target,
    config: TrainConfig,
    progress: Callable[[str], None] | None = None,
    weather: pd.DataFrame | None = None,
) -> BacktestResult:
    """The rolling-origin backtest of every configured model and the baselines."""
    return backtest(
        history,
        site,
        target,
        config.models,
        weather=weather,
        test_fraction=config.test_fraction,
        folds=config.folds,
        max_iter=config.max_iter,
        threads=config.threads,
        issue_every=config.issue_every,
        progress=progress,
    )


def train_target(
    history: pd.Series,
    site_id: str,
    site: fx.SiteContext,
    target: Target,
    registry: Registry,
    config: TrainConfig,
    now: datetime,
    progress: Callable[[str], None] | None = None,
    weather: pd.DataFrame | None = None,
    weather_name: str | None = None,
) -> TrainOutcome:
    """Backtest, fit the chosen models, register, promote if they beat the better naive.

    `weather` (forecaster.weather, by interval start) enters the features when it covers at
    least half of the history (`usable_weather`); `meta.inputs` says which inputs were used.
    """
    history = history.loc[history.first_valid_index() :] if history.notna().any() else history
    if not enough_history(history, config.min_train_days):
        return TrainOutcome(
            site_id,
            target.name,
            None,
            None,
            False,
            f"not enough history ({history.notna().sum() / fx.STEPS_PER_DAY:.1f} of "
            f"{config.min_train_days:g} days)",
            {},
        )
    began = time.perf_counter()
    weather = usable_weather(weather, history.index)
    inputs = ["history", "calendar", "clear_sky"] + (
        [f"weather:{weather_name or 'provided'}"] if weather is not None else []
    )
    result = evaluate(history, site, target, config, progress, weather)
    best = result.best_learned()
    promoted, reason = result.decision(best)
    model = fit_final(history, site, target, best, config, weather)
    if progress is not None:
        progress(f"{target.name} final {best}")
    fit_seconds = time.perf_counter() - began
    training = {
        "start": history.index[0].isoformat(),
        "end": (history.index[-1] + fx.STEP).isoformat(),
        "rows": int(history.notna().sum()),
    }
    meta: dict[str, Any] = {
        "site_id": site_id,
        "target": target.name,
        "quantity": target.quantity,
        "model": best,
        "features": feature_names(target, weather is not None),
        "inputs": inputs,
        "training_window": training,
        "trained_at": now.isoformat(),
        "backtest": {
            "folds": result.folds,
            "test_fraction": config.test_fraction,
            "metrics": result.overall,
            "by_horizon_h": result.by_horizon_h.get(best, []),
            "by_group": result.by_group,
            "day_ahead": result.day_ahead,
            "reference": result.reference,
            "issue_every": result.issue_every,
            "fit_seconds": result.fit_seconds,
        },
        "promoted": promoted,
        "reason": reason,
        "train_seconds": fit_seconds,
        "choice": {
            "point": best.partition("+")[0],
            "point_metric": "mae",
            "band": best.partition("+")[2] or best,
            "band_metric": "pinball of P10/P90",
        },
    }
    path = registry.new_version(site_id, target.name)
    version = registry.save(path, model, meta)
    report = write_report(
        path,
        result,
        site_id=site_id,
        model=best,
        promoted=promoted,
        reason=reason,
        training=training,
    )
    if promoted:
        registry.promote(site_id, target.name, version.name)
    return TrainOutcome(
        site_id,
        target.name,
        version.name,
        best,
        promoted,
        reason,
        result.overall,
        report,
        fit_seconds,
    )
