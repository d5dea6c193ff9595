"""Telemetry messages: PCC meter, PV, battery, load and price readings (load-referenced signs)."""

from __future__ import annotations

import math
from typing import Literal, Self

from pydantic import Field, field_validator, model_validator

from derbus.messages.base import Message


def _finite(value: float | None) -> float | None:
    if value is not None and not math.isfinite(value):
        raise ValueError("must be a finite number (NaN and infinity are rejected)")
    return value


class Telemetry(Message):
    """A reading from one device; all floats must be finite.

    `seq` numbers the readings of one stream (site, device): +1 per reading, from 0 when the
    publisher starts. A consumer that sees it jump has missed readings and may ask the edge to
    send them again (`control.replay`); None (publishers that do not number) is never a gap.
    """

    seq: int | None = Field(
        default=None, ge=0, description="per-device sequence number of the stream (+1 a reading)"
    )

    @field_validator("*", mode="after")
    @classmethod
    def _reject_non_finite(cls, value: object) -> object:
        if isinstance(value, float):
            _finite(value)
        return value


class MeterReading(Telemetry):
    """Point of common coupling (or sub-) meter. `p_kw` > 0 imports from the grid, < 0 exports."""

    p_kw: float = Field(description="active power, kW, + import / - export")
    q_kvar: float = Field(default=0.0, description="reactive power, kvar, + drawn (inductive)")
    v_l1_v: float | None = Field(default=None, ge=0, description="phase 1 voltage, V")
    v_l2_v: float | None = Field(default=None, ge=0, description="phase 2 voltage, V")
    v_l3_v: float | None = Field(default=None, ge=0, description="phase 3 voltage, V")
    f_hz: float | None = Field(default=None, ge=0, description="frequency, Hz")
    e_import_kwh: float | None = Field(default=None, ge=0, description="import energy counter")
    e_export_kwh: float | None = Field(default=None, ge=0, description="export energy counter")


class PvTelemetry(Telemetry):
    """PV inverter. Generation is reported positive; it enters balances as negative power."""

    generation_kw: float = Field(ge=0, description="AC output, kW, >= 0")
    available_kw: float | None = Field(
        default=None, ge=0, description="what the array could produce without curtailment, kW"
    )
    limit_kw: float | None = Field(default=None, ge=0, description="active curtailment limit")
    e_total_kwh: float | None = Field(default=None, ge=0, description="lifetime energy counter")
    irradiance_w_m2: float | None = Field(default=None, ge=0, description="plane-of-array, W/m²")
    temp_c: float | None = Field(default=None, description="module temperature, °C")


class BatteryTelemetry(Telemetry):
    """Battery. `p_kw` > 0 charges (drawn from the site), < 0 discharges."""

    p_kw: float = Field(description="AC power, kW, + charging / - discharging")
    soc_pct: float = Field(ge=0, le=100, description="state of charge, %")
    capacity_kwh: float | None = Field(default=None, gt=0, description="usable capacity now")
    soh_pct: float | None = Field(default=None, ge=0, le=100, description="state of health, %")
    max_charge_kw: float | None = Field(default=None, ge=0, description="charge limit now")
    max_discharge_kw: float | None = Field(default=None, ge=0, description="discharge limit now")
    voltage_v: float | None = Field(default=None, ge=0, description="DC voltage, V")
    temp_c: float | None = Field(default=None, description="cell temperature, °C")
    cycles: float | None = Field(default=None, ge=0, description="equivalent full cycles")


LoadKind = Literal["total", "base", "hvac", "appliance", "lighting", "cooking", "ev", "switchable"]


class LoadTelemetry(Telemetry):
    """A consuming device or the site's total load: `p_kw` >= 0 consumed."""

    p_kw: float = Field(ge=0, description="power consumed, kW")
    kind: LoadKind = Field(default="total", description="what the load is")
    on: bool | None = Field(default=None, description="relay state for switchable loads")
    e_total_kwh: float | None = Field(default=None, ge=0, description="energy counter")


TouPeriod = Literal["off_peak", "shoulder", "peak"]


class PriceTelemetry(Telemetry):
    """Grid price for the site, currency per kWh (the site's currency)."""

    price_per_kwh: float = Field(description="import energy price")
    feed_in_per_kwh: float = Field(default=0.0, description="export remuneration")
    tou_period: TouPeriod | None = Field(default=None, description="time-of-use period")
    demand_charge_per_kw: float | None = Field(default=None, ge=0, description="per billed kW")
    carbon_g_per_kwh: float | None = Field(default=None, ge=0, description="grid carbon intensity")


REPLAY_MAX_READINGS = 100_000
"""The most readings one replay request may ask for."""


class ReplayRequest(Message):
    """Asks the edge to publish a stream's readings `from_seq`..`to_seq` again (topic
    `control.replay`, on the stream's site and device).

    The edge answers from its bounded buffer of sent readings, on the stream's own topic with
    the original payloads (same `ts`, same `seq`); what it no longer holds it cannot send.
    """

    from_seq: int = Field(ge=0, description="first missing sequence number")
    to_seq: int = Field(ge=0, description="last missing sequence number (inclusive)")

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.to_seq < self.from_seq:
            raise ValueError("to_seq must not be below from_seq")
        if self.to_seq - self.from_seq >= REPLAY_MAX_READINGS:
            raise ValueError(f"at most {REPLAY_MAX_READINGS} readings per request")
        return self
