"""The bridge on an in-memory broker: births, report by exception, commands, deaths, HA."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from derbus import topics
from derbus.bus.base import RawMessage
from derbus.bus.memory import InMemoryBroker, InMemoryBus
from derbus.messages import (
    BatteryTelemetry,
    DeadLetter,
    KpiReport,
    MeterReading,
    ServiceStatus,
    SetpointAck,
    SetpointCommand,
)
from derbus.service import Service
from derbus.testing import wait_for
from edge_simulator.testing import ManualClock
from scada_bridge import sparkplug_b_pb2 as pb
from scada_bridge.bridge import Bridge
from scada_bridge.service import build_service
from scada_bridge.settings import Settings
from scada_bridge.testing import check_discovery, load_rules

ROOT = "der/v1"
T0 = datetime(2026, 6, 21, 10, 0, tzinfo=UTC)


class World:
    """The bridge, a device side publishing derbus messages, and a Sparkplug host recording."""

    def __init__(
        self, broker: InMemoryBroker, service: Service[Settings, Bridge], clock: ManualClock
    ) -> None:
        self.broker, self.service, self.clock = broker, service, clock
        self.device = InMemoryBus(broker)
        self.spb: list[tuple[str, pb.Payload]] = []
        self.raw: list[RawMessage] = []

    @property
    def bridge(self) -> Bridge:
        return self.service.state

    async def start(self) -> None:
        await self.device.connect()
        await self.device.subscribe("#", 1, self._record)
        await self.service.start()

    async def _record(self, raw: RawMessage) -> None:
        self.raw.append(raw)
        if raw.topic.startswith("spBv1.0/g/") and "CMD" not in raw.topic:
            self.spb.append((raw.topic.split("/")[2], pb.Payload.FromString(raw.payload)))

    def kinds(self) -> list[str]:
        return [k for k, _ in self.spb]

    async def send(self, spec: Any, site: str, device: str, msg: Any) -> None:
        await self.device.publish(spec.topic(site, device, ROOT), msg.to_json_bytes(), qos=1)
        await self.device.drain()

    async def battery(self, site: str = "site-1", p_kw: float = 1.0, soc: float = 50.0) -> None:
        msg = BatteryTelemetry(
            ts=self.clock(),
            source="edge_simulator",
            p_kw=p_kw,
            soc_pct=soc,
            max_charge_kw=5.0,
            max_discharge_kw=5.0,
        )
        await self.send(topics.BATTERY, site, "battery", msg)

    async def command(
        self, kind: str, device: str | None, metrics: list[pb.Payload.Metric]
    ) -> None:
        payload = pb.Payload(timestamp=1, metrics=metrics)
        topic = f"spBv1.0/g/{kind}/node" + (f"/{device}" if device else "")
        await self.device.publish(topic, payload.SerializeToString(), qos=0)
        await self.device.drain()

    def published(self, spec: Any) -> list[Any]:
        return [
            spec.model.model_validate_json(r.payload)
            for r in self.raw
            if spec.matches(r.topic, ROOT)
        ]


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    broker = InMemoryBroker()
    clock = ManualClock(T0)
    settings = Settings(
        api_port=0,
        data_dir=tmp_path,
        group_id="g",
        edge_node_id="node",
        link_check_s=0.02,
        stale_after_s=60,
        sparkplug_setpoint_ttl_s=120,
    )
    service = build_service(
        settings, InMemoryBus(broker), make_link=lambda: InMemoryBus(broker), clock=clock
    )
    w = World(broker, service, clock)
    await w.start()
    await wait_for(lambda: "NBIRTH" in w.kinds(), 5, message="NBIRTH")
    yield w
    await service.stop()


def metrics(payload: pb.Payload) -> dict[str, pb.Payload.Metric]:
    return {m.name: m for m in payload.metrics}


async def test_birth_then_report_by_exception_with_contiguous_seq(world: World) -> None:
    await world.battery(p_kw=1.0)
    await wait_for(lambda: "DBIRTH" in world.kinds(), 5, message="DBIRTH")
    birth = metrics(world.spb[world.kinds().index("DBIRTH")][1])
    assert birth["battery/p_kw"].double_value == 1.0
    assert birth["battery/p_kw"].properties.keys == ["engUnit"]
    assert birth["battery/soc_pct"].properties.values[0].string_value == "%"
    assert birth["battery/setpoint/battery_p_kw"].is_null
    await world.battery(p_kw=1.0)  # nothing changed: nothing sent
    await world.battery(p_kw=2.0)
    await wait_for(lambda: "DDATA" in world.kinds(), 5, message="DDATA")
    assert world.kinds() == ["NBIRTH", "DBIRTH", "DDATA"]
    data = world.spb[2][1]
    assert [m.name for m in data.metrics] == ["battery/p_kw"]
    assert [p.seq for _, p in world.spb] == [0, 1, 2]


async def test_a_new_device_or_kpi_means_a_new_dbirth_with_every_metric(world: World) -> None:
    await world.battery()
    await world.send(
        topics.METER,
        "site-1",
        "pcc",
        MeterReading(ts=world.clock(), source="edge_simulator", p_kw=3.0),
    )
    report = KpiReport(
        ts=world.clock(), source="peak_shaving", name="peak_shaving", values={"month_peak_kw": 4.0}
    )
    await world.send(topics.KPI, "site-1", "peak_shaving", report)
    await wait_for(lambda: world.kinds().count("DBIRTH") == 3, 5, message="3 DBIRTHs")
    last = metrics(world.spb[-1][1])
    assert {"battery/p_kw", "pcc/p_kw", "kpi/peak_shaving/month_peak_kw"} <= set(last)
    assert last["kpi/peak_shaving/month_peak_kw"].properties.values[0].string_value == "kW"


async def test_service_states_are_node_metrics_and_a_new_one_rebirths(world: World) -> None:
    status = ServiceStatus(ts=world.clock(), source="x", service="peak_shaving", state="online")
    await world.send(topics.SERVICE_STATUS, "platform", "peak_shaving", status)
    await wait_for(
        lambda: world.kinds().count("NBIRTH") == 2, 5, message="rebirth for a new service"
    )
    assert metrics(world.spb[-1][1])["services/peak_shaving/state"].string_value == "online"
    await world.send(
        topics.SERVICE_STATUS, "platform", "peak_shaving", status.with_changes(state="degraded")
    )
    await wait_for(lambda: world.kinds()[-1] == "NDATA", 5, message="NDATA")
    assert metrics(world.spb[-1][1])["services/peak_shaving/state"].string_value == "degraded"


async def test_dcmd_becomes_a_setpoint_with_configured_ttl_and_priority_and_the_ack_shows(
    world: World,
) -> None:
    await world.battery()
    await wait_for(lambda: "DBIRTH" in world.kinds(), 5, message="DBIRTH")
    write = pb.Payload.Metric(name="battery/setpoint/battery_p_kw", double_value=-2.5)
    await world.command("DCMD", "site-1", [write])
    await wait_for(lambda: bool(world.published(topics.SETPOINT)), 5, message="setpoint")
    (cmd,) = world.published(topics.SETPOINT)
    assert isinstance(cmd, SetpointCommand)
    assert (cmd.value, cmd.unit, cmd.ttl_s, cmd.priority, cmd.ts) == (
        -2.5,
        "kW",
        120,
        "grid_operator",
        T0,
    )
    ack = SetpointAck(
        ts=world.clock(),
        source="edge_simulator",
        setpoint_id=cmd.setpoint_id,
        status="accepted",
        applied_value=-2.5,
        target="battery_p_kw",
    )
    await world.send(topics.SETPOINT_ACK, "site-1", "battery", ack)
    await wait_for(
        lambda: any(
            k == "DDATA"
            and metrics(p).get("battery/setpoint/status", pb.Payload.Metric()).string_value
            == "accepted"
            for k, p in world.spb
        ),
        5,
        message="accepted in DDATA",
    )
    values = {n: m for _, p in world.spb for n, m in metrics(p).items()}
    assert values["battery/setpoint/applied_value"].double_value == -2.5
    assert values["battery/setpoint/setpoint_id"].string_value == cmd.setpoint_id


async def test_refused_commands_are_answered_not_sent(world: World) -> None:
    await world.battery()
    await wait_for(lambda: "DBIRTH" in world.kinds(), 5, message="DBIRTH")
    await world.command(
        "DCMD", "site-1", [pb.Payload.Metric(name="battery/soc_pct", double_value=9.0)]
    )
    await world.command(
        "DCMD",
        "site-1",
        [pb.Payload.Metric(name="battery/setpoint/battery_p_kw", double_value=float("nan"))],
    )
    await wait_for(lambda: world.kinds().count("DDATA") >= 2, 5, message="two answers")
    values = {n: m for _, p in world.spb for n, m in metrics(p).items()}
    assert "not a writable metric" in values["bridge/last_command_error"].string_value
    assert values["battery/setpoint/status"].string_value == "rejected"
    assert "finite" in values["battery/setpoint/reason"].string_value
    assert world.published(topics.SETPOINT) == []
    await world.device.publish("spBv1.0/g/DCMD/node/site-1", b"\xff\xff not protobuf", qos=0)
    await world.device.drain()
    await wait_for(lambda: bool(world.published(topics.DEAD_LETTER)), 5, message="dead letter")
    (letter,) = world.published(topics.DEAD_LETTER)
    assert isinstance(letter, DeadLetter)
    assert letter.original_topic == "spBv1.0/g/DCMD/node/site-1"


async def test_rebirth_request_repeats_births_with_the_same_bdseq(world: World) -> None:
    await world.battery()
    await wait_for(lambda: "DBIRTH" in world.kinds(), 5, message="DBIRTH")
    rebirth = pb.Payload.Metric(name="Node Control/Rebirth", boolean_value=True)
    await world.command("NCMD", None, [rebirth])
    await wait_for(lambda: world.kinds().count("DBIRTH") == 2, 5, message="rebirth")
    births = [p for k, p in world.spb if k == "NBIRTH"]
    assert [metrics(b)["bdSeq"].long_value for b in births] == [0, 0]
    assert world.kinds()[-2:] == ["NBIRTH", "DBIRTH"]
    assert world.spb[-1][1].seq == 1


async def test_stale_site_gets_ddeath_and_is_born_again_when_it_reports(world: World) -> None:
    await world.battery()
    await wait_for(lambda: "DBIRTH" in world.kinds(), 5, message="DBIRTH")
    world.clock.advance(61)
    await wait_for(lambda: "DDEATH" in world.kinds(), 5, message="DDEATH")
    await world.battery(p_kw=3.0)
    await wait_for(lambda: world.kinds()[-1] == "DBIRTH", 5, message="DBIRTH again")
    seqs = [p.seq for _, p in world.spb]
    assert seqs == list(range(len(seqs)))


async def test_lost_link_publishes_the_will_and_opens_a_session_with_the_next_bdseq(
    world: World,
) -> None:
    link = world.bridge.link
    assert isinstance(link, InMemoryBus)
    await link.abort()
    await wait_for(lambda: world.kinds().count("NBIRTH") == 2, 5, message="new session")
    death = next(p for k, p in world.spb if k == "NDEATH")
    assert not death.HasField("seq")
    assert [(m.name, m.long_value) for m in death.metrics] == [("bdSeq", 0)]
    will = next(r for r in world.raw if "/NDEATH/" in r.topic)
    assert (will.qos, will.retain) == (1, False)
    second = [p for k, p in world.spb if k == "NBIRTH"][1]
    assert (metrics(second)["bdSeq"].long_value, second.seq) == (1, 0)


async def test_ha_configs_follow_home_assistant_rules_and_the_number_sends_a_setpoint(
    world: World,
) -> None:
    await world.battery()
    await world.send(
        topics.METER,
        "site-1",
        "pcc",
        MeterReading(
            ts=world.clock(), source="edge_simulator", p_kw=3.0, e_import_kwh=10.0, q_kvar=0.5
        ),
    )
    configs = {
        r.topic: json.loads(r.payload) for r in world.raw if r.topic.startswith("homeassistant/")
    }
    rules = load_rules()
    assert configs
    for topic, config in configs.items():
        assert check_discovery(topic, config, rules) == [], topic
    by_id = {c["unique_id"]: c for c in configs.values()}
    soc = by_id["derbus_site-1_battery_soc_pct"]
    assert (soc["device_class"], soc["state_class"], soc["unit_of_measurement"]) == (
        "battery",
        "measurement",
        "%",
    )
    energy = by_id["derbus_site-1_pcc_e_import_kwh"]
    assert (energy["device_class"], energy["state_class"]) == ("energy", "total_increasing")
    assert by_id["derbus_site-1_pcc_q_kvar"]["unit_of_measurement"] == "var"
    assert "derbus_site-1_pcc_v_l1_v" not in by_id  # never reported
    number = by_id["derbus_site-1_battery_setpoint"]
    assert (number["min"], number["max"]) == (-5.0, 5.0)
    assert set(configs) <= set(world.broker.retained)  # retained for HA restarts
    await world.device.publish(number["command_topic"], b"1.5", qos=1)
    await world.device.drain()
    await wait_for(lambda: bool(world.published(topics.SETPOINT)), 5, message="setpoint")
    (cmd,) = world.published(topics.SETPOINT)
    assert (cmd.value, cmd.ttl_s, cmd.priority) == (1.5, 3600, "manual")
    await world.device.publish(number["command_topic"], b"lots", qos=1)
    await world.device.drain()
    await wait_for(lambda: bool(world.published(topics.DEAD_LETTER)), 5, message="dead letter")


def test_the_rule_checker_catches_broken_configs() -> None:
    rules = load_rules()
    good = {
        "state_topic": "a/b",
        "unique_id": "u",
        "device": {"identifiers": ["d"]},
        "device_class": "power",
        "state_class": "measurement",
        "unit_of_measurement": "kW",
    }
    topic = "homeassistant/sensor/node/obj/config"
    assert check_discovery(topic, good, rules) == []
    cases = {
        "sensor needs state_topic": {"state_topic": ""},
        "unit 'kWh' not allowed": {"unit_of_measurement": "kWh"},
        "state_class 'total_increasing' not allowed": {"state_class": "total_increasing"},
        "unknown sensor device_class": {"device_class": "wattage"},
        "neither identifiers": {"device": {"name": "x"}},
        "needs unique_id": {"unique_id": None},
    }
    for expected, change in cases.items():
        problems = check_discovery(topic, good | change, rules)
        assert any(expected in p for p in problems), (expected, problems)
    assert check_discovery("homeassistant/sensor/bad id/config", good, rules)
