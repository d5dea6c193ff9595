"""The service on InMemoryBus: readings on the catalogue topics, the setpoint contract end to end."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from derbus import topics
from derbus.bus import InMemoryBus
from derbus.messages import (
    BatteryTelemetry,
    MeterReading,
    Priority,
    ReplayRequest,
    SetpointAck,
)
from derbus.testing import BusRecorder, setpoint_command, wait_for
from edge_simulator.resend import SentBuffer
from edge_simulator.service import build_service
from edge_simulator.settings import Settings

ROOT = "edge-test"


def settings(**kw: Any) -> Settings:
    return Settings(mqtt={"root": ROOT}, interval_s=3600.0, **kw)


async def started(clock: Any, **kw: Any) -> tuple[Any, InMemoryBus, dict[str, BusRecorder[Any]]]:
    bus = InMemoryBus()
    probe = InMemoryBus(bus.broker)
    await probe.connect()
    recs: dict[str, BusRecorder[Any]] = {
        "battery": BusRecorder(topics.BATTERY, ROOT),
        "meter": BusRecorder(topics.METER, ROOT),
        "ack": BusRecorder(topics.SETPOINT_ACK, ROOT),
        "load": BusRecorder(topics.LOAD, ROOT),
    }
    for r in recs.values():
        await r.attach(probe)
    service = build_service(settings(**kw), bus, clock=clock)
    await service.start()
    await recs["battery"].wait(1)
    return service, probe, recs


def command(value: float, ttl_s: float, clock: Any, **kw: Any) -> bytes:
    return setpoint_command(value, clock(), ttl_s=ttl_s, **kw).to_json_bytes()


async def test_publishes_every_device_of_the_contract(clock: Any) -> None:
    service, _probe, recs = await started(clock)
    await recs["meter"].wait(1)
    devices = {t.split("/")[-2] for t, _ in recs["load"].messages}
    assert devices == {"load", "ev", "load1", "load2"}
    meter: MeterReading = recs["meter"].values[0]
    battery: BatteryTelemetry = recs["battery"].values[0]
    assert recs["meter"].messages[0][0] == topics.METER.topic("site-1", "pcc", ROOT)
    load = next(m for t, m in recs["load"].messages if t.endswith("/load/load"))
    assert meter.p_kw == load.p_kw - service.state.last.pv_generation_kw[0] + battery.p_kw
    await service.stop()


async def test_battery_setpoint_acked_applied_then_expires(clock: Any) -> None:
    service, probe, recs = await started(clock)
    clock.advance(10)
    topic = topics.SETPOINT.topic("site-1", "battery", ROOT)
    await probe.publish(topic, command(-3.0, 60, clock, priority=Priority.SITE_OPTIMISER))
    await wait_for(lambda: len(recs["ack"].values) == 1, 5, message="ack")
    ack: SetpointAck = recs["ack"].values[0]
    assert (ack.status, ack.applied_value) == ("accepted", -3.0)
    await wait_for(lambda: len(recs["battery"].values) >= 2, 5, message="readings after setpoint")
    after: BatteryTelemetry = recs["battery"].values[-1]
    assert after.p_kw == -3.0
    sim = service.state
    assert sim.last.pcc_p_kw[0] == sim.last.load_total_kw[0] - sim.last.pv_generation_kw[0] - 3.0
    # after the TTL the battery reverts to self-consumption and the expiry is acknowledged
    clock.advance(61)
    await service.state.step()
    await wait_for(lambda: any(a.status == "expired" for a in recs["ack"].values), 5)
    last = sim.last
    assert last.battery_p_kw[0] != -3.0
    await service.stop()


async def test_one_immediate_step_per_site_between_regular_steps(clock: Any) -> None:
    """A controller answering every reading with a setpoint must not make the simulator re-step."""
    service, probe, recs = await started(clock)  # interval 1 h: no regular step in the test
    sim = service.state
    topic = topics.SETPOINT.topic("site-1", "battery", ROOT)
    opt = Priority.SITE_OPTIMISER

    async def send(value: float, setpoint_id: str) -> None:
        await probe.publish(topic, command(value, 60, clock, priority=opt, setpoint_id=setpoint_id))

        def accepted() -> bool:
            return any(
                a.setpoint_id == setpoint_id and a.status == "accepted" for a in recs["ack"].values
            )

        await wait_for(accepted, 5, message=f"accepted {setpoint_id}")

    await send(-3.0, "a")  # stepped at once: a reading with the new power
    await wait_for(lambda: len(recs["battery"].values) == 2, 5, message="immediate step")
    assert recs["battery"].values[-1].p_kw == -3.0
    await send(-2.0, "b")  # the second setpoint of the interval waits for the next step
    assert not sim.dirty
    assert sim.immediate_steps == 1
    await service.state.step()  # the regular step shows it
    await wait_for(lambda: len(recs["battery"].values) == 3, 5, message="regular step")
    assert [r.p_kw for r in recs["battery"].values[1:]] == [-3.0, -2.0]
    await send(-1.0, "c")  # after a regular step, a setpoint is stepped at once again
    await wait_for(lambda: len(recs["battery"].values) == 4, 5, message="immediate step")
    assert recs["battery"].values[-1].p_kw == -1.0
    assert sim.immediate_steps == 2
    await service.stop()


def test_kick_steps_each_site_at_once_only_once_per_regular_step(clock: Any) -> None:
    service = build_service(settings(), InMemoryBus(), clock=clock)
    sim = service.state
    sim.kick(0)
    sim.kick(0)
    assert sim.take_kicked() == {0}
    sim.kick(0)  # already stepped at once in this interval
    assert sim.take_kicked() == set()
    sim.stepped_all()
    sim.kick(0)
    assert sim.take_kicked() == {0}
    assert sim.immediate_steps == 2


async def test_out_of_range_and_foreign_setpoints(clock: Any) -> None:
    service, probe, recs = await started(clock)
    await probe.publish(topics.SETPOINT.topic("site-1", "battery", ROOT), command(50.0, 60, clock))
    await wait_for(lambda: len(recs["ack"].values) == 1, 5)
    ack = recs["ack"].values[0]
    assert ack.status == "rejected"
    assert "outside the allowed range" in (ack.reason or "")
    # a site this simulator does not run: left to its receiver, no ack at all
    await probe.publish(topics.SETPOINT.topic("other", "battery", ROOT), command(1.0, 60, clock))
    # a device of its site that takes no setpoints: rejected as unknown
    await probe.publish(topics.SETPOINT.topic("site-1", "pcc", ROOT), command(1.0, 60, clock))
    await probe.publish(
        topics.SETPOINT.topic("site-1", "load1", ROOT),
        command(1.0, 60, clock, target="load_on", unit="bool"),
    )
    await wait_for(lambda: len(recs["ack"].values) == 3, 5)
    assert [t for t, _ in recs["ack"].messages[1:]] == [
        topics.SETPOINT_ACK.topic("site-1", "pcc", ROOT),
        topics.SETPOINT_ACK.topic("site-1", "load1", ROOT),
    ]
    unknown = recs["ack"].values[1]
    assert unknown.status == "rejected"
    assert (unknown.reason or "").startswith("unknown device 'pcc'")
    assert recs["ack"].values[2].status == "accepted"
    await wait_for(
        lambda: any(t.endswith("/load1/load") and m.on for t, m in recs["load"].messages), 5
    )
    await service.stop()


async def test_rest_sites_and_state(clock: Any) -> None:
    from fastapi.testclient import TestClient

    from derbus.http import make_app

    service, _probe, _recs = await started(clock, sites=3)
    client = TestClient(make_app(service, manage_lifecycle=False))
    sites = client.get("/sites").json()["sites"]
    assert [s["site_id"] for s in sites] == ["site-0001", "site-0002", "site-0003"]
    record = client.get("/sites/site-0002").json()
    assert record["device_id"] == "site-0002"
    assert set(record) >= {"solar", "battery", "home_load", "grid_price", "net_grid_flow_kw"}
    assert client.get("/sites/nope").status_code == 404
    await service.stop()


async def test_devices_selection_publishes_only_those(clock: Any) -> None:
    service, probe, recs = await started(clock, devices="battery,pcc")
    await recs["meter"].wait(1)
    await probe.drain()
    assert recs["load"].messages == []
    assert service.settings.devices == ["pcc", "battery"]
    await service.stop()


def test_devices_setting_refuses_an_unknown_device() -> None:
    with pytest.raises(ValidationError, match=r"unknown devices.*heatpump"):
        settings(devices="pcc,heatpump")


async def test_rest_setpoints_follow_the_bus_contract(clock: Any) -> None:
    from fastapi.testclient import TestClient

    from derbus.http import make_app

    service, probe, recs = await started(clock, sites=2, api_token="tok")
    auth = {"Authorization": "Bearer tok"}
    body = {"target": "battery_p_kw", "value": -2.0, "ttl_s": 60, "priority": "grid_operator"}
    url = "/devices/battery/setpoints"
    with TestClient(make_app(service, manage_lifecycle=False)) as client:
        assert client.post(url, json=body).status_code == 401
        assert client.post(url, json=body, headers=auth).status_code == 409  # which site?
        url += "?site_id=site-0002"
        grid = client.post(url, json={**body, "setpoint_id": "g"}, headers=auth)
        assert (grid.status_code, grid.json()["status"]) == (200, "accepted")
        low = client.post(url, json={**body, "value": 1.0, "priority": "manual"}, headers=auth)
        assert (low.status_code, low.json()["status"]) == (202, "queued")
        assert low.json()["active_setpoint_id"] == "g"
        assert low.json()["applied_value"] == -2.0
        out = client.post(url, json={**body, "value": 99}, headers=auth)
        assert (out.status_code, out.json()["status"]) == (422, "rejected")
        unit = client.post(url, json={**body, "unit": "W"}, headers=auth)
        assert unit.status_code == 422
        assert unit.json()["detail"][0]["loc"] == ["body", "unit"]
        nosuch = client.post("/devices/pcc/setpoints?site_id=site-0002", json=body, headers=auth)
        assert nosuch.status_code == 404
    # what REST answered is on the bus as well, on the device of the site
    await probe.drain()
    on_bus = [(t, a.status) for t, a in recs["ack"].messages]
    ack_topic = topics.SETPOINT_ACK.topic("site-0002", "battery", ROOT)
    assert on_bus == [(ack_topic, "accepted"), (ack_topic, "queued"), (ack_topic, "rejected")]
    assert service.state.controls.overrides(clock()).battery_p_kw[1] == -2.0
    await service.stop()


async def test_readings_are_numbered_and_a_gap_is_sent_again_on_request(clock: Any) -> None:
    """Each stream counts +1 a reading; a replay request gets the very same payloads again."""
    service, probe, recs = await started(clock, sites=3)
    for _ in range(3):
        clock.advance(1)
        await service.state.step()
    await recs["meter"].wait(12)
    site2 = topics.METER.topic("site-0002", "pcc", ROOT)
    sent = [m for t, m in recs["meter"].messages if t == site2]
    assert [m.seq for m in sent] == [0, 1, 2, 3]
    ask = topics.REPLAY_REQUEST.topic("site-0002", "pcc", ROOT)
    request = ReplayRequest(ts=clock(), source="test", from_seq=1, to_seq=2)
    await probe.publish(ask, request.to_json_bytes())
    await wait_for(lambda: len(recs["meter"].messages) == 14, 5, message="two replayed")
    assert recs["meter"].messages[-2:] == [(site2, sent[1]), (site2, sent[2])]
    # a site or device the simulator does not have is not its stream: nothing is sent
    await probe.publish(
        topics.REPLAY_REQUEST.topic("site-0009", "pcc", ROOT), request.to_json_bytes()
    )
    await probe.publish(
        topics.REPLAY_REQUEST.topic("site-0002", "pcc", ROOT), request.to_json_bytes()
    )
    await wait_for(lambda: len(recs["meter"].messages) == 16, 5, message="the second request")
    assert {t for t, _ in recs["meter"].messages[14:]} == {site2}
    await service.stop()


def test_the_sent_buffer_keeps_the_newest_steps_within_its_bound() -> None:
    buffer = SentBuffer(n_sites=2, max_bytes=40)
    for step in range(5):
        seqs = buffer.number([0, 1])
        buffer.add([0, 1], seqs, [[b"a%09d" % step, b"b%09d" % step]])  # 20 bytes a step
    assert buffer.next_seq.tolist() == [5, 5]
    assert buffer.find(1, 0, 0, 10) == [b"b000000003", b"b000000004"]  # two steps kept
    seqs = buffer.number([1])  # a step of site 1 alone
    buffer.add([1], seqs, [[b"b-alone"]])
    assert buffer.find(1, 0, 5, 5) == [b"b-alone"]
    assert buffer.find(0, 0, 0, 10) == [b"a000000004"]
