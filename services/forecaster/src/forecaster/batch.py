"""Blocking work over the feature table and the registry, shared by the service and the CLI.

Training every site and target, the accuracy of issued forecasts, the registry's status and a
training outcome as JSON. The modelling modules (pandas, scikit-learn) are imported inside the
functions, so importing this module stays light.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from derbus import features as fx
from forecaster.catalogue import TARGETS, Target
from forecaster.registry import Registry
from forecaster.settings import Settings
from forecaster.store import ForecastStore

if TYPE_CHECKING:
    import pandas as pd

    from forecaster.training import TrainConfig, TrainOutcome
    from forecaster.weather import WeatherProvider

log = logging.getLogger(__name__)


def train_config(settings: Settings) -> TrainConfig:
    """Training knobs from the settings."""
    from forecaster.training import TrainConfig

    return TrainConfig(
        models=tuple(settings.models),
        test_fraction=settings.test_size,
        folds=settings.backtest_folds,
        max_iter=settings.max_iter,
        threads=settings.fit_threads,
        min_train_days=settings.min_train_days,
        issue_every=settings.backtest_issue_every,
    )


def site_ids(settings: Settings, store: ForecastStore, more: list[str] | None = None) -> list[str]:
    """The configured sites, or every site of the feature table (and `more`, e.g. cold-start)."""
    return list(settings.site_ids) or sorted(set(store.sites()) | set(more or ()))


def train_all(
    settings: Settings,
    store: ForecastStore,
    registry: Registry,
    now: datetime,
    only_missing: bool = False,
    progress: Callable[[str], None] | None = None,
) -> list[TrainOutcome]:
    """Train every (site, target); with `only_missing`, those without any version. Blocking."""
    from forecaster.serving import issue_time_of
    from forecaster.training import train_target

    site = fx.SiteContext.of(settings.site)
    end = issue_time_of(now).to_pydatetime()
    start = end - timedelta(days=settings.train_history_days)
    provider = weather_provider(settings)
    outcomes = []
    for site_id in site_ids(settings, store):
        for name in settings.targets:
            if only_missing and registry.versions(site_id, name):
                continue
            target = TARGETS[name]
            history = store.history(site_id, target.column, start, end)
            weather = weather_frame(provider, history.index)
            outcomes.append(
                train_target(
                    history,
                    site_id,
                    site,
                    target,
                    registry,
                    train_config(settings),
                    now,
                    progress,
                    weather,
                    provider.name if provider else None,
                )
            )
    return outcomes


def weather_provider(settings: Settings) -> WeatherProvider | None:
    """The configured weather source (FORECASTER_WEATHER_SOURCE)."""
    from forecaster.weather import provider_of

    return provider_of(settings.weather_source, settings.site.latitude, settings.site.longitude)


def weather_frame(provider: WeatherProvider | None, index: pd.DatetimeIndex) -> pd.DataFrame | None:
    """The provider's weather over `index`, None when there is none or it cannot be read."""
    from forecaster.weather import WeatherError

    if provider is None:
        return None
    try:
        return provider.frame(index)
    except WeatherError as err:
        log.warning("weather %s unavailable for training: %s", provider.name, err)
        return None


def issued_accuracy(
    store: ForecastStore, site_id: str, target: Target, since: datetime
) -> dict[str, float]:
    """Accuracy of a target's forecasts issued since `since` (PV also on daylight). Blocking."""
    return store.issued_accuracy(site_id, target.name, target.column, since, solar=target.solar)


def accuracy_status(
    settings: Settings, store: ForecastStore, now: datetime
) -> list[dict[str, Any]]:
    """Per site and target, the accuracy of the forecasts issued over `accuracy_days`. Blocking."""
    since = now - timedelta(days=settings.accuracy_days)
    rows = []
    for site_id in site_ids(settings, store):
        for name in settings.targets:
            scores = issued_accuracy(store, site_id, TARGETS[name], since)
            rows.append(
                {
                    "site_id": site_id,
                    "target": name,
                    "since": since.isoformat(),
                    "forecasts": int(scores.get("forecasts", 0)),
                    "n": int(scores.get("n", 0)),
                    "mae_kw": scores.get("mae"),
                    "coverage_80": scores.get("coverage_80"),
                    "coverage_80_daylight": scores.get("coverage_80_daylight"),
                }
            )
    return rows


def outcome_json(o: TrainOutcome) -> dict[str, Any]:
    """A training outcome as JSON."""
    return {
        "site_id": o.site_id,
        "target": o.target,
        "version": o.version,
        "model": o.model,
        "promoted": o.promoted,
        "reason": o.reason,
        "metrics": o.metrics.get(o.model or "", {}),
        "report": str(o.report) if o.report else None,
    }


def registry_status(registry: Registry) -> list[dict[str, Any]]:
    """Every version with its model, window, backtest MAE and whether it is served."""
    rows = []
    for site_id, target in registry.sites():
        promoted = registry.promoted(site_id, target)
        for v in registry.versions(site_id, target):
            metrics = v.meta.get("backtest", {}).get("metrics", {})
            best = metrics.get(v.meta.get("model", ""), {})
            rows.append(
                {
                    "site_id": site_id,
                    "target": target,
                    "version": v.name,
                    "model": v.meta.get("model"),
                    "trained_at": v.meta.get("trained_at"),
                    "training_window": v.meta.get("training_window"),
                    "mae_kw": best.get("mae"),
                    "skill": best.get("skill"),
                    "coverage_80": best.get("coverage_80"),
                    "coverage_80_daylight": best.get("coverage_80_daylight"),
                    "served": promoted is not None and promoted.name == v.name,
                }
            )
    return rows
