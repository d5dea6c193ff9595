"""Settlement-period balance: integration, period rollover, 15-minute periods, restart mid-hour."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from load_manager.balance import BalanceIntegrator, PeriodTotals, period_bounds
from load_manager.kpi import DayKpis, KpiTracker, period_figures

T0 = datetime(2026, 6, 1, 10, 0, tzinfo=UTC)


def feed(integ: BalanceIntegrator, rows: list[tuple[float, float]]) -> list[PeriodTotals]:
    closed: list[PeriodTotals] = []
    for t_s, p_kw in rows:
        closed += integ.add_meter(T0 + timedelta(seconds=t_s), p_kw)
    return closed


@pytest.mark.parametrize(
    ("when", "period_s", "tz", "start"),
    [
        (T0 + timedelta(minutes=59), 3600, "Europe/Madrid", T0),
        (T0 + timedelta(minutes=16), 900, "Europe/Madrid", T0 + timedelta(minutes=15)),
        # India is UTC+5:30: its hours start at :30 UTC
        (T0 + timedelta(minutes=10), 3600, "Asia/Kolkata", T0 - timedelta(minutes=30)),
    ],
)
def test_period_bounds_follow_local_time(
    when: datetime, period_s: int, tz: str, start: datetime
) -> None:
    assert period_bounds(when, period_s, tz) == (start, start + timedelta(seconds=period_s))


def test_balance_is_minus_the_integral_of_pcc_power() -> None:
    integ = BalanceIntegrator(3600, "Europe/Madrid")
    # 10 s readings: export 3.6 kW for 100 s (= +100 Wh), then import 1.8 kW for 100 s (= -50 Wh)
    rows = [(t, -3.6) for t in range(0, 100, 10)] + [(t, 1.8) for t in range(100, 210, 10)]
    assert feed(integ, rows) == []
    assert integ.balance_wh == pytest.approx(50.0)
    assert integ.current is not None
    assert integ.current.export_wh == pytest.approx(100.0)
    assert integ.current.import_wh == pytest.approx(50.0)


def test_hour_rollover_splits_the_interval_and_resets() -> None:
    integ = BalanceIntegrator(3600, "Europe/Madrid")
    closed = feed(integ, [(3590, -3.6), (3610, -3.6)])  # 10 s before and 10 s after the hour
    assert len(closed) == 1
    assert closed[0].start == T0
    assert closed[0].balance_wh == pytest.approx(10.0)
    assert integ.current is not None
    assert integ.current.start == T0 + timedelta(hours=1)
    assert integ.balance_wh == pytest.approx(10.0), "the 10 s after the hour count in the new one"


def test_fifteen_minute_period_and_roll_without_readings() -> None:
    integ = BalanceIntegrator(900, "Europe/Madrid")
    feed(integ, [(0, -1.0), (10, -1.0)])
    assert integ.roll(T0 + timedelta(minutes=14)) == []
    closed = integ.roll(T0 + timedelta(minutes=15))
    assert [c.end for c in closed] == [T0 + timedelta(minutes=15)]
    assert integ.balance_wh == 0.0


def test_gap_longer_than_max_gap_is_not_extrapolated() -> None:
    integ = BalanceIntegrator(3600, "Europe/Madrid", max_gap_s=60)
    feed(integ, [(0, -3.6), (600, -3.6)])  # 10 min gap: only 60 s at -3.6 kW count
    assert integ.balance_wh == pytest.approx(60.0)


def test_duplicates_and_out_of_order_readings_are_ignored() -> None:
    integ = BalanceIntegrator(3600, "Europe/Madrid")
    feed(integ, [(0, -3.6), (10, -3.6), (10, -3.6), (5, 100.0), (20, 0.0)])
    assert integ.balance_wh == pytest.approx(20.0)


def test_restart_mid_hour_restores_the_balance() -> None:
    integ = BalanceIntegrator(3600, "Europe/Madrid")
    feed(integ, [(0, -3.6), (1000, -3.6)])  # 60 s integrated (gap cap) = 60 Wh
    saved = integ.to_dict()
    again = BalanceIntegrator(3600, "Europe/Madrid")
    assert again.restore(saved, T0 + timedelta(minutes=30)) == []
    assert again.balance_wh == pytest.approx(60.0)
    feed(again, [(1010, -3.6)])  # continues from the saved last reading (10 s at -3.6 kW)
    assert again.balance_wh == pytest.approx(70.0)


def test_restore_from_an_earlier_period_starts_at_zero_and_reports_it_closed() -> None:
    integ = BalanceIntegrator(3600, "Europe/Madrid")
    feed(integ, [(0, -3.6), (50, -3.6)])
    again = BalanceIntegrator(3600, "Europe/Madrid")
    closed = again.restore(integ.to_dict(), T0 + timedelta(hours=1, minutes=5))
    assert [c.start for c in closed] == [T0]
    assert again.balance_wh == 0.0
    other = BalanceIntegrator(900, "Europe/Madrid")
    assert other.restore(integ.to_dict(), T0) == [], "saved with another period length"
    assert other.current is None


def test_pv_generation_is_integrated_for_the_efficiency() -> None:
    integ = BalanceIntegrator(3600, "Europe/Madrid")
    integ.add_pv(T0, 3.6)
    integ.add_pv(T0 + timedelta(seconds=50), 3.6)
    assert integ.current is not None
    assert integ.current.pv_wh == pytest.approx(50.0)


def test_period_figures_and_day_kpis() -> None:
    surplus = PeriodTotals(
        T0, T0, balance_wh=40, export_wh=500, import_wh=460, pv_wh=2000, has_pv=True
    )
    debt = PeriodTotals(T0, T0, balance_wh=-30, export_wh=100, import_wh=130)
    assert period_figures(surplus)["efficiency"] == pytest.approx(0.98)  # (2000 - 40) / 2000
    figures = period_figures(debt)  # no PV telemetry: produced = gross export
    assert figures["produced_wh"] == 100
    assert figures["imported_wh"] == 30
    assert figures["efficiency"] == 1.0
    day = DayKpis(T0.date())
    day.add_period(surplus)
    day.add_period(debt)
    assert day.efficiency == pytest.approx((2100 - 40) / 2100)
    assert day.values()["exported_wh"] == 40
    assert day.values()["imported_wh"] == 30


def test_kpi_tracker_rolls_days() -> None:
    tracker = KpiTracker()
    assert tracker.roll(T0.date()) is None
    assert tracker.roll(T0.date()) is None
    finished = tracker.roll(T0.date() + timedelta(days=1))
    assert finished is not None
    assert finished.day == T0.date()
    assert [d.day for d in tracker.history] == [T0.date()]
    again = KpiTracker()
    again.restore(tracker.to_dict())
    assert again.history == tracker.history
