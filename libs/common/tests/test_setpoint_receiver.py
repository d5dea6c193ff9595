"""One receiver's answers on the in-memory bus and over REST: every command with an id gets one."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Collection, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from derbus import topics
from derbus.bus import InMemoryBroker, InMemoryBus
from derbus.http import make_app
from derbus.messages import DeadLetter, Priority, SetpointAck, SetpointCommand
from derbus.service import Service
from derbus.setpoint_receiver import done, serve_setpoints
from derbus.setpoints import SetpointArbiter, TargetLimits
from derbus.settings import ServiceSettings
from derbus.testing import BusRecorder, setpoint_command, wait_for

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
ROOT = "test/receiver"


@dataclass
class Battery:
    """A one-site receiver with a battery (and a meter that takes no setpoints)."""

    service: Service[ServiceSettings] | None = None
    now_: datetime = T0
    arbiter: SetpointArbiter = field(
        default_factory=lambda: SetpointArbiter("bat", {"battery_p_kw": TargetLimits(-5, 5)})
    )
    hang: bool = False

    @property
    def source(self) -> str:
        return "bat"

    def now(self) -> datetime:
        return self.now_

    def sites(self) -> Iterable[str]:
        return ["site-1", "site-2"]

    def devices(self, site_id: str) -> Collection[str] | None:
        return {"site-1": {"battery"}, "site-2": {"battery", "pcc"}}.get(site_id)

    async def submit(
        self, site_id: str, device_id: str, cmd: SetpointCommand
    ) -> asyncio.Future[SetpointAck]:
        assert self.service is not None
        if self.hang:
            return asyncio.get_running_loop().create_future()
        acks = self.arbiter.submit(cmd, self.now_)
        for ack in acks:
            await self.service.publish(
                topics.SETPOINT_ACK, ack, site_id=site_id, device_id=device_id
            )
        return done(acks[0])


@dataclass
class Rig:
    service: Service[ServiceSettings]
    receiver: Battery
    probe: InMemoryBus
    acks: BusRecorder[SetpointAck]
    letters: BusRecorder[DeadLetter]

    async def send(self, site: str, device: str, payload: bytes) -> None:
        await self.probe.publish(topics.SETPOINT.topic(site, device, ROOT), payload)
        await self.probe.drain()

    def sample(self, name: str, **labels: str) -> float:
        return self.service.metrics.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    broker = InMemoryBroker()
    settings = ServiceSettings(mqtt={"root": ROOT}, api_token="tok")
    service: Service[ServiceSettings] = Service("bat", settings, InMemoryBus(broker))
    receiver = Battery(service)
    serve_setpoints(service, receiver, lambda: 0.2)
    probe = InMemoryBus(broker)
    await probe.connect()
    acks: BusRecorder[SetpointAck] = BusRecorder(topics.SETPOINT_ACK, ROOT)
    letters: BusRecorder[DeadLetter] = BusRecorder(topics.DEAD_LETTER, ROOT)
    await acks.attach(probe)
    await letters.attach(probe)
    await service.start()
    yield Rig(service, receiver, probe, acks, letters)
    await service.stop()
    await probe.close()


def command(sid: str, value: float = 1.0, prio: Priority = Priority.MANUAL) -> bytes:
    return setpoint_command(
        value, T0, source="scada", setpoint_id=sid, priority=prio
    ).to_json_bytes()


BAD_UNIT = command("ops-1").replace(b'"unit":"kW"', b'"unit":"W"')


async def test_an_invalid_command_with_an_id_is_rejected_dead_lettered_and_counted(
    rig: Rig,
) -> None:
    assert command("ops-1") != BAD_UNIT
    await rig.send("site-1", "battery", BAD_UNIT)
    await wait_for(lambda: len(rig.acks.values) == 1 and len(rig.letters.values) == 1, 5)
    ((topic, ack),) = rig.acks.messages
    assert topic == topics.SETPOINT_ACK.topic("site-1", "battery", ROOT)
    assert (ack.setpoint_id, ack.status, ack.field) == ("ops-1", "rejected", "unit")
    assert "unknown unit 'W'" in (ack.reason or "")
    assert rig.letters.values[0].error.startswith("unit: unknown unit 'W'")
    assert rig.sample("derbus_messages_invalid_total", topic="control.set") == 1
    assert rig.sample("derbus_setpoints_rejected_total", reason="invalid") == 1


async def test_not_json_no_id_or_another_receivers_site_is_only_dead_lettered(rig: Rig) -> None:
    await rig.send("site-1", "battery", b"\x00 definitely not json")
    await rig.send("site-1", "battery", BAD_UNIT.replace(b'"setpoint_id":"ops-1",', b""))
    await rig.send("site-9", "battery", BAD_UNIT)
    await rig.send("site-1", "battery", command("ok"))  # and the receiver goes on
    await wait_for(lambda: len(rig.letters.values) == 3 and len(rig.acks.values) == 1, 5)
    assert [(a.setpoint_id, a.status) for a in rig.acks.values] == [("ok", "accepted")]
    assert rig.sample("derbus_messages_invalid_total", topic="control.set") == 3
    assert rig.sample("derbus_setpoints_rejected_total", reason="invalid") == 0


async def test_unknown_device_of_a_served_site_is_rejected_another_site_is_left_alone(
    rig: Rig,
) -> None:
    await rig.send("site-9", "battery", command("elsewhere"))
    await rig.send("site-1", "nosuch", command("ops-2"))
    await wait_for(lambda: len(rig.acks.values) == 1, 5)
    ((topic, ack),) = rig.acks.messages
    assert topic == topics.SETPOINT_ACK.topic("site-1", "nosuch", ROOT)
    assert (ack.setpoint_id, ack.status) == ("ops-2", "rejected")
    assert ack.reason == "unknown device 'nosuch' (devices of this site: battery)"
    assert rig.sample("derbus_setpoints_rejected_total", reason="unknown_device") == 1


async def test_valid_commands_reach_the_arbiter_queued_and_superseded_on_the_bus(
    rig: Rig,
) -> None:
    await rig.send("site-1", "battery", command("grid", -2.0, Priority.GRID_OPERATOR))
    await rig.send("site-1", "battery", command("man", 2.0, Priority.MANUAL))
    await rig.send("site-1", "battery", command("safe", 0.0, Priority.SAFETY))
    await wait_for(lambda: len(rig.acks.values) == 5, 5)
    assert [(a.setpoint_id, a.status, a.active_setpoint_id) for a in rig.acks.values] == [
        ("grid", "accepted", "grid"),
        ("man", "queued", "grid"),
        ("safe", "accepted", "safe"),
        ("grid", "superseded", "safe"),
        ("man", "superseded", "safe"),
    ]


async def test_an_invalid_payload_hook_that_fails_degrades_and_consumption_continues() -> None:
    broker = InMemoryBroker()
    service: Service[ServiceSettings] = Service(
        "x", ServiceSettings(mqtt={"root": ROOT}), InMemoryBus(broker)
    )
    seen: list[float] = []

    def explode(*_args: object) -> None:
        raise RuntimeError("hook broke")

    @service.on(topics.SETPOINT, on_invalid=explode)
    def on_cmd(cmd: SetpointCommand, _ctx: object) -> None:
        seen.append(cmd.value)

    await service.start()
    probe = InMemoryBus(broker)
    await probe.connect()
    topic = topics.SETPOINT.topic("s", "battery", ROOT)
    await probe.publish(topic, b"{}")
    await probe.publish(topic, command("fine", 3.0))
    await wait_for(lambda: seen == [3.0], 5)
    assert "hook broke" in service.degraded_reasons["handler:on_cmd:invalid"]
    assert (
        service.metrics.registry.get_sample_value(
            "derbus_handler_errors_total", {"handler": "on_cmd:invalid"}
        )
        == 1
    )
    await service.stop()
    await probe.close()


def test_rest_answers_with_the_ack_and_its_http_status() -> None:
    settings = ServiceSettings(mqtt={"root": ROOT}, api_token="tok")
    service: Service[ServiceSettings] = Service("bat", settings, InMemoryBus())
    receiver = Battery(service)
    serve_setpoints(service, receiver, lambda: 0.2)
    auth = {"Authorization": "Bearer tok"}
    url = "/devices/battery/setpoints"
    body = {"target": "battery_p_kw", "value": -2.0, "ttl_s": 60, "priority": "grid_operator"}
    with TestClient(make_app(service)) as client:
        assert client.post(url, json=body).status_code == 401
        # the battery exists on two sites: which one?
        assert client.post(url, json=body, headers=auth).status_code == 409
        url += "?site_id=site-1"
        ok = client.post(url, json={**body, "setpoint_id": "g1"}, headers=auth)
        assert (ok.status_code, ok.json()["status"], ok.json()["setpoint_id"]) == (
            200,
            "accepted",
            "g1",
        )
        assert ok.json()["ts"] == "2026-06-01T12:00:00Z", "stamped with the receiver's clock"
        low = client.post(url, json={**body, "value": 1.0, "priority": "manual"}, headers=auth)
        assert low.status_code == 202
        assert low.json()["status"] == "queued"
        assert (low.json()["active_setpoint_id"], low.json()["active_priority"]) == (
            "g1",
            "grid_operator",
        )
        out = client.post(url, json={**body, "value": 50}, headers=auth)
        assert out.status_code == 422
        assert out.json()["status"] == "rejected"
        assert "outside the allowed range" in out.json()["reason"]
        for bad, field in (
            (("unit", "W"), "unit"),
            (("ttl_s", 0), "ttl_s"),
            (("ttl_s", 999_999), "ttl_s"),
            (("value", "x"), "value"),
        ):
            refused = client.post(url, json={**body, bad[0]: bad[1]}, headers=auth)
            assert refused.status_code == 422, bad
            assert refused.json()["detail"][0]["loc"] == ["body", field]
        missing = client.post(url, json={"value": 1, "ttl_s": 5}, headers=auth)
        assert missing.json()["detail"][0]["loc"] == ["body", "target"]
        nosuch = client.post("/devices/nosuch/setpoints?site_id=site-1", json=body, headers=auth)
        assert nosuch.status_code == 404
        assert nosuch.json()["detail"].startswith("unknown device 'nosuch' on site 'site-1'")
        other = client.post("/devices/battery/setpoints?site_id=site-9", json=body, headers=auth)
        assert other.status_code == 404
        pcc = client.post("/devices/pcc/setpoints", json=body, headers=auth)
        assert pcc.status_code == 200, "one site has a pcc: no site_id needed"
        receiver.hang = True
        late = client.post(url, json=body, headers=auth)
        assert late.status_code == 504
    assert receiver.arbiter.value("battery_p_kw", T0 + timedelta(seconds=1)) == -2.0
