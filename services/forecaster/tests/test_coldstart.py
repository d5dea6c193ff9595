"""Cold start: standard load profile scaled to the measurements, clear-sky PV, and the service hook."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from derbus import features as fx
from derbus import topics
from derbus.bus import InMemoryBus
from derbus.http import make_app
from derbus.messages import TimeSeries
from derbus.settings import MqttSettings, SiteSettings
from derbus.storage import readings_table
from forecaster import coldstart
from forecaster.service import build_service
from forecaster.settings import Settings

NOW = datetime(2027, 1, 13, 10, 20, tzinfo=UTC)  # a Wednesday, mid-morning in Berlin


def utc_grid(start: str, periods: int) -> pd.DatetimeIndex:
    return pd.date_range(start, periods=periods, freq="15min", tz="UTC")


def test_load_profile_follows_the_site_calendar(site: fx.SiteContext) -> None:
    # 2027-01-01 (a Friday) is a public holiday in Germany: shaped like the Sunday after
    holiday = coldstart.load_profile_kw(utc_grid("2026-12-31T23:00Z", 96), site)
    sunday = coldstart.load_profile_kw(utc_grid("2027-01-02T23:00Z", 96), site)
    workday = coldstart.load_profile_kw(utc_grid("2027-01-07T23:00Z", 96), site)
    ratio_sunday = holiday.to_numpy() / sunday.to_numpy()
    ratio_workday = holiday.to_numpy() / workday.to_numpy()
    assert np.ptp(ratio_sunday) < 0.02  # same day type: only the dynamisation factor differs
    assert np.ptp(ratio_workday) > 0.1
    assert (holiday > 0).all()


def test_load_is_the_profile_scaled_to_the_measured_mean(site: fx.SiteContext) -> None:
    measured = pd.Series([0.8, 1.2], index=utc_grid("2027-01-13T09:45Z", 2))
    times = utc_grid("2027-01-13T10:15Z", 96)
    frame = coldstart.load_forecast(measured, times, site)
    assert frame is not None
    shape = coldstart.load_profile_kw(measured.index.union(times), site)
    scale = 1.0 / shape[measured.index].mean()  # measured mean 1.0 kW
    np.testing.assert_allclose(frame["p50"], shape[times] * scale)
    assert (frame["p10"] < frame["p50"]).all()
    assert (frame["p50"] < frame["p90"]).all()
    assert coldstart.load_forecast(measured.iloc[:0], times, site) is None


@pytest.mark.parametrize(
    "start",
    ["2027-03-28T01:30Z", "2027-06-21T12:00Z", "2027-10-31T00:30Z", "2027-12-31T23:45Z"],
    ids=["summer-time-starts", "midsummer", "summer-time-ends", "year-end"],
)
def test_a_days_cold_start_at_the_awkward_instants(site: fx.SiteContext, start: str) -> None:
    """The instants of `make test-dates`, as fixed inputs: 96 finite, ordered values each."""
    measured = pd.Series([0.6, 0.9], index=utc_grid(start, 2) - pd.Timedelta(minutes=30))
    times = utc_grid(start, 96)
    load = coldstart.load_forecast(measured, times, site)
    assert load is not None
    assert load.notna().all().all()
    assert (load["p10"] < load["p50"]).all()
    assert (load["p50"] < load["p90"]).all()
    pv = coldstart.pv_forecast(coldstart.PvScale(0.005, 0.8, "nameplate"), times, site)
    assert pv.notna().all().all()
    assert (pv["p50"] > 0).any()  # a day has daylight
    assert (pv["p10"] <= pv["p50"]).all()
    assert (pv["p50"] <= pv["p90"]).all()


def test_measured_joins_feature_history_and_raw_readings_up_to_now() -> None:
    history = pd.Series([np.nan, 1.0, 2.0], index=utc_grid("2027-01-13T09:30Z", 3))
    raw_times = [NOW - timedelta(minutes=m) for m in (25, 20, 12, 8, 2)]  # 09:55 .. 10:18
    raw = pd.Series([9.0, 3.0, 5.0, 7.0, 9.0], index=pd.DatetimeIndex(raw_times))
    got = coldstart.measured(history, raw, NOW)
    # 09:55 lies in the 09:45 interval that the feature table already has: the table wins
    assert got.to_dict() == {
        pd.Timestamp("2027-01-13T09:45Z"): 1.0,
        pd.Timestamp("2027-01-13T10:00Z"): 2.0,
        pd.Timestamp("2027-01-13T10:15Z"): 9.0,  # the partial interval, from raw readings
    }
    history_to_0945 = history.iloc[:2]
    got = coldstart.measured(history_to_0945, raw, NOW)
    assert got[pd.Timestamp("2027-01-13T10:00Z")] == pytest.approx(5.0)  # mean of 3, 5, 7


def test_pv_scale_from_power_over_measured_irradiance(site: fx.SiteContext) -> None:
    times = utc_grid("2027-01-13T08:00Z", 9)  # Berlin winter morning, sun up
    clear = fx.solar_features(times, site.latitude, site.longitude)["clearsky_ghi_w_m2"]
    irradiance = clear * 0.5  # half a clear sky
    pv = irradiance * 0.004  # 4 kW per kW/m² of plane-of-array irradiance
    scale = coldstart.pv_scale(pv, irradiance, clear, pv_peak_kw=None)
    assert scale is not None
    assert scale.basis == "measured_irradiance"
    assert scale.kw_per_w_m2 == pytest.approx(0.004)
    assert scale.clear_sky_index == pytest.approx(0.5)
    tomorrow = utc_grid("2027-01-14T00:00Z", 96)
    frame = coldstart.pv_forecast(scale, tomorrow, site)
    ghi = fx.solar_features(tomorrow, site.latitude, site.longitude)["clearsky_ghi_w_m2"]
    day = ghi >= fx.MIN_CLEAR_GHI_W_M2
    np.testing.assert_allclose(frame["p50"][day], 0.004 * 0.5 * ghi[day])
    assert (frame.loc[~day.to_numpy()] == 0).all().all()
    assert (frame["p10"] <= frame["p50"]).all()
    assert (frame["p50"] <= frame["p90"]).all()


def test_pv_scale_at_night_needs_a_nameplate(site: fx.SiteContext) -> None:
    night = utc_grid("2027-01-13T00:00Z", 8)
    clear = fx.solar_features(night, site.latitude, site.longitude)["clearsky_ghi_w_m2"]
    zeros = pd.Series(0.0, index=night)
    assert coldstart.pv_scale(zeros, zeros, clear, pv_peak_kw=None) is None
    scale = coldstart.pv_scale(zeros, zeros, clear, pv_peak_kw=5.0)
    assert scale is not None
    assert scale.basis == "nameplate"
    assert scale.kw_per_w_m2 == pytest.approx(5.0 * coldstart.PV_PERFORMANCE_RATIO / 1000)


def test_pv_scale_from_power_alone_keeps_what_was_measured(site: fx.SiteContext) -> None:
    times = utc_grid("2027-01-13T09:00Z", 4)
    clear = fx.solar_features(times, site.latitude, site.longitude)["clearsky_ghi_w_m2"]
    pv = clear * 0.002
    empty = pd.Series(dtype=float, index=pd.DatetimeIndex([], tz="UTC"))
    scale = coldstart.pv_scale(pv, empty, clear, pv_peak_kw=None)
    assert scale is not None
    assert scale.basis == "measured_power"
    assert scale.kw_per_w_m2 * scale.clear_sky_index == pytest.approx(0.002)


# --- the service ---------------------------------------------------------------------------


def write_readings(url: str, rows: Iterable[tuple[datetime, str, str, float]]) -> None:
    engine = sa.create_engine(url)
    metadata = sa.MetaData()
    table = readings_table(metadata)
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            table.insert(),
            [
                {"time": t, "site_id": "s9", "device_id": d, "metric": m, "value": v}
                for t, d, m, v in rows
            ],
        )
    engine.dispose()


def cold_settings(tmp_path: Path, **cold: object) -> Settings:
    return Settings(
        data_dir=tmp_path,
        site=SiteSettings(timezone="Europe/Berlin", country="DE"),
        mqtt=MqttSettings(root="t/cold"),
        train_at_start=False,
        cold_start=coldstart.ColdStartSettings(**cold),  # type: ignore[arg-type]
    )


def test_service_publishes_cold_start_forecasts_from_minutes_of_readings(tmp_path: Path) -> None:
    settings = cold_settings(tmp_path, pv_peak_kw=6.0)
    url = settings.database.sqlalchemy_url(tmp_path)
    minutes = [NOW - timedelta(seconds=s) for s in range(600, 0, -60)]  # the last ten minutes
    rows = [(t, "load", "load.p_kw", 0.9) for t in minutes]
    rows += [(t, "pv", "pv.generation_kw", 0.0) for t in minutes]  # no irradiance reported
    write_readings(url, rows)
    bus = InMemoryBus()
    service = build_service(settings, bus, now=lambda: NOW)
    with TestClient(make_app(service)) as client:
        load = client.get("/forecast/s9/load").json()
        pv = client.get("/forecast/s9/pv").json()
        health = client.get("/healthz").json()
    assert health["status"] == "online", health
    assert load["model"] == pv["model"] == "cold_start"
    assert load["meta"]["cold_start"] is True
    assert load["meta"]["cold_start_basis"] == "standard_profile"
    assert load["meta"]["cold_start_measured_intervals"] == 2  # 10:10-10:15 and 10:15-10:20
    q = load["quantiles"]
    assert len(q["p50"]) == 96
    assert min(q["p10"]) > 0
    assert all(a < b < c for a, b, c in zip(q["p10"], q["p50"], q["p90"], strict=True))
    # scaled so that the profile's mean over the two measured intervals is the measured
    # 0.9 kW: the first forecast interval (10:15 UTC, one of them) is close to it
    assert q["p50"][0] == pytest.approx(0.9, rel=0.2)
    # PV: 10:10-10:20 UTC in Berlin in January is daylight, with 0 kW measured: P50 0 all day
    assert pv["meta"]["cold_start_basis"] == "measured_power"
    assert max(pv["values"]) == 0.0
    published = {m.topic for m in bus.published if topics.FORECAST.matches(m.topic, "t/cold")}
    assert topics.FORECAST.topic("s9", "load", "t/cold") in published
    sent = [m for m in bus.published if m.topic == topics.FORECAST.topic("s9", "load", "t/cold")]
    assert TimeSeries.from_json_bytes(sent[-1].payload).meta["cold_start"] is True


def test_service_is_degraded_only_with_nothing_measured(tmp_path: Path) -> None:
    settings = cold_settings(tmp_path)
    write_readings(
        settings.database.sqlalchemy_url(tmp_path),
        [(NOW - timedelta(days=3), "load", "load.p_kw", 1.0)],
    )
    bus = InMemoryBus()
    service = build_service(settings, bus, now=lambda: NOW)
    with TestClient(make_app(service)) as client:
        assert client.get("/forecast/s9/load").status_code == 404  # outside the lookback
        health = client.get("/healthz").json()
    assert service.state.issue_interval_s() == settings.cold_start.retry_s
    assert health["status"] == "online"  # no site known at all: nothing to be degraded about
    assert not [m for m in bus.published if topics.FORECAST.matches(m.topic, "t/cold")]


def test_cold_start_can_be_switched_off(tmp_path: Path) -> None:
    settings = cold_settings(tmp_path, enabled=False)
    write_readings(
        settings.database.sqlalchemy_url(tmp_path),
        [(NOW - timedelta(minutes=5), "load", "load.p_kw", 1.0)],
    )
    service = build_service(settings, InMemoryBus(), now=lambda: NOW)
    with TestClient(make_app(service)) as client:
        assert client.get("/forecast/s9/load").status_code == 404
