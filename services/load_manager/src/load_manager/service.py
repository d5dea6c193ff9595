"""Wiring of the load manager: meter/PV → balance → controller → load setpoints; jobs → plan → starts."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, HTTPException
from prometheus_client import Gauge
from pydantic import ValidationError

from derbus import topics
from derbus.bus.base import Bus
from derbus.errors import ConfigError, SolverError
from derbus.http import TokenDep
from derbus.jsonfile import read_json, write_json
from derbus.messages import (
    JobRequest,
    KpiReport,
    MeterReading,
    Priority,
    PvTelemetry,
    SetpointCommand,
    TimeSeries,
    utcnow,
)
from derbus.service import Context, Service
from load_manager.balance import BalanceIntegrator, PeriodTotals, period_bounds
from load_manager.controller import CycleInputs, NetBalanceController, SetpointRefresher
from load_manager.cossmic import Neighbourhood, load_jobs, load_neighbourhood
from load_manager.jobs import DuplicateJobError, JobBook
from load_manager.kpi import KpiTracker, local_date
from load_manager.planner_api import planner_router
from load_manager.planning import (
    JobSubmission,
    apply_schedule,
    build_problem,
    plan_message,
)
from load_manager.scheduler import Schedule, schedule_greedy, schedule_milp
from load_manager.settings import HouseConfig, Settings

log = logging.getLogger(__name__)

NAME = "load_manager"
NET_STATE_FILE = "net_balance.json"
JOBS_FILE = "jobs.json"


@dataclass
class _Gauges:
    balance_wh: Gauge
    load_on: Gauge
    day: Gauge
    jobs: Gauge
    plan_solve_s: Gauge
    plan_pv_share: Gauge


def _gauges(service: Service[Settings]) -> _Gauges:
    reg = service.metrics.registry
    return _Gauges(
        balance_wh=Gauge("lm_period_balance_wh", "Settlement-period balance so far, Wh "
                         "(+ surplus exported / - debt imported)", registry=reg),
        load_on=Gauge("lm_load_on", "1 when the load is commanded on", ["device"], registry=reg),
        day=Gauge("lm_day_kpi", "Today's net-balancing KPIs (efficiency ratio, Wh, counts, h)",
                  ["kpi"], registry=reg),
        jobs=Gauge("lm_jobs", "Deferrable jobs by status", ["status"], registry=reg),
        plan_solve_s=Gauge("lm_plan_solve_seconds", "Last scheduling solve time", registry=reg),
        plan_pv_share=Gauge("lm_plan_pv_share", "Share of planned job energy from PV",
                            registry=reg),
    )  # fmt: skip


@dataclass
class LoadManagerState:
    """Everything the load manager keeps (per process; one site for net balancing)."""

    integrator: BalanceIntegrator
    controller: NetBalanceController
    refresher: SetpointRefresher
    kpis: KpiTracker
    houses: list[HouseConfig]
    neighbourhood_limit_kw: float | None
    book: JobBook = field(default_factory=JobBook.empty)
    forecasts: dict[tuple[str, str], TimeSeries] = field(default_factory=dict)
    schedule: Schedule | None = None
    plan: dict[str, Any] | None = None
    plan_dirty: bool = True
    last_plan_at: datetime | None = None
    last_cycle_at: datetime | None = None
    last_period: dict[str, Any] | None = None
    plan_lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def _houses(settings: Settings) -> tuple[list[HouseConfig], float | None, Neighbourhood | None]:
    if settings.neighbourhood_file is None:
        house = HouseConfig(house_id=settings.site.id, connection_limit_kw=settings.house_limit_kw)
        return [house], settings.neighbourhood_limit_kw, None
    hood = load_neighbourhood(settings.neighbourhood_file)
    limit = settings.neighbourhood_limit_kw or hood.limit_kw
    return list(hood.houses), limit, hood


def build_service(
    settings: Settings, bus: Bus, clock: Callable[[], datetime] = utcnow
) -> Service[Settings]:
    """The load manager service.

    Args:
        settings: validated settings.
        bus: the bus (MqttBus in production, InMemoryBus in tests).
        clock: source of the current time (tests and accelerated runs pass their own).

    Raises:
        ConfigError: the neighbourhood or jobs file is invalid (naming file and line).
    """
    service: Service[Settings] = Service(NAME, settings, bus)
    tz = ZoneInfo(settings.site.timezone)
    site = settings.site.id
    houses, hood_limit, hood = _houses(settings)
    imported: list[JobRequest] = []
    if settings.jobs_file is not None:
        imported = load_jobs(settings.jobs_file, step_s=60, neighbourhood=hood)
    st = LoadManagerState(
        integrator=BalanceIntegrator(
            settings.settlement_period_s, settings.site.timezone, settings.max_gap_s
        ),
        controller=NetBalanceController(
            loads=list(settings.loads),
            rule=settings.rule,
            min_on_time_rule_s=settings.min_on_time_rule_s,
            ttc_target_wh=settings.ttc_target_wh,
            ttc_margin_wh=settings.ttc_margin_wh,
            surplus_tau_s=settings.ttc_surplus_tau_s,
        ),
        refresher=SetpointRefresher(settings.setpoint_ttl_s, settings.refresh_margin_s),
        kpis=KpiTracker(),
        houses=houses,
        neighbourhood_limit_kw=hood_limit,
    )
    service.state["lm"] = st
    gauges = _gauges(service)
    data_dir = settings.data_dir
    house_ids = {h.house_id for h in houses}
    service.declare_publishes(topics.SETPOINT, topics.KPI, topics.JOB_PLAN)

    # --- persistence ---------------------------------------------------------------------------
    def save_net_state() -> None:
        write_json(
            data_dir / NET_STATE_FILE,
            {"balance": st.integrator.to_dict(), "loads": st.controller.to_dict(),
             "kpis": st.kpis.to_dict()},
        )  # fmt: skip

    def save_jobs() -> None:
        write_json(data_dir / JOBS_FILE, st.book.to_list())

    @service.on_startup
    async def restore() -> None:
        now = clock()
        saved = read_json(data_dir / NET_STATE_FILE)
        closed: list[PeriodTotals] = []
        if isinstance(saved, dict):
            if saved.get("kpis"):
                st.kpis.restore(saved["kpis"])
            closed = st.integrator.restore(saved.get("balance") or {}, now)
            if st.integrator.current is not None and not closed:
                st.controller.restore(saved.get("loads") or {})
        st.integrator.roll(now)
        for totals in closed:
            st.kpis.add_period(totals, local_date(totals.start, tz))
        st.kpis.roll(local_date(now, tz))
        jobs = read_json(data_dir / JOBS_FILE)
        if isinstance(jobs, list):
            st.book = JobBook.from_list(jobs)
        for request in imported:
            if request.job_id not in st.book.entries:
                st.book.add(request)
        log.info(
            "restored balance %.1f Wh for period %s; %d jobs",
            st.integrator.balance_wh,
            st.integrator.current.start if st.integrator.current else None,
            len(st.book.entries),
        )

    # --- net balancing -------------------------------------------------------------------------
    async def close_periods(closed: list[PeriodTotals]) -> None:
        for totals in closed:
            figures = st.kpis.add_period(totals, local_date(totals.start, tz))
            st.last_period = {"start": totals.start.isoformat(), "end": totals.end.isoformat(),
                              **figures}  # fmt: skip
            await service.publish(
                topics.KPI,
                KpiReport(ts=clock(), source=NAME, name="net_balance_period", values=figures,
                          period_start=totals.start, period_end=totals.end),
                site_id=site, device_id=NAME,
            )  # fmt: skip

    @service.on(topics.METER, site_id=site, device_id=settings.meter_device_id)
    async def on_meter(msg: MeterReading, ctx: Context) -> None:
        await close_periods(st.integrator.add_meter(msg.ts, msg.p_kw))

    @service.on(topics.PV, site_id=site, device_id=settings.pv_device_id)
    async def on_pv(msg: PvTelemetry, ctx: Context) -> None:
        await close_periods(st.integrator.add_pv(msg.ts, msg.generation_kw))

    async def send_load(device_id: str, on: bool, now: datetime, ttl_s: float) -> None:
        await service.publish(
            topics.SETPOINT,
            SetpointCommand(ts=now, source=NAME, target="load_on", value=1.0 if on else 0.0,
                            unit="bool", ttl_s=ttl_s, priority=Priority.SITE_OPTIMISER),
            site_id=site, device_id=device_id,
        )  # fmt: skip

    @service.every(lambda: service.settings.cycle_s)
    async def net_balance_cycle(ctx: Context) -> None:
        s = service.settings
        if not s.net_balancing_enabled:
            return
        now = clock()
        await close_periods(st.integrator.roll(now))
        finished = st.kpis.roll(local_date(now, tz))
        if finished is not None:
            await service.publish(
                topics.KPI,
                KpiReport(ts=now, source=NAME, name="net_balance_daily", values=finished.values()),
                site_id=site, device_id=NAME,
            )  # fmt: skip
        reading_ts, p_kw = st.integrator.last_meter
        meter_ok = reading_ts is not None and (now - reading_ts).total_seconds() <= s.meter_stale_s
        assert st.integrator.current is not None
        inputs = CycleInputs(
            balance_wh=st.integrator.balance_wh, pcc_p_kw=p_kw if meter_ok else 0.0,
            period_end=st.integrator.current.end, local_hour=now.astimezone(tz).hour,
            meter_ok=meter_ok,
        )  # fmt: skip
        decisions = st.controller.step(inputs, now)
        dt_s = 0.0
        if st.last_cycle_at is not None:
            dt_s = min(max(0.0, (now - st.last_cycle_at).total_seconds()), 3 * s.cycle_s)
        st.last_cycle_at = now
        assert st.kpis.today is not None
        st.kpis.today.add_cycle(decisions, dt_s)
        for d in decisions:
            if d.switched:
                log.info("%s %s: %s", d.device_id, "on" if d.on else "off", d.reason)
            gauges.load_on.labels(device=d.device_id).set(1 if d.on else 0)
        for device_id, on in st.refresher.due(decisions, now):
            await send_load(device_id, on, now, s.setpoint_ttl_s)
        if meter_ok:
            await service.clear_degraded("meter")
        else:
            await service.set_degraded(
                "meter", f"no {s.meter_device_id} reading for {s.meter_stale_s:g} s: loads off"
            )
        gauges.balance_wh.set(st.integrator.balance_wh)
        for key, value in st.kpis.today.values().items():
            gauges.day.labels(kpi=key).set(value)
        save_net_state()

    @service.every(lambda: service.settings.kpi_interval_s)
    async def publish_kpis(ctx: Context) -> None:
        if not service.settings.net_balancing_enabled or st.kpis.today is None:
            return
        now = clock()
        start, end = period_bounds(
            now, service.settings.settlement_period_s, settings.site.timezone
        )
        values = {**st.kpis.today.values(), "period_balance_wh": st.integrator.balance_wh}
        await service.publish(
            topics.KPI,
            KpiReport(ts=now, source=NAME, name="net_balance_day", values=values,
                      period_start=start, period_end=end),
            site_id=site, device_id=NAME,
        )  # fmt: skip

    @service.on_config_change
    def reconfigure(old: Settings, new: Settings) -> None:
        st.controller.reconfigure(
            list(new.loads), new.rule, new.min_on_time_rule_s, new.ttc_target_wh, new.ttc_margin_wh
        )
        st.controller.surplus_tau_s = new.ttc_surplus_tau_s
        st.plan_dirty = True

    # --- deferrable jobs -----------------------------------------------------------------------
    @service.on(topics.FORECAST, device_id="pv")
    async def on_pv_forecast(msg: TimeSeries, ctx: Context) -> None:
        if ctx.site_id in house_ids:
            st.forecasts[ctx.site_id, "pv"] = msg
            st.plan_dirty = True

    @service.on(topics.FORECAST, device_id="load")
    async def on_load_forecast(msg: TimeSeries, ctx: Context) -> None:
        if ctx.site_id in house_ids:
            st.forecasts[ctx.site_id, "load"] = msg
            st.plan_dirty = True

    def book_job(request: JobRequest) -> None:
        if request.house_id not in house_ids:
            raise ConfigError(
                f"house_id {request.house_id!r} is not planned here (known: {sorted(house_ids)})",
                ("house_id",),
            )
        st.book.add(request)
        st.plan_dirty = True
        save_jobs()

    @service.on(topics.JOB_REQUEST)
    async def on_job_request(msg: JobRequest, ctx: Context) -> None:
        # booked now, planned by the next job cycle (a solve never blocks the bus handlers)
        try:
            book_job(msg)
        except (ConfigError, DuplicateJobError) as err:
            log.warning("job %s refused: %s", msg.job_id, err)

    async def replan(now: datetime) -> None:
        s = service.settings
        async with st.plan_lock:
            st.book.advance(now, timedelta(seconds=s.plan_step_s))
            problem = build_problem(
                now=now, step_s=s.plan_step_s, n_steps=s.plan_horizon_steps, houses=st.houses,
                book=st.book, forecasts=st.forecasts, tariff=s.tariff, shared_pv=s.shared_pv,
                neighbourhood_limit_kw=st.neighbourhood_limit_kw, cost_weight=s.job_cost_weight,
                peak_weight_per_kw=s.peak_weight_per_kw, load_quantile=s.load_forecast_quantile,
                pv_quantile=s.pv_forecast_quantile,
            )  # fmt: skip
            try:
                schedule = await service.run_blocking(schedule_milp, problem, s.solver_time_limit_s)
                await service.clear_degraded("planner")
            except SolverError as err:
                schedule = schedule_greedy(problem)
                await service.set_degraded("planner", f"MILP failed, greedy plan used: {err}")
            apply_schedule(st.book, schedule)
            st.schedule = schedule
            st.plan_dirty = False
            st.last_plan_at = now
            message = plan_message(st.book, schedule, problem, now, NAME)
            st.plan = message.model_dump(mode="json")
            await service.publish(topics.JOB_PLAN, message, site_id=site, device_id="jobs")
            energy = sum(j.pv_kwh + j.grid_kwh for j in message.jobs)
            gauges.plan_pv_share.set(
                sum(j.pv_kwh for j in message.jobs) / energy if energy > 0 else 0.0
            )
            gauges.plan_solve_s.set(schedule.solve_time_s)
            save_jobs()

    @service.every(lambda: service.settings.dispatch_interval_s)
    async def job_cycle(ctx: Context) -> None:
        s = service.settings
        if not s.jobs_enabled:
            return
        now = clock()
        started = False
        for entry in st.book.due(now):  # starts first: a re-plan below may take seconds
            ttl = max(1.0, entry.duration.total_seconds())
            await service.publish(
                topics.SETPOINT,
                SetpointCommand(ts=now, source=NAME, target="load_on", value=1.0, unit="bool",
                                ttl_s=min(ttl, 86_400), priority=Priority.SITE_OPTIMISER),
                site_id=entry.request.house_id, device_id=entry.request.device_id,
            )  # fmt: skip
            st.book.mark_started(entry, now)
            log.info("job %s started on %s/%s", entry.request.job_id,
                     entry.request.house_id, entry.request.device_id)  # fmt: skip
            started = True
        if st.book.advance(now, timedelta(seconds=s.plan_step_s)) or started:
            save_jobs()
        stale = st.last_plan_at is None or (now - st.last_plan_at).total_seconds() >= (
            s.replan_interval_s
        )
        if st.plan_dirty or stale or started:
            await replan(now)
        for status in ("pending", "planned", "running", "done", "cancelled", "unschedulable",
                       "missed"):  # fmt: skip
            count = sum(1 for e in st.book.entries.values() if e.status == status)
            gauges.jobs.labels(status=status).set(count)

    # --- REST ----------------------------------------------------------------------------------
    router = APIRouter(tags=["load_manager"])

    @router.get("/balance")
    def get_balance() -> dict[str, Any]:
        """The open settlement period's balance, the loads' states and today's KPIs."""
        current = st.integrator.current
        return {
            "rule": service.settings.rule,
            "period_start": current.start.isoformat() if current else None,
            "period_end": current.end.isoformat() if current else None,
            "balance_wh": st.integrator.balance_wh,
            "loads": st.controller.to_dict(),
            "last_period": st.last_period,
            "today": st.kpis.today.values() if st.kpis.today else None,
        }

    @router.get("/kpis")
    def get_kpis() -> dict[str, Any]:
        """Today's KPIs and the daily summaries of past days."""
        return {
            "today": st.kpis.today.to_dict() | {"values": st.kpis.today.values()}
            if st.kpis.today
            else None,
            "days": [d.to_dict() | {"values": d.values()} for d in st.kpis.history],
        }

    @router.post("/jobs", status_code=201)
    async def post_job(body: JobSubmission, _auth: TokenDep) -> dict[str, Any]:
        """Submit a deferrable job; it is planned at once and returned with its planned start."""
        now = clock()
        try:
            request = body.to_request(now, site, NAME)
        except (ValueError, ValidationError) as err:
            raise HTTPException(status_code=422, detail=str(err)) from err
        try:
            book_job(request)
        except ConfigError as err:
            raise HTTPException(status_code=422, detail=str(err)) from err
        except DuplicateJobError as err:
            raise HTTPException(status_code=409, detail=str(err)) from err
        if service.settings.jobs_enabled:
            await replan(now)
        return st.book.entries[request.job_id].to_dict()

    @router.get("/jobs")
    def get_jobs() -> list[dict[str, Any]]:
        """Every job with its status and plan."""
        return st.book.to_list()

    @router.get("/jobs/{job_id}")
    def get_job(job_id: str) -> dict[str, Any]:
        """One job."""
        entry = st.book.entries.get(job_id)
        if entry is None:
            raise HTTPException(status_code=404, detail=f"no job {job_id}")
        return entry.to_dict()

    @router.delete("/jobs/{job_id}")
    async def delete_job(job_id: str, _auth: TokenDep) -> dict[str, Any]:
        """Cancel a job that has not started (404 unknown, 409 already started)."""
        try:
            entry = st.book.cancel(job_id)
        except KeyError as err:
            raise HTTPException(status_code=404, detail=f"no job {job_id}") from err
        except ValueError as err:
            raise HTTPException(status_code=409, detail=str(err)) from err
        st.plan_dirty = True
        save_jobs()
        return entry.to_dict()

    @router.get("/plan")
    def get_plan() -> dict[str, Any]:
        """The latest published job plan (404 before the first)."""
        if st.plan is None:
            raise HTTPException(status_code=404, detail="no plan yet")
        return st.plan

    @router.post("/plan", status_code=200)
    async def post_plan(_auth: TokenDep) -> dict[str, Any]:
        """Re-plan now."""
        await replan(clock())
        assert st.plan is not None
        return st.plan

    service.include_router(router)
    service.include_router(planner_router(service))
    return service
