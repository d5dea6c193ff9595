"""Deferrable job messages: a job request and the published plan."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from derbus.messages.base import Message, UtcDatetime


class JobRequest(Message):
    """A flexible appliance run: start between `earliest_start` and `latest_start`.

    The profile is power per step, kW (>= 0, consumption), `step_s` seconds each.
    """

    job_id: str = Field(min_length=1, max_length=100)
    house_id: str = Field(min_length=1)
    device_id: str = Field(min_length=1)
    earliest_start: UtcDatetime
    latest_start: UtcDatetime
    profile_kw: list[float] = Field(min_length=1)
    step_s: int = Field(default=900, gt=0)

    @model_validator(mode="after")
    def _check(self) -> JobRequest:
        if self.latest_start < self.earliest_start:
            raise ValueError("latest_start is before earliest_start")
        if any(p < 0 for p in self.profile_kw):
            raise ValueError("profile_kw values must be >= 0 (consumption)")
        return self

    @property
    def energy_kwh(self) -> float:
        """Energy of one run, kWh."""
        return sum(self.profile_kw) * self.step_s / 3600.0


class PlannedJob(BaseModel):
    """One job's place in the plan."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    job_id: str
    house_id: str
    device_id: str
    start: UtcDatetime
    end: UtcDatetime
    pv_kwh: float = Field(ge=0)
    grid_kwh: float = Field(ge=0)


class JobPlan(Message):
    """The whole plan of deferrable jobs for a house or neighbourhood (retained)."""

    plan_id: str
    jobs: list[PlannedJob]
    horizon_start: UtcDatetime
    step_s: int
    objective: float | None = None
    solve_status: str
    solve_time_s: float | None = None
