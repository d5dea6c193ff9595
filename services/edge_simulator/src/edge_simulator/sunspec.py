"""SunSpec register image of a simulated site, laid out from pysunspec2's model definitions.

Pure: no sockets. The point offsets are never hand-written: each model's points, types and
sizes come from `sunspec2` (its JSON model definitions); values are encoded with its
`sunspec2.mb` converters. Scale factors are fixed per point (`SCALE_FACTORS`) and written into
the image's `*_SF` registers, so any SunSpec client decodes the values.

Map (holding registers, protocol addresses): "SunS" at 40000, then models
1 (common), 103 (PV inverter), 123 (PV immediate controls), 802 (battery), 124 (storage control),
203 (PCC meter, load-referenced: W > 0 imports), and the end marker 0xFFFF / 0.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Any

from sunspec2 import device as ss_device
from sunspec2 import mb as ss_mb

BASE_ADDRESS = 40000
SUNS_MARKER = (0x5375, 0x6E53)  # "SunS"
END_MODEL_ID = 0xFFFF
MODEL_IDS: tuple[int, ...] = (1, 103, 123, 802, 124, 203)

SCALE_FACTORS: dict[tuple[int, str], int] = {
    (103, "A_SF"): -2,
    (103, "V_SF"): -1,
    (103, "W_SF"): 0,
    (103, "Hz_SF"): -2,
    (103, "VA_SF"): 0,
    (103, "VAr_SF"): 0,
    (103, "PF_SF"): -1,
    (103, "WH_SF"): 0,
    (103, "DCA_SF"): -2,
    (103, "DCV_SF"): -1,
    (103, "DCW_SF"): 0,
    (103, "Tmp_SF"): -1,
    (123, "WMaxLimPct_SF"): -1,
    (123, "OutPFSet_SF"): -3,
    (123, "VArPct_SF"): -1,
    (802, "AHRtg_SF"): 0,
    (802, "WHRtg_SF"): 0,
    (802, "WChaDisChaMax_SF"): 0,
    (802, "DisChaRte_SF"): -1,
    (802, "SoC_SF"): -1,
    (802, "DoD_SF"): -1,
    (802, "SoH_SF"): -1,
    (802, "V_SF"): -1,
    (802, "CellV_SF"): -3,
    (802, "A_SF"): -1,
    (802, "AMax_SF"): -1,
    (802, "W_SF"): 0,
    (124, "WChaMax_SF"): 0,
    (124, "WChaDisChaGra_SF"): 0,
    (124, "VAChaMax_SF"): 0,
    (124, "MinRsvPct_SF"): -1,
    (124, "ChaState_SF"): -1,
    (124, "StorAval_SF"): -1,
    (124, "InBatV_SF"): -1,
    (124, "InOutWRte_SF"): -1,
    (203, "A_SF"): -2,
    (203, "V_SF"): -1,
    (203, "Hz_SF"): -2,
    (203, "W_SF"): 0,
    (203, "VA_SF"): 0,
    (203, "VAR_SF"): 0,
    (203, "PF_SF"): -1,
    (203, "TotWh_SF"): 0,
    (203, "TotVAh_SF"): 0,
    (203, "TotVArh_SF"): 0,
}
"""Scale factor (power of ten) of every `*_SF` point the image implements."""


@dataclass(frozen=True)
class PointDef:
    """One SunSpec point placed in the image."""

    model_id: int
    name: str
    ptype: str
    address: int
    size: int
    sf: str | None
    access: str

    @property
    def writable(self) -> bool:
        """Whether the model declares the point read-write."""
        return self.access == "RW"


@dataclass(frozen=True)
class ModelBlock:
    """A model's place in the image: its ID register address and length L."""

    model_id: int
    name: str
    address: int
    length: int


@dataclass
class Layout:
    """Where every point of every model sits (built from the sunspec2 definitions)."""

    base: int
    blocks: list[ModelBlock]
    points: dict[tuple[int, str], PointDef]
    size: int
    by_address: dict[int, PointDef] = field(default_factory=dict)

    def point(self, model_id: int, name: str) -> PointDef:
        """A point by model and name (KeyError when the model lacks it)."""
        return self.points[(model_id, name)]

    def at(self, address: int) -> PointDef | None:
        """The point whose first register is at `address`."""
        return self.by_address.get(address)


def build_layout(model_ids: tuple[int, ...] = MODEL_IDS, base: int = BASE_ADDRESS) -> Layout:
    """Lay the models out after the "SunS" marker, using pysunspec2's model definitions."""
    addr = base + 2
    blocks: list[ModelBlock] = []
    points: dict[tuple[int, str], PointDef] = {}
    for mid in model_ids:
        mdef: dict[str, Any] = ss_device.get_model_def(mid, mapping=False)
        group = mdef["group"]
        if group.get("groups"):
            raise ValueError(f"model {mid} has repeating groups; only fixed models are served")
        start = addr
        for p in group["points"]:
            size = int(p.get("size", 1))
            pd = PointDef(mid, p["name"], p["type"], addr, size, p.get("sf"), p.get("access", "R"))
            points[(mid, p["name"])] = pd
            addr += size
        blocks.append(ModelBlock(mid, group["name"], start, addr - start - 2))
    layout = Layout(base, blocks, points, addr + 2 - base)
    layout.by_address = {p.address: p for p in points.values()}
    return layout


def _limits(ptype: str) -> tuple[int, int]:
    if ptype in ("int16", "sunssf"):
        return -32767, 32767
    if ptype in ("int32",):
        return -(2**31) + 1, 2**31 - 1
    if ptype in ("uint32", "acc32", "bitfield32", "enum32"):
        return 0, 2**32 - 2
    return 0, 0xFFFE


def encode_point(point: PointDef, value: Any) -> list[int]:
    """Registers of one point; `value` is raw (already scaled) or None (unimplemented)."""
    if value is None:
        data = ss_mb.create_unimpl_value(point.ptype, point.size * 2)
    elif point.ptype == "string":
        data = ss_mb.str_to_data(str(value)[: point.size * 2], point.size * 2)
    else:
        lo, hi = _limits(point.ptype)
        raw = min(max(round(value), lo), hi)
        data = ss_mb.point_type_info[point.ptype].to_data(raw, point.size * 2)
    return list(struct.unpack(f">{point.size}H", data))


def raw_value(point: PointDef, value: float, sf: int) -> int:
    """Engineering value → the integer stored, for a point with scale factor `sf`."""
    return round(value / 10.0**sf)


def decode_point(point: PointDef, registers: list[int]) -> int:
    """Raw integer of a (numeric) point from its registers (signed where the type is)."""
    data = struct.pack(f">{point.size}H", *registers[: point.size])
    value: int = ss_mb.point_type_info[point.ptype].data_to(data)
    return value


@dataclass
class Image:
    """A site's register image (holding registers from `layout.base`)."""

    layout: Layout
    registers: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.registers:
            self.registers = [0] * self.layout.size
            self.registers[0:2] = list(SUNS_MARKER)
            for block in self.layout.blocks:
                self.set_raw(block.model_id, "ID", block.model_id)
                self.set_raw(block.model_id, "L", block.length)
            for point in self.layout.points.values():
                if point.name not in ("ID", "L"):
                    self._put(point, None)
            for (mid, name), sf in SCALE_FACTORS.items():
                if (mid, name) in self.layout.points:
                    self.set_raw(mid, name, sf)
            end = self.layout.size - 2
            self.registers[end : end + 2] = [END_MODEL_ID, 0]

    def _put(self, point: PointDef, raw: Any) -> None:
        off = point.address - self.layout.base
        self.registers[off : off + point.size] = encode_point(point, raw)

    def set_raw(self, model_id: int, name: str, raw: Any) -> None:
        """Store a raw (unscaled) value, a string, or None for unimplemented."""
        self._put(self.layout.point(model_id, name), raw)

    def set(self, model_id: int, name: str, value: float | None) -> None:
        """Store an engineering value, scaled by the point's scale factor."""
        point = self.layout.point(model_id, name)
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            self._put(point, None)
            return
        sf = SCALE_FACTORS.get((model_id, point.sf), 0) if point.sf else 0
        self._put(point, raw_value(point, value, sf))

    def get(self, model_id: int, name: str) -> float:
        """The engineering value of a numeric point."""
        point = self.layout.point(model_id, name)
        off = point.address - self.layout.base
        raw = decode_point(point, self.registers[off : off + point.size])
        sf = SCALE_FACTORS.get((model_id, point.sf), 0) if point.sf else 0
        return raw * 10.0**sf
