"""Synthetic site readings (load, PV, PCC, price, weather) for tests, demos and quick benches."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pandas as pd

from derbus import features as fx
from derbus.storage import ReadingRow


def synthetic_frame(
    start: datetime, days: float, site: fx.SiteContext, *, step_s: int = 900, seed: int = 1
) -> pd.DataFrame:
    """Plausible site values every `step_s` seconds from `start` (UTC).

    Columns: load_kw (evening peak, weekend shift, noise), pv_kw (clear-sky shape times a daily
    cloudiness), irradiance_w_m2, temp_c, price_per_kwh (the site's tariff) and
    pcc_kw = load - pv (load-referenced, + import).
    """
    rng = np.random.default_rng(seed)
    n = int(days * 86_400 / step_s)
    index = pd.date_range(pd.Timestamp(start).tz_convert("UTC"), periods=n, freq=f"{step_s}s")
    local = index.tz_convert(site.timezone)
    hour = np.asarray(local.hour + local.minute / 60.0)
    weekend = np.asarray(local.day_of_week >= 5)
    evening = np.exp(-(((hour - 19.5) / 2.0) ** 2))
    morning = np.exp(-(((hour - np.where(weekend, 9.0, 7.5)) / 1.5) ** 2))
    load = 0.4 + 1.6 * evening + np.where(weekend, 1.0, 0.6) * morning
    load = np.clip(load + rng.normal(0, 0.12, n), 0.05, None)
    clear = fx.solar_features(index, site.latitude, site.longitude)["clearsky_ghi_w_m2"]
    days_idx = np.asarray((index - index[0]).days)
    cloud = rng.uniform(0.35, 1.0, days_idx.max() + 1)[days_idx]
    irradiance = np.asarray(clear) * cloud * rng.uniform(0.9, 1.0, n)
    pv = 5.0 * irradiance / 1000.0
    temp = 12 + 8 * np.sin(2 * np.pi * (hour - 9) / 24) + rng.normal(0, 0.5, n)
    price = [site.tariff.price_at(t.to_pydatetime()) for t in index]
    return pd.DataFrame(
        {
            "load_kw": load,
            "pv_kw": pv,
            "pcc_kw": load - pv,
            "irradiance_w_m2": irradiance,
            "temp_c": temp,
            "price_per_kwh": price,
        },
        index=index,
    )


def reading_rows(frame: pd.DataFrame, site_id: str) -> list[ReadingRow]:
    """The `readings` rows cloud_sync would have written for a `synthetic_frame`."""
    sources = {s.column: s for s in fx.SOURCES}
    rows = []
    for column in frame.columns:
        source = sources[column]
        for when, value in frame[column].items():
            rows.append(
                ReadingRow(
                    when.to_pydatetime(), site_id, source.device_id, source.metric, float(value)
                )
            )
    return rows


def samples_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """A `synthetic_frame` in the pipeline's long sample format (time, column, value)."""
    long = (
        frame.rename_axis("time")
        .reset_index()
        .melt(id_vars="time", var_name="column", value_name="value")
    )
    long["time"] = pd.to_datetime(long["time"], utc=True)
    return long.sort_values("time", kind="stable").reset_index(drop=True)
