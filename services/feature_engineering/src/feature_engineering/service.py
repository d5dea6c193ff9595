"""Wiring: a periodic (and on-demand) incremental pass over every site, status over REST."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from fastapi import APIRouter, HTTPException

from derbus import features as fx
from derbus.bus.base import Bus
from derbus.errors import StorageError
from derbus.http import TokenDep, errors
from derbus.messages import utcnow
from derbus.service import Context, Service
from feature_engineering.api_models import Column, FeatureStatus, PassDone
from feature_engineering.pipeline import FeatureStore
from feature_engineering.settings import Settings
from feature_engineering.state import FeatureEngineering

NAME = "feature_engineering"


def build_service(
    settings: Settings,
    bus: Bus,
    store: FeatureStore | None = None,
    now: Callable[[], datetime] = utcnow,
) -> Service[Settings, FeatureEngineering]:
    """The feature_engineering service; `service.state` is its `FeatureEngineering`.

    Args:
        settings: validated settings.
        bus: the bus (MqttBus in production, InMemoryBus in tests).
        store: the feature store (default: the configured database).
        now: source of the current time (tests pass their own).
    """
    service: Service[Settings, FeatureEngineering] = Service(NAME, settings, bus)
    db = store or FeatureStore(settings.database.sqlalchemy_url(settings.data_dir))
    fe = service.state = FeatureEngineering(service, db, now)
    service.on_startup(fe.prepare)

    @service.every(lambda: service.settings.interval_s, run_at_start=True)
    async def compute_features(ctx: Context) -> None:
        await fe.compute()

    service.include_router(_router(fe))
    return service


def _router(fe: FeatureEngineering) -> APIRouter:
    router = APIRouter(prefix="/features", tags=["features"])

    @router.get("/status", response_model=FeatureStatus, responses=errors(503))
    async def get_status() -> dict[str, Any]:
        """Per site: rows, first/last interval, missing and filled load rows, lag."""
        try:
            return await fe.status()
        except StorageError as err:
            raise HTTPException(status_code=503, detail=str(err)) from err

    @router.post("/run", response_model=PassDone, responses=errors(503))
    async def post_run(_auth: TokenDep) -> dict[str, Any]:
        """Run an incremental pass now; returns what it computed (503 when the store fails)."""
        try:
            return {"sites": await fe.compute()}
        except StorageError as err:
            raise HTTPException(status_code=503, detail=str(err)) from err

    @router.get("/columns", response_model=list[Column])
    def get_columns() -> list[dict[str, str]]:
        """The documented columns of the feature table with their availability."""
        return [
            {
                "name": c.name,
                "kind": c.kind,
                "availability": c.availability,
                "description": c.description,
            }
            for c in fx.FEATURE_COLUMNS
        ]

    return router
