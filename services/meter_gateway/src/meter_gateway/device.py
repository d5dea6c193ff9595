"""One device at run time: its poll loop (read, decode, publish, stale/ok) and its control loop.

`GatewaySetpoints` makes the gateway's devices a setpoint receiver for
`derbus.setpoint_receiver.serve_setpoints`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge

from derbus import topics
from derbus.errors import DeviceError, SetpointRejectedError
from derbus.messages import (
    DeviceStatus,
    SetpointAck,
    SetpointCommand,
    SetpointTarget,
    Telemetry,
    utcnow,
)
from derbus.service import Service
from derbus.setpoint_receiver import done
from derbus.setpoints import SetpointArbiter, TargetLimits
from meter_gateway import sunspec
from meter_gateway.control import ControlPlan, ControlState, RegisterControl, Write, decide
from meter_gateway.device_map import ResolvedDevice
from meter_gateway.health import DeviceHealth, next_poll_delay_s
from meter_gateway.link import ModbusLink
from meter_gateway.readings import ReadPoint, build_telemetry, decode_points
from meter_gateway.registers import ReadBlock, plan_reads
from meter_gateway.settings import Settings

log = logging.getLogger(__name__)

SOURCE = "meter_gateway"

SPECS: dict[str, topics.TopicSpec[Any]] = {
    "meter": topics.METER,
    "pv": topics.PV,
    "battery": topics.BATTERY,
    "load": topics.LOAD,
}
"""The catalogue topic each device kind publishes on."""


class GatewayMetrics:
    """The gateway's own Prometheus metrics, on the service's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.stale = Gauge(
            "derbus_meter_gateway_device_stale",
            "1 while a device is stale",
            ["device"],
            registry=registry,
        )
        self.registers_read = Counter(
            "derbus_meter_gateway_registers_read_total",
            "Registers read",
            ["device"],
            registry=registry,
        )
        self.requests = Counter(
            "derbus_meter_gateway_read_requests_total",
            "Modbus read requests",
            ["device"],
            registry=registry,
        )
        self.poll_failures = Counter(
            "derbus_meter_gateway_poll_failures_total",
            "Failed polls",
            ["device"],
            registry=registry,
        )
        self.readings = Counter(
            "derbus_meter_gateway_readings_published_total",
            "Readings published",
            ["device"],
            registry=registry,
        )
        self.dropped = Counter(
            "derbus_meter_gateway_values_dropped_total",
            "Decoded values not published (NaN/inf, out of plausible range, refused)",
            ["device", "field", "reason"],
            registry=registry,
        )
        self.setpoint_writes = Counter(
            "derbus_meter_gateway_setpoint_writes_total",
            "Control writes (value, refresh, revert) by result",
            ["device", "target", "action", "result"],
            registry=registry,
        )


@dataclass
class Pending:
    """A setpoint waiting for the control loop, with the future of its first ack."""

    cmd: SetpointCommand
    future: asyncio.Future[SetpointAck]


class DeviceRunner:
    """Polls one device and writes its setpoints.

    Args:
        device: the resolved device.
        link: its Modbus link.
        service: the service it publishes through.
        metrics: the gateway metrics.
        clock: current UTC time (tests may pass their own).
    """

    def __init__(
        self,
        device: ResolvedDevice,
        link: ModbusLink,
        service: Service[Settings],
        metrics: GatewayMetrics,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.device = device
        self.link = link
        self.service = service
        self.metrics = metrics
        self.clock = clock
        self.health = DeviceHealth(device.stale_after_failures)
        self.points: list[ReadPoint] | None = None
        self.blocks: list[ReadBlock] = []
        self.models: list[sunspec.SunSpecModel] = []
        self.plans: dict[SetpointTarget, ControlPlan] = {}
        self.arbiter = SetpointArbiter(
            source=SOURCE, limits={c.target: TargetLimits(c.min, c.max) for c in device.controls}
        )
        self.control: dict[SetpointTarget, ControlState] = {}
        self.inbox: asyncio.Queue[Pending] = asyncio.Queue()
        self.wake = asyncio.Event()
        self.last_reading: Telemetry | None = None
        self._warned: set[tuple[str, str]] = set()
        self.label = device.label
        self.metrics.stale.labels(device=self.label).set(0)
        if not device.sunspec:
            self._set_points([ReadPoint(p) for p in device.registers])
            self.plans = self._register_plans()

    # --- polling -------------------------------------------------------------------------------
    def _register_plans(self) -> dict[SetpointTarget, ControlPlan]:
        return {c.target: RegisterControl(c) for c in self.device.controls if c.write is not None}

    def _set_points(self, points: list[ReadPoint]) -> None:
        spans = [s for rp in points for s in rp.spans()]
        self.blocks = plan_reads(
            spans, self.device.max_read_registers, self.device.max_gap_registers
        )
        self.points = points

    async def _discover(self) -> None:
        base, models = await sunspec.discover(
            self.link, self.device.unit_id, self.device.sunspec_base
        )
        points = sunspec.read_points(self.device, models)
        plans = self._register_plans()
        plans.update(await sunspec.build_controls(self.link, self.device, models))
        self.models = models
        self.plans = plans
        self._set_points(points)
        log.info(
            "%s: SunSpec at %d, models %s",
            self.label,
            base,
            ", ".join(str(m.model_id) for m in models),
        )

    async def poll_once(self) -> bool:
        """One poll: read the blocks, decode, publish; update health. True when it succeeded."""
        now = self.clock()
        try:
            if self.points is None:
                await self._discover()
            assert self.points is not None
            raw: dict[ReadBlock, list[int]] = {}
            for block in self.blocks:
                raw[block] = await self.link.read(
                    block.function, block.address, block.count, self.device.unit_id
                )
                self.metrics.requests.labels(device=self.label).inc()
                self.metrics.registers_read.labels(device=self.label).inc(block.count)
            values, drops = decode_points(self.points, raw)
        except DeviceError as err:
            await self._failed(str(err))
            return False
        message, refused = build_telemetry(
            self.device.kind, values, now, SOURCE, self.device.load_kind
        )
        warned = self._warned
        self._warned = set()
        for drop in drops + refused:
            self.metrics.dropped.labels(
                device=self.label, field=drop.field, reason=drop.reason
            ).inc()
            key = (drop.field, drop.reason)
            if key not in warned:  # warn once per run of the same drop; the counter counts all
                log.warning(
                    "%s: %s dropped (%s): %s", self.label, drop.field, drop.reason, drop.detail
                )
            self._warned.add(key)
        if message is not None:
            await self.service.publish(
                SPECS[self.device.kind],
                message,
                site_id=self.device.site_id,
                device_id=self.device.id,
            )
            self.metrics.readings.labels(device=self.label).inc()
            self.last_reading = message
        if self.health.success(now) is not None:
            self.metrics.stale.labels(device=self.label).set(0)
            log.info("%s: ok", self.label)
            await self._publish_status(now)
        return True

    async def _failed(self, reason: str) -> None:
        self.metrics.poll_failures.labels(device=self.label).inc()
        first = self.health.consecutive_failures == 0
        changed = self.health.failure(reason)
        if first:
            log.warning("%s: poll failed: %s", self.label, reason)
        if changed == "stale":
            self.metrics.stale.labels(device=self.label).set(1)
            log.warning(
                "%s: stale after %d failed polls: %s",
                self.label,
                self.health.consecutive_failures,
                reason,
            )
            if self.device.sunspec:
                self.points = None  # rediscover: the device may come back with another layout
            await self._publish_status(self.clock())

    async def _publish_status(self, now: datetime) -> None:
        state: Literal["ok", "stale"] = "stale" if self.health.state == "stale" else "ok"
        status = DeviceStatus(
            ts=now,
            source=SOURCE,
            device_id=self.device.id,
            state=state,
            consecutive_failures=self.health.consecutive_failures,
            last_ok=self.health.last_ok,
            reason=self.health.last_error,
        )
        await self.service.publish(
            topics.DEVICE_STATUS, status, site_id=self.device.site_id, device_id=self.device.id
        )

    async def run_polling(self) -> None:
        """Poll forever on the device's own schedule, backing off while it fails."""
        while True:
            started = time.monotonic()
            await self.poll_once()
            delay = next_poll_delay_s(
                self.device.poll_interval_s,
                self.health.consecutive_failures,
                self.service.settings.retry_backoff_max_s,
            )
            await asyncio.sleep(max(0.0, delay - (time.monotonic() - started)))

    # --- control -------------------------------------------------------------------------------
    def submit(self, cmd: SetpointCommand) -> asyncio.Future[SetpointAck]:
        """Queue a setpoint for the control loop; the future resolves with its first ack."""
        future: asyncio.Future[SetpointAck] = asyncio.get_running_loop().create_future()
        self.inbox.put_nowait(Pending(cmd, future))
        self.wake.set()
        return future

    async def run_control(self) -> None:
        """Handle setpoints, expiries, refreshes and reverts forever."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.service.settings.control_tick_s):
                    await self.wake.wait()
            self.wake.clear()
            await self.control_step()

    async def control_step(self) -> None:
        """One control tick: expired setpoints, new ones, then bring registers in line."""
        now = self.clock()
        for ack in self.arbiter.expire(now):
            await self.publish_ack(ack)
        while not self.inbox.empty():
            await self._handle(self.inbox.get_nowait(), now)
        await self._reconcile(now)

    async def _handle(self, pending: Pending, now: datetime) -> None:
        """Check, write (when it would be in force), then let the arbiter take it.

        The device write comes before `submit`, so a write the device refuses leaves the
        setpoints already held untouched: the command is `rejected` and nothing is superseded.
        """
        cmd = pending.cmd
        reason = self.arbiter.check(cmd, now)
        if reason is None and self.arbiter.holder(cmd, now) is None:
            error = await self._apply(cmd.target, cmd.value, now, "write")
            if error is not None:
                reason = f"device write failed: {error}"
        acks = [self.arbiter.reject(cmd, now, reason)] if reason else self.arbiter.submit(cmd, now)
        await self.publish_ack(acks[0])
        if not pending.future.done():
            pending.future.set_result(acks[0])
        for ack in acks[1:]:
            await self.publish_ack(ack)

    async def publish_ack(self, ack: SetpointAck) -> None:
        """Publish an acknowledgement on this device's ack topic."""
        await self.service.publish(
            topics.SETPOINT_ACK, ack, site_id=self.device.site_id, device_id=self.device.id
        )

    async def _write_and_confirm(self, writes: list[Write]) -> None:
        for w in writes:
            await self.link.write(w.address, list(w.registers), self.device.unit_id)
        for w in writes:
            back = await self.link.read("holding", w.address, len(w.registers), self.device.unit_id)
            if tuple(back) != w.registers:
                raise DeviceError(f"read back {back} at {w.address}, wrote {list(w.registers)}")

    async def _apply(
        self, target: SetpointTarget, value: float | None, now: datetime, action: str
    ) -> str | None:
        """Write a value (None: revert) and read it back; the error text, or None when done."""
        plan = self.plans.get(target)
        if plan is None:
            reason = "device not ready (not discovered yet or offline)"
        else:
            try:
                writes = plan.revert() if value is None else plan.writes(value)
                await self._write_and_confirm(writes)
            except (DeviceError, SetpointRejectedError) as err:
                reason = str(err)
            else:
                self.control[target] = ControlState(applied=value, written_at=now)
                self.metrics.setpoint_writes.labels(
                    device=self.label, target=target, action=action, result="ok"
                ).inc()
                return None
        self.metrics.setpoint_writes.labels(
            device=self.label, target=target, action=action, result="failed"
        ).inc()
        log.warning("%s: %s %s failed: %s", self.label, action, target, reason)
        return reason

    async def _reconcile(self, now: datetime) -> None:
        for target, plan in self.plans.items():
            desired = self.arbiter.value(target, now)
            state = self.control.get(target, ControlState())
            action = decide(desired, state, now, plan.refresh_s)
            if action is not None:
                await self._apply(target, desired, now, action)

    # --- introspection -------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """The device's state for the REST API."""
        now = self.clock()
        return {
            "id": self.device.id,
            "site_id": self.device.site_id,
            "kind": self.device.kind,
            "state": self.health.state,
            "consecutive_failures": self.health.consecutive_failures,
            "last_ok": self.health.last_ok.isoformat() if self.health.last_ok else None,
            "last_error": self.health.last_error,
            "sunspec_models": [m.model_id for m in self.models],
            "read_requests_per_poll": len(self.blocks),
            "controls": {
                c.target: {
                    "min": c.min,
                    "max": c.max,
                    "active": self.arbiter.value(c.target, now),
                    "applied": self.control.get(c.target, ControlState()).applied,
                }
                for c in self.device.controls
            },
            "last_reading": self.last_reading.model_dump(mode="json")
            if self.last_reading
            else None,
        }


@dataclass
class GatewaySetpoints:
    """The gateway's devices as a setpoint receiver (`derbus.setpoint_receiver`).

    Args:
        runners: the devices by (site id, device id).
        clock: current UTC time (stamps REST commands and rejections).
    """

    runners: dict[tuple[str, str], DeviceRunner]
    clock: Callable[[], datetime] = utcnow
    _by_site: dict[str, set[str]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        for site_id, device_id in self.runners:
            self._by_site.setdefault(site_id, set()).add(device_id)

    @property
    def source(self) -> str:
        """Written in the acks."""
        return SOURCE

    def now(self) -> datetime:
        """The gateway's time."""
        return self.clock()

    def sites(self) -> Iterable[str]:
        """The sites of the configured devices."""
        return self._by_site.keys()

    def devices(self, site_id: str) -> Collection[str] | None:
        """The configured devices of a site (None: no device of this gateway is there)."""
        return self._by_site.get(site_id)

    async def submit(
        self, site_id: str, device_id: str, cmd: SetpointCommand
    ) -> asyncio.Future[SetpointAck]:
        """Queue the command for the device's control loop (refused at once without controls)."""
        runner = self.runners[(site_id, device_id)]
        if not runner.device.controls:  # no control loop runs for it: answer here
            now = self.clock()
            reason = runner.arbiter.check(cmd, now) or "the device takes no setpoints"
            ack = runner.arbiter.reject(cmd, now, reason)
            await runner.publish_ack(ack)
            return done(ack)
        return runner.submit(cmd)
