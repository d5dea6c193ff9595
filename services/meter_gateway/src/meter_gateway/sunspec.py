"""SunSpec: find "SunS", walk the model chain, and map points to fields and controls (pysunspec2 defs)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from typing import Any

import sunspec2.mb as smb
from sunspec2 import mdef
from sunspec2.device import get_model_def

from derbus.errors import DeviceError, SetpointRejectedError
from derbus.messages import SetpointTarget
from meter_gateway.control import ControlPlan, DeclaredControl, Write
from meter_gateway.device_map import RegisterPoint, ResolvedDevice, required_fields
from meter_gateway.link import ModbusLink
from meter_gateway.readings import ReadPoint
from meter_gateway.registers import DataType, encode, field_unit, unit_factor

SUNS_MARKER = (0x5375, 0x6E53)
""""SunS" as two registers."""
BASE_ADDRESSES = (40000, 50000, 0)
END_MODEL_ID = 0xFFFF
MAX_MODELS = 64
DEFAULT_REVERSION_S = 60


@dataclass(frozen=True)
class SunSpecModel:
    """One model found on the device: id, address of its ID register, length L, name."""

    model_id: int
    address: int
    length: int
    name: str


@dataclass(frozen=True)
class PointDef:
    """A top-level point of a model definition, with its offset from the model's ID register."""

    name: str
    type: str
    offset: int
    size: int
    sf: str | int | None
    units: str | None
    access: str


@cache
def model_points(model_id: int) -> dict[str, PointDef]:
    """Top-level points of a SunSpec model, from the pysunspec2 definition (empty if unknown)."""
    try:
        definition = get_model_def(model_id)
    except mdef.ModelDefinitionError:
        return {}
    points: dict[str, PointDef] = {}
    offset = 0
    for p in definition[mdef.GROUP][mdef.POINTS]:
        ptype = p[mdef.TYPE]
        size = int(p.get(mdef.SIZE) or smb.point_type_info[ptype].len or 1)
        points[p[mdef.NAME]] = PointDef(
            name=p[mdef.NAME],
            type=ptype,
            offset=offset,
            size=size,
            sf=p.get(mdef.SF),
            units=p.get(mdef.UNITS),
            access=p.get(mdef.ACCESS, "R"),
        )
        offset += size
    return points


def model_name(model_id: int) -> str:
    """The model's group name (e.g. `inverter_three_phase`), or `unknown`."""
    try:
        return str(get_model_def(model_id)[mdef.GROUP][mdef.NAME])
    except mdef.ModelDefinitionError:
        return "unknown"


_TYPES: dict[str, DataType] = {
    "int16": DataType.INT16,
    "sunssf": DataType.INT16,
    "uint16": DataType.UINT16,
    "count": DataType.UINT16,
    "acc16": DataType.UINT16,
    "enum16": DataType.UINT16,
    "bitfield16": DataType.UINT16,
    "pad": DataType.UINT16,
    "int32": DataType.INT32,
    "uint32": DataType.UINT32,
    "acc32": DataType.UINT32,
    "enum32": DataType.UINT32,
    "bitfield32": DataType.UINT32,
    "ipaddr": DataType.UINT32,
    "int64": DataType.INT64,
    "uint64": DataType.UINT64,
    "acc64": DataType.UINT64,
    "float32": DataType.FLOAT32,
    "float64": DataType.FLOAT64,
    "string": DataType.STRING,
}

_UNITS = {
    "W": "W",
    "Wh": "Wh",
    "V": "V",
    "Hz": "Hz",
    "var": "var",
    "VA": "VA",
    "A": "A",
    "C": "C",
    "Pct": "%",
    "AH": "Ah",
    "Ah": "Ah",
    "VAh": "1",
    "varh": "1",
}


def sunspec_unit(units: str | None) -> str:
    """Our unit name for a SunSpec `units` string (`Pct`, `% WChaMax` → %)."""
    if not units:
        return "1"
    if units.startswith("%"):
        return "%"
    return _UNITS.get(units, "1")


def _unimplemented(ptype: str) -> int | float | str | None:
    if ptype in ("float32", "float64"):
        return math.nan
    if ptype == "string":
        return ""
    value = smb.unimpl_value.get(ptype)
    return value if isinstance(value, int) else None


async def find_base(link: ModbusLink, unit_id: int, bases: tuple[int, ...]) -> int:
    """The first address among `bases` holding "SunS"; raises DeviceError when none does."""
    tried = []
    for base in bases:
        try:
            regs = await link.read("holding", base, 2, unit_id)
        except DeviceError as err:
            if "cannot connect" in str(err) or "timed out" in str(err):
                raise
            tried.append(f"{base}: {err}")
            continue
        if tuple(regs) == SUNS_MARKER:
            return base
        tried.append(f"{base}: no SunS")
    raise DeviceError(f"no SunSpec marker found ({'; '.join(tried)})")


async def discover(
    link: ModbusLink, unit_id: int, base: int | None = None
) -> tuple[int, list[SunSpecModel]]:
    """Find the base and walk the model chain (ID, L, …) up to the end marker 0xFFFF.

    Returns:
        (base address, models in device order).
    """
    found = await find_base(link, unit_id, (base,) if base is not None else BASE_ADDRESSES)
    models: list[SunSpecModel] = []
    address = found + 2
    for _ in range(MAX_MODELS):
        model_id, length = await link.read("holding", address, 2, unit_id)
        if model_id == END_MODEL_ID:
            return found, models
        models.append(SunSpecModel(model_id, address, length, model_name(model_id)))
        address += 2 + length
        if address > 0xFFFF:
            break
    raise DeviceError(f"SunSpec model chain from {found} has no end marker")


def _read_point(
    field: str, model: SunSpecModel, pdef: PointDef, sign: int, lo: float | None, hi: float | None
) -> ReadPoint | None:
    points = model_points(model.model_id)
    sf_address: int | None = None
    if isinstance(pdef.sf, str):
        sf_def = points.get(pdef.sf)
        if sf_def is None:
            return None
        sf_address = model.address + sf_def.offset
    scale = 10.0**pdef.sf if isinstance(pdef.sf, int) else 1.0
    dtype = _TYPES.get(pdef.type)
    if dtype is None:
        return None
    unit = sunspec_unit(pdef.units)
    try:
        unit_factor(unit, field_unit(field))
    except ValueError:
        return None
    point = RegisterPoint(
        field=field,
        address=model.address + pdef.offset,
        function="holding",
        type=dtype,
        length=pdef.size if dtype is DataType.STRING else None,
        scale=scale,
        scale_factor_register=sf_address,
        unit=unit,
        min=lo,
        max=hi,
    )
    return ReadPoint(
        point,
        sign=sign,
        unimplemented=_unimplemented(pdef.type),
        sf_unimplemented=smb.SUNS_UNIMPL_SUNSSF if sf_address is not None else None,
    )


def read_points(device: ResolvedDevice, models: list[SunSpecModel]) -> list[ReadPoint]:
    """The points feeding the device's fields, from its SunSpec map and the models found.

    Raises:
        DeviceError: a required field has no candidate point on this device.
    """
    assert device.sunspec_map is not None
    first: dict[int, SunSpecModel] = {}
    for m in models:
        first.setdefault(m.model_id, m)
    out: list[ReadPoint] = []
    for field, spec in device.sunspec_map.kinds[device.kind].items():
        for ref in spec.points:
            mid, _, name = ref.partition(".")
            model = first.get(int(mid))
            pdef = model_points(int(mid)).get(name) if model else None
            if model is None or pdef is None:
                continue
            rp = _read_point(field, model, pdef, spec.sign, spec.min, spec.max)
            if rp is not None:
                out.append(rp)
    fed = {rp.field for rp in out}
    missing = [f for f in required_fields(device.kind) if f not in fed]
    if missing:
        have = ", ".join(str(m.model_id) for m in models) or "none"
        raise DeviceError(
            f"SunSpec models found ({have}) feed no {', '.join(missing)} for a {device.kind}"
        )
    return out


async def read_model(link: ModbusLink, unit_id: int, model: SunSpecModel) -> dict[str, Any]:
    """Every top-level point of a model, decoded by pysunspec2 (raw, scale factors not applied)."""
    total = model.length + 2
    regs: list[int] = []
    while len(regs) < total:
        count = min(125, total - len(regs))
        regs += await link.read("holding", model.address + len(regs), count, unit_id)
    data = b"".join(r.to_bytes(2, "big") for r in regs)
    values: dict[str, Any] = {}
    for name, p in model_points(model.model_id).items():
        if p.offset + p.size > total:
            break
        chunk = data[2 * p.offset : 2 * (p.offset + p.size)]
        info = smb.point_type_info[p.type]
        value = info.data_to(chunk)
        values[name] = value if info.is_impl(value) else None
    return values


def scaled(values: dict[str, Any], model_id: int, name: str) -> float | None:
    """A point's value with its scale factor applied (None when not implemented)."""
    pdef = model_points(model_id)[name]
    raw = values.get(name)
    if raw is None:
        return None
    if isinstance(pdef.sf, str):
        sf = values.get(pdef.sf)
        if sf is None:
            return None
        return float(raw) * 10.0 ** int(sf)
    if isinstance(pdef.sf, int):
        return float(raw) * 10.0**pdef.sf
    return float(raw)


# --- controls ------------------------------------------------------------------------------------


def _reg(model: SunSpecModel, name: str) -> int:
    return model.address + model_points(model.model_id)[name].offset


def _u16(value: float) -> tuple[int, ...]:
    return tuple(encode(value, DataType.UINT16))


def _i16(value: float) -> tuple[int, ...]:
    return tuple(encode(value, DataType.INT16))


@dataclass(frozen=True)
class SunSpecControl(DeclaredControl):
    """A control on a SunSpec model, with the model's reversion timer (`*_RvrtTms`)."""

    model: SunSpecModel

    @property
    def reversion_s(self) -> int:
        """The device watchdog written with each value, s."""
        return self.spec.reversion.seconds if self.spec.reversion else DEFAULT_REVERSION_S

    @property
    def refresh_s(self) -> float | None:
        """Rewrite at half the reversion timeout (or as declared)."""
        return self.spec.refresh_s or self.reversion_s / 2


@dataclass(frozen=True)
class StorageControl(SunSpecControl):
    """`battery_p_kw` on SunSpec 124: charge (and zero) → StorCtl_Mod=1 (CHARGE) + InWRte in %
    of WChaMax; discharge → StorCtl_Mod=2 (DISCHARGE) + OutWRte in % of the discharge rating
    (802 WDisChaRteMax, else WChaMax); revert → StorCtl_Mod=0. Both bits at once are never
    written (devices refuse it). InOutWRte_RvrtTms goes with every value so the device reverts
    on its own if the gateway stops refreshing."""

    wchamax_w: float
    rate_sf: int
    wdischamax_w: float | None = None

    def _pct_raw(self, p_kw: float) -> tuple[int, ...]:
        rating = self.wchamax_w if p_kw >= 0 else (self.wdischamax_w or self.wchamax_w)
        pct = abs(p_kw) * 1000.0 / rating * 100.0
        if pct > 100.0 + 1e-9:
            what = "charge" if p_kw >= 0 else "discharge"
            raise SetpointRejectedError(
                f"{abs(p_kw):g} kW exceeds the battery's {what} rating {rating / 1000:g} kW"
            )
        return _i16(pct / 10.0**self.rate_sf)

    def writes(self, value: float) -> list[Write]:
        """The reversion timer, the rate(s), then the mode bits."""
        m = self.model
        out = [Write(_reg(m, "InOutWRte_RvrtTms"), _u16(self.reversion_s))]
        if value >= 0:
            out += [
                Write(_reg(m, "InWRte"), self._pct_raw(value)),
                Write(_reg(m, "StorCtl_Mod"), (1,)),
            ]
        else:
            out += [
                Write(_reg(m, "OutWRte"), self._pct_raw(value)),
                Write(_reg(m, "StorCtl_Mod"), (2,)),
            ]
        return out

    def revert(self) -> list[Write]:
        """Storage back to its own control: StorCtl_Mod = 0."""
        return [Write(_reg(self.model, "StorCtl_Mod"), (0,))]


@dataclass(frozen=True)
class PvLimitControl(SunSpecControl):
    """`pv_limit_pct` / `pv_limit_kw` on SunSpec 123: WMaxLimPct + WMaxLim_Ena, with
    WMaxLimPct_RvrtTms; revert → WMaxLim_Ena = 0. kW needs WMax (model 121) or WRtg (120)."""

    pct_sf: int
    wmax_w: float | None

    def writes(self, value: float) -> list[Write]:
        """The reversion timer, the limit in %, then enable."""
        pct = value
        if self.target == "pv_limit_kw":
            if not self.wmax_w:
                raise SetpointRejectedError("pv_limit_kw needs WMax (SunSpec model 121 or 120)")
            pct = value * 1000.0 / self.wmax_w * 100.0
        if not 0 <= pct <= 100:
            raise SetpointRejectedError(f"limit {pct:g} % outside 0..100 % of WMax")
        m = self.model
        return [
            Write(_reg(m, "WMaxLimPct_RvrtTms"), _u16(self.reversion_s)),
            Write(_reg(m, "WMaxLimPct"), _u16(pct / 10.0**self.pct_sf)),
            Write(_reg(m, "WMaxLim_Ena"), (1,)),
        ]

    def revert(self) -> list[Write]:
        """Throttle off: WMaxLim_Ena = 0."""
        return [Write(_reg(self.model, "WMaxLim_Ena"), (0,))]


async def build_controls(
    link: ModbusLink, device: ResolvedDevice, models: list[SunSpecModel]
) -> dict[SetpointTarget, ControlPlan]:
    """Control plans for the targets the device declares, from its SunSpec control models.

    Raises:
        DeviceError: a declared target has no SunSpec model to write it.
    """
    first: dict[int, SunSpecModel] = {}
    for m in models:
        first.setdefault(m.model_id, m)
    plans: dict[SetpointTarget, ControlPlan] = {}
    for spec in device.controls:
        if spec.write is not None:
            continue  # an explicit register control (handled by the caller)
        if spec.target == "battery_p_kw":
            m124 = first.get(124)
            if m124 is None:
                raise DeviceError("battery_p_kw needs SunSpec model 124 (storage)")
            values = await read_model(link, device.unit_id, m124)
            wchamax = scaled(values, 124, "WChaMax")
            if not wchamax or wchamax <= 0:
                raise DeviceError("SunSpec 124 WChaMax is not implemented or zero")
            wdischamax = None
            if 802 in first:
                battery = await read_model(link, device.unit_id, first[802])
                wdischamax = scaled(battery, 802, "WDisChaRteMax")
            plans[spec.target] = StorageControl(
                spec, m124, wchamax, int(values.get("InOutWRte_SF") or 0), wdischamax
            )
        elif spec.target in ("pv_limit_pct", "pv_limit_kw"):
            m123 = first.get(123)
            if m123 is None:
                raise DeviceError(f"{spec.target} needs SunSpec model 123 (immediate controls)")
            values = await read_model(link, device.unit_id, m123)
            wmax: float | None = None
            if 121 in first:
                wmax = scaled(await read_model(link, device.unit_id, first[121]), 121, "WMax")
            elif 120 in first:
                wmax = scaled(await read_model(link, device.unit_id, first[120]), 120, "WRtg")
            plans[spec.target] = PvLimitControl(
                spec, m123, int(values.get("WMaxLimPct_SF") or 0), wmax
            )
        else:
            raise DeviceError(f"{spec.target} has no SunSpec mapping; declare `write` registers")
    return plans
