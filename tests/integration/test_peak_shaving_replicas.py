"""peak_shaving as two replicas (`PEAK_SHAVING_SITE_SHARD=0/2`, `1/2`): real processes on a real broker.

The edge simulator (in-process) runs six sites each drawing ~20 kW against a 10 kW import limit,
so every site needs its battery discharged. The replicas are `python -m peak_shaving` processes
configured as a deployment would be, and are told apart on the wire by one setting: a
`PEAK_SHAVING_SETPOINT_TTL_S` below 2 s is the TTL of every battery command the replica sends, whatever
the reading interval (the PMA gives a command max(3 reading intervals, 2 s), at most that). So
each setpoint names its sender, and each replica's `/kpis` says which sites it holds state for.

Static sharding has no fail-over: a replica killed with SIGKILL leaves its sites uncontrolled
(their peaks come back once its last setpoints' TTL lapses) while the survivor keeps only its
own; a replica started again with the same shard takes its sites back.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from derbus import topics
from derbus.bus import MqttBus
from derbus.messages import MeterReading, SetpointAck, SetpointCommand
from derbus.settings import MqttSettings
from derbus.testing import BusRecorder, wait_for
from derbus.testing.process import ServiceProcess, service_env
from derbus.testing.servers import free_port
from edge_simulator.service import SimClock
from edge_simulator.service import build_service as build_simulator
from edge_simulator.settings import Settings as SimSettings
from edge_simulator.testing import steady_site

pytestmark = pytest.mark.integration

START = datetime(2026, 1, 12, 19, 0, tzinfo=UTC)  # a winter evening: no PV
N_SITES = 6
SHARDS = 2
LIMIT_KW = 10.0
BASE_LOAD_KW = 20.0
INTERVAL_S = 0.5
TTL_TAG_S = (1.9, 1.7)
"""Replica k's `PEAK_SHAVING_SETPOINT_TTL_S`: below the PMA's 2 s floor, so every command it sends has it."""
START_TIMEOUT_S = 45.0


def owner(site_id: str) -> int:
    """The shard that must control `site_id` (`Service.owns_site`: CRC-32 of the id)."""
    return zlib.crc32(site_id.encode()) % SHARDS


def replica(k: int, mqtt: MqttSettings, tmp_path: Path) -> ServiceProcess:
    """`python -m peak_shaving` as replica k of 2 (not started). No `MQTT_REPLICA`: the shard
    alone must give it its own MQTT client id (see `peak_shaving.service.bus_client_name`)."""
    api_port = free_port()
    env = service_env(
        "PEAK_SHAVING_",
        mqtt.host,
        mqtt.port,
        mqtt.root,
        PEAK_SHAVING_SITE_SHARD=f"{k}/{SHARDS}",
        PEAK_SHAVING_API_PORT=str(api_port),
        PEAK_SHAVING_DATA_DIR=str(tmp_path / f"ps{k}"),
        PEAK_SHAVING_IMPORT_LIMIT_KW=str(LIMIT_KW),
        PEAK_SHAVING_EXPORT_LIMIT_KW="-10",
        PEAK_SHAVING_MARGIN_KW="0.5",
        PEAK_SHAVING_SETPOINT_TTL_S=str(TTL_TAG_S[k]),
        PEAK_SHAVING_BATTERY_CAPACITY_KWH="100",
        PEAK_SHAVING_BATTERY_MAX_CHARGE_KW="50",
        PEAK_SHAVING_BATTERY_MAX_DISCHARGE_KW="50",  # steady_site's battery
        PEAK_SHAVING_EMA_WORKERS="0",  # no forecasts here, so no EMA solve: no solver process per replica
    )
    return ServiceProcess("peak_shaving", env, tmp_path / f"ps{k}.log", api_port)


async def until_ready(proc: ServiceProcess, what: str) -> None:
    """Wait for `/readyz`; fail naming `what` with its log when it exits or never gets there."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while not proc.ready():
        code = None if proc.proc is None else proc.proc.poll()
        if code is not None or time.monotonic() > deadline:
            state = (
                f"exited with {code}" if code is not None else f"not ready in {START_TIMEOUT_S} s"
            )
            pytest.fail(f"{what} {state}; its log:\n{proc.log.read_text()[-3000:]}", pytrace=False)
        await asyncio.sleep(0.2)


def holds(proc: ServiceProcess, site_id: str) -> bool:
    """Whether the replica's API has the site's PMA state (`/kpis`: 200, else 404)."""
    got = httpx.get(
        f"http://127.0.0.1:{proc.api_port}/kpis", params={"site_id": site_id}, timeout=5
    )
    assert got.status_code in (200, 404), got.text
    return got.status_code == 200


async def test_two_replicas_split_the_sites_by_crc32_and_a_killed_one_takes_its_sites_back(
    mqtt_settings: MqttSettings, probe: MqttBus, tmp_path: Path
) -> None:
    """`probe` is what a SCADA subscribed to the fleet sees: setpoints, readings and acks of
    every site."""
    root = mqtt_settings.root
    setpoints: BusRecorder[SetpointCommand] = BusRecorder(topics.SETPOINT, root)
    meter: BusRecorder[MeterReading] = BusRecorder(topics.METER, root)
    acks: BusRecorder[SetpointAck] = BusRecorder(topics.SETPOINT_ACK, root)
    await setpoints.attach(probe, device_id="battery")
    await meter.attach(probe, device_id="pcc")
    await acks.attach(probe, device_id="battery")

    def site_of(topic: str) -> str:
        ids = topics.SETPOINT.parse(topic, root=root) or topics.METER.parse(topic, root=root)
        assert ids is not None, topic
        return ids.site_id

    def commands(site_id: str, after: datetime | None = None) -> list[SetpointCommand]:
        return [
            m
            for t, m in setpoints.messages
            if site_of(t) == site_id and (after is None or m.ts > after)
        ]

    def readings(site_id: str, after: datetime) -> list[float]:
        return [m.p_kw for t, m in meter.messages if site_of(t) == site_id and m.ts > after]

    def latest_under_limit(site_id: str, after: datetime) -> bool:
        got = readings(site_id, after)
        return bool(got) and got[-1] <= LIMIT_KW

    def senders(site_id: str) -> set[int | float]:
        """Replicas (by TTL tag) that sent the site's setpoints; the TTL itself if unknown."""
        return {
            TTL_TAG_S.index(c.ttl_s) if c.ttl_s in TTL_TAG_S else c.ttl_s for c in commands(site_id)
        }

    clock = SimClock(START, speed=1.0)
    simulator = build_simulator(
        SimSettings(mqtt=mqtt_settings, api_port=0, interval_s=INTERVAL_S, sites=N_SITES),
        MqttBus(mqtt_settings),
        clock=clock,
        config=steady_site(BASE_LOAD_KW, battery_kw=50.0, capacity_kwh=100.0),
    )
    sites = list(simulator.state.fleet.ids)
    mine = {k: [s for s in sites if owner(s) == k] for k in range(SHARDS)}
    assert all(mine.values()), f"a shard with no site proves nothing: {mine}"
    replicas = [replica(k, mqtt_settings, tmp_path) for k in range(SHARDS)]
    began = time.monotonic()
    await simulator.start()
    try:
        # every site over the limit before any controller runs
        t0 = clock()
        await wait_for(
            lambda: all(readings(s, START) for s in sites), 15, message="a reading of every site"
        )
        assert all(min(readings(s, START)) > LIMIT_KW + 5 for s in sites), meter.values

        for replica_ in replicas:
            replica_.start()
        for k, replica_ in enumerate(replicas):
            await until_ready(replica_, f"peak_shaving replica {k}/{SHARDS}")

        # 1. every site shaved, each by the replica its CRC-32 names and never by the other
        await wait_for(
            lambda: all(len(commands(s)) >= 4 for s in sites),
            30,
            message="four battery setpoints for every site",
        )
        assert {s: senders(s) for s in sites} == {s: {owner(s)} for s in sites}
        answered = [(site_of(t), m.ts) for t, m in setpoints.messages]
        assert len(answered) == len(set(answered)), "a reading answered twice"
        assert all(c.value < 0 and c.source == "peak_shaving" for _, c in setpoints.messages)
        for k, replica_ in enumerate(replicas):
            assert {s for s in sites if holds(replica_, s)} == set(mine[k]), f"replica {k}"
        await wait_for(
            lambda: all(latest_under_limit(s, t0) for s in sites),
            15,
            message="every site's PCC under the limit",
        )

        # 2. replica 0 dies: the survivor keeps its own sites and leaves replica 0's alone
        dead, survivor = replicas
        assert dead.proc is not None
        dead.kill()
        killed = clock()  # a reading after this was made after the kill
        lapsed = killed + timedelta(seconds=TTL_TAG_S[0] + 1.0)  # its last setpoints expired

        def observed() -> bool:
            return all(len(commands(s, killed)) >= 6 for s in mine[1]) and all(
                len(readings(s, lapsed)) >= 3 for s in mine[0]
            )

        await wait_for(observed, 20, message="the survivor at work and replica 0's TTL lapsed")
        assert {s: commands(s, killed) for s in mine[0]} == {s: [] for s in mine[0]}
        assert all(senders(s) == {1} for s in mine[1])
        unshaved = {s: readings(s, lapsed) for s in mine[0]}
        assert all(min(p) > LIMIT_KW for p in unshaved.values()), unshaved
        shaved = {s: readings(s, killed)[-3:] for s in mine[1]}
        assert all(max(p) <= LIMIT_KW for p in shaved.values()), shaved
        assert not any(holds(survivor, s) for s in mine[0])

        # 3. replica 0 again (same settings, so the same client id and session): its sites back
        restarted = clock()
        # a new API port: the old one was free for ~20 s, and another process on the machine may
        # have bound it (make test-dates beside a CI run: "address already in use" on restart);
        # the shard, and so the client id and session, stay the same
        dead.api_port = free_port()
        dead.env["PEAK_SHAVING_API_PORT"] = str(dead.api_port)
        dead.start()
        await until_ready(dead, f"restarted peak_shaving replica 0/{SHARDS}")
        back = clock()

        def taken_back(site_id: str) -> bool:
            return len(commands(site_id, back)) >= 3 and latest_under_limit(site_id, back)

        await wait_for(
            lambda: all(taken_back(s) for s in mine[0]),
            20,
            message="replica 0's sites shaved again",
        )
        assert {s: senders(s) for s in sites} == {s: {owner(s)} for s in sites}
        assert {s for s in sites if holds(dead, s)} == set(mine[0])
        # its session kept the readings of its time away (QoS 1); it answers them on restart,
        # too late (expired before the process existed): the battery refuses each as stale
        late = {
            c.setpoint_id
            for s in mine[0]
            for c in commands(s, killed)
            if c.ts + timedelta(seconds=c.ttl_s) < restarted
        }

        def refusals() -> dict[str, SetpointAck]:
            return {a.setpoint_id: a for a in acks.values if a.setpoint_id in late}

        await wait_for(lambda: len(refusals()) == len(late), 10, message="acks of late setpoints")
        assert all(
            a.status == "rejected" and "stale" in (a.reason or "") for a in refusals().values()
        ), refusals()
        print(
            f"sites by shard {mine}; setpoints {len(setpoints.messages)}, {len(late)} of them"
            " answers to readings queued while replica 0 was dead;"
            f" took {time.monotonic() - began:.1f} s"
        )
    finally:
        for replica_ in replicas:
            replica_.stop()
        await simulator.stop()
