"""Shared fixtures: a Berlin site and synthetic 15-minute load and PV histories."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from derbus import features as fx
from derbus.tariff import Tariff

Series = Callable[..., pd.Series]


@pytest.fixture(scope="session")
def site() -> fx.SiteContext:
    return fx.SiteContext("Europe/Berlin", "DE", 52.52, 13.40, Tariff(timezone="Europe/Berlin"))


@pytest.fixture(scope="session")
def load_series(site: fx.SiteContext) -> Series:
    """Load with a daily shape, a weekend shift and noise (kW), on the UTC 15-minute grid."""

    def make(start: str = "2026-01-05", days: int = 28, seed: int = 1) -> pd.Series:
        index = pd.date_range(start, periods=days * 96, freq="15min", tz="UTC")
        local = index.tz_convert(site.timezone)
        hour = np.asarray(local.hour + local.minute / 60)
        weekend = np.asarray(local.day_of_week >= 5)
        shape = (
            0.5
            + 1.5 * np.exp(-(((hour - 19) / 2) ** 2))
            + np.where(weekend, 0.8, 0.3) * (np.exp(-(((hour - 9) / 2) ** 2)))
        )
        noise = np.random.default_rng(seed).normal(0, 0.25, len(index))
        return pd.Series(np.clip(shape + noise, 0.05, None), index=index)

    return make


@pytest.fixture(scope="session")
def pv_series(site: fx.SiteContext) -> Series:
    """PV = clear sky x a daily cloudiness (kW)."""

    def make(start: str = "2026-05-04", days: int = 28, seed: int = 2) -> pd.Series:
        index = pd.date_range(start, periods=days * 96, freq="15min", tz="UTC")
        clear = fx.solar_features(index, site.latitude, site.longitude)["clearsky_ghi_w_m2"]
        days_idx = np.asarray((index - index[0]).days)
        cloud = np.random.default_rng(seed).uniform(0.3, 1.0, days + 1)[days_idx]
        return pd.Series(5.0 * np.asarray(clear) / 1000 * cloud, index=index)

    return make
