"""The edge simulator on the real broker: closed loop over MQTT, and its SunSpec Modbus TCP server."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime
from typing import Any

import pytest
from pymodbus.client import AsyncModbusTcpClient
from sunspec2.modbus.client import SunSpecModbusClientDeviceTCP

from derbus import topics
from derbus.bus import MqttBus
from derbus.messages import (
    BatteryTelemetry,
    LoadTelemetry,
    MeterReading,
    Priority,
    PvTelemetry,
    SetpointAck,
)
from derbus.service import Service
from derbus.settings import MqttSettings
from derbus.testing import BusRecorder, free_port, setpoint_command, wait_for
from edge_simulator.service import SimClock, build_service
from edge_simulator.settings import Settings
from edge_simulator.sunspec import build_layout

pytestmark = pytest.mark.integration

START = datetime(2026, 1, 12, 19, 0, tzinfo=UTC)  # a winter evening: no PV, the EV may charge


async def run_service(mqtt_settings: MqttSettings, **kw: Any) -> Service[Settings]:
    settings = Settings(mqtt=mqtt_settings, api_port=0, **kw)
    service = build_service(settings, MqttBus(mqtt_settings), clock=SimClock(START, speed=60))
    await service.start()
    return service


async def test_battery_setpoint_over_mqtt_changes_the_next_readings(
    mqtt_settings: MqttSettings, probe: MqttBus
) -> None:
    root = mqtt_settings.root
    recs: dict[str, BusRecorder[Any]] = {
        k: BusRecorder(spec, root)
        for k, spec in (
            ("bat", topics.BATTERY),
            ("meter", topics.METER),
            ("pv", topics.PV),
            ("load", topics.LOAD),
            ("ack", topics.SETPOINT_ACK),
        )
    }
    for r in recs.values():
        await r.attach(probe)
    service = await run_service(mqtt_settings, interval_s=0.3)
    try:
        await recs["bat"].wait(2)
        before: BatteryTelemetry = recs["bat"].values[-1]
        assert before.p_kw <= 0  # self-consumption: no PV at night, the battery covers load
        cmd = setpoint_command(
            2.0,
            service.state.clock(),
            ttl_s=600,
            source="scada",
            priority=Priority.GRID_OPERATOR,
        )
        n_before = len(recs["bat"].values)
        await probe.publish(
            topics.SETPOINT.topic("site-1", "battery", root), cmd.to_json_bytes(), qos=1
        )
        await wait_for(lambda: bool(recs["ack"].values), 10, message="setpoint ack")
        ack: SetpointAck = recs["ack"].values[0]
        assert recs["ack"].messages[0][0] == topics.SETPOINT_ACK.topic("site-1", "battery", root)
        assert (ack.setpoint_id, ack.status, ack.applied_value) == (
            cmd.setpoint_id,
            "accepted",
            2.0,
        )
        await wait_for(lambda: len(recs["bat"].values) >= n_before + 3, 10, message="readings")
        after = [b for b in recs["bat"].values[n_before:] if b.ts >= cmd.ts]
        assert after[0].p_kw == pytest.approx(2.0)  # the very next reading follows the setpoint
        assert after[-1].soc_pct > after[0].soc_pct  # and the battery charges
        ts = after[0].ts
        await wait_for(
            lambda: (
                any(m.ts == ts for m in recs["meter"].values)
                and any(m.ts == ts for m in recs["pv"].values)
                and any(m.ts == ts and t.endswith("/load/load") for t, m in recs["load"].messages)
            ),
            10,
            message="the same step's meter, PV and load",
        )
        meter: MeterReading = next(m for m in recs["meter"].values if m.ts == ts)
        pv: PvTelemetry = next(m for m in recs["pv"].values if m.ts == ts)
        load: LoadTelemetry = next(
            m for t, m in recs["load"].messages if m.ts == ts and t.endswith("/load/load")
        )
        assert meter.p_kw == pytest.approx(load.p_kw - pv.generation_kw + 2.0, abs=1e-9)
        meter_before = next(m for m in recs["meter"].values if m.ts == before.ts)
        assert meter.p_kw > meter_before.p_kw  # charging from the grid raises the import
    finally:
        await service.stop()


async def test_modbus_sunspec_read_and_setpoint_write(
    mqtt_settings: MqttSettings, probe: MqttBus
) -> None:
    root = mqtt_settings.root
    acks: BusRecorder[SetpointAck] = BusRecorder(topics.SETPOINT_ACK, root)
    bats: BusRecorder[BatteryTelemetry] = BusRecorder(topics.BATTERY, root)
    await acks.attach(probe)
    await bats.attach(probe)
    port = free_port()
    # one regular step only (long interval): what Modbus shows is the last published step
    service = await run_service(mqtt_settings, interval_s=3600, modbus_port=port, sites=2)
    layout = build_layout()
    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=5)
    try:
        await bats.wait(2)
        assert await client.connect()
        marker = await client.read_holding_registers(40000, count=2, device_id=2)
        assert marker.registers == [0x5375, 0x6E53]  # "SunS"

        # an independent SunSpec client (pysunspec2) scans the whole map of unit 2
        def scan() -> dict[str, float]:
            dev = SunSpecModbusClientDeviceTCP(
                slave_id=2, ipaddr="127.0.0.1", ipport=port, timeout=5
            )
            try:
                dev.scan()
                return {
                    "models": sorted(int(m) for m in dev.models if isinstance(m, int)),
                    "soc": dev.models[802][0].SoC.cvalue,
                    "pcc_w": dev.models[203][0].W.cvalue,
                    "sn": dev.models[1][0].SN.cvalue,
                }
            finally:
                dev.close()

        seen = await asyncio.to_thread(scan)
        last = service.state.last
        assert seen["models"] == [1, 103, 123, 124, 203, 802]
        assert seen["sn"] == "site-0002"
        assert seen["soc"] == pytest.approx(float(last.battery_soc_pct[1]), abs=0.05)
        assert seen["pcc_w"] == pytest.approx(float(last.pcc_p_kw[1]) * 1000, abs=1.0)

        # charge at 30 % of WChaMax (5 kW) through model 124, reverting after 120 s
        unit = 2
        ctl = {
            n: layout.point(124, n).address for n in ("InWRte", "StorCtl_Mod", "InOutWRte_RvrtTms")
        }
        assert not (await client.write_register(ctl["InWRte"], 300, device_id=unit)).isError()
        assert not (
            await client.write_register(ctl["InOutWRte_RvrtTms"], 120, device_id=unit)
        ).isError()
        assert not (await client.write_register(ctl["StorCtl_Mod"], 1, device_id=unit)).isError()
        await wait_for(lambda: any(a.status == "accepted" for a in acks.values), 10, message="ack")
        assert acks.messages[0][0] == topics.SETPOINT_ACK.topic("site-0002", "battery", root)
        await wait_for(
            lambda: any(
                t.split("/")[-4] == "site-0002" and b.p_kw == pytest.approx(1.5)
                for t, b in bats.messages
            ),
            10,
            message="battery telemetry at +1.5 kW",
        )
        w = await client.read_holding_registers(
            layout.point(802, "W").address, count=1, device_id=unit
        )
        assert w.registers == [1500]

        # out of range (200 % = 10 kW) is refused on Modbus and acknowledged `rejected` on MQTT
        bad = await client.write_register(ctl["InWRte"], 2000, device_id=unit)
        assert bad.isError()
        assert bad.exception_code == 3
        await wait_for(lambda: any(a.status == "rejected" for a in acks.values), 10)
        # a measurement register is read-only
        ro = await client.write_register(layout.point(203, "W").address, 1, device_id=unit)
        assert ro.isError()
        assert ro.exception_code == 2
    finally:
        client.close()
        await service.stop()


async def test_a_fleet_sharded_over_processes_publishes_every_site_once_per_step(
    mqtt_settings: MqttSettings, probe: MqttBus
) -> None:
    """`--shards 2` over 3 sites: two processes, sites 1 and 2..3, one session each."""
    meter: BusRecorder[MeterReading] = BusRecorder(topics.METER, mqtt_settings.root)
    await meter.attach(probe)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGE_SIMULATOR_", "MQTT_"))}
    env.update(
        MQTT_HOST=mqtt_settings.host,
        MQTT_PORT=str(mqtt_settings.port),
        MQTT_ROOT=mqtt_settings.root,
        EDGE_SIMULATOR_API_PORT="0",
        EDGE_SIMULATOR_DEVICES="pcc",
    )
    parent = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edge_simulator",
            "--shards",
            "2",
            "--sites",
            "3",
            "--interval",
            "0.5",
            "--start",
            "2026-01-12T19:00:00Z",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:

        def sites_seen() -> dict[str, list[int]]:
            seen: dict[str, list[int]] = {}
            for topic, reading in meter.messages:
                seen.setdefault(topic.split("/")[-4], []).append(reading.seq)
            return seen

        await wait_for(
            lambda: len(sites_seen()) == 3 and all(len(s) >= 3 for s in sites_seen().values()),
            60,
            interval=0.1,
            message="three readings of each of the 3 sites",
        )
        seen = sites_seen()
        assert sorted(seen) == ["site-0001", "site-0002", "site-0003"]
        for seqs in seen.values():  # each site's stream once per step, from its own shard
            assert seqs[:3] == [0, 1, 2]
    finally:
        parent.send_signal(signal.SIGTERM)
        code = parent.wait(30)
        stderr = parent.stderr.read().decode() if parent.stderr else ""
    assert code == 0, stderr[-2000:]
    assert "shard 0: sites 1..2" in stderr
    assert "shard 1: sites 3..3" in stderr
