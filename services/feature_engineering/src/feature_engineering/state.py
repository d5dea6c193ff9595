"""`FeatureEngineering`, the service's state: the feature store, its passes and their metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from prometheus_client import Counter, Gauge

from derbus import features as fx
from derbus.errors import StorageError
from derbus.service import Service
from derbus.storage import guarded
from feature_engineering.pipeline import FeatureStore, PassOptions, SitePassResult, run_site
from feature_engineering.settings import Settings


def pass_options(settings: Settings) -> PassOptions:
    """The pass knobs from the settings."""
    return PassOptions(
        lookback=timedelta(days=settings.lookback_days),
        recompute_steps=settings.recompute_steps,
        batch_size=settings.batch_size,
        max_fill_steps=settings.max_fill_steps,
        short_window_steps=settings.short_window_steps,
        long_window_steps=settings.long_window_steps,
    )


def run_pass(
    store: FeatureStore,
    settings: Settings,
    now: datetime,
    progress: Callable[[int], None] | None = None,
) -> list[SitePassResult]:
    """One incremental pass over the configured site (or every site with readings). Blocking."""
    sites = [settings.site_id] if settings.site_id else store.sites()
    context = fx.SiteContext.of(settings.site)
    options = pass_options(settings)
    return [run_site(store, s, context, options, now, progress) for s in sites]


def summary(results: list[SitePassResult]) -> list[dict[str, Any]]:
    """A JSON-able summary of a pass."""
    return [
        {
            "site_id": r.site_id,
            "rows": r.rows,
            "start": r.window.start.isoformat() if r.window else None,
            "end": r.window.end.isoformat() if r.window else None,
        }
        for r in results
    ]


class FeatureEngineering:
    """`service.state` of feature_engineering: the store, one pass at a time, the last pass.

    Args:
        service: the service whose settings, health and metrics registry the passes use.
        store: the feature store (readings in, feature rows out).
        now: the current time (tests pass their own).
    """

    def __init__(
        self, service: Service[Settings, Any], store: FeatureStore, now: Callable[[], datetime]
    ) -> None:
        self.service = service
        self.store = store
        self.now = now
        self.last_pass: list[dict[str, Any]] | None = None
        """The summary of the last successful pass (None before the first)."""
        self._lock = asyncio.Lock()
        registry = service.metrics.registry
        self.rows_total = Counter(
            "derbus_feature_engineering_rows_upserted_total",
            "Feature rows upserted",
            ["site_id"],
            registry=registry,
        )
        self.behind = Gauge(
            "derbus_feature_engineering_behind_readings_seconds",
            "How far the feature table lags the latest complete interval of readings",
            ["site_id"],
            registry=registry,
        )
        self.last_pass_ts = Gauge(
            "derbus_feature_engineering_last_pass_timestamp_seconds",
            "End of the last successful pass",
            registry=registry,
        )

    async def prepare(self) -> None:
        """Create the data directory and the schema (at start-up); degraded when it fails."""
        settings = self.service.settings
        if settings.data_dir and settings.database.database_url is None:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            await self.service.run_blocking(guarded, self.store.ensure_schema)
        except StorageError as err:
            await self.service.set_degraded("database", str(err))

    async def compute(self) -> list[dict[str, Any]]:
        """Run an incremental pass (one at a time) and return its summary.

        Raises:
            StorageError: the database failed (the service is then degraded until a pass works).
        """
        service, db = self.service, self.store
        async with self._lock:
            try:
                await service.run_blocking(guarded, db.ensure_schema)
                results = await service.run_blocking(
                    guarded, run_pass, db, service.settings, self.now()
                )
                status = await service.run_blocking(guarded, db.status)
            except StorageError as err:
                await service.set_degraded("database", str(err))
                raise
            await service.clear_degraded("database")
        for r in results:
            self.rows_total.labels(site_id=r.site_id).inc(r.rows)
        for s in status:
            self.behind.labels(site_id=s["site_id"]).set(s["behind_readings_s"])
        self.last_pass_ts.set(self.now().timestamp())
        self.last_pass = summary(results)
        return self.last_pass

    async def status(self) -> dict[str, Any]:
        """Per site: rows, first/last interval, missing and filled load rows, lag; the last pass.

        Raises:
            StorageError: the database failed.
        """
        sites = await self.service.run_blocking(guarded, self.store.status)
        return {"sites": sites, "last_pass": self.last_pass}
