"""Message models: UTC timestamps, frozen, the sign convention, the setpoint contract fields."""

from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from derbus.messages import (
    BatteryTelemetry,
    MeterReading,
    Priority,
    PvTelemetry,
    SetpointAck,
    SetpointCommand,
    TimeSeries,
    pcc_power_kw,
)
from derbus.testing import time_series

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def test_naive_timestamp_is_rejected() -> None:
    with pytest.raises(ValidationError, match="timezone-aware"):
        MeterReading(ts=datetime(2026, 6, 1, 12, 0), source="m", p_kw=1.0)


def test_timestamps_are_normalised_to_utc_and_written_with_z() -> None:
    cet = timezone(timedelta(hours=2))
    reading = MeterReading(ts=datetime(2026, 6, 1, 14, 0, tzinfo=cet), source="m", p_kw=1.0)
    assert reading.ts == T0
    assert reading.ts.tzinfo == UTC
    assert '"ts":"2026-06-01T12:00:00Z"' in reading.to_json_bytes().decode()


def test_messages_are_frozen_and_reject_unknown_fields() -> None:
    reading = MeterReading(ts=T0, source="m", p_kw=1.0)
    with pytest.raises(ValidationError):
        reading.p_kw = 2.0  # type: ignore[misc]
    with pytest.raises(ValidationError, match="extra"):
        MeterReading.model_validate({"ts": T0, "source": "m", "p_kw": 1.0, "p_mw": 0.001})


def test_round_trip_through_json() -> None:
    battery = BatteryTelemetry(ts=T0, source="sim", p_kw=-2.5, soc_pct=55.0, capacity_kwh=10.0)
    assert BatteryTelemetry.from_json_bytes(battery.to_json_bytes()) == battery


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_telemetry_is_rejected(bad: float) -> None:
    with pytest.raises(ValidationError, match="finite"):
        MeterReading(ts=T0, source="m", p_kw=bad)


def test_sign_convention_load_referenced() -> None:
    # 3 kW load, 5 kW PV, battery charging 1 kW: the site exports 1 kW.
    assert pcc_power_kw(load_p_kw=3.0, pv_generation_kw=5.0, battery_p_kw=1.0) == -1.0
    # 3 kW load, no PV, battery discharging 2 kW: the site imports 1 kW.
    assert pcc_power_kw(load_p_kw=3.0, pv_generation_kw=0.0, battery_p_kw=-2.0) == 1.0
    # PV generation is positive in telemetry and cannot be negative.
    with pytest.raises(ValidationError):
        PvTelemetry(ts=T0, source="pv", generation_kw=-1.0)


def test_setpoint_contract_fields_and_unit_check() -> None:
    cmd = SetpointCommand(
        ts=T0,
        source="ps",
        target="battery_p_kw",
        value=-3.0,
        unit="kW",
        ttl_s=30,
        priority=Priority.SITE_OPTIMISER,
    )
    assert cmd.setpoint_id
    assert cmd.expires_at == T0 + timedelta(seconds=30)
    with pytest.raises(ValidationError, match="does not match"):
        SetpointCommand(ts=T0, source="ps", target="battery_p_kw", value=1, unit="%", ttl_s=30)
    with pytest.raises(ValidationError):
        SetpointCommand(ts=T0, source="ps", target="battery_p_kw", value=1, unit="kW", ttl_s=0)


def test_priority_order() -> None:
    ranks = [
        p.rank
        for p in (Priority.MANUAL, Priority.SITE_OPTIMISER, Priority.GRID_OPERATOR, Priority.SAFETY)
    ]
    assert ranks == sorted(ranks)
    assert len(set(ranks)) == 4


def test_ack_statuses() -> None:
    for status in ("accepted", "rejected", "expired", "superseded"):
        SetpointAck(ts=T0, source="sim", setpoint_id="x", status=status)
    with pytest.raises(ValidationError):
        SetpointAck(ts=T0, source="sim", setpoint_id="x", status="maybe")  # type: ignore[arg-type]


def _series(values: list[float], step_s: int = 900, **quantiles: list[float]) -> TimeSeries:
    return time_series(values, T0, source="f", step_s=step_s, quantiles=quantiles or None)


def test_time_series_lookup_and_quantile_length() -> None:
    ts = _series([1.0, 2.0, 3.0], p10=[0.5, 1.5, 2.5])
    assert ts.value_at(T0 + timedelta(minutes=20)) == 2.0
    assert ts.value_at(T0 - timedelta(seconds=1)) is None
    assert ts.value_at(T0 + timedelta(minutes=45)) is None
    assert ts.times()[2] == T0 + timedelta(minutes=30)
    with pytest.raises(ValidationError, match="quantile p90"):
        _series([1.0, 2.0], p90=[1.0])


def test_on_grid_point_takes_the_interval_containing_each_start() -> None:
    ts = _series([1.0, 2.0, 3.0])
    assert ts.on_grid(T0 - timedelta(seconds=900), 900, 5) == [0.0, 1.0, 2.0, 3.0, 0.0]
    assert ts.on_grid(T0 + timedelta(seconds=600), 600, 3) == [1.0, 2.0, 3.0]
    # outside a short series, `daily` holds the nearest end
    assert ts.on_grid(T0 - timedelta(seconds=900), 900, 5, outside="daily") == [1, 1, 2, 3, 3]


def test_on_grid_daily_repeats_whole_days() -> None:
    day = _series([float(h) for h in range(24)], step_s=3600)
    assert day.on_grid(T0 + timedelta(hours=23), 3600, 3, outside="daily") == [23.0, 0.0, 1.0]
    assert day.on_grid(T0 - timedelta(hours=26), 3600, 2, outside="daily") == [22.0, 23.0]
    assert day.on_grid(T0 + timedelta(hours=23), 3600, 3) == [23.0, 0.0, 0.0]


def test_on_grid_mean_weights_by_time_and_conserves_energy() -> None:
    ts = _series([1.0, 2.0, 3.0])
    assert ts.on_grid(T0, 1800, 2, how="mean") == [1.5, 1.5]
    assert ts.on_grid(T0, 1800, 2, how="mean", outside="daily") == [1.5, 3.0]
    assert ts.on_grid(T0 + timedelta(seconds=450), 1800, 1, how="mean") == [2.0]
    shifted = ts.on_grid(T0 - timedelta(seconds=100), 700, 5, how="mean")
    assert sum(shifted) * 700 == pytest.approx((1.0 + 2.0 + 3.0) * 900)
    assert ts.on_grid(T0, 300, 6, how="mean") == [1.0, 1.0, 1.0, 2.0, 2.0, 2.0]


def test_on_grid_quantile_falls_back_to_values() -> None:
    ts = _series([1.0, 2.0], p90=[4.0, 5.0])
    assert ts.on_grid(T0, 900, 2, quantile="p90") == [4.0, 5.0]
    assert ts.on_grid(T0, 1800, 1, how="mean", quantile="p90") == [4.5]
    assert ts.on_grid(T0, 900, 2, quantile="p10") == [1.0, 2.0]
    assert ts.on_grid(T0, 900, 2, quantile=None) == [1.0, 2.0]
    assert ts.on_grid(T0, 900, 0) == []
    with pytest.raises(ValueError, match="step_s > 0"):
        ts.on_grid(T0, 0, 2)
