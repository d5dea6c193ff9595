"""From raw register blocks to a validated telemetry message: scale, units, plausibility, drops."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from derbus.messages import Telemetry
from meter_gateway.device_map import KIND_MODELS, RegisterPoint, required_fields
from meter_gateway.registers import DataType, ReadBlock, Span, decode, field_unit, unit_factor


@dataclass(frozen=True)
class ReadPoint:
    """A point to read: a register point plus SunSpec extras (sign, not-implemented sentinel)."""

    point: RegisterPoint
    sign: int = 1
    unimplemented: int | float | str | None = None
    """A raw value meaning "not implemented" (SunSpec): the field is absent, not an error."""
    sf_unimplemented: int | None = None

    @property
    def field(self) -> str:
        """The telemetry field fed."""
        return self.point.field

    def spans(self) -> list[Span]:
        """Registers to read for this point (value and scale factor)."""
        sf = self.point.sf_span
        return [self.point.span] if sf is None else [self.point.span, sf]


@dataclass(frozen=True)
class Drop:
    """A value that was not published, and why (counted in /metrics)."""

    field: str
    reason: str  # "not_finite", "out_of_range", "invalid", "missing_required"
    detail: str


def _registers(blocks: dict[ReadBlock, list[int]], span: Span) -> list[int]:
    for block, regs in blocks.items():
        if block.covers(span):
            return block.slice(regs, span)
    raise KeyError(f"no block read covers {span}")


def _is_unimplemented(raw: int | float | str, sentinel: int | float | str | None) -> bool:
    if sentinel is None:
        return False
    if isinstance(sentinel, float) and math.isnan(sentinel):
        return isinstance(raw, float) and math.isnan(raw)
    return raw == sentinel


def decode_point(
    rp: ReadPoint, blocks: dict[ReadBlock, list[int]]
) -> tuple[float | None, Drop | None]:
    """The value of one point in its field's unit, or None (absent) with the drop reason if any.

    value = raw * scale * 10**sf, converted from the point's unit into the field's unit, times
    sign; NaN/inf or outside the declared [min, max] is dropped.
    """
    p = rp.point
    raw = decode(_registers(blocks, p.span), p.type, p.word_order, p.byte_order)
    if _is_unimplemented(raw, rp.unimplemented):
        return None, None
    if isinstance(raw, str):
        return None, Drop(p.field, "invalid", f"text {raw!r} where a number is expected")
    value = float(raw) * p.scale
    if p.sf_span is not None:
        sf = decode(_registers(blocks, p.sf_span), DataType.INT16)
        assert isinstance(sf, int)
        if rp.sf_unimplemented is not None and sf == rp.sf_unimplemented:
            return None, None
        if not -10 <= sf <= 10:
            return None, Drop(p.field, "invalid", f"scale factor {sf} outside -10..10")
        value *= 10.0**sf
    value *= unit_factor(p.unit or field_unit(p.field), field_unit(p.field)) * rp.sign
    if not math.isfinite(value):
        return None, Drop(p.field, "not_finite", f"decoded {value}")
    if (p.min is not None and value < p.min) or (p.max is not None and value > p.max):
        return None, Drop(
            p.field, "out_of_range", f"{value:g} outside [{p.min}, {p.max}] {field_unit(p.field)}"
        )
    return value, None


def decode_points(
    points: list[ReadPoint], blocks: dict[ReadBlock, list[int]]
) -> tuple[dict[str, float], list[Drop]]:
    """Decode every point; the first present value wins when several feed one field."""
    values: dict[str, float] = {}
    drops: list[Drop] = []
    for rp in points:
        if rp.field in values:
            continue
        value, drop = decode_point(rp, blocks)
        if drop is not None:
            drops.append(drop)
        elif value is not None:
            values[rp.field] = value
    return values, drops


def build_telemetry(
    kind: str,
    values: dict[str, float],
    ts: datetime,
    source: str,
    load_kind: str = "total",
) -> tuple[Telemetry | None, list[Drop]]:
    """Validate the decoded values as the kind's telemetry message.

    A field the model refuses (e.g. a negative PV generation) is dropped; without a required
    field there is no message.
    """
    data: dict[str, Any] = {}
    for name, value in values.items():
        data[name] = value != 0 if field_unit(name) == "bool" else value
    if kind == "load":
        data["kind"] = load_kind
    drops: list[Drop] = []
    model = KIND_MODELS[kind]
    for _ in range(len(data) + 1):
        missing = [f for f in required_fields(kind) if f not in data]
        if missing:
            drops.extend(Drop(f, "missing_required", "no valid value this poll") for f in missing)
            return None, drops
        try:
            return model.model_validate({"ts": ts, "source": source, **data}), drops
        except ValidationError as err:
            bad = {str(e["loc"][0]) for e in err.errors() if e["loc"]}
            bad &= set(values)
            if not bad:
                raise
            for name in sorted(bad):
                drops.append(Drop(name, "invalid", f"{data.pop(name)!r} refused by the model"))
    return None, drops
