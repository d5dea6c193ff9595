"""The gateway on the in-memory bus: readings, stale/ok status, setpoints written, read back, acked, reverted."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from derbus import topics
from derbus.bus import InMemoryBroker, InMemoryBus
from derbus.http import make_app
from derbus.messages import (
    BatteryTelemetry,
    DeviceStatus,
    MeterReading,
    Priority,
    SetpointAck,
    SetpointCommand,
    utcnow,
)
from derbus.testing import BusRecorder, wait_for
from meter_gateway.device import DeviceRunner
from meter_gateway.device_map import ResolvedDevice, parse_config, resolve
from meter_gateway.devsim import MemoryLink, sunspec_image
from meter_gateway.registers import DataType, encode
from meter_gateway.service import build_service
from meter_gateway.settings import Settings
from meter_gateway.sunspec import model_points

DEVICES = """
devices:
  - id: pcc
    kind: meter
    connection: {type: tcp, host: h}
    stale_after_failures: 2
    registers:
      - {field: p_kw, address: 0, type: int32, unit: W, min: -100, max: 100}
      - {field: v_l1_v, address: 2, type: uint16, scale: 0.1, unit: V}
      - {field: f_hz, address: 3, type: float32, unit: Hz, min: 40, max: 70}
  - id: battery
    kind: battery
    connection: {type: tcp, host: h}
    unit_id: 2
    registers:
      - {field: p_kw, address: 100, type: int16, unit: W}
      - {field: soc_pct, address: 101, type: uint16}
    controls:
      - target: battery_p_kw
        min: -5
        max: 5
        write: {address: 200, type: int16, unit: W}
        revert_value: 0
        enable: {address: 201}
        reversion: {address: 202, seconds: 10}
"""


def devices() -> list[ResolvedDevice]:
    return resolve(parse_config(yaml.safe_load(DEVICES)), "site-1")


@pytest.fixture
def links() -> dict[str, MemoryLink]:
    pcc = MemoryLink({})
    pcc.load(1, 0, [*encode(-2500, DataType.INT32), 2304, *encode(50.02, DataType.FLOAT32)])
    battery = MemoryLink({})
    battery.load(2, 100, [*encode(1500, DataType.INT16), 55])
    battery.load(2, 200, [0, 0, 0])
    return {"pcc": pcc, "battery": battery}


class Rig:
    def __init__(self, links: dict[str, MemoryLink], clock: Any) -> None:
        self.broker = InMemoryBroker()
        self.settings = Settings()
        self.service = build_service(
            self.settings, InMemoryBus(self.broker), devices(), lambda d: links[d.id]
        )
        self.runners: dict[tuple[str, str], DeviceRunner] = self.service.state.runners
        for runner in self.runners.values():
            runner.clock = clock
        self.observer = InMemoryBus(self.broker)
        root = self.settings.mqtt.root
        self.meter: BusRecorder[MeterReading] = BusRecorder(topics.METER, root)
        self.battery: BusRecorder[BatteryTelemetry] = BusRecorder(topics.BATTERY, root)
        self.status: BusRecorder[DeviceStatus] = BusRecorder(topics.DEVICE_STATUS, root)
        self.acks: BusRecorder[SetpointAck] = BusRecorder(topics.SETPOINT_ACK, root)

    async def connect(self) -> None:
        await self.service.bus.connect()
        await self.observer.connect()
        for rec in (self.meter, self.battery, self.status, self.acks):
            await rec.attach(self.observer)

    def runner(self, device: str) -> DeviceRunner:
        return self.runners[("site-1", device)]

    async def drain(self) -> None:
        await self.observer.drain()

    def sample(self, name: str, **labels: str) -> float | None:
        return self.service.metrics.registry.get_sample_value(name, labels)


@pytest.fixture
async def rig(links: dict[str, MemoryLink], clock: Any) -> Rig:
    r = Rig(links, clock)
    await r.connect()
    return r


async def test_a_poll_publishes_values_in_the_fields_units(rig: Rig) -> None:
    assert await rig.runner("pcc").poll_once()
    assert await rig.runner("battery").poll_once()
    await rig.drain()
    ((topic, meter),) = rig.meter.messages
    assert topic == topics.METER.topic("site-1", "pcc", rig.settings.mqtt.root)
    assert meter.p_kw == pytest.approx(-2.5)
    assert meter.v_l1_v == pytest.approx(230.4)
    assert meter.f_hz == pytest.approx(50.02, abs=1e-5)
    assert meter.source == "meter_gateway"
    assert rig.battery.values[0].p_kw == pytest.approx(1.5)
    assert rig.battery.values[0].soc_pct == 55
    assert [s.state for s in rig.status.values] == ["ok", "ok"]
    assert rig.sample("derbus_meter_gateway_registers_read_total", device="site-1/pcc") == 5
    assert (
        rig.sample("derbus_meter_gateway_read_requests_total", device="site-1/pcc") == 1
    )  # grouped


async def test_implausible_and_nan_values_are_dropped_and_counted(
    rig: Rig, links: dict[str, MemoryLink]
) -> None:
    links["pcc"].load(1, 0, encode(250_000, DataType.INT32))  # 250 kW > max 100
    links["pcc"].load(1, 3, [0x7FC0, 0])  # NaN Hz
    await rig.runner("pcc").poll_once()
    await rig.drain()
    assert rig.meter.values == []  # p_kw is required: no reading at all
    assert (
        rig.sample(
            "derbus_meter_gateway_values_dropped_total",
            device="site-1/pcc",
            field="p_kw",
            reason="out_of_range",
        )
        == 1
    )
    assert (
        rig.sample(
            "derbus_meter_gateway_values_dropped_total",
            device="site-1/pcc",
            field="f_hz",
            reason="not_finite",
        )
        == 1
    )
    links["pcc"].load(1, 0, encode(1000, DataType.INT32))
    await rig.runner("pcc").poll_once()
    await rig.drain()
    assert rig.meter.values[0].p_kw == 1.0
    assert rig.meter.values[0].f_hz is None


async def test_failing_device_goes_stale_then_recovers(
    rig: Rig, links: dict[str, MemoryLink]
) -> None:
    runner = rig.runner("pcc")
    await runner.poll_once()
    links["pcc"].fail = "connection refused"
    assert not await runner.poll_once()
    assert runner.health.state == "ok"
    assert not await runner.poll_once()
    await rig.drain()
    assert runner.health.state == "stale"
    assert rig.status.values[-1].state == "stale"
    assert rig.status.values[-1].reason == "connection refused"
    assert rig.status.values[-1].consecutive_failures == 2
    assert rig.sample("derbus_meter_gateway_device_stale", device="site-1/pcc") == 1
    links["pcc"].fail = None
    assert await runner.poll_once()
    await rig.drain()
    assert [s.state for s in rig.status.values] == ["ok", "stale", "ok"]
    assert rig.sample("derbus_meter_gateway_device_stale", device="site-1/pcc") == 0
    assert rig.sample("derbus_meter_gateway_poll_failures_total", device="site-1/pcc") == 2


def command(value: float, ttl_s: float, clock: Any, **kw: Any) -> SetpointCommand:
    return SetpointCommand(
        ts=clock(), source="test", target="battery_p_kw", value=value, unit="kW", ttl_s=ttl_s, **kw
    )


async def test_setpoint_written_read_back_acked_refreshed_and_reverted(
    rig: Rig, links: dict[str, MemoryLink], clock: Any
) -> None:
    runner = rig.runner("battery")
    link = links["battery"]
    cmd = command(-2.0, 30, clock)
    runner.submit(cmd)
    await runner.control_step()
    await rig.drain()
    assert link.registers[2][200] == encode(-2000, DataType.INT16)[0]
    assert link.registers[2][201] == 1
    assert link.registers[2][202] == 10
    (ack,) = rig.acks.values
    assert ack.status == "accepted"
    assert ack.applied_value == -2.0
    assert ack.setpoint_id == cmd.setpoint_id
    writes = len(link.writes)
    clock.advance(4)
    await runner.control_step()
    assert len(link.writes) == writes  # nothing to do yet
    clock.advance(1)  # 5 s = half the device's 10 s reversion timer: refresh
    await runner.control_step()
    assert len(link.writes) == 2 * writes
    clock.advance(26)  # TTL over: expired ack, revert value written, enable off
    await runner.control_step()
    await rig.drain()
    assert rig.acks.values[-1].status == "expired"
    assert link.registers[2][200] == 0
    assert link.registers[2][201] == 0
    assert (
        rig.sample(
            "derbus_meter_gateway_setpoint_writes_total",
            device="site-1/battery",
            target="battery_p_kw",
            action="revert",
            result="ok",
        )
        == 1
    )


async def test_out_of_range_and_unsupported_setpoints_are_rejected(
    rig: Rig, links: dict[str, MemoryLink], clock: Any
) -> None:
    runner = rig.runner("battery")
    runner.submit(command(9.0, 30, clock))
    runner.submit(
        SetpointCommand(ts=clock(), source="t", target="pv_limit_pct", value=5, unit="%", ttl_s=5)
    )
    await runner.control_step()
    await rig.drain()
    assert [a.status for a in rig.acks.values] == ["rejected", "rejected"]
    assert "outside the allowed range [-5, 5]" in (rig.acks.values[0].reason or "")
    assert "not supported" in (rig.acks.values[1].reason or "")
    assert links["battery"].writes == []


async def test_a_write_the_device_does_not_keep_is_rejected_by_read_back(
    rig: Rig, links: dict[str, MemoryLink], clock: Any
) -> None:
    links["battery"].frozen.add(200)
    runner = rig.runner("battery")
    runner.submit(command(1.0, 30, clock))
    await runner.control_step()
    await rig.drain()
    (ack,) = rig.acks.values
    assert ack.status == "rejected"
    assert "read back" in (ack.reason or "")
    assert runner.arbiter.active("battery_p_kw", clock()) is None


async def test_a_higher_priority_supersedes_the_one_in_force_and_the_device_reverts_after_it(
    rig: Rig, links: dict[str, MemoryLink], clock: Any
) -> None:
    runner = rig.runner("battery")
    regs = links["battery"].registers[2]
    low = command(1.0, 60, clock, priority=Priority.SITE_OPTIMISER)
    runner.submit(low)
    await runner.control_step()
    high = command(-3.0, 5, clock, priority=Priority.GRID_OPERATOR)
    runner.submit(high)
    await runner.control_step()
    assert regs[200] == encode(-3000, DataType.INT16)[0]
    clock.advance(5)
    await runner.control_step()
    assert regs[200] == 0  # reverted: the superseded setpoint does not come back
    await rig.drain()
    assert [(a.setpoint_id, a.status, a.active_setpoint_id) for a in rig.acks.values] == [
        (low.setpoint_id, "accepted", low.setpoint_id),
        (high.setpoint_id, "accepted", high.setpoint_id),
        (low.setpoint_id, "superseded", high.setpoint_id),
        (high.setpoint_id, "expired", None),
    ]


async def test_a_lower_priority_is_queued_and_takes_over_when_the_higher_ends(
    rig: Rig, links: dict[str, MemoryLink], clock: Any
) -> None:
    runner = rig.runner("battery")
    regs = links["battery"].registers[2]
    high = command(-3.0, 5, clock, priority=Priority.GRID_OPERATOR)
    runner.submit(high)
    await runner.control_step()
    low = command(1.0, 60, clock, priority=Priority.MANUAL)
    queued = runner.submit(low)
    await runner.control_step()
    assert regs[200] == encode(-3000, DataType.INT16)[0]  # the queued one is not written
    ack = queued.result()
    assert (ack.status, ack.active_setpoint_id, ack.applied_value) == (
        "queued",
        high.setpoint_id,
        -3.0,
    )
    assert ack.active_priority == Priority.GRID_OPERATOR
    clock.advance(5)
    await runner.control_step()
    assert regs[200] == 1000
    await rig.drain()
    assert [(a.setpoint_id, a.status) for a in rig.acks.values] == [
        (high.setpoint_id, "accepted"),
        (low.setpoint_id, "queued"),
        (high.setpoint_id, "expired"),
        (low.setpoint_id, "accepted"),
    ]


async def test_a_failed_write_rejects_the_newcomer_and_keeps_the_setpoint_in_force(
    rig: Rig, links: dict[str, MemoryLink], clock: Any
) -> None:
    runner = rig.runner("battery")
    low = command(1.0, 60, clock, priority=Priority.MANUAL)
    runner.submit(low)
    await runner.control_step()
    links["battery"].frozen.add(200)
    high = command(-3.0, 60, clock, priority=Priority.GRID_OPERATOR)
    runner.submit(high)
    await runner.control_step()
    await rig.drain()
    assert [(a.setpoint_id, a.status) for a in rig.acks.values] == [
        (low.setpoint_id, "accepted"),
        (high.setpoint_id, "rejected"),
    ]
    assert "device write failed" in (rig.acks.values[1].reason or "")
    assert runner.arbiter.active("battery_p_kw", clock()) == low


async def test_setpoint_on_the_bus_with_a_running_service(links: dict[str, MemoryLink]) -> None:
    broker = InMemoryBroker()
    settings = Settings(api_token="tok", control_tick_s=0.05)
    service = build_service(settings, InMemoryBus(broker), devices(), lambda d: links[d.id])
    observer = InMemoryBus(broker)
    await observer.connect()
    acks: BusRecorder[SetpointAck] = BusRecorder(topics.SETPOINT_ACK, settings.mqtt.root)
    await acks.attach(observer)
    await service.start()
    try:
        cmd = command(2.0, 30, utcnow)
        await observer.publish(
            topics.SETPOINT.topic("site-1", "battery", settings.mqtt.root), cmd.to_json_bytes()
        )
        # a site of another receiver is left to it; a device this gateway lacks on its own
        # site is rejected as unknown
        await observer.publish(
            topics.SETPOINT.topic("site-9", "battery", settings.mqtt.root), cmd.to_json_bytes()
        )
        await observer.publish(
            topics.SETPOINT.topic("site-1", "ev", settings.mqtt.root), cmd.to_json_bytes()
        )
        await acks.wait(2)
        by_device = {t.split("/")[-2]: a for t, a in acks.messages}
        assert by_device["battery"].status == "accepted"
        assert by_device["ev"].status == "rejected"
        assert (by_device["ev"].reason or "").startswith("unknown device 'ev'")
        await wait_for(lambda: links["battery"].registers[2][200] == 2000, 5)
        await observer.drain()
        assert len(acks.messages) == 2
    finally:
        await service.stop()


def test_rest_devices_and_setpoints(links: dict[str, MemoryLink]) -> None:
    settings = Settings(api_token="tok", control_tick_s=0.05)
    service = build_service(settings, InMemoryBus(), devices(), lambda d: links[d.id])
    with TestClient(make_app(service)) as client:
        listed = client.get("/devices").json()
        assert {d["id"] for d in listed} == {"pcc", "battery"}
        body = {"target": "battery_p_kw", "value": 1.5, "ttl_s": 60}
        assert client.post("/devices/battery/setpoints", json=body).status_code == 401
        auth = {"Authorization": "Bearer tok"}
        ok = client.post("/devices/battery/setpoints", json=body, headers=auth)
        assert ok.status_code == 200
        assert ok.json()["status"] == "accepted"
        assert links["battery"].registers[2][200] == 1500
        bad = client.post("/devices/battery/setpoints", json={**body, "value": 50}, headers=auth)
        assert (bad.status_code, bad.json()["status"]) == (422, "rejected")
        low = client.post(
            "/devices/battery/setpoints", json={**body, "priority": "grid_operator"}, headers=auth
        )
        assert low.status_code == 200
        queued = client.post("/devices/battery/setpoints", json=body, headers=auth)
        assert (queued.status_code, queued.json()["status"]) == (202, "queued")
        assert queued.json()["active_setpoint_id"] == low.json()["setpoint_id"]
        pcc = client.post(
            "/devices/pcc/setpoints", json={**body, "setpoint_id": "p1"}, headers=auth
        )
        assert (pcc.status_code, pcc.json()["status"]) == (422, "rejected")
        assert "not supported (supported: none)" in pcc.json()["reason"]
        assert client.post("/devices/nope/setpoints", json=body, headers=auth).status_code == 404
        detail = client.get("/devices/battery").json()
        assert detail["controls"]["battery_p_kw"]["applied"] == 1.5


async def test_sunspec_device_discovers_polls_and_takes_setpoints(clock: Any) -> None:
    image = sunspec_image(
        [
            (1, {"Mn": "x"}),
            (103, {"W": 3000, "W_SF": 0}),
            (
                124,
                {
                    "WChaMax": 4000,
                    "WChaMax_SF": 0,
                    "ChaState": 80,
                    "ChaState_SF": 0,
                    "InOutWRte_SF": 0,
                    "StorCtl_Mod": 0,
                    "InWRte": 0,
                    "OutWRte": 0,
                    "InOutWRte_RvrtTms": 0,
                },
            ),
            (
                123,
                {"WMaxLimPct": 100, "WMaxLimPct_SF": 0, "WMaxLim_Ena": 0, "WMaxLimPct_RvrtTms": 0},
            ),
        ]
    )
    link = MemoryLink({})
    link.load(1, 40000, image)
    cfg = parse_config(
        {
            "devices": [
                {
                    "id": "pv",
                    "kind": "pv",
                    "connection": {"type": "tcp", "host": "h"},
                    "sunspec": "auto",
                    "controls": [{"target": "pv_limit_pct", "min": 0, "max": 100}],
                }
            ]
        }
    )
    service = build_service(Settings(), InMemoryBus(), resolve(cfg, "site-1"), lambda d: link)
    await service.bus.connect()
    runner: DeviceRunner = service.state.runners[("site-1", "pv")]
    runner.clock = clock
    assert await runner.poll_once()
    assert runner.last_reading is not None
    assert runner.last_reading.generation_kw == 3.0
    assert [m.model_id for m in runner.models] == [1, 103, 124, 123]
    runner.submit(
        SetpointCommand(ts=clock(), source="t", target="pv_limit_pct", value=30, unit="%", ttl_s=10)
    )
    await runner.control_step()
    m123 = next(m for m in runner.models if m.model_id == 123)
    offset = {n: m123.address + p.offset for n, p in model_points(123).items()}
    assert link.registers[1][offset["WMaxLimPct"]] == 30
    assert link.registers[1][offset["WMaxLim_Ena"]] == 1
    assert link.registers[1][offset["WMaxLimPct_RvrtTms"]] == 60
    clock.advance(10)
    await runner.control_step()
    assert link.registers[1][offset["WMaxLim_Ena"]] == 0
