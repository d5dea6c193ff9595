"""The setpoint contract: command (value, unit, ttl_s, priority, id) and its acknowledgement."""

from __future__ import annotations

import math
import uuid
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Literal

from pydantic import Field, field_validator

from derbus.messages.base import Message


class Priority(StrEnum):
    """Who asks. Higher rank wins: safety > grid_operator > site_optimiser > manual."""

    MANUAL = "manual"
    SITE_OPTIMISER = "site_optimiser"
    GRID_OPERATOR = "grid_operator"
    SAFETY = "safety"

    @property
    def rank(self) -> int:
        """Ordering rank, higher wins."""
        return _RANK[self]


_RANK = {
    Priority.MANUAL: 0,
    Priority.SITE_OPTIMISER: 1,
    Priority.GRID_OPERATOR: 2,
    Priority.SAFETY: 3,
}

SetpointTarget = Literal["battery_p_kw", "pv_limit_kw", "pv_limit_pct", "load_on", "load_p_kw"]
"""What a setpoint sets. `battery_p_kw`: + charge / - discharge; `load_on`: 1 on, 0 off."""

SETPOINT_UNITS: dict[str, str] = {
    "battery_p_kw": "kW",
    "pv_limit_kw": "kW",
    "pv_limit_pct": "%",
    "load_on": "bool",
    "load_p_kw": "kW",
}


def new_setpoint_id() -> str:
    """A fresh unique setpoint id."""
    return uuid.uuid4().hex


class SetpointCommand(Message):
    """A request to a device. Receivers apply the highest-priority live setpoint."""

    setpoint_id: str = Field(default_factory=new_setpoint_id, min_length=1, max_length=100)
    target: SetpointTarget = Field(description="the quantity being set")
    value: float = Field(description="the requested value, in `unit`")
    unit: str = Field(description="unit of `value`; must match the target's unit")
    ttl_s: float = Field(gt=0, le=86_400, description="after this the device reverts to safe")
    priority: Priority = Field(default=Priority.MANUAL)

    @field_validator("value")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("setpoint value must be finite")
        return value

    @field_validator("unit")
    @classmethod
    def _known_unit(cls, unit: str) -> str:
        if unit not in set(SETPOINT_UNITS.values()):
            raise ValueError(
                f"unknown unit {unit!r}; expected one of {sorted(set(SETPOINT_UNITS.values()))}"
            )
        return unit

    def model_post_init(self, _context: object) -> None:
        expected = SETPOINT_UNITS[self.target]
        if self.unit != expected:
            raise ValueError(f"unit {self.unit!r} does not match target {self.target} ({expected})")

    @property
    def expires_at(self) -> datetime:
        """When the setpoint stops being live."""
        return self.ts + timedelta(seconds=self.ttl_s)


AckStatus = Literal["accepted", "rejected", "expired", "superseded"]


class SetpointAck(Message):
    """The receiver's answer to a setpoint: accepted, rejected (with reason), expired, superseded."""

    setpoint_id: str
    status: AckStatus
    reason: str | None = Field(default=None, description="why rejected / superseded")
    applied_value: float | None = Field(default=None, description="what is applied now")
    target: SetpointTarget | None = None
