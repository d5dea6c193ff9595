"""The value harness shared by the benchmarks: the SimBench profiles and the evaluated site."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
PROFILES = REPO / "data" / "profiles" / "simbench_2016_15min.csv"


def profiles() -> pd.DataFrame:
    """The SimBench profiles, indexed by UTC time (the file's naive times taken as UTC)."""
    df = pd.read_csv(PROFILES, parse_dates=["time"], index_col="time")
    df.index = df.index.tz_localize("UTC")
    return df[~df.index.duplicated(keep="first")]


def local_profiles() -> pd.DataFrame:
    """The SimBench profiles with their naive times read as Europe/Berlin wall-clock, UTC-indexed."""
    frame = pd.read_csv(PROFILES, parse_dates=["time"])
    local = pd.DatetimeIndex(frame.pop("time")).tz_localize("Europe/Berlin", ambiguous="infer")
    frame.index = local.tz_convert("UTC")
    return frame


@dataclass
class Site:
    """The evaluated site (the issue's value harness): per-unit profiles scaled to it.

    100 kW annual load peak, 50 kWp PV, 100 kWh / 50 kW battery.
    """

    load_peak_kw: float = 100.0
    pv_kwp: float = 50.0
    capacity_kwh: float = 100.0
    power_kw: float = 50.0
    efficiency: float = 0.95
    import_limit_kw: float | None = 75.0
    export_limit_kw: float = -20.0
    step_s: int = 60
    noise_pct: float = 4.0

    def ema_battery(self) -> dict[str, float]:
        """The battery as the EMA optimiser's config fields (`EmaConfig` keyword arguments)."""
        return {
            "battery_capacity_kwh": self.capacity_kwh,
            "battery_max_charge_kw": self.power_kw,
            "battery_max_discharge_kw": self.power_kw,
            "charge_efficiency": self.efficiency,
            "discharge_efficiency": self.efficiency,
        }

    @property
    def import_cap_kw(self) -> float:
        """The import limit the controllers get (`--no-import-limit`: far above any load)."""
        return self.import_limit_kw if self.import_limit_kw is not None else 10 * self.load_peak_kw
