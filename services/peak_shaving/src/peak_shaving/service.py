"""Wiring of peak_shaving: PCC readings → PMA → battery setpoints; forecasts → EMA → schedules."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query

from derbus import topics
from derbus.bus.base import Bus
from derbus.http import TokenDep, errors
from derbus.messages import (
    BatteryTelemetry,
    EvChargerTelemetry,
    MeterReading,
    PriceSeries,
    SetpointAck,
    TimeSeries,
    utcnow,
)
from derbus.service import Context, Service
from peak_shaving.api_models import KpisView, Replanning, ScheduleView
from peak_shaving.settings import Settings
from peak_shaving.state import NAME, PeakShaving


def bus_client_name(settings: Settings) -> str:
    """The service part of this instance's MQTT client id (`make_bus`'s `service`).

    `peak_shaving`, and for a replica with `site_shard` k/N `peak_shaving.shard-k-of-N`: replicas
    that differ only in `PEAK_SHAVING_SITE_SHARD` must not share a client id, or the broker disconnects each
    for the other, over and over (seen on Mosquitto: ~200 reconnects a second, neither ready).
    """
    if not settings.site_shard:
        return NAME
    index, count = settings.site_shard.split("/")
    return f"{NAME}.shard-{index}-of-{count}"


def build_service(settings: Settings, bus: Bus) -> Service[Settings, PeakShaving]:
    """The peak_shaving service on a bus (MqttBus in production, InMemoryBus in tests).

    `service.state` is its `PeakShaving` (controller, optimiser, plans).
    """
    service: Service[Settings, PeakShaving] = Service(NAME, settings, bus)
    if settings.site_shard:
        index, count = (int(part) for part in settings.site_shard.split("/"))
        service.shard_sites(index, count)
    ps = service.state = PeakShaving(service)
    service.declare_publishes(topics.SETPOINT, topics.BATTERY_SCHEDULE, topics.KPI)
    service.on_config_change(ps.reconfigure)
    service.on_startup(ps.start)
    service.on_shutdown(ps.stop)

    @service.on(topics.METER, device_id=settings.meter_device_id)
    async def on_pcc_reading(msg: MeterReading, ctx: Context) -> None:
        with ps.timing(ctx.site_id):
            for device_id, command in ps.commands(ctx.site_id, msg):
                await ctx.publish(topics.SETPOINT, command, device_id=device_id)

    @service.on(topics.BATTERY, device_id=settings.battery_device_id)
    async def on_battery(msg: BatteryTelemetry, ctx: Context) -> None:
        ps.on_battery(ctx.site_id, msg)

    @service.on(topics.EV_CHARGER)
    async def on_ev_charger(msg: EvChargerTelemetry, ctx: Context) -> None:
        ps.ev.on_telemetry(ctx.site_id, ctx.device_id or "", msg)

    @service.on(topics.FORECAST)
    async def on_forecast(msg: TimeSeries, ctx: Context) -> None:
        ps.on_forecast(ctx.site_id, ctx.device_id, msg)

    @service.on(topics.BATTERY_SCHEDULE, device_id=settings.battery_device_id)
    async def on_schedule(msg: TimeSeries, ctx: Context) -> None:
        ps.on_schedule(ctx.site_id, msg)

    @service.on(topics.PRICE_SERIES, device_id="grid")
    async def on_prices(msg: PriceSeries, ctx: Context) -> None:
        ps.on_prices(ctx.site_id, msg)

    @service.on(topics.SETPOINT_ACK, device_id=settings.battery_device_id)
    async def on_ack(msg: SetpointAck, ctx: Context) -> None:
        ps.on_ack(ctx.site_id, msg)

    @service.every(lambda: ps.settings.plan_interval_s)
    async def replan_all(ctx: Context) -> None:
        await ps.replan_all()

    @service.every(lambda: ps.settings.kpi_interval_s)
    async def publish_kpis(ctx: Context) -> None:
        for site_id, report in ps.kpi_reports(utcnow()):
            await ctx.publish(topics.KPI, report, site_id=site_id, device_id=NAME)

    service.include_router(_router(ps))
    return service


def _router(ps: PeakShaving) -> APIRouter:
    router = APIRouter(tags=["peak_shaving"])

    @router.get("/schedule", response_model=ScheduleView, responses=errors(404))
    def get_schedule(
        site_id: Annotated[str | None, Query(description="site (default: SITE_ID)")] = None,
    ) -> dict[str, Any]:
        """The current battery schedule of a site, with its solve status and objective terms."""
        site = site_id or ps.settings.site.id
        plan = ps.sites.get(site)
        if plan is None or plan.schedule is None:
            raise HTTPException(status_code=404, detail=f"no schedule for site {site} yet")
        body: dict[str, Any] = plan.schedule.model_dump(mode="json")
        body["site_id"] = site
        body["followed_by_pma"] = plan.schedule_valid
        return body

    @router.get("/kpis", response_model=KpisView, responses=errors(404))
    def get_kpis(
        site_id: Annotated[str | None, Query(description="site (default: SITE_ID)")] = None,
    ) -> dict[str, Any]:
        """The PMA's KPIs of a site: time on limit, violations, month peak."""
        site = site_id or ps.settings.site.id
        if site not in ps.controller.sites():
            raise HTTPException(status_code=404, detail=f"no readings for site {site} yet")
        return {"site_id": site, "values": ps.controller.kpis(site)}

    @router.post("/replan", status_code=202, response_model=Replanning, responses=errors(404))
    async def post_replan(
        _auth: TokenDep,
        site_id: Annotated[str | None, Query(description="site (default: every site)")] = None,
    ) -> dict[str, list[str]]:
        """Re-solve the schedule now (in the background); 404 for a site not seen yet."""
        if site_id and site_id not in ps.sites:
            raise HTTPException(status_code=404, detail=f"no site {site_id} seen yet")
        sites = [site_id] if site_id else list(ps.sites)
        for site in sites:
            ps.request_replan(site)
        return {"replanning": sites}

    return router
