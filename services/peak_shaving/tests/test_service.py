"""The service on InMemoryBus: setpoints from readings, schedules from forecasts, fallback, API."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from derbus import topics
from derbus.bus import InMemoryBroker, InMemoryBus
from derbus.errors import SolverError
from derbus.http import make_app
from derbus.messages import (
    BatteryTelemetry,
    KpiReport,
    MeterReading,
    PriceSeries,
    SetpointCommand,
    TimeSeries,
    utcnow,
)
from derbus.settings import MqttSettings
from derbus.testing import BusRecorder, price_series, time_series, wait_for
from peak_shaving.service import build_service, bus_client_name
from peak_shaving.settings import Settings
from peak_shaving.state import PeakShaving

ROOT = "pstest"
SITE = "site-1"


@dataclass
class Rig:
    """The service, a probe client and recorders of what the service publishes."""

    ps: PeakShaving
    probe: InMemoryBus
    http: httpx.AsyncClient
    setpoints: BusRecorder[SetpointCommand]
    schedules: BusRecorder[TimeSeries]
    kpis: BusRecorder[KpiReport]

    async def send(self, spec: Any, message: Any, device: str, site: str = SITE) -> None:
        await self.probe.publish(
            spec.topic(site, device, ROOT), message.to_json_bytes(), retain=spec.retain
        )
        await self.probe.drain()

    async def battery(
        self, p_kw: float = 0.0, soc_pct: float = 50.0, ts: datetime | None = None
    ) -> None:
        msg = BatteryTelemetry(ts=ts or utcnow(), source="t", p_kw=p_kw, soc_pct=soc_pct)
        await self.send(topics.BATTERY, msg, "battery")

    async def meter(self, p_kw: float, ts: datetime | None = None) -> SetpointCommand:
        count = len(self.setpoints.messages)
        await self.send(topics.METER, MeterReading(ts=ts or utcnow(), source="t", p_kw=p_kw), "pcc")
        got = await self.setpoints.wait(count + 1, timeout=5)
        return got[-1]

    async def idle_meter(self, p_kw: float, ts: datetime | None = None) -> None:
        """A PCC reading the PMA must not answer (drain waits for the service's handler)."""
        count = len(self.setpoints.messages)
        readings = self.ps.controller.kpis(SITE)["readings"] if self.ps.controller.sites() else 0
        await self.send(topics.METER, MeterReading(ts=ts or utcnow(), source="t", p_kw=p_kw), "pcc")
        assert self.ps.controller.kpis(SITE)["readings"] == readings + 1  # it was handled
        assert len(self.setpoints.messages) == count, self.setpoints.values[count:]


def interval_start(now: datetime) -> datetime:
    epoch = int(now.timestamp())
    return datetime.fromtimestamp(epoch - epoch % 900, tz=UTC)


def slots(schedule: TimeSeries, start: datetime, first: int, end: int) -> list[float]:
    """A schedule's values for slots first..end-1 of a 15-minute grid from `start`.

    A plan begins at the quarter hour it is made in: one slot after `start` when the test
    straddles a quarter hour (the integration test of prices failed on that once in CI).
    """
    assert timedelta(0) <= schedule.start - start <= timedelta(seconds=schedule.step_s), (
        schedule.start,
        start,
    )
    return schedule.on_grid(start, schedule.step_s, end)[first:end]


def forecast(values: list[float], quantity: str = "load_p_kw") -> TimeSeries:
    now = utcnow()
    return time_series(
        values, interval_start(now), issue_time=now, source="forecaster", quantity=quantity
    )


COMMERCIAL_BATTERY: dict[str, Any] = {
    "battery_capacity_kwh": 100.0,
    "battery_max_charge_kw": 50.0,
    "battery_max_discharge_kw": 50.0,
    "charge_efficiency": 0.95,
    "discharge_efficiency": 0.95,
    "soc_min_pct": 5.0,
}
"""The battery these tests' numbers were worked out for (the defaults are the demo home's)."""


def settings(**changes: Any) -> Settings:
    base: dict[str, Any] = {
        "mqtt": MqttSettings(root=ROOT),
        "import_limit_kw": 50.0,
        "export_limit_kw": -30.0,
        "api_token": "tok",
        "horizon_steps": 96,
        "ema_workers": 0,
    }
    return Settings(**(COMMERCIAL_BATTERY | base | changes))


AUTH = {"Authorization": "Bearer tok"}


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    broker = InMemoryBroker()
    service = build_service(settings(), InMemoryBus(broker))
    app = make_app(service)
    probe = InMemoryBus(broker)
    await probe.connect()
    setpoints: BusRecorder[SetpointCommand] = BusRecorder(topics.SETPOINT, ROOT)
    schedules: BusRecorder[TimeSeries] = BusRecorder(topics.BATTERY_SCHEDULE, ROOT)
    kpis: BusRecorder[KpiReport] = BusRecorder(topics.KPI, ROOT)
    for recorder in (setpoints, schedules, kpis):
        await recorder.attach(probe)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ps") as http:
            yield Rig(service.state, probe, http, setpoints, schedules, kpis)
    await probe.close()


async def test_import_peak_gives_a_discharge_setpoint(rig: Rig) -> None:
    await rig.battery(0.0)
    cmd = await rig.meter(80.0)
    assert cmd.target == "battery_p_kw"
    assert cmd.unit == "kW"
    assert cmd.value == pytest.approx(-30.5)  # to 50 kW - 0.5 kW margin
    assert cmd.priority == "site_optimiser"
    assert cmd.ttl_s == 10.0
    topic = rig.setpoints.messages[-1][0]
    assert topic == topics.SETPOINT.topic(SITE, "battery", ROOT)


async def test_idle_sends_nothing_and_acting_refreshes_within_the_ttl(rig: Rig) -> None:
    t0 = utcnow()
    # no schedule, inside the limits: no setpoint, so the battery's self-consumption is not
    # overridden
    await rig.battery(0.0, ts=t0)
    await rig.idle_meter(20.0, t0)
    # an import peak: commanded at once, with a TTL of 3 reading intervals (here 1 s → 3 s) ...
    first = await rig.meter(80.0, t0 + timedelta(seconds=1))
    assert (first.value, first.ttl_s) == (pytest.approx(-30.5), 3.0)
    # ... and refreshed on every reading, so the command never lapses while the PMA acts
    await rig.battery(-30.5, ts=t0 + timedelta(seconds=2))
    again = await rig.meter(49.5, t0 + timedelta(seconds=2))
    assert (again.value, again.ttl_s) == (pytest.approx(-30.5), 3.0)
    # the peak is over: nothing more is sent; the last command lapses within 3 s
    await rig.battery(-30.5, ts=t0 + timedelta(seconds=3))
    await rig.idle_meter(-10.5, t0 + timedelta(seconds=3))
    await rig.battery(0.0, ts=t0 + timedelta(seconds=4))
    await rig.idle_meter(20.0, t0 + timedelta(seconds=4))
    # an export peak: commanded again
    assert (await rig.meter(-45.0, t0 + timedelta(seconds=5))).value == pytest.approx(15.5)
    kpis = (await rig.http.get("/kpis")).json()["values"]
    assert (kpis["readings"], kpis["setpoints_sent"]) == (6, 3)


async def test_forecast_gives_a_retained_schedule_the_pma_follows(rig: Rig) -> None:
    await rig.battery(0.0, soc_pct=50.0)
    # a 70 kW evening peak for 2 h at steps 40..47, PV at noon
    load = [30.0] * 96
    load[40:48] = [70.0] * 8
    load_forecast = forecast(load)
    await rig.send(topics.FORECAST, load_forecast, "load")
    await rig.send(topics.FORECAST, forecast([0.0] * 90 + [5.0] * 6, "pv_generation_kw"), "pv")
    await rig.ps.idle()
    await rig.probe.drain()
    schedule = rig.schedules.values[-1]
    assert schedule.kind == "schedule"
    assert schedule.quantity == "battery_p_kw"
    assert len(schedule.values) == 96
    meta = schedule.meta
    assert meta["status"] == "optimal"
    assert meta["plan_status"] == "ok"
    assert meta["violation_kwh"] == pytest.approx(0, abs=1e-3)
    assert set(meta["terms"]) >= {"violation", "change", "energy", "demand", "wear"}
    assert meta["solve_time_ms"] > 0
    # the peak is planned away: 20 kW discharge for 2 h
    assert slots(schedule, load_forecast.start, 40, 48) == pytest.approx([-20.0] * 8, abs=1e-2)
    assert max(meta["pcc_kw"]) <= 50.0 + 1e-3
    assert topics.BATTERY_SCHEDULE.topic(SITE, "battery", ROOT) in rig.probe.broker.retained
    # the PMA follows the schedule of the current interval
    now = utcnow()
    cmd = await rig.meter(20.0, now)
    assert cmd.value == pytest.approx(schedule.value_at(now) or 0.0, abs=1e-3)
    body = (await rig.http.get("/schedule")).json()
    assert body["followed_by_pma"] is True
    assert body["values"] == schedule.values


async def test_solver_failure_keeps_the_last_schedule_and_falls_back_to_limits(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    await rig.battery(0.0, soc_pct=50.0)
    await rig.send(topics.FORECAST, forecast([60.0] * 4 + [30.0] * 92), "load")
    await rig.ps.idle()
    valid = rig.ps.site(SITE).schedule
    assert valid is not None
    assert valid.values[0] < 0

    def broken(*args: Any) -> None:
        raise SolverError("ECOS returned status infeasible")

    monkeypatch.setattr("peak_shaving.state.solve_plan", broken)
    await rig.ps.replan(SITE)
    await rig.probe.drain()
    degraded = rig.schedules.values[-1]
    assert degraded.meta["plan_status"] == "degraded"
    assert "infeasible" in degraded.meta["reason"]
    assert degraded.start == valid.start
    assert degraded.values == pytest.approx(valid.values)  # the last valid one, shifted to now
    status = rig.ps.service.status()
    assert status.state == "degraded"
    assert "limits-only" in (status.reason or "")
    # limits only: in limits nothing is sent (the battery's own default resumes) ...
    await rig.idle_meter(20.0)
    # ... and over the limit it still shaves
    assert (await rig.meter(70.0)).value == pytest.approx(-20.5)
    assert (await rig.http.get("/schedule")).json()["followed_by_pma"] is False

    monkeypatch.undo()
    await rig.ps.replan(SITE)
    assert rig.ps.service.status().state == "online"
    assert rig.ps.site(SITE).schedule_valid


async def test_ema_plans_on_the_high_load_and_low_pv_quantiles() -> None:
    service = build_service(settings(), InMemoryBus())
    ps: PeakShaving = service.state
    plan = ps.site(SITE)
    plan.battery = BatteryTelemetry(ts=utcnow(), source="t", p_kw=0, soc_pct=50)
    load = forecast([30.0] * 96)
    plan.forecasts["load"] = load.with_changes(quantiles={"p10": [20.0] * 96, "p90": [40.0] * 96})
    pv = forecast([10.0] * 96, "pv_generation_kw")
    plan.forecasts["pv"] = pv.with_changes(quantiles={"p10": [4.0] * 96, "p90": [12.0] * 96})
    inputs = ps.ema_inputs(SITE, utcnow())
    assert inputs is not None
    assert inputs.net_load_kw.tolist() == [36.0] * 96  # p90 load - p10 PV
    plan.forecasts["load"] = load  # no quantiles: the values
    inputs = ps.ema_inputs(SITE, utcnow())
    assert inputs is not None
    assert inputs.net_load_kw.tolist() == [26.0] * 96


async def test_shifted_fallback_drops_elapsed_steps() -> None:
    service = build_service(settings(), InMemoryBus())
    ps: PeakShaving = service.state
    plan = ps.site(SITE)
    plan.battery = BatteryTelemetry(ts=utcnow(), source="t", p_kw=0, soc_pct=50)
    plan.forecasts["load"] = forecast([30.0] * 96)
    start = interval_start(utcnow()) - timedelta(minutes=30)
    plan.schedule = time_series(
        [float(i) for i in range(96)],
        start,
        kind="schedule",
        quantity="battery_p_kw",
        source="peak_shaving",
    )
    inputs = ps.ema_inputs(SITE, utcnow())
    assert inputs is not None
    assert inputs.prior_kw[:3].tolist() == [2.0, 3.0, 4.0]
    assert inputs.prior_kw[-2:].tolist() == [0.0, 0.0]  # past the old schedule: idle


async def test_put_config_validates_cross_fields_and_applies_limits(rig: Rig) -> None:
    bad = await rig.http.put("/config", json={"export_limit_kw": 60.0}, headers=AUTH)
    assert bad.status_code == 422
    assert bad.json()["detail"]["fields"] == ["export_limit_kw"]
    assert "export_limit_kw" in bad.json()["detail"]["error"]
    bad = await rig.http.put("/config", json={"reserve_pct": 99.0}, headers=AUTH)
    assert bad.status_code == 422
    assert bad.json()["detail"]["fields"] == ["reserve_pct"]
    bad = await rig.http.put("/config", json={"demand_target_kw": 80.0}, headers=AUTH)
    assert bad.json()["detail"]["fields"] == ["demand_target_kw"]
    bad = await rig.http.put("/config", json={"battery_capacity_kwh": -5}, headers=AUTH)
    assert bad.status_code == 422
    assert "battery_capacity_kwh" in bad.json()["detail"]["error"]
    assert (await rig.http.put("/config", json={"import_limit_kw": 40.0})).status_code == 401

    ok = await rig.http.put(
        "/config", json={"import_limit_kw": 40.0, "reserve_pct": 30.0}, headers=AUTH
    )
    assert ok.status_code == 200
    assert ok.json()["config"]["import_limit_kw"] == 40.0
    await rig.battery(0.0)
    assert (await rig.meter(45.0)).value == pytest.approx(-5.5)


async def test_kpis_on_the_bus_and_metrics(rig: Rig) -> None:
    t0 = utcnow()
    await rig.battery(0.0, soc_pct=6.0, ts=t0)
    await rig.meter(80.0, t0)
    await rig.battery(0.0, soc_pct=5.0, ts=t0 + timedelta(seconds=1))
    cmd = await rig.meter(80.0, t0 + timedelta(seconds=1))  # empty battery: cannot shave
    assert cmd.value == 0.0
    await rig.meter(80.0, t0 + timedelta(seconds=2))
    await rig.ps.service.run_task("publish_kpis")
    await rig.probe.drain()
    report = rig.kpis.values[-1]
    assert rig.kpis.messages[-1][0] == topics.KPI.topic(SITE, "peak_shaving", ROOT)
    assert report.values["time_on_limit_s"] == pytest.approx(2.0)
    assert report.values["unfixed_violation_s"] == pytest.approx(1.0)
    assert report.values["unfixed_violation_kwh"] == pytest.approx(30 / 3600)
    metrics = (await rig.http.get("/metrics")).text
    assert 'derbus_peak_shaving_unfixed_violation_seconds{site="site-1"} 1.0' in metrics
    assert "derbus_peak_shaving_decision_seconds_count 3.0" in metrics
    assert (await rig.http.get("/kpis")).json()["values"]["limit_events"] == 1


async def test_schedule_404_before_any_plan(rig: Rig) -> None:
    assert (await rig.http.get("/schedule")).status_code == 404
    assert (await rig.http.get("/schedule", params={"site_id": "nowhere"})).status_code == 404


async def test_retained_schedule_is_the_prior_after_a_restart() -> None:
    broker = InMemoryBroker()
    probe = InMemoryBus(broker)
    await probe.connect()
    now = utcnow()
    old = time_series(
        [-7.0] * 96,
        interval_start(now),
        issue_time=now,
        kind="schedule",
        quantity="battery_p_kw",
        source="peak_shaving",
        meta={"plan_status": "ok"},
    )
    spec = topics.BATTERY_SCHEDULE
    await probe.publish(spec.topic(SITE, "battery", ROOT), old.to_json_bytes(), retain=True)
    service = build_service(settings(), InMemoryBus(broker))
    await service.start()
    ps: PeakShaving = service.state
    await wait_for(lambda: ps.site(SITE).schedule is not None, 5, message="retained schedule")
    assert ps.site(SITE).schedule_valid
    await service.stop()
    await probe.close()


async def test_ema_keeps_the_upper_quantile_excess_in_reserve() -> None:
    service = build_service(settings(reserve_load_quantile="p90"), InMemoryBus())
    ps: PeakShaving = service.state
    plan = ps.site(SITE)
    plan.battery = BatteryTelemetry(ts=utcnow(), source="t", p_kw=0, soc_pct=50)
    load = forecast([30.0] * 96)
    p90 = [30.0] * 96
    p90[95] = 42.0  # the last step may come in 12 kW above the 30 kW planned peak
    plan.forecasts["load"] = load.with_changes(quantiles={"p50": [30.0] * 96, "p90": p90})
    inputs = ps.ema_inputs(SITE, utcnow())
    assert inputs is not None
    assert inputs.reserve_kwh is not None
    # threshold = the plan's highest net load (no month peak yet): 42 kW planned on p90 → 0;
    # planning on p50 instead, 12 kW x 0.25 h / 0.95 is held until the last step
    assert inputs.reserve_kwh.max() == pytest.approx(0.0)
    ps.service.settings = settings(load_forecast_quantile="p50", reserve_load_quantile="p90")
    inputs = ps.ema_inputs(SITE, utcnow())
    assert inputs is not None
    assert inputs.reserve_kwh is not None
    assert inputs.reserve_kwh[:95] == pytest.approx([12 * 0.25 / 0.95] * 95)
    assert inputs.reserve_kwh[95] == 0.0


async def test_the_ema_solves_in_its_own_process() -> None:
    # ema_workers=1: the plan is made in a worker process, never in the service's interpreter
    service = build_service(settings(ema_workers=1, demand_charge=True), InMemoryBus())
    ps: PeakShaving = service.state
    app = make_app(service)
    async with app.router.lifespan_context(app):
        plan = ps.site(SITE)
        plan.battery = BatteryTelemetry(ts=utcnow(), source="t", p_kw=0, soc_pct=50)
        load = forecast([30.0] * 40 + [70.0] * 8 + [30.0] * 48)
        p90 = [v + 5.0 for v in load.values]
        plan.forecasts["load"] = load.with_changes(quantiles={"p50": load.values, "p90": p90})
        await ps.replan(SITE)
        solution = plan.last_solution
        assert solution is not None
        assert solution.worker_pid not in (0, os.getpid())
        assert plan.schedule is not None
        assert plan.schedule.meta["worker_pid"] == solution.worker_pid
        # three scenarios (p10 absent: p50 stands in below it); the target is one of their needs
        assert len(solution.scenario_peaks_kw) == 3
        assert solution.target_kw in solution.scenario_peaks_kw
        assert solution.target_kw <= 50.0 + 1e-3  # the import limit holds in the plan
    assert ps._pool is None  # stopped with the service


async def test_ema_replans_on_a_price_series_and_falls_back_to_the_tariff_when_stale() -> None:
    broker = InMemoryBroker()
    service = build_service(settings(energy_cost=True), InMemoryBus(broker))
    ps: PeakShaving = service.state
    probe = InMemoryBus(broker)
    await probe.connect()
    schedules: BusRecorder[TimeSeries] = BusRecorder(topics.BATTERY_SCHEDULE, ROOT)
    await schedules.attach(probe)
    await service.start()
    try:
        now = utcnow()
        start = interval_start(now)
        prices = [0.30] * 96
        prices[8:16] = [0.02] * 8  # cheap: fill the battery
        prices[40:48] = [0.95] * 8  # dear: empty it

        def series(issued: datetime, *, stale: bool) -> PriceSeries:
            return price_series(
                prices,
                start,
                step_s=900,
                valid_until=now + timedelta(days=1),
                issue_time=issued,
                stale=stale,
                zone=SITE,
                source="prices",
                export_per_kwh=[0.0] * 96,
            )

        async def send(spec: Any, message: Any, device: str) -> None:
            await probe.publish(spec.topic(SITE, device, ROOT), message.to_json_bytes())
            await probe.drain()

        await send(
            topics.BATTERY, BatteryTelemetry(ts=now, source="t", p_kw=0.0, soc_pct=20.0), "battery"
        )
        await send(topics.FORECAST, forecast([30.0] * 96), "load")
        await ps.idle()
        await send(topics.PRICE_SERIES, series(now, stale=False), "grid")
        await ps.idle()
        await probe.drain()
        planned = schedules.values[-1]
        assert planned.meta["prices"] == "series"
        assert min(slots(planned, start, 8, 16)) > 1.0  # charging while it is cheap
        assert max(slots(planned, start, 40, 48)) < -1.0  # discharging while it is dear
        # the publisher marks it stale: re-planned on the configured tariff, degraded, said why
        await send(topics.PRICE_SERIES, series(now + timedelta(seconds=1), stale=True), "grid")
        await ps.idle()
        await probe.drain()
        assert schedules.values[-1].meta["prices"] == "tariff (series stale: source down)"
        await ps.report_prices()
        status = service.status()
        assert status.state == "degraded"
        assert "planned on the configured tariff (site-1: source down)" in (status.reason or "")
    finally:
        await service.stop()
        await probe.close()


def test_site_shard_splits_the_sites_and_a_bad_shard_stops_start_up_naming_the_field() -> None:
    owners = []
    for k in range(3):
        service = build_service(Settings(site_shard=f"{k}/3"), InMemoryBus(InMemoryBroker()))
        owners.append({s for s in (f"site-{i:04d}" for i in range(30)) if service.owns_site(s)})
    assert set.union(*owners) == {f"site-{i:04d}" for i in range(30)}
    assert sum(len(o) for o in owners) == 30  # each site on exactly one replica
    for bad in ("3/3", "1/0", "x"):
        with pytest.raises(ValidationError, match="site_shard"):
            Settings(site_shard=bad)


def test_shard_replicas_get_their_own_client_ids_and_an_unsharded_service_keeps_its_own() -> None:
    mqtt = MqttSettings(root="der/v1")
    ids = [
        mqtt.derived_client_id(bus_client_name(Settings(mqtt=mqtt, site_shard=shard)), "site-1")
        for shard in (None, "0/2", "1/2")
    ]
    assert ids == [
        "der_v1.peak_shaving.site-1.0",  # unchanged: an existing deployment keeps its session
        "der_v1.peak_shaving.shard-0-of-2.site-1.0",
        "der_v1.peak_shaving.shard-1-of-2.site-1.0",
    ]


async def test_a_dead_ema_worker_is_a_solver_failure_and_replaced() -> None:
    service = build_service(settings(ema_workers=1), InMemoryBus())
    ps: PeakShaving = service.state
    app = make_app(service)
    async with app.router.lifespan_context(app):
        plan = ps.site(SITE)
        plan.battery = BatteryTelemetry(ts=utcnow(), source="t", p_kw=0, soc_pct=50)
        plan.forecasts["load"] = forecast([60.0] * 4 + [30.0] * 96)
        await ps.replan(SITE)
        first = plan.last_solution
        assert first is not None
        assert plan.schedule_valid
        os.kill(first.worker_pid, signal.SIGKILL)  # the worker dies between two plans
        await ps.replan(SITE)
        assert not plan.schedule_valid  # limits-only fallback, said why
        assert "worker process died" in (plan.fallback_reason or "")
        await ps.replan(SITE)  # a new worker
        assert plan.schedule_valid
        assert plan.last_solution is not None
        assert plan.last_solution.worker_pid not in (0, first.worker_pid)
