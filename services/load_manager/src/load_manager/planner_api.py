"""Neighbourhood planner REST (PySSMic's workflow): import CoSSMic files, check, simulate N runs.

A *scenario* is a neighbourhood on its own, independent of the jobs this service runs live:
houses with a connection limit, an hourly PV prediction and base load, devices with a load
profile, and deferrable jobs. `POST /planner/simulate` places its jobs with one of the
scheduler's algorithms (`milp`, `greedy`, `earliest`) `runs` times; run r draws its variation
from `seed + r`: each house's PV prediction is scaled by one factor N(1, σ) (clouds, clipped to
[0, 2]) times a per-hour factor N(1, σ/2), and each job's window is shifted by a whole number of
steps in [−jitter, +jitter]. Invalid input gets a 422 whose `detail` entries name the field
(`loc` as FastAPI does, e.g. `["body", "jobs", 1, "latest_start"]`).

Figures per household and run (power load-referenced, kWh over the horizon): job energy and the
share of it covered by PV, grid import at the house's meter, its peak and peak-to-average ratio,
and its import cost at the service's tariff; the same for the neighbourhood.
"""

from __future__ import annotations

import asyncio
import random
import tempfile
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, ConfigDict, Field, field_validator

from derbus.errors import ConfigError, SolverError
from derbus.http import errors
from derbus.messages import UtcDatetime
from derbus.service import Service
from derbus.tariff import Tariff
from derbus.topics import ID_PATTERN
from load_manager.api_models import Checked, Simulation
from load_manager.cossmic import load_jobs, load_neighbourhood, load_profile
from load_manager.planning import LaxTime
from load_manager.profiles import resample_profile
from load_manager.scheduler import (
    HouseInput,
    JobInput,
    Problem,
    Schedule,
    evaluate,
    schedule_earliest,
    schedule_greedy,
    schedule_milp,
)
from load_manager.settings import Settings

Algorithm = Literal["milp", "greedy", "earliest"]
SERIES_STEP_S = 3600
"""PV predictions and base loads of a scenario are hourly, kW."""

STRICT = ConfigDict(extra="forbid", strict=True)
"""REST bodies take the JSON types their schema says (no `false` for 0; times as text)."""

Kw = Annotated[float, Field(ge=0, le=10_000, allow_inf_nan=False)]
Id = Annotated[str, Field(min_length=1, max_length=100, pattern=ID_PATTERN)]
"""An id that can stand as one topic level (`ID_PATTERN` is `derbus.topics.validate_id`)."""


class PlannerDevice(BaseModel):
    """A flexible appliance of a house with its load profile (kW per `profile_step_s`, >= 0)."""

    model_config = STRICT

    device_id: Id
    type: str = Field(default="appliance", min_length=1, max_length=100)
    profile_kw: list[Kw] = Field(min_length=1, max_length=2_000)
    profile_step_s: int = Field(default=900, gt=0, le=86_400)


class PlannerHouse(BaseModel):
    """A house: connection limit, hourly PV prediction and base load (kW from the start)."""

    model_config = STRICT

    house_id: Id
    connection_limit_kw: float = Field(default=9.2, gt=0, le=10_000, allow_inf_nan=False)
    pv_kw: list[Kw] = Field(default_factory=list, max_length=24 * 14)
    base_kw: list[Kw] = Field(default_factory=list, max_length=24 * 14)
    devices: list[PlannerDevice] = Field(default_factory=list)


class PlannerJob(BaseModel):
    """A deferrable run of a device between its earliest and latest start."""

    model_config = STRICT

    job_id: str = Field(min_length=1, max_length=100)
    house_id: str = Field(min_length=1)
    device_id: str = Field(min_length=1)
    earliest_start: LaxTime
    latest_start: LaxTime
    profile_kw: list[Kw] | None = Field(
        default=None,
        min_length=1,
        max_length=2_000,
        description="kW per `profile_step_s`; default: the device's profile",
    )
    profile_step_s: int = Field(default=900, gt=0, le=86_400)


class Scenario(BaseModel):
    """A neighbourhood to plan: houses, devices, jobs, over `hours` from `start` on `step_s`."""

    model_config = STRICT

    name: str = Field(default="neighbourhood", min_length=1, max_length=100)
    start: LaxTime
    hours: int = Field(default=24, ge=1, le=72)
    step_s: int = Field(
        default=900, ge=300, le=3600, json_schema_extra={"enum": [300, 600, 900, 1200, 1800, 3600]}
    )
    neighbourhood_limit_kw: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    shared_pv: bool = True
    houses: list[PlannerHouse] = Field(min_length=1, max_length=200)
    jobs: list[PlannerJob] = Field(default_factory=list, max_length=2_000)

    @field_validator("step_s")
    @classmethod
    def _divides_an_hour(cls, value: int) -> int:
        if 3600 % value:
            raise ValueError("step_s must divide an hour (300, 600, 900, 1200, 1800, 3600)")
        return value

    @property
    def n_steps(self) -> int:
        """Steps in the horizon."""
        return self.hours * 3600 // self.step_s


class SimulationRequest(BaseModel):
    """Simulate a scenario `runs` times with one algorithm and seeded variation."""

    model_config = STRICT

    scenario: Scenario
    algorithm: Algorithm = "milp"
    runs: int = Field(default=1, ge=1, le=50)
    seed: int = Field(default=0, ge=0, le=2**31)
    pv_variation_pct: float = Field(default=20.0, ge=0, le=100, description="σ of the PV factor")
    window_jitter_steps: int = Field(default=1, ge=0, le=16)


class ImportRequest(BaseModel):
    """CoSSMic-style files as text: neighbourhood XML, jobs CSV or XML, their profiles, PV."""

    model_config = STRICT

    neighbourhood_xml: str = Field(min_length=1, max_length=2_000_000)
    jobs_text: str | None = Field(default=None, max_length=2_000_000)
    jobs_format: Literal["csv", "xml"] = "csv"
    profiles: dict[str, str] = Field(
        default_factory=dict, description="profile path as named in the jobs file -> its CSV"
    )
    pv: dict[str, str] = Field(
        default_factory=dict, description="house id -> PV prediction CSV (time_s,cumulative_wh)"
    )
    start: UtcDatetime | None = Field(default=None, description="default: the first job's day")
    hours: int = Field(default=24, ge=1, le=72)


def _error(loc: list[str | int], msg: str) -> dict[str, Any]:
    return {"loc": ["body", *loc], "msg": msg, "type": "value_error"}


def scenario_errors(scenario: Scenario, prefix: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Cross-field problems of a scenario, each naming its field (FastAPI's 422 `detail` form)."""
    out: list[dict[str, Any]] = []
    end = scenario.start + timedelta(hours=scenario.hours)
    devices: dict[str, dict[str, PlannerDevice]] = {}
    for i, house in enumerate(scenario.houses):
        if house.house_id in devices:
            out.append(_error([*prefix, "houses", i, "house_id"], "duplicate house id"))
        devices[house.house_id] = {}
        for k, device in enumerate(house.devices):
            if device.device_id in devices[house.house_id]:
                where: list[str | int] = [*prefix, "houses", i, "devices", k, "device_id"]
                out.append(_error(where, "duplicate device id in this house"))
            devices[house.house_id][device.device_id] = device
    seen: set[str] = set()
    for j, job in enumerate(scenario.jobs):
        here: list[str | int] = [*prefix, "jobs", j]
        if job.job_id in seen:
            out.append(_error([*here, "job_id"], "duplicate job id"))
        seen.add(job.job_id)
        known = devices.get(job.house_id)
        if known is None:
            out.append(_error([*here, "house_id"], f"no house {job.house_id!r}"))
        elif job.device_id not in known:
            out.append(_error([*here, "device_id"], f"house {job.house_id!r} has no such device"))
        elif job.profile_kw is None and not known[job.device_id].profile_kw:
            out.append(_error([*here, "profile_kw"], "no profile (the device has none either)"))
        if job.latest_start < job.earliest_start:
            out.append(_error([*here, "latest_start"], "latest start is before the earliest"))
        if job.earliest_start >= end:
            out.append(_error([*here, "earliest_start"], "after the end of the horizon"))
        if job.latest_start < scenario.start:
            out.append(_error([*here, "latest_start"], "before the start of the horizon"))
    return out


def _check(scenario: Scenario, prefix: tuple[str, ...] = ()) -> None:
    errors = scenario_errors(scenario, prefix)
    if errors:
        raise HTTPException(status_code=422, detail=errors)


def _hourly_on_grid(values: list[float], step_s: int, n_steps: int) -> tuple[float, ...]:
    """Hourly kW values held over each step of the grid (0 beyond the list)."""
    return tuple(
        values[(k * step_s) // SERIES_STEP_S] if (k * step_s) // SERIES_STEP_S < len(values) else 0
        for k in range(n_steps)
    )


def build_problem(scenario: Scenario, tariff: Tariff, settings: Settings) -> Problem:
    """The scheduler's instance for a (checked) scenario."""
    n, step = scenario.n_steps, scenario.step_s
    houses = tuple(
        HouseInput(
            house_id=h.house_id,
            limit_kw=h.connection_limit_kw,
            pv_kw=_hourly_on_grid(list(h.pv_kw), step, n),
            base_kw=_hourly_on_grid(list(h.base_kw), step, n),
        )
        for h in scenario.houses
    )
    by_house = {h.house_id: {d.device_id: d for d in h.devices} for h in scenario.houses}
    jobs = []
    for job in scenario.jobs:
        device = by_house[job.house_id][job.device_id]
        profile, src_step = (
            (job.profile_kw, job.profile_step_s)
            if job.profile_kw is not None
            else (device.profile_kw, device.profile_step_s)
        )
        jobs.append(
            JobInput(
                job_id=job.job_id,
                house_id=job.house_id,
                device_id=job.device_id,
                earliest_start=job.earliest_start,
                latest_start=job.latest_start,
                profile_kw=tuple(resample_profile(list(profile), src_step, step)),
            )
        )
    prices = tuple(tariff.price_at(scenario.start + timedelta(seconds=k * step)) for k in range(n))
    return Problem(
        start=scenario.start,
        step_s=step,
        n_steps=n,
        houses=houses,
        jobs=tuple(jobs),
        price_per_kwh=prices,
        shared_pv=scenario.shared_pv,
        neighbourhood_limit_kw=scenario.neighbourhood_limit_kw,
        cost_weight=settings.job_cost_weight,
        peak_weight_per_kw=settings.peak_weight_per_kw,
    )


def vary(problem: Problem, rng: random.Random, pv_sigma: float, jitter_steps: int) -> Problem:
    """One seeded variation of a problem: PV scaled per house and hour, job windows shifted.

    Args:
        problem: the scenario's problem.
        rng: the run's random source (seeded `seed + run`).
        pv_sigma: σ of the house's PV factor (0.2 = 20 %); per hour σ/2 more.
        jitter_steps: job windows move by a whole number of steps in [−jitter, +jitter].
    """
    houses = []
    for house in problem.houses:
        factor = min(2.0, max(0.0, rng.gauss(1.0, pv_sigma)))
        hourly: dict[int, float] = {}
        pv = []
        for k, p in enumerate(house.pv_kw):
            hour = (k * problem.step_s) // SERIES_STEP_S
            if hour not in hourly:
                hourly[hour] = max(0.0, rng.gauss(1.0, pv_sigma / 2))
            pv.append(p * factor * hourly[hour])
        houses.append(replace(house, pv_kw=tuple(pv)))
    jobs = []
    for job in problem.jobs:
        shift = timedelta(seconds=rng.randint(-jitter_steps, jitter_steps) * problem.step_s)
        earliest = max(problem.start, job.earliest_start + shift)
        latest = max(earliest, job.latest_start + shift)
        jobs.append(replace(job, earliest_start=earliest, latest_start=latest))
    return replace(problem, houses=tuple(houses), jobs=tuple(jobs))


def _house_import(problem: Problem, schedule: Schedule) -> dict[str, list[float]]:
    """Grid import at each house's meter per step, kW (base − PV + its jobs, >= 0)."""
    jobs = {j.job_id: j for j in problem.jobs}
    net = {
        h.house_id: [b - p for b, p in zip(h.base_kw, h.pv_kw, strict=True)] for h in problem.houses
    }
    for job_id, placed in schedule.placements.items():
        job = jobs[job_id]
        for k, p in enumerate(job.profile_kw):
            net[job.house_id][placed.start_index + k] += p
    return {h: [max(0.0, v) for v in row] for h, row in net.items()}


def _figures(imports: list[float], prices: tuple[float, ...], dt_h: float) -> dict[str, float]:
    mean = sum(imports) / len(imports) if imports else 0.0
    peak = max(imports, default=0.0)
    return {
        "import_kwh": round(sum(imports) * dt_h, 4),
        "peak_kw": round(peak, 4),
        "par": round(peak / mean, 4) if mean > 0 else 0.0,
        "cost": round(sum(i * p for i, p in zip(imports, prices, strict=True)) * dt_h, 4),
    }


def run_once(problem: Problem, algorithm: Algorithm, settings: Settings) -> dict[str, Any]:
    """Place the jobs of one (varied) problem and report per household and for the whole."""
    try:
        schedule = ALGORITHMS[algorithm](problem, settings)
    except SolverError as err:
        return {"status": "failed", "reason": str(err), "households": [], "jobs": []}
    imports = _house_import(problem, schedule)
    jobs = {j.job_id: j for j in problem.jobs}
    households = []
    for house in problem.houses:
        placed = [p for k, p in schedule.placements.items() if jobs[k].house_id == house.house_id]
        job_kwh = sum(p.pv_kwh + p.grid_kwh for p in placed)
        pv_kwh = sum(p.pv_kwh for p in placed)
        households.append(
            {
                "house_id": house.house_id,
                "jobs": len(placed),
                "job_kwh": round(job_kwh, 4),
                "pv_share": round(pv_kwh / job_kwh, 4) if job_kwh > 0 else 0.0,
                **_figures(imports[house.house_id], problem.price_per_kwh, problem.dt_h),
            }
        )
    total = evaluate(problem, {k: p.start_index for k, p in schedule.placements.items()})
    return {
        "status": schedule.status,
        "solve_time_s": round(schedule.solve_time_s, 4),
        "neighbourhood": {
            "job_kwh": round(total.job_kwh, 4),
            "pv_share": round(total.pv_share, 4),
            "import_kwh": round(total.grid_import_kwh, 4),
            "peak_kw": round(total.peak_kw, 4),
            "par": round(total.par, 4),
            "cost": round(total.cost, 4),
        },
        "households": households,
        "jobs": [
            {
                "job_id": p.job_id,
                "house_id": jobs[p.job_id].house_id,
                "device_id": jobs[p.job_id].device_id,
                "start": p.start.isoformat(),
                "end": p.end.isoformat(),
                "pv_kwh": p.pv_kwh,
                "grid_kwh": p.grid_kwh,
            }
            for p in sorted(schedule.placements.values(), key=lambda p: (p.start, p.job_id))
        ],
        "unschedulable": dict(schedule.unschedulable),
    }


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean, min and max of each figure across the runs that produced a plan."""
    ok = [r for r in runs if r["status"] != "failed"]

    def stats(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
        keys = [k for k in ("pv_share", "import_kwh", "peak_kw", "par", "cost") if rows]
        return {
            k: {
                "mean": round(sum(r[k] for r in rows) / len(rows), 4),
                "min": round(min(r[k] for r in rows), 4),
                "max": round(max(r[k] for r in rows), 4),
            }
            for k in keys
        }

    houses = sorted({h["house_id"] for r in ok for h in r["households"]})
    return {
        "runs_ok": len(ok),
        "runs_failed": len(runs) - len(ok),
        "neighbourhood": stats([r["neighbourhood"] for r in ok]),
        "households": {
            h: stats([x for r in ok for x in r["households"] if x["house_id"] == h]) for h in houses
        },
    }


def simulate(request: SimulationRequest, settings: Settings) -> dict[str, Any]:
    """Run the scenario `runs` times (blocking: call it off the event loop)."""
    base = build_problem(request.scenario, settings.tariff, settings)
    runs = []
    for r in range(request.runs):
        seed = request.seed + r
        problem = vary(
            base, random.Random(seed), request.pv_variation_pct / 100, request.window_jitter_steps
        )
        runs.append({"run": r + 1, "seed": seed, **run_once(problem, request.algorithm, settings)})
    return {
        "scenario": request.scenario.name,
        "algorithm": request.algorithm,
        "runs": runs,
        "summary": _summary(runs),
    }


ALGORITHMS: dict[Algorithm, Callable[[Problem, Settings], Schedule]] = {
    "milp": lambda p, s: schedule_milp(p, s.solver_time_limit_s, s.solver_gap),
    "greedy": lambda p, _s: schedule_greedy(p),
    "earliest": lambda p, _s: schedule_earliest(p),
}


def _safe_relative(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise ConfigError(f"profile path {name!r} must be relative, without '..'", ("profiles",))
    return path


def import_scenario(request: ImportRequest) -> Scenario:
    """A scenario from CoSSMic-style files (ConfigError naming the file and line, as on start-up).

    Devices get the profile of their first job; PV predictions (cumulative Wh from the start)
    become hourly kW.
    """
    with tempfile.TemporaryDirectory(prefix="planner-import-") as tmp:
        folder = Path(tmp)
        (folder / "neighbourhood.xml").write_text(request.neighbourhood_xml)
        hood = load_neighbourhood(folder / "neighbourhood.xml")
        jobs = []
        if request.jobs_text:
            for name, text in request.profiles.items():
                target = folder / _safe_relative(name)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(text)
            jobs_file = folder / f"jobs.{request.jobs_format}"
            jobs_file.write_text(request.jobs_text)
            jobs = load_jobs(jobs_file, step_s=900, neighbourhood=hood)
        pv: dict[str, list[float]] = {}
        for house_id, text in request.pv.items():
            (folder / f"pv-{len(pv)}.csv").write_text(text)
            pv[house_id] = load_profile(folder / f"pv-{len(pv)}.csv", SERIES_STEP_S)
    unknown = sorted(set(pv) - {h.house_id for h in hood.houses})
    if unknown:
        raise ConfigError(f"PV prediction for unknown house(s) {unknown}", ("pv",))
    start = request.start or _day_start(min((j.earliest_start for j in jobs), default=None))
    first_profile: dict[tuple[str, str], list[float]] = {}
    for job in jobs:
        first_profile.setdefault((job.house_id, job.device_id), job.profile_kw)
    houses = [
        PlannerHouse(
            house_id=h.house_id,
            connection_limit_kw=h.connection_limit_kw,
            pv_kw=[round(v, 4) for v in pv.get(h.house_id, [])],
            devices=[
                PlannerDevice(
                    device_id=d,
                    type=kind,
                    profile_kw=[round(v, 4) for v in first_profile.get((h.house_id, d), [0.0])],
                )
                for d, kind in h.devices.items()
            ],
        )
        for h in hood.houses
    ]
    return Scenario(
        name=hood.neighbourhood_id,
        start=start,
        hours=request.hours,
        neighbourhood_limit_kw=hood.limit_kw,
        houses=houses,
        jobs=[
            PlannerJob(
                job_id=j.job_id,
                house_id=j.house_id,
                device_id=j.device_id,
                earliest_start=j.earliest_start,
                latest_start=j.latest_start,
                profile_kw=[round(v, 4) for v in j.profile_kw],
                profile_step_s=j.step_s,
            )
            for j in jobs
        ],
    )


def _day_start(when: datetime | None) -> datetime:
    """Midnight UTC of the day holding `when` (ConfigError when there is no job to date it)."""
    if when is None:
        raise ConfigError("no jobs to date the scenario: give its start", ("start",))
    return when.replace(hour=0, minute=0, second=0, microsecond=0)


def planner_router(service: Service[Settings, Any]) -> APIRouter:
    """The planner endpoints (read the service's current settings at each call)."""
    router = APIRouter(prefix="/planner", tags=["planner"])

    @router.post("/check", response_model=Checked, responses=errors(422))
    def check(scenario: Scenario) -> dict[str, Any]:
        """Check a scenario: 200 with its size, or 422 naming each invalid field."""
        _check(scenario)
        return {
            "ok": True,
            "houses": len(scenario.houses),
            "jobs": len(scenario.jobs),
            "steps": scenario.n_steps,
        }

    @router.post("/simulate", response_model=Simulation, responses=errors(422))
    async def post_simulate(request: SimulationRequest) -> dict[str, Any]:
        """Place the scenario's jobs `runs` times with the chosen algorithm (seeded variation)."""
        _check(request.scenario, ("scenario",))
        return await asyncio.to_thread(simulate, request, service.settings)

    @router.post("/import", response_model=Scenario, responses=errors(422))
    def post_import(request: ImportRequest) -> dict[str, Any]:
        """A scenario from CoSSMic-style files; 422 naming the file and line of a problem."""
        try:
            scenario = import_scenario(request)
        except ConfigError as err:
            field = err.fields[0] if err.fields else _field_of(str(err))
            raise HTTPException(status_code=422, detail=[_error([field], str(err))]) from err
        return scenario.model_dump(mode="json")

    return router


def _field_of(message: str) -> str:
    """Which uploaded file an import error is about (by the file name it starts with)."""
    head = message.split(":", 1)[0]
    if head.endswith("neighbourhood.xml"):
        return "neighbourhood_xml"
    if PurePosixPath(head).name.startswith("jobs."):
        return "jobs_text"
    if PurePosixPath(head).name.startswith("pv-"):
        return "pv"
    return "profiles"


__all__ = [
    "ImportRequest",
    "PlannerDevice",
    "PlannerHouse",
    "PlannerJob",
    "Scenario",
    "SimulationRequest",
    "build_problem",
    "import_scenario",
    "planner_router",
    "scenario_errors",
    "simulate",
    "vary",
]
