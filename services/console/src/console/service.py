"""Wiring of the console: bus topics -> ConsoleState, pushes to pages, REST reads, routes."""

from __future__ import annotations

from console.apis import Apis
from console.settings import Settings
from console.state import ConsoleState
from console.web import NAME, Pages, close_streams, router
from derbus import topics
from derbus.bus.base import Bus
from derbus.messages import (
    BatteryTelemetry,
    DeadLetter,
    FeederState,
    JobPlan,
    KpiReport,
    LoadTelemetry,
    MeterReading,
    PriceTelemetry,
    PvCurtailmentSet,
    PvTelemetry,
    ServiceStatus,
    SetpointAck,
    SetpointCommand,
    TimeSeries,
)
from derbus.service import Context, Service


async def refresh_apis(service: Service[Settings, ConsoleState], apis: Apis) -> None:
    """Read every service's /metrics, peak_shaving's limits and the voltage coordinator."""
    for name, (up, invalid) in (await apis.health()).items():
        service.state.set_api(name, up, invalid)
    rest = service.state.rest
    rest["peak_shaving.config"] = await apis.get_or_none("peak_shaving", "/config")
    rest["voltage.voltages"] = await apis.get_or_none("voltage_coordinator", "/voltages")
    rest["voltage.setpoints"] = await apis.get_or_none("voltage_coordinator", "/setpoints")


def build_service(settings: Settings, bus: Bus) -> Service[Settings, ConsoleState]:
    """The console: reads the whole bus, pushes changes to pages, sends setpoints from forms."""
    state = ConsoleState(settings)
    service: Service[Settings, ConsoleState] = Service(NAME, settings, bus, state=state)
    apis = Apis(settings.service_urls, settings.rest_timeout_s)
    service.declare_publishes(topics.SETPOINT)
    meter, battery = settings.meter_device_id, settings.battery_device_id

    @service.on(topics.METER, device_id=meter)
    def on_meter(msg: MeterReading, ctx: Context) -> None:
        state.on_meter(ctx.site_id, meter, msg)

    @service.on(topics.PV)
    def on_pv(msg: PvTelemetry, ctx: Context) -> None:
        state.on_pv(ctx.site_id, ctx.device_id or "pv", msg)

    @service.on(topics.BATTERY, device_id=battery)
    def on_battery(msg: BatteryTelemetry, ctx: Context) -> None:
        state.on_battery(ctx.site_id, battery, msg)

    @service.on(topics.LOAD)
    def on_load(msg: LoadTelemetry, ctx: Context) -> None:
        state.on_load(ctx.site_id, ctx.device_id or "load", msg)

    @service.on(topics.PRICE)
    def on_price(msg: PriceTelemetry, ctx: Context) -> None:
        state.on_price(ctx.site_id, ctx.device_id or "grid", msg)

    @service.on(topics.FORECAST)
    def on_forecast(msg: TimeSeries, ctx: Context) -> None:
        state.on_forecast(ctx.site_id, ctx.device_id or "load", msg)

    @service.on(topics.BATTERY_SCHEDULE, device_id=battery)
    def on_schedule(msg: TimeSeries, ctx: Context) -> None:
        state.on_schedule(ctx.site_id, msg)

    @service.on(topics.JOB_PLAN)
    def on_job_plan(msg: JobPlan, ctx: Context) -> None:
        state.on_job_plan(ctx.site_id, msg)

    @service.on(topics.KPI)
    def on_kpi(msg: KpiReport, ctx: Context) -> None:
        state.on_kpi(ctx.site_id, ctx.device_id or msg.name, msg)

    @service.on(topics.SETPOINT)
    def on_setpoint(msg: SetpointCommand, ctx: Context) -> None:
        state.on_setpoint(ctx.site_id, ctx.device_id or "", msg)

    @service.on(topics.SETPOINT_ACK)
    def on_ack(msg: SetpointAck, ctx: Context) -> None:
        state.on_ack(ctx.site_id, ctx.device_id or "", msg)

    @service.on(topics.SERVICE_STATUS)
    def on_status(msg: ServiceStatus, ctx: Context) -> None:
        state.on_status(msg, ctx.site_id)

    @service.on(topics.DEAD_LETTER)
    def on_dead_letter(msg: DeadLetter, ctx: Context) -> None:
        state.on_dead_letter(msg.service, ctx.site_id)

    @service.on(topics.FEEDER_STATE)
    def on_feeder(msg: FeederState, ctx: Context) -> None:
        state.on_feeder(ctx.site_id, msg)

    @service.on(topics.PV_CURTAILMENT)
    def on_curtailment(msg: PvCurtailmentSet, ctx: Context) -> None:
        state.on_curtailment(ctx.site_id, msg)

    @service.every(lambda: service.settings.push_interval_s)
    def push(ctx: Context) -> None:
        state.flush()

    @service.every(lambda: service.settings.rest_interval_s, run_at_start=True)
    async def read_apis(ctx: Context) -> None:
        await refresh_apis(service, apis)

    service.on_startup(apis.open)

    @service.on_shutdown
    async def stop() -> None:
        close_streams(state)
        await apis.close()

    service.include_router(router(Pages(service, apis)))
    return service
