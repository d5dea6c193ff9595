"""Wiring: one poll task and one control task per device, setpoints from the bus and REST."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query

from derbus import topics
from derbus.bus.base import Bus
from derbus.http import errors
from derbus.messages import utcnow
from derbus.service import Service
from derbus.setpoint_receiver import serve_setpoints
from meter_gateway.api_models import DeviceView
from meter_gateway.config import ResolvedDevice, load_devices
from meter_gateway.device import SOURCE, SPECS, DeviceRunner, GatewayMetrics, GatewaySetpoints
from meter_gateway.link import LinkPool, ModbusLink
from meter_gateway.settings import Settings

log = logging.getLogger(__name__)

LinkFactory = Callable[[ResolvedDevice], ModbusLink]


def build_service(
    settings: Settings,
    bus: Bus,
    devices: list[ResolvedDevice] | None = None,
    link_factory: LinkFactory | None = None,
    clock: Callable[[], datetime] = utcnow,
) -> Service[Settings]:
    """The gateway service.

    Args:
        settings: service settings.
        bus: the bus.
        devices: the devices to run (default: loaded from `settings.devices_file`).
        link_factory: the Modbus link of a device (default: pymodbus clients; tests pass fakes).
        clock: current UTC time for polls, setpoints and their TTLs (tests pass their own).
    """
    if devices is None:
        devices = (
            load_devices(settings.devices_file, settings.site.id) if settings.devices_file else []
        )
    service = Service(SOURCE, settings, bus)
    metrics = GatewayMetrics(service.metrics.registry)
    pool = LinkPool()

    def default_link(device: ResolvedDevice) -> ModbusLink:
        return pool.link_for(device.label, device.connection, device.timeout_s)

    make_link = link_factory or default_link
    runners = {d.key: DeviceRunner(d, make_link(d), service, metrics, clock) for d in devices}
    service.state["runners"] = runners
    tasks: list[asyncio.Task[None]] = []
    service.declare_publishes(*SPECS.values(), topics.DEVICE_STATUS, topics.SETPOINT_ACK)

    @service.on_startup
    async def start_devices() -> None:
        if not runners:
            log.warning("no devices configured (set GATEWAY_DEVICES_FILE)")
        for runner in runners.values():
            tasks.append(asyncio.create_task(runner.run_polling(), name=f"poll:{runner.label}"))
            if runner.device.controls:
                tasks.append(
                    asyncio.create_task(runner.run_control(), name=f"control:{runner.label}")
                )

    @service.on_shutdown
    async def stop_devices() -> None:
        pending = set(tasks)
        for _ in range(10):  # a cancellation can be lost in a library call: cancel again
            if not pending:
                break
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=1.0)
        if pending:
            log.error("%d device tasks did not stop", len(pending))
        tasks.clear()
        pool.close()

    setpoints = serve_setpoints(
        service, GatewaySetpoints(runners, clock), lambda: service.settings.setpoint_ack_timeout_s
    )

    router = APIRouter(tags=["devices"])

    def find(device_id: str, site_id: str | None) -> DeviceRunner:
        return runners[(setpoints.find_site(device_id, site_id), device_id)]

    @router.get("/devices", response_model=list[DeviceView])
    def list_devices() -> list[dict[str, object]]:
        """Every device with its state (ok / stale / unknown) and last reading."""
        return [r.describe() for r in runners.values()]

    @router.get("/devices/{device_id}", response_model=DeviceView, responses=errors(404, 409))
    def get_device(
        device_id: str, site_id: Annotated[str | None, Query()] = None
    ) -> dict[str, object]:
        """One device's state, SunSpec models, controls and last reading."""
        return find(device_id, site_id).describe()

    service.include_router(router)
    return service
