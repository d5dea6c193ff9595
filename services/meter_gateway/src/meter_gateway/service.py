"""Wiring of the meter gateway: the `Gateway` state's device tasks, setpoints from the bus, REST."""

from __future__ import annotations

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
from meter_gateway.device import SOURCE, SPECS, DeviceRunner, GatewaySetpoints
from meter_gateway.device_map import ResolvedDevice, load_devices
from meter_gateway.gateway import Gateway, LinkFactory
from meter_gateway.settings import Settings


def build_service(
    settings: Settings,
    bus: Bus,
    devices: list[ResolvedDevice] | None = None,
    link_factory: LinkFactory | None = None,
    clock: Callable[[], datetime] = utcnow,
) -> Service[Settings, Gateway]:
    """The gateway service; `service.state` is its `Gateway`.

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
    service: Service[Settings, Gateway] = Service(SOURCE, settings, bus)
    gateway = service.state = Gateway(service, devices, link_factory, clock)
    service.declare_publishes(*SPECS.values(), topics.DEVICE_STATUS, topics.SETPOINT_ACK)
    service.on_startup(gateway.start)
    service.on_shutdown(gateway.stop)
    setpoints = serve_setpoints(
        service,
        GatewaySetpoints(gateway.runners, clock),
        lambda: service.settings.setpoint_ack_timeout_s,
    )

    router = APIRouter(tags=["devices"])

    def find(device_id: str, site_id: str | None) -> DeviceRunner:
        return gateway.runners[(setpoints.find_site(device_id, site_id), device_id)]

    @router.get("/devices", response_model=list[DeviceView])
    def list_devices() -> list[dict[str, object]]:
        """Every device with its state (ok / stale / unknown) and last reading."""
        return gateway.describe()

    @router.get("/devices/{device_id}", response_model=DeviceView, responses=errors(404, 409))
    def get_device(
        device_id: str, site_id: Annotated[str | None, Query()] = None
    ) -> dict[str, object]:
        """One device's state, SunSpec models, controls and last reading."""
        return find(device_id, site_id).describe()

    service.include_router(router)
    return service
