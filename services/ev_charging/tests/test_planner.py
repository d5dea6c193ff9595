"""Smart charging on small hand-checkable cases (1-hour steps: kW and kWh are the same numbers)."""

from __future__ import annotations

import pytest

from derbus.messages import ChargingMode
from ev_charging.planner import PlanInput, SessionMeter, headroom_kw, plan_session


def case(
    mode: ChargingMode,
    net: list[float],
    price: list[float],
    need: float,
    depart: int | None = None,
    limit: float | None = None,
    max_kw: float = 11.0,
    min_kw: float = 1.4,
) -> PlanInput:
    return PlanInput(
        step_s=3600,
        net_base_kw=net,
        price_per_kwh=price,
        energy_need_kwh=need,
        departure_steps=depart,
        max_kw=max_kw,
        min_kw=min_kw,
        import_limit_kw=limit,
        mode=mode,
    )


def test_pv_mode_takes_the_surplus_then_tops_up_in_the_cheapest_hour() -> None:
    # surplus 5 and 2 kW in hours 0-1 (7 kWh); need 10: 3 kWh more from the grid, cheapest first
    # prices 0.10, 0.10, 0.30, 0.20: hour 0 (earliest of the cheapest) has 11 - 5 = 6 kW room
    plan = plan_session(case("pv", [-5, -2, 1, 1], [0.10, 0.10, 0.30, 0.20], need=10))
    assert plan.p_kw == pytest.approx([8, 2, 0, 0])
    assert plan.planned_kwh == pytest.approx(10)
    assert plan.pv_kwh == pytest.approx(7)
    assert plan.cost == pytest.approx(3 * 0.10)
    assert plan.meets_need


def test_pv_mode_ignores_a_surplus_below_the_minimum_power() -> None:
    plan = plan_session(case("pv", [-1.0, -3.0], [0.2, 0.2], need=2, min_kw=1.4))
    # hour 0: 1 kW surplus < 1.4 kW → 0; hour 1: 3 kW surplus, but only 2 kWh are needed
    assert plan.p_kw == pytest.approx([0, 2])
    assert plan.pv_kwh == pytest.approx(2)
    assert plan.cost == 0


def test_minpv_charges_at_least_the_minimum() -> None:
    plan = plan_session(case("minpv", [1.0, -4.0, 2.0], [0.3, 0.3, 0.3], need=20, min_kw=1.4))
    # min 1.4, surplus 4 in hour 1, min 1.4: 6.8 kWh; 13.2 kWh short → grid top-up, all 0.3,
    # earliest first: hour 0 to 11 kW (+9.6), hour 1 to 7.6 (+3.6)
    assert plan.p_kw == pytest.approx([11.0, 7.6, 1.4])
    assert plan.pv_kwh == pytest.approx(4.0)
    assert plan.meets_need


def test_import_limit_bounds_every_hour() -> None:
    inp = case("now", [3.0, 8.0, 12.0], [0.1, 0.1, 0.1], need=30, limit=10.0)
    assert headroom_kw(inp) == pytest.approx([7.0, 2.0, 0.0])
    plan = plan_session(inp)
    assert plan.p_kw == pytest.approx([7.0, 2.0, 0.0])
    assert plan.planned_kwh == pytest.approx(9.0)
    assert not plan.meets_need


def test_nothing_after_departure_and_need_met_early() -> None:
    plan = plan_session(case("now", [0, 0, 0, 0], [0.1] * 4, need=15, depart=2))
    assert plan.p_kw == pytest.approx([11, 4, 0, 0])
    plan = plan_session(case("pv", [-9, -9, -9], [0.1] * 3, need=50, depart=1))
    # 9 kW of surplus plus a 2 kW grid top-up fill hour 0; 11 of 50 kWh before leaving
    assert plan.p_kw == pytest.approx([11, 0, 0])
    assert plan.pv_kwh == pytest.approx(9)
    assert plan.cost == pytest.approx(2 * 0.1)
    assert not plan.meets_need


def test_a_top_up_below_minimum_is_raised_to_the_minimum() -> None:
    # no surplus; need 0.5 kWh: 0.5 kW < 1.4 kW minimum → 1.4 kW in the cheapest hour
    plan = plan_session(case("pv", [0.5, 0.5], [0.3, 0.1], need=0.5))
    assert plan.p_kw == pytest.approx([0, 1.4])
    assert plan.cost == pytest.approx(1.4 * 0.1)


def test_off_plans_nothing() -> None:
    plan = plan_session(case("off", [-5, -5], [0.1, 0.1], need=5))
    assert plan.p_kw == [0, 0]
    assert not plan.meets_need


def test_session_meter_splits_pv_and_grid() -> None:
    meter = SessionMeter()
    meter.add(2.0, pcc_kw=-1.0, site_ev_kw=4.0, price_per_kwh=0.3)  # exporting: all PV
    meter.add(2.0, pcc_kw=1.0, site_ev_kw=4.0, price_per_kwh=0.3)  # 1 of 4 kW imported
    meter.add(1.0, pcc_kw=None, site_ev_kw=4.0, price_per_kwh=0.2)  # no PCC: grid
    assert meter.energy_kwh == pytest.approx(5.0)
    assert meter.grid_kwh == pytest.approx(0.5 + 1.0)
    assert meter.pv_kwh == pytest.approx(3.5)
    assert meter.cost == pytest.approx(0.5 * 0.3 + 1.0 * 0.2)
    assert meter.pv_share_pct == pytest.approx(70.0)
