"""The chain on a clustered broker: simulator, cloud_sync and peak_shaving on a 3-node NATS
JetStream cluster (MQTT 3.1.1, sessions replicated on every node); one node killed mid-run.

Every bus takes the cluster's endpoint list and fails over; the node killed is the one the
simulator is connected to. Found afterwards: every setpoint peak_shaving sent acknowledged by the
simulator, every reading the simulator sent stored in PostgreSQL by cloud_sync.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from cloud_sync.testing import SyncProcess, stored_rows
from derbus.bus import Bus, make_bus
from derbus.messages import SetpointAck, SetpointCommand
from derbus.settings import MqttSettings
from derbus.testing import NatsCluster, ServiceStack, wait_for
from edge_simulator.service import build_service as build_edge
from edge_simulator.settings import Settings as EdgeSettings
from edge_simulator.testing import sent_rows, steady_site
from peak_shaving.service import build_service as build_peak_shaving
from peak_shaving.settings import Settings as PsSettings

pytestmark = pytest.mark.integration

LIMIT_KW = 10.0


def spy(bus: Bus, seen: Callable[[str, bytes], None]) -> None:
    """Note every payload `bus` publishes (topic, payload) before it goes out."""
    publish: Callable[..., Awaitable[None]] = bus.publish

    async def publish_and_note(topic: str, payload: bytes, *args: Any, **kw: Any) -> None:
        seen(topic, payload)
        await publish(topic, payload, *args, **kw)

    bus.publish = publish_and_note  # type: ignore[method-assign]


async def test_one_node_killed_mid_run_loses_no_reading_and_no_setpoint(
    nats_cluster: NatsCluster, postgres_url: str, topic_root: str, tmp_path: Path
) -> None:
    mqtt = MqttSettings(
        brokers=nats_cluster.brokers,
        protocol="3.1.1",
        root=topic_root,
        keepalive_s=5,
        reconnect_min_delay_s=0.2,
        reconnect_max_delay_s=1.0,
    )
    first = nats_cluster.nodes[0]
    sync = SyncProcess(
        first.endpoint.split(":")[0],
        first.mqtt_port,
        topic_root,
        postgres_url,
        tmp_path / "sync",
        extra_env={"MQTT_BROKERS": nats_cluster.brokers, "MQTT_PROTOCOL": "3.1.1"},
    )
    sync.start()
    config = steady_site(20.0, 50.0, capacity_kwh=100.0)
    edge = build_edge(
        EdgeSettings(
            mqtt=mqtt,
            api_port=0,
            sites=2,
            interval_s=0.25,
            start_time=datetime(2026, 1, 12, 19, tzinfo=UTC),
        ),
        make_bus(mqtt, "edge_simulator"),
        config=config,
    )
    peak_shaving = build_peak_shaving(
        PsSettings(
            mqtt=mqtt,
            api_port=0,
            import_limit_kw=LIMIT_KW,
            export_limit_kw=-10.0,
            margin_kw=0.5,
            kpi_interval_s=5,
        ),
        make_bus(mqtt, "peak_shaving"),
    )
    commands: list[str] = []
    acked: set[str] = set()
    spy(
        peak_shaving.bus,
        lambda t, p: (
            commands.append(SetpointCommand.from_json_bytes(p).setpoint_id)
            if t.endswith("/set")
            else None
        ),
    )
    spy(
        edge.bus,
        lambda t, p: (
            acked.add(SetpointAck.from_json_bytes(p).setpoint_id) if t.endswith("/ack") else None
        ),
    )
    try:
        await wait_for(sync.ready, 60, interval=0.2, message="cloud_sync /readyz")
        async with ServiceStack(edge, peak_shaving):
            sim = edge.state
            await wait_for(lambda: len(commands) >= 2, 60, message="peak_shaving commands")
            node = nats_cluster.node_at(edge.bus.stats.endpoint)
            nats_cluster.kill_node(node)
            before = (len(commands), sim.steps)
            await wait_for(
                lambda: all(
                    s.bus.connected and s.bus.stats.endpoint != node.endpoint
                    for s in (edge, peak_shaving)
                ),
                60,
                message="failed over",
            )
            await wait_for(
                lambda: len(commands) > before[0] + 2 and sim.steps > before[1] + 8,
                60,
                message="setpoints and readings after the failover",
            )
            await edge.update_config({"interval_s": 86_400.0})  # no more steps
            await wait_for(lambda: edge.bus.stats.queued == 0, 30, message="all sent")
            sent = sent_rows(edge)
            sites = list(sim.fleet.ids)
            await wait_for(
                lambda: set(commands) <= acked,
                60,
                interval=0.2,
                message="every setpoint peak_shaving sent acknowledged by the simulator",
            )
            await wait_for(
                lambda: sent <= stored_rows(postgres_url, sites),
                60,
                interval=0.5,
                message="every reading the simulator sent stored",
            )
            assert sync.gaps().get("readings_lost", 0) == 0
    finally:
        sync.stop()
