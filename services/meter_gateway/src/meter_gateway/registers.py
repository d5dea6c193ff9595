"""Register decoding/encoding (data types, word and byte order, scale), unit conversion, read grouping."""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

MAX_READ_REGISTERS = 125
"""The Modbus limit for one read of holding/input registers."""


class DataType(StrEnum):
    """How a register value is encoded."""

    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    INT64 = "int64"
    UINT64 = "uint64"
    FLOAT32 = "float32"
    FLOAT64 = "float64"
    STRING = "string"


Order = Literal["big", "little"]
Function = Literal["holding", "input"]

_STRUCT = {
    DataType.INT16: ">h",
    DataType.UINT16: ">H",
    DataType.INT32: ">i",
    DataType.UINT32: ">I",
    DataType.INT64: ">q",
    DataType.UINT64: ">Q",
    DataType.FLOAT32: ">f",
    DataType.FLOAT64: ">d",
}
_WORDS = {
    DataType.INT16: 1,
    DataType.UINT16: 1,
    DataType.INT32: 2,
    DataType.UINT32: 2,
    DataType.INT64: 4,
    DataType.UINT64: 4,
    DataType.FLOAT32: 2,
    DataType.FLOAT64: 4,
}


def register_count(dtype: DataType, length: int | None = None) -> int:
    """Number of 16-bit registers a value of `dtype` occupies (`length` registers for strings)."""
    if dtype is DataType.STRING:
        if not length or length < 1:
            raise ValueError("a string needs a length in registers (>= 1)")
        return length
    return _WORDS[dtype]


def _to_bytes(registers: list[int], word_order: Order, byte_order: Order) -> bytes:
    words = list(reversed(registers)) if word_order == "little" else list(registers)
    out = bytearray()
    for word in words:
        if not 0 <= word <= 0xFFFF:
            raise ValueError(f"register value {word} is not a 16-bit word")
        out += word.to_bytes(2, byte_order)
    return bytes(out)


def _from_bytes(data: bytes, word_order: Order, byte_order: Order) -> list[int]:
    words = [int.from_bytes(data[i : i + 2], byte_order) for i in range(0, len(data), 2)]
    return list(reversed(words)) if word_order == "little" else words


def decode(
    registers: list[int],
    dtype: DataType,
    word_order: Order = "big",
    byte_order: Order = "big",
) -> int | float | str:
    """Decode raw registers into a number or text.

    Args:
        registers: the raw 16-bit words as read, lowest address first.
        dtype: the encoding.
        word_order: `big` = most significant word at the lowest address (Modbus default).
        byte_order: `big` = most significant byte first inside each word (Modbus default).

    Returns:
        An int for integer types, a float for float types (may be NaN/inf: the caller checks),
        text for strings (trailing NULs and spaces removed).
    """
    expected = register_count(dtype, len(registers) if dtype is DataType.STRING else None)
    if len(registers) != expected:
        raise ValueError(f"{dtype} needs {expected} registers, got {len(registers)}")
    if dtype is DataType.STRING:
        # Text keeps its register order; only the byte order inside a word can be swapped.
        raw = _to_bytes(registers, "big", byte_order)
        return raw.split(b"\x00", 1)[0].decode("latin-1").rstrip()
    value: int | float = struct.unpack(
        _STRUCT[dtype], _to_bytes(registers, word_order, byte_order)
    )[0]
    return value


def encode(
    value: float | int | str,
    dtype: DataType,
    word_order: Order = "big",
    byte_order: Order = "big",
    length: int | None = None,
) -> list[int]:
    """Encode a value into registers (the inverse of `decode`).

    Integers are rounded to the nearest whole number; a value outside the type's range raises
    ValueError (never wraps around).
    """
    if dtype is DataType.STRING:
        count = register_count(dtype, length)
        raw = str(value).encode("latin-1")
        if len(raw) > 2 * count:
            raise ValueError(f"text {value!r} longer than {count} registers")
        return _from_bytes(raw.ljust(2 * count, b"\x00"), "big", byte_order)
    if isinstance(value, str):
        raise ValueError(f"{dtype} cannot hold text {value!r}")
    fmt = _STRUCT[dtype]
    number: int | float
    if dtype in (DataType.FLOAT32, DataType.FLOAT64):
        number = float(value)
    else:
        if not math.isfinite(value):
            raise ValueError(f"{value} cannot be written as {dtype}")
        number = round(value)
    try:
        data = struct.pack(fmt, number)
    except (struct.error, OverflowError) as err:
        raise ValueError(f"{value} does not fit in {dtype}") from err
    return _from_bytes(data, word_order, byte_order)


# --- units ---------------------------------------------------------------------------------------

_UNIT_BASE: dict[str, tuple[str, float]] = {
    # unit: (dimension, factor to the dimension's base unit)
    "W": ("power", 1.0),
    "kW": ("power", 1e3),
    "MW": ("power", 1e6),
    "var": ("reactive", 1.0),
    "kvar": ("reactive", 1e3),
    "VA": ("apparent", 1.0),
    "kVA": ("apparent", 1e3),
    "Wh": ("energy", 1.0),
    "kWh": ("energy", 1e3),
    "MWh": ("energy", 1e6),
    "V": ("voltage", 1.0),
    "kV": ("voltage", 1e3),
    "A": ("current", 1.0),
    "Hz": ("frequency", 1.0),
    "%": ("percent", 1.0),
    "C": ("temperature", 1.0),
    "W/m2": ("irradiance", 1.0),
    "Ah": ("charge", 1.0),
    "bool": ("bool", 1.0),
    "1": ("count", 1.0),
}
UNITS: tuple[str, ...] = tuple(_UNIT_BASE)

_SUFFIX_UNIT: tuple[tuple[str, str], ...] = (
    ("_w_m2", "W/m2"),
    ("_kvar", "kvar"),
    ("_kwh", "kWh"),
    ("_kw", "kW"),
    ("_pct", "%"),
    ("_hz", "Hz"),
    ("_v", "V"),
    ("_c", "C"),
)


def field_unit(field: str) -> str:
    """The unit a telemetry field carries, from the suffix of its name (`p_kw` → kW)."""
    for suffix, unit in _SUFFIX_UNIT:
        if field.endswith(suffix):
            return unit
    if field == "on":
        return "bool"
    return "1"


def unit_factor(from_unit: str, to_unit: str) -> float:
    """Multiplier converting a value in `from_unit` into `to_unit` (e.g. W → kW: 0.001).

    Raises:
        ValueError: unknown units or different dimensions (W into V).
    """
    if from_unit not in _UNIT_BASE or to_unit not in _UNIT_BASE:
        unknown = from_unit if from_unit not in _UNIT_BASE else to_unit
        raise ValueError(f"unknown unit {unknown!r}; known: {', '.join(UNITS)}")
    dim_from, f_from = _UNIT_BASE[from_unit]
    dim_to, f_to = _UNIT_BASE[to_unit]
    if dim_from != dim_to:
        raise ValueError(f"cannot convert {from_unit} ({dim_from}) into {to_unit} ({dim_to})")
    return f_from / f_to


# --- grouping reads ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Span:
    """Registers one point needs: function, first address, count."""

    function: Function
    address: int
    count: int

    @property
    def end(self) -> int:
        """One past the last address."""
        return self.address + self.count


@dataclass(frozen=True)
class ReadBlock:
    """One Modbus read request covering several points."""

    function: Function
    address: int
    count: int

    def covers(self, span: Span) -> bool:
        """Whether the block includes every register of `span`."""
        return (
            span.function == self.function
            and span.address >= self.address
            and span.end <= self.address + self.count
        )

    def slice(self, registers: list[int], span: Span) -> list[int]:
        """The registers of `span` out of this block's response."""
        start = span.address - self.address
        return registers[start : start + span.count]


def plan_reads(
    spans: list[Span], max_registers: int = MAX_READ_REGISTERS, max_gap: int = 10
) -> list[ReadBlock]:
    """Group point spans into the fewest read requests.

    Spans of the same function are merged when the hole between them is at most `max_gap`
    registers (holes are read and ignored) and the block stays within `max_registers`.
    Overlapping and duplicate spans are fine. Blocks come out sorted by function and address.

    Raises:
        ValueError: a single span longer than `max_registers`.
    """
    if max_registers < 1 or max_registers > MAX_READ_REGISTERS:
        raise ValueError(f"max_registers must be within 1..{MAX_READ_REGISTERS}")
    blocks: list[ReadBlock] = []
    functions: tuple[Function, ...] = ("holding", "input")
    for function in functions:
        ordered = sorted(
            (s for s in spans if s.function == function), key=lambda s: (s.address, s.count)
        )
        start = end = -1
        for span in ordered:
            if span.count > max_registers:
                raise ValueError(
                    f"a point at {span.address} spans {span.count} registers (> {max_registers})"
                )
            if start < 0:
                start, end = span.address, span.end
                continue
            new_end = max(end, span.end)
            if span.address - end <= max_gap and new_end - start <= max_registers:
                end = new_end
                continue
            blocks.append(ReadBlock(function, start, end - start))
            start, end = span.address, span.end
        if start >= 0:
            blocks.append(ReadBlock(function, start, end - start))
    return blocks
