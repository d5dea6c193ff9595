"""Fault bench: kill the broker and the receivers during a run; count what was answered and stored.

One run per scenario, each on its own Mosquitto (the derbus configuration: persistence with a
1 s autosave, or persistence off) and one PostgreSQL for all:

* the edge simulator (in this process, so what it sent is known exactly: its sent buffer) steps
  `--sites` sites every `--interval` s and answers setpoints;
* cloud_sync runs as its own process (`cloud_sync.testing.SyncProcess`), stores every reading in
  PostgreSQL, finds sequence gaps and asks the edge for them again;
* a SCADA (this process, `make_bus`) sends a battery setpoint every `--setpoint-every` s with a
  TTL of `--ttl` s and waits for each acknowledgement (`Outcomes`).

Faults: `--broker-kills` kill -9 + restart of the broker (persistence on, then off), then
`--receiver-kills` kill -9 + restart of cloud_sync. After the last fault the run settles: every
setpoint answered or past its TTL, every reading the edge sent compared with PostgreSQL.

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
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cloud_sync.testing import SyncProcess, stored_rows
from derbus import topics
from derbus.bus import Bus, Outcomes, RawMessage, make_bus
from derbus.messages import SetpointAck, SetpointCommand
from derbus.service import Service
from derbus.settings import MqttSettings
from derbus.testing import MosquittoServer, PostgresServer
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


async def until(predicate: Callable[[], bool], timeout_s: float) -> float | None:
    """Seconds until `predicate` held (None: not within `timeout_s`)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if predicate():
            return time.monotonic() - t0
        await asyncio.sleep(0.02)
    return None


def mqtt(broker: MosquittoServer, root: str) -> MqttSettings:
    return MqttSettings(
        host=broker.host, port=broker.port, root=root, reconnect_min_delay_s=0.1,
        reconnect_max_delay_s=0.5, keepalive_s=5,
    )  # fmt: skip


class Scada:
    """Sends a setpoint to a site's battery every `every_s` s; counts the answers."""

    def __init__(self, bus: Bus, root: str, sites: list[str], ttl_s: float, clock: Any) -> None:
        self.bus, self.root, self.sites, self.ttl_s, self.clock = bus, root, sites, ttl_s, clock
        self.outcomes = Outcomes()
        self.sent = 0

    async def on_ack(self, raw: RawMessage) -> None:
        self.outcomes.answer(SetpointAck.from_json_bytes(raw.payload).setpoint_id.encode())

    async def run(self, every_s: float, stop: asyncio.Event) -> None:
        while not stop.is_set():
            command = SetpointCommand(
                ts=self.clock(), source="scada", target="battery_p_kw",
                value=-1.0 - self.sent % 3, unit="kW", ttl_s=self.ttl_s,
            )  # fmt: skip
            site = self.sites[self.sent % len(self.sites)]
            self.outcomes.sent(command.setpoint_id.encode(), self.ttl_s)
            self.sent += 1
            topic = topics.SETPOINT.topic(site, "battery", self.root)
            await self.bus.publish(topic, command.to_json_bytes(), qos=1)
            with_timeout = asyncio.ensure_future(stop.wait())
            await asyncio.wait([with_timeout], timeout=every_s)
            with_timeout.cancel()


async def scenario(
    name: str, args: argparse.Namespace, pg_url: str, persistence: bool, kill: str
) -> Result:
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
            mqtt=mqtt(broker, root), sites=args.sites, interval_s=args.interval, api_port=0,
            start_time=datetime(2026, 6, 22, 10, tzinfo=UTC),
        )  # fmt: skip
        edge = build_edge(edge_settings, make_bus(edge_settings.mqtt, "edge_simulator"))
        await edge.start()
        sim = edge.state
        if await until(lambda: sim.steps >= 5, 120) is None:  # the first step loads pvlib
            raise RuntimeError("the edge simulator made no 5 steps within 120 s")
        scada_bus = make_bus(mqtt(broker, root), "scada", client_id=f"scada-{root[-8:]}")
        scada = Scada(scada_bus, root, list(sim.fleet.ids), args.ttl, sim.clock)
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
                sync.kill()
                await asyncio.sleep(args.down_s)
                sync.start()
                t0 = time.monotonic()
                await until(sync.ready, 60)
                result.reconnects.append(time.monotonic() - t0)
            result.faults += 1
            note_gaps()
        await asyncio.sleep(args.run_s)
        stop.set()
        await sender
        readings = sent_rows(edge)
        sites = list(sim.fleet.ids)
        t0 = time.monotonic()

        def settled() -> bool:
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
        result.readings_sent = len(readings)
        result.readings_stored = len(readings & stored_rows(pg_url, sites))
        for key, attr in (("readings_missed", "gaps_missed"), ("readings_repaired",
                          "gaps_repaired"), ("readings_lost", "gaps_lost")):  # fmt: skip
            setattr(result, attr, gaps_now.get(key, 0.0) + gaps_before.get(key, 0.0))
    finally:
        if edge is not None:
            await edge.stop()
        if scada_bus is not None:
            await scada_bus.close()
        sync.stop()
        broker.cleanup()
    return result


def print_table(results: list[Result]) -> None:
    print(
        "| scenario | faults | setpoints sent / acked / expired unanswered / lost "
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
        print(
            f"| {r.name} | {r.faults} | {r.sent} / {r.acked} / {r.expired} / {r.lost} "
            f"| {r.readings_sent:,} / {r.readings_stored:,} / "
            f"{r.readings_sent - r.readings_stored:,} "
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
        }
        results = []
        for key, (name, persistence, kill) in runs.items():
            if key in args.scenarios.split(","):
                results.append(await scenario(name, args, pg.url, persistence, kill))
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
    parser.add_argument("--run-s", type=float, default=3.0, help="run time between faults")
    parser.add_argument("--down-s", type=float, default=1.0, help="time a killed part stays down")
    parser.add_argument("--scenarios", default="broker-on,broker-off,cloud_sync")
    asyncio.run(main(parser.parse_args()))
