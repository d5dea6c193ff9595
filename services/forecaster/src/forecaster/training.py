"""Train a site's target: backtest every model, fit the best on the whole window, register it.

The best is the learned model with the lowest pinball loss on the backtest (see
`BacktestResult.best_learned`). It is promoted (served) only if it beats both seasonal naive baselines on
the rolling-origin backtest; otherwise the version is kept for inspection and the previous
promoted version (or the seasonal naive fallback) keeps serving.
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
from forecaster.design import design_matrix, feature_names, training_rows
from forecaster.evaluation import REFERENCE, BacktestResult, backtest
from forecaster.models import Model, make_model
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
    history: pd.Series, site: fx.SiteContext, target: Target, name: str, config: TrainConfig
) -> Model:
    """Fit a model on every usable interval of the history."""
    x = design_matrix(history, history.index, site, target)
    rows = training_rows(x, target)
    return make_model(name, config.max_iter, config.threads).fit(x[rows], history[rows])


def evaluate(
    history: pd.Series, site: fx.SiteContext, target: Target, config: TrainConfig,
    progress: Callable[[str], None] | None = None,
) -> BacktestResult:  # fmt: skip
    """The rolling-origin backtest of every configured model and the baselines."""
    return backtest(
        history, site, target, config.models, test_fraction=config.test_fraction,
        folds=config.folds, max_iter=config.max_iter, threads=config.threads, progress=progress,
    )  # fmt: skip


def train_target(
    history: pd.Series,
    site_id: str,
    site: fx.SiteContext,
    target: Target,
    registry: Registry,
    config: TrainConfig,
    now: datetime,
    progress: Callable[[str], None] | None = None,
) -> TrainOutcome:
    """Backtest, fit the best learned model, register it, promote it if it beats seasonal naive."""
    history = history.loc[history.first_valid_index() :] if history.notna().any() else history
    if not enough_history(history, config.min_train_days):
        return TrainOutcome(
            site_id, target.name, None, None, False,
            f"not enough history ({history.notna().sum() / fx.STEPS_PER_DAY:.1f} of "
            f"{config.min_train_days:g} days)", {},
        )  # fmt: skip
    began = time.perf_counter()
    result = evaluate(history, site, target, config, progress)
    best = result.best_learned()
    promoted = result.beats_seasonal_naive(best)
    ref = result.overall[REFERENCE]["mae"]
    reason = f"{best} MAE {result.overall[best]['mae']:.3f} vs seasonal naive {ref:.3f} kW" + (
        "" if promoted else ": does not beat seasonal naive, not promoted"
    )
    model = fit_final(history, site, target, best, config)
    if progress is not None:
        progress(f"{target.name} final {best}")
    fit_seconds = time.perf_counter() - began
    training = {
        "start": history.index[0].isoformat(),
        "end": (history.index[-1] + fx.STEP).isoformat(),
        "rows": int(history.notna().sum()),
    }
    meta: dict[str, Any] = {
        "site_id": site_id, "target": target.name, "quantity": target.quantity, "model": best,
        "features": feature_names(target), "training_window": training,
        "trained_at": now.isoformat(), "backtest": {
            "folds": result.folds, "test_fraction": config.test_fraction,
            "metrics": result.overall, "by_horizon_h": result.by_horizon_h.get(best, []),
            "fit_seconds": result.fit_seconds,
        },
        "promoted": promoted, "reason": reason, "train_seconds": fit_seconds,
    }  # fmt: skip
    path = registry.new_version(site_id, target.name)
    version = registry.save(path, model, meta)
    report = write_report(path, result, site_id=site_id, model=best, promoted=promoted,
                          reason=reason, training=training)  # fmt: skip
    if promoted:
        registry.promote(site_id, target.name, version.name)
    return TrainOutcome(
        site_id, target.name, version.name, best, promoted, reason, result.overall, report,
        fit_seconds,
    )  # fmt: skip
