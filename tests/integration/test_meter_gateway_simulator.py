"""Meter gateway against the edge simulator's SunSpec Modbus server: same values, setpoints reach it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest

from derbus import topics
from derbus.bus import MqttBus
from derbus.messages import (
    BatteryTelemetry,
    MeterReading,
    PvTelemetry,
    SetpointAck,
    SetpointCommand,
    utcnow,
)
from derbus.service import Service
from derbus.settings import MqttSettings
from derbus.testing import BusRecorder, free_port, wait_for
from edge_simulator.service import SimClock
from edge_simulator.service import build_service as build_simulator
from edge_simulator.settings import Settings as SimSettings
from meter_gateway.device_map import parse_config, resolve
from meter_gateway.service import build_service
from meter_gateway.settings import Settings

pytestmark = pytest.mark.integration

START = datetime(2026, 6, 21, 10, 0, tzinfo=UTC)  # a summer morning: PV produces


def devices(port: int) -> dict[str, Any]:
    conn = {"type": "tcp", "host": "127.0.0.1", "port": port}
    common = {
        "connection": conn,
        "unit_id": 1,
        "sunspec": "auto",
        "site_id": "gw-1",
        "poll_interval_s": 0.2,
        "timeout_s": 1.0,
    }
    return {
        "devices": [
            {"id": "pcc", "kind": "meter", **common},
            {
                "id": "pv",
                "kind": "pv",
                **common,
                "controls": [{"target": "pv_limit_pct", "min": 0, "max": 100}],
            },
            {
                "id": "battery",
                "kind": "battery",
                **common,
                "controls": [{"target": "battery_p_kw", "min": -5, "max": 5}],
            },
        ]
    }


@pytest.fixture
async def simulator(mqtt_settings: MqttSettings) -> AsyncIterator[Service[SimSettings]]:
    port = free_port()
    settings = SimSettings(mqtt=mqtt_settings, api_port=0, interval_s=3600, modbus_port=port)
    service = build_simulator(settings, MqttBus(mqtt_settings), clock=SimClock(START, speed=1))
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


async def test_gateway_reads_the_simulator_and_its_setpoints_reach_it(
    simulator: Service[SimSettings], mqtt_settings: MqttSettings
) -> None:
    root = mqtt_settings.root
    probe = MqttBus(mqtt_settings)
    await probe.connect()
    recs: dict[str, BusRecorder[Any]] = {
        k: BusRecorder(spec, root)
        for k, spec in (
            ("meter", topics.METER),
            ("pv", topics.PV),
            ("bat", topics.BATTERY),
            ("ack", topics.SETPOINT_ACK),
        )
    }
    for rec in recs.values():
        await rec.attach(probe)
    port = simulator.state.modbus_port
    settings = Settings(mqtt=mqtt_settings, control_tick_s=0.05)
    gateway = build_service(
        settings, MqttBus(mqtt_settings), resolve(parse_config(devices(port)), "gw-1")
    )
    await gateway.start()

    def of(key: str, site: str) -> list[Any]:
        return [m for t, m in recs[key].messages if f"/{site}/" in t]

    try:
        await wait_for(
            lambda: all(of(k, "gw-1") and of(k, "site-1") for k in ("meter", "pv", "bat")),
            15,
            message="simulator and gateway readings",
        )
        sim_meter: MeterReading = of("meter", "site-1")[-1]
        gw_meter: MeterReading = of("meter", "gw-1")[-1]
        assert gw_meter.p_kw == pytest.approx(sim_meter.p_kw, abs=0.002)  # 1 W resolution
        sim_pv: PvTelemetry = of("pv", "site-1")[-1]
        gw_pv: PvTelemetry = of("pv", "gw-1")[-1]
        assert gw_pv.generation_kw == pytest.approx(sim_pv.generation_kw, abs=0.002)
        assert gw_pv.generation_kw > 0
        sim_bat: BatteryTelemetry = of("bat", "site-1")[-1]
        gw_bat: BatteryTelemetry = of("bat", "gw-1")[-1]
        assert gw_bat.soc_pct == pytest.approx(sim_bat.soc_pct, abs=0.11)  # SF -1
        assert gw_bat.p_kw == pytest.approx(sim_bat.p_kw, abs=0.002)

        cmd = SetpointCommand(
            ts=utcnow(), source="it", target="battery_p_kw", value=1.0, unit="kW", ttl_s=2
        )
        await probe.publish(topics.SETPOINT.topic("gw-1", "battery", root), cmd.to_json_bytes())
        await wait_for(lambda: bool(of("ack", "gw-1")), 10, message="gateway ack")
        ack: SetpointAck = of("ack", "gw-1")[0]
        assert (ack.setpoint_id, ack.status) == (cmd.setpoint_id, "accepted")
        # the simulator took the Modbus write as its own setpoint and acknowledged it
        await wait_for(
            lambda: any(
                a.status == "accepted" and a.applied_value == pytest.approx(1.0)
                for a in of("ack", "site-1")
            ),
            10,
            message="simulator ack of the Modbus write",
        )
        await wait_for(
            lambda: any(a.status == "expired" for a in of("ack", "gw-1")), 10, message="expiry"
        )
        # revert (StorCtl_Mod = 0) cancels the simulator's setpoint
        await wait_for(
            lambda: any("cancelled" in (a.reason or "") for a in of("ack", "site-1")),
            10,
            message="simulator setpoint cancelled",
        )
    finally:
        await gateway.stop()
        await probe.close()
