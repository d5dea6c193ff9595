"""The REST bodies of load_manager (what its OpenAPI shows)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from derbus.messages import JobRequest
from load_manager.jobs import JobStatus


class LoadStateView(BaseModel):
    """A controlled load: on or off, since when."""

    on: bool
    since: str | None


class Balance(BaseModel):
    """The open settlement period's balance, the loads' states and today's KPIs."""

    rule: str
    period_start: str | None
    period_end: str | None
    balance_wh: float
    loads: dict[str, LoadStateView]
    last_period: dict[str, Any] | None = Field(description="the last closed period's figures")
    today: dict[str, float] | None


class DayKpisView(BaseModel):
    """A day's KPIs: energy figures, switchings and on-times per load."""

    day: str
    produced_wh: float
    exported_wh: float
    imported_wh: float
    periods: int
    switchings: dict[str, int]
    on_s: dict[str, float]
    values: dict[str, float] = Field(description="flat values (as on the KPI topic)")


class Kpis(BaseModel):
    """Today's KPIs and the daily summaries of past days."""

    today: DayKpisView | None
    days: list[DayKpisView]


class JobView(BaseModel):
    """A job with its status and plan."""

    job_id: str
    house_id: str
    device_id: str
    earliest_start: str | None
    latest_start: str | None
    energy_kwh: float
    status: JobStatus
    planned_start: str | None
    planned_end: str | None
    pv_kwh: float | None
    grid_kwh: float | None
    started_at: str | None
    reason: str | None
    request: JobRequest


class Checked(BaseModel):
    """A valid scenario's size."""

    ok: bool
    houses: int
    jobs: int
    steps: int


class Simulation(BaseModel):
    """The scenario placed `runs` times: per run the households, jobs and figures; a summary."""

    scenario: str
    algorithm: str
    runs: list[dict[str, Any]]
    summary: dict[str, Any]
