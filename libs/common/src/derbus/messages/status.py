"""Status messages: service status (with last will), device status, dead letters, KPIs."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from derbus.messages.base import Message, UtcDatetime

ServiceState = Literal["online", "degraded", "offline"]


class ServiceStatus(Message):
    """A service's state, retained; the MQTT last will publishes `offline`."""

    service: str
    state: ServiceState
    reason: str | None = None
    version: str | None = None
    details: dict[str, float | int | str | None] = Field(default_factory=dict)


class DeviceStatus(Message):
    """A field device as seen by its gateway: ok, or stale after repeated failures."""

    device_id: str
    state: Literal["ok", "stale"]
    consecutive_failures: int = Field(ge=0)
    last_ok: UtcDatetime | None = None
    reason: str | None = None


class DeadLetter(Message):
    """A payload that could not be decoded or validated, with the reason."""

    original_topic: str
    payload: str = Field(description="the raw payload, as text (invalid UTF-8 replaced)")
    error: str
    service: str


class KpiReport(Message):
    """Named figures a controller reports (efficiency, time on limit, …), units in names."""

    name: str = Field(description="what these KPIs describe, e.g. net_balance_hourly")
    values: dict[str, float]
    period_start: UtcDatetime | None = None
    period_end: UtcDatetime | None = None
