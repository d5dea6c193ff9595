"""The SCADA bridge on a real Mosquitto with the edge simulator closing the loop.

A Sparkplug host application written from the published `sparkplug_b.proto` (compiled in the
test into its own descriptor pool, independent of the bridge's generated classes) decodes
NBIRTH / DBIRTH / DDATA / NDEATH, checks seq and bdSeq, asks for a rebirth and writes the
battery setpoint with a DCMD; the simulator's battery follows. A Home Assistant stand-in reads
the retained discovery configs, checks them against HA's rules and follows their state topics
(rendering their templates with Jinja2, as HA does), then sets the battery through the number.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from jinja2.sandbox import SandboxedEnvironment

from derbus.bus import MqttBus
from derbus.bus.base import RawMessage
from derbus.service import Service
from derbus.settings import MqttSettings
from derbus.testing import wait_for
from edge_simulator.settings import Settings as SimSettings
from edge_simulator.testing import ManualClock
from scada_bridge.__main__ import link_settings
from scada_bridge.bridge import Bridge
from scada_bridge.service import build_service as build_bridge
from scada_bridge.settings import Settings
from scada_bridge.testing import SparkplugHost, check_discovery, load_rules

pytestmark = pytest.mark.integration

NODE = "derbus-bridge"


def bridge_settings(mqtt: MqttSettings, tmp_path: Path, **changes: Any) -> Settings:
    """The bridge on the test's broker, its Sparkplug group and Home Assistant prefixes the
    test's own."""
    tag = uuid.uuid4().hex[:8]
    return Settings(
        mqtt=mqtt,
        api_port=0,
        data_dir=tmp_path,
        group_id=f"g{tag}",
        edge_node_id=NODE,
        ha_discovery_prefix=f"ha{tag}",
        ha_command_prefix=f"hacmd{tag}",
        link_check_s=0.1,
        stale_after_s=3000,
        **changes,
    )


def check_seq(host: SparkplugHost) -> None:
    """Every message after an NBIRTH carries the previous seq + 1 (mod 256); NDEATH none."""
    previous: int | None = None
    for r in host.received:
        if r.message_type in ("NCMD", "DCMD"):
            continue  # the host's own commands
        if r.message_type == "NDEATH":
            assert r.seq is None
            continue
        if r.message_type == "NBIRTH":
            assert r.seq == 0
        else:
            assert previous is not None, r.message_type
            assert r.seq == (previous + 1) % 256, (r.message_type, r.seq, previous)
        previous = r.seq


async def test_a_sparkplug_host_sees_births_data_deaths_and_the_battery_follow_its_dcmd(
    simulator: Service[SimSettings],
    probe: MqttBus,
    mqtt_settings: MqttSettings,
    sim_clock: ManualClock,
    tmp_path: Path,
) -> None:
    settings = bridge_settings(mqtt_settings, tmp_path)
    host = SparkplugHost(settings.group_id)
    await host.attach(probe)
    bridge_service = build_bridge(
        settings,
        MqttBus(mqtt_settings),
        make_link=lambda: MqttBus(link_settings(settings)),
        clock=sim_clock,
    )
    await bridge_service.start()
    bridge: Bridge = bridge_service.state
    step = simulator.state.step
    try:
        await step()
        expected = {
            "battery/p_kw",
            "battery/soc_pct",
            "pv/generation_kw",
            "pcc/p_kw",
            "grid/price_per_kwh",
            "battery/setpoint/battery_p_kw",
        }
        # a site is born with the metrics it has so far, and born again when new ones arrive
        # (the price may come after the first DBIRTH): wait for the birth with all of them
        await wait_for(
            lambda: any(expected <= set(b.metrics()) for b in host.of("DBIRTH", "site-1")),
            20,
            message="NBIRTH + a DBIRTH with every metric of the step",
        )
        (nbirth,) = host.of("NBIRTH")
        assert (nbirth.qos, nbirth.retain, nbirth.seq) == (0, False, 0)
        bd_seq = nbirth.value("bdSeq")
        assert nbirth.metrics()["bdSeq"].datatype == 8  # UInt64
        assert nbirth.value("Node Control/Rebirth") is False
        assert nbirth.payload.timestamp > 0
        dbirth = next(b for b in host.of("DBIRTH", "site-1") if expected <= set(b.metrics()))
        birth = dbirth.metrics()
        for name, unit in (
            ("battery/p_kw", "kW"),
            ("battery/soc_pct", "%"),
            ("pv/generation_kw", "kW"),
            ("pcc/p_kw", "kW"),
            ("grid/price_per_kwh", "EUR/kWh"),
        ):
            metric = birth[name]
            assert metric.datatype == 10, name  # Double, in the birth only
            assert dict(
                zip(
                    metric.properties.keys,
                    [v.string_value for v in metric.properties.values],
                    strict=True,
                )
            ) == {"engUnit": unit}
        assert "battery/setpoint/battery_p_kw" in birth

        # report by exception: the next step sends changed metrics only, no datatypes
        known = {n: dbirth.value(n) for n in birth}
        sim_clock.advance(900)
        await step()
        await wait_for(lambda: bool(host.of("DDATA", "site-1")), 20, message="DDATA")
        data = host.of("DDATA", "site-1")[0]
        assert data.payload.metrics
        for metric in data.payload.metrics:
            assert metric.name in birth
            assert not metric.HasField("datatype")
            assert data.value(metric.name) != known[metric.name], metric.name

        # a rebirth request: NBIRTH (seq 0, same bdSeq) and the DBIRTH again
        births = len(host.of("DBIRTH"))
        await host.rebirth(NODE)
        await wait_for(lambda: len(host.of("DBIRTH")) > births, 20, message="rebirth")
        assert [b.value("bdSeq") for b in host.of("NBIRTH")] == [bd_seq, bd_seq]

        # a DCMD write: a setpoint of the contract, the ack as metrics, the battery follows
        await host.write(NODE, "site-1", "battery/setpoint/battery_p_kw", 1.5)

        def status() -> Any:
            values = [r.value("battery/setpoint/status") for r in host.of("DDATA", "site-1")]
            return [v for v in values if v is not None]

        await wait_for(lambda: "accepted" in status(), 20, message="accepted")
        applied = [r.value("battery/setpoint/applied_value") for r in host.of("DDATA", "site-1")]
        assert 1.5 in applied
        sim_clock.advance(60)
        await step()
        await wait_for(
            lambda: simulator.state.last.battery_p_kw[0] == pytest.approx(1.5),
            20,
            message="battery at 1.5 kW",
        )
        await wait_for(
            lambda: any(
                r.value("battery/p_kw") == pytest.approx(1.5) for r in host.of("DDATA", "site-1")
            ),
            20,
            message="battery/p_kw 1.5 in DDATA",
        )

        # a DCMD to a metric that is not writable is refused, visibly
        await host.write(NODE, "site-1", "battery/soc_pct", 99.0)
        await wait_for(
            lambda: any(r.value("bridge/last_command_error") for r in host.of("DDATA", "site-1")),
            20,
            message="refusal",
        )

        # the site goes quiet: DDEATH; it reports again: DBIRTH
        sim_clock.advance(3001)
        await wait_for(lambda: bool(host.of("DDEATH", "site-1")), 20, message="DDEATH")
        dead_at = len(host.received)
        await step()
        await wait_for(
            lambda: any(r.message_type == "DBIRTH" for r in host.received[dead_at:]),
            20,
            message="DBIRTH after DDEATH",
        )

        # the connection dies: the broker publishes the NDEATH will; a new session, bdSeq + 1
        link = bridge.link
        assert isinstance(link, MqttBus)
        await link.abort()
        await wait_for(lambda: len(host.of("NBIRTH")) == 3, 20, message="NDEATH and a new NBIRTH")
        (death,) = host.of("NDEATH")
        assert (death.qos, death.retain, death.seq) == (1, False, None)
        assert [m.name for m in death.payload.metrics] == ["bdSeq"]
        assert death.value("bdSeq") == bd_seq
        assert host.of("NBIRTH")[-1].value("bdSeq") == (bd_seq + 1) % 256
        check_seq(host)
    finally:
        await bridge_service.stop()
    # a clean stop announces the death itself, with the session's bdSeq
    await wait_for(lambda: len(host.of("NDEATH")) == 2, 20, message="NDEATH on stop")
    assert host.of("NDEATH")[-1].value("bdSeq") == (bd_seq + 1) % 256


class HomeAssistant:
    """A stand-in for HA's MQTT integration: discovery configs, states, availability."""

    def __init__(self, bus: MqttBus, prefix: str) -> None:
        self.bus, self.prefix = bus, prefix
        self.configs: dict[str, dict[str, Any]] = {}
        self.retained: set[str] = set()
        self.last: dict[str, bytes] = {}
        self.jinja = SandboxedEnvironment()

    async def attach(self) -> None:
        await self.bus.subscribe(f"{self.prefix}/#", 1, self._config)

    async def _config(self, raw: RawMessage) -> None:
        if raw.topic.endswith("/config") and raw.payload:
            self.configs[raw.topic] = json.loads(raw.payload)
            if raw.retain:
                self.retained.add(raw.topic)

    async def follow(self, topic: str) -> None:
        async def keep(raw: RawMessage) -> None:
            self.last[raw.topic] = raw.payload

        await self.bus.subscribe(topic, 1, keep)

    def render(self, template: str, topic: str) -> str:
        payload = self.last[topic]
        return self.jinja.from_string(template).render(
            value_json=json.loads(payload), value=payload.decode()
        )

    def state(self, config: dict[str, Any]) -> str:
        return self.render(config.get("value_template", "{{ value }}"), config["state_topic"])

    def available(self, config: dict[str, Any]) -> bool:
        return all(
            self.render(a["value_template"], a["topic"]) == a.get("payload_available", "online")
            for a in config["availability"]
        )


async def test_home_assistant_discovers_every_site_entity_follows_states_and_sets_the_battery(
    simulator: Service[SimSettings],
    probe: MqttBus,
    mqtt_settings: MqttSettings,
    sim_clock: ManualClock,
    tmp_path: Path,
) -> None:
    settings = bridge_settings(mqtt_settings, tmp_path, sparkplug_enabled=False)
    bridge_service = build_bridge(settings, MqttBus(mqtt_settings), clock=sim_clock)
    await bridge_service.start()
    step = simulator.state.step
    try:
        await step()
        await wait_for(
            lambda: len(bridge_service.state.ha_published) >= 20, 20, message="discovery configs"
        )
        # `ha_published` counts what the bridge handed to its bus, not what the broker holds: a
        # subscriber attached now can see those configs arrive live (retain 0) rather than
        # retained. An early subscriber sees every config through the broker first; then HA
        # arrives.
        early = HomeAssistant(probe, settings.ha_discovery_prefix)
        await probe.subscribe(f"{settings.ha_discovery_prefix}/+/+/+/config", 1, early._config)
        await wait_for(
            lambda: set(bridge_service.state.ha_published) <= set(early.configs),
            20,
            message="every config through the broker",
        )
        ha = HomeAssistant(probe, settings.ha_discovery_prefix)  # arrives later: retained
        await ha.attach()
        await wait_for(
            lambda: set(early.configs) <= set(ha.configs), 20, message="all configs, retained"
        )
        assert ha.retained == set(ha.configs)
        rules = load_rules()
        for topic, config in ha.configs.items():
            assert check_discovery(topic, config, rules, settings.ha_discovery_prefix) == [], topic
        by_id = {c["unique_id"]: c for c in ha.configs.values()}
        devices = {json.dumps(c["device"]["identifiers"]) for c in ha.configs.values()}
        assert devices == {'["derbus_site-1"]'}  # one HA device for the site
        for wanted in (
            "pv_generation_kw",
            "battery_soc_pct",
            "battery_p_kw",
            "pcc_p_kw",
            "load_p_kw",
            "ev_p_kw",
            "battery_setpoint",
        ):
            assert f"derbus_site-1_{wanted}" in by_id, wanted
        for config in ha.configs.values():
            await ha.follow(config["state_topic"])
            for a in config["availability"]:
                await ha.follow(a["topic"])
        sensors = [
            c
            for t, c in ha.configs.items()
            if "/sensor/" in t and c.get("device_class") in ("power", "battery", "energy")
        ]
        await wait_for(
            lambda: all(c["state_topic"] in ha.last for c in sensors), 20, message="states"
        )
        soc = by_id["derbus_site-1_battery_soc_pct"]
        reading = json.loads(ha.last[soc["state_topic"]])
        assert float(ha.state(soc)) == pytest.approx(reading["soc_pct"])
        for config in sensors:
            float(ha.state(config))  # every numeric state renders as a number
        assert ha.available(soc)

        # HA sets the battery: number → setpoint of the contract → the simulator follows
        number = by_id["derbus_site-1_battery_setpoint"]
        await probe.publish(number["command_topic"], b"-1.25", qos=1)
        await wait_for(
            lambda: (
                number["state_topic"] in ha.last
                and json.loads(ha.last[number["state_topic"]])["status"] == "accepted"
            ),
            20,
            message="accepted",
        )
        assert float(ha.state(number)) == pytest.approx(-1.25)
        status = by_id["derbus_site-1_battery_setpoint_status"]
        assert ha.state(status) == "accepted"
        sim_clock.advance(60)
        await step()
        await wait_for(
            lambda: simulator.state.last.battery_p_kw[0] == pytest.approx(-1.25),
            20,
            message="battery follows",
        )
        await wait_for(
            lambda: float(ha.state(by_id["derbus_site-1_battery_p_kw"])) == pytest.approx(-1.25),
            20,
            message="HA sees it",
        )
    finally:
        await bridge_service.stop()
