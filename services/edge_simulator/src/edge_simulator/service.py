"""Wiring of the edge simulator: steps on a clock, telemetry out, setpoints in, Modbus, InfluxDB."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, HTTPException
from prometheus_client import Counter

from derbus import topics
from derbus.bus.base import Bus
from derbus.errors import StorageError
from derbus.messages import ReplayRequest
from derbus.service import Context, Service
from derbus.setpoint_receiver import serve_setpoints
from derbus.topics import TopicIds
from edge_simulator.config import SimConfig, load_sim_config
from edge_simulator.control import CONTROLLABLE, AckOut, Controls, SimSetpoints
from edge_simulator.fleet import Fleet, Location, StepResult
from edge_simulator.output import StepView
from edge_simulator.replay import load_profile
from edge_simulator.resend import SentBuffer
from edge_simulator.settings import Settings
from edge_simulator.wire import DEVICES, encode_step

log = logging.getLogger(__name__)

SERVICE_NAME = "edge_simulator"
POLL_S = 0.02
"""How often the step task looks for due steps and setpoint kicks, wall seconds."""

YIELD_EVERY_SITES = 100
"""While publishing a step, give the event loop a turn after this many sites."""

Clock = Callable[[], datetime]


@dataclass
class SimClock:
    """Simulated time: `start + (wall - wall at creation) * speed`.

    Args:
        start: the simulated instant at creation (None = the wall time then).
        speed: simulated seconds per wall second.
        wall: the wall clock, seconds since the epoch (injectable for tests).
    """

    start: datetime | None = None
    speed: float = 1.0
    wall: Callable[[], float] = time.time
    _wall0: float = field(init=False)
    _start: datetime = field(init=False)

    def __post_init__(self) -> None:
        self._wall0 = self.wall()
        self._start = self.start or datetime.fromtimestamp(self._wall0, UTC)

    def __call__(self) -> datetime:
        return self._start + timedelta(seconds=(self.wall() - self._wall0) * self.speed)


def resolve_config(settings: Settings) -> SimConfig:
    """The model configuration: the config file (or defaults) with the replay settings applied."""
    config = load_sim_config(settings.config_file) if settings.config_file else SimConfig()
    if settings.replay_file is not None:
        replay = config.replay.model_copy(
            update={
                "file": settings.replay_file,
                "load_column": settings.replay_load_column or config.replay.load_column,
                "pv_column": settings.replay_pv_column or config.replay.pv_column,
            }
        )
        if not (replay.load_column or replay.pv_column):
            replay = replay.model_copy(update={"load_column": "h0-a_load_pu"})
        config = config.model_copy(update={"replay": replay})
    return config


def build_fleet(settings: Settings, config: SimConfig, start: datetime) -> Fleet:
    """The simulated sites for these settings (location from `SITE_*`)."""
    site = settings.site
    replay = config.replay
    load_profile_ = pv_profile = None
    if replay.file is not None:
        if replay.load_column:
            load_profile_ = load_profile(replay.file, replay.load_column)
        if replay.pv_column:
            pv_profile = load_profile(replay.file, replay.pv_column)
    return Fleet(
        config=config,
        location=Location(site.latitude, site.longitude, site.timezone),
        n_sites=settings.sites,
        seed=settings.seed,
        start=start,
        site_id=site.id,
        load_profile=load_profile_,
        pv_profile=pv_profile,
        first_site=settings.first_site,
    )


async def publish_acks(service: Service[Any, Any], fleet: Fleet, acks: Iterable[AckOut]) -> None:
    """Publish setpoint acknowledgements on the bus (site and device of each ack)."""
    for a in acks:
        await service.publish(
            topics.SETPOINT_ACK, a.ack, site_id=fleet.ids[a.site_index], device_id=a.device_id
        )


@dataclass
class SimState:
    """The run-time state of the service (what the REST API and the Modbus server read)."""

    fleet: Fleet
    controls: Controls
    clock: Clock
    last: StepResult | None = None
    view: StepView | None = None
    steps: int = 0
    dirty: set[int] = field(default_factory=set)
    next_due_wall: float = 0.0
    last_kick_wall: float = 0.0
    listeners: list[Callable[[StepResult], None]] = field(default_factory=list)
    sent: SentBuffer | None = None


def _router(sim: SimState) -> APIRouter:
    router = APIRouter(tags=["sites"])
    fleet = sim.fleet

    @router.get("/sites")
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

    @router.get("/sites/{site_id}")
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
) -> Service[Settings]:
    """The edge simulator service.

    Args:
        settings: service settings.
        bus: the bus to publish on.
        clock: simulated time source (default: `SimClock(settings.start_time, settings.speed)`).
        config: model configuration (default: `settings.config_file` or the defaults).
    """
    config = config or resolve_config(settings)
    clock = clock or SimClock(settings.start_time, settings.speed)
    fleet = build_fleet(settings, config, clock())
    sim = SimState(fleet, Controls(fleet, SERVICE_NAME), clock)
    sim.sent = sent_buffer = SentBuffer(fleet.n_sites, int(settings.replay_buffer_mb * 2**20))
    service = Service(SERVICE_NAME, settings, bus)
    service.state["sim"] = sim
    service.declare_publishes(
        topics.METER, topics.PV, topics.BATTERY, topics.LOAD, topics.PRICE, topics.SETPOINT_ACK
    )
    replayed = Counter(
        "derbus_edge_replayed_readings_total", "Readings published again on a replay request",
        registry=service.metrics.registry,
    )  # fmt: skip
    replay_missed = Counter(
        "derbus_edge_replay_missed_readings_total",
        "Readings asked for again that had left the buffer (lost for good)",
        registry=service.metrics.registry,
    )
    influx: list[Any] = []

    async def publish_acks_(acks: Iterable[AckOut]) -> None:
        await publish_acks(service, fleet, acks)

    devices = [d for d in DEVICES if d.device_id in settings.devices]
    root = service.root
    topic_table = [
        [d.spec.topic(sid, d.device_id, root=root) for sid in fleet.ids] for d in devices
    ]
    sent = [service.metrics.messages_out.labels(topic=d.spec.key) for d in devices]

    async def step(sites: Iterable[int] | None = None) -> StepResult:
        """Advance the fleet to the clock's now; publish every site's readings (or `sites`)."""
        now = clock()
        if sim.steps == 0:  # first pvlib import and day of sky: off the loop, /healthz answers
            await service.run_blocking(fleet.sky.at, now)
        await publish_acks_(sim.controls.expire(now))
        result = fleet.step(now, ovr=sim.controls.overrides(now))
        view = StepView(result)
        sim.last, sim.view = result, view
        sim.steps += 1
        for listener in sim.listeners:
            listener(result)
        chosen = list(range(fleet.n_sites)) if sites is None else sorted(sites)
        await publish_step(result, chosen)
        if influx:
            points = [
                (o.spec, TopicIds(fleet.ids[i], o.device_id), o.message)
                for i in chosen
                for o in view.messages(i, SERVICE_NAME)
                if o.device_id in settings.devices
            ]
            try:
                await service.run_blocking(influx[0].write, points)
            except StorageError as err:
                await service.set_degraded("influxdb", str(err))
            else:
                await service.clear_degraded("influxdb")
        return result

    async def publish_step(result: StepResult, chosen: list[int]) -> None:
        """Publish the step's telemetry, site by site (devices in contract order).

        The payloads come from `wire.encode_step` (no pydantic model per message); the bus gets
        one call per message, and the event loop a turn every `YIELD_EVERY_SITES` sites.
        """
        every = None if len(chosen) == fleet.n_sites else chosen
        seqs = sent_buffer.number(chosen)
        payloads = encode_step(result, SERVICE_NAME, devices, every, seqs.tolist())
        sent_buffer.add(chosen, seqs, payloads)
        publish = service.bus.publish
        specs = [(d.spec.qos, d.spec.retain) for d in devices]
        for j, i in enumerate(chosen):
            for k, (qos, retain) in enumerate(specs):
                await publish(topic_table[k][i], payloads[k][j], qos=qos, retain=retain)
            if j % YIELD_EVERY_SITES == YIELD_EVERY_SITES - 1:
                await asyncio.sleep(0)
        for counter in sent:
            counter.inc(len(chosen))

    service.state["step"] = step
    device_index = {d.device_id: k for k, d in enumerate(devices)}

    @service.on(topics.REPLAY_REQUEST)
    async def replay(request: ReplayRequest, ctx: Context) -> None:
        """Publish a stream's held readings from_seq..to_seq again (same payloads, not retained)."""
        assert ctx.ids is not None
        site = fleet.index.get(ctx.ids.site_id)
        k = device_index.get(ctx.ids.device_id)
        if site is None or k is None:
            return  # not a stream of this simulator (another shard's, or another edge's)
        found = sent_buffer.find(site, k, request.from_seq, request.to_seq)
        spec = devices[k].spec
        for payload in found:
            await service.bus.publish(topic_table[k][site], payload, qos=spec.qos, retain=False)
        replayed.inc(len(found))
        missed = request.to_seq - request.from_seq + 1 - len(found)
        if missed > 0:
            replay_missed.inc(missed)
            log.warning(
                "replay of %s/%s %d..%d: %d readings no longer held", ctx.ids.site_id,
                ctx.ids.device_id, request.from_seq, request.to_seq, missed,
            )  # fmt: skip

    service.include_router(_router(sim))

    def schedule_next(wall: float) -> None:
        interval = service.settings.interval_s
        if service.settings.align_to_clock:
            sim.next_due_wall = (math.floor(wall / interval) + 1) * interval
        else:
            sim.next_due_wall = wall + interval

    def applied(index: int) -> None:
        if service.settings.publish_on_setpoint:
            sim.dirty.add(index)

    serve_setpoints(
        service, SimSetpoints(sim.controls, clock, publish_acks_, applied),
        targets={t for targets in CONTROLLABLE.values() for t in targets},
    )  # fmt: skip

    @service.every(lambda: min(POLL_S, service.settings.interval_s), run_at_start=True)
    async def tick(_ctx: Context) -> None:
        wall = time.time()
        if wall >= sim.next_due_wall:
            schedule_next(wall)
            sim.dirty.clear()
            await step()
        elif sim.dirty and wall - sim.last_kick_wall >= service.settings.publish_min_gap_s:
            dirty, sim.dirty = sim.dirty, set()
            sim.last_kick_wall = wall
            await step(dirty)

    @service.on_startup
    async def start_extras() -> None:
        if settings.enable_influxdb:
            from edge_simulator.influx import InfluxWriter

            influx.append(InfluxWriter(settings.influxdb))
        if settings.modbus_port is not None:
            from edge_simulator.modbus import start_modbus

            service.state["modbus"] = await start_modbus(service, sim)
        if settings.ocpp.url is not None:
            from edge_simulator.ocpp_cp import OcppChargePoints

            service.state["ocpp"] = OcppChargePoints(settings.ocpp)
            await service.state["ocpp"].start(list(fleet.ids))

    @service.on_shutdown
    async def stop_extras() -> None:
        server = service.state.pop("modbus", None)
        if server is not None:
            await server.shutdown()
        for writer in influx:
            writer.close()
        charge_points = service.state.pop("ocpp", None)
        if charge_points is not None:
            await charge_points.stop()

    return service
