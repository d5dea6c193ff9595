"""Fault bench: kill the broker and the receivers during a run; count what was answered and stored.

One run per scenario, each on its own Mosquitto (the derbus configuration: persistence with a
1 s autosave, or persistence off) and one PostgreSQL for all:

* the edge simulator (in this process, so what it sent is known exactly: its sent buffer) steps
  `--sites` sites every `--interval` s and answers setpoints;
* cloud_sync runs as its own process (`cloud_sync.testing.SyncProcess`), stores every reading in
  PostgreSQL, finds sequence gaps and asks the edge for them again;
* a SCADA (this process, `make_bus`) sends a battery setpoint every `--setpoint-every` s with a
  TTL of `--ttl` s and waits for each acknowledgement (`Outcomes`); one still unanswered after
  `--resend` s goes out again with the same id (a refresh for the receiver), as a broker that
  lost its state may have dropped it.

Faults: `--broker-kills` kill -9 + restart of the broker (persistence on, then off), then
`--receiver-kills` kill -9 + restart of each receiver: cloud_sync (of readings), then the edge
simulator (of setpoints; for that scenario it runs as its own process, so what it had not yet
published dies with it and the readings published are not known exactly). After the last fault
the run settles: every setpoint answered or past its TTL, every reading the edge sent compared
with PostgreSQL.

Prints per scenario: setpoints sent / acked / expired unanswered (the sender told by its TTL) /
lost (neither), readings published / stored / missing from the database, gaps seen and repaired
by replay, and the time back after each restart (p50 / max, s): for the broker, until the edge,
the SCADA and cloud_sync are connected again; for cloud_sync, from the new process's start to its
`/readyz` (interpreter start and imports included).

    .venv/bin/python bench/bench_faults.py [--broker-kills 10] [--receiver-kills 3] [--sites 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cloud_sync.testing import SyncProcess, stored_rows
from derbus import topics
from derbus.bus import Bus, Outcomes, RawMessage, make_bus
from derbus.messages import SetpointAck, utcnow
from derbus.service import Service
from derbus.settings import MqttSettings
from derbus.testing import (
    MosquittoServer,
    PostgresServer,
    free_port,
    mqtt_test_settings,
    setpoint_command,
)
from derbus.testing.process import ServiceProcess, service_env
from edge_simulator.service import build_service as build_edge
from edge_simulator.settings import Settings as EdgeSettings
from edge_simulator.testing import sent_rows


@dataclass
class Result:
    """What one scenario counted."""

    name: str
    faults: int = 0
    sent: int = 0
    acked: int = 0
    expired: int = 0
    resent: int = 0
    readings_sent: int = 0
    readings_stored: int = 0
    gaps_missed: float = 0.0
    gaps_repaired: float = 0.0
    gaps_lost: float = 0.0
    reconnects: list[float] = field(default_factory=list)
    settle_s: float = 0.0

    @property
    def lost(self) -> int:
        return self.sent - self.acked - self.expired


async def until(predicate: Callable[[], bool | Awaitable[bool]], timeout_s: float) -> float | None:
    """Seconds until `predicate` held (None: not within `timeout_s`)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        held = predicate()
        if not isinstance(held, bool):
            held = await held
        if held:
            return time.monotonic() - t0
        await asyncio.sleep(0.02)
    return None


async def crash(part: ServiceProcess, down_s: float) -> float:
    """kill -9 `part`, keep it down `down_s`, start it again: seconds from its start to ready."""
    part.kill()
    await asyncio.sleep(down_s)
    part.start()
    t0 = time.monotonic()
    await until(part.ready, 120)
    return time.monotonic() - t0


def mqtt(broker: MosquittoServer, root: str) -> MqttSettings:
    return mqtt_test_settings(
        broker.host,
        broker.port,
        root,
        reconnect_min_delay_s=0.1,
        reconnect_max_delay_s=0.5,
        keepalive_s=5,
    )


class Scada:
    """Sends a setpoint to a site's battery every `every_s` s; counts the answers.

    A command still unanswered `resend_s` after it went out is sent again, same id (the
    receiver takes a command with the id of the one in force as a refresh): a broker that lost
    its state (or the receiver's subscription) dropped it, and only the sender can notice.
    """

    def __init__(
        self, bus: Bus, root: str, sites: list[str], ttl_s: float, clock: Any, resend_s: float
    ) -> None:
        self.bus, self.root, self.sites, self.ttl_s, self.clock = bus, root, sites, ttl_s, clock
        self.resend_s = resend_s
        self.outcomes = Outcomes()
        self.sent = 0
        self.resent = 0
        self.last_out: dict[bytes, tuple[float, str, bytes]] = {}

    async def resend_unanswered(self) -> None:
        now = time.monotonic()
        for key, (at, topic, payload) in list(self.last_out.items()):
            if key not in self.outcomes.pending:
                del self.last_out[key]
            elif now - at >= self.resend_s:
                self.last_out[key] = (now, topic, payload)
                self.resent += 1
                await self.bus.publish(topic, payload, qos=1)

    async def on_ack(self, raw: RawMessage) -> None:
        self.outcomes.answer(SetpointAck.from_json_bytes(raw.payload).setpoint_id.encode())

    async def run(self, every_s: float, stop: asyncio.Event) -> None:
        while not stop.is_set():
            command = setpoint_command(
                -1.0 - self.sent % 3, self.clock(), ttl_s=self.ttl_s, source="scada"
            )
            site = self.sites[self.sent % len(self.sites)]
            key = command.setpoint_id.encode()
            self.outcomes.sent(key, self.ttl_s)
            self.sent += 1
            topic = topics.SETPOINT.topic(site, "battery", self.root)
            if self.resend_s > 0:
                self.last_out[key] = (time.monotonic(), topic, command.to_json_bytes())
            await self.bus.publish(topic, command.to_json_bytes(), qos=1)
            await self.resend_unanswered()
            with_timeout = asyncio.ensure_future(stop.wait())
            await asyncio.wait([with_timeout], timeout=every_s)
            with_timeout.cancel()


async def scenario(
    name: str, args: argparse.Namespace, pg_url: str, persistence: bool, kill: str, day: int
) -> Result:
    """One scenario with the edge in this process; its simulated time starts `day` days after
    the first scenario's, so no two scenarios write the same rows (one database for all)."""
    result = Result(name)
    root = f"bench/faults-{uuid.uuid4().hex[:8]}"
    broker = MosquittoServer(extra_conf="" if persistence else "persistence false\n")
    broker.start()
    work = Path(tempfile.mkdtemp(prefix="derbus-faults-"))
    sync = SyncProcess(broker.host, broker.port, root, pg_url, work / "sync")
    sync.start()
    edge: Service[Any, Any] | None = None
    scada_bus: Bus | None = None
    gaps_now: dict[str, float] = {}  # the running cloud_sync's counts
    gaps_before: dict[str, float] = {}  # those of the processes killed before it
    try:
        if await until(sync.ready, 60) is None:
            raise RuntimeError(f"cloud_sync not ready: {sync.log.read_text()[-2000:]}")
        edge_settings = EdgeSettings(
            mqtt=mqtt(broker, root),
            sites=args.sites,
            interval_s=args.interval,
            api_port=0,
            start_time=datetime(2026, 6, 22, 10, tzinfo=UTC) + timedelta(days=day),
        )
        edge = build_edge(edge_settings, make_bus(edge_settings.mqtt, "edge_simulator"))
        await edge.start()
        sim = edge.state
        if await until(lambda: sim.steps >= 5, 120) is None:  # the first step loads pvlib
            raise RuntimeError("the edge simulator made no 5 steps within 120 s")
        scada_bus = make_bus(mqtt(broker, root), "scada", client_id=f"scada-{root[-8:]}")
        scada = Scada(scada_bus, root, list(sim.fleet.ids), args.ttl, sim.clock, args.resend)
        await scada_bus.connect()
        await scada_bus.subscribe(topics.SETPOINT_ACK.filter(root=root), 1, scada.on_ack)
        stop = asyncio.Event()
        sender = asyncio.create_task(scada.run(args.setpoint_every, stop))

        def note_gaps() -> None:
            gaps_now.update(sync.gaps())

        kills = args.broker_kills if kill == "broker" else args.receiver_kills
        for _ in range(kills):
            await asyncio.sleep(args.run_s)
            if kill == "broker":
                broker.kill()
                await asyncio.sleep(args.down_s)
                broker.start()
                t0 = time.monotonic()

                def back(t0: float = t0) -> bool:
                    return bool(edge and edge.bus.connected and scada_bus and scada_bus.connected)

                await until(back, 60)
                await until(sync.ready, 60)
                result.reconnects.append(time.monotonic() - t0)
            else:
                note_gaps()
                for key, value in gaps_now.items():  # a new process counts from 0 again
                    gaps_before[key] = gaps_before.get(key, 0.0) + value
                gaps_now.clear()
                result.reconnects.append(await crash(sync, args.down_s))
            result.faults += 1
            note_gaps()
        await asyncio.sleep(args.run_s)
        stop.set()
        await sender
        readings = sent_rows(edge)
        sites = list(sim.fleet.ids)
        t0 = time.monotonic()

        async def settled() -> bool:
            await scada.resend_unanswered()
            scada.outcomes.expire()
            if scada.outcomes.pending:
                return False
            note_gaps()
            return gaps_now.get("readings_missing", 0.0) == 0 and readings <= stored_rows(
                pg_url, sites
            )

        await until(settled, args.ttl + 60)
        result.settle_s = time.monotonic() - t0
        note_gaps()
        result.sent, result.acked = scada.sent, len(scada.outcomes.answered)
        result.expired = len(scada.outcomes.expired)
        result.resent = scada.resent
        result.readings_sent = len(readings)
        result.readings_stored = len(readings & stored_rows(pg_url, sites))
        for key, attr in (
            ("readings_missed", "gaps_missed"),
            ("readings_repaired", "gaps_repaired"),
            ("readings_lost", "gaps_lost"),
        ):
            setattr(result, attr, gaps_now.get(key, 0.0) + gaps_before.get(key, 0.0))
    finally:
        if edge is not None:
            await edge.stop()
        if scada_bus is not None:
            await scada_bus.close()
        sync.stop()
        broker.cleanup()
    return result


async def edge_scenario(name: str, args: argparse.Namespace, pg_url: str) -> Result:
    """kill -9 of the edge simulator (the setpoint receiver, here a process of its own) and
    restart: setpoints queued in its session meanwhile must be answered after it is back.

    What a killed edge had not yet published is gone with it (its sent buffer too), so the
    readings it published are not known exactly here: `readings_sent` is -1; the stored rows
    and cloud_sync's gap counts (a restart begins its streams at 0 again) are reported.
    """
    result = Result(name, readings_sent=-1)
    since = datetime.now(UTC)  # the edge runs on the wall clock: its rows are all later
    root = f"bench/faults-{uuid.uuid4().hex[:8]}"
    broker = MosquittoServer()
    broker.start()
    work = Path(tempfile.mkdtemp(prefix="derbus-faults-"))
    sync = SyncProcess(broker.host, broker.port, root, pg_url, work / "sync")
    api_port = free_port()
    edge = ServiceProcess(
        "edge_simulator",
        service_env(
            "EDGE_SIMULATOR_",
            broker.host,
            broker.port,
            root,
            EDGE_SIMULATOR_SITES=str(args.sites),
            EDGE_SIMULATOR_INTERVAL_S=str(args.interval),
            EDGE_SIMULATOR_API_PORT=str(api_port),
            EDGE_SIMULATOR_LOG_LEVEL="WARNING",
        ),
        work / "edge.log",
        api_port,
    )
    scada_bus: Bus | None = None
    sites = [f"site-{i + 1:04d}" for i in range(args.sites)]
    try:
        sync.start()
        edge.start()
        for part in (sync, edge):
            if await until(part.ready, 120) is None:
                raise RuntimeError(f"{part.module} not ready: {part.log.read_text()[-2000:]}")
        scada_bus = make_bus(mqtt(broker, root), "scada", client_id=f"scada-{root[-8:]}")
        scada = Scada(scada_bus, root, sites, args.ttl, utcnow, args.resend)
        await scada_bus.connect()
        await scada_bus.subscribe(topics.SETPOINT_ACK.filter(root=root), 1, scada.on_ack)
        stop = asyncio.Event()
        sender = asyncio.create_task(scada.run(args.setpoint_every, stop))

        def stepping() -> bool:  # its first step loads pvlib: seconds on a loaded machine
            return int((edge.get("/sites") or {}).get("steps", 0)) >= 5

        for _ in range(args.receiver_kills):
            await until(stepping, 120)
            await asyncio.sleep(args.run_s)
            result.reconnects.append(await crash(edge, args.down_s))
            result.faults += 1
        await until(stepping, 120)
        await asyncio.sleep(args.run_s)
        stop.set()
        await sender
        t0 = time.monotonic()

        async def settled() -> bool:
            await scada.resend_unanswered()
            scada.outcomes.expire()
            return not scada.outcomes.pending and sync.gaps().get("readings_missing", 1.0) == 0

        await until(settled, args.ttl + 60)
        result.settle_s = time.monotonic() - t0
        result.sent, result.acked = scada.sent, len(scada.outcomes.answered)
        result.expired, result.resent = len(scada.outcomes.expired), scada.resent
        result.readings_stored = sum(1 for r in stored_rows(pg_url, sites) if r[0] >= since)
        gaps = sync.gaps()
        result.gaps_missed = gaps.get("readings_missed", 0.0)
        result.gaps_repaired = gaps.get("readings_repaired", 0.0)
        result.gaps_lost = gaps.get("readings_lost", 0.0)
    finally:
        if scada_bus is not None:
            await scada_bus.close()
        edge.stop()
        sync.stop()
        broker.cleanup()
    return result


def print_table(results: list[Result]) -> None:
    print(
        "| scenario | faults | setpoints sent / acked / expired unanswered / lost (resent) "
        "| readings published / stored / missing | gaps missed / repaired / lost "
        "| reconnect p50 / max s | settle s |"
    )
    print("| --- | ---: | --- | --- | --- | --- | ---: |")
    for r in results:
        rec = (
            f"{statistics.median(r.reconnects):.2f} / {max(r.reconnects):.2f}"
            if r.reconnects
            else "—"
        )
        readings = (
            f"{r.readings_sent:,} / {r.readings_stored:,} / {r.readings_sent - r.readings_stored:,}"
            if r.readings_sent >= 0
            else f"— / {r.readings_stored:,} / —"
        )
        print(
            f"| {r.name} | {r.faults} | {r.sent} / {r.acked} / {r.expired} / {r.lost} ({r.resent}) "
            f"| {readings} "
            f"| {r.gaps_missed:,.0f} / {r.gaps_repaired:,.0f} / {r.gaps_lost:,.0f} "
            f"| {rec} | {r.settle_s:.1f} |"
        )


async def main(args: argparse.Namespace) -> None:
    load = os.getloadavg()
    print(
        f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, {os.cpu_count()} CPUs"
    )
    pg = PostgresServer()
    pg.start()
    try:
        runs = {
            "broker-on": ("broker kill -9, persistence on", True, "broker"),
            "broker-off": ("broker kill -9, persistence off", False, "broker"),
            "cloud_sync": ("cloud_sync kill -9", True, "cloud_sync"),
            "edge": ("edge_simulator kill -9", True, "edge"),
        }
        results = []
        for key, (name, persistence, kill) in runs.items():
            if key == "edge" and key in args.scenarios.split(","):
                results.append(await edge_scenario(name, args, pg.url))
                print_table(results[-1:])
            elif key in args.scenarios.split(","):
                day = len(results)
                results.append(await scenario(name, args, pg.url, persistence, kill, day))
                print_table(results[-1:])
        print()
        print_table(results)
    finally:
        pg.cleanup()
    load = os.getloadavg()
    print(f"load average at end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--broker-kills", type=int, default=10)
    parser.add_argument("--receiver-kills", type=int, default=3)
    parser.add_argument("--sites", type=int, default=10)
    parser.add_argument("--interval", type=float, default=0.2, help="edge step, wall s")
    parser.add_argument("--setpoint-every", type=float, default=0.5)
    parser.add_argument("--ttl", type=float, default=30.0, help="setpoint TTL, s")
    parser.add_argument(
        "--resend",
        type=float,
        default=3.0,
        help="resend an unanswered setpoint after, s (0: never)",
    )
    parser.add_argument("--run-s", type=float, default=3.0, help="run time between faults")
    parser.add_argument("--down-s", type=float, default=1.0, help="time a killed part stays down")
    parser.add_argument("--scenarios", default="broker-on,broker-off,cloud_sync,edge")
    asyncio.run(main(parser.parse_args()))
