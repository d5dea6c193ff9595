"""`Forecaster`, the service's state: the served models, the latest forecasts, issuing, training."""

from __future__ import annotations

import asyncio
import importlib
import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Gauge

from derbus import features as fx
from derbus import topics
from derbus.errors import StorageError
from derbus.service import Service
from derbus.storage import guarded
from forecaster import coldstart
from forecaster.batch import site_ids, train_all, weather_provider
from forecaster.catalogue import TARGETS, Target
from forecaster.registry import Registry
from forecaster.settings import Settings
from forecaster.store import ForecastStore

if TYPE_CHECKING:
    import pandas as pd

    from forecaster.models import Model
    from forecaster.serving import Issued
    from forecaster.training import TrainOutcome
    from forecaster.weather import WeatherProvider

NAME = "forecaster"
SERVING_HISTORY = 5 * fx.STEPS_PER_WEEK * fx.STEP + timedelta(days=1)
HEAVY_MODULES = ("forecaster.serving", "forecaster.training")
"""pandas, scikit-learn, matplotlib, pvlib: imported off the event loop on first use, so the
service is ready (bus connected, API up) within a second or two of starting."""
log = logging.getLogger(__name__)


class Forecaster:
    """`service.state` of the forecaster: the loaded models and the latest issued forecasts per
    site/target; issues (blocking `issue`, published by `issue_all`) and trains (`train`).

    Args:
        service: the service forecasts are published through (its settings, health, metrics).
        store: the feature table and the issued forecasts.
        registry: the model registry.
        now: the current time (tests pass their own).
    """

    def __init__(
        self,
        service: Service[Settings, Any],
        store: ForecastStore,
        registry: Registry,
        now: Callable[[], datetime],
    ) -> None:
        self.service = service
        self.store = store
        self.registry = registry
        self.now = now
        self.models: dict[tuple[str, str], tuple[str, Model]] = {}
        self.latest: dict[tuple[str, str], Issued] = {}
        self.trained_at_start = False
        self.schema_ready = False
        """Whether the tables exist: a failed creation at start-up (a store still locked by a
        first start's backfill, a database not up yet) is tried again before every issue."""
        """Whether the first `retrain` tick (the start-up training) has run."""
        self._importing = threading.Lock()
        self._train_lock = asyncio.Lock()
        self._issue_lock = asyncio.Lock()
        self.cold_start = coldstart.ColdStart(
            self.settings.cold_start, coldstart.Readings(store.engine)
        )
        self._weather: list[WeatherProvider | None] = []
        self._site: fx.SiteContext | None = None
        registry_ = service.metrics.registry
        self.published = Counter(
            "derbus_forecaster_forecasts_published_total",
            "Forecasts published",
            ["target"],
            registry=registry_,
        )
        self.trained = Counter(
            "derbus_forecaster_trainings_total",
            "Trainings by outcome",
            ["target", "promoted"],
            registry=registry_,
        )
        self.backtest_mae = Gauge(
            "derbus_forecaster_backtest_mae_kw",
            "Backtest MAE of the latest trained model",
            ["site_id", "target"],
            registry=registry_,
        )

    # --- serving (blocking parts run off the event loop) ---------------------------------------
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

    @property
    def settings(self) -> Settings:
        """The service's current settings (`PUT /config` replaces them: a new issue interval
        holds from the next issue on)."""
        return self.service.settings

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
            cold = self.cold_start.forecast(
                site_id,
                target,
                history,
                issue_time.to_pydatetime(),
                now,
                fx.SiteContext.of(self.settings.site),
            )
            if cold is None:
                return None  # nothing measured at all: nothing to stand on
            frame, name, version, meta = cold.frame, coldstart.MODEL_NAME, None, cold.meta()
        else:
            model, name, version = self.model_for(site_id, target, history)
            site = self.site_context()
            frame, inputs = forecast(model, history, issue_time, site, target, self.weather)
            meta = {"inputs": inputs}
        self.store.save_issued(
            site_id, target_name, issue_time.to_pydatetime(), frame, name, version
        )
        issued = Issued(site_id, target, issue_time.to_pydatetime(), frame, name, version, meta)
        self.latest[(site_id, target_name)] = issued
        return issued

    # --- on the event loop ---------------------------------------------------------------------
    async def prepare(self) -> None:
        """Create the data directory and the schema (at start-up); degraded when it fails."""
        if self.settings.database.database_url is None:
            self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            await self.ensure_schema()
        except StorageError as err:
            await self.service.set_degraded("database", str(err))

    async def ensure_schema(self) -> None:
        """Create the tables unless that already worked once.

        Raises:
            StorageError: the database failed.
        """
        if not self.schema_ready:
            await self.service.run_blocking(guarded, self.store.ensure_schema)
            self.schema_ready = True

    async def issue_and_publish(self, site_id: str, target: str) -> Issued | None:
        """Issue a site's forecast of a target now and publish it (None without history).

        Raises:
            StorageError: the database failed.
        """
        issued: Issued | None = await self.service.run_blocking(
            guarded, self.issue, site_id, target, self.now()
        )
        if issued is not None:
            await self.service.publish(
                topics.FORECAST,
                issued.message(self.now()),
                site_id=issued.site_id,
                device_id=issued.target.name,
            )
            self.published.labels(target=issued.target.name).inc()
        return issued

    async def issue_all(self) -> int:
        """Issue and publish every site's targets (one round at a time); how many were issued.

        Degraded (`database`) while the store fails, (`forecast`) when sites are known but none
        has recent history.

        Raises:
            StorageError: the database failed.
        """
        service = self.service
        async with self._issue_lock:
            try:
                await self.ensure_schema()
                sites = await service.run_blocking(guarded, self.sites, self.now())
                count = 0
                for site_id in sites:
                    for target in service.settings.targets:
                        count += (await self.issue_and_publish(site_id, target)) is not None
            except StorageError as err:
                await service.set_degraded("database", str(err))
                raise
            await service.clear_degraded("database")
        if sites and count == 0:
            await service.set_degraded("forecast", "no recent history to forecast from")
        else:
            await service.clear_degraded("forecast")
        return count

    async def train(self, only_missing: bool) -> list[TrainOutcome]:
        """Train every site and target (with `only_missing`, those without a model), one
        training at a time; issue again when a new model was promoted.

        Raises:
            StorageError: the database failed.
        """
        service = self.service
        async with self._train_lock:
            await service.run_blocking(self.load_modules)
            outcomes: list[TrainOutcome] = await service.run_blocking(
                guarded,
                train_all,
                service.settings,
                self.store,
                self.registry,
                self.now(),
                only_missing,
            )
        for o in outcomes:
            self.trained.labels(target=o.target, promoted=str(o.promoted).lower()).inc()
            mae = o.metrics.get(o.model or "", {}).get("mae")
            if mae is not None:
                self.backtest_mae.labels(site_id=o.site_id, target=o.target).set(mae)
            log.info("trained %s/%s: %s", o.site_id, o.target, o.reason)
        if any(o.promoted for o in outcomes):
            await self.issue_all()
        return outcomes

    async def retrain(self) -> None:
        """The scheduled training: at start the missing models only (`train_at_start`), then all."""
        if not self.trained_at_start:
            self.trained_at_start = True
            if self.service.settings.train_at_start:
                await self.train(only_missing=True)
            return
        await self.train(only_missing=False)
