"""Deferrable-job planning for the houses of a neighbourhood: book → plan (MILP) → starts.

`JobPlanning` owns the job book, the latest forecasts, the site's price series and the plan,
and the jobs file; the service's handlers call `on_forecast`, `on_prices`, `book_job` and
`cycle`, the REST routes `book_job`, `cancel` and `replan`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import Gauge

from derbus import topics
from derbus.errors import ConfigError, SolverError
from derbus.jsonfile import read_json, write_json
from derbus.messages import JobRequest, PriceSeries, Priority, SetpointCommand, TimeSeries
from derbus.tariff import PriceBook
from load_manager.controller import load_on_command
from load_manager.cossmic import Neighbourhood, load_jobs, load_neighbourhood
from load_manager.jobs import JobBook, JobEntry
from load_manager.planning import apply_schedule, build_problem, plan_message
from load_manager.scheduler import Schedule, schedule_greedy, schedule_milp
from load_manager.settings import HouseConfig, Settings

if TYPE_CHECKING:
    from derbus.service import Service

log = logging.getLogger(__name__)

NAME = "load_manager"
JOBS_FILE = "jobs.json"
JOB_STATUSES = ("pending", "planned", "running", "done", "cancelled", "unschedulable", "missed")


def neighbourhood(
    settings: Settings,
) -> tuple[list[HouseConfig], float | None, Neighbourhood | None]:
    """The houses planned for, the neighbourhood import limit and the neighbourhood file's
    content (one house = the service's site without a file)."""
    if settings.neighbourhood_file is None:
        house = HouseConfig(house_id=settings.site.id, connection_limit_kw=settings.house_limit_kw)
        return [house], settings.neighbourhood_limit_kw, None
    hood = load_neighbourhood(settings.neighbourhood_file)
    return list(hood.houses), settings.neighbourhood_limit_kw or hood.limit_kw, hood


class JobPlanning:
    """The job book and its plan (state kept across restarts).

    Args:
        service: the service it publishes through (settings are read at each call).
        clock: the current time.

    Raises:
        ConfigError: the neighbourhood or jobs file is invalid (naming file and line).
    """

    def __init__(self, service: Service[Settings, Any], clock: Callable[[], datetime]) -> None:
        s = service.settings
        self.service = service
        self.clock = clock
        self.site = s.site.id
        self.file: Path = s.data_dir / JOBS_FILE
        self.houses, self.neighbourhood_limit_kw, hood = neighbourhood(s)
        self.house_ids = {h.house_id for h in self.houses}
        self.imported: list[JobRequest] = []
        if s.jobs_file is not None:
            self.imported = load_jobs(s.jobs_file, step_s=60, neighbourhood=hood)
        self.book = JobBook.empty()
        self.forecasts: dict[tuple[str, str], TimeSeries] = {}
        self.prices = PriceBook()
        self.schedule: Schedule | None = None
        self.plan: dict[str, Any] | None = None
        self.plan_dirty = True
        self.ev_chargers: set[tuple[str, str]] = set()  # (house, device) seen as EV chargers
        self._held: dict[str, datetime] = {}  # EV job → when its hold was last sent
        self.last_plan_at: datetime | None = None
        self.lock = asyncio.Lock()
        reg = service.metrics.registry
        self.jobs_gauge = Gauge(
            "derbus_load_manager_jobs", "Deferrable jobs by status", ["status"], registry=reg
        )
        self.solve_gauge = Gauge(
            "derbus_load_manager_plan_solve_seconds", "Last scheduling solve time", registry=reg
        )
        self.pv_share_gauge = Gauge(
            "derbus_load_manager_plan_pv_share_ratio",
            "Share of planned job energy from PV",
            registry=reg,
        )

    # --- persistence ---------------------------------------------------------------------------
    def save(self) -> None:
        """Write the job book to the jobs file (atomically)."""
        write_json(self.file, self.book.to_list())

    def restore(self) -> None:
        """The book from the jobs file, plus the imported jobs it does not hold yet."""
        jobs = read_json(self.file)
        if isinstance(jobs, list):
            self.book = JobBook.from_list(jobs)
        for request in self.imported:
            if request.job_id not in self.book.entries:
                self.book.add(request)

    # --- handlers ------------------------------------------------------------------------------
    def on_forecast(self, house_id: str, kind: str, series: TimeSeries) -> None:
        """A PV or load forecast of a house (other sites are ignored)."""
        if house_id in self.house_ids:
            self.forecasts[house_id, kind] = series
            self.plan_dirty = True

    def on_prices(self, site_id: str, series: PriceSeries) -> None:
        """A price series of the site: re-planned by the next job cycle when it is newer."""
        if self.prices.update(site_id, series):
            self.plan_dirty = True

    def book_job(self, request: JobRequest) -> None:
        """Book a job for the next plan.

        Raises:
            ConfigError: its house is not planned here.
            DuplicateJobError: its id is booked already.
        """
        if request.house_id not in self.house_ids:
            raise ConfigError(
                f"house_id {request.house_id!r} is not planned here "
                f"(known: {sorted(self.house_ids)})",
                ("house_id",),
            )
        self.book.add(request)
        self.plan_dirty = True
        self.save()

    def cancel(self, job_id: str) -> JobEntry:
        """Cancel a job that has not started (KeyError unknown, ValueError started)."""
        entry = self.book.cancel(job_id)
        self.plan_dirty = True
        self.save()
        return entry

    async def replan(self, now: datetime) -> dict[str, Any]:
        """Plan the open jobs now (MILP, greedy when it fails) and publish the plan."""
        s, service = self.service.settings, self.service
        prices = self.prices.for_site(self.site, s.tariff, now)
        if prices.series is None and self.site in self.prices.series:
            await service.set_degraded("prices", f"jobs planned on the configured {prices.status}")
        else:
            await service.clear_degraded("prices")
        async with self.lock:
            self.book.advance(now, timedelta(seconds=s.plan_step_s))
            problem = build_problem(
                now=now,
                step_s=s.plan_step_s,
                n_steps=s.plan_horizon_steps,
                houses=self.houses,
                book=self.book,
                forecasts=self.forecasts,
                tariff=prices,
                shared_pv=s.shared_pv,
                neighbourhood_limit_kw=self.neighbourhood_limit_kw,
                cost_weight=s.job_cost_weight,
                peak_weight_per_kw=s.peak_weight_per_kw,
                load_quantile=s.load_forecast_quantile,
                pv_quantile=s.pv_forecast_quantile,
            )
            try:
                schedule = await service.run_blocking(schedule_milp, problem, s.solver_time_limit_s)
                await service.clear_degraded("planner")
            except SolverError as err:
                schedule = schedule_greedy(problem)
                await service.set_degraded("planner", f"MILP failed, greedy plan used: {err}")
            apply_schedule(self.book, schedule)
            self.schedule = schedule
            self.plan_dirty = False
            self.last_plan_at = now
            message = plan_message(self.book, schedule, problem, now, NAME)
            self.plan = plan = message.model_dump(mode="json")
            await service.publish(topics.JOB_PLAN, message, site_id=self.site, device_id="jobs")
            energy = sum(j.pv_kwh + j.grid_kwh for j in message.jobs)
            pv = sum(j.pv_kwh for j in message.jobs)
            self.pv_share_gauge.set(pv / energy if energy > 0 else 0.0)
            self.solve_gauge.set(schedule.solve_time_s)
            self.save()
            return plan

    # --- EV charging sessions as jobs ---------------------------------------------------------
    def on_ev_charger(self, house_id: str, device_id: str) -> None:
        """A device is an EV charger (`telemetry.ev_charger`): its jobs are charging sessions."""
        self.ev_chargers.add((house_id, device_id))

    def is_ev(self, entry: JobEntry) -> bool:
        """The job's device is an EV charger."""
        return (entry.request.house_id, entry.request.device_id) in self.ev_chargers

    def start_command(self, entry: JobEntry, now: datetime, ttl_s: float) -> SetpointCommand:
        """What starts a job: `load_on`, or for an EV charger an `ev_limit_kw` at the job's
        highest profile power for its duration (the charger then charges at the planned rate)."""
        if not self.is_ev(entry):
            return load_on_command(now, True, ttl_s, NAME)
        return _ev_limit(now, max(entry.request.profile_kw), ttl_s)

    async def hold_ev_jobs(self, now: datetime) -> None:
        """Hold each planned EV job's charger at 0 kW until its planned start.

        The hold lives until the planned start (at most `EV_HOLD_TTL_S`) and is refreshed at
        half its life, so a stopped load manager lets the vehicle charge again within that time.
        """
        for entry in self.book.entries.values():
            start = entry.planned_start
            if entry.status != "planned" or start is None or start <= now or not self.is_ev(entry):
                continue
            ttl = min((start - now).total_seconds(), EV_HOLD_TTL_S)
            sent = self._held.get(entry.request.job_id)
            if sent is not None and (now - sent).total_seconds() < EV_HOLD_TTL_S / 2:
                continue
            self._held[entry.request.job_id] = now
            await self.service.publish(
                topics.SETPOINT,
                _ev_limit(now, 0.0, max(ttl, 1.0)),
                site_id=entry.request.house_id,
                device_id=entry.request.device_id,
            )

    async def cycle(self) -> None:
        """Start the jobs due now, then re-plan when something changed or the plan is old."""
        s = self.service.settings
        now = self.clock()
        started = False
        for entry in self.book.due(now):  # starts first: a re-plan below may take seconds
            ttl = max(1.0, entry.duration.total_seconds())
            await self.service.publish(
                topics.SETPOINT,
                self.start_command(entry, now, ttl),
                site_id=entry.request.house_id,
                device_id=entry.request.device_id,
            )
            self._held.pop(entry.request.job_id, None)
            self.book.mark_started(entry, now)
            log.info(
                "job %s started on %s/%s",
                entry.request.job_id,
                entry.request.house_id,
                entry.request.device_id,
            )
            started = True
        await self.hold_ev_jobs(now)
        if self.book.advance(now, timedelta(seconds=s.plan_step_s)) or started:
            self.save()
        age_s = None if self.last_plan_at is None else (now - self.last_plan_at).total_seconds()
        if self.plan_dirty or started or age_s is None or age_s >= s.replan_interval_s:
            await self.replan(now)
        for status in JOB_STATUSES:
            count = sum(1 for e in self.book.entries.values() if e.status == status)
            self.jobs_gauge.labels(status=status).set(count)


EV_HOLD_TTL_S = 300.0
"""Longest life of a hold (EV charger at 0 kW before its job's planned start), s."""


def _ev_limit(now: datetime, value_kw: float, ttl_s: float) -> SetpointCommand:
    return SetpointCommand(
        ts=now,
        source=NAME,
        target="ev_limit_kw",
        value=round(value_kw, 3),
        unit="kW",
        ttl_s=min(ttl_s, 86_400),
        priority=Priority.SITE_OPTIMISER,
    )
