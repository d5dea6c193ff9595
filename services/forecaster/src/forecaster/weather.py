"""Weather inputs: forecast temperature and cloud cover on the 15-minute grid, from a provider.

A provider returns, for UTC interval starts, `temperature_c` and `cloud_cover` (0..1), NaN where
it has nothing. Two kinds:

- `SimulatorWeather` (the default): the weather of derbus' edge simulator as it can be known
  ahead — its temperature climatology (annual mean, seasonal and daily swings, the simulator's
  defaults) and its cloud cover's long-run mean (the cloud random walk reverts to it);
- `OpenMeteoWeather`: a file or an HTTP URL answering in the JSON layout of the Open-Meteo
  forecast API (`/v1/forecast?hourly=temperature_2m,cloud_cover`): `utc_offset_seconds` and
  `hourly` {`time`: ISO local times, `temperature_2m` in °C, `cloud_cover` in %}; hourly values
  are interpolated to the 15-minute grid.

`design.design_matrix(..., weather=frame)` turns them into features (`WEATHER_FEATURES`); a
forecast's `meta.inputs` names the provider when its model used them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlencode
from urllib.request import urlopen

import numpy as np
import pandas as pd

from derbus.errors import DerbusError

COLUMNS = ("temperature_c", "cloud_cover")
OPEN_METEO_URL = "https://api.open-meteo.com/v1/forecast"


class WeatherError(DerbusError):
    """A weather source that cannot be read or does not have the documented layout."""


class WeatherProvider(Protocol):
    """What a weather source offers."""

    name: str

    def frame(self, times: pd.DatetimeIndex) -> pd.DataFrame:
        """`temperature_c` and `cloud_cover` (0..1) at the UTC interval starts `times`."""
        ...


@dataclass
class SimulatorWeather:
    """The edge simulator's weather as known ahead (its defaults; see edge_simulator.sim_config)."""

    longitude: float = 0.0
    annual_mean_c: float = 16.0
    seasonal_amplitude_c: float = 8.0
    daily_amplitude_c: float = 5.0
    cloud_mean: float = 0.3
    name: str = "simulator"

    def frame(self, times: pd.DatetimeIndex) -> pd.DataFrame:
        doy = np.asarray(times.dayofyear, dtype=float)
        solar_hour = (np.asarray(times.hour + times.minute / 60) + self.longitude / 15.0) % 24
        seasonal = self.seasonal_amplitude_c * np.cos(2 * math.pi * (doy - 200) / 365.25)
        daily = self.daily_amplitude_c * np.cos(2 * math.pi * (solar_hour - 15.0) / 24.0)
        return pd.DataFrame(
            {
                "temperature_c": self.annual_mean_c + seasonal + daily,
                "cloud_cover": np.full(len(times), self.cloud_mean),
            },
            index=times,
        )


def parse_open_meteo(body: dict[str, Any]) -> pd.DataFrame:
    """An Open-Meteo forecast response as hourly UTC `temperature_c`, `cloud_cover` (0..1)."""
    try:
        hourly = body["hourly"]
        local = pd.DatetimeIndex(pd.to_datetime(hourly["time"]))
        offset = pd.Timedelta(seconds=int(body.get("utc_offset_seconds", 0)))
        temperature = np.asarray(hourly["temperature_2m"], dtype=float)
        cloud = np.asarray(hourly.get("cloud_cover", hourly.get("cloudcover")), dtype=float)
    except (KeyError, TypeError, ValueError) as err:
        raise WeatherError(f"not an Open-Meteo hourly forecast: {err!r}") from err
    if not (len(local) == len(temperature) == len(cloud)):
        raise WeatherError("Open-Meteo hourly arrays differ in length")
    units = body.get("hourly_units", {})
    if units.get("temperature_2m", "°C") != "°C":
        raise WeatherError(f"temperature_2m in {units['temperature_2m']!r}, expected °C")
    index = (local - offset).tz_localize("UTC") if local.tz is None else local.tz_convert("UTC")
    return pd.DataFrame({"temperature_c": temperature, "cloud_cover": cloud / 100.0}, index=index)


@dataclass
class OpenMeteoWeather:
    """An Open-Meteo JSON forecast from a file path or an http(s) URL (re-read every `frame`).

    With `url` None the public API is asked for the site's latitude and longitude.
    """

    source: str | None = None
    latitude: float = 0.0
    longitude: float = 0.0
    timeout_s: float = 10.0
    name: str = "open-meteo"

    def url(self) -> str:
        query = {
            "latitude": self.latitude,
            "longitude": self.longitude,
            "hourly": "temperature_2m,cloud_cover",
            "forecast_days": 3,
            "past_days": 1,
            "timezone": "GMT",
        }
        return f"{OPEN_METEO_URL}?{urlencode(query)}"

    def read(self) -> dict[str, Any]:
        source = self.source or self.url()
        try:
            if source.startswith(("http://", "https://")):
                with urlopen(source, timeout=self.timeout_s) as response:  # noqa: S310 (http only)
                    data = response.read()
            else:
                data = Path(source).read_bytes()
            body = json.loads(data)
        except (OSError, ValueError) as err:
            raise WeatherError(f"weather source {source}: {err}") from err
        if not isinstance(body, dict):
            raise WeatherError(f"weather source {source}: not a JSON object")
        return body

    def frame(self, times: pd.DatetimeIndex) -> pd.DataFrame:
        hourly = parse_open_meteo(self.read())
        grid = hourly.index.union(times)
        out = hourly.reindex(grid).interpolate(method="time", limit_area="inside")
        return out.reindex(times)


def provider_of(source: str, latitude: float, longitude: float) -> WeatherProvider | None:
    """`simulator`, `none`, `open-meteo` (the public API), or a file path / URL in its layout."""
    if source == "none":
        return None
    if source == "simulator":
        return SimulatorWeather(longitude=longitude)
    if source == "open-meteo":
        return OpenMeteoWeather(None, latitude, longitude)
    return OpenMeteoWeather(source, latitude, longitude)
