"""Bus messages as flat, typed metrics: names, values, kinds and units read from the field names.

derbus writes units into field names (`p_kw`, `soc_pct`, `e_import_kwh`), so a metric's
engineering unit is read off its name once, here, for both the Sparkplug properties and the
Home Assistant discovery. Signs are the bus's: load-referenced (+ import / charging /
consumption), PV generation positive.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel

from derbus.messages import KpiReport, Message, SetpointAck
from derbus.messages.control import SETPOINT_UNITS, SetpointTarget

MetricKind = Literal["double", "boolean", "string", "int"]
MetricValue = float | int | bool | str | None

ENVELOPE_FIELDS = frozenset({"ts", "source"})
"""Fields every message has; they are not metrics."""

_UNIT_SUFFIXES: tuple[tuple[str, str], ...] = (
    ("_g_per_kwh", "g/kWh"),
    ("_per_kwh", "{currency}/kWh"),
    ("_per_kw", "{currency}/kW"),
    ("_w_m2", "W/m²"),
    ("_kwh", "kWh"),
    ("_kvar", "kvar"),
    ("_kw", "kW"),
    ("_pct", "%"),
    ("_hz", "Hz"),
    ("_pu", "pu"),
    ("_ms", "ms"),
    ("_v", "V"),
    ("_c", "°C"),
    ("_s", "s"),
)
"""Name suffix → unit, longest first (`_kwh` before `_kw`, `_per_kwh` before `_kwh`)."""

SETPOINT_TARGETS_BY_TELEMETRY: dict[str, SetpointTarget] = {
    "telemetry.battery": "battery_p_kw",
    "telemetry.pv": "pv_limit_kw",
}
"""Which setpoint a device of a telemetry spec takes (a writable metric per such device)."""


def unit_of(name: str, currency: str = "EUR") -> str | None:
    """The engineering unit of a quantity named with a unit suffix, or None (`cycles`, `on`)."""
    for suffix, unit in _UNIT_SUFFIXES:
        if name.endswith(suffix):
            return unit.format(currency=currency)
    return None


@dataclass(frozen=True)
class MetricDef:
    """One metric: its flat name, value kind and unit.

    Attributes:
        name: `device/field` (telemetry), `kpi/controller/key`, `device/setpoint/…`.
        kind: the value kind (mapped to a Sparkplug datatype and an HA component).
        unit: engineering unit, or None.
        writable: a host may write it (a setpoint).
        field: the message field the value comes from (telemetry), else the last name part.
    """

    name: str
    kind: MetricKind
    unit: str | None
    writable: bool = False
    field: str = ""


def _kind_of(annotation: Any) -> MetricKind | None:
    """The metric kind of a pydantic field annotation (`float | None` → double), None if not flat."""
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        kinds = {_kind_of(a) for a in args if a is not type(None)}
        return kinds.pop() if len(kinds) == 1 else None
    if origin is Literal:
        return "string" if all(isinstance(a, str) for a in args) else None
    if annotation is bool:
        return "boolean"
    if annotation is float:
        return "double"
    if annotation is int:
        return "int"
    if annotation is str:
        return "string"
    return None


def telemetry_metrics(
    device_id: str, model: type[Message], currency: str = "EUR"
) -> list[MetricDef]:
    """Every flat field of a telemetry model as a metric of one device, in declaration order."""
    out = []
    for field, info in model.model_fields.items():
        if field in ENVELOPE_FIELDS:
            continue
        kind = _kind_of(info.annotation)
        if kind is None:
            continue
        out.append(MetricDef(f"{device_id}/{field}", kind, unit_of(field, currency), False, field))
    return out


def setpoint_metrics(device_id: str, target: SetpointTarget) -> list[MetricDef]:
    """The writable setpoint of a device and the metrics that show how it went (the last ack)."""
    base = f"{device_id}/setpoint"
    unit = SETPOINT_UNITS[target]
    return [
        MetricDef(f"{base}/{target}", "double", unit if unit != "bool" else None, True, target),
        MetricDef(f"{base}/status", "string", None, False, "status"),
        MetricDef(f"{base}/reason", "string", None, False, "reason"),
        MetricDef(
            f"{base}/applied_value",
            "double",
            unit if unit != "bool" else None,
            False,
            "applied_value",
        ),
        MetricDef(f"{base}/setpoint_id", "string", None, False, "setpoint_id"),
    ]


def kpi_metrics(controller: str, report: KpiReport, currency: str = "EUR") -> list[MetricDef]:
    """A controller's KPIs as metrics `kpi/<controller>/<key>` (doubles, unit from the key)."""
    return [
        MetricDef(f"kpi/{controller}/{key}", "double", unit_of(key, currency), False, key)
        for key in report.values
    ]


def values_of(message: BaseModel, defs: list[MetricDef]) -> dict[str, MetricValue]:
    """The current values of metrics read from a message's fields (by `MetricDef.field`)."""
    data = message.model_dump()
    return {d.name: data.get(d.field) for d in defs}


def ack_values(device_id: str, ack: SetpointAck) -> dict[str, MetricValue]:
    """What an acknowledgement of a bridge setpoint changes in the device's setpoint metrics."""
    base = f"{device_id}/setpoint"
    return {
        f"{base}/status": ack.status,
        f"{base}/reason": ack.reason,
        f"{base}/applied_value": ack.applied_value,
        f"{base}/setpoint_id": ack.setpoint_id,
    }
