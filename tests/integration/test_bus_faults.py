"""Broker faults with the real services: a broker that lost all its state loses no stored reading.

The edge simulator numbers every reading (`seq`) and keeps what it sent; cloud_sync sees the
jump the lost messages leave in each stream, asks the edge for them (`control.replay`) and
stores them. The ground truth is what the edge sent (its buffer holds the whole run).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from cloud_sync.testing import SyncProcess, stored_rows
from derbus import topics
from derbus.bus import Outcomes, RawMessage, make_bus
from derbus.messages import SetpointAck
from derbus.service import Service
from derbus.settings import MqttSettings
from derbus.testing import MosquittoServer, mqtt_test_settings, setpoint_command, wait_for
from edge_simulator.service import build_service as build_edge
from edge_simulator.settings import Settings as EdgeSettings
from edge_simulator.testing import sent_rows

pytestmark = pytest.mark.integration


def quick_reconnect(broker: MosquittoServer, root: str) -> MqttSettings:
    """The test broker under `root`, reconnecting after 0.1-0.5 s (these tests kill it)."""
    return mqtt_test_settings(
        broker.host, broker.port, root, reconnect_min_delay_s=0.1, reconnect_max_delay_s=0.5
    )


@contextlib.asynccontextmanager
async def cloud_sync(
    broker: MosquittoServer, postgres_url: str, root: str, tmp_path: Path
) -> AsyncIterator[SyncProcess]:
    """cloud_sync as its own process (so it can be stalled with SIGSTOP), ready."""
    # repair, not its time-outs, is under test: a generous budget (the machine may be loaded)
    sync = SyncProcess(
        broker.host,
        broker.port,
        root,
        postgres_url,
        tmp_path / "sync",
        extra_env={"CLOUD_SYNC_GAP_RETRY_S": "2", "CLOUD_SYNC_GAP_MAX_ATTEMPTS": "30"},
    )
    sync.start()
    try:
        await wait_for(sync.ready, 30, interval=0.2, message="cloud_sync /readyz")
        yield sync
    finally:
        sync.stop()


@contextlib.asynccontextmanager
async def edge(broker: MosquittoServer, root: str) -> AsyncIterator[Service[Any, Any]]:
    """The simulator in-process: 3 sites, a step every 0.1 s, everything it sends kept."""
    settings = EdgeSettings(
        mqtt=quick_reconnect(broker, root),
        sites=3,
        interval_s=0.1,
        speed=60.0,
        api_port=0,
        start_time=datetime(2026, 6, 22, 10, tzinfo=UTC),
    )
    service = build_edge(settings, make_bus(settings.mqtt, "edge_simulator"))
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


@contextlib.asynccontextmanager
async def forgetful_broker_run(
    postgres_url: str, root: str, tmp_path: Path
) -> AsyncIterator[tuple[MosquittoServer, SyncProcess, Service[Any, Any]]]:
    """A broker without persistence (a restart forgets every session and what was queued for
    it), cloud_sync and the edge on it, 10 steps in."""
    broker = MosquittoServer(extra_conf="persistence false\n")
    broker.start()
    try:
        async with (
            cloud_sync(broker, postgres_url, root, tmp_path) as sync,
            edge(broker, root) as sim_service,
        ):
            await wait_for(lambda: sim_service.state.steps >= 10, 30, message="10 steps")
            yield broker, sync, sim_service
    finally:
        broker.cleanup()


async def restart_unheard(broker: MosquittoServer, sim_service: Service[Any, Any]) -> int:
    """The broker killed and started again with all state gone; the edge reconnects and
    publishes 10 steps that reach nobody (cloud_sync has no session on the new broker).

    Returns the edge's step count when it was back on the broker."""
    sim = sim_service.state
    broker.kill()
    broker.start()
    await wait_for(lambda: sim_service.bus.connected, 30, message="the edge is back")
    restarted_at = sim.steps
    await wait_for(lambda: sim.steps >= restarted_at + 10, 30, message="10 steps unheard")
    await wait_for(lambda: sim_service.bus.stats.queued == 0, 30, message="all taken")
    return restarted_at


async def repaired_gaps(
    sync: SyncProcess, postgres_url: str, sim_service: Service[Any, Any]
) -> dict[str, Any]:
    """cloud_sync's gap figures once every reading the edge sent so far is stored and no gap is
    still open."""
    sent = sent_rows(sim_service)  # it goes on publishing: later readings not awaited
    sites = list(sim_service.state.fleet.ids)

    def repaired() -> bool:
        gaps = sync.gaps()
        return gaps.get("readings_missing") == 0 and sent <= stored_rows(postgres_url, sites)

    await wait_for(repaired, 60, interval=0.5, message="every reading sent is stored")
    return sync.gaps()


async def test_broker_without_persistence_killed_mid_run_every_reading_is_stored(
    postgres_url: str, topic_root: str, tmp_path: Path
) -> None:
    """cloud_sync stalls (SIGSTOP); the broker dies with no persistence, forgetting its session
    and what was queued for it, and what the edge publishes after the restart reaches nobody
    until cloud_sync is back; cloud_sync finds the gaps and the edge sends them again."""
    async with forgetful_broker_run(postgres_url, topic_root, tmp_path) as run:
        broker, sync, sim_service = run
        sim = sim_service.state
        sync.pause()
        stalled_at = sim.steps
        await wait_for(lambda: sim.steps >= stalled_at + 4, 30, message="steps while stalled")
        # cloud_sync, still stalled, has no session on the new broker: what the edge publishes
        # now reaches nobody (what was sent before may sit in its socket buffer)
        restarted_at = await restart_unheard(broker, sim_service)
        sync.resume()
        await wait_for(lambda: sim.steps >= restarted_at + 30, 30, message="20 more steps")
        gaps = await repaired_gaps(sync, postgres_url, sim_service)
        assert gaps["readings_missed"] > 0, f"the broker lost nothing (proves nothing): {gaps}"
        assert gaps["readings_repaired"] == gaps["readings_missed"], gaps
        assert gaps["readings_lost"] == 0, gaps


async def test_broker_killed_mid_run_every_setpoint_answered_and_every_reading_stored(
    postgres_url: str, topic_root: str, tmp_path: Path
) -> None:
    """kill -9 of the broker (shipped config: persistence, autosave every second) while a
    SCADA sends a setpoint every 0.2 s: each is acknowledged by the edge, those sent while the
    broker was down included (queued by the sender's bus); each reading reaches PostgreSQL."""
    broker = MosquittoServer()
    broker.start()
    scada = make_bus(
        quick_reconnect(broker, topic_root),
        "scada",
        client_id=f"scada-{uuid.uuid4().hex[:8]}",
    )
    outcomes = Outcomes()
    acks: list[SetpointAck] = []

    async def on_ack(raw: RawMessage) -> None:
        ack = SetpointAck.from_json_bytes(raw.payload)
        acks.append(ack)
        outcomes.answer(ack.setpoint_id.encode())

    try:
        async with (
            cloud_sync(broker, postgres_url, topic_root, tmp_path) as sync,
            edge(broker, topic_root) as sim_service,
        ):
            sim = sim_service.state
            await scada.connect()
            await scada.subscribe(topics.SETPOINT_ACK.filter(root=topic_root), 1, on_ack)
            sites = list(sim.fleet.ids)
            sent: list[str] = []

            async def send(n: int) -> None:
                for _ in range(n):
                    site = sites[len(sent) % len(sites)]
                    command = setpoint_command(
                        -1.0 - len(sent) % 3, sim.clock(), ttl_s=600, source="scada"
                    )
                    topic = topics.SETPOINT.topic(site, "battery", topic_root)
                    outcomes.sent(command.setpoint_id.encode(), 20.0)  # wall seconds to answer
                    await scada.publish(topic, command.to_json_bytes(), qos=1)
                    sent.append(command.setpoint_id)
                    await asyncio.sleep(0.2)

            subscribed = time.time()
            await send(10)
            # the SCADA's session on disk before the crash (the broker saves every second): a
            # session it never saved is gone after the kill, and an acknowledgement published
            # before the SCADA subscribes again has no subscriber — what this test is not about
            await wait_for(
                lambda: broker.saved_since(subscribed), 10, message="the broker saved its sessions"
            )
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
            assert sync.gaps()["readings_lost"] == 0
    finally:
        await scada.close()
        broker.cleanup()


async def test_cloud_sync_replicas_split_the_readings_none_stored_twice_or_missed(
    postgres_url: str, topic_root: str, tmp_path: Path
) -> None:
    """Two cloud_sync replicas in one shared-subscription group (`$share/…`, MQTT 5 on
    Mosquitto): each takes a part, together every reading, and no reading reaches two."""
    broker = MosquittoServer()
    broker.start()
    replicas = [
        SyncProcess(
            broker.host,
            broker.port,
            topic_root,
            postgres_url,
            tmp_path / f"sync{i}",
            extra_env={"CLOUD_SYNC_SHARED_GROUP": "cloud_sync"},
        )
        for i in range(2)
    ]
    try:
        for replica in replicas:
            replica.start()
        for replica in replicas:
            await wait_for(replica.ready, 30, interval=0.2, message="replica /readyz")
        async with edge(broker, topic_root) as sim_service:
            sim = sim_service.state
            await wait_for(lambda: sim.steps >= 20, 30, message="20 steps")
            await sim_service.update_config({"interval_s": 86_400.0})  # no more steps
            await wait_for(lambda: sim.next_due_wall > time.time() + 3600, 10, message="paused")
            await wait_for(lambda: sim_service.bus.stats.queued == 0, 30, message="all sent")
            sent = sent_rows(sim_service)
            sites = list(sim.fleet.ids)
            await wait_for(
                lambda: stored_rows(postgres_url, sites) == sent,
                60,
                interval=0.5,
                message="every reading stored",
            )
        taken = [int((r.backlog() or {})["rows_in_total"]) for r in replicas]
        assert all(n > 0 for n in taken), f"a replica took nothing: {taken}"
        assert sum(taken) == len(sent), f"readings taken twice: {taken} for {len(sent)}"
        assert all(r.gaps().get("seq_gaps") == 0 for r in replicas)  # no tracking: not losses
    finally:
        for replica in replicas:
            replica.stop()
        broker.cleanup()


async def test_cloud_sync_restarted_after_the_broker_forgot_it_still_finds_the_gap(
    postgres_url: str, topic_root: str, tmp_path: Path
) -> None:
    """cloud_sync stops (its streams' numbers saved in its outbox); the broker restarts without
    persistence, so what the edge publishes meanwhile reaches nobody; the new cloud_sync sees
    the jump past the saved numbers and gets it all again."""
    async with forgetful_broker_run(postgres_url, topic_root, tmp_path) as run:
        broker, sync, sim_service = run
        sim = sim_service.state
        sync.stop()
        await restart_unheard(broker, sim_service)
        sync.start()
        await wait_for(sync.ready, 30, interval=0.2, message="cloud_sync back")
        back_at = sim.steps
        await wait_for(lambda: sim.steps >= back_at + 10, 30, message="10 more steps")
        gaps = await repaired_gaps(sync, postgres_url, sim_service)
        assert gaps["readings_missed"] > 0, "nothing was missed: the test proves nothing"
        assert gaps["readings_lost"] == 0
