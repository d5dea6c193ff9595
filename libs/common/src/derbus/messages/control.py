"""The setpoint contract: command (value, unit, ttl_s, priority, id), its REST body and its ack."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

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

SetpointTarget = Literal[
    "battery_p_kw", "pv_limit_kw", "pv_limit_pct", "load_on", "load_p_kw", "ev_limit_kw"
]  # fmt: skip
"""What a setpoint sets. `battery_p_kw`: + charge / - discharge; `load_on`: 1 on, 0 off;
`ev_limit_kw`: the most an EV charger connector may draw (a cap, >= 0)."""

SETPOINT_TARGETS: tuple[SetpointTarget, ...] = get_args(SetpointTarget)
"""Every setpoint target, in declaration order."""

SETPOINT_UNITS: dict[str, str] = {
    "battery_p_kw": "kW",
    "pv_limit_kw": "kW",
    "pv_limit_pct": "%",
    "load_on": "bool",
    "load_p_kw": "kW",
    "ev_limit_kw": "kW",
}
"""The unit each target's `value` must be given in."""

SETPOINT_ID_MAX_LENGTH = 100
"""Longest accepted `setpoint_id`, characters."""


def new_setpoint_id() -> str:
    """A fresh unique setpoint id."""
    return uuid.uuid4().hex


def _check_unit(unit: str, target: object) -> str:
    units = sorted(set(SETPOINT_UNITS.values()))
    if unit not in units:
        raise ValueError(f"unknown unit {unit!r}; expected one of {units}")
    expected = SETPOINT_UNITS.get(target) if isinstance(target, str) else None
    if expected is not None and unit != expected:
        raise ValueError(f"unit {unit!r} does not match target {target} ({expected})")
    return unit


class SetpointCommand(Message):
    """A request to a device (topic `control.set`); receivers apply the highest-priority one.

    A payload on a `…/control/<device>/set` topic that fails this model (wrong unit, `ttl_s`
    outside (0, 86400], a wrong type, a missing field, not JSON) is dead-lettered and counted by
    the receiver; when it carries a usable `setpoint_id` it is also answered with a `rejected`
    ack naming the field (`SetpointAck.field`) and the reason.
    """

    setpoint_id: str = Field(
        default_factory=new_setpoint_id, min_length=1, max_length=SETPOINT_ID_MAX_LENGTH
    )
    target: SetpointTarget = Field(description="the quantity being set")
    value: float = Field(allow_inf_nan=False, description="the requested value, in `unit`")
    unit: str = Field(description="unit of `value`; must be the target's unit (kW, %, bool)")
    ttl_s: float = Field(
        gt=0, le=86_400, description="seconds after `ts` at which the device reverts, s"
    )
    priority: Priority = Field(default=Priority.MANUAL)

    @field_validator("unit")
    @classmethod
    def _target_unit(cls, unit: str, info: ValidationInfo) -> str:
        # `target` is declared before `unit`, so it is validated first (absent when invalid)
        return _check_unit(unit, info.data.get("target"))

    @property
    def expires_at(self) -> datetime:
        """When the setpoint stops being live."""
        return self.ts + timedelta(seconds=self.ttl_s)


class SetpointRequest(BaseModel):
    """A setpoint over REST (`POST …/devices/{device_id}/setpoints`): the command without `ts`.

    The receiver stamps `ts` with its own clock and `source` with `api`; `unit` defaults to the
    target's and `setpoint_id` to a fresh id. A body that fails this model is answered 422 with
    the field (`loc`) and the reason (`msg`) before any device sees it.
    """

    # the schema says which unit goes with which target (the validator below checks it)
    model_config = ConfigDict(json_schema_extra={"allOf": [
        {"if": {"properties": {"target": {"const": target}}, "required": ["target"]},
         "then": {"properties": {"unit": {"enum": [unit, None]}}}}
        for target, unit in SETPOINT_UNITS.items()
    ]})  # fmt: skip

    target: SetpointTarget
    value: float = Field(
        allow_inf_nan=False, description="the requested value, in the target's unit"
    )
    ttl_s: float = Field(gt=0, le=86_400, description="seconds until the device reverts, s")
    priority: Priority = Priority.MANUAL
    unit: str | None = Field(
        default=None, description="default: the target's unit",
        json_schema_extra={"enum": [*sorted(set(SETPOINT_UNITS.values())), None]},
    )  # fmt: skip
    setpoint_id: str | None = Field(default=None, min_length=1, max_length=SETPOINT_ID_MAX_LENGTH)

    @field_validator("unit")
    @classmethod
    def _target_unit(cls, unit: str | None, info: ValidationInfo) -> str | None:
        return None if unit is None else _check_unit(unit, info.data.get("target"))

    def command(self, now: datetime, source: str = "api") -> SetpointCommand:
        """The bus command for this request, issued `now` (UTC)."""
        return SetpointCommand(
            ts=now, source=source, target=self.target, value=self.value,
            unit=self.unit or SETPOINT_UNITS[self.target], ttl_s=self.ttl_s,
            priority=self.priority, setpoint_id=self.setpoint_id or new_setpoint_id(),
        )  # fmt: skip


AckStatus = Literal["accepted", "queued", "rejected", "superseded", "expired"]
"""What a receiver says about a setpoint.

* `accepted` — in force now (`applied_value` is its value); also sent when a `queued` setpoint
  comes into force because the one holding the device ended.
* `queued` — valid and kept, but a live setpoint of higher priority holds the target: the ack
  names it (`active_setpoint_id`, `active_priority`, `applied_value`). It applies when that one
  ends, unless its own life ends first.
* `rejected` — refused, never applied: `reason` says why and, for a payload that failed the
  schema, `field` names the field. Final.
* `superseded` — ended by another setpoint for the same target: a newer one of the same or higher
  priority (its id is `active_setpoint_id`). Final; the device does not go back to it.
* `expired` — its `ttl_s` ran out (or the receiver withdrew it, `reason` says so). Final.

Every valid command gets exactly one of `accepted` / `queued` / `rejected` first, and, unless
rejected, exactly one final `superseded` / `expired` later.
"""

ACK_STATUSES: tuple[AckStatus, ...] = get_args(AckStatus)
"""Every ack status."""


class SetpointAck(Message):
    """The receiver's answer to a setpoint (topic `control.ack`, on the command's device).

    See `AckStatus` for the life of a setpoint. `applied_value`, `active_setpoint_id` and
    `active_priority` describe the setpoint in force for `target` right after the event (all
    None when the device runs on its own behaviour).
    """

    setpoint_id: str
    status: AckStatus
    reason: str | None = Field(default=None, description="why rejected / queued / ended")
    field: str | None = Field(
        default=None, description="the command field that failed validation (`rejected`)"
    )
    applied_value: float | None = Field(default=None, description="what is applied now")
    active_setpoint_id: str | None = Field(
        default=None, description="the setpoint in force for the target now (the winner)"
    )
    active_priority: Priority | None = Field(
        default=None, description="the priority of the setpoint in force"
    )
    target: SetpointTarget | None = None
