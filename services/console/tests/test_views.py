"""Decisions, chart columns and the feeder drawing: small cases checked by hand."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from console.views import FeederDrawing, decide, series_columns, series_mean, voltage_colour
from derbus.messages import TimeSeries
from derbus.tariff import Tariff
from derbus.testing import time_series

T0 = datetime(2026, 6, 1, 0, 0, tzinfo=UTC)
FLAT = Tariff(
    windows=[],
    prices_per_kwh={"off_peak": 0.2, "shoulder": 0.2, "peak": 0.2},
    feed_in_per_kwh=0.05,
    demand_charge_per_kw=10.0,
)


def series(values: list[float], kind: str = "forecast", start: datetime = T0) -> TimeSeries:
    return time_series(values, start, kind=kind, quantity="p_kw", source="t")  # type: ignore[arg-type]


def test_mean_over_a_span_weights_by_time() -> None:
    s = series([1.0, 3.0])
    assert series_mean(s, T0, T0 + timedelta(minutes=30)) == 2.0
    assert series_mean(s, T0 + timedelta(minutes=10), T0 + timedelta(minutes=20)) == pytest.approx(
        (5 * 1.0 + 5 * 3.0) / 10
    )
    assert series_mean(s, T0 + timedelta(hours=2), T0 + timedelta(hours=3)) is None


def test_each_hour_gets_its_action_and_the_bill_is_counted_by_hand() -> None:
    pv = series([0.0] * 4 + [3.0] * 4 + [0.0] * 88)  # hour 1: 3 kW of PV
    battery = [2.0] * 4 + [1.0] * 4 + [-1.0] * 4 + [-0.5] * 4 + [0.0] * 80
    load_2 = series([1.0] * 12 + [0.0] * 4 + [1.0] * 80)  # hour 3: no load
    got = decide(
        start=T0 + timedelta(minutes=7),
        load=load_2,
        pv=pv,
        schedule=series(battery, "schedule"),
        tariff=FLAT,
        month_peak_kw=2.5,
    )
    assert got is not None
    assert got.start == T0
    hours = got.hours
    assert len(hours) == 24
    # hour 0: load 1, charge 2 -> buy 3 from the grid; hour 1: PV 3 - load 1 = -2, charge 1 -> -1
    assert [(h.net_load_kw, h.battery_kw, h.grid_kw) for h in hours[:4]] == [
        (1.0, 2.0, 3.0),
        (-2.0, 1.0, -1.0),
        (1.0, -1.0, 0.0),
        (0.0, -0.5, -0.5),
    ]
    assert [h.action for h in hours[:5]] == ["store", "store", "use stored", "sell", "buy"]
    assert "store 2.0 kWh in the battery from the grid at 0.20/kWh" in hours[0].words
    assert "from PV surplus" in hours[1].words
    # energy with: 3 h x ... = 0.2*3 - 0.05*1 + 0 - 0.05*0.5 + 20 h * 0.2 * 1 kW = 0.6-0.05-0.025+4
    assert got.energy_with_battery == pytest.approx(4.52, abs=0.01)
    # without: 0.2 + (-2 * 0.05) + 0.2 + 0 + 4.0 = 4.3
    assert got.energy_without_battery == pytest.approx(4.30, abs=0.01)
    # the grid peaks at 3 kW > 2.5 kW month peak: 0.5 kW x 10 demand charge
    assert got.demand_with_battery == pytest.approx(5.0)
    assert got.demand_without_battery == 0.0
    assert got.saving == pytest.approx(4.30 - 9.52, abs=0.01)
    assert any("costs" in line for line in got.summary)


def test_no_forecast_no_decisions_and_no_plan_is_all_hold_or_buy() -> None:
    assert (
        decide(start=T0, load=None, pv=None, schedule=None, tariff=FLAT, month_peak_kw=None) is None
    )
    got = decide(
        start=T0,
        load=series([0.0] * 4 + [1.0] * 92),
        pv=None,
        schedule=None,
        tariff=FLAT,
        month_peak_kw=None,
    )
    assert got is not None
    assert got.hours[0].action == "hold"
    assert got.hours[1].action == "buy"
    assert got.summary[0].startswith("There is no battery plan yet")


def test_series_columns_carry_the_band() -> None:
    s = series([1.0, 2.0]).with_changes(
        quantiles={"p10": [0.5, 1.0], "p50": [1.0, 2.0], "p90": [2.0, 3.0]}
    )
    cols = series_columns(s)
    assert cols["low"] == [0.5, 1.0]
    assert cols["high"] == [2.0, 3.0]
    assert cols["t"][1] - cols["t"][0] == 900
    assert series_columns(None)["t"] == []


@pytest.mark.parametrize(
    ("v_pu", "colour"),
    [
        (None, "#9e9e9e"),
        (0.9, "#1565c0"),
        (0.95, "#4285f4"),
        (1.0, "#2e7d32"),
        (1.05, "#ef6c00"),
        (1.06, "#c62828"),
        (float("nan"), "#9e9e9e"),
    ],
)
def test_voltage_colours(v_pu: float | None, colour: str) -> None:
    assert voltage_colour(v_pu) == colour


def test_the_ieee123_drawing_fits_its_box() -> None:
    drawing = FeederDrawing.load("ieee123")
    assert drawing is not None
    assert len(drawing.xy) == 129
    assert len(drawing.branches) == 130
    assert set(drawing.pv_bus.values()) <= set(drawing.xy)
    geometry = drawing.svg(900, 600, 20)
    xs = [p[0] for p in geometry["buses"].values()]
    ys = [p[1] for p in geometry["buses"].values()]
    assert min(xs) >= 20
    assert max(xs) <= 880
    assert min(ys) >= 20
    assert max(ys) <= 580
    assert FeederDrawing.load("no-such-feeder") is None


def test_dead_letters_are_read_from_a_services_metrics() -> None:
    from console.apis import invalid_total

    text = (
        "# HELP derbus_messages_invalid_total Payloads that failed\n"
        "# TYPE derbus_messages_invalid_total counter\n"
        'derbus_messages_invalid_total{topic="telemetry.meter"} 3.0\n'
        'derbus_messages_invalid_total{topic="control.set"} 2.0\n'
        'derbus_messages_invalid_created{topic="control.set"} 1.7e9\n'
        "# TYPE derbus_messages_in_total counter\n"
        'derbus_messages_in_total{topic="telemetry.meter"} 40.0\n'
    )
    assert invalid_total(text) == 5.0
    assert invalid_total("") == 0.0
