"""The setpoint contract on the real broker: every command with an id gets an answer, from each receiver.

The edge simulator (its own sites) and the meter gateway (its devices, polled and written over
Modbus TCP on the simulator's real pymodbus server) each get the same cases: schema errors
(unit, TTL bounds, type, a missing field) → `rejected` naming the field, dead-lettered and
counted; a payload that is not JSON → dead-lettered and counted; an unknown device → `rejected`;
a lower priority while a higher one holds the device → `queued` naming the winner, then
`superseded` / `accepted` / `expired` as its life goes on; a lower one in force displaced by a
higher one → `superseded`. Both receivers run on injected clocks: TTLs end when the test moves
the clock, never by waiting.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest

from derbus import topics
from derbus.bus import MqttBus
from derbus.messages import BatteryTelemetry, DeadLetter, SetpointAck
from derbus.service import Service
from derbus.settings import MqttSettings
from derbus.testing import BusRecorder, wait_for
from edge_simulator.settings import Settings as SimSettings
from edge_simulator.testing import ManualClock
from meter_gateway.device_map import parse_config, resolve
from meter_gateway.service import build_service as build_gateway
from meter_gateway.settings import Settings as GatewaySettings

pytestmark = pytest.mark.integration

START = datetime(2026, 6, 21, 10, 0, tzinfo=UTC)

INVALID: list[tuple[str, dict[str, Any], str, str]] = [
    ("bad-unit", {"unit": "W"}, "unit", "unknown unit 'W'"),
    ("ttl-zero", {"ttl_s": 0}, "ttl_s", "greater than 0"),
    ("ttl-huge", {"ttl_s": 999_999}, "ttl_s", "less than or equal to 86400"),
    ("wrong-type", {"value": "lots"}, "value", "valid number"),
    ("no-target", {"target": None}, "target", "Field required"),
]
"""(setpoint id, change to a valid command (None drops the field), field named, reason part)."""


def payload(
    clock: ManualClock,
    sid: str,
    value: float,
    priority: str,
    ttl_s: float,
    change: dict[str, Any] | None = None,
) -> bytes:
    """A command as a SCADA writes it; `change` alters fields (None drops one)."""
    body: dict[str, Any] = {
        "ts": clock().isoformat().replace("+00:00", "Z"),
        "source": "scada",
        "setpoint_id": sid,
        "target": "battery_p_kw",
        "value": value,
        "unit": "kW",
        "ttl_s": ttl_s,
        "priority": priority,
        **(change or {}),
    }
    return json.dumps({k: v for k, v in body.items() if v is not None}).encode()


class Scada:
    """A SCADA on the real broker: sends raw payloads, keeps every ack and dead letter."""

    def __init__(self, bus: MqttBus, root: str) -> None:
        self.bus = bus
        self.root = root
        self.acks: BusRecorder[SetpointAck] = BusRecorder(topics.SETPOINT_ACK, root)
        self.letters: BusRecorder[DeadLetter] = BusRecorder(topics.DEAD_LETTER, root)

    async def attach(self) -> None:
        await self.acks.attach(self.bus)
        await self.letters.attach(self.bus)

    async def send(self, site: str, device: str, body: bytes) -> None:
        await self.bus.publish(topics.SETPOINT.topic(site, device, self.root), body, qos=1)

    def of(self, sid: str, site: str) -> list[SetpointAck]:
        """The acks of one setpoint id from one site, in arrival order."""
        return [a for t, a in self.acks.messages if a.setpoint_id == sid and f"/{site}/" in t]

    async def expect(self, sid: str, site: str, *statuses: str) -> list[SetpointAck]:
        """Wait until the setpoint's acks are exactly `statuses` (in order)."""
        await wait_for(
            lambda: (
                [a.status for a in self.of(sid, site)] == list(statuses)
                or len(self.of(sid, site)) > len(statuses)
            ),
            15,
            message=f"{sid}: {statuses}",
        )
        got = self.of(sid, site)
        assert [a.status for a in got] == list(statuses), sid
        return got


@pytest.fixture
async def scada(mqtt_settings: MqttSettings) -> AsyncIterator[Scada]:
    bus = MqttBus(mqtt_settings)
    await bus.connect()
    client = Scada(bus, mqtt_settings.root)
    await client.attach()
    yield client
    await bus.close()


def invalid_count(service: Service[Any]) -> float:
    return (
        service.metrics.registry.get_sample_value(
            "derbus_messages_invalid_total", {"topic": "control.set"}
        )
        or 0.0
    )


async def check_schema_and_device_cases(
    scada: Scada, service: Service[Any], clock: ManualClock, site: str, source: str
) -> None:
    """Schema errors, not JSON, unknown device: the answers of one receiver on one site."""
    letters_before = len([d for d in scada.letters.values if d.service == service.name])
    for sid, change, _field, _reason in INVALID:
        await scada.send(site, "battery", payload(clock, sid, 1.0, "manual", 60, change))
    await scada.send(site, "battery", b"this is not JSON {")
    await scada.send(site, "nosuch", payload(clock, "to-nosuch", 1.0, "manual", 60))
    for sid, _change, field, reason in INVALID:
        (ack,) = await scada.expect(sid, site, "rejected")
        assert (ack.field, ack.source) == (field, source), sid
        assert reason in (ack.reason or ""), (sid, ack.reason)
    (unknown,) = await scada.expect("to-nosuch", site, "rejected")
    assert (unknown.reason or "").startswith("unknown device 'nosuch'")
    assert [t for t, a in scada.acks.messages if a.setpoint_id == "to-nosuch"] == [
        topics.SETPOINT_ACK.topic(site, "nosuch", scada.root)
    ]
    # every invalid payload, the one that is not JSON included, is dead-lettered and counted
    await wait_for(
        lambda: (
            len([d for d in scada.letters.values if d.service == service.name])
            == letters_before + len(INVALID) + 1
        ),
        15,
        message="dead letters",
    )
    mine = [d for d in scada.letters.values if d.service == service.name][letters_before:]
    assert {d.original_topic for d in mine} == {topics.SETPOINT.topic(site, "battery", scada.root)}
    assert any(d.payload == "this is not JSON {" and "(payload)" in d.error for d in mine)
    assert any(d.error.startswith("ttl_s: ") for d in mine)
    assert invalid_count(service) >= len(INVALID) + 1


async def test_edge_simulator_answers_every_command(
    simulator: Service[SimSettings], scada: Scada, sim_clock: ManualClock
) -> None:
    clock, site = sim_clock, "site-1"
    step = simulator.state.step
    await check_schema_and_device_cases(scada, simulator, clock, site, "edge_simulator")
    assert invalid_count(simulator) == len(INVALID) + 1

    # the case: manual 2.0 kW while a grid operator's -3.0 kW is live → queued
    await scada.send(site, "battery", payload(clock, "grid-1", -3.0, "grid_operator", 60))
    await scada.expect("grid-1", site, "accepted")
    await scada.send(site, "battery", payload(clock, "man-1", 2.0, "manual", 600))
    (queued,) = await scada.expect("man-1", site, "queued")
    assert (queued.active_setpoint_id, queued.active_priority, queued.applied_value) == (
        "grid-1",
        "grid_operator",
        -3.0,
    )
    assert "grid-1" in (queued.reason or "")
    # a newer queued one of the same priority supersedes it
    await scada.send(site, "battery", payload(clock, "man-2", 1.0, "manual", 600))
    await scada.expect("man-2", site, "queued")
    (_, superseded) = await scada.expect("man-1", site, "queued", "superseded")
    assert superseded.reason == "superseded by man-2 (manual)"
    # the grid operator's TTL ends: expired, and the queued one is in force
    clock.advance(61)
    await step()
    (_, expired) = await scada.expect("grid-1", site, "accepted", "expired")
    assert expired.active_setpoint_id == "man-2"
    (_, in_force) = await scada.expect("man-2", site, "queued", "accepted")
    assert in_force.applied_value == 1.0
    assert simulator.state.last.battery_p_kw[0] == pytest.approx(1.0)
    # a higher priority displaces the manual one in force: superseded, naming the winner
    await scada.send(site, "battery", payload(clock, "grid-2", -1.0, "grid_operator", 60))
    await scada.expect("grid-2", site, "accepted")
    displaced = (await scada.expect("man-2", site, "queued", "accepted", "superseded"))[-1]
    assert (displaced.active_setpoint_id, displaced.applied_value) == ("grid-2", -1.0)
    # a queued setpoint whose TTL ends before the winner's expires without ever applying
    await scada.send(site, "battery", payload(clock, "man-3", 2.0, "manual", 10))
    await scada.expect("man-3", site, "queued")
    clock.advance(11)
    await step()
    (_, gone) = await scada.expect("man-3", site, "queued", "expired")
    assert gone.active_setpoint_id == "grid-2"
    clock.advance(60)
    await step()
    (_, last) = await scada.expect("grid-2", site, "accepted", "expired")
    assert (last.active_setpoint_id, last.applied_value) == (None, None)


async def test_meter_gateway_answers_every_command_over_modbus(
    simulator: Service[SimSettings], scada: Scada, mqtt_settings: MqttSettings
) -> None:
    clock, site = ManualClock(START), "gw-1"
    conn = {"type": "tcp", "host": "127.0.0.1", "port": simulator.state.modbus_port}
    config = {
        "devices": [
            {
                "id": "battery",
                "kind": "battery",
                "connection": conn,
                "unit_id": 1,
                "sunspec": "auto",
                "site_id": site,
                "poll_interval_s": 0.2,
                "timeout_s": 1.0,
                "controls": [{"target": "battery_p_kw", "min": -5, "max": 5}],
            }
        ]
    }
    readings: BusRecorder[BatteryTelemetry] = BusRecorder(topics.BATTERY, mqtt_settings.root)
    await readings.attach(scada.bus, site_id=site)
    gateway = build_gateway(
        GatewaySettings(mqtt=mqtt_settings, control_tick_s=0.05),
        MqttBus(mqtt_settings),
        resolve(parse_config(config), site),
        clock=clock,
    )
    await gateway.start()
    try:
        await readings.wait(1, timeout=15)  # discovered and polled: its controls are known
        await check_schema_and_device_cases(scada, gateway, clock, site, "meter_gateway")
        # the simulator serves other sites: it neither answered nor took any of these
        assert not [a for t, a in scada.acks.messages if "/site-1/" in t]

        await scada.send(site, "battery", payload(clock, "grid-1", -1.0, "grid_operator", 60))
        await scada.expect("grid-1", site, "accepted")
        await scada.send(site, "battery", payload(clock, "man-1", 2.0, "manual", 600))
        (queued,) = await scada.expect("man-1", site, "queued")
        assert (queued.active_setpoint_id, queued.applied_value) == ("grid-1", -1.0)
        await scada.send(site, "battery", payload(clock, "man-2", 1.5, "manual", 600))
        await scada.expect("man-2", site, "queued")
        await scada.expect("man-1", site, "queued", "superseded")
        clock.advance(61)  # the gateway's control loop expires the grid operator's setpoint
        await scada.expect("grid-1", site, "accepted", "expired")
        await scada.expect("man-2", site, "queued", "accepted")
        # the queued one in force is written to the device: the simulator follows it. It steps a
        # site at once only for the first write between two regular steps (no storm with a
        # controller), and this simulator's interval is an hour: make its regular steps here.
        sim = simulator.state

        async def followed() -> bool:
            await simulator.state.step()
            return bool(sim.last.battery_p_kw[0] == pytest.approx(1.5, abs=0.01))

        await wait_for(followed, 15, 0.2, "the simulator at the queued setpoint")
        await wait_for(
            lambda: (
                bool(readings.values) and readings.values[-1].p_kw == pytest.approx(1.5, abs=0.01)
            ),
            15,
            message="the gateway reading the simulator's battery at the queued setpoint",
        )
        await scada.send(site, "battery", payload(clock, "grid-2", -2.0, "grid_operator", 60))
        await scada.expect("grid-2", site, "accepted")
        displaced = (await scada.expect("man-2", site, "queued", "accepted", "superseded"))[-1]
        assert displaced.active_setpoint_id == "grid-2"
        clock.advance(61)
        (_, last) = await scada.expect("grid-2", site, "accepted", "expired")
        assert last.active_setpoint_id is None
    finally:
        await gateway.stop()
