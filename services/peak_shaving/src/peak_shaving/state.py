"""`PeakShaving`, the service's state: the PMA controller, the EMA optimiser, per-site plans."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from prometheus_client import Counter, Gauge, Histogram

from derbus import topics
from derbus.errors import SolverError
from derbus.messages import (
    BatteryTelemetry,
    KpiReport,
    MeterReading,
    PriceSeries,
    Priority,
    SetpointAck,
    SetpointCommand,
    TimeSeries,
    utcnow,
)
from derbus.service import Service
from derbus.tariff import PriceBook
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

    def __init__(self, service: Service[Settings, Any]) -> None:
        registry = service.metrics.registry
        self.decision_s = Histogram(
            "derbus_peak_shaving_decision_seconds",
            "PMA decision time, reading handled → setpoint handed to the bus",
            buckets=(0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05),
            registry=registry,
        )
        self.time_on_limit = Gauge(
            "derbus_peak_shaving_time_on_limit_seconds",
            "Time a limit was binding",
            ["site"],
            registry=registry,
        )
        self.limit_events = Gauge(
            "derbus_peak_shaving_limit_events",
            "Times the PMA went onto a limit",
            ["site"],
            registry=registry,
        )
        self.unfixed_s = Gauge(
            "derbus_peak_shaving_unfixed_violation_seconds",
            "Time the PCC stayed beyond a hard limit with the battery at its limit",
            ["site"],
            registry=registry,
        )
        self.unfixed_kwh = Gauge(
            "derbus_peak_shaving_unfixed_violation_kwh",
            "Energy beyond a hard limit the battery could not remove",
            ["site"],
            registry=registry,
        )
        self.month_peak = Gauge(
            "derbus_peak_shaving_month_peak_kw",
            "Highest 15-minute average import this month",
            ["site"],
            registry=registry,
        )
        self.solves = Counter(
            "derbus_peak_shaving_ema_solves_total",
            "EMA solves by outcome",
            ["outcome"],
            registry=registry,
        )
        self.solve_s = Histogram(
            "derbus_peak_shaving_ema_solve_seconds",
            "EMA solve wall time",
            buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0, 5.0),
            registry=registry,
        )
        self.acks = Counter(
            "derbus_peak_shaving_setpoint_acks_total",
            "Battery setpoint acknowledgements",
            ["status"],
            registry=registry,
        )


class PeakShaving:
    """`service.state` of peak_shaving: the controller, the optimiser and per-site plans and readings.

    The PMA decides on each PCC reading (`decide`, `ev_limits`, both through `commands`); the EMA
    re-plans a site's battery schedule on forecasts and prices (`request_replan`, `replan`);
    acknowledgements are counted (`on_ack`).

    Args:
        service: the service it publishes through (its settings, health and metrics registry).
    """

    def __init__(self, service: Service[Settings, Any]) -> None:
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

    async def start(self) -> None:
        """At start-up: build the optimiser in the background (`warm_up`)."""
        self.warm_up()

    async def stop(self) -> None:
        """At shutdown: wait for the running re-solves, then stop the EMA's worker processes."""
        await self.idle()
        self.close()

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
                ts=sent,
                source=NAME,
                target="ev_limit_kw",
                value=limit.limit_kw,
                unit="kW",
                ttl_s=ttl,
                priority=Priority.SITE_OPTIMISER,
            )
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

    def commands(
        self, site_id: str, reading: MeterReading
    ) -> Iterator[tuple[str, SetpointCommand]]:
        """The setpoints (device, command) for one PCC reading: the battery's (`decide`) first,
        then the EV limits (`ev_limits`, made once the battery's has been handed on)."""
        command = self.decide(site_id, reading)
        if command is not None:
            yield self.settings.battery_device_id, command
        yield from self.ev_limits(site_id, reading.ts)

    @contextmanager
    def timing(self, site_id: str) -> Iterator[None]:
        """Time a reading's handling (reading handled → setpoints handed to the bus), then
        refresh the site's gauges; neither when the handling raised."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        yield
        self.metrics.decision_s.observe(loop.time() - started)
        self.update_site_metrics(site_id)

    def on_battery(self, site_id: str, reading: BatteryTelemetry) -> None:
        """A battery reading: what the PMA and the EMA know of the site's battery."""
        self.site(site_id).battery = reading

    def on_ack(self, site_id: str, ack: SetpointAck) -> None:
        """A battery setpoint's acknowledgement: counted by status, a rejection logged."""
        self.metrics.acks.labels(status=ack.status).inc()
        if ack.status == "rejected":
            log.warning("battery setpoint rejected on %s: %s", site_id, ack.reason)

    def kpi_reports(self, now: datetime) -> Iterator[tuple[str, KpiReport]]:
        """Per site the controller knows, its KPI report (PMA, plan, EV limits) at `now`; the
        site's gauges are refreshed on the way."""
        for site_id in self.controller.sites():
            values = self.update_site_metrics(site_id)
            solution = self.site(site_id).last_solution
            if solution is not None:
                values["plan_violation_kwh"] = solution.violation_kwh
                values["plan_solve_ms"] = solution.solve_time_s * 1000
            values["plan_fallback"] = 1.0 if self.site(site_id).fallback_reason else 0.0
            values |= self.ev.kpis(site_id)
            report = KpiReport(
                ts=now,
                source=NAME,
                name="peak_shaving",
                values=values,
                period_start=self.started_at,
                period_end=now,
            )
            yield site_id, report

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

    def on_forecast(self, site_id: str, target: str | None, series: TimeSeries) -> None:
        """A site's load or PV forecast (other targets are ignored): re-plan on it."""
        if target not in (LOAD_TARGET, PV_TARGET):
            return
        self.site(site_id).forecasts[target] = series
        self.request_replan(site_id)

    def on_schedule(self, site_id: str, schedule: TimeSeries) -> None:
        """Our retained schedule from before a restart: the prior for minimal change."""
        plan = self.site(site_id)
        if plan.schedule is None and schedule.meta.get("plan_status") == "ok":
            plan.schedule, plan.schedule_valid = schedule, True

    async def replan_all(self) -> None:
        """The periodic re-plan: stale price series reported, then every site solved in turn."""
        await self.report_prices()
        for site_id in list(self.sites):
            await self.replan(site_id)

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
            topics.BATTERY_SCHEDULE,
            plan.schedule,
            site_id=site_id,
            device_id=self.settings.battery_device_id,
        )
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
            topics.BATTERY_SCHEDULE,
            plan.schedule,
            site_id=site_id,
            device_id=self.settings.battery_device_id,
        )

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
            ts=now,
            source=NAME,
            kind="schedule",
            quantity="battery_p_kw",
            unit="kW",
            issue_time=now,
            start=start,
            step_s=self.settings.step_s,
            values=[round(v, 4) for v in values],
            model="peak_shaving.ema",
            meta=meta,
        )

    def apply_config(self, old: Settings, new: Settings) -> None:
        """Hand new settings to the controller; the EMA gets them with each solve (a worker
        keeps one compiled problem per structure, see `STRUCTURAL_FIELDS`)."""
        self.controller.config = new
        if any(getattr(old, k) != getattr(new, k) for k in STRUCTURAL_FIELDS):
            log.info("EMA structure changed: the next solve compiles a new problem")

    def reconfigure(self, old: Settings, new: Settings) -> None:
        """`PUT /config` changed the settings: apply them (`apply_config`), re-plan every site."""
        self.apply_config(old, new)
        for site_id in list(self.sites):
            self.request_replan(site_id)


def _grid(
    series: TimeSeries, start: datetime, step_s: int, n: int, quantile: str | None
) -> FloatArray:
    """A forecast's quantile (its values when absent) on the EMA's grid; outside it, the value
    from whole days earlier or later."""
    return np.asarray(series.on_grid(start, step_s, n, outside="daily", quantile=quantile))
