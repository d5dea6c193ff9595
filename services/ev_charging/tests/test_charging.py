"""The service state on an in-memory bus with a stand-in station: setpoints, plans, KPIs, REST."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from derbus import topics
from derbus.bus import InMemoryBroker, InMemoryBus
from derbus.http import make_app
from derbus.messages import (
    MeterReading,
    OcppVersion,
    Priority,
    SetpointAck,
    SetpointCommand,
)
from derbus.service import Service
from derbus.testing import BusRecorder, price_series, setpoint_command, wait_for
from edge_simulator.testing import ManualClock
from ev_charging.charging import EvCharging
from ev_charging.ocpp_model import MeterSample
from ev_charging.service import build_service
from ev_charging.settings import Settings, StationConfig

T0 = datetime(2026, 6, 22, 10, 0, tzinfo=UTC)
SITE = "site-1"


class Station:
    """A stand-in station link: records the requests, answers what it is told."""

    def __init__(self, version: OcppVersion = "1.6", answer: str = "Accepted") -> None:
        self._version: OcppVersion = version
        self.answer = answer
        self.calls: list[tuple[str, dict[str, Any]]] = []

    @property
    def version(self) -> OcppVersion:
        return self._version

    async def set_charging_profile(self, request: dict[str, Any]) -> str:
        self.calls.append(("set", request))
        return self.answer

    async def clear_charging_profile(self, request: dict[str, Any]) -> str:
        self.calls.append(("clear", request))
        return "Accepted"


def limit_w(request: dict[str, Any]) -> float:
    periods = request["cs_charging_profiles"]["charging_schedule"]["charging_schedule_period"]
    return float(periods[0]["limit"])


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
async def world(
    clock: ManualClock,
) -> AsyncIterator[tuple[Service[Settings, EvCharging], InMemoryBus]]:
    broker = InMemoryBroker()
    settings = Settings(
        api_port=0,
        ocpp_port=0,
        default_mode="now",
        plan_step_s=3600,
        default_dwell_h=4,
        stations={"cp": StationConfig(site_id=SITE, max_kw=11, min_kw=1.4, id_tokens=("OK",))},
    )
    service = build_service(settings, InMemoryBus(broker), clock=clock)
    probe = InMemoryBus(broker)
    await service.bus.connect()
    await probe.connect()
    yield service, probe
    await service.state.close()


def command(sid: str, value: float, ttl_s: float, now: datetime) -> SetpointCommand:
    return setpoint_command(
        value,
        now,
        target="ev_limit_kw",
        ttl_s=ttl_s,
        source="t",
        setpoint_id=sid,
        priority=Priority.SITE_OPTIMISER,
    )


async def test_setpoint_during_transaction_waits_for_the_station(
    world: tuple[Service[Settings, EvCharging], InMemoryBus], clock: ManualClock
) -> None:
    service, probe = world
    state = service.state
    acks: BusRecorder[SetpointAck] = BusRecorder(topics.SETPOINT_ACK, service.root)
    await acks.attach(probe)
    link = Station()
    await state.on_connect("cp", link)
    ok, tx = await state.start_transaction("cp", 1, "OK", 10.0)
    assert ok
    # refused by the station → rejected, nothing held
    link.answer = "Rejected"
    first = await (await state.submit(SITE, "cp-1", command("a", 5.0, 60, clock())))
    assert first.status == "rejected"
    assert "refused the charging profile: Rejected" in (first.reason or "")
    assert state.stations["cp"].connectors[1].arbiter.idle
    # accepted by the station → accepted, a 5 kW TxProfile for the transaction, lasting the TTL
    link.answer = "Accepted"
    second = await (await state.submit(SITE, "cp-1", command("b", 5.0, 60, clock())))
    assert second.status == "accepted"
    kind, request = link.calls[-1]
    assert kind == "set"
    assert limit_w(request) == 5000
    assert request["cs_charging_profiles"]["transaction_id"] == int(tx)
    assert request["cs_charging_profiles"]["charging_schedule"]["duration"] == 61
    # TTL lapses: expired ack and the profile is cleared
    clock.now = T0 + timedelta(seconds=61)
    await state.expire()
    assert link.calls[-1][0] == "clear"
    await wait_for(
        lambda: [a.status for a in acks.values if a.setpoint_id == "b"] == ["accepted", "expired"],
        message="b accepted then expired",
    )
    assert [a.status for a in acks.values if a.setpoint_id == "a"] == ["rejected"]
    assert state.stations["cp"].connectors[1].limit_kw is None


async def test_id_token_policy_and_unknown_stations(
    world: tuple[Service[Settings, EvCharging], InMemoryBus],
) -> None:
    state = world[0].state
    assert state.authorize("cp", "OK")
    assert not state.authorize("cp", "NOPE")
    assert not state.authorize("cp", None)
    ok, _ = await state.start_transaction("cp", 1, "NOPE", 0.0)
    assert not ok
    assert state.stations["cp"].connectors[1].transaction_id is None
    assert state.admit("stranger") == "unknown station 'stranger'"
    await state.service.update_config({"accept_unknown": True})
    assert state.admit("stranger") is None
    assert state.stations["stranger"].config.site_id == "site-0"


async def test_pv_mode_plan_limits_the_station_and_kpis_split_pv(
    world: tuple[Service[Settings, EvCharging], InMemoryBus], clock: ManualClock
) -> None:
    service, _ = world
    state = service.state
    link = Station()
    await state.on_connect("cp", link)
    # the site exports 6 kW without the EV (no forecast: the PCC reading persists)
    state.on_meter_reading(SITE, "pcc", MeterReading(ts=clock(), source="m", p_kw=-6.0))
    await state.start_transaction("cp", 1, "OK", 0.0)
    conn = state.stations["cp"].connectors[1]
    await state.set_need(conn, T0 + timedelta(hours=3), 12.0, "pv")
    session = conn.session
    assert session is not None
    assert session.plan is not None
    # 6 kW surplus for 3 h is 18 kWh ≥ 12: 6, 6, 0 (the need is met in hour 2)
    assert session.plan.p_kw == pytest.approx([6.0, 6.0, 0.0])
    assert session.need_source == "user"
    await state.on_status("cp", 1, "Charging")  # the station's next message: the limit goes out
    await state.apply(conn)
    assert limit_w(link.calls[-1][1]) == 6000
    # 1 h at 6 kW while the site (with the EV) exports 0: all from PV
    state.on_meter_reading(SITE, "pcc", MeterReading(ts=clock(), source="m", p_kw=0.0))
    clock.now = T0 + timedelta(hours=1)
    await state.on_meter("cp", 1, MeterSample(p_kw=6.0, e_kwh=6.0))
    # then 1 h at 6 kW with 3 kW imported: half from the grid, at the tariff's price
    state.on_meter_reading(SITE, "pcc", MeterReading(ts=clock(), source="m", p_kw=3.0))
    clock.now = T0 + timedelta(hours=2)
    await state.on_meter("cp", 1, MeterSample(p_kw=6.0, e_kwh=12.0))
    kpis = state.session_message(conn, session).kpis
    assert kpis.energy_kwh == pytest.approx(12.0)
    assert kpis.pv_kwh == pytest.approx(9.0)
    assert kpis.grid_kwh == pytest.approx(3.0)
    assert kpis.cost == pytest.approx(3.0 * service.settings.tariff.price_at(clock()))


async def test_price_series_is_used_until_stale(
    world: tuple[Service[Settings, EvCharging], InMemoryBus], clock: ManualClock
) -> None:
    state = world[0].state
    series = price_series(
        [0.5, 0.6], T0, valid_until=T0 + timedelta(hours=1), zone="ES", source="p"
    )
    state.on_price_series(SITE, series)
    assert state.import_price(SITE, T0 + timedelta(minutes=70)) == 0.6
    assert state.price_status(SITE) == "series"
    clock.now = T0 + timedelta(hours=1)
    assert state.import_price(SITE, clock()) == state.settings.tariff.price_at(clock())
    assert state.price_status(SITE).startswith("tariff (series stale")


async def test_rest_session_need_and_stations(
    world: tuple[Service[Settings, EvCharging], InMemoryBus], clock: ManualClock
) -> None:
    service, _ = world
    state = service.state
    await state.on_connect("cp", Station())
    await state.start_transaction("cp", 1, "OK", 0.0)
    app = make_app(service, manage_lifecycle=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        r = await c.put(
            "/sessions/cp-1",
            json={"energy_need_kwh": 30, "mode": "minpv", "departure": "2026-06-22T16:00:00Z"},
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["mode"] == "minpv"
        assert body["energy_need_kwh"] == 30
        assert body["need_source"] == "user"
        assert len(body["plan_kw"]) == 6
        bad = await c.put("/sessions/cp-1", json={"energy_need_kwh": -1})
        assert bad.status_code == 422
        assert (await c.put("/sessions/nope-1", json={"mode": "pv"})).status_code == 404
        stations = (await c.get("/stations")).json()
        assert stations[0]["connected"]
        assert stations[0]["connectors"][0]["transaction_id"] is not None
        sessions = (await c.get("/sessions")).json()
        assert [s["mode"] for s in sessions] == ["minpv"]
        assert (await c.get("/prices/site-1")).status_code == 404
