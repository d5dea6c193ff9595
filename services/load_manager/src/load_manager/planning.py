"""From job book and forecasts to a scheduling `Problem`, and from a `Schedule` back to the book."""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict, model_validator
from pydantic.json_schema import SkipJsonSchema

from derbus.messages import JobPlan, JobRequest, PlannedJob, TimeSeries, UtcDatetime
from derbus.tariff import ImportPrices
from load_manager.jobs import JobBook
from load_manager.profiles import profile_from_cumulative, resample_profile
from load_manager.scheduler import HouseInput, JobInput, Problem, Schedule
from load_manager.settings import HouseConfig


def plan_start(now: datetime, step_s: int) -> datetime:
    """Start of the plan step containing `now` (steps aligned to the Unix epoch)."""
    return datetime.fromtimestamp(math.floor(now.timestamp() / step_s) * step_s, UTC)


def build_problem(
    *,
    now: datetime,
    step_s: int,
    n_steps: int,
    houses: Sequence[HouseConfig],
    book: JobBook,
    forecasts: Mapping[tuple[str, str], TimeSeries],
    tariff: ImportPrices,
    shared_pv: bool,
    neighbourhood_limit_kw: float | None,
    cost_weight: float,
    peak_weight_per_kw: float,
    load_quantile: str | None = None,
    pv_quantile: str | None = None,
) -> Problem:
    """The instance for the open jobs at `now`.

    Forecasts are keyed (house_id, "pv" | "load"), power in kW (PV as positive generation),
    taken as their time-weighted mean over each plan step at `load_quantile` / `pv_quantile`
    (their values when None or absent); missing forecasts and time outside them count as 0.
    Jobs already running add their remaining profile to their house's base load, so the PV they
    use is not offered again.
    """
    start = plan_start(now, step_s)

    def on_grid(house_id: str, kind: str, quantile: str | None) -> list[float]:
        series = forecasts.get((house_id, kind))
        if series is None:
            return [0.0] * n_steps
        return series.on_grid(start, step_s, n_steps, how="mean", quantile=quantile)

    base = {h.house_id: on_grid(h.house_id, "load", load_quantile) for h in houses}
    for entry in book.running(now):
        if entry.request.house_id not in base or entry.started_at is None:
            continue
        row = base[entry.request.house_id]
        profile = entry.request.profile_kw
        for k, p in enumerate(profile):
            a = entry.started_at + timedelta(seconds=k * entry.request.step_s)
            idx = math.floor((a - start).total_seconds() / step_s)
            if 0 <= idx < n_steps:
                row[idx] += p * entry.request.step_s / step_s
    house_inputs = tuple(
        HouseInput(
            house_id=h.house_id,
            limit_kw=h.connection_limit_kw,
            pv_kw=tuple(on_grid(h.house_id, "pv", pv_quantile)),
            base_kw=tuple(base[h.house_id]),
        )
        for h in houses
    )
    jobs = tuple(
        JobInput(
            job_id=e.request.job_id,
            house_id=e.request.house_id,
            device_id=e.request.device_id,
            earliest_start=e.request.earliest_start,
            latest_start=e.request.latest_start,
            profile_kw=tuple(resample_profile(e.request.profile_kw, e.request.step_s, step_s)),
        )
        for e in book.open_jobs()
        if e.request.house_id in base
    )
    prices = tuple(tariff.price_at(start + timedelta(seconds=k * step_s)) for k in range(n_steps))
    return Problem(
        start=start,
        step_s=step_s,
        n_steps=n_steps,
        houses=house_inputs,
        jobs=jobs,
        price_per_kwh=prices,
        shared_pv=shared_pv,
        neighbourhood_limit_kw=neighbourhood_limit_kw,
        cost_weight=cost_weight,
        peak_weight_per_kw=peak_weight_per_kw,
    )


def apply_schedule(book: JobBook, schedule: Schedule) -> None:
    """Write the plan's starts into the book (open jobs only)."""
    for entry in book.open_jobs():
        job_id = entry.request.job_id
        placed = schedule.placements.get(job_id)
        if placed is not None:
            entry.status = "planned"
            entry.planned_start = placed.start
            entry.planned_end = placed.start + entry.duration
            entry.pv_kwh, entry.grid_kwh = placed.pv_kwh, placed.grid_kwh
            entry.reason = None
        elif job_id in schedule.unschedulable:
            entry.status = "unschedulable"
            entry.planned_start = entry.planned_end = None
            entry.reason = schedule.unschedulable[job_id]


def plan_message(
    book: JobBook, schedule: Schedule, problem: Problem, now: datetime, source: str
) -> JobPlan:
    """The retained plan: planned and running jobs with their PV / grid energy."""
    jobs = []
    for entry in book.entries.values():
        if entry.status not in ("planned", "running") or entry.planned_start is None:
            continue
        end = entry.planned_end or entry.planned_start + entry.duration
        jobs.append(
            PlannedJob(
                job_id=entry.request.job_id,
                house_id=entry.request.house_id,
                device_id=entry.request.device_id,
                start=entry.planned_start,
                end=end,
                pv_kwh=max(0.0, entry.pv_kwh or 0.0),
                grid_kwh=max(0.0, entry.grid_kwh or 0.0),
            )
        )
    jobs.sort(key=lambda j: (j.start, j.job_id))
    return JobPlan(
        ts=now,
        source=source,
        plan_id=uuid.uuid4().hex,
        jobs=jobs,
        horizon_start=problem.start,
        step_s=problem.step_s,
        objective=schedule.objective,
        solve_status=f"{schedule.method}:{schedule.status}",
        solve_time_s=schedule.solve_time_s,
    )


def _not_a_number(value: Any) -> Any:
    if isinstance(value, int | float):
        raise ValueError("a time is ISO 8601 text, not a number")
    return value


LaxTime = Annotated[UtcDatetime, Strict(False), BeforeValidator(_not_a_number)]
"""A time in a strict REST body: ISO 8601 text (JSON has no time type), not a number."""


class JobSubmission(BaseModel):
    """A job as submitted over REST: window by latest start or deadline, profile in kW or Wh."""

    # the schema says "exactly one of" as the validator does; the four may be left out, not null
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "allOf": [
                {"oneOf": [{"required": ["latest_start"]}, {"required": ["deadline"]}]},
                {"oneOf": [{"required": ["profile_kw"]}, {"required": ["profile_cumulative_wh"]}]},
            ]
        },
    )

    job_id: str | None = Field(default=None, max_length=100, description="generated when absent")
    house_id: str | None = Field(default=None, description="defaults to the service's site")
    device_id: str = Field(min_length=1, description="the appliance's device id")
    earliest_start: LaxTime | None = Field(default=None, description="defaults to now")
    latest_start: LaxTime | SkipJsonSchema[None] = None
    deadline: LaxTime | SkipJsonSchema[None] = Field(
        default=None, description="latest end; latest start = deadline − duration"
    )
    profile_kw: list[float] | SkipJsonSchema[None] = Field(
        default=None, description="power per step, kW"
    )
    step_s: int = Field(default=900, gt=0, le=86_400, description="step of the profile, s")
    profile_cumulative_wh: (
        list[Annotated[tuple[float, float], Strict(False)]] | SkipJsonSchema[None]
    ) = Field(default=None, description="[(time_s, cumulative Wh)] since the job's start")

    @model_validator(mode="before")
    @classmethod
    def _left_out_not_null(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in ("latest_start", "deadline", "profile_kw", "profile_cumulative_wh"):
                if key in data and data[key] is None:
                    raise ValueError(f"{key}: leave it out rather than null")
        return data

    @model_validator(mode="after")
    def _one_of_each(self) -> JobSubmission:
        if (self.latest_start is None) == (self.deadline is None):
            raise ValueError("give exactly one of latest_start and deadline")
        if (self.profile_kw is None) == (self.profile_cumulative_wh is None):
            raise ValueError("give exactly one of profile_kw and profile_cumulative_wh")
        return self

    def to_request(self, now: datetime, default_house: str, source: str) -> JobRequest:
        """The bus message for this submission (raises ValueError when inconsistent)."""
        if self.profile_kw is not None:
            profile = list(self.profile_kw)
        else:
            profile = profile_from_cumulative(self.profile_cumulative_wh or [], self.step_s)
        duration = timedelta(seconds=len(profile) * self.step_s)
        earliest = self.earliest_start or now
        if self.latest_start is not None:
            latest = self.latest_start
        else:
            assert self.deadline is not None  # one of the two is set (validated)
            latest = self.deadline - duration
        return JobRequest(
            ts=now,
            source=source,
            job_id=self.job_id or uuid.uuid4().hex[:12],
            house_id=self.house_id or default_house,
            device_id=self.device_id,
            earliest_start=earliest,
            latest_start=latest,
            profile_kw=profile,
            step_s=self.step_s,
        )
