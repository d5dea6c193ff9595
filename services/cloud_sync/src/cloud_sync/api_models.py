"""The REST bodies of cloud_sync (what its OpenAPI shows)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from cloud_sync.backlog import FillState, HealthState


class Backlog(BaseModel):
    """The outbox backlog and cloud_sync's health (`GET /backlog`)."""

    pending_rows: int
    capacity_rows: int
    oldest_age_s: float | None = Field(description="age of the oldest pending reading, s")
    rows_in_total: int
    rows_out_total: int
    rows_in_per_s: float
    rows_out_per_s: float
    last_success: str | None = Field(description="last forwarding pass that stored rows, UTC")
    last_error: str | None
    last_error_at: str | None
    fill: FillState
    refused_messages_total: int
    reasons: dict[str, str] = Field(description="why degraded, per part (empty: online)")
    state: HealthState
    fill_pct: float
    target: str = Field(description="the cloud store (password redacted)")


class Drained(BaseModel):
    """What one forwarding pass did."""

    rows: int
    batches: int
    error: str | None
    pending_rows: int
