"""The running simulation: the fleet, its live setpoints, the last step, and how a step is published.

`Simulator` is the edge simulator's state (`service.state`): `step()` advances the fleet to the
clock's now and publishes every site's telemetry, `tick(wall)` decides whether a step is due
(the interval, or a setpoint kick), `publish_acks()` answers setpoints. The Modbus server, the
InfluxDB writer and the OCPP charge points hang off it once started (`build_service` wires
them).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter

from derbus import topics
from derbus.errors import StorageError
from derbus.service import Service
from derbus.topics import TopicIds
from edge_simulator.control import AckOut, Controls
from edge_simulator.fleet import Fleet, Location, StepResult
from edge_simulator.output import StepView
from edge_simulator.replay import load_profile
from edge_simulator.resend import SentBuffer
from edge_simulator.settings import Settings
from edge_simulator.sim_config import SimConfig, load_sim_config
from edge_simulator.wire import DEVICES, encode_step

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from pymodbus.server import ModbusTcpServer

    from edge_simulator.influx import InfluxWriter
    from edge_simulator.ocpp_cp import OcppChargePoints

SERVICE_NAME = "edge_simulator"
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


class Simulator:
    """The edge simulator's state and decisions (`service.state`).

    Args:
        service: the service it publishes through.
        fleet: the simulated sites.
        clock: simulated time.
    """

    def __init__(self, service: Service[Settings, Simulator], fleet: Fleet, clock: Clock) -> None:
        self.service = service
        self.fleet = fleet
        self.clock = clock
        self.controls = Controls(fleet, SERVICE_NAME)
        self.last: StepResult | None = None
        self.view: StepView | None = None
        self.steps = 0
        self.dirty: set[int] = set()
        """Sites whose setpoint changed since their last step: stepped at once (see `kick`)."""
        self.kicked: set[int] = set()
        """Sites stepped at once since the last whole-fleet step."""
        self.immediate_steps = 0
        self.next_due_wall = 0.0
        self.last_kick_wall = 0.0
        self.listeners: list[Callable[[StepResult], None]] = []
        self.influx: InfluxWriter | None = None
        self.modbus: ModbusTcpServer | None = None
        self.modbus_port: int | None = None
        self.ocpp: OcppChargePoints | None = None
        settings = service.settings
        self.devices = [d for d in DEVICES if d.device_id in settings.devices]
        self.topic_table = [
            [d.spec.topic(sid, d.device_id, root=service.root) for sid in fleet.ids]
            for d in self.devices
        ]
        self.sent = [service.metrics.messages_out.labels(topic=d.spec.key) for d in self.devices]
        self.sent_buffer = SentBuffer(fleet.n_sites, int(settings.replay_buffer_mb * 2**20))
        """The payloads last sent per stream, numbered, for replay requests (bounded)."""
        self.device_index = {d.device_id: k for k, d in enumerate(self.devices)}
        registry = service.metrics.registry
        self.replayed = Counter(
            "derbus_edge_simulator_replayed_readings_total",
            "Readings published again on a replay request",
            registry=registry,
        )
        self.replay_missed = Counter(
            "derbus_edge_simulator_replay_missed_readings_total",
            "Readings asked for again that had left the buffer (lost for good)",
            registry=registry,
        )

    @property
    def settings(self) -> Settings:
        """The service's current settings."""
        return self.service.settings

    async def publish_acks(self, acks: Iterable[AckOut]) -> None:
        """Publish setpoint acknowledgements on the bus (site and device of each ack)."""
        for a in acks:
            await self.service.publish(
                topics.SETPOINT_ACK,
                a.ack,
                site_id=self.fleet.ids[a.site_index],
                device_id=a.device_id,
            )

    def applied(self, index: int) -> None:
        """A setpoint changed site `index`: publish it early when so configured (`kick`)."""
        if self.settings.publish_on_setpoint:
            self.kick(index)

    def kick(self, index: int) -> None:
        """A setpoint came into force at site `index`: step it at once, unless done already.

        At most one immediate step per site between two whole-fleet steps: a controller that
        answers every reading with a setpoint (the PMA) would otherwise drive a step, a reading,
        a setpoint, a step … every `publish_min_gap_s` (~20 steps/s per site, seen in make run).
        A later setpoint shows in the next regular step.
        """
        if index not in self.kicked:
            self.dirty.add(index)

    def take_kicked(self) -> set[int]:
        """The sites to step at once now (each at most once until `stepped_all`)."""
        dirty, self.dirty = self.dirty, set()
        self.kicked |= dirty
        if dirty:
            self.immediate_steps += 1
        return dirty

    def stepped_all(self) -> None:
        """A whole-fleet step was made: every site may be stepped at once again."""
        self.dirty.clear()
        self.kicked.clear()

    async def tick(self, wall: float) -> None:
        """Step when the interval is due (all sites) or setpoints kicked some (those sites)."""
        if wall >= self.next_due_wall:
            interval = self.settings.interval_s
            if self.settings.align_to_clock:
                self.next_due_wall = (math.floor(wall / interval) + 1) * interval
            else:
                self.next_due_wall = wall + interval
            await self.step()
        elif self.dirty and wall - self.last_kick_wall >= self.settings.publish_min_gap_s:
            self.last_kick_wall = wall
            await self.step(self.take_kicked())

    async def step(self, sites: Iterable[int] | None = None) -> StepResult:
        """Advance the fleet to the clock's now; publish every site's readings (or `sites`)."""
        service, fleet = self.service, self.fleet
        now = self.clock()
        if self.steps == 0:  # first pvlib import and day of sky: off the loop, /healthz answers
            await service.run_blocking(fleet.sky.at, now)
        await self.publish_acks(self.controls.expire(now))
        if sites is None:
            self.stepped_all()
        extra = self.ocpp.load_kw(fleet.ids) if self.ocpp is not None else None
        result = fleet.step(now, ovr=self.controls.overrides(now), extra_load_kw=extra)
        view = StepView(result)
        self.last, self.view = result, view
        self.steps += 1
        for listener in self.listeners:
            listener(result)
        chosen = list(range(fleet.n_sites)) if sites is None else sorted(sites)
        await self.publish_step(result, chosen)
        if self.influx is not None:
            devices = self.settings.devices
            points = [
                (o.spec, TopicIds(fleet.ids[i], o.device_id), o.message)
                for i in chosen
                for o in view.messages(i, SERVICE_NAME)
                if o.device_id in devices
            ]
            try:
                await service.run_blocking(self.influx.write, points)
            except StorageError as err:
                await service.set_degraded("influxdb", str(err))
            else:
                await service.clear_degraded("influxdb")
        return result

    async def publish_step(self, result: StepResult, chosen: list[int]) -> None:
        """Publish the step's telemetry, site by site (devices in contract order).

        The payloads come from `wire.encode_step` (no pydantic model per message); the bus gets
        one call per message, and the event loop a turn every `YIELD_EVERY_SITES` sites.
        """
        every = None if len(chosen) == self.fleet.n_sites else chosen
        seqs = self.sent_buffer.number(chosen)
        payloads = encode_step(result, SERVICE_NAME, self.devices, every, seqs.tolist())
        self.sent_buffer.add(chosen, seqs, payloads)
        publish = self.service.bus.publish
        specs = [(d.spec.qos, d.spec.retain) for d in self.devices]
        for j, i in enumerate(chosen):
            for k, (qos, retain) in enumerate(specs):
                await publish(self.topic_table[k][i], payloads[k][j], qos=qos, retain=retain)
            if j % YIELD_EVERY_SITES == YIELD_EVERY_SITES - 1:
                await asyncio.sleep(0)
        for counter in self.sent:
            counter.inc(len(chosen))

    async def replay(self, site_id: str, device_id: str, from_seq: int, to_seq: int) -> None:
        """Publish a stream's held readings from_seq..to_seq again (same payloads, not retained).

        A stream this simulator does not hold (another shard's, another edge's) is ignored.
        """
        site = self.fleet.index.get(site_id)
        k = self.device_index.get(device_id)
        if site is None or k is None:
            return
        found = self.sent_buffer.find(site, k, from_seq, to_seq)
        spec = self.devices[k].spec
        for payload in found:
            await self.service.bus.publish(
                self.topic_table[k][site], payload, qos=spec.qos, retain=False
            )
        self.replayed.inc(len(found))
        missed = to_seq - from_seq + 1 - len(found)
        if missed > 0:
            self.replay_missed.inc(missed)
            log.warning(
                "replay of %s/%s %d..%d: %d readings no longer held",
                site_id,
                device_id,
                from_seq,
                to_seq,
                missed,
            )

    async def close(self) -> None:
        """Stop the Modbus server, the InfluxDB writer and the charge points (those started)."""
        if self.modbus is not None:
            server: Any = self.modbus  # pymodbus leaves `shutdown` unannotated
            await server.shutdown()
            self.modbus = None
        if self.influx is not None:
            self.influx.close()
            self.influx = None
        if self.ocpp is not None:
            await self.ocpp.stop()
            self.ocpp = None
