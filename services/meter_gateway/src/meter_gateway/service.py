"""Wiring: one poll task and one control task per device, setpoints from the bus and REST."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, Field

from derbus import topics
from derbus.bus.base import Bus
from derbus.http import TokenDep
from derbus.messages import Priority, SetpointCommand, SetpointTarget, utcnow
from derbus.messages.control import SETPOINT_UNITS
from derbus.service import Context, Service
from meter_gateway.config import ResolvedDevice, load_devices
from meter_gateway.device import SOURCE, SPECS, DeviceRunner, GatewayMetrics
from meter_gateway.link import LinkPool, ModbusLink
from meter_gateway.settings import Settings

log = logging.getLogger(__name__)

LinkFactory = Callable[[ResolvedDevice], ModbusLink]


class SetpointRequest(BaseModel):
    """Body of `POST /devices/{id}/setpoints` (the bus contract; unit defaults to the target's)."""

    target: SetpointTarget
    value: float
    ttl_s: float = Field(gt=0, le=86_400)
    priority: Priority = Priority.MANUAL
    unit: str | None = None
    setpoint_id: str | None = Field(default=None, min_length=1, max_length=100)


def build_service(
    settings: Settings,
    bus: Bus,
    devices: list[ResolvedDevice] | None = None,
    link_factory: LinkFactory | None = None,
) -> Service[Settings]:
    """The gateway service.

    Args:
        settings: service settings.
        bus: the bus.
        devices: the devices to run (default: loaded from `settings.devices_file`).
        link_factory: the Modbus link of a device (default: pymodbus clients; tests pass fakes).
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
    runners = {d.key: DeviceRunner(d, make_link(d), service, metrics) for d in devices}
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

    @service.on(topics.SETPOINT)
    async def on_setpoint(cmd: SetpointCommand, ctx: Context) -> None:
        runner = runners.get((ctx.site_id, ctx.device_id or ""))
        if runner is None:
            return  # another receiver's device (the simulator's, another gateway's)
        runner.submit(cmd)

    router = APIRouter(tags=["devices"])

    def find(device_id: str, site_id: str | None) -> DeviceRunner:
        matches = [
            r for (site, dev), r in runners.items()
            if dev == device_id and (site_id is None or site == site_id)
        ]  # fmt: skip
        if not matches:
            raise HTTPException(status_code=404, detail=f"no device {device_id!r}")
        if len(matches) > 1:
            raise HTTPException(
                status_code=409, detail=f"device {device_id!r} exists on several sites: site_id="
            )
        return matches[0]

    @router.get("/devices")
    def list_devices() -> list[dict[str, object]]:
        """Every device with its state (ok / stale / unknown) and last reading."""
        return [r.describe() for r in runners.values()]

    @router.get("/devices/{device_id}")
    def get_device(
        device_id: str, site_id: Annotated[str | None, Query()] = None
    ) -> dict[str, object]:
        """One device's state, SunSpec models, controls and last reading."""
        return find(device_id, site_id).describe()

    @router.post("/devices/{device_id}/setpoints")
    async def post_setpoint(
        device_id: str,
        body: SetpointRequest,
        _auth: TokenDep,
        site_id: Annotated[str | None, Query()] = None,
    ) -> dict[str, object]:
        """Send a setpoint (same contract as the bus); answers with its acknowledgement."""
        runner = find(device_id, site_id)
        try:
            cmd = SetpointCommand(
                ts=utcnow(), source="api", target=body.target, value=body.value,
                unit=body.unit or SETPOINT_UNITS[body.target], ttl_s=body.ttl_s,
                priority=body.priority, **({"setpoint_id": body.setpoint_id} if body.setpoint_id else {}),
            )  # fmt: skip
        except ValueError as err:
            raise HTTPException(status_code=422, detail=str(err)) from err
        future = runner.submit(cmd, want_ack=True)
        try:
            ack = await asyncio.wait_for(future, service.settings.setpoint_ack_timeout_s)
        except TimeoutError as err:
            raise HTTPException(status_code=504, detail="no acknowledgement in time") from err
        result: dict[str, object] = ack.model_dump(mode="json")
        return result

    service.include_router(router)
    return service
