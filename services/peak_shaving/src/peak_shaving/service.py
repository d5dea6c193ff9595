"""Wiring of peak_shaving: PCC readings → PMA → battery setpoints; forecasts → EMA → schedules."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, HTTPException, Query
from prometheus_client import Counter, Gauge, Histogram

from derbus import topics
from derbus.bus.base import Bus
from derbus.errors import SolverError
from derbus.http import TokenDep, errors
from derbus.messages import (
    BatteryTelemetry,
    EvChargerTelemetry,
    KpiReport,
    MeterReading,
    PriceSeries,
    Priority,
    SetpointAck,
    SetpointCommand,
    TimeSeries,
    utcnow,
)
from derbus.service import Context, Service
from derbus.tariff import PriceBook
from peak_shaving.api_models import KpisView, Replanning, ScheduleView
from peak_shaving.controller import PeakShavingController, PmaInputs
from peak_shaving.ev_limit import EvLimiter
from peak_shaving.optimizer import (
    STRUCTURAL_FIELDS,
    EmaConfig,
    EmaInputs,
    FloatArray,
    Scenario,
    Schedule,
    quantile_scenarios,
    solve_plan,
    uncertainty_reserve_kwh,
    warm,
)
from peak_shaving.settings import Settings

log = logging.getLogger(__name__)

NAME = "peak_shaving"
LOAD_TARGET, PV_TARGET = "load", "pv"


@dataclass
class SitePlan:
    """What the service holds for one site besides the controller's state."""

    battery: BatteryTelemetry | None = None
    forecasts: dict[str, TimeSeries] = field(default_factory=dict)
    schedule: TimeSeries | None = None
    schedule_valid: bool = False
    last_solution: Schedule | None = None
    fallback_reason: str | None = None


class _Metrics:
    """The service's own Prometheus series, on the service registry."""

    def __init__(self, service: Service[Settings]) -> None:
        registry = service.metrics.registry
        self.decision_s = Histogram(
            "peak_shaving_decision_seconds",
            "PMA decision time, reading handled → setpoint handed to the bus",
            buckets=(0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05),
            registry=registry,
        )
        self.time_on_limit = Gauge(
            "peak_shaving_time_on_limit_seconds", "Time a limit was binding", ["site"],
            registry=registry,
        )  # fmt: skip
        self.limit_events = Gauge(
            "peak_shaving_limit_events", "Times the PMA went onto a limit", ["site"],
            registry=registry,
        )  # fmt: skip
        self.unfixed_s = Gauge(
            "peak_shaving_unfixed_violation_seconds",
            "Time the PCC stayed beyond a hard limit with the battery at its limit", ["site"],
            registry=registry,
        )  # fmt: skip
        self.unfixed_kwh = Gauge(
            "peak_shaving_unfixed_violation_kwh",
            "Energy beyond a hard limit the battery could not remove", ["site"],
            registry=registry,
        )  # fmt: skip
        self.month_peak = Gauge(
            "peak_shaving_month_peak_kw", "Highest 15-minute average import this month", ["site"],
            registry=registry,
        )  # fmt: skip
        self.solves = Counter(
            "peak_shaving_ema_solves_total", "EMA solves by outcome", ["outcome"],
            registry=registry,
        )  # fmt: skip
        self.solve_s = Histogram(
            "peak_shaving_ema_solve_seconds", "EMA solve wall time",
            buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0, 5.0), registry=registry,
        )  # fmt: skip
        self.acks = Counter(
            "peak_shaving_setpoint_acks_total", "Battery setpoint acknowledgements", ["status"],
            registry=registry,
        )  # fmt: skip


class PeakShaving:
    """The service's state: the controller, the optimiser and per-site plans and readings."""

    def __init__(self, service: Service[Settings]) -> None:
        self.service = service
        self.controller = PeakShavingController(service.settings)
        self._pool: ProcessPoolExecutor | None = None  # the EMA's own process(es)
        self._warm_up: asyncio.Task[None] | None = None
        self.sites: dict[str, SitePlan] = {}
        self.metrics = _Metrics(service)
        self.started_at = utcnow()
        self._solve_lock = asyncio.Lock()
        self._replans: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()
        self._failing: dict[str, str] = {}
        self.prices = PriceBook()
        cfg = service.settings
        self.ev = EvLimiter(cfg.ev_limit_ttl_s, cfg.ev_deadband_kw, cfg.ev_min_kw, cfg.ev_settle_s)

    @property
    def settings(self) -> Settings:
        """The current settings."""
        return self.service.settings

    def ema_config(self) -> EmaConfig:
        """The optimiser's part of the settings (what a worker process is handed)."""
        fields = set(EmaConfig.model_fields)
        return EmaConfig.model_validate(self.settings.model_dump(include=fields))

    async def _run_ema(self, fn: Any, *args: Any) -> Any:
        """Run EMA work in its own process (`ema_workers` >= 1) or a thread (0)."""
        if self.settings.ema_workers == 0:
            async with self._solve_lock:  # one compiled problem per process, one solve at a time
                return await self.service.run_blocking(fn, *args)
        if self._pool is None:
            # spawn: a clean interpreter (no copy of the bus client's threads or the event loop)
            self._pool = ProcessPoolExecutor(
                self.settings.ema_workers, mp_context=multiprocessing.get_context("spawn")
            )
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        except BrokenProcessPool as err:  # the worker died (killed, out of memory): a new one next
            self._pool = None
            raise SolverError(f"EMA worker process died: {err}") from err

    async def solve(self, inputs: EmaInputs, scenarios: list[Scenario]) -> Schedule:
        """One EMA plan (scenarios when given), off the service's event loop."""
        plan: Schedule = await self._run_ema(solve_plan, self.ema_config(), inputs, scenarios)
        return plan

    def warm_up(self) -> None:
        """Build the optimiser off the event loop after start-up, so /readyz is not held up."""

        async def build() -> None:
            try:
                await self._run_ema(warm, self.ema_config())
            except SolverError as err:  # the first solve builds again and reports it
                log.warning("EMA problem could not be built: %s", err)

        self._warm_up = asyncio.create_task(build(), name=f"{NAME}:warm-up")

    def close(self) -> None:
        """Stop the EMA's worker processes."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def site(self, site_id: str) -> SitePlan:
        """The plan holder of a site (created on first use)."""
        plan = self.sites.get(site_id)
        if plan is None:
            plan = self.sites[site_id] = SitePlan()
        return plan

    # --- PMA ---------------------------------------------------------------------------------
    def decide(self, site_id: str, reading: MeterReading) -> SetpointCommand | None:
        """Run the PMA on one PCC reading; the battery setpoint to publish, None when idle.

        Idle (inside the limits, no demand action, no schedule to track): nothing is sent, the
        last command lapses by its TTL and the battery's own default behaviour resumes.
        """
        plan = self.site(site_id)
        battery = plan.battery
        schedule_kw = plan_peak = None
        if plan.schedule_valid and plan.schedule is not None:
            schedule_kw = plan.schedule.value_at(reading.ts)
            if self.settings.demand_charge and plan.last_solution is not None:
                plan_peak = plan.last_solution.demand_threshold_kw
        decision = self.controller.step(
            PmaInputs(
                site_id=site_id,
                ts=reading.ts,
                pcc_p_kw=reading.p_kw,
                battery_p_kw=battery.p_kw if battery else None,
                battery_ts=battery.ts if battery else None,
                soc_pct=battery.soc_pct if battery else None,
                max_charge_kw=battery.max_charge_kw if battery else None,
                max_discharge_kw=battery.max_discharge_kw if battery else None,
                schedule_p_kw=schedule_kw,
                plan_peak_kw=plan_peak,
            )
        )
        if not decision.command:
            return None
        return SetpointCommand(
            ts=reading.ts,
            source=NAME,
            target="battery_p_kw",
            value=round(decision.battery_p_kw, 4),
            unit="kW",
            ttl_s=round(decision.ttl_s, 3),
            priority=Priority.SITE_OPTIMISER,
        )

    def ev_limits(self, site_id: str, ts: datetime) -> list[tuple[str, SetpointCommand]]:
        """The `ev_limit_kw` setpoints (charger device, command) after the site's PMA decision.

        The battery goes first: only the import the battery at its limit cannot remove is taken
        from the EVs (see `peak_shaving.ev_limit`).
        """
        decision = self.controller.state(site_id).last_decision
        if not self.settings.ev_limit or decision is None:
            return []
        room = decision.import_cap_kw - decision.pcc_expected_kw + decision.discharge_room_kw
        ttl = self.settings.ev_limit_ttl_s
        # issued now on the wall clock: the charger's central system times the TTL on its own
        # clock, not on the meter's (a simulated or replayed reading may carry another time)
        sent, out = utcnow(), []
        for limit in self.ev.decide(site_id, room, ts):
            command = SetpointCommand(
                ts=sent, source=NAME, target="ev_limit_kw", value=limit.limit_kw, unit="kW",
                ttl_s=ttl, priority=Priority.SITE_OPTIMISER,
            )  # fmt: skip
            out.append((limit.device_id, command))
        return out

    def update_site_metrics(self, site_id: str) -> dict[str, float]:
        """Refresh the per-site gauges; returns the site's KPIs."""
        kpis = self.controller.kpis(site_id)
        m = self.metrics
        m.time_on_limit.labels(site=site_id).set(kpis["time_on_limit_s"])
        m.limit_events.labels(site=site_id).set(kpis["limit_events"])
        m.unfixed_s.labels(site=site_id).set(kpis["unfixed_violation_s"])
        m.unfixed_kwh.labels(site=site_id).set(kpis["unfixed_violation_kwh"])
        m.month_peak.labels(site=site_id).set(kpis["month_peak_kw"])
        return kpis

    # --- EMA ---------------------------------------------------------------------------------
    def request_replan(self, site_id: str) -> None:
        """Re-solve a site's schedule in the background (coalesced while one runs)."""
        running = self._replans.get(site_id)
        if running is not None and not running.done():
            self._again.add(site_id)
            return
        self._replans[site_id] = asyncio.create_task(
            self._replan_loop(site_id), name=f"{NAME}:replan:{site_id}"
        )

    async def _replan_loop(self, site_id: str) -> None:
        while True:
            self._again.discard(site_id)
            await self.replan(site_id)
            if site_id not in self._again:
                return

    async def idle(self) -> None:
        """Wait until no background re-solve is running (tests, shutdown)."""
        if self._warm_up is not None:
            await asyncio.gather(self._warm_up, return_exceptions=True)
        while running := [t for t in self._replans.values() if not t.done()]:
            await asyncio.gather(*running, return_exceptions=True)

    def ema_scenarios(self, site_id: str, start: datetime) -> list[Scenario]:
        """Net-load scenarios from the load (and PV) forecast quantiles ([]: single trace)."""
        cfg = self.settings
        plan = self.site(site_id)
        load = plan.forecasts.get(LOAD_TARGET)
        if not cfg.scenario_levels or load is None:
            return []
        n, step = cfg.horizon_steps, cfg.step_s

        def traces(series: TimeSeries) -> dict[str, FloatArray]:
            keys = list(series.quantiles or {"p50": series.values})
            return {k: _grid(series, start, step, n, k) for k in keys}

        pv = plan.forecasts.get(PV_TARGET)
        return quantile_scenarios(
            traces(load), traces(pv) if pv is not None else None, cfg.scenario_levels
        )

    def ema_inputs(self, site_id: str, now: datetime) -> EmaInputs | None:
        """The EMA's inputs for a site now, or None without a load forecast or battery reading."""
        cfg = self.settings
        plan = self.site(site_id)
        load = plan.forecasts.get(LOAD_TARGET)
        if load is None or plan.battery is None:
            return None
        step = cfg.step_s
        epoch = int(now.timestamp())
        start = datetime.fromtimestamp(epoch - epoch % step, tz=UTC)
        n = cfg.horizon_steps
        net = _grid(load, start, step, n, cfg.load_forecast_quantile)
        upper = _grid(load, start, step, n, cfg.reserve_load_quantile)
        pv = plan.forecasts.get(PV_TARGET)
        if pv is not None:
            pv_kw = _grid(pv, start, step, n, cfg.pv_forecast_quantile)
            net, upper = net - pv_kw, upper - pv_kw
        month_peak = self.controller.month_peak_kw(site_id)
        reserve = None
        if cfg.reserve_load_quantile is not None:
            reserve = uncertainty_reserve_kwh(
                upper, month_peak or float(net.max()), step, cfg.discharge_efficiency
            )
        prior = np.zeros(n)
        if plan.schedule is not None:
            s = plan.schedule
            prior = np.asarray(s.on_grid(start, step, n, outside="zero"), dtype=float)
        prices = self.prices.for_site(site_id, cfg.tariff, now)
        price_kw = export_kw = None
        if prices.series is not None:  # else the tariff, inside the optimiser
            imports, exports = prices.on_grid(start, n, step)
            price_kw, export_kw = np.asarray(imports), np.asarray(exports)
        return EmaInputs(
            start=start,
            net_load_kw=net,
            soc_kwh=plan.battery.soc_pct / 100 * cfg.battery_capacity_kwh,
            prior_kw=prior,
            peak_floor_kw=month_peak,
            reserve_kwh=reserve,
            price_per_kwh=price_kw,
            export_per_kwh=export_kw,
        )

    async def replan(self, site_id: str) -> None:
        """Solve a site's schedule and publish it; on failure keep the last one, shifted."""
        now = utcnow()
        inputs = self.ema_inputs(site_id, now)
        prices = self.prices.for_site(site_id, self.settings.tariff, now).status  # as planned
        if inputs is None:
            log.debug("no plan for %s yet: needs a load forecast and a battery reading", site_id)
            return
        plan = self.site(site_id)
        try:
            solution = await self.solve(inputs, self.ema_scenarios(site_id, inputs.start))
        except (SolverError, ValueError) as err:
            self.metrics.solves.labels(outcome="failed").inc()
            await self._fall_back(site_id, plan, inputs, now, str(err))
            return
        self.metrics.solves.labels(outcome="ok").inc()
        self.metrics.solve_s.observe(solution.solve_time_s)
        meta = solution.meta() | {
            "plan_status": "ok",
            "prices": prices,
            "pcc_kw": [round(v, 3) for v in solution.pcc_kw.tolist()],
            "soc_kwh": [round(v, 3) for v in solution.soc_kwh.tolist()],
        }
        plan.schedule = self._series(inputs.start, solution.battery_p_kw.tolist(), now, meta)
        plan.schedule_valid, plan.last_solution, plan.fallback_reason = True, solution, None
        await self.service.publish(
            topics.BATTERY_SCHEDULE, plan.schedule, site_id=site_id,
            device_id=self.settings.battery_device_id,
        )  # fmt: skip
        if self._failing.pop(site_id, None) is not None:
            await self._report_failures()

    async def _fall_back(
        self, site_id: str, plan: SitePlan, inputs: EmaInputs, now: datetime, reason: str
    ) -> None:
        """Keep the last valid schedule shifted to now, publish it degraded; PMA limits only."""
        log.warning("EMA failed for %s: %s; PMA falls back to limits only", site_id, reason)
        plan.schedule_valid, plan.fallback_reason = False, reason
        self._failing[site_id] = reason
        await self._report_failures()
        meta: dict[str, Any] = {"plan_status": "degraded", "status": "degraded", "reason": reason}
        values = inputs.prior_kw.tolist()
        if plan.schedule is not None:
            meta["shifted_from"] = plan.schedule.start.isoformat()
        plan.schedule = self._series(inputs.start, values, now, meta)
        await self.service.publish(
            topics.BATTERY_SCHEDULE, plan.schedule, site_id=site_id,
            device_id=self.settings.battery_device_id,
        )  # fmt: skip

    def on_prices(self, site_id: str, series: PriceSeries) -> None:
        """A site's new price series: re-plan on it (an older one than held is ignored)."""
        if self.prices.update(site_id, series):
            self.request_replan(site_id)

    async def report_prices(self) -> None:
        """Degraded while a site's price series is stale (it is planned on the tariff)."""
        stale = self.prices.stale(utcnow())
        if not stale:
            await self.service.clear_degraded("prices")
            return
        site, reason = next(iter(stale.items()))
        await self.service.set_degraded(
            "prices", f"{len(stale)} site(s) planned on the configured tariff ({site}: {reason})"
        )

    async def _report_failures(self) -> None:
        if not self._failing:
            await self.service.clear_degraded("ema")
            return
        first = sorted(self._failing.items())[0]
        await self.service.set_degraded(
            "ema",
            f"{len(self._failing)} site(s) on limits-only fallback ({first[0]}: {first[1]})",
        )

    def _series(
        self, start: datetime, values: list[float], now: datetime, meta: dict[str, Any]
    ) -> TimeSeries:
        return TimeSeries(
            ts=now, source=NAME, kind="schedule", quantity="battery_p_kw", unit="kW",
            issue_time=now, start=start, step_s=self.settings.step_s,
            values=[round(v, 4) for v in values], model="peak_shaving.ema", meta=meta,
        )  # fmt: skip

    def apply_config(self, old: Settings, new: Settings) -> None:
        """Hand new settings to the controller; the EMA gets them with each solve (a worker
        keeps one compiled problem per structure, see `STRUCTURAL_FIELDS`)."""
        self.controller.config = new
        if any(getattr(old, k) != getattr(new, k) for k in STRUCTURAL_FIELDS):
            log.info("EMA structure changed: the next solve compiles a new problem")


def _grid(
    series: TimeSeries, start: datetime, step_s: int, n: int, quantile: str | None
) -> FloatArray:
    """A forecast's quantile (its values when absent) on the EMA's grid; outside it, the value
    from whole days earlier or later."""
    return np.asarray(series.on_grid(start, step_s, n, outside="daily", quantile=quantile))


def bus_client_name(settings: Settings) -> str:
    """The service part of this instance's MQTT client id (`make_bus`'s `service`).

    `peak_shaving`, and for a replica with `site_shard` k/N `peak_shaving.shard-k-of-N`: replicas
    that differ only in `PS_SITE_SHARD` must not share a client id, or the broker disconnects each
    for the other, over and over (seen on Mosquitto: ~200 reconnects a second, neither ready).
    """
    if not settings.site_shard:
        return NAME
    index, count = settings.site_shard.split("/")
    return f"{NAME}.shard-{index}-of-{count}"


def build_service(settings: Settings, bus: Bus) -> Service[Settings]:
    """The peak_shaving service on a bus (MqttBus in production, InMemoryBus in tests).

    `service.state["peak_shaving"]` holds the `PeakShaving` state (controller, optimiser, plans).
    """
    service = Service(NAME, settings, bus)
    if settings.site_shard:
        index, count = (int(part) for part in settings.site_shard.split("/"))
        service.shard_sites(index, count)
    ps = PeakShaving(service)
    service.state[NAME] = ps
    service.declare_publishes(topics.SETPOINT, topics.BATTERY_SCHEDULE, topics.KPI)

    @service.on(topics.METER, device_id=settings.meter_device_id)
    async def on_pcc_reading(msg: MeterReading, ctx: Context) -> None:
        started = asyncio.get_running_loop().time()
        command = ps.decide(ctx.site_id, msg)
        if command is not None:
            await ctx.publish(topics.SETPOINT, command, device_id=ps.settings.battery_device_id)
        for device_id, ev_command in ps.ev_limits(ctx.site_id, msg.ts):
            await ctx.publish(topics.SETPOINT, ev_command, device_id=device_id)
        ps.metrics.decision_s.observe(asyncio.get_running_loop().time() - started)
        ps.update_site_metrics(ctx.site_id)

    @service.on(topics.BATTERY, device_id=settings.battery_device_id)
    async def on_battery(msg: BatteryTelemetry, ctx: Context) -> None:
        ps.site(ctx.site_id).battery = msg

    @service.on(topics.EV_CHARGER)
    async def on_ev_charger(msg: EvChargerTelemetry, ctx: Context) -> None:
        ps.ev.on_telemetry(ctx.site_id, ctx.device_id or "", msg)

    @service.on(topics.FORECAST)
    async def on_forecast(msg: TimeSeries, ctx: Context) -> None:
        if ctx.device_id not in (LOAD_TARGET, PV_TARGET):
            return
        ps.site(ctx.site_id).forecasts[ctx.device_id] = msg
        ps.request_replan(ctx.site_id)

    @service.on(topics.BATTERY_SCHEDULE, device_id=settings.battery_device_id)
    async def on_schedule(msg: TimeSeries, ctx: Context) -> None:
        plan = ps.site(ctx.site_id)
        if plan.schedule is None and msg.meta.get("plan_status") == "ok":
            # our retained schedule from before a restart: the prior for minimal change
            plan.schedule, plan.schedule_valid = msg, True

    @service.on(topics.PRICE_SERIES, device_id="grid")
    async def on_prices(msg: PriceSeries, ctx: Context) -> None:
        ps.on_prices(ctx.site_id, msg)

    @service.on(topics.SETPOINT_ACK, device_id=settings.battery_device_id)
    async def on_ack(msg: SetpointAck, ctx: Context) -> None:
        ps.metrics.acks.labels(status=msg.status).inc()
        if msg.status == "rejected":
            log.warning("battery setpoint rejected on %s: %s", ctx.site_id, msg.reason)

    @service.every(lambda: ps.settings.plan_interval_s)
    async def replan_all(ctx: Context) -> None:
        await ps.report_prices()
        for site_id in list(ps.sites):
            await ps.replan(site_id)

    @service.every(lambda: ps.settings.kpi_interval_s)
    async def publish_kpis(ctx: Context) -> None:
        now = utcnow()
        for site_id in ps.controller.sites():
            values = ps.update_site_metrics(site_id)
            solution = ps.site(site_id).last_solution
            if solution is not None:
                values["plan_violation_kwh"] = solution.violation_kwh
                values["plan_solve_ms"] = solution.solve_time_s * 1000
            values["plan_fallback"] = 1.0 if ps.site(site_id).fallback_reason else 0.0
            values |= ps.ev.kpis(site_id)
            report = KpiReport(
                ts=now, source=NAME, name="peak_shaving", values=values,
                period_start=ps.started_at, period_end=now,
            )  # fmt: skip
            await ctx.publish(topics.KPI, report, site_id=site_id, device_id=NAME)

    @service.on_config_change
    async def on_config(old: Settings, new: Settings) -> None:
        ps.apply_config(old, new)
        for site_id in list(ps.sites):
            ps.request_replan(site_id)

    @service.on_startup
    async def warm_up() -> None:
        ps.warm_up()

    @service.on_shutdown
    async def stop_replans() -> None:
        await ps.idle()
        ps.close()

    router = APIRouter(tags=["peak_shaving"])

    @router.get("/schedule", response_model=ScheduleView, responses=errors(404))
    def get_schedule(
        site_id: Annotated[str | None, Query(description="site (default: SITE_ID)")] = None,
    ) -> dict[str, Any]:
        """The current battery schedule of a site, with its solve status and objective terms."""
        site = site_id or ps.settings.site.id
        plan = ps.sites.get(site)
        if plan is None or plan.schedule is None:
            raise HTTPException(status_code=404, detail=f"no schedule for site {site} yet")
        body: dict[str, Any] = plan.schedule.model_dump(mode="json")
        body["site_id"] = site
        body["followed_by_pma"] = plan.schedule_valid
        return body

    @router.get("/kpis", response_model=KpisView, responses=errors(404))
    def get_kpis(
        site_id: Annotated[str | None, Query(description="site (default: SITE_ID)")] = None,
    ) -> dict[str, Any]:
        """The PMA's KPIs of a site: time on limit, violations, month peak."""
        site = site_id or ps.settings.site.id
        if site not in ps.controller.sites():
            raise HTTPException(status_code=404, detail=f"no readings for site {site} yet")
        return {"site_id": site, "values": ps.controller.kpis(site)}

    @router.post("/replan", status_code=202, response_model=Replanning, responses=errors(404))
    async def post_replan(
        _auth: TokenDep,
        site_id: Annotated[str | None, Query(description="site (default: every site)")] = None,
    ) -> dict[str, list[str]]:
        """Re-solve the schedule now (in the background); 404 for a site not seen yet."""
        if site_id and site_id not in ps.sites:
            raise HTTPException(status_code=404, detail=f"no site {site_id} seen yet")
        sites = [site_id] if site_id else list(ps.sites)
        for site in sites:
            ps.request_replan(site)
        return {"replanning": sites}

    service.include_router(router)
    return service
