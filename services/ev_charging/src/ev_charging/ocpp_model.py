"""OCPP payloads as plain data, both versions: meter samples in, charging profiles out (pure)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from derbus.messages import OCPP_CONNECTOR_STATUSES, ConnectorStatus, OcppVersion, format_utc

PROFILE_ID_BASE = 7000
"""Our TxProfile ids are `PROFILE_ID_BASE + connector` (one per connector, so a new limit
replaces the previous one and a ClearChargingProfile names it)."""
PROFILE_STACK_LEVEL = 1


_POWER_UNITS = {"W": 1e-3, "kW": 1.0}
_ENERGY_UNITS = {"Wh": 1e-3, "kWh": 1.0}


@dataclass(frozen=True)
class MeterSample:
    """What one MeterValues / TransactionEvent carried (None = not in the message).

    Attributes:
        p_kw: active power imported by the vehicle, kW (+ charging).
        e_kwh: energy register (Energy.Active.Import.Register), kWh.
        soc_pct: vehicle state of charge, %.
        ts: the sample's own timestamp, if given.
    """

    p_kw: float | None = None
    e_kwh: float | None = None
    soc_pct: float | None = None
    ts: str | None = None


def connector_status(value: str) -> ConnectorStatus:
    """An OCPP status string as ours (an unknown one counts as `Faulted`)."""
    return value if value in OCPP_CONNECTOR_STATUSES else "Faulted"  # type: ignore[return-value]


def _scaled(
    value: float,
    unit: str | None,
    multiplier: int,
    default_unit: str,
    units: dict[str, float],
    before: float | None,
) -> float | None:
    """`value` in kW / kWh; `before` when its unit is not one of `units` (the value is skipped)."""
    factor = units.get(unit or default_unit)
    if factor is None:
        return before
    return value * factor * 10.0**multiplier


def parse_meter_values(meter_value: list[dict[str, Any]]) -> MeterSample:
    """The last power, energy register and SoC in a snake_case `meter_value` list.

    Works for 1.6 (`value` a string, `unit`) and 2.0.1 (`value` a number,
    `unit_of_measure.unit` and `.multiplier`). The measurand defaults to
    Energy.Active.Import.Register; W/Wh are converted to kW/kWh. A value that is not a number, a
    phase value, or an unknown unit is skipped.
    """
    p_kw = e_kwh = soc = None
    ts: str | None = None
    for mv in meter_value:
        ts = mv.get("timestamp", ts)
        for sv in mv.get("sampled_value", []):
            if sv.get("phase"):
                continue
            try:
                value = float(sv["value"])
            except (KeyError, TypeError, ValueError):
                continue
            measurand = sv.get("measurand", "Energy.Active.Import.Register")
            uom = sv.get("unit_of_measure") or {}
            unit = sv.get("unit", uom.get("unit"))
            multiplier = int(uom.get("multiplier", 0))
            if measurand == "Power.Active.Import":
                p_kw = _scaled(value, unit, multiplier, "W", _POWER_UNITS, p_kw)
            elif measurand == "Energy.Active.Import.Register":
                e_kwh = _scaled(value, unit, multiplier, "Wh", _ENERGY_UNITS, e_kwh)
            elif measurand == "SoC":
                soc = min(100.0, max(0.0, value))
    return MeterSample(p_kw=p_kw, e_kwh=e_kwh, soc_pct=soc, ts=ts)


def profile_id(connector_id: int) -> int:
    """The id of our TxProfile on a connector."""
    return PROFILE_ID_BASE + connector_id


def tx_profile(
    version: OcppVersion,
    connector_id: int,
    transaction_id: str,
    limit_kw: float,
    now: datetime,
    duration_s: float | None,
) -> dict[str, Any]:
    """The snake_case SetChargingProfile request limiting a running transaction to `limit_kw`.

    An Absolute TxProfile starting `now` in W; with `duration_s` the station itself reverts
    when it lapses (the TTL of the setpoint), even if the central system is gone by then.

    Args:
        version: OCPP version of the station.
        connector_id: 1.6 connectorId / 2.0.1 evseId.
        transaction_id: the running transaction (1.6: our integer id as text).
        limit_kw: the power cap, kW, >= 0.
        now: start of the schedule, UTC.
        duration_s: the schedule's length, s (None: open-ended).
    """
    limit_w = round(max(0.0, limit_kw) * 1000.0)
    schedule: dict[str, Any] = {
        "start_schedule": format_utc(now.replace(microsecond=0)),
        "charging_rate_unit": "W",
        "charging_schedule_period": [{"start_period": 0, "limit": limit_w}],
    }
    if duration_s is not None:
        # rounded up, counted from the whole second the schedule starts at
        schedule["duration"] = int(duration_s + (now.microsecond / 1e6)) + 1
    if version == "1.6":
        return {
            "connector_id": connector_id,
            "cs_charging_profiles": {
                "charging_profile_id": profile_id(connector_id),
                "transaction_id": int(transaction_id),
                "stack_level": PROFILE_STACK_LEVEL,
                "charging_profile_purpose": "TxProfile",
                "charging_profile_kind": "Absolute",
                "charging_schedule": schedule,
            },
        }
    return {
        "evse_id": connector_id,
        "charging_profile": {
            "id": profile_id(connector_id),
            "transaction_id": transaction_id,
            "stack_level": PROFILE_STACK_LEVEL,
            "charging_profile_purpose": "TxProfile",
            "charging_profile_kind": "Absolute",
            "charging_schedule": [{"id": profile_id(connector_id), **schedule}],
        },
    }


def clear_profile(version: OcppVersion, connector_id: int) -> dict[str, Any]:
    """The snake_case ClearChargingProfile request removing our TxProfile of a connector."""
    if version == "1.6":
        return {"id": profile_id(connector_id), "connector_id": connector_id}
    return {"charging_profile_id": profile_id(connector_id)}
