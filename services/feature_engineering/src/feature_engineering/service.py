"""Wiring: a periodic (and on-demand) incremental pass over every site, status over REST."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from fastapi import APIRouter, HTTPException
from prometheus_client import Counter, Gauge

from derbus import features as fx
from derbus.bus.base import Bus
from derbus.errors import StorageError
from derbus.http import TokenDep, errors
from derbus.messages import utcnow
from derbus.service import Context, Service
from derbus.storage import guarded
from feature_engineering.api_models import Column, FeatureStatus, PassDone
from feature_engineering.pipeline import (
    FeatureStore,
    PassOptions,
    SitePassResult,
    run_site,
)
from feature_engineering.settings import Settings

NAME = "feature_engineering"


def pass_options(settings: Settings) -> PassOptions:
    """The pass knobs from the settings."""
    return PassOptions(
        lookback=timedelta(days=settings.lookback_days),
        recompute_steps=settings.recompute_steps, batch_size=settings.batch_size,
        max_fill_steps=settings.max_fill_steps, short_window_steps=settings.short_window_steps,
        long_window_steps=settings.long_window_steps,
    )  # fmt: skip


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


def build_service(
    settings: Settings,
    bus: Bus,
    store: FeatureStore | None = None,
    now: Callable[[], datetime] = utcnow,
) -> Service[Settings]:
    """The feature_engineering service (the store defaults to the configured database)."""
    service = Service(NAME, settings, bus)
    db = store or FeatureStore(settings.database.sqlalchemy_url(settings.data_dir))
    service.state["store"] = db
    lock = asyncio.Lock()
    rows_total = Counter(
        "derbus_features_rows_upserted_total", "Feature rows upserted", ["site_id"],
        registry=service.metrics.registry,
    )  # fmt: skip
    behind = Gauge(
        "derbus_features_behind_readings_seconds",
        "How far the feature table lags the latest complete interval of readings",
        ["site_id"], registry=service.metrics.registry,
    )  # fmt: skip
    last_pass = Gauge(
        "derbus_features_last_pass_timestamp_seconds", "End of the last successful pass",
        registry=service.metrics.registry,
    )  # fmt: skip

    @service.on_startup
    async def prepare_schema() -> None:
        if settings.data_dir and settings.database.database_url is None:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            await service.run_blocking(guarded, db.ensure_schema)
        except StorageError as err:
            await service.set_degraded("database", str(err))

    async def compute() -> list[dict[str, Any]]:
        async with lock:
            try:
                await service.run_blocking(guarded, db.ensure_schema)
                results = await service.run_blocking(guarded, run_pass, db, service.settings, now())
                status = await service.run_blocking(guarded, db.status)
            except StorageError as err:
                await service.set_degraded("database", str(err))
                raise
            await service.clear_degraded("database")
        for r in results:
            rows_total.labels(site_id=r.site_id).inc(r.rows)
        for s in status:
            behind.labels(site_id=s["site_id"]).set(s["behind_readings_s"])
        last_pass.set(now().timestamp())
        done = summary(results)
        service.state["last_pass"] = done
        return done

    @service.every(lambda: service.settings.interval_s, run_at_start=True)
    async def compute_features(ctx: Context) -> None:
        await compute()

    router = APIRouter(prefix="/features", tags=["features"])

    @router.get("/status", response_model=FeatureStatus, responses=errors(503))
    async def get_status() -> dict[str, Any]:
        """Per site: rows, first/last interval, missing and filled load rows, lag."""
        try:
            sites = await service.run_blocking(guarded, db.status)
        except StorageError as err:
            raise HTTPException(status_code=503, detail=str(err)) from err
        return {"sites": sites, "last_pass": service.state.get("last_pass")}

    @router.post("/run", response_model=PassDone, responses=errors(503))
    async def post_run(_auth: TokenDep) -> dict[str, Any]:
        """Run an incremental pass now; returns what it computed (503 when the store fails)."""
        try:
            return {"sites": await compute()}
        except StorageError as err:
            raise HTTPException(status_code=503, detail=str(err)) from err

    @router.get("/columns", response_model=list[Column])
    def get_columns() -> list[dict[str, str]]:
        """The documented columns of the feature table with their availability."""
        return [
            {"name": c.name, "kind": c.kind, "availability": c.availability,
             "description": c.description}
            for c in fx.FEATURE_COLUMNS
        ]  # fmt: skip

    service.include_router(router)
    return service
