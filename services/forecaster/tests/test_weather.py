"""Weather providers: the Open-Meteo JSON layout (file and a local HTTP server), the simulator's
weather, weather features in the design and a forecast that says which inputs it used."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from derbus import features as fx
from forecaster.catalogue import TARGETS
from forecaster.design import WEATHER, design_matrix
from forecaster.models import fit_forecaster
from forecaster.serving import forecast
from forecaster.weather import (
    OpenMeteoWeather,
    SimulatorWeather,
    WeatherError,
    parse_open_meteo,
    provider_of,
)

FIXTURE = Path(__file__).parent / "fixtures" / "open_meteo_forecast.json"
"""72 hours in the layout of an Open-Meteo `/v1/forecast?hourly=temperature_2m,cloud_cover&
timezone=Europe/Berlin` answer (local times, utc_offset_seconds 7200)."""


def test_open_meteo_hours_are_converted_to_utc_and_cloud_cover_to_a_fraction() -> None:
    frame = parse_open_meteo(json.loads(FIXTURE.read_text()))
    assert len(frame) == 72
    assert frame.index[0] == pd.Timestamp("2026-05-31T22:00", tz="UTC")  # 00:00 at UTC+2
    assert frame["cloud_cover"].iloc[0] == pytest.approx(1.0)  # 100 %
    assert frame["cloud_cover"].iloc[11] == pytest.approx(0.0)
    assert frame["temperature_c"].iloc[15] == pytest.approx(23.0)  # 15:00 local, the warmest


def test_the_file_source_interpolates_to_the_15_minute_grid() -> None:
    provider = OpenMeteoWeather(str(FIXTURE))
    times = pd.date_range("2026-06-01T07:00", periods=5, freq="15min", tz="UTC")
    frame = provider.frame(times)  # 09:00-10:00 local: cloud 10 % -> 5 %
    assert frame["cloud_cover"].tolist() == pytest.approx([0.10, 0.0875, 0.075, 0.0625, 0.05])
    outside = provider.frame(pd.date_range("2026-07-01", periods=2, freq="15min", tz="UTC"))
    assert outside.isna().all().all()  # no forecast there: missing, not invented


@pytest.fixture
def http_source() -> Iterator[str]:
    handler = partial(SimpleHTTPRequestHandler, directory=str(FIXTURE.parent))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/{FIXTURE.name}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_the_http_source_reads_the_same_answer(http_source: str) -> None:
    times = pd.date_range("2026-06-01T07:00", periods=5, freq="15min", tz="UTC")
    by_http = provider_of(http_source, 52.5, 13.4)
    assert by_http is not None
    pd.testing.assert_frame_equal(by_http.frame(times), OpenMeteoWeather(str(FIXTURE)).frame(times))


def test_a_source_in_another_layout_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"hourly": {"time": ["2026-06-01T00:00"]}}))
    with pytest.raises(WeatherError, match="not an Open-Meteo hourly forecast"):
        OpenMeteoWeather(str(bad)).frame(pd.DatetimeIndex([], tz="UTC"))
    with pytest.raises(WeatherError, match=r"missing\.json"):
        OpenMeteoWeather(str(tmp_path / "missing.json")).read()


def test_the_simulator_weather_is_its_climatology() -> None:
    times = pd.DatetimeIndex(["2026-07-19T15:00", "2026-01-19T03:00"], tz="UTC")
    frame = SimulatorWeather().frame(times)
    assert frame["temperature_c"].iloc[0] == pytest.approx(16 + 8 + 5, abs=0.1)  # summer, 15 h
    assert frame["temperature_c"].iloc[1] < 6  # winter night
    assert (frame["cloud_cover"] == 0.3).all()
    assert provider_of("none", 0, 0) is None


def _cloudy_pv(site: fx.SiteContext, days: int) -> tuple[pd.Series, pd.DataFrame]:
    index = pd.date_range("2026-05-04", periods=days * 96, freq="15min", tz="UTC")
    clear = fx.solar_features(index, site.latitude, site.longitude)["clearsky_ghi_w_m2"]
    hours = np.arange(len(index)) // 8  # a cloud cover that changes every two hours
    cloud = np.random.default_rng(5).uniform(0, 1, hours[-1] + 1)[hours]
    weather = pd.DataFrame({"temperature_c": 15.0, "cloud_cover": cloud}, index=index)
    y = pd.Series(5.0 * np.asarray(clear) / 1000 * (1 - 0.75 * cloud**3.4), index=index)
    return y, weather


def test_forecast_cloud_cover_enters_the_features_and_the_forecast_says_so(
    site: fx.SiteContext,
) -> None:
    y, weather = _cloudy_pv(site, 28)
    target = TARGETS["pv"]
    x_w = design_matrix(y, y.index, site, target, weather)
    assert set(WEATHER) <= set(x_w.columns)
    x = design_matrix(y, y.index, site, target)
    train, test = slice(0, 21 * 96), slice(21 * 96, None)
    with_w = fit_forecaster("gbm_median", x_w.iloc[train], y.iloc[train], target, max_iter=60)
    without = fit_forecaster("gbm_median", x.iloc[train], y.iloc[train], target, max_iter=60)
    assert with_w.uses_weather
    assert not without.uses_weather
    actual = y.iloc[test].to_numpy()
    mae_w = np.mean(np.abs(actual - with_w.base(x_w.iloc[test])[:, 1]))
    mae = np.mean(np.abs(actual - without.base(x.iloc[test])[:, 1]))
    assert mae_w < 0.5 * mae  # the clouds of the day ahead are in the weather forecast

    class Known:
        name = "known-clouds"

        def frame(self, times: pd.DatetimeIndex) -> pd.DataFrame:
            return weather.reindex(times)

    issue = y.index[24 * 96]
    frame, inputs = forecast(with_w, y[y.index < issue], issue, site, target, Known())
    assert "weather:known-clouds" in inputs
    assert len(frame) == 96
    _, plain_inputs = forecast(without, y[y.index < issue], issue, site, target, Known())
    assert not any(i.startswith("weather") for i in plain_inputs)


def test_an_unknown_weather_source_stops_start_up_naming_the_field(tmp_path: Path) -> None:
    from pydantic import ValidationError

    from forecaster.settings import Settings

    with pytest.raises(ValidationError, match="weather_source"):
        Settings(data_dir=tmp_path, weather_source=str(tmp_path / "nope.json"))
    assert Settings(data_dir=tmp_path, weather_source=str(FIXTURE)).weather_source == str(FIXTURE)
