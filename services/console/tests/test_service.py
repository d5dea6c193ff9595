"""The console on an in-memory bus: what it folds, what it pushes, the pages and the forms."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from console.service import build_service
from console.settings import Settings
from console.state import FLEET, ConsoleState, site_channel
from derbus import topics
from derbus.bus import InMemoryBus, RawMessage
from derbus.http import make_app
from derbus.messages import (
    BatteryTelemetry,
    MeterReading,
    PvTelemetry,
    ServiceStatus,
    SetpointAck,
    SetpointCommand,
)
from derbus.service import Service

T0 = datetime(2026, 6, 1, 10, 0, tzinfo=UTC)
TOKEN = "secret-token"


@pytest.fixture
async def console(tmp_path: Path) -> AsyncIterator[Service[Settings, ConsoleState]]:
    settings = Settings(
        data_dir=tmp_path,
        api_token=TOKEN,
        history_step_s=10,  # type: ignore[arg-type]
        service_urls={"peak_shaving": "http://127.0.0.1:9"},
    )
    service = build_service(settings, InMemoryBus())
    # the tests flush themselves: the service's own push every 0.1 s would race them (it once
    # sent the readings before the test's flush, under load)
    service._tasks[:] = [t for t in service._tasks if t.name != "push"]
    await service.start()
    yield service
    await service.stop()


async def publish(
    service: Service[Settings, ConsoleState],
    spec: topics.TopicSpec,
    message,
    site: str,
    device: str,
) -> None:  # type: ignore[type-arg, no-untyped-def]
    await service.bus.publish(spec.topic(site, device), message.to_json_bytes(), 1, spec.retain)
    await service.bus.drain()  # type: ignore[attr-defined]


def client(service: Service[Settings, ConsoleState]) -> httpx.AsyncClient:
    app = make_app(service, manage_lifecycle=False)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://console")


async def test_readings_fold_into_the_site_and_are_pushed_once_per_flush(
    console: Service[Settings, ConsoleState],
) -> None:
    state = console.state
    fleet = state.listen(FLEET)
    site = state.listen(site_channel("s1"))
    for k in range(3):  # three readings 5 s apart: one chart row per 10 s of reading time
        ts = T0 + timedelta(seconds=5 * k)
        await publish(
            console, topics.METER, MeterReading(ts=ts, source="t", p_kw=2.0 + k), "s1", "pcc"
        )
    await publish(console, topics.PV, PvTelemetry(ts=T0, source="t", generation_kw=4.0), "s1", "pv")
    await publish(
        console,
        topics.BATTERY,
        BatteryTelemetry(ts=T0, source="t", p_kw=-1.0, soc_pct=55.0),
        "s1",
        "battery",
    )
    assert state.flush() == 2
    assert state.flush() == 0  # nothing new
    event = json.loads(fleet.get_nowait())
    assert event["sites"]["s1"]["pcc_kw"] == 4.0
    assert event["sites"]["s1"]["soc_pct"] == 55.0
    assert fleet.empty()
    site_event = json.loads(site.get_nowait())
    assert [r[1] for r in site_event["rows"]] == [2.0, 4.0]
    assert site_event["values"]["pv_kw"] == 4.0


async def test_slow_page_keeps_the_newest_events(console: Service[Settings, ConsoleState]) -> None:
    state = console.state
    queue = state.listen(FLEET)
    for k in range(100):
        await publish(
            console,
            topics.METER,
            MeterReading(ts=T0 + timedelta(seconds=k), source="t", p_kw=float(k)),
            "s1",
            "pcc",
        )
        state.flush()
    events = [json.loads(queue.get_nowait()) for _ in range(queue.qsize())]
    assert len(events) == 64
    assert events[-1]["sites"]["s1"]["pcc_kw"] == 99.0


async def test_service_status_and_dead_letters_make_rows(
    console: Service[Settings, ConsoleState],
) -> None:
    status = ServiceStatus(
        ts=T0, source="ps", service="peak_shaving", state="degraded", reason="ema: infeasible"
    )
    await publish(console, topics.SERVICE_STATUS, status, topics.PLATFORM_SITE, "peak_shaving")
    console.state.on_dead_letter("peak_shaving")
    rows = {r["service"]: r for r in console.state.service_rows()}
    assert rows["peak_shaving"]["state"] == "degraded"
    assert rows["peak_shaving"]["reason"] == "ema: infeasible"
    assert rows["peak_shaving"]["dead_letters"] == 1
    # an edge gateway on its site's credentials reports at its site: listed apart per site
    edge = status.model_copy(update={"service": "meter_gateway", "state": "online", "reason": None})
    await publish(console, topics.SERVICE_STATUS, edge, "site-a", "meter_gateway")
    await publish(
        console,
        topics.SERVICE_STATUS,
        edge.model_copy(update={"state": "offline"}),
        "site-b",
        "meter_gateway",
    )
    console.state.on_dead_letter("meter_gateway", "site-b")
    rows = {r["service"]: r for r in console.state.service_rows()}
    assert rows["meter_gateway@site-a"]["state"] == "online"
    assert rows["meter_gateway@site-b"]["state"] == "offline"
    assert rows["meter_gateway@site-b"]["dead_letters"] == 1
    assert rows["meter_gateway@site-a"]["dead_letters"] == 0


async def test_setpoint_form_needs_the_token_and_publishes_on_the_bus(
    console: Service[Settings, ConsoleState],
) -> None:
    await publish(console, topics.METER, MeterReading(ts=T0, source="t", p_kw=1.0), "s1", "pcc")
    sent: list[RawMessage] = []

    async def record(message: RawMessage) -> None:
        sent.append(message)

    await console.bus.subscribe(topics.SETPOINT.filter(root=console.root), 1, record)
    form = {
        "target": "battery_p_kw",
        "device_id": "battery",
        "value": "2.5",
        "ttl_s": "60",
        "priority": "manual",
    }
    async with client(console) as http:
        missing = await http.post("/sites/s1/setpoints", data=form)
        assert missing.status_code == 401
        assert 'id="err-token">a token is required' in missing.text
        wrong = await http.post("/sites/s1/setpoints", data=form | {"token": "nope"})
        assert wrong.status_code == 403
        bad = await http.post("/sites/s1/setpoints", data=form | {"token": TOKEN, "value": "lots"})
        assert bad.status_code == 422
        assert 'id="err-value"' in bad.text
        await console.bus.drain()  # type: ignore[attr-defined]
        assert sent == []
        ok = await http.post("/sites/s1/setpoints", data=form | {"token": TOKEN})
        assert ok.status_code == 200
        await console.bus.drain()  # type: ignore[attr-defined]
    (message,) = sent
    assert message.topic == topics.SETPOINT.topic("s1", "battery", console.root)
    command = SetpointCommand.from_json_bytes(message.payload)
    assert (command.value, command.ttl_s, command.source) == (2.5, 60.0, "console")
    assert f'id="ack-{command.setpoint_id}"' in ok.text
    ack = SetpointAck(ts=T0, source="sim", setpoint_id=command.setpoint_id, status="accepted")
    await publish(console, topics.SETPOINT_ACK, ack, "s1", "battery")
    log = list(console.state.sites["s1"].log)
    assert [e["kind"] for e in log[:2]] == ["ack", "set"]


async def test_pages_render(console: Service[Settings, ConsoleState]) -> None:
    await publish(console, topics.METER, MeterReading(ts=T0, source="t", p_kw=1.25), "s1", "pcc")
    async with client(console) as http:
        fleet = await http.get("/fleet")
        assert fleet.status_code == 200
        assert 'id="site-s1"' in fleet.text
        assert "1.25" in fleet.text
        assert (await http.get("/sites/s1")).status_code == 200
        assert (await http.get("/sites/nowhere")).status_code == 404
        decisions = await http.get("/decisions/s1")
        assert "No load forecast for this site yet" in decisions.text
        feeder = await http.get("/feeder")
        assert feeder.text.count("<circle") == 2 * 129
        plans = (await http.get("/api/sites/s1/plans")).json()
        assert plans["schedule"]["t"] == []
        assert (await http.get("/static/console.js")).status_code == 200
        assert (await http.get("/static/../settings.py")).status_code == 404


async def test_planner_edits_need_the_token_and_add_houses(
    console: Service[Settings, ConsoleState],
) -> None:
    base = {"name": "street", "start": "2026-06-01T00:00", "hours": "24", "runs": "1"}
    async with client(console) as http:
        refused = await http.post("/planner/edit", data=base | {"action": "add_house"})
        assert refused.status_code == 401
        added = await http.post(
            "/planner/edit", data=base | {"action": "add_house", "token": TOKEN}
        )
        assert added.status_code == 200
        assert 'name="houses-0-house_id" type="text" value="house-1"' in added.text
        down = await http.post("/planner/edit", data=base | {"action": "check", "token": TOKEN})
        assert down.status_code == 502  # no load manager to check with: said, not hidden
        assert "load_manager" in down.text
