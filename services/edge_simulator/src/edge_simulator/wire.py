"""Telemetry payloads straight from a step's arrays: one JSON template per message type and step.

The hot path of the service: 8 messages per site and step, 8,000 per second for 1,000 sites at
1 Hz. Building and serialising a pydantic model per message costs ~25 µs; here the JSON of each
message type is a `%`-template generated from the derbus model's field order (so the payload
has exactly the model's fields, `null` for the absent ones) with the step's constants (timestamp
formatted once, source, ToU period, …) baked in, filled from Python lists of the arrays.
`tests/test_wire.py` checks every payload against its derbus model (validated parse equals the
model built from the same step).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from derbus import topics
from derbus.messages import Message, format_utc
from derbus.topics import TopicSpec
from edge_simulator.fleet import StepResult
from edge_simulator.noise import FloatArray


@dataclass(frozen=True)
class Device:
    """A published device of a site: its catalogue spec and device id (the bus contract)."""

    spec: TopicSpec[Any]
    device_id: str


DEVICES: tuple[Device, ...] = (
    Device(topics.METER, "pcc"),
    Device(topics.PV, "pv"),
    Device(topics.BATTERY, "battery"),
    Device(topics.LOAD, "load"),
    Device(topics.LOAD, "ev"),
    Device(topics.LOAD, "load1"),
    Device(topics.LOAD, "load2"),
    Device(topics.PRICE, "grid"),
)
"""Every device a site publishes, in publishing order."""

DEVICE_IDS: tuple[str, ...] = tuple(d.device_id for d in DEVICES)


class Bools:
    """A per-site boolean column (JSON `true`/`false`)."""

    def __init__(self, values: Any) -> None:
        self.values = np.asarray(values, dtype=bool)


def device_fields(r: StepResult, device_id: str) -> dict[str, Any]:
    """The model fields of a device's message: per-site arrays, `Bools` or step constants.

    The one mapping of a step to the bus contract: `encode` makes the payloads from it and
    `output.StepView.messages` the models.
    """
    if device_id == "pcc":
        return {
            "p_kw": r.pcc_p_kw,
            "q_kvar": r.pcc_q_kvar,
            "v_l1_v": np.maximum(r.pcc_voltage_v, 0.0),
            "f_hz": r.pcc_frequency_hz,
            "e_import_kwh": r.import_kwh,
            "e_export_kwh": r.export_kwh,
        }
    if device_id == "pv":
        return {
            "generation_kw": r.pv_generation_kw,
            "available_kw": r.pv_available_kw,
            "limit_kw": r.pv_limit_kw,
            "e_total_kwh": r.pv_energy_kwh,
            "irradiance_w_m2": r.irradiance_w_m2,
            "temp_c": r.cell_temp_c,
        }
    if device_id == "battery":
        return {
            "p_kw": r.battery_p_kw,
            "soc_pct": np.clip(r.battery_soc_pct, 0.0, 100.0),
            "capacity_kwh": r.battery_capacity_kwh,
            "soh_pct": r.battery_soh_pct,
            "max_charge_kw": r.battery_max_charge_kw,
            "max_discharge_kw": r.battery_max_discharge_kw,
            "voltage_v": r.battery_voltage_v,
            "temp_c": r.battery_temp_c,
            "cycles": r.battery_cycles,
        }
    if device_id == "load":
        return {"p_kw": r.load_total_kw, "kind": "total", "e_total_kwh": r.load_energy_kwh}
    if device_id == "ev":
        return {
            "p_kw": r.ev_kw,
            "kind": "ev",
            "on": Bools(r.ev_kw > 0),
            "e_total_kwh": r.ev_energy_kwh,
        }
    if device_id in ("load1", "load2"):
        p_kw, on = (r.load1_kw, r.load1_on) if device_id == "load1" else (r.load2_kw, r.load2_on)
        return {"p_kw": p_kw, "kind": "switchable", "on": Bools(on >= 0.5)}
    if device_id == "grid":
        return {
            "price_per_kwh": r.price_per_kwh,
            "feed_in_per_kwh": r.feed_in_per_kwh,
            "tou_period": r.tou_period,
            "demand_charge_per_kw": r.demand_charge_per_kw,
            "carbon_g_per_kwh": r.carbon_g_per_kwh,
        }
    raise ValueError(f"unknown device {device_id!r}; devices: {', '.join(DEVICE_IDS)}")


def _constant(value: Any) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"non-finite value {value} in telemetry")
    return json.dumps(value).replace("%", "%%")


def _column(values: FloatArray, name: str) -> tuple[str, list[Any]]:
    """A per-site float column: `%r` of Python floats, or `%s` when some are null (NaN)."""
    listed: list[float] = values.tolist()
    finite = np.isfinite(values)
    if finite.all():
        return "%r", listed
    if np.isinf(values).any():
        raise ValueError(f"infinite {name} in telemetry")
    return "%s", [repr(v) if v == v else "null" for v in listed]


def encode(
    result: StepResult,
    model: type[Message],
    device_id: str,
    source: str,
    sites: Sequence[int] | None = None,
    seqs: Sequence[int] | None = None,
) -> list[bytes]:
    """The JSON payloads of one device's message for every site (or `sites`), in site order.

    Args:
        result: the step.
        model: the device's derbus message model (its field order makes the template).
        device_id: one of DEVICE_IDS.
        source: the `source` field.
        sites: site indices to encode (None = all).
        seqs: the `seq` of each encoded site's message (None: `seq` is null).

    Raises:
        ValueError: a value is infinite (NaN is `null`, allowed only where the model allows it).
    """
    values = device_fields(result, device_id)
    index = None if sites is None else np.asarray(sites, dtype=np.intp)
    parts: list[str] = []
    columns: list[list[Any]] = []
    for name in model.model_fields:
        key = json.dumps(name)
        if name == "ts":
            parts.append(f"{key}:{_constant(format_utc(result.ts))}")
            continue
        if name == "source":
            parts.append(f"{key}:{_constant(source)}")
            continue
        if name == "seq" and seqs is not None:
            parts.append(f"{key}:%d")
            columns.append(list(seqs))
            continue
        if name not in values:
            default = model.model_fields[name].get_default(call_default_factory=True)
            parts.append(f"{key}:{_constant(default)}")
            continue
        value = values[name]
        if isinstance(value, Bools):
            flags = value.values if index is None else value.values[index]
            parts.append(f"{key}:%s")
            columns.append(np.where(flags, "true", "false").tolist())
        elif isinstance(value, np.ndarray):
            arr = value if index is None else value[index]
            if np.isnan(arr).all():
                parts.append(f"{key}:null")
                continue
            fmt, column = _column(arr, name)
            parts.append(f"{key}:{fmt}")
            columns.append(column)
        else:
            parts.append(f"{key}:{_constant(value)}")
    template = "{" + ",".join(parts) + "}"
    n = result.pcc_p_kw.shape[0] if index is None else len(index)
    if not columns:
        return [(template % ()).encode()] * n
    return [(template % row).encode() for row in zip(*columns, strict=True)]


def encode_step(
    result: StepResult,
    source: str,
    devices: Sequence[Device] = DEVICES,
    sites: Sequence[int] | None = None,
    seqs: Sequence[int] | None = None,
) -> list[list[bytes]]:
    """Payloads of every device (outer list, in `devices` order) for every site (inner list)."""
    return [encode(result, d.spec.model, d.device_id, source, sites, seqs) for d in devices]
