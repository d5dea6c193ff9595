"""The service on InMemoryBus: readings → setpoints, restart mid-hour, KPIs, jobs over REST/bus."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from derbus import topics
from derbus.bus import InMemoryBroker, InMemoryBus
from derbus.http import make_app
from derbus.messages import (
    JobPlan,
    KpiReport,
    MeterReading,
    PvTelemetry,
    SetpointCommand,
)
from derbus.service import Service
from derbus.testing import BusRecorder, job_request, price_series, time_series
from load_manager.manager import LoadManager
from load_manager.service import build_service
from load_manager.settings import Settings

T0 = datetime(2026, 6, 1, 10, 0, tzinfo=UTC)  # the conftest clock's start
FakeClock = Any  # the `clock` fixture (a settable clock, see conftest)

AUTH = {"Authorization": "Bearer tok"}


class Rig:
    """A started service on an in-memory broker, a publisher and recorders."""

    def __init__(self, settings: Settings, clock: FakeClock, broker: InMemoryBroker) -> None:
        self.clock = clock
        self.broker = broker
        self.service: Service[Settings, LoadManager] = build_service(
            settings, InMemoryBus(broker), clock
        )
        self.pub = InMemoryBus(broker)
        self.root = settings.mqtt.root
        self.setpoints: BusRecorder[SetpointCommand] = BusRecorder(topics.SETPOINT, self.root)
        self.kpis: BusRecorder[KpiReport] = BusRecorder(topics.KPI, self.root)
        self.plans: BusRecorder[JobPlan] = BusRecorder(topics.JOB_PLAN, self.root)

    async def start(self) -> None:
        await self.pub.connect()
        for rec in (self.setpoints, self.kpis, self.plans):
            await rec.attach(self.pub)
        await self.service.start()

    async def stop(self) -> None:
        await self.service.stop()
        await self.pub.close()

    async def meter(self, p_kw: float, site: str = "site-1") -> None:
        msg = MeterReading(ts=self.clock.now, source="t", p_kw=p_kw)
        await self.pub.publish(topics.METER.topic(site, "pcc", self.root), msg.to_json_bytes())
        await self.pub.drain()

    async def cycle(self) -> None:
        await self.service.run_task("net_balance_cycle")
        await self.pub.drain()

    def load_commands(self, device: str) -> list[float]:
        return [
            m.value
            for t, m in self.setpoints.messages
            if topics.SETPOINT.parse(t, self.root).device_id == device  # type: ignore[union-attr]
        ]


@pytest.fixture
async def rig(make_settings: Any, clock: FakeClock) -> AsyncIterator[Rig]:
    r = Rig(make_settings(api_token="tok"), clock, InMemoryBroker())
    await r.start()
    yield r
    await r.stop()


async def test_pv_surplus_switches_load1_on_within_one_cycle(rig: Rig) -> None:
    await rig.meter(-3.0)  # 3 kW export at the top of the hour
    rig.clock.advance(10)
    await rig.meter(-3.0)
    await rig.cycle()
    assert rig.load_commands("load1") == [1.0]
    assert rig.load_commands("load2") == [0.0], "3 - 1.5 kW left is not enough for 2 kW"
    cmd = rig.setpoints.values[0]
    assert cmd.target == "load_on"
    assert cmd.priority == "site_optimiser"
    assert cmd.ttl_s == 900
    assert rig.service.state.net.integrator.balance_wh == pytest.approx(3.0 * 10 / 3.6)


async def test_setpoints_are_refreshed_before_their_ttl(rig: Rig) -> None:
    await rig.meter(-3.0)
    await rig.cycle()
    for _ in range(3):  # 3 x 300 s cycles; TTL 900 s, margin 60 s: refresh due at 840 s
        rig.clock.advance(300)
        await rig.meter(-3.0)
        await rig.cycle()
    times = [m.ts for _, m in rig.setpoints.messages if _.endswith("/load1/set")]
    assert times == [T0, T0 + timedelta(seconds=900)]
    assert all(m.ttl_s > 840 for m in rig.setpoints.values)


async def test_stale_meter_switches_off_and_degrades(rig: Rig) -> None:
    await rig.meter(-3.0)
    await rig.cycle()
    rig.clock.advance(300)  # no reading for 300 s > meter_stale_s (60 s)
    await rig.cycle()
    assert rig.load_commands("load1") == [1.0, 0.0]
    assert "meter" in rig.service.degraded_reasons
    await rig.meter(-3.0)
    await rig.cycle()
    assert "meter" not in rig.service.degraded_reasons


async def test_restart_mid_hour_restores_balance_and_loads(
    make_settings: Any, clock: FakeClock
) -> None:
    settings = make_settings()
    first = Rig(settings, clock, InMemoryBroker())
    await first.start()
    await first.meter(-3.6)
    clock.advance(50)
    await first.meter(-3.6)
    await first.cycle()
    await first.stop()
    clock.advance(20 * 60)  # restart 20 min later, same hour
    second = Rig(settings, clock, InMemoryBroker())
    await second.start()
    state = second.service.state.net
    assert state.integrator.balance_wh == pytest.approx(50.0)
    assert state.controller.states["load1"].on is True
    await second.stop()
    clock.advance(3600)  # restart in the next hour: balance starts again at 0
    third = Rig(settings, clock, InMemoryBroker())
    await third.start()
    assert third.service.state.net.integrator.balance_wh == 0.0
    assert third.service.state.net.kpis.today.periods == 1, "the old hour still counts"
    await third.stop()


async def test_period_close_and_day_rollover_publish_kpis(rig: Rig) -> None:
    pv = PvTelemetry(ts=T0, source="t", generation_kw=4.0)
    await rig.pub.publish(topics.PV.topic("site-1", "pv", rig.root), pv.to_json_bytes())
    await rig.meter(-1.0)
    rig.clock.advance(50)
    pv2 = PvTelemetry(ts=rig.clock.now, source="t", generation_kw=4.0)
    await rig.pub.publish(topics.PV.topic("site-1", "pv", rig.root), pv2.to_json_bytes())
    await rig.meter(-1.0)
    rig.clock.now = T0 + timedelta(hours=1)
    await rig.cycle()
    period = [k for k in rig.kpis.values if k.name == "net_balance_period"]
    assert len(period) == 1
    values = period[0].values
    assert values["exported_wh"] == pytest.approx(50 / 3.6)
    assert values["produced_wh"] == pytest.approx(4 * 50 / 3.6)
    assert values["efficiency"] == pytest.approx(0.75)
    rig.clock.now = T0 + timedelta(days=1)
    await rig.cycle()
    daily = [k for k in rig.kpis.values if k.name == "net_balance_daily"]
    assert len(daily) == 1
    assert daily[0].values["efficiency"] == pytest.approx(0.75)
    assert "switchings_load1" in daily[0].values
    assert "hours_on_load1" in daily[0].values


async def client_for(rig: Rig) -> httpx.AsyncClient:
    app = make_app(rig.service, manage_lifecycle=False)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://lm")


async def test_metrics_and_balance_endpoints(rig: Rig) -> None:
    await rig.meter(-3.0)
    await rig.cycle()
    async with await client_for(rig) as client:
        metrics = (await client.get("/metrics")).text
        assert 'derbus_load_manager_load_on{device="load1"} 1.0' in metrics
        assert "derbus_load_manager_period_balance_wh" in metrics
        assert 'derbus_load_manager_day_kpi{kpi="switchings"} 1.0' in metrics
        balance = (await client.get("/balance")).json()
        assert balance["rule"] == "time_to_consume"
        assert balance["loads"]["load1"]["on"] is True
        assert (await client.get("/kpis")).json()["today"]["switchings"] == {"load1": 1, "load2": 0}


async def publish_ev_job(rig: Rig) -> None:
    """Request a 2-hour 7 kW EV job at site-1 that may start from T0 to 2 hours later."""
    req = job_request([7.0, 7.0], T0, T0 + timedelta(hours=2))
    await rig.pub.publish(topics.JOB_REQUEST.topic("site-1", "ev", rig.root), req.to_json_bytes())


def pv_forecast(rig: Rig, values: list[float], site: str = "site-1") -> tuple[str, bytes]:
    series = time_series(values, T0, source="t", quantity="pv_generation_kw")
    return topics.FORECAST.topic(site, "pv", rig.root), series.to_json_bytes()


async def test_job_over_rest_is_planned_on_pv_and_started_at_its_time(rig: Rig) -> None:
    # 3 kW of PV forecast in the third quarter-hour only (10:30-10:45)
    await rig.pub.publish(*pv_forecast(rig, [0, 0, 3, 0] + [0] * 92))
    await rig.pub.drain()
    body = {
        "job_id": "wm",
        "device_id": "washing_machine",
        "earliest_start": "2026-06-01T10:00:00Z",
        "deadline": "2026-06-01T12:00:00Z",
        "profile_kw": [2.0],
        "step_s": 900,
    }
    async with await client_for(rig) as client:
        assert (await client.post("/jobs", json=body)).status_code == 401
        created = await client.post("/jobs", json=body, headers=AUTH)
        assert created.status_code == 201, created.text
        job = created.json()
        assert job["status"] == "planned"
        assert job["planned_start"] == "2026-06-01T10:30:00Z"
        assert job["pv_kwh"] == pytest.approx(0.5)
        assert job["grid_kwh"] == pytest.approx(0.0)
        await rig.pub.drain()
        plan = rig.plans.values[-1]
        assert [j.job_id for j in plan.jobs] == ["wm"]
        assert plan.solve_status == "milp:optimal"
        rig.clock.advance(29 * 60)
        await rig.service.run_task("job_cycle")
        await rig.pub.drain()
        assert rig.load_commands("washing_machine") == [], "not before its time"
        rig.clock.advance(60)
        await rig.service.run_task("job_cycle")
        await rig.pub.drain()
        assert rig.load_commands("washing_machine") == [1.0]
        start_cmd = rig.setpoints.values[-1]
        assert start_cmd.ts == T0 + timedelta(minutes=30)
        assert start_cmd.ttl_s == 900
        assert (await client.get("/jobs/wm")).json()["status"] == "running"
        assert (await client.delete("/jobs/wm", headers=AUTH)).status_code == 409
        rig.clock.advance(900)
        await rig.service.run_task("job_cycle")
        assert (await client.get("/jobs")).json()[0]["status"] == "done"
        assert (await client.delete("/jobs/nope", headers=AUTH)).status_code == 404


async def test_job_validation_and_cancel(rig: Rig) -> None:
    async with await client_for(rig) as client:
        bad = await client.post("/jobs", json={"device_id": "x", "profile_kw": [1.0]}, headers=AUTH)
        assert bad.status_code == 422
        assert "latest_start and deadline" in bad.text
        other = {
            "device_id": "x",
            "house_id": "elsewhere",
            "latest_start": "2026-06-01T12:00:00Z",
            "profile_kw": [1.0],
        }
        unknown = await client.post("/jobs", json=other, headers=AUTH)
        assert unknown.status_code == 422
        assert "elsewhere" in unknown.text
        cumulative = {
            "device_id": "dw",
            "latest_start": "2026-06-01T12:00:00Z",
            "profile_cumulative_wh": [[0, 0], [900, 500], [1800, 600]],
        }
        made = (await client.post("/jobs", json=cumulative, headers=AUTH)).json()
        assert made["energy_kwh"] == pytest.approx(0.6)
        assert made["status"] == "planned"
        cancelled = await client.delete(f"/jobs/{made['job_id']}", headers=AUTH)
        assert cancelled.json()["status"] == "cancelled"


async def test_job_request_on_the_bus_is_planned(rig: Rig) -> None:
    await publish_ev_job(rig)
    await rig.pub.drain()
    entry = rig.service.state.jobs.book.entries["ev1"]
    assert entry.status == "pending", "booked at once, planned by the job cycle"
    await rig.service.run_task("job_cycle")
    await rig.pub.drain()
    entry = rig.service.state.jobs.book.entries["ev1"]
    # 12:00-14:00 local is peak (0.27/kWh); 14:00 local (12:00 UTC) is shoulder: cheaper
    assert entry.status == "planned"
    assert entry.planned_start == T0 + timedelta(hours=2)
    assert rig.plans.values[-1].jobs[0].job_id == "ev1"


@pytest.mark.parametrize(
    ("env", "hood_xml", "named"),
    [
        (
            {"LOAD_MANAGER_SETTLEMENT_PERIOD_S": "1000"},
            None,
            ["settlement_period_s", "LOAD_MANAGER_SETTLEMENT_PERIOD_S"],
        ),
        ({}, "<neighbourhood>\n<house/>\n</neighbourhood>\n", ["hood.xml:2"]),
    ],
    ids=["setting", "neighbourhood-file"],
)
def test_invalid_config_exits_naming_the_field(
    tmp_path: Any, env: dict[str, str], hood_xml: str | None, named: list[str]
) -> None:
    env = {**env, "LOAD_MANAGER_DATA_DIR": str(tmp_path), "PATH": ""}
    if hood_xml is not None:
        bad_file = tmp_path / "hood.xml"
        bad_file.write_text(hood_xml)
        env["LOAD_MANAGER_NEIGHBOURHOOD_FILE"] = str(bad_file)
    done = subprocess.run(
        [sys.executable, "-m", "load_manager"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    for text in named:
        assert text in done.stderr


async def test_jobs_replanned_on_a_price_series_and_on_the_tariff_when_it_is_stale(
    rig: Rig,
) -> None:
    def prices(issued: datetime, *, stale: bool) -> bytes:
        dear = [0.40] * 16
        dear[2] = dear[3] = 0.01  # 10:30-11:00 UTC: far cheaper than the tariff at 12:00
        series = price_series(
            dear,
            T0,
            step_s=900,
            issue_time=issued,
            stale=stale,
            origin="http",
            source="prices",
        )
        return series.to_json_bytes()

    price_topic = topics.PRICE_SERIES.topic("site-1", "grid", rig.root)
    await rig.pub.publish(price_topic, prices(T0, stale=False))
    await publish_ev_job(rig)
    await rig.pub.drain()
    await rig.service.run_task("job_cycle")
    await rig.pub.drain()
    entry = rig.service.state.jobs.book.entries["ev1"]
    assert entry.planned_start == T0 + timedelta(minutes=30)  # the series' cheap half hour
    assert rig.service.status().state == "online"
    # the source fails: its publisher marks the series stale; the plan goes back to the tariff
    await rig.pub.publish(price_topic, prices(T0 + timedelta(seconds=1), stale=True))
    await rig.pub.drain()
    await rig.service.run_task("job_cycle")
    await rig.pub.drain()
    entry = rig.service.state.jobs.book.entries["ev1"]
    assert entry.planned_start == T0 + timedelta(hours=2)  # the tariff's shoulder, as before
    status = rig.service.status()
    assert status.state == "degraded"
    assert "configured tariff (series stale: source down)" in (status.reason or "")
