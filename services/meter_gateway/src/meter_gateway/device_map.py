"""The devices YAML: connections, register maps, SunSpec, controls; validated, errors name device and field."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from derbus.errors import ConfigError
from derbus.messages import (
    BatteryTelemetry,
    LoadTelemetry,
    MeterReading,
    PvTelemetry,
    SetpointTarget,
    Telemetry,
)
from derbus.messages.control import SETPOINT_UNITS
from derbus.messages.telemetry import LoadKind
from derbus.topics import topic_level
from meter_gateway.registers import (
    MAX_READ_REGISTERS,
    DataType,
    Function,
    Order,
    Span,
    field_unit,
    register_count,
    unit_factor,
)

DeviceKind = Literal["meter", "pv", "battery", "load"]

KIND_MODELS: dict[str, type[Telemetry]] = {
    "meter": MeterReading,
    "pv": PvTelemetry,
    "battery": BatteryTelemetry,
    "load": LoadTelemetry,
}
"""The telemetry model each device kind publishes."""

KIND_TARGETS: dict[str, tuple[str, ...]] = {
    "meter": (),
    "pv": ("pv_limit_kw", "pv_limit_pct"),
    "battery": ("battery_p_kw",),
    "load": ("load_on", "load_p_kw"),
}
"""The setpoint targets a device kind may declare."""

_NOT_FIELDS = {"ts", "source", "kind"}


def telemetry_fields(kind: str) -> tuple[str, ...]:
    """The fields of a kind's telemetry model a register may feed."""
    return tuple(f for f in KIND_MODELS[kind].model_fields if f not in _NOT_FIELDS)


def required_fields(kind: str) -> tuple[str, ...]:
    """The fields a kind's telemetry model cannot do without."""
    model = KIND_MODELS[kind]
    return tuple(
        name
        for name, info in model.model_fields.items()
        if info.is_required() and name not in _NOT_FIELDS
    )


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TcpConnection(_Strict):
    """Modbus TCP endpoint."""

    type: Literal["tcp"] = "tcp"
    host: str = Field(min_length=1, description="device host name or address")
    port: int = Field(default=502, ge=1, le=65535, description="Modbus TCP port")


class SerialConnection(_Strict):
    """Modbus RTU over a serial line (devices on one port share it)."""

    type: Literal["rtu"]
    port: str = Field(min_length=1, description="serial device, e.g. /dev/ttyUSB0")
    baudrate: int = Field(default=9600, description="bits per second")
    parity: Literal["N", "E", "O"] = Field(default="N", description="N(one), E(ven), O(dd)")
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8

    @field_validator("baudrate")
    @classmethod
    def _baud(cls, value: int) -> int:
        allowed = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)
        if value not in allowed:
            raise ValueError(f"baudrate {value} not one of {allowed}")
        return value


Connection = Annotated[TcpConnection | SerialConnection, Field(discriminator="type")]


class RegisterSpec(_Strict):
    """Where a value lives and how it is encoded (shared by readings and control writes)."""

    address: int = Field(ge=0, le=65535, description="register address (0-based, as on the wire)")
    function: Function = Field(default="holding", description="holding (fc 3) or input (fc 4)")
    type: DataType = Field(default=DataType.UINT16, description="data type")
    length: int | None = Field(default=None, ge=1, le=MAX_READ_REGISTERS, description="strings")
    word_order: Order = Field(default="big", description="big: high word at the low address")
    byte_order: Order = Field(default="big", description="big: high byte first in a word")
    scale: float = Field(default=1.0, description="engineering value = raw * scale * 10**sf")
    scale_factor_register: int | None = Field(
        default=None, ge=0, le=65535, description="address of an int16 power-of-ten scale factor"
    )
    unit: str | None = Field(
        default=None, description="unit of the scaled value (W, kWh, V, %, …); default: the field's"
    )

    @model_validator(mode="after")
    def _check(self) -> RegisterSpec:
        if self.type is DataType.STRING and self.length is None:
            raise ValueError("type string needs `length` (registers)")
        if self.scale == 0:
            raise ValueError("scale must not be 0")
        if self.unit is not None:
            unit_factor(self.unit, self.unit)  # raises on an unknown unit
        return self

    @property
    def span(self) -> Span:
        """The registers this value occupies."""
        return Span(self.function, self.address, register_count(self.type, self.length))

    @property
    def sf_span(self) -> Span | None:
        """The scale-factor register, if any."""
        if self.scale_factor_register is None:
            return None
        return Span(self.function, self.scale_factor_register, 1)


class RegisterPoint(RegisterSpec):
    """One register (or several) feeding one telemetry field."""

    field: str = Field(description="telemetry field it feeds (p_kw, soc_pct, …)")
    min: float | None = Field(default=None, description="plausible minimum, in the field's unit")
    max: float | None = Field(default=None, description="plausible maximum, in the field's unit")

    @model_validator(mode="after")
    def _range(self) -> RegisterPoint:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError("min must not exceed max")
        return self


class EnableRegister(_Strict):
    """A register switching the control on while a setpoint is live and off on revert."""

    address: int = Field(ge=0, le=65535)
    on: int = Field(default=1, ge=0, le=65535)
    off: int = Field(default=0, ge=0, le=65535)


class ReversionRegister(_Strict):
    """The device's own watchdog: it reverts when no write came within `seconds`."""

    address: int | None = Field(
        default=None, ge=0, le=65535, description="uint16 timeout register (SunSpec: found)"
    )
    seconds: int = Field(default=60, ge=1, le=65535, description="timeout the gateway writes, s")


class ControlSpec(_Strict):
    """A setpoint target the device accepts, its declared limits and how it is written."""

    target: SetpointTarget
    min: float = Field(description="lowest accepted value, in the target's unit")
    max: float = Field(description="highest accepted value, in the target's unit")
    write: RegisterSpec | None = Field(
        default=None, description="where the value goes (unit converted); none for SunSpec"
    )
    revert_value: float | None = Field(
        default=None, description="value written when no setpoint is live (target's unit)"
    )
    enable: EnableRegister | None = None
    reversion: ReversionRegister | None = None
    refresh_s: float | None = Field(
        default=None, gt=0, description="rewrite period while live (default: half the reversion)"
    )

    @model_validator(mode="after")
    def _check(self) -> ControlSpec:
        if self.min > self.max:
            raise ValueError("min must not exceed max")
        if self.write is not None:
            try:
                unit_factor(
                    self.write.unit or SETPOINT_UNITS[self.target], SETPOINT_UNITS[self.target]
                )
            except ValueError as err:
                raise ValueError(f"write.unit: {err}") from err
            if self.write.scale_factor_register is not None:
                raise ValueError("write.scale_factor_register: not supported for writes")
            if self.revert_value is None:
                raise ValueError("revert_value: required with `write`")
            if self.reversion is not None and self.reversion.address is None:
                raise ValueError("reversion.address: required with `write`")
        return self


class MapFile(_Strict):
    """A shipped or user register map: the points (and controls) of a device model."""

    name: str
    description: str = ""
    kind: DeviceKind
    registers: list[RegisterPoint] = Field(default_factory=list)
    controls: list[ControlSpec] = Field(default_factory=list)


class SunSpecField(_Strict):
    """A telemetry field fed by a SunSpec point: `model.point`, first implemented candidate wins."""

    points: list[str] = Field(min_length=1, description="candidates like `203.W`")
    sign: Literal[1, -1] = 1
    min: float | None = None
    max: float | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"points": [data]}
        if isinstance(data, list):
            return {"points": data}
        return data

    @field_validator("points")
    @classmethod
    def _ref(cls, refs: list[str]) -> list[str]:
        for ref in refs:
            model, _, point = ref.partition(".")
            if not model.isdigit() or not point:
                raise ValueError(f"{ref!r} is not `<model id>.<point name>`")
        return refs


class SunSpecMap(_Strict):
    """Which SunSpec points feed which fields, per device kind."""

    name: str
    description: str = ""
    kinds: dict[DeviceKind, dict[str, SunSpecField]]


class DeviceDefaults(_Strict):
    """Defaults applied to every device (each device may override)."""

    poll_interval_s: float = Field(default=5.0, gt=0, le=3600)
    timeout_s: float = Field(default=1.0, gt=0, le=60)
    stale_after_failures: int = Field(default=3, ge=1, le=1000)
    max_gap_registers: int = Field(default=10, ge=0, le=MAX_READ_REGISTERS)
    max_read_registers: int = Field(default=MAX_READ_REGISTERS, ge=1, le=MAX_READ_REGISTERS)


class DeviceConfig(_Strict):
    """One device as declared in the YAML."""

    id: Annotated[str, topic_level("id")] = Field(description="device id: the topic's device level")
    site_id: Annotated[str, topic_level("id")] | None = Field(
        default=None, description="site (default: SITE_ID)"
    )
    kind: DeviceKind
    load_kind: LoadKind = Field(default="total", description="for kind load")
    connection: Connection
    unit_id: int = Field(default=1, ge=0, le=255)
    poll_interval_s: float | None = Field(default=None, gt=0, le=3600)
    timeout_s: float | None = Field(default=None, gt=0, le=60)
    stale_after_failures: int | None = Field(default=None, ge=1, le=1000)
    max_gap_registers: int | None = Field(default=None, ge=0, le=MAX_READ_REGISTERS)
    max_read_registers: int | None = Field(default=None, ge=1, le=MAX_READ_REGISTERS)
    map: str | None = Field(default=None, description="a shipped map name or a map file path")
    registers: list[RegisterPoint] = Field(default_factory=list)
    sunspec: Literal["auto"] | None = Field(default=None, description="discover SunSpec models")
    sunspec_base: int | None = Field(default=None, ge=0, le=65535, description="skip the scan")
    sunspec_map: str = Field(default="sunspec_inverter_storage", description="SunSpec field map")
    controls: list[ControlSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> DeviceConfig:
        if self.sunspec is not None and (self.registers or self.map):
            raise ValueError("use either `sunspec: auto` or `map`/`registers`, not both")
        if self.sunspec is None and not self.registers and not self.map:
            raise ValueError("needs `registers`, `map` or `sunspec: auto`")
        allowed = set(telemetry_fields(self.kind))
        for i, point in enumerate(self.registers):
            _check_point(point, allowed, self.kind, f"registers[{i}]")
        seen: set[str] = set()
        for i, control in enumerate(self.controls):
            if control.target not in KIND_TARGETS[self.kind]:
                raise ValueError(
                    f"controls[{i}].target: {control.target} is not a {self.kind} target"
                    f" (allowed: {', '.join(KIND_TARGETS[self.kind]) or 'none'})"
                )
            if control.target in seen:
                raise ValueError(f"controls[{i}].target: {control.target} declared twice")
            seen.add(control.target)
            if self.sunspec is None and control.write is None:
                raise ValueError(f"controls[{i}].write: required without SunSpec")
        return self


def _check_point(point: RegisterPoint, allowed: set[str], kind: str, where: str) -> None:
    if point.field not in allowed:
        raise ValueError(
            f"{where}.field: {point.field!r} is not a {kind} field"
            f" (allowed: {', '.join(sorted(allowed))})"
        )
    try:
        unit_factor(point.unit or field_unit(point.field), field_unit(point.field))
    except ValueError as err:
        raise ValueError(f"{where}.unit: {err}") from err


class GatewayConfig(_Strict):
    """The whole devices file."""

    defaults: DeviceDefaults = Field(default_factory=DeviceDefaults)
    devices: list[DeviceConfig] = Field(default_factory=list)


class ResolvedDevice(BaseModel):
    """A device with defaults, site and map applied: what the gateway runs."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    id: str
    site_id: str
    kind: DeviceKind
    load_kind: LoadKind
    connection: TcpConnection | SerialConnection
    unit_id: int
    poll_interval_s: float
    timeout_s: float
    stale_after_failures: int
    max_gap_registers: int
    max_read_registers: int
    registers: tuple[RegisterPoint, ...]
    sunspec: bool
    sunspec_base: int | None
    sunspec_map: SunSpecMap | None
    controls: tuple[ControlSpec, ...]

    @property
    def key(self) -> tuple[str, str]:
        """(site id, device id): unique within a gateway."""
        return (self.site_id, self.id)

    @property
    def label(self) -> str:
        """`site/device` for logs and metric labels."""
        return f"{self.site_id}/{self.id}"


SHIPPED_MAPS = ("generic_three_phase_meter", "sunspec_inverter_storage")


def _read_yaml(text: str, where: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{where}: not valid YAML: {err}", (where,)) from err


def _map_text(name: str, base_dir: Path | None) -> tuple[str, str]:
    if name in SHIPPED_MAPS:
        text = resources.files("meter_gateway.maps").joinpath(f"{name}.yaml").read_text()
        return text, f"map {name}"
    path = Path(name)
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if not path.is_file():
        raise ConfigError(
            f"map {name!r}: neither a shipped map ({', '.join(SHIPPED_MAPS)}) nor a file", ("map",)
        )
    return path.read_text(), str(path)


_M = TypeVar("_M", bound=BaseModel)


def _load_model(kind: type[_M], name: str, base_dir: Path | None) -> _M:
    text, where = _map_text(name, base_dir)
    try:
        return kind.model_validate(_read_yaml(text, where))
    except ValidationError as err:
        raise ConfigError(_describe(err, where, None)) from err


def load_map(name: str, base_dir: Path | None = None) -> MapFile:
    """Load a register map (shipped name or path); raises ConfigError naming the field."""
    return _load_model(MapFile, name, base_dir)


def load_sunspec_map(name: str, base_dir: Path | None = None) -> SunSpecMap:
    """Load a SunSpec field map (shipped name or path); raises ConfigError naming the field."""
    return _load_model(SunSpecMap, name, base_dir)


def _describe(err: ValidationError, where: str, raw: Any) -> str:
    """One line per error naming the device (by id when known) and the field."""
    lines = []
    for e in err.errors():
        loc = list(e["loc"])
        label = where
        if len(loc) >= 2 and loc[0] == "devices" and isinstance(loc[1], int):
            index = loc[1]
            device_id = None
            if isinstance(raw, dict) and isinstance(raw.get("devices"), list):
                devices = raw["devices"]
                if index < len(devices) and isinstance(devices[index], dict):
                    device_id = devices[index].get("id")
            label = f"{where}: device {device_id!r}" if device_id else f"{where}: devices[{index}]"
            loc = loc[2:]
        field = ".".join(str(p) for p in loc if not str(p).startswith(("function-after", "tagged")))
        msg = str(e["msg"]).removeprefix("Value error, ")
        lines.append(f"{label} field {field}: {msg}" if field else f"{label}: {msg}")
    return "; ".join(lines)


def parse_config(data: Any, where: str = "devices file") -> GatewayConfig:
    """Validate parsed YAML; raises ConfigError naming the device and the field."""
    if data is None:
        data = {}
    try:
        return GatewayConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_describe(err, where, data)) from err


def resolve(
    config: GatewayConfig, default_site: str, base_dir: Path | None = None
) -> list[ResolvedDevice]:
    """Apply defaults, sites and maps; check ids are unique and required fields are fed."""
    out: list[ResolvedDevice] = []
    seen: set[tuple[str, str]] = set()
    d = config.defaults
    for dev in config.devices:
        site = dev.site_id or default_site
        if (site, dev.id) in seen:
            raise ConfigError(f"device {dev.id!r} field id: declared twice on site {site}", ("id",))
        seen.add((site, dev.id))
        registers = list(dev.registers)
        controls = list(dev.controls)
        if dev.map:
            try:
                mapped = load_map(dev.map, base_dir)
            except ConfigError as err:
                raise ConfigError(f"device {dev.id!r} field map: {err}", ("map",)) from err
            if mapped.kind != dev.kind:
                raise ConfigError(
                    f"device {dev.id!r} field map: map {mapped.name} is for {mapped.kind},"
                    f" not {dev.kind}",
                    ("map",),
                )
            own = {p.field for p in registers}
            registers = [p for p in mapped.registers if p.field not in own] + registers
            declared = {c.target for c in controls}
            controls += [c for c in mapped.controls if c.target not in declared]
        sunspec_map = None
        if dev.sunspec:
            try:
                sunspec_map = load_sunspec_map(dev.sunspec_map, base_dir)
            except ConfigError as err:
                raise ConfigError(f"device {dev.id!r} field sunspec_map: {err}") from err
            if dev.kind not in sunspec_map.kinds:
                raise ConfigError(
                    f"device {dev.id!r} field sunspec_map: {sunspec_map.name} has no {dev.kind}"
                )
        else:
            fed = {p.field for p in registers}
            missing = [f for f in required_fields(dev.kind) if f not in fed]
            if missing:
                raise ConfigError(
                    f"device {dev.id!r} field registers: no register feeds the required"
                    f" {', '.join(missing)} of a {dev.kind}",
                    ("registers",),
                )
        out.append(
            ResolvedDevice(
                id=dev.id,
                site_id=site,
                kind=dev.kind,
                load_kind=dev.load_kind,
                connection=dev.connection,
                unit_id=dev.unit_id,
                poll_interval_s=dev.poll_interval_s or d.poll_interval_s,
                timeout_s=dev.timeout_s or d.timeout_s,
                stale_after_failures=dev.stale_after_failures or d.stale_after_failures,
                max_gap_registers=(
                    d.max_gap_registers if dev.max_gap_registers is None else dev.max_gap_registers
                ),
                max_read_registers=dev.max_read_registers or d.max_read_registers,
                registers=tuple(registers),
                sunspec=dev.sunspec is not None,
                sunspec_base=dev.sunspec_base,
                sunspec_map=sunspec_map,
                controls=tuple(controls),
            )
        )
    return out


def load_devices(path: Path, default_site: str) -> list[ResolvedDevice]:
    """Read, validate and resolve a devices file; raises ConfigError naming device and field."""
    if not path.is_file():
        raise ConfigError(f"devices file {path} does not exist", ("devices_file",))
    data = _read_yaml(path.read_text(), str(path))
    return resolve(parse_config(data, str(path)), default_site, path.parent)
