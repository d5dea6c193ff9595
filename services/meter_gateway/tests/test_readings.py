"""From register blocks to telemetry: scale and scale-factor registers, units, drops, the model's checks."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from derbus.messages import BatteryTelemetry, LoadTelemetry, MeterReading, PvTelemetry
from meter_gateway.device_map import RegisterPoint
from meter_gateway.readings import ReadPoint, build_telemetry, decode_point, decode_points
from meter_gateway.registers import DataType, ReadBlock, encode

T0 = datetime(2026, 6, 1, 12, tzinfo=UTC)


def block(values: list[int], start: int = 0) -> dict[ReadBlock, list[int]]:
    return {ReadBlock("holding", start, len(values)): values}


def point(**kw: object) -> ReadPoint:
    return ReadPoint(RegisterPoint.model_validate({"field": "p_kw", "address": 0, **kw}))


@pytest.mark.parametrize(
    ("kw", "registers", "expected"),
    [
        ({"type": "int16", "unit": "W"}, [0xFC18], -1.0),  # -1000 W
        ({"type": "int32", "unit": "W", "scale": 10}, encode(1234, DataType.INT32), 12.34),
        ({"type": "uint16", "scale": 0.01}, [250], 2.5),  # default unit: the field's (kW)
        (
            {"type": "float32", "unit": "kW", "word_order": "little"},
            encode(3.5, DataType.FLOAT32, "little"),
            3.5,
        ),
        # scale-factor register (SunSpec style): 1234 * 10**-1 W = 0.1234 kW
        ({"type": "int16", "unit": "W", "scale_factor_register": 1}, [1234, 0xFFFF], 0.1234),
        ({"type": "uint16", "unit": "W", "scale_factor_register": 1}, [5, 3], 5.0),
    ],
)
def test_scale_units_and_scale_factor(
    kw: dict[str, object], registers: list[int], expected: float
) -> None:
    value, drop = decode_point(point(**kw), block(registers))
    assert drop is None
    assert value == pytest.approx(expected)


@pytest.mark.parametrize(
    ("kw", "registers", "reason"),
    [
        ({"type": "float32"}, [0x7FC0, 0], "not_finite"),
        ({"type": "float32"}, [0xFF80, 0], "not_finite"),
        ({"type": "int16", "unit": "W", "max": 10}, [20000], "out_of_range"),
        ({"type": "int16", "unit": "W", "min": 0}, [0xFFFF], "out_of_range"),
        ({"type": "int16", "scale_factor_register": 1}, [1, 50], "invalid"),
    ],
)
def test_bad_values_are_dropped_with_a_reason(
    kw: dict[str, object], registers: list[int], reason: str
) -> None:
    value, drop = decode_point(point(**kw), block(registers))
    assert value is None
    assert drop is not None
    assert drop.reason == reason
    assert drop.field == "p_kw"


def test_sunspec_not_implemented_is_absent_not_an_error() -> None:
    rp = ReadPoint(
        RegisterPoint(field="p_kw", address=0, type=DataType.INT16, scale_factor_register=1),
        unimplemented=-32768,
        sf_unimplemented=-32768,
    )
    assert decode_point(rp, block([0x8000, 0])) == (None, None)
    assert decode_point(rp, block([5, 0x8000])) == (None, None)
    nan_point = ReadPoint(
        RegisterPoint(field="p_kw", address=0, type=DataType.FLOAT32), unimplemented=float("nan")
    )
    assert decode_point(nan_point, block([0x7FC0, 0])) == (None, None)


def test_first_present_candidate_wins_and_sign_applies() -> None:
    first = ReadPoint(
        RegisterPoint(field="p_kw", address=0, type=DataType.INT16), unimplemented=-32768
    )
    second = ReadPoint(RegisterPoint(field="p_kw", address=1, type=DataType.INT16), sign=-1)
    values, drops = decode_points([first, second], block([0x8000, 7]))
    assert values == {"p_kw": -7.0}
    assert drops == []
    values, _ = decode_points([first, second], block([3, 7]))
    assert values == {"p_kw": 3.0}


def test_build_each_kind() -> None:
    meter, drops = build_telemetry("meter", {"p_kw": 1.5, "v_l1_v": 230.0}, T0, "gw")
    assert isinstance(meter, MeterReading)
    assert meter.p_kw == 1.5
    assert meter.v_l1_v == 230.0
    pv, _ = build_telemetry("pv", {"generation_kw": 2.0}, T0, "gw")
    assert isinstance(pv, PvTelemetry)
    assert pv.generation_kw == 2.0
    bat, _ = build_telemetry("battery", {"p_kw": -1.0, "soc_pct": 40.0}, T0, "gw")
    assert isinstance(bat, BatteryTelemetry)
    assert bat.soc_pct == 40.0
    load, _ = build_telemetry("load", {"p_kw": 0.7, "on": 1.0}, T0, "gw", load_kind="switchable")
    assert isinstance(load, LoadTelemetry)
    assert load.on is True
    assert load.kind == "switchable"
    assert drops == []


def test_a_refused_optional_field_is_dropped_and_the_rest_published() -> None:
    meter, drops = build_telemetry("meter", {"p_kw": 1.0, "v_l1_v": -5.0}, T0, "gw")
    assert isinstance(meter, MeterReading)
    assert meter.v_l1_v is None
    assert [(d.field, d.reason) for d in drops] == [("v_l1_v", "invalid")]


def test_without_a_required_field_nothing_is_published() -> None:
    msg, drops = build_telemetry("pv", {"generation_kw": -0.5}, T0, "gw")
    assert msg is None
    assert ("generation_kw", "invalid") in [(d.field, d.reason) for d in drops]
    assert ("generation_kw", "missing_required") in [(d.field, d.reason) for d in drops]
    msg, drops = build_telemetry("battery", {"p_kw": 1.0}, T0, "gw")
    assert msg is None
    assert [d.field for d in drops] == ["soc_pct"]
