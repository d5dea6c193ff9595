"""Wiring of the edge simulator: the `Simulator` state, its setpoint receiver, step task and REST routes."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, HTTPException

from derbus import topics
from derbus.bus.base import Bus
from derbus.http import errors
from derbus.messages import ReplayRequest
from derbus.service import Context, Service
from derbus.setpoint_receiver import serve_setpoints
from edge_simulator.api_models import SiteRecord, Sites
from edge_simulator.control import CONTROLLABLE, SimSetpoints
from edge_simulator.settings import Settings
from edge_simulator.sim_config import SimConfig
from edge_simulator.simulator import (
    SERVICE_NAME,
    Clock,
    SimClock,
    Simulator,
    build_fleet,
    resolve_config,
)

__all__ = ["SERVICE_NAME", "SimClock", "build_fleet", "build_service", "resolve_config"]

POLL_S = 0.02
"""How often the step task looks for due steps and setpoint kicks, wall seconds."""


def _router(sim: Simulator) -> APIRouter:
    router = APIRouter(tags=["sites"])
    fleet = sim.fleet

    @router.get("/sites", response_model=Sites)
    def list_sites() -> dict[str, Any]:
        """The simulated sites with their ratings, and the simulated time of the last step."""
        return {
            "sim_time": sim.last.ts.isoformat() if sim.last else None,
            "steps": sim.steps,
            "sites": [
                {
                    "site_id": sid,
                    "pv_capacity_kw": float(fleet.pv_capacity_kw[i]),
                    "battery_capacity_kwh": float(fleet.battery_capacity_kwh[i]),
                    "battery_max_charge_kw": float(fleet.battery_max_charge_kw[i]),
                    "battery_max_discharge_kw": float(fleet.battery_max_discharge_kw[i]),
                    "modbus_unit": i + 1 if i < 247 else None,
                }
                for i, sid in enumerate(fleet.ids)
            ],
        }

    @router.get("/sites/{site_id}", response_model=SiteRecord, responses=errors(404))
    def site_state(site_id: str) -> dict[str, Any]:
        """The latest nested record of a site (404 for an unknown site or before the first step)."""
        index = fleet.index.get(site_id)
        if index is None:
            raise HTTPException(status_code=404, detail=f"unknown site {site_id}")
        if sim.view is None:
            raise HTTPException(status_code=404, detail="no step yet")
        return sim.view.record(index, site_id)

    return router


def build_service(
    settings: Settings,
    bus: Bus,
    *,
    clock: Clock | None = None,
    config: SimConfig | None = None,
) -> Service[Settings, Simulator]:
    """The edge simulator service; `service.state` is its `Simulator`.

    Args:
        settings: service settings.
        bus: the bus to publish on.
        clock: simulated time source (default: `SimClock(settings.start_time, settings.speed)`).
        config: model configuration (default: `settings.config_file` or the defaults).
    """
    config = config or resolve_config(settings)
    clock = clock or SimClock(settings.start_time, settings.speed)
    service: Service[Settings, Simulator] = Service(SERVICE_NAME, settings, bus)
    sim = service.state = Simulator(service, build_fleet(settings, config, clock()), clock)
    service.declare_publishes(
        topics.METER, topics.PV, topics.BATTERY, topics.LOAD, topics.PRICE, topics.SETPOINT_ACK
    )
    serve_setpoints(
        service,
        SimSetpoints(sim.controls, clock, sim.publish_acks, sim.applied),
        targets={t for targets in CONTROLLABLE.values() for t in targets},
    )
    service.include_router(_router(sim))

    @service.on(topics.REPLAY_REQUEST)
    async def replay(request: ReplayRequest, ctx: Context) -> None:
        assert ctx.ids is not None
        await sim.replay(ctx.ids.site_id, ctx.ids.device_id, request.from_seq, request.to_seq)

    @service.every(lambda: min(POLL_S, service.settings.interval_s), run_at_start=True)
    async def tick(_ctx: Context) -> None:
        await sim.tick(time.time())

    @service.on_startup
    async def start_extras() -> None:
        if settings.enable_influxdb:
            from edge_simulator.influx import InfluxWriter

            sim.influx = InfluxWriter(settings.influxdb)
        if settings.modbus_port is not None:
            from edge_simulator.modbus import start_modbus

            sim.modbus, sim.modbus_port = await start_modbus(sim)
        if settings.ocpp.url is not None:
            from edge_simulator.ocpp_cp import OcppChargePoints

            sim.ocpp = OcppChargePoints(settings.ocpp)
            await sim.ocpp.start(list(sim.fleet.ids))

    service.on_shutdown(sim.close)
    return service
