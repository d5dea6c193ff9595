"""The REST bodies of meter_gateway (what its OpenAPI shows)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ControlView(BaseModel):
    """A writable target of a device: its range, the setpoint in force and what was written."""

    min: float
    max: float
    active: float | None = Field(description="the arbiter's value now (None: no setpoint)")
    applied: float | None = Field(description="last value written to the device")


class DeviceView(BaseModel):
    """A device's state, SunSpec models, controls and last reading."""

    id: str
    site_id: str
    kind: str
    state: str = Field(description="ok, stale or unknown")
    consecutive_failures: int
    last_ok: str | None = Field(description="last good poll, ISO 8601")
    last_error: str | None
    sunspec_models: list[int]
    read_requests_per_poll: int
    controls: dict[str, ControlView] = Field(description="by setpoint target")
    last_reading: dict[str, Any] | None = Field(description="the last telemetry message sent")
