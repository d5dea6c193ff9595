"""The gateway's state: one `DeviceRunner` per device, their poll/control tasks, shared links."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from meter_gateway.device import DeviceRunner, GatewayMetrics
from meter_gateway.device_map import ResolvedDevice
from meter_gateway.link import LinkPool, ModbusLink
from meter_gateway.settings import Settings

if TYPE_CHECKING:
    from derbus.service import Service

log = logging.getLogger(__name__)

LinkFactory = Callable[[ResolvedDevice], ModbusLink]
STOP_ROUNDS = 10
"""Cancellation rounds (1 s each) before device tasks that did not stop are reported."""


class Gateway:
    """`service.state` of the meter gateway: the devices it runs, keyed (site_id, device_id).

    Args:
        service: the service the runners publish through.
        devices: the devices to run.
        link_factory: the Modbus link of a device (default: pooled pymodbus clients, one per
            connection).
        clock: current UTC time for polls, setpoints and their TTLs.
    """

    def __init__(
        self,
        service: Service[Settings, Any],
        devices: list[ResolvedDevice],
        link_factory: LinkFactory | None,
        clock: Callable[[], datetime],
    ) -> None:
        self.metrics = GatewayMetrics(service.metrics.registry)
        self.pool = LinkPool()
        make_link = link_factory or self.pooled_link
        self.runners: dict[tuple[str, str], DeviceRunner] = {
            d.key: DeviceRunner(d, make_link(d), service, self.metrics, clock) for d in devices
        }
        self.tasks: list[asyncio.Task[None]] = []

    def pooled_link(self, device: ResolvedDevice) -> ModbusLink:
        """The pool's link for a device's connection."""
        return self.pool.link_for(device.label, device.connection, device.timeout_s)

    async def start(self) -> None:
        """Start each device's poll task (and control task when it has controls)."""
        if not self.runners:
            log.warning("no devices configured (set METER_GATEWAY_DEVICES_FILE)")
        for runner in self.runners.values():
            self.tasks.append(
                asyncio.create_task(runner.run_polling(), name=f"poll:{runner.label}")
            )
            if runner.device.controls:
                self.tasks.append(
                    asyncio.create_task(runner.run_control(), name=f"control:{runner.label}")
                )

    async def stop(self) -> None:
        """Cancel the device tasks (again while a library call swallows it) and close links."""
        pending = set(self.tasks)
        for _ in range(STOP_ROUNDS):
            if not pending:
                break
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=1.0)
        if pending:
            log.error("%d device tasks did not stop", len(pending))
        self.tasks.clear()
        self.pool.close()

    def describe(self) -> list[dict[str, object]]:
        """Every device with its state (ok / stale / unknown) and last reading."""
        return [r.describe() for r in self.runners.values()]
