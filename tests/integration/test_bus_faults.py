"""Broker faults with the real services: a broker that lost all its state loses no stored reading.

The edge simulator numbers every reading (`seq`) and keeps what it sent; cloud_sync sees the
jump the lost messages leave in each stream, asks the edge for them (`control.replay`) and
stores them. The ground truth is what the edge sent (its buffer holds the whole run).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from derbus import topics
from derbus.bus import Outcomes, RawMessage, make_bus
from derbus.messages import SetpointAck, SetpointCommand
from derbus.service import Service
from derbus.settings import MqttSettings
from derbus.storage import reading_rows
from derbus.testing import MosquittoServer, free_port, wait_for
from derbus.topics import TopicIds
from edge_simulator.service import build_service as build_edge
from edge_simulator.settings import Settings as EdgeSettings
from edge_simulator.wire import DEVICES

pytestmark = pytest.mark.integration

Row = tuple[datetime, str, str, str, float]


def sent_rows(edge: Service[Any]) -> set[Row]:
    """Every reading the edge published, as `readings` rows (from its sent buffer)."""
    sim = edge.state["sim"]
    rows: set[Row] = set()
    for step in sim.sent.steps:
        for k, device in enumerate(d for d in DEVICES if d.device_id in edge.settings.devices):
            for j, payload in enumerate(step.payloads[k]):
                ids = TopicIds(sim.fleet.ids[step.sites[j]], device.device_id)
                message = device.spec.model.from_json_bytes(payload)
                for r in reading_rows(device.spec, ids, message):
                    rows.add((r.time, r.site_id, r.device_id, r.metric, r.value))
    return rows


def stored_rows(url: str, sites: list[str]) -> set[Row]:
    with psycopg.connect(url, connect_timeout=2) as conn:
        found = conn.execute(
            "SELECT time, site_id, device_id, metric, value FROM readings WHERE site_id = ANY(%s)",
            (sites,),
        ).fetchall()
    return {(r[0].astimezone(UTC), r[1], r[2], r[3], r[4]) for r in found}


def sync_env(
    broker: MosquittoServer, postgres_url: str, root: str, tmp_path: Path
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SYNC_", "INFLUXDB_", "MQTT_"))}
    env.update(
        MQTT_HOST=broker.host, MQTT_PORT=str(broker.port), MQTT_ROOT=root,
        MQTT_RECONNECT_MIN_DELAY_S="0.1", MQTT_RECONNECT_MAX_DELAY_S="0.5",
        SYNC_CLIENT_ID=f"sync-{uuid.uuid4().hex[:8]}", SYNC_DATA_DIR=str(tmp_path / "sync"),
        SYNC_API_PORT=str(free_port()), DATABASE_URL=postgres_url, SYNC_BATCH_SIZE="500",
        SYNC_INTERVAL_SECONDS="0.2", SYNC_KPI_INTERVAL_S="60", SYNC_GAP_RETRY_S="1",
        SYNC_LOG_LEVEL="WARNING",
    )  # fmt: skip
    return env


@contextlib.asynccontextmanager
async def cloud_sync(env: dict[str, str], log: Path) -> AsyncIterator[subprocess.Popen[bytes]]:
    """cloud_sync as its own process (so it can be stopped with SIGSTOP), ready."""
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cloud_sync"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        await wait_for(lambda: backlog(env, proc, log) is not None, 30, interval=0.2,
                       message="cloud_sync /backlog")  # fmt: skip
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.terminate()
            proc.wait(20)


def backlog(env: dict[str, str], proc: subprocess.Popen[bytes], log: Path) -> dict[str, Any] | None:
    """cloud_sync's /backlog (None while it does not answer)."""
    assert proc.poll() is None, f"cloud_sync exited: {log.read_text()[-2000:]}"
    try:
        got = httpx.get(f"http://127.0.0.1:{env['SYNC_API_PORT']}/backlog", timeout=2)
    except httpx.HTTPError:
        return None
    return dict(got.json()) if got.status_code == 200 else None


@contextlib.asynccontextmanager
async def edge(broker: MosquittoServer, root: str) -> AsyncIterator[Service[Any]]:
    """The simulator in-process: 3 sites, a step every 0.1 s, everything it sends kept."""
    settings = EdgeSettings(
        mqtt=MqttSettings(host=broker.host, port=broker.port, root=root,
                          reconnect_min_delay_s=0.1, reconnect_max_delay_s=0.5),
        sites=3, interval_s=0.1, speed=60.0, api_port=0,
        start_time=datetime(2026, 6, 22, 10, tzinfo=UTC),
    )  # fmt: skip
    service = build_edge(settings, make_bus(settings.mqtt, "edge_simulator"))
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


async def test_broker_without_persistence_killed_mid_run_every_reading_is_stored(
    postgres_url: str, topic_root: str, tmp_path: Path
) -> None:
    """cloud_sync stalls (SIGSTOP) so the broker queues for it; the broker dies with no
    persistence, forgetting the queue; cloud_sync finds the gaps and the edge sends them again."""
    broker = MosquittoServer(extra_conf="persistence false\n")
    broker.start()
    env = sync_env(broker, postgres_url, topic_root, tmp_path)
    log = tmp_path / "cloud_sync.log"
    try:
        async with cloud_sync(env, log) as sync, edge(broker, topic_root) as sim_service:
            sim = sim_service.state["sim"]
            await wait_for(lambda: sim.steps >= 10, 30, message="10 steps")
            sync.send_signal(signal.SIGSTOP)
            stalled_at = sim.steps
            await wait_for(lambda: sim.steps >= stalled_at + 10, 30, message="10 steps queued")
            broker.kill()  # all state gone: cloud_sync's session and what was queued for it
            broker.start()
            sync.send_signal(signal.SIGCONT)
            await wait_for(lambda: sim.steps >= stalled_at + 30, 30, message="20 more steps")
            sent = sent_rows(sim_service)  # it goes on publishing: later readings not awaited
            sites = list(sim.fleet.ids)

            def repaired() -> bool:
                gaps = (backlog(env, sync, log) or {}).get("gaps", {})
                return gaps.get("readings_missing") == 0 and sent <= stored_rows(
                    postgres_url, sites
                )

            await wait_for(repaired, 60, interval=0.5, message="every reading sent is stored")
            gaps = (backlog(env, sync, log) or {})["gaps"]
            assert gaps["readings_missed"] > 0, "the broker lost nothing: the test proves nothing"
            assert gaps["readings_repaired"] == gaps["readings_missed"]
            assert gaps["readings_lost"] == 0
    finally:
        broker.cleanup()


async def test_broker_killed_mid_run_every_setpoint_answered_and_every_reading_stored(
    postgres_url: str, topic_root: str, tmp_path: Path
) -> None:
    """kill -9 of the broker (shipped config: persistence, autosave every second) while a
    SCADA sends a setpoint every 0.2 s: each is acknowledged by the edge, those sent while the
    broker was down included (queued by the sender's bus); each reading reaches PostgreSQL."""
    broker = MosquittoServer()
    broker.start()
    env = sync_env(broker, postgres_url, topic_root, tmp_path)
    log = tmp_path / "cloud_sync.log"
    scada = make_bus(
        MqttSettings(host=broker.host, port=broker.port, root=topic_root,
                     reconnect_min_delay_s=0.1, reconnect_max_delay_s=0.5),
        "scada", client_id=f"scada-{uuid.uuid4().hex[:8]}",
    )  # fmt: skip
    outcomes = Outcomes()
    acks: list[SetpointAck] = []

    async def on_ack(raw: RawMessage) -> None:
        ack = SetpointAck.from_json_bytes(raw.payload)
        acks.append(ack)
        outcomes.answer(ack.setpoint_id.encode())

    try:
        async with cloud_sync(env, log) as sync, edge(broker, topic_root) as sim_service:
            sim = sim_service.state["sim"]
            await scada.connect()
            await scada.subscribe(topics.SETPOINT_ACK.filter(root=topic_root), 1, on_ack)
            sites = list(sim.fleet.ids)
            sent: list[str] = []

            async def send(n: int) -> None:
                for _ in range(n):
                    site = sites[len(sent) % len(sites)]
                    command = SetpointCommand(
                        ts=sim.clock(), source="scada", target="battery_p_kw",
                        value=-1.0 - len(sent) % 3, unit="kW", ttl_s=600,
                    )  # fmt: skip
                    topic = topics.SETPOINT.topic(site, "battery", topic_root)
                    outcomes.sent(command.setpoint_id.encode(), 20.0)  # wall seconds to answer
                    await scada.publish(topic, command.to_json_bytes(), qos=1)
                    sent.append(command.setpoint_id)
                    await asyncio.sleep(0.2)

            await send(10)
            broker.kill()
            await send(5)  # while the broker is down: queued by the bus
            broker.start()
            await send(10)
            readings = sent_rows(sim_service)

            def settled() -> bool:
                outcomes.expire()
                return not outcomes.pending

            await wait_for(settled, 40, interval=0.2, message="every setpoint answered or expired")
            assert sorted(outcomes.answered) == sorted(s.encode() for s in sent)
            assert outcomes.expired == []
            assert {a.setpoint_id for a in acks if a.status == "accepted"} >= set(sent[-1:])

            def stored() -> bool:
                return readings <= stored_rows(postgres_url, sites)

            await wait_for(stored, 60, interval=0.5, message="every reading sent is stored")
            assert backlog(env, sync, log) is not None
    finally:
        await scada.close()
        broker.cleanup()
