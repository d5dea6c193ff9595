"""EMA on problems small enough to check by hand (1-hour steps, 10 kWh battery, 5 kW rating)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import cvxpy as cp
import numpy as np
import pytest

from derbus.errors import SolverError
from derbus.tariff import Tariff, TouWindow
from peak_shaving.optimizer import (
    EmaConfig,
    EmaInputs,
    ScheduleOptimizer,
    align_series,
    uncertainty_reserve_kwh,
)

START = datetime(2024, 1, 1, tzinfo=UTC)  # a Monday, 00:00 UTC


def optimizer(steps: int = 2, **changes: Any) -> ScheduleOptimizer:
    base: dict[str, Any] = {
        "horizon_steps": steps, "step_s": 3600, "import_limit_kw": 10.0,
        "export_limit_kw": -10.0, "battery_capacity_kwh": 10.0, "battery_max_charge_kw": 5.0,
        "battery_max_discharge_kw": 5.0, "charge_efficiency": 1.0, "discharge_efficiency": 1.0,
        "soc_min_pct": 0.0, "soc_max_pct": 100.0, "reserve_pct": 0.0, "end_soc_pct": 0.0,
        "wear_cost_per_kwh": 0.0, "change_penalty_per_kwh": 0.1,
    }  # fmt: skip
    return ScheduleOptimizer(EmaConfig(**(base | changes)))


def inputs(
    net: list[float], soc_kwh: float, prior: list[float] | None = None, **kw: Any
) -> EmaInputs:
    return EmaInputs(
        start=START, net_load_kw=np.array(net), soc_kwh=soc_kwh,
        prior_kw=np.array(prior if prior is not None else [0.0] * len(net)), **kw,
    )  # fmt: skip


def approx(values: Any, expected: list[float]) -> None:
    assert np.allclose(values, expected, atol=1e-4), (values, expected)


@pytest.mark.parametrize("solver", ["ECOS", "CLARABEL", "HIGHS"])
def test_import_peak_shaved_with_minimal_discharge(solver: str) -> None:
    # 14 kW then 6 kW against a 10 kW limit: discharge 4 kW for 1 h, nothing else.
    s = optimizer(solver=solver).solve(inputs([14, 6], soc_kwh=5))
    approx(s.battery_p_kw, [-4, 0])
    approx(s.soc_kwh, [5, 1, 1])
    approx(s.pcc_kw, [10, 6])
    assert s.objective == pytest.approx(0.4, abs=1e-4)  # 0.1 per kWh changed x 4 kWh
    assert s.terms["violation"] == pytest.approx(0, abs=1e-4)
    assert s.violation_kwh == 0
    assert s.status == "optimal"
    assert s.solver == solver


def test_efficiencies_and_export_limit() -> None:
    # -14 kW (export over the -10 kW limit) then 14 kW: charge 4 kW (3.6 kWh stored at 90 %),
    # then discharge 4 kW drawing 4 / 0.9 = 4.444 kWh.
    opt = optimizer(charge_efficiency=0.9, discharge_efficiency=0.9, wear_cost_per_kwh=0.01)
    s = opt.solve(inputs([-14, 14], soc_kwh=2))
    approx(s.battery_p_kw, [4, -4])
    approx(s.soc_kwh, [2, 5.6, 5.6 - 4 / 0.9])
    # change 0.1 x 8 kWh + wear 0.01 x 8 kWh
    assert s.objective == pytest.approx(0.88, abs=1e-4)
    assert s.terms["change"] == pytest.approx(0.8, abs=1e-4)
    assert s.terms["wear"] == pytest.approx(0.08, abs=1e-4)


def test_unfixable_limit_gives_a_plan_with_the_violation_reported() -> None:
    # 20 kW for 2 h against 10 kW with only 6 kWh stored: hard limits would be infeasible.
    s = optimizer().solve(inputs([20, 20], soc_kwh=6))
    assert s.status == "optimal"
    assert s.battery_p_kw.sum() == pytest.approx(-6, abs=1e-4)  # the whole store is used
    assert s.violation_kwh == pytest.approx(14, abs=1e-3)  # 20 kWh over, 6 removed
    assert s.violation_steps == 2
    assert s.objective == pytest.approx(14 * 1000 + 0.6, abs=1e-2)
    assert s.meta()["violation_kwh"] == pytest.approx(14, abs=1e-3)


def test_prior_schedule_within_limits_comes_back_unchanged() -> None:
    # Charge 2 kW then discharge 2 kW: inside the limits, SoC within bounds, end target met.
    opt = optimizer(end_soc_pct=50.0, wear_cost_per_kwh=0.01, change_penalty_per_kwh=0.02)
    s = opt.solve(inputs([5, 5], soc_kwh=5, prior=[2, -2]))
    approx(s.battery_p_kw, [2, -2])
    assert s.terms["change"] == pytest.approx(0, abs=1e-5)


def test_end_soc_target_is_applied() -> None:
    # 12 kW then 5 kW: discharge 2 kW, then recharge 2 kW to end at the 5 kWh target.
    opt = optimizer(end_soc_pct=50.0, wear_cost_per_kwh=0.01, change_penalty_per_kwh=0.02)
    s = opt.solve(inputs([12, 5], soc_kwh=5))
    approx(s.battery_p_kw, [-2, 2])
    approx(s.soc_kwh, [5, 3, 5])
    assert s.objective == pytest.approx(0.12, abs=1e-4)  # 4 kWh x (0.02 change + 0.01 wear)


def test_time_of_use_energy_cost() -> None:
    # 0.10 then 0.50 per kWh: store 5 kWh cheap, use it at the peak.
    tariff = Tariff(
        timezone="UTC",
        prices_per_kwh={"off_peak": 0.1, "shoulder": 0.2, "peak": 0.5},
        windows=[TouWindow(period="peak", start_hour=1, end_hour=2, weekdays_only=False)],
        feed_in_per_kwh=0.0,
    )
    opt = optimizer(
        energy_cost=True, tariff=tariff, wear_cost_per_kwh=0.01, change_penalty_per_kwh=0.02
    )
    s = opt.solve(inputs([5, 5], soc_kwh=0))
    approx(s.battery_p_kw, [5, -5])
    assert s.terms["energy"] == pytest.approx(1.0, abs=1e-4)  # 10 kWh x 0.1, then 0 kWh
    assert s.objective == pytest.approx(1.0 + 0.2 + 0.1, abs=1e-4)


def test_demand_charge_flattens_the_peak_above_the_month_peak() -> None:
    tariff = Tariff(demand_charge_per_kw=10.0)
    opt = optimizer(
        import_limit_kw=20.0, demand_charge=True, tariff=tariff, end_soc_pct=50.0,
        end_soc_penalty_per_kwh=20.0, wear_cost_per_kwh=0.01, change_penalty_per_kwh=0.02,
    )  # fmt: skip
    # 8 then 12 kW: charge 2, discharge 2 → peak 10 kW
    s = opt.solve(inputs([8, 12], soc_kwh=5))
    approx(s.battery_p_kw, [2, -2])
    assert s.terms["demand"] == pytest.approx(100, abs=1e-3)
    assert s.objective == pytest.approx(100.12, abs=1e-3)
    # 11 kW already billed this month: only shave down to 11 kW
    s = opt.solve(inputs([8, 12], soc_kwh=5, peak_floor_kw=11.0))
    approx(s.pcc_kw[1:], [11])
    assert s.objective == pytest.approx(110 + 0.06, abs=1e-3)


def test_demand_target_caps_planned_import() -> None:
    s = optimizer(import_limit_kw=20.0, demand_target_kw=10.0).solve(inputs([14, 6], soc_kwh=5))
    approx(s.battery_p_kw, [-4, 0])


def test_soc_outside_bounds_is_not_infeasible() -> None:
    # SoC below the minimum at the start (e.g. after a long outage): still a plan.
    s = optimizer(soc_min_pct=20.0, reserve_pct=20.0, end_soc_pct=20.0).solve(
        inputs([5, 5], soc_kwh=1)
    )
    assert s.status == "optimal"
    assert s.soc_kwh[-1] >= 1 - 1e-6


def test_resolves_reuse_the_compiled_problem() -> None:
    opt = optimizer(steps=4)
    first = opt.solve(inputs([14, 6, 6, 6], soc_kwh=5))
    approx(first.battery_p_kw, [-4, 0, 0, 0])
    second = opt.solve(inputs([6, 6, 13, 6], soc_kwh=5))
    approx(second.battery_p_kw, [0, 0, -3, 0])
    assert opt.problem.is_dpp()
    assert opt.solves == 2


def test_solver_failure_raises_solver_error(monkeypatch: pytest.MonkeyPatch) -> None:
    opt = optimizer()

    def broken(*args: Any, **kwargs: Any) -> float:
        raise cp.error.SolverError("numerical trouble")

    monkeypatch.setattr(opt.problem, "solve", broken)
    with pytest.raises(SolverError, match="numerical trouble"):
        opt.solve(inputs([14, 6], soc_kwh=5))


def test_bad_inputs_raise_solver_error() -> None:
    with pytest.raises(SolverError, match="NaN"):
        optimizer().solve(inputs([float("nan"), 6], soc_kwh=5))
    with pytest.raises(SolverError, match="2 steps"):
        optimizer().solve(inputs([1, 2, 3], soc_kwh=5))


def test_align_series() -> None:
    start = datetime(2024, 1, 1, 1, tzinfo=UTC)
    # a 3-step hourly series starting at 01:00, read on half-hour steps from 01:30
    out = align_series([1, 2, 3], start, 3600, start.replace(minute=30), 6, 1800, fill="zero")
    approx(out, [1, 2, 2, 3, 3, 0])
    # a day of 24 hourly values: beyond its end, the value from one day earlier
    day = list(range(24))
    out = align_series(day, start, 3600, start.replace(hour=23), 3, 3600)
    approx(out, [22, 23, 0])


def test_uncertainty_reserve_is_the_energy_the_later_excess_needs() -> None:
    # p90 net load 12, 8, 15 kW against a 10 kW threshold, 1-hour steps, eta 0.8:
    # after step 0 the 5 kWh excess of step 2 is still ahead (5 / 0.8 = 6.25 kWh stored)
    reserve = uncertainty_reserve_kwh(np.array([12.0, 8.0, 15.0]), 10.0, 3600, 0.8)
    approx(reserve, [6.25, 6.25, 0.0])


def test_per_step_reserve_stops_arbitrage_below_it() -> None:
    # 0.50 then 0.10 per kWh, 5 kWh stored: without a reserve it uses all 5 kWh in the
    # first hour; with 3 kWh asked after each step it spends only 2 kWh
    tariff = Tariff(
        timezone="UTC",
        prices_per_kwh={"off_peak": 0.1, "shoulder": 0.2, "peak": 0.5},
        windows=[TouWindow(period="peak", start_hour=0, end_hour=1, weekdays_only=False)],
        feed_in_per_kwh=0.0,
    )
    opt = optimizer(energy_cost=True, tariff=tariff, change_penalty_per_kwh=0.0)
    approx(opt.solve(inputs([5, 5], soc_kwh=5)).soc_kwh, [5, 0, 0])
    s = opt.solve(inputs([5, 5], soc_kwh=5, reserve_kwh=np.array([3.0, 3.0])))
    approx(s.soc_kwh, [5, 3, 3])
    with pytest.raises(SolverError, match="reserve_kwh"):
        opt.solve(inputs([5, 5], soc_kwh=5, reserve_kwh=np.array([3.0])))
