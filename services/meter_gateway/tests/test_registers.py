"""Decoding every data type in every word/byte order, encoding back, units and read grouping."""

from __future__ import annotations

import math

import pytest

from meter_gateway.registers import (
    DataType,
    ReadBlock,
    Span,
    decode,
    encode,
    field_unit,
    plan_reads,
    unit_factor,
)


@pytest.mark.parametrize(
    ("registers", "dtype", "word_order", "byte_order", "expected"),
    [
        ([0x0001], DataType.INT16, "big", "big", 1),
        ([0xFFFF], DataType.INT16, "big", "big", -1),
        ([0x8000], DataType.INT16, "big", "big", -32768),
        ([0xFFFF], DataType.UINT16, "big", "big", 65535),
        ([0x3412], DataType.UINT16, "big", "little", 0x1234),
        ([0x0001, 0x0002], DataType.UINT32, "big", "big", 0x00010002),
        ([0x0002, 0x0001], DataType.UINT32, "little", "big", 0x00010002),
        ([0x0100, 0x0200], DataType.UINT32, "big", "little", 0x00010002),
        ([0x0200, 0x0100], DataType.UINT32, "little", "little", 0x00010002),
        ([0xFFFF, 0xFFFE], DataType.INT32, "big", "big", -2),
        ([0xFFFE, 0xFFFF], DataType.INT32, "little", "big", -2),
        ([0x4049, 0x0FDB], DataType.FLOAT32, "big", "big", pytest.approx(3.14159274)),
        ([0x0FDB, 0x4049], DataType.FLOAT32, "little", "big", pytest.approx(3.14159274)),
        ([0x4940, 0xDB0F], DataType.FLOAT32, "big", "little", pytest.approx(3.14159274)),
        ([0xDB0F, 0x4940], DataType.FLOAT32, "little", "little", pytest.approx(3.14159274)),
        ([0, 0, 0, 7], DataType.UINT64, "big", "big", 7),
        ([0xFFFF, 0xFFFF, 0xFFFF, 0xFFF9], DataType.INT64, "big", "big", -7),
        ([0x4000, 0, 0, 0], DataType.FLOAT64, "big", "big", 2.0),
        ([0x6465, 0x7262, 0x7573, 0x0000], DataType.STRING, "big", "big", "derbus"),
        ([0x6564, 0x6272, 0x7375, 0x0000], DataType.STRING, "big", "little", "derbus"),
    ],
)
def test_decode(
    registers: list[int], dtype: DataType, word_order: str, byte_order: str, expected: object
) -> None:
    assert decode(registers, dtype, word_order, byte_order) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("dtype", [t for t in DataType if t is not DataType.STRING])
@pytest.mark.parametrize("word_order", ["big", "little"])
@pytest.mark.parametrize("byte_order", ["big", "little"])
def test_encode_decode_round_trip(dtype: DataType, word_order: str, byte_order: str) -> None:
    value = -123 if dtype.value.startswith(("int", "float")) else 12345
    regs = encode(value, dtype, word_order, byte_order)  # type: ignore[arg-type]
    assert decode(regs, dtype, word_order, byte_order) == value  # type: ignore[arg-type]


def test_float_nan_decodes_as_nan_for_the_caller_to_drop() -> None:
    assert math.isnan(float(decode([0x7FC0, 0x0000], DataType.FLOAT32)))
    assert math.isinf(float(decode([0x7F80, 0x0000], DataType.FLOAT32)))


def test_encode_refuses_what_does_not_fit() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        encode(70000, DataType.UINT16)
    with pytest.raises(ValueError, match="does not fit"):
        encode(-1, DataType.UINT32)
    with pytest.raises(ValueError, match="longer than"):
        encode("too long text", DataType.STRING, length=2)
    assert encode(2.6, DataType.INT16) == [3]
    assert encode("ab", DataType.STRING, length=2) == [0x6162, 0]


def test_decode_checks_the_register_count() -> None:
    with pytest.raises(ValueError, match="needs 2 registers"):
        decode([1], DataType.INT32)


@pytest.mark.parametrize(
    ("src", "dst", "factor"),
    [
        ("W", "kW", 0.001),
        ("kW", "kW", 1.0),
        ("Wh", "kWh", 0.001),
        ("MWh", "kWh", 1000.0),
        ("var", "kvar", 0.001),
        ("kV", "V", 1000.0),
        ("%", "%", 1.0),
    ],
)
def test_unit_factor(src: str, dst: str, factor: float) -> None:
    assert unit_factor(src, dst) == pytest.approx(factor)


def test_unit_factor_refuses_other_dimensions_and_unknown_units() -> None:
    with pytest.raises(ValueError, match="cannot convert W"):
        unit_factor("W", "V")
    with pytest.raises(ValueError, match="unknown unit 'furlong'"):
        unit_factor("furlong", "kW")


@pytest.mark.parametrize(
    ("field", "unit"),
    [
        ("p_kw", "kW"),
        ("q_kvar", "kvar"),
        ("e_import_kwh", "kWh"),
        ("soc_pct", "%"),
        ("v_l1_v", "V"),
        ("f_hz", "Hz"),
        ("temp_c", "C"),
        ("irradiance_w_m2", "W/m2"),
        ("on", "bool"),
        ("cycles", "1"),
    ],
)
def test_field_unit_from_the_name(field: str, unit: str) -> None:
    assert field_unit(field) == unit


H, IN = "holding", "input"


@pytest.mark.parametrize(
    ("spans", "max_registers", "max_gap", "expected"),
    [
        ([], 125, 10, []),
        ([Span(H, 0, 2)], 125, 10, [ReadBlock(H, 0, 2)]),
        # adjacent and overlapping spans merge
        ([Span(H, 0, 2), Span(H, 2, 2), Span(H, 3, 1)], 125, 0, [ReadBlock(H, 0, 4)]),
        # a hole within max_gap is read through, a bigger one splits
        ([Span(H, 0, 2), Span(H, 7, 2)], 125, 5, [ReadBlock(H, 0, 9)]),
        ([Span(H, 0, 2), Span(H, 8, 2)], 125, 5, [ReadBlock(H, 0, 2), ReadBlock(H, 8, 2)]),
        # order does not matter, duplicates collapse
        ([Span(H, 10, 1), Span(H, 0, 1), Span(H, 10, 1)], 125, 10, [ReadBlock(H, 0, 11)]),
        # the request size limit splits
        ([Span(H, 0, 2), Span(H, 100, 30)], 125, 200, [ReadBlock(H, 0, 2), ReadBlock(H, 100, 30)]),
        (
            [Span(H, i, 1) for i in range(250)],
            125,
            0,
            [ReadBlock(H, 0, 125), ReadBlock(H, 125, 125)],
        ),
        # holding and input registers are never mixed
        (
            [Span(IN, 0, 2), Span(H, 0, 2), Span(IN, 2, 2)],
            125,
            0,
            [ReadBlock(H, 0, 2), ReadBlock(IN, 0, 4)],
        ),
    ],
)
def test_plan_reads_groups_into_fewest_requests(
    spans: list[Span], max_registers: int, max_gap: int, expected: list[ReadBlock]
) -> None:
    blocks = plan_reads(spans, max_registers, max_gap)
    assert blocks == expected
    for span in spans:
        assert any(b.covers(span) for b in blocks)


def test_plan_reads_refuses_a_point_longer_than_a_request() -> None:
    with pytest.raises(ValueError, match="spans 20 registers"):
        plan_reads([Span(H, 0, 20)], max_registers=10)


def test_block_slice() -> None:
    block = ReadBlock(H, 100, 5)
    assert block.slice([1, 2, 3, 4, 5], Span(H, 102, 2)) == [3, 4]
