"""Training: backtest, registry versions with features/window/metrics, report, promotion rule."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from derbus import features as fx
from forecaster.catalogue import TARGETS
from forecaster.evaluation import fold_starts
from forecaster.registry import Registry
from forecaster.training import TrainConfig, train_target

NOW = datetime(2026, 3, 1, tzinfo=UTC)
CONFIG = TrainConfig(
    models=("linear", "gbm_quantile"),
    test_fraction=0.25,
    folds=2,
    max_iter=40,
    threads=1,
    min_train_days=14,
)


def test_fold_origins_are_day_aligned_and_time_ordered() -> None:
    index = pd.date_range("2026-01-01", periods=40 * 96, freq="15min", tz="UTC")
    starts = fold_starts(index, 0.25, 2)
    assert starts == [pd.Timestamp("2026-01-31", tz="UTC"), pd.Timestamp("2026-02-05", tz="UTC")]


def test_a_model_that_beats_seasonal_naive_is_registered_and_promoted(
    tmp_path: Path, site: fx.SiteContext, load_series: Callable[..., pd.Series]
) -> None:
    registry = Registry(tmp_path)
    outcome = train_target(load_series(days=42), "s1", site, TARGETS["load"], registry, CONFIG, NOW)
    assert outcome.promoted, outcome.reason
    assert outcome.version == "v0001"
    version = registry.promoted("s1", "load")
    assert version is not None
    assert version.name == "v0001"
    for name in ("model.joblib", "meta.json", "report.md", "backtest.png"):
        assert (version.path / name).exists(), name
    meta = json.loads((version.path / "meta.json").read_text())
    assert set(meta["model"].split("+")) <= {"linear", "gbm_quantile"}
    assert meta["choice"]["point_metric"] == "mae"
    assert "y_lag_96" in meta["features"]
    assert meta["training_window"]["rows"] == 42 * 96
    metrics = meta["backtest"]["metrics"]
    assert set(metrics) >= {"seasonal_naive_day", "seasonal_naive_week", "persistence", "linear"}
    assert metrics[meta["model"]]["mae"] < metrics["seasonal_naive_day"]["mae"]
    assert metrics[meta["model"]]["mae"] < metrics["seasonal_naive_week"]["mae"]
    reference = meta["backtest"]["reference"]
    assert reference in ("seasonal_naive_day", "seasonal_naive_week")
    assert reference in outcome.reason  # the baseline that decided, with both MAEs
    assert f"{metrics[reference]['mae']:.3f}" in outcome.reason
    assert f"{metrics[meta['model']]['mae']:.3f}" in outcome.reason
    assert set(meta["backtest"]["by_group"][meta["model"]]) == {"0-1 h", "1-6 h", "6-24 h"}
    assert len(meta["backtest"]["by_horizon_h"]) == 24
    report = (version.path / "report.md").read_text()
    assert "skill vs the better seasonal naive" in report
    assert "backtest.png" in report
    assert (version.path / "backtest.png").read_bytes()[:4] == b"\x89PNG"
    model = registry.load(version)
    assert hasattr(model, "predict")


def test_a_model_that_does_not_beat_seasonal_naive_is_kept_but_not_promoted(
    tmp_path: Path, site: fx.SiteContext
) -> None:
    # a noiseless daily pattern: yesterday is a perfect forecast, nothing can beat it
    index = pd.date_range("2026-01-05", periods=30 * 96, freq="15min", tz="UTC")
    y = pd.Series(np.tile(np.sin(np.linspace(0, 2 * np.pi, 96)) + 2, 30), index=index)
    registry = Registry(tmp_path)
    outcome = train_target(y, "s1", site, TARGETS["load"], registry, CONFIG, NOW)
    assert not outcome.promoted
    assert "not promoted" in outcome.reason
    assert registry.promoted("s1", "load") is None
    assert [v.name for v in registry.versions("s1", "load")] == ["v0001"]


def test_too_little_history_trains_nothing(
    tmp_path: Path, site: fx.SiteContext, load_series: Callable[..., pd.Series]
) -> None:
    outcome = train_target(
        load_series(days=5), "s1", site, TARGETS["load"], Registry(tmp_path), CONFIG, NOW
    )
    assert outcome.version is None
    assert "not enough history" in outcome.reason
