"""Wiring: publish day-ahead forecasts every 15 min (and on demand), retrain on a schedule, REST."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, HTTPException, Query

from derbus import topics
from derbus.bus.base import Bus
from derbus.errors import StorageError
from derbus.http import TokenDep, errors
from derbus.messages import TimeSeries, utcnow
from derbus.service import Context, Service
from derbus.storage import guarded
from forecaster.api_models import Accuracy, Models, Trained
from forecaster.batch import issued_accuracy, outcome_json, registry_status
from forecaster.catalogue import TARGETS
from forecaster.registry import Registry
from forecaster.settings import Settings
from forecaster.state import NAME, Forecaster
from forecaster.store import ForecastStore

if TYPE_CHECKING:
    from forecaster.serving import Issued


def build_service(
    settings: Settings,
    bus: Bus,
    store: ForecastStore | None = None,
    registry: Registry | None = None,
    now: Callable[[], datetime] = utcnow,
) -> Service[Settings, Forecaster]:
    """The forecaster service; `service.state` is its `Forecaster`.

    Args:
        settings: validated settings.
        bus: the bus (MqttBus in production, InMemoryBus in tests).
        store: the feature table and issued forecasts (default: the configured database).
        registry: the model registry (default: `settings.registry_dir`).
        now: source of the current time (tests pass their own).
    """
    service: Service[Settings, Forecaster] = Service(NAME, settings, bus)
    db = store or ForecastStore(settings.database.sqlalchemy_url(settings.data_dir))
    fc = service.state = Forecaster(service, db, registry or Registry(settings.registry_dir), now)
    service.declare_publishes(topics.FORECAST)
    service.on_startup(fc.prepare)

    @service.every(fc.issue_interval_s, run_at_start=True)
    async def publish_forecasts(ctx: Context) -> None:
        await fc.issue_all()

    @service.every(lambda: service.settings.retrain_interval_h * 3600, run_at_start=True)
    async def retrain(ctx: Context) -> None:
        await fc.retrain()

    service.include_router(_router(service, fc))
    return service


def _router(service: Service[Settings, Forecaster], fc: Forecaster) -> APIRouter:
    router = APIRouter(tags=["forecast"])

    async def issue_now(site_id: str, target: str) -> Issued:
        if target not in TARGETS:
            raise HTTPException(status_code=404, detail=f"unknown target {target!r}")
        try:
            issued = await fc.issue_and_publish(site_id, target)
        except StorageError as err:
            raise HTTPException(status_code=503, detail=str(err)) from err
        if issued is None:
            raise HTTPException(status_code=404, detail=f"no recent history for {site_id}/{target}")
        return issued

    @router.get(
        "/forecast/{site_id}/{target}", response_model=TimeSeries, responses=errors(404, 503)
    )
    async def get_forecast(site_id: str, target: str) -> dict[str, Any]:
        """The latest day-ahead forecast (made on demand when none was issued yet)."""
        issued = fc.latest.get((site_id, target))
        if issued is None:
            issued = await issue_now(site_id, target)
        body: dict[str, Any] = issued.message(fc.now()).model_dump(mode="json")
        return body

    @router.post(
        "/forecast/{site_id}/{target}", response_model=TimeSeries, responses=errors(404, 503)
    )
    async def post_forecast(site_id: str, target: str, _auth: TokenDep) -> dict[str, Any]:
        """Issue and publish a forecast now."""
        issued = await issue_now(site_id, target)
        body: dict[str, Any] = issued.message(fc.now()).model_dump(mode="json")
        return body

    @router.get(
        "/forecast/{site_id}/{target}/accuracy",
        response_model=Accuracy,
        responses=errors(404, 503),
    )
    async def get_accuracy(
        site_id: str,
        target: str,
        days: Annotated[float | None, Query(gt=0, le=3660, description="window, days")] = None,
    ) -> dict[str, Any]:
        """How the forecasts issued over the last `days` (default FORECASTER_ACCURACY_DAYS) did."""
        if target not in TARGETS:
            raise HTTPException(status_code=404, detail=f"unknown target {target!r}")
        window_d = days if days is not None and days > 0 else service.settings.accuracy_days
        since = fc.now() - timedelta(days=window_d)
        try:
            scores = await service.run_blocking(
                guarded, issued_accuracy, fc.store, site_id, TARGETS[target], since
            )
        except StorageError as err:
            raise HTTPException(status_code=503, detail=str(err)) from err
        reference = None
        if "reference_is_week" in scores:
            week = scores.pop("reference_is_week") > 0
            reference = "seasonal_naive_week" if week else "seasonal_naive_day"
        return {
            "site_id": site_id,
            "target": target,
            "since": since.isoformat(),
            "reference": reference,
            **scores,
        }

    @router.post("/train", response_model=Trained, responses=errors(503))
    async def post_train(_auth: TokenDep) -> dict[str, Any]:
        """Retrain every site and target now (backtest, register, promote if better)."""
        try:
            outcomes = await fc.train(only_missing=False)
        except StorageError as err:
            raise HTTPException(status_code=503, detail=str(err)) from err
        return {"outcomes": [outcome_json(o) for o in outcomes]}

    @router.get("/models", response_model=Models)
    async def get_models() -> dict[str, Any]:
        """The registry: versions per site and target, the promoted one, their metrics."""
        return {"models": await service.run_blocking(registry_status, fc.registry)}

    return router
