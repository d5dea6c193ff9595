"""Wiring of the load manager: readings and forecasts into `LoadManager`, its loops, REST routes."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from fastapi import APIRouter, HTTPException
from pydantic import ValidationError

from derbus import topics
from derbus.bus.base import Bus
from derbus.errors import ConfigError
from derbus.http import TokenDep, errors
from derbus.messages import (
    EvChargerTelemetry,
    JobPlan,
    JobRequest,
    MeterReading,
    PriceSeries,
    PvTelemetry,
    TimeSeries,
    utcnow,
)
from derbus.service import Context, Service
from load_manager.api_models import Balance, JobView, Kpis
from load_manager.jobs import DuplicateJobError
from load_manager.manager import LoadManager
from load_manager.planner_api import planner_router
from load_manager.planning import JobSubmission
from load_manager.settings import Settings

log = logging.getLogger(__name__)

NAME = "load_manager"


def build_service(
    settings: Settings, bus: Bus, clock: Callable[[], datetime] = utcnow
) -> Service[Settings, LoadManager]:
    """The load manager service; `service.state` is its `LoadManager`.

    Args:
        settings: validated settings.
        bus: the bus (MqttBus in production, InMemoryBus in tests).
        clock: source of the current time (tests and accelerated runs pass their own).

    Raises:
        ConfigError: the neighbourhood or jobs file is invalid (naming file and line).
    """
    service: Service[Settings, LoadManager] = Service(NAME, settings, bus)
    lm = service.state = LoadManager(service, clock)
    net, jobs = lm.net, lm.jobs
    site = settings.site.id
    service.declare_publishes(topics.SETPOINT, topics.KPI, topics.JOB_PLAN)
    service.on_startup(lm.restore)
    service.on_config_change(lm.reconfigure)

    # --- net balancing -------------------------------------------------------------------------
    @service.on(topics.METER, site_id=site, device_id=settings.meter_device_id)
    async def on_meter(msg: MeterReading, ctx: Context) -> None:
        await net.on_meter(msg.ts, msg.p_kw)

    @service.on(topics.PV, site_id=site, device_id=settings.pv_device_id)
    async def on_pv(msg: PvTelemetry, ctx: Context) -> None:
        await net.on_pv(msg.ts, msg.generation_kw)

    @service.every(lambda: service.settings.cycle_s)
    async def net_balance_cycle(ctx: Context) -> None:
        if service.settings.net_balancing_enabled:
            await net.cycle()

    @service.every(lambda: service.settings.kpi_interval_s)
    async def publish_kpis(ctx: Context) -> None:
        if service.settings.net_balancing_enabled:
            await net.publish_day()

    # --- deferrable jobs -----------------------------------------------------------------------
    @service.on(topics.FORECAST, device_id="pv")
    async def on_pv_forecast(msg: TimeSeries, ctx: Context) -> None:
        jobs.on_forecast(ctx.site_id, "pv", msg)

    @service.on(topics.FORECAST, device_id="load")
    async def on_load_forecast(msg: TimeSeries, ctx: Context) -> None:
        jobs.on_forecast(ctx.site_id, "load", msg)

    @service.on(topics.PRICE_SERIES, site_id=site, device_id="grid")
    async def on_prices(msg: PriceSeries, ctx: Context) -> None:
        jobs.on_prices(ctx.site_id, msg)

    @service.on(topics.EV_CHARGER)
    async def on_ev_charger(msg: EvChargerTelemetry, ctx: Context) -> None:
        jobs.on_ev_charger(ctx.site_id, ctx.device_id or "")

    @service.on(topics.JOB_REQUEST)
    async def on_job_request(msg: JobRequest, ctx: Context) -> None:
        # booked now, planned by the next job cycle (a solve never blocks the bus handlers)
        try:
            jobs.book_job(msg)
        except (ConfigError, DuplicateJobError) as err:
            log.warning("job %s refused: %s", msg.job_id, err)

    @service.every(lambda: service.settings.dispatch_interval_s)
    async def job_cycle(ctx: Context) -> None:
        if service.settings.jobs_enabled:
            await jobs.cycle()

    service.include_router(_router(service, lm))
    service.include_router(planner_router(service))
    return service


def _router(service: Service[Settings, LoadManager], lm: LoadManager) -> APIRouter:
    net, jobs, clock, site = lm.net, lm.jobs, lm.clock, service.settings.site.id
    router = APIRouter(tags=["load_manager"])

    @router.get("/balance", response_model=Balance)
    def get_balance() -> dict[str, Any]:
        """The open settlement period's balance, the loads' states and today's KPIs."""
        return net.balance()

    @router.get("/kpis", response_model=Kpis)
    def get_kpis() -> dict[str, Any]:
        """Today's KPIs and the daily summaries of past days."""
        return net.kpis_view()

    @router.post("/jobs", status_code=201, response_model=JobView, responses=errors(409, 422))
    async def post_job(body: JobSubmission, _auth: TokenDep) -> dict[str, Any]:
        """Submit a deferrable job; it is planned at once and returned with its planned start."""
        now = clock()
        try:
            request = body.to_request(now, site, NAME)
        except (ValueError, ValidationError) as err:
            raise HTTPException(status_code=422, detail=str(err)) from err
        try:
            jobs.book_job(request)
        except ConfigError as err:
            raise HTTPException(status_code=422, detail=str(err)) from err
        except DuplicateJobError as err:
            raise HTTPException(status_code=409, detail=str(err)) from err
        if service.settings.jobs_enabled:
            await jobs.replan(now)
        return jobs.book.entries[request.job_id].to_dict()

    @router.get("/jobs", response_model=list[JobView])
    def get_jobs() -> list[dict[str, Any]]:
        """Every job with its status and plan."""
        return jobs.book.to_list()

    @router.get("/jobs/{job_id}", response_model=JobView, responses=errors(404))
    def get_job(job_id: str) -> dict[str, Any]:
        """One job."""
        entry = jobs.book.entries.get(job_id)
        if entry is None:
            raise HTTPException(status_code=404, detail=f"no job {job_id}")
        return entry.to_dict()

    @router.delete("/jobs/{job_id}", response_model=JobView, responses=errors(404, 409))
    async def delete_job(job_id: str, _auth: TokenDep) -> dict[str, Any]:
        """Cancel a job that has not started (404 unknown, 409 already started)."""
        try:
            return jobs.cancel(job_id).to_dict()
        except KeyError as err:
            raise HTTPException(status_code=404, detail=f"no job {job_id}") from err
        except ValueError as err:
            raise HTTPException(status_code=409, detail=str(err)) from err

    @router.get("/plan", response_model=JobPlan, responses=errors(404))
    def get_plan() -> dict[str, Any]:
        """The latest published job plan (404 before the first)."""
        if jobs.plan is None:
            raise HTTPException(status_code=404, detail="no plan yet")
        return jobs.plan

    @router.post("/plan", status_code=200, response_model=JobPlan)
    async def post_plan(_auth: TokenDep) -> dict[str, Any]:
        """Re-plan now."""
        return await jobs.replan(clock())

    return router
