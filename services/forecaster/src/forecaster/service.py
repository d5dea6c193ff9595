"""Wiring: publish day-ahead forecasts every 15 min (and on demand), retrain on a schedule, REST."""

from __future__ import annotations

import asyncio
import importlib
import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, HTTPException, Query
from prometheus_client import Counter, Gauge

from derbus import features as fx
from derbus import topics
from derbus.bus.base import Bus
from derbus.errors import StorageError
from derbus.http import TokenDep, errors
from derbus.messages import TimeSeries, utcnow
from derbus.service import Context, Service
from derbus.storage import guarded
from forecaster import coldstart
from forecaster.api_models import Accuracy, Models, Trained
from forecaster.catalogue import TARGETS, Target
from forecaster.registry import Registry
from forecaster.settings import Settings
from forecaster.store import ForecastStore

if TYPE_CHECKING:
    import pandas as pd

    from forecaster.models import Model
    from forecaster.serving import Issued
    from forecaster.training import TrainConfig, TrainOutcome
    from forecaster.weather import WeatherProvider

NAME = "forecaster"
SERVING_HISTORY = 5 * fx.STEPS_PER_WEEK * fx.STEP + timedelta(days=1)
HEAVY_MODULES = ("forecaster.serving", "forecaster.training")
"""pandas, scikit-learn, matplotlib, pvlib: imported off the event loop on first use, so the
service is ready (bus connected, API up) within a second or two of starting."""
log = logging.getLogger(__name__)


def train_config(settings: Settings) -> TrainConfig:
    """Training knobs from the settings."""
    from forecaster.training import TrainConfig

    return TrainConfig(
        models=tuple(settings.models), test_fraction=settings.test_size,
        folds=settings.backtest_folds, max_iter=settings.max_iter, threads=settings.fit_threads,
        min_train_days=settings.min_train_days, issue_every=settings.backtest_issue_every,
    )  # fmt: skip


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
                    history, site_id, site, target, registry, train_config(settings), now,
                    progress, weather, provider.name if provider else None,
                )
            )  # fmt: skip
    return outcomes


def weather_provider(settings: Settings) -> WeatherProvider | None:
    """The configured weather source (FORECAST_WEATHER_SOURCE)."""
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


class Server:
    """The forecaster's state: the loaded models and the latest issued forecasts per site/target."""

    def __init__(self, settings: Settings, store: ForecastStore, registry: Registry) -> None:
        self.settings = settings
        self.store = store
        self.registry = registry
        self.models: dict[tuple[str, str], tuple[str, Model]] = {}
        self.latest: dict[tuple[str, str], Issued] = {}
        self._importing = threading.Lock()
        self.cold_start = coldstart.ColdStart(settings.cold_start, coldstart.Readings(store.engine))
        self._weather: list[WeatherProvider | None] = []
        self._site: fx.SiteContext | None = None

    def site_context(self) -> fx.SiteContext:
        """One site context for every forecast (its known-ahead features are then shared)."""
        if self._site is None:
            self._site = fx.SiteContext.of(self.settings.site)
        return self._site

    @property
    def weather(self) -> WeatherProvider | None:
        """The weather provider (made on first use: its module loads pandas)."""
        if not self._weather:
            self._weather.append(weather_provider(self.settings))
        return self._weather[0]

    def sites(self, now: datetime) -> list[str]:
        """The sites to forecast: those of the feature table and those with recent readings."""
        return site_ids(self.settings, self.store, self.cold_start.sites(now))

    def issue_interval_s(self) -> float:
        """Seconds to the next issue: the cold-start retry period until a first forecast."""
        if self.latest:
            return self.settings.issue_interval_s
        return min(self.settings.issue_interval_s, self.settings.cold_start.retry_s)

    def load_modules(self) -> None:
        """Import the modelling modules once, one thread at a time (blocking: a few seconds).

        Issuing and training both run in worker threads and may start together; importing
        pandas and scikit-learn from two threads at once can meet half-initialised modules.
        """
        with self._importing:
            for name in HEAVY_MODULES:
                importlib.import_module(name)

    def model_for(
        self, site_id: str, target: Target, history: pd.Series
    ) -> tuple[Model, str, str | None]:
        """The promoted model (cached per version) or the seasonal naive fallback."""
        from forecaster.serving import fallback_model

        version = self.registry.promoted(site_id, target.name)
        if version is None:
            site = fx.SiteContext.of(self.settings.site)
            return fallback_model(history, site, target), "seasonal_naive_day", None
        cached = self.models.get((site_id, target.name))
        if cached is None or cached[0] != version.name:
            cached = (version.name, self.registry.load(version))
            self.models[(site_id, target.name)] = cached
        return cached[1], str(version.meta["model"]), version.name

    def issue(self, site_id: str, target_name: str, now: datetime) -> Issued | None:
        """Forecast the day ahead of `now` and store it; None without recent history. Blocking."""
        self.load_modules()
        from forecaster.serving import Issued, forecast, issue_time_of

        target = TARGETS[target_name]
        issue_time = issue_time_of(now)
        start = (issue_time - SERVING_HISTORY).to_pydatetime()
        history = self.store.history(site_id, target.column, start, issue_time.to_pydatetime())
        meta: dict[str, Any] = {}
        if history.iloc[-fx.STEPS_PER_WEEK :].notna().sum() < fx.STEPS_PER_DAY:
            # less than a day of values in the last week: the cold start (forecaster.coldstart)
            cold = self.cold_start.forecast(site_id, target, history, issue_time.to_pydatetime(),
                                            now, fx.SiteContext.of(self.settings.site))  # fmt: skip
            if cold is None:
                return None  # nothing measured at all: nothing to stand on
            frame, name, version, meta = cold.frame, coldstart.MODEL_NAME, None, cold.meta()
        else:
            model, name, version = self.model_for(site_id, target, history)
            site = self.site_context()
            frame, inputs = forecast(model, history, issue_time, site, target, self.weather)
            meta = {"inputs": inputs}
        self.store.save_issued(site_id, target_name, issue_time.to_pydatetime(), frame, name,
                               version)  # fmt: skip
        issued = Issued(site_id, target, issue_time.to_pydatetime(), frame, name, version, meta)
        self.latest[(site_id, target_name)] = issued
        return issued


def build_service(
    settings: Settings,
    bus: Bus,
    store: ForecastStore | None = None,
    registry: Registry | None = None,
    now: Callable[[], datetime] = utcnow,
) -> Service[Settings]:
    """The forecaster service."""
    service = Service(NAME, settings, bus)
    db = store or ForecastStore(settings.database.sqlalchemy_url(settings.data_dir))
    server = Server(settings, db, registry or Registry(settings.registry_dir))
    service.state["server"] = server
    service.declare_publishes(topics.FORECAST)
    train_lock = asyncio.Lock()
    issue_lock = asyncio.Lock()
    published = Counter(
        "derbus_forecasts_published_total", "Forecasts published", ["target"],
        registry=service.metrics.registry,
    )  # fmt: skip
    trained = Counter(
        "derbus_forecaster_trainings_total", "Trainings by outcome", ["target", "promoted"],
        registry=service.metrics.registry,
    )  # fmt: skip
    backtest_mae = Gauge(
        "derbus_forecaster_backtest_mae_kw", "Backtest MAE of the latest trained model",
        ["site_id", "target"], registry=service.metrics.registry,
    )  # fmt: skip

    @service.on_startup
    async def prepare() -> None:
        if settings.database.database_url is None:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            await service.run_blocking(guarded, db.ensure_schema)
        except StorageError as err:
            await service.set_degraded("database", str(err))

    async def publish(issued: Issued) -> None:
        await service.publish(
            topics.FORECAST, issued.message(now()), site_id=issued.site_id,
            device_id=issued.target.name,
        )  # fmt: skip
        published.labels(target=issued.target.name).inc()

    async def issue(site_id: str, target: str) -> Issued | None:
        issued: Issued | None = await service.run_blocking(
            guarded, server.issue, site_id, target, now()
        )
        if issued is not None:
            await publish(issued)
        return issued

    async def issue_all() -> int:
        async with issue_lock:
            try:
                sites = await service.run_blocking(guarded, server.sites, now())
                count = 0
                for site_id in sites:
                    for target in service.settings.targets:
                        count += (await issue(site_id, target)) is not None
            except StorageError as err:
                await service.set_degraded("database", str(err))
                raise
            await service.clear_degraded("database")
        if sites and count == 0:
            await service.set_degraded("forecast", "no recent history to forecast from")
        else:
            await service.clear_degraded("forecast")
        return count

    async def train(only_missing: bool) -> list[TrainOutcome]:
        async with train_lock:
            await service.run_blocking(server.load_modules)
            outcomes: list[TrainOutcome] = await service.run_blocking(
                guarded, train_all, service.settings, db, server.registry, now(), only_missing
            )
        for o in outcomes:
            trained.labels(target=o.target, promoted=str(o.promoted).lower()).inc()
            mae = o.metrics.get(o.model or "", {}).get("mae")
            if mae is not None:
                backtest_mae.labels(site_id=o.site_id, target=o.target).set(mae)
            log.info("trained %s/%s: %s", o.site_id, o.target, o.reason)
        if any(o.promoted for o in outcomes):
            await issue_all()
        return outcomes

    @service.every(server.issue_interval_s, run_at_start=True)
    async def publish_forecasts(ctx: Context) -> None:
        await issue_all()

    first_training = {"done": False}

    @service.every(lambda: service.settings.retrain_interval_h * 3600, run_at_start=True)
    async def retrain(ctx: Context) -> None:
        if not first_training["done"]:
            first_training["done"] = True
            if service.settings.train_at_start:
                await train(only_missing=True)
            return
        await train(only_missing=False)

    router = APIRouter(tags=["forecast"])

    async def issue_now(site_id: str, target: str) -> Issued | None:
        try:
            return await issue(site_id, target)
        except StorageError as err:
            raise HTTPException(status_code=503, detail=str(err)) from err

    @router.get(
        "/forecast/{site_id}/{target}", response_model=TimeSeries, responses=errors(404, 503)
    )
    async def get_forecast(site_id: str, target: str) -> dict[str, Any]:
        """The latest day-ahead forecast (made on demand when none was issued yet)."""
        if target not in TARGETS:
            raise HTTPException(status_code=404, detail=f"unknown target {target!r}")
        issued = server.latest.get((site_id, target))
        if issued is None:
            issued = await issue_now(site_id, target)
        if issued is None:
            raise HTTPException(status_code=404, detail=f"no recent history for {site_id}/{target}")
        body: dict[str, Any] = issued.message(now()).model_dump(mode="json")
        return body

    @router.post(
        "/forecast/{site_id}/{target}", response_model=TimeSeries, responses=errors(404, 503)
    )
    async def post_forecast(site_id: str, target: str, _auth: TokenDep) -> dict[str, Any]:
        """Issue and publish a forecast now."""
        if target not in TARGETS:
            raise HTTPException(status_code=404, detail=f"unknown target {target!r}")
        issued = await issue_now(site_id, target)
        if issued is None:
            raise HTTPException(status_code=404, detail=f"no recent history for {site_id}/{target}")
        body: dict[str, Any] = issued.message(now()).model_dump(mode="json")
        return body

    @router.get(
        "/forecast/{site_id}/{target}/accuracy", response_model=Accuracy,
        responses=errors(404, 503),
    )  # fmt: skip
    async def get_accuracy(
        site_id: str,
        target: str,
        days: Annotated[float | None, Query(gt=0, le=3660, description="window, days")] = None,
    ) -> dict[str, Any]:
        """How the forecasts issued over the last `days` (default FORECAST_ACCURACY_DAYS) did."""
        if target not in TARGETS:
            raise HTTPException(status_code=404, detail=f"unknown target {target!r}")
        window_d = days if days is not None and days > 0 else service.settings.accuracy_days
        since = now() - timedelta(days=window_d)
        try:
            scores = await service.run_blocking(
                guarded, issued_accuracy, db, site_id, TARGETS[target], since
            )
        except StorageError as err:
            raise HTTPException(status_code=503, detail=str(err)) from err
        reference = None
        if "reference_is_week" in scores:
            week = scores.pop("reference_is_week") > 0
            reference = "seasonal_naive_week" if week else "seasonal_naive_day"
        return {"site_id": site_id, "target": target, "since": since.isoformat(),
                "reference": reference, **scores}  # fmt: skip

    @router.post("/train", response_model=Trained, responses=errors(503))
    async def post_train(_auth: TokenDep) -> dict[str, Any]:
        """Retrain every site and target now (backtest, register, promote if better)."""
        try:
            outcomes = await train(only_missing=False)
        except StorageError as err:
            raise HTTPException(status_code=503, detail=str(err)) from err
        return {"outcomes": [outcome_json(o) for o in outcomes]}

    @router.get("/models", response_model=Models)
    async def get_models() -> dict[str, Any]:
        """The registry: versions per site and target, the promoted one, their metrics."""
        return {"models": await service.run_blocking(registry_status, server.registry)}

    service.include_router(router)
    return service


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
            rows.append({"site_id": site_id, "target": name, "since": since.isoformat(),
                         "forecasts": int(scores.get("forecasts", 0)),
                         "n": int(scores.get("n", 0)), "mae_kw": scores.get("mae"),
                         "coverage_80": scores.get("coverage_80"),
                         "coverage_80_daylight": scores.get("coverage_80_daylight")})  # fmt: skip
    return rows


def outcome_json(o: TrainOutcome) -> dict[str, Any]:
    """A training outcome as JSON."""
    return {
        "site_id": o.site_id, "target": o.target, "version": o.version, "model": o.model,
        "promoted": o.promoted, "reason": o.reason,
        "metrics": o.metrics.get(o.model or "", {}), "report": str(o.report) if o.report else None,
    }  # fmt: skip


def registry_status(registry: Registry) -> list[dict[str, Any]]:
    """Every version with its model, window, backtest MAE and whether it is served."""
    rows = []
    for site_id, target in registry.sites():
        promoted = registry.promoted(site_id, target)
        for v in registry.versions(site_id, target):
            metrics = v.meta.get("backtest", {}).get("metrics", {})
            best = metrics.get(v.meta.get("model", ""), {})
            rows.append({
                "site_id": site_id, "target": target, "version": v.name,
                "model": v.meta.get("model"), "trained_at": v.meta.get("trained_at"),
                "training_window": v.meta.get("training_window"),
                "mae_kw": best.get("mae"), "skill": best.get("skill"),
                "coverage_80": best.get("coverage_80"),
                "coverage_80_daylight": best.get("coverage_80_daylight"),
                "served": promoted is not None and promoted.name == v.name,
            })  # fmt: skip
    return rows
