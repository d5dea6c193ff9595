"""The physical models: shapes over a day, bounds, energy conservation, sessions, tariff periods."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from edge_simulator.fleet import Fleet, Location, Overrides, StepResult, run
from edge_simulator.sim_config import BatteryConfig, SimConfig
from edge_simulator.sky import SkyModel
from edge_simulator.testing import T0, make_fleet


def day(
    fleet: Fleet, start: datetime = T0, hours: float = 24, step_s: float = 300
) -> list[StepResult]:
    return run(fleet, start, start + timedelta(hours=hours), step_s)


@pytest.mark.parametrize(("lat", "lon"), [(41.39, 2.17), (-33.87, 151.21), (40.71, -74.01)])
def test_clear_sky_peaks_at_local_solar_noon(lat: float, lon: float) -> None:
    sky = SkyModel(lat, lon, 0.0, 0.0, 180.0, 3.0)
    minutes = range(0, 24 * 60, 2)
    start = datetime(2026, 3, 20, tzinfo=UTC)
    peak = max(minutes, key=lambda m: sky.at(start + timedelta(minutes=m)).ghi_w_m2)
    solar_noon_utc_min = (12 - lon / 15) * 60 % 1440
    # equation of time in March is about -7 min: within 15 min of mean solar noon, not 12:00 UTC
    assert abs(peak - solar_noon_utc_min) < 15


def test_pv_shape_over_a_day_and_bounds() -> None:
    results = day(make_fleet())
    gen = np.array([r.pv_generation_kw[0] for r in results])
    hours = np.array([(r.ts.hour + r.ts.minute / 60) for r in results])
    assert gen.max() <= 5.0 + 1e-9  # inverter capacity
    assert np.all(gen >= 0)
    assert np.all(gen[(hours < 3) | (hours > 21)] == 0)  # night (UTC; Barcelona in June)
    assert gen[(hours > 10) & (hours < 13)].mean() > 2.0


def test_inverter_clips_at_capacity() -> None:
    config = SimConfig.model_validate(
        {"solar": {"capacity_kw": 1.0, "cloud_mean": 0.0, "cloud_volatility": 0.0}}
    )
    gen = [r.pv_generation_kw[0] for r in day(make_fleet(config))]
    assert max(gen) == pytest.approx(1.0)


def stored_change(results: list[StepResult], battery: BatteryConfig) -> float:
    eta = battery.round_trip_efficiency**0.5
    total = 0.0
    for r in results:
        p = float(r.battery_p_kw[0])
        total += (p * eta if p > 0 else p / eta) * r.dt_s / 3600
    return total


@pytest.mark.parametrize("request_kw", [None, 5.0, -5.0])
def test_battery_energy_is_conserved_and_power_is_the_clamped_one(request_kw: float | None) -> None:
    config = SimConfig.model_validate(
        {"battery": {"cycle_fade_pct": 0.0, "calendar_fade_pct_per_year": 0.0}}
    )
    fleet = make_fleet(config)
    e0 = float(fleet.energy_kwh[0])
    fleet.reset_clock(T0)
    results = []
    ovr = Overrides.none(1)
    if request_kw is not None:
        ovr.battery_p_kw[:] = request_kw
    for k in range(1, 24 * 12 + 1):
        results.append(fleet.step(T0 + timedelta(minutes=5 * k), 300.0, ovr))
    e1 = float(results[-1].battery_energy_kwh[0])
    assert stored_change(results, config.battery) == pytest.approx(e1 - e0, abs=1e-9)
    soc = np.array([r.battery_soc_pct[0] for r in results])
    assert soc.min() >= 10.0 - 1e-9
    assert soc.max() <= 95.0 + 1e-9
    if request_kw is not None:
        powers = np.array([r.battery_p_kw[0] for r in results])
        # a full (or empty) battery reports the power it really takes: zero, not the request
        assert powers[-1] == pytest.approx(0.0)
        assert soc[-1] == pytest.approx(95.0 if request_kw > 0 else 10.0)


def test_taper_limits_power_near_full() -> None:
    config = SimConfig.model_validate({"battery": {"initial_soc_pct": 93.0}})
    fleet = make_fleet(config)
    ovr = Overrides.none(1)
    ovr.battery_p_kw[:] = 5.0
    r = fleet.step(T0 + timedelta(seconds=1), 1.0, ovr)
    assert r.battery_max_charge_kw[0] == pytest.approx(5.0 * (95 - 93) / 10)
    assert r.battery_p_kw[0] == pytest.approx(1.0)
    assert r.battery_max_discharge_kw[0] == pytest.approx(5.0)


def test_cycles_degrade_health_and_capacity() -> None:
    config = SimConfig.model_validate({"battery": {"cycle_fade_pct": 1.0}})
    fleet = make_fleet(config)
    fleet.reset_clock(T0)
    ovr = Overrides.none(1)
    last = None
    for k in range(1, 24 * 12):
        ovr.battery_p_kw[:] = 5.0 if (k // 24) % 2 == 0 else -5.0
        last = fleet.step(T0 + timedelta(minutes=5 * k), 300.0, ovr)
    assert last is not None
    assert last.battery_cycles[0] > 2
    assert last.battery_soh_pct[0] < 98
    assert last.battery_capacity_kwh[0] < 10 * 0.98


def test_battery_heats_with_losses_and_voltage_follows_soc() -> None:
    fleet = make_fleet()
    ovr = Overrides.none(1)
    ovr.battery_p_kw[:] = 5.0
    fleet.reset_clock(T0)
    first = fleet.step(T0 + timedelta(minutes=5), 300.0, ovr)
    later = fleet.step(T0 + timedelta(minutes=35), 1800.0, ovr)
    assert later.battery_temp_c[0] > first.battery_temp_c[0] > 20.0
    assert later.battery_voltage_v[0] > first.battery_voltage_v[0]


def test_ev_sessions_are_coherent() -> None:
    fleet = make_fleet(n_sites=20)
    results = run(fleet, T0, T0 + timedelta(days=3), 300)
    ev = np.array([r.ev_kw for r in results])  # steps × sites
    plugged = np.array([r.ev_plugged for r in results])
    need = np.array([r.ev_need_kwh for r in results])
    assert np.all(ev <= 7.4 + 1e-9)
    assert np.all(ev[plugged == 0] == 0)  # never charges unplugged
    assert np.all(need >= 0)
    assert ev.sum() > 0
    for site in range(20):
        # a session delivers what the car needs (never more), from arrival until done
        sessions = np.diff(np.concatenate([[0], plugged[:, site], [0]]))
        starts, ends = np.where(sessions == 1)[0], np.where(sessions == -1)[0]
        for a, b in zip(starts, ends, strict=True):
            delivered = ev[a:b, site].sum() * 300 / 3600
            assert delivered <= 0.9 * 60 + 1e-6
            if b - a > 12 * 12:  # a full night: enough time to finish
                assert need[b - 1, site] == pytest.approx(0.0, abs=1e-9)


def test_load_components_and_pcc_balance() -> None:
    results = day(make_fleet(n_sites=5))
    for r in results:
        parts = r.base_kw + r.hvac_kw + r.appliance_kw + r.lighting_kw + r.cooking_kw
        total = parts + r.ev_kw + r.load1_kw + r.load2_kw
        np.testing.assert_allclose(r.load_total_kw, total)
        np.testing.assert_allclose(
            r.pcc_p_kw, r.load_total_kw - r.pv_generation_kw + r.battery_p_kw
        )
        assert np.all(r.load_total_kw >= 0)
    # the water heater (load1) runs 02-05 local by default = 00-03 UTC in summer
    on = [r.ts.hour for r in results if r.load1_on[0] == 1]
    assert set(on) == {0, 1, 2}


def test_tou_periods_in_local_time_and_price_reverts() -> None:
    config = SimConfig.model_validate({"grid_price": {"volatility": 0.2}})
    fleet = make_fleet(config, n_sites=200)
    local_11 = datetime(2026, 6, 22, 9, 0, tzinfo=UTC)  # 11:00 in Madrid (CEST), a Monday
    fleet.reset_clock(local_11 - timedelta(hours=6))
    r = fleet.step(local_11)
    assert r.tou_period == "peak"
    assert abs(float(np.mean(r.price_per_kwh)) - 0.27) < 0.02
    assert float(np.std(r.price_per_kwh)) > 0.01
    night = fleet.step(datetime(2026, 6, 22, 1, 0, tzinfo=UTC))
    assert night.tou_period == "off_peak"
    assert float(np.mean(night.carbon_g_per_kwh)) > float(np.mean(r.carbon_g_per_kwh))


def test_sites_are_independent_of_the_fleet_size() -> None:
    small = run(make_fleet(n_sites=2), T0, T0 + timedelta(hours=6), 600)
    big = run(make_fleet(n_sites=50), T0, T0 + timedelta(hours=6), 600)
    for a, b in zip(small, big, strict=True):
        assert a.pcc_p_kw[1] == b.pcc_p_kw[1]
    assert not np.allclose(big[-1].load_total_kw[0], big[-1].load_total_kw[1])


def test_southern_hemisphere_summer_is_in_january() -> None:
    loc = Location(-33.87, 151.21, "Australia/Sydney")
    jan = Fleet(SimConfig(), loc, 1, 1, datetime(2026, 1, 15, tzinfo=UTC))
    jul = Fleet(SimConfig(), loc, 1, 1, datetime(2026, 7, 15, tzinfo=UTC))
    t_jan = jan.step(datetime(2026, 1, 15, 4, tzinfo=UTC)).outdoor_temp_c[0]
    t_jul = jul.step(datetime(2026, 7, 15, 4, tzinfo=UTC)).outdoor_temp_c[0]
    assert t_jan > t_jul + 8


def test_every_message_of_simulated_days_is_valid() -> None:
    from edge_simulator.output import StepView

    fleet = make_fleet(n_sites=4, config=SimConfig.model_validate({"size_spread": 0.3}))
    for r in run(fleet, T0, T0 + timedelta(days=2), 1800):
        view = StepView(r)
        for i in range(4):
            fast = view.messages(i, "edge_simulator")
            checked = view.messages(i, "edge_simulator", validate=True)
            for a, b in zip(fast, checked, strict=True):
                assert type(a.message).model_validate_json(a.message.to_json_bytes()) == b.message


def test_a_shard_simulates_exactly_those_sites_of_the_whole_fleet() -> None:
    """Sharding a fleet over processes changes nothing: ids, ratings and every reading match."""
    whole = make_fleet(n_sites=5)
    shards = [make_fleet(n_sites=2, first_site=0), make_fleet(n_sites=3, first_site=2)]
    assert [sid for s in shards for sid in s.ids] == whole.ids
    assert np.array_equal(np.concatenate([s.pv_capacity_kw for s in shards]), whole.pv_capacity_kw)
    for minutes in (10, 20, 30):
        now = T0 + timedelta(hours=11, minutes=minutes)
        full = whole.step(now)
        parts = [s.step(now) for s in shards]
        for name in ("pcc_p_kw", "pv_generation_kw", "battery_soc_pct", "load_total_kw", "ev_kw"):
            joined = np.concatenate([getattr(p, name) for p in parts])
            assert np.array_equal(joined, getattr(full, name)), name
