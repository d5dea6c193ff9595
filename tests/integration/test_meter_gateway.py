"""Meter gateway against real pymodbus TCP servers and the real broker: readings, setpoints, stale/recover."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import yaml

from derbus import topics
from derbus.bus import MqttBus
from derbus.messages import (
    DeviceStatus,
    MeterReading,
    PvTelemetry,
    SetpointAck,
    SetpointCommand,
    utcnow,
)
from derbus.settings import MqttSettings
from derbus.testing import BusRecorder, wait_for
from meter_gateway.device_map import parse_config, resolve
from meter_gateway.devsim import DeviceServer, sunspec_addresses, sunspec_image, words
from meter_gateway.registers import DataType
from meter_gateway.service import build_service
from meter_gateway.settings import Settings

pytestmark = pytest.mark.integration

SUNSPEC_MODELS = [
    (1, {"Mn": "derbus", "Md": "it"}),
    (103, {"W": 3250, "W_SF": 0, "WH": 98765, "WH_SF": 0}),
    (123, {"WMaxLimPct": 1000, "WMaxLimPct_SF": -1, "WMaxLim_Ena": 0, "WMaxLimPct_RvrtTms": 0}),
]

CUSTOM_MAP = [
    *words(-1840, DataType.INT32),  # 0: p_kw in W, int32
    2311,  # 2: v_l1_v, 0.1 V
    *words(49.98, DataType.FLOAT32, "little"),  # 3: f_hz, float32 little-endian words
    *words(12345.6, DataType.FLOAT32),  # 5: e_import_kwh in kWh
    0, 0, 0, 0,  # 7: spare
    0,  # 11: battery setpoint, W (int16)
    0,  # 12: enable
    0,  # 13: watchdog seconds
    *words(500, DataType.INT16),  # 14: battery p, W
    62,  # 15: soc %
]  # fmt: skip


def devices_yaml(port: int) -> str:
    return f"""
defaults: {{poll_interval_s: 0.2, timeout_s: 0.3, stale_after_failures: 2}}
devices:
  - id: pcc
    kind: meter
    connection: {{type: tcp, host: 127.0.0.1, port: {port}}}
    unit_id: 1
    registers:
      - {{field: p_kw, address: 0, type: int32, unit: W, min: -100, max: 100}}
      - {{field: v_l1_v, address: 2, type: uint16, scale: 0.1, unit: V}}
      - {{field: f_hz, address: 3, type: float32, word_order: little, unit: Hz}}
      - {{field: e_import_kwh, address: 5, type: float32, unit: kWh}}
  - id: battery
    kind: battery
    connection: {{type: tcp, host: 127.0.0.1, port: {port}}}
    unit_id: 1
    registers:
      - {{field: p_kw, address: 14, type: int16, unit: W}}
      - {{field: soc_pct, address: 15, type: uint16}}
    controls:
      - target: battery_p_kw
        min: -5
        max: 5
        write: {{address: 11, type: int16, unit: W}}
        revert_value: 0
        enable: {{address: 12}}
        reversion: {{address: 13, seconds: 30}}
  - id: pv
    kind: pv
    connection: {{type: tcp, host: 127.0.0.1, port: {port}}}
    unit_id: 2
    sunspec: auto
    controls:
      - {{target: pv_limit_pct, min: 0, max: 100, reversion: {{seconds: 20}}}}
"""


class Gateway:
    def __init__(self, server: DeviceServer, mqtt: MqttSettings) -> None:
        self.server = server
        self.settings = Settings(mqtt=mqtt, retry_backoff_max_s=0.4, control_tick_s=0.05)
        devices = resolve(parse_config(yaml.safe_load(devices_yaml(server.port))), "site-it")
        self.service = build_service(self.settings, MqttBus(mqtt), devices)
        self.observer = MqttBus(mqtt)
        root = mqtt.root
        self.meter: BusRecorder[MeterReading] = BusRecorder(topics.METER, root)
        self.pv: BusRecorder[PvTelemetry] = BusRecorder(topics.PV, root)
        self.status: BusRecorder[DeviceStatus] = BusRecorder(topics.DEVICE_STATUS, root)
        self.acks: BusRecorder[SetpointAck] = BusRecorder(topics.SETPOINT_ACK, root)

    async def start(self) -> None:
        await self.observer.connect()
        for rec in (self.meter, self.pv, self.status, self.acks):
            await rec.attach(self.observer)
        await self.service.start()

    async def stop(self) -> None:
        await self.service.stop()
        await self.observer.close()

    def states(self, device: str) -> list[str]:
        return [
            m.state
            for topic, m in self.status.messages
            if topics.DEVICE_STATUS.parse(topic, self.settings.mqtt.root).device_id == device  # type: ignore[union-attr]
        ]

    async def send(self, device: str, **kw: Any) -> SetpointCommand:
        cmd = SetpointCommand(ts=utcnow(), source="it", **kw)
        topic = topics.SETPOINT.topic("site-it", device, self.settings.mqtt.root)
        await self.observer.publish(topic, cmd.to_json_bytes())
        return cmd


@pytest.fixture
async def server() -> AsyncIterator[DeviceServer]:
    srv = DeviceServer({1: {0: list(CUSTOM_MAP)}, 2: {40000: sunspec_image(SUNSPEC_MODELS)}})
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


@pytest.fixture
async def gateway(server: DeviceServer, mqtt_settings: MqttSettings) -> AsyncIterator[Gateway]:
    gw = Gateway(server, mqtt_settings)
    await gw.start()
    try:
        yield gw
    finally:
        await gw.stop()


async def test_readings_appear_with_values_and_units(gateway: Gateway) -> None:
    meter = (await gateway.meter.wait(1))[0]
    assert meter.p_kw == pytest.approx(-1.84)  # int32 W → kW
    assert meter.v_l1_v == pytest.approx(231.1)
    assert meter.f_hz == pytest.approx(49.98, abs=1e-4)
    assert meter.e_import_kwh == pytest.approx(12345.6, rel=1e-6)
    topic = gateway.meter.messages[0][0]
    assert topic == topics.METER.topic("site-it", "pcc", gateway.settings.mqtt.root)
    pv = (await gateway.pv.wait(1))[0]
    assert pv.generation_kw == pytest.approx(3.25)  # SunSpec 103 W, discovered
    assert pv.e_total_kwh == pytest.approx(98.765)
    await gateway.server.set(1, 0, words(2500, DataType.INT32))
    await wait_for(lambda: gateway.meter.values[-1].p_kw == pytest.approx(2.5), 5, message="2.5 kW")


async def test_setpoint_is_written_read_back_acked_and_reverted_after_ttl(gateway: Gateway) -> None:
    await gateway.meter.wait(1)
    cmd = await gateway.send("battery", target="battery_p_kw", value=-1.5, unit="kW", ttl_s=1.5)
    await wait_for(lambda: len(gateway.acks.values) >= 1, 5, message="ack")
    ack = gateway.acks.values[0]
    assert ack.setpoint_id == cmd.setpoint_id
    assert ack.status == "accepted"
    assert ack.applied_value == -1.5
    assert await gateway.server.get(1, 11, 3) == [*words(-1500, DataType.INT16), 1, 30]
    await wait_for(
        lambda: any(a.status == "expired" for a in gateway.acks.values), 5, message="expired"
    )

    async def reverted() -> bool:
        return await gateway.server.get(1, 11, 2) == [0, 0]

    await wait_for(reverted, 5, message="revert value written")
    # SunSpec control: PV limit through model 123
    await gateway.send("pv", target="pv_limit_pct", value=40, unit="%", ttl_s=30)
    pv_acks = lambda: [a for a in gateway.acks.values if a.target == "pv_limit_pct"]  # noqa: E731
    await wait_for(lambda: len(pv_acks()) == 1, 5, message="pv ack")
    assert pv_acks()[0].status == "accepted"
    m123 = sunspec_addresses([1, 103, 123])[123]
    # WMaxLimPct at offset 5 (sf -1 → 400), WMaxLim_Ena at offset 9
    assert (await gateway.server.get(2, m123 + 5, 5))[0] == 400
    assert (await gateway.server.get(2, m123 + 9, 1)) == [1]
    rejected = await gateway.send("battery", target="battery_p_kw", value=9, unit="kW", ttl_s=5)
    ack = await gateway.acks.first(lambda a: a.setpoint_id == rejected.setpoint_id, 5)
    assert ack.status == "rejected"


async def test_killed_device_goes_stale_and_recovers_without_restart(gateway: Gateway) -> None:
    await wait_for(lambda: gateway.states("pcc") == ["ok"], 5, message="pcc ok")
    await gateway.server.stop()
    await wait_for(lambda: gateway.states("pcc")[-1:] == ["stale"], 10, message="pcc stale")
    stale = gateway.service.metrics.registry.get_sample_value(
        "derbus_meter_gateway_device_stale", {"device": "site-it/pcc"}
    )
    assert stale == 1
    await gateway.server.start()
    await wait_for(lambda: gateway.states("pcc")[-1:] == ["ok"], 10, message="pcc ok again")
    await wait_for(lambda: gateway.states("pv")[-1:] == ["ok"], 10, message="pv ok again")
    count = len(gateway.meter.values)
    await wait_for(lambda: len(gateway.meter.values) > count, 5, message="readings resume")
    assert gateway.states("pcc") == ["ok", "stale", "ok"]
