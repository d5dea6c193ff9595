"""The job book: submitted deferrable jobs, their plan and life cycle (pure, JSON-persistable).

Life cycle: `pending` (submitted, not yet placed) → `planned` (has a start) → `running` (start
command sent) → `done` (its profile has ended); or `cancelled`, `unschedulable` (no start fits
its window and the limits), `missed` (its latest start passed while it could not be started).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from derbus.messages import JobRequest

JobStatus = Literal["pending", "planned", "running", "done", "cancelled", "unschedulable", "missed"]
OPEN: frozenset[str] = frozenset({"pending", "planned", "unschedulable"})
"""Statuses the scheduler (re)places."""


@dataclass
class JobEntry:
    """A job with its current plan."""

    request: JobRequest
    status: JobStatus = "pending"
    planned_start: datetime | None = None
    planned_end: datetime | None = None
    pv_kwh: float | None = None
    grid_kwh: float | None = None
    started_at: datetime | None = None
    reason: str | None = None

    @property
    def duration(self) -> timedelta:
        """Length of the job's profile."""
        return timedelta(seconds=len(self.request.profile_kw) * self.request.step_s)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly view (also the REST representation)."""

        def iso(value: datetime | None) -> str | None:
            return value.isoformat().replace("+00:00", "Z") if value else None

        return {
            "job_id": self.request.job_id,
            "house_id": self.request.house_id,
            "device_id": self.request.device_id,
            "earliest_start": iso(self.request.earliest_start),
            "latest_start": iso(self.request.latest_start),
            "energy_kwh": round(self.request.energy_kwh, 6),
            "status": self.status,
            "planned_start": iso(self.planned_start),
            "planned_end": iso(self.planned_end),
            "pv_kwh": self.pv_kwh,
            "grid_kwh": self.grid_kwh,
            "started_at": iso(self.started_at),
            "reason": self.reason,
            "request": self.request.model_dump(mode="json"),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobEntry:
        """Inverse of `to_dict`."""

        def parse(value: str | None) -> datetime | None:
            return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None

        return cls(
            request=JobRequest.model_validate(data["request"]),
            status=data["status"],
            planned_start=parse(data.get("planned_start")),
            planned_end=parse(data.get("planned_end")),
            pv_kwh=data.get("pv_kwh"),
            grid_kwh=data.get("grid_kwh"),
            started_at=parse(data.get("started_at")),
            reason=data.get("reason"),
        )


class DuplicateJobError(ValueError):
    """A job id that is already booked and no longer open."""


@dataclass
class JobBook:
    """All jobs by id."""

    entries: dict[str, JobEntry]

    @classmethod
    def empty(cls) -> JobBook:
        """A book without jobs."""
        return cls({})

    def add(self, request: JobRequest) -> JobEntry:
        """Book a job; an open job with the same id is replaced, a started one is refused."""
        old = self.entries.get(request.job_id)
        if old is not None and old.status not in OPEN | {"cancelled"}:
            raise DuplicateJobError(f"job {request.job_id} already {old.status}")
        entry = JobEntry(request)
        self.entries[request.job_id] = entry
        return entry

    def cancel(self, job_id: str) -> JobEntry:
        """Cancel an open job (KeyError when unknown; ValueError when already started)."""
        entry = self.entries[job_id]
        if entry.status not in OPEN:
            raise ValueError(f"job {job_id} is {entry.status} and cannot be cancelled")
        entry.status = "cancelled"
        return entry

    def open_jobs(self) -> list[JobEntry]:
        """Jobs to place in the next plan."""
        return [e for e in self.entries.values() if e.status in OPEN]

    def running(self, now: datetime) -> list[JobEntry]:
        """Jobs started and still running at `now`."""
        return [
            e
            for e in self.entries.values()
            if e.status == "running"
            and e.started_at is not None
            and e.started_at + e.duration > now
        ]

    def due(self, now: datetime) -> list[JobEntry]:
        """Planned jobs whose start time has come."""
        return [
            e
            for e in self.entries.values()
            if e.status == "planned" and e.planned_start is not None and e.planned_start <= now
        ]

    def mark_started(self, entry: JobEntry, now: datetime) -> None:
        """The start command was sent."""
        entry.status = "running"
        entry.started_at = now
        entry.planned_end = now + entry.duration

    def advance(self, now: datetime, grace: timedelta) -> list[JobEntry]:
        """Finish ended jobs and mark open ones whose latest start passed (+ grace) as missed."""
        changed = []
        for e in self.entries.values():
            if e.status == "running" and e.started_at and e.started_at + e.duration <= now:
                e.status = "done"
                changed.append(e)
            elif e.status in OPEN and e.request.latest_start + grace < now:
                e.status = "missed"
                e.reason = "latest start passed before the job could start"
                changed.append(e)
        return changed

    def to_list(self) -> list[dict[str, Any]]:
        """All jobs, JSON-friendly."""
        return [e.to_dict() for e in self.entries.values()]

    @classmethod
    def from_list(cls, data: list[dict[str, Any]]) -> JobBook:
        """Inverse of `to_list`."""
        return cls({d["job_id"]: JobEntry.from_dict(d) for d in data})
