"""Wiring of ev_charging: OCPP stations in, EV telemetry, sessions and prices out, setpoints in."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Body, HTTPException, Query
from pydantic import BaseModel, Field

from derbus import topics
from derbus.bus.base import Bus
from derbus.http import TokenDep, errors
from derbus.messages import (
    ChargingMode,
    EvChargerTelemetry,
    EvSession,
    MeterReading,
    PriceSeries,
    TimeSeries,
    UtcDatetime,
    utcnow,
)
from derbus.service import Context, Service
from derbus.setpoint_receiver import serve_setpoints
from ev_charging.charging import NAME, TARGET, EvCharging
from ev_charging.csms import CentralSystem
from ev_charging.settings import Settings


class StationInfo(BaseModel):
    """A station as the central system sees it."""

    station_id: str
    site_id: str
    connected: bool
    booted: bool
    protocol: str | None
    vendor: str | None
    model: str | None
    connectors: list[EvChargerTelemetry]


class OcppInfo(BaseModel):
    """The central system: where stations connect, what it refused."""

    url: str = Field(description="stations connect to <url>/<station id>")
    stations_connected: int
    frames_rejected: dict[str, int] = Field(description="CallErrors sent, by error code")
    connections_refused: dict[str, int] = Field(description="refused handshakes, by reason")


class SessionNeed(BaseModel):
    """What the user says about a running session (omitted fields stay as they are)."""

    departure: UtcDatetime | None = Field(default=None, description="when the vehicle leaves")
    energy_need_kwh: float | None = Field(
        default=None, ge=0, le=500, description="energy wanted by the departure, kWh"
    )
    mode: ChargingMode | None = None


def build_service(
    settings: Settings, bus: Bus, *, clock: Callable[[], datetime] = utcnow
) -> Service[Settings, EvCharging]:
    """The OCPP central system, smart charging and price publisher on a bus.

    `service.state` is the `EvCharging` (stations, connectors, sessions, prices); the
    WebSocket server is `service.state.csms` (its `port` once started).
    """
    service: Service[Settings, EvCharging] = Service(NAME, settings, bus)
    state = EvCharging(service, clock)
    service.state = state
    csms = CentralSystem(state)
    state.csms = csms
    service.declare_publishes(topics.EV_CHARGER, topics.EV_SESSION, topics.PRICE_SERIES)
    serve_setpoints(service, state, targets=(TARGET,))

    @service.on(topics.METER)
    async def on_meter(msg: MeterReading, ctx: Context) -> None:
        state.on_meter_reading(ctx.site_id, ctx.device_id or "", msg)

    @service.on(topics.FORECAST)
    async def on_forecast(msg: TimeSeries, ctx: Context) -> None:
        state.on_forecast(ctx.site_id, ctx.device_id or "", msg)

    @service.on(topics.PRICE_SERIES)
    async def on_price_series(msg: PriceSeries, ctx: Context) -> None:
        state.on_price_series(ctx.site_id, msg)

    @service.every(lambda: state.settings.expire_check_s)
    async def expire_setpoints(ctx: Context) -> None:
        await state.expire()

    @service.every(lambda: state.settings.replan_s)
    async def replan(ctx: Context) -> None:
        await state.replan_all()

    @service.every(5.0, run_at_start=True)
    async def prices(ctx: Context) -> None:
        await state.refresh_prices()

    @service.on_startup
    async def listen() -> None:
        await csms.start(settings.ocpp_host, settings.ocpp_port)

    @service.on_shutdown
    async def close() -> None:
        await csms.stop()
        await state.close()

    router = APIRouter(tags=["ev_charging"])

    @router.get("/ocpp", response_model=OcppInfo)
    def get_ocpp() -> OcppInfo:
        """Where stations connect, how many are connected, what was refused or answered CallError."""
        return OcppInfo(
            url=f"ws://{settings.ocpp_host}:{csms.port}",
            stations_connected=state.connected(),
            frames_rejected=dict(state.frames_rejected),
            connections_refused=dict(state.refused),
        )

    @router.get("/stations", response_model=list[StationInfo])
    def get_stations() -> list[StationInfo]:
        """Every known station with its connectors' latest telemetry."""
        return [station_info(state, s) for s in sorted(state.stations)]

    @router.get("/sessions", response_model=list[EvSession])
    def get_sessions() -> list[EvSession]:
        """Running sessions (plan, KPIs), then recently ended ones, newest first."""
        return state.sessions()

    @router.put("/sessions/{device_id}", response_model=EvSession, responses=errors(404))
    async def put_session(
        device_id: str,
        body: Annotated[SessionNeed, Body()],
        _auth: TokenDep,
        site_id: Annotated[str | None, Query()] = None,
    ) -> EvSession:
        """Set a running session's departure, energy need or mode; it is re-planned at once."""
        conn = state.find_session(device_id, site_id)
        if conn is None:
            raise HTTPException(status_code=404, detail=f"no running session on {device_id!r}")
        session = await state.set_need(conn, body.departure, body.energy_need_kwh, body.mode)
        return state.session_message(conn, session)

    @router.get("/prices/{site_id}", response_model=PriceSeries, responses=errors(404))
    def get_prices(site_id: str) -> PriceSeries:
        """The price series a site is planned with (404: none; see `stale`, `valid_until`)."""
        series = state.prices.series.get(site_id)
        if series is None:
            raise HTTPException(status_code=404, detail=f"no price series for {site_id!r}")
        return series

    service.include_router(router)
    return service


def station_info(state: EvCharging, station_id: str) -> StationInfo:
    """A station for `GET /stations`."""
    s = state.stations[station_id]
    return StationInfo(
        station_id=station_id,
        site_id=s.config.site_id,
        connected=s.link is not None,
        booted=s.booted,
        protocol=s.version,
        vendor=s.vendor,
        model=s.model,
        connectors=[state.telemetry(c) for c in s.connectors.values()],
    )
