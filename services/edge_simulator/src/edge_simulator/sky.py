"""Clear-sky irradiance with pvlib, computed a whole UTC day at a time and cached.

Solar position (NREL SPA, numpy), Ineichen clear sky and isotropic transposition to the module
plane are computed once per site location and day at one-minute resolution; a step only
interpolates. A whole historical range is computed in one pvlib call with `prefetch`.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import numpy as np

from edge_simulator.noise import FloatArray

_RES_S = 60
_POINTS = 24 * 3600 // _RES_S + 1


@dataclass(frozen=True)
class ClearSky:
    """Clear-sky values at one instant."""

    poa_w_m2: float
    ghi_w_m2: float
    zenith_deg: float


@dataclass
class SkyModel:
    """Clear-sky plane-of-array and horizontal irradiance for one location and module plane.

    Args:
        latitude: degrees north.
        longitude: degrees east.
        altitude_m: metres above sea level.
        tilt_deg: module tilt.
        azimuth_deg: module azimuth, degrees from north (180 = south).
        linke_turbidity: atmospheric turbidity for the Ineichen model.
        max_days: how many days the cache keeps.
    """

    latitude: float
    longitude: float
    altitude_m: float
    tilt_deg: float
    azimuth_deg: float
    linke_turbidity: float
    max_days: int = 400
    _days: OrderedDict[date, tuple[FloatArray, FloatArray, FloatArray]] = field(
        default_factory=OrderedDict
    )

    def _compute(self, first: date, n_days: int) -> None:
        # imported here: pvlib (and pandas) take seconds to import, and the API must be up first
        import pandas as pd
        import pvlib

        start = pd.Timestamp(first.isoformat(), tz="UTC")
        times = pd.date_range(start, periods=n_days * (_POINTS - 1) + 1, freq=f"{_RES_S}s")
        with warnings.catch_warnings():  # pvlib 0.11 uses pandas' deprecated `dayofyear`
            warnings.filterwarnings("ignore", message=".*dayofyear.*")
            pos = pvlib.solarposition.get_solarposition(
                times, self.latitude, self.longitude, self.altitude_m, method="nrel_numpy"
            )
            dni_extra = pvlib.irradiance.get_extra_radiation(times).to_numpy()
        apparent = pos["apparent_zenith"].to_numpy()
        airmass = pvlib.atmosphere.get_relative_airmass(apparent)
        pressure = pvlib.atmosphere.alt2pres(self.altitude_m)
        am_abs = pvlib.atmosphere.get_absolute_airmass(airmass, pressure)
        with np.errstate(divide="ignore", invalid="ignore"):  # sun below the horizon
            cs = pvlib.clearsky.ineichen(
                apparent, am_abs, self.linke_turbidity, self.altitude_m, dni_extra
            )
        ghi = np.nan_to_num(np.asarray(cs["ghi"], dtype=float))
        dni = np.nan_to_num(np.asarray(cs["dni"], dtype=float))
        dhi = np.nan_to_num(np.asarray(cs["dhi"], dtype=float))
        poa = pvlib.irradiance.get_total_irradiance(
            self.tilt_deg,
            self.azimuth_deg,
            pos["zenith"].to_numpy(),
            pos["azimuth"].to_numpy(),
            dni,
            ghi,
            dhi,
            model="isotropic",
        )["poa_global"]
        poa_arr = np.clip(np.nan_to_num(np.asarray(poa, dtype=float)), 0.0, None)
        zenith = pos["zenith"].to_numpy()
        for d in range(n_days):
            sl = slice(d * (_POINTS - 1), d * (_POINTS - 1) + _POINTS)
            self._days[first + timedelta(days=d)] = (poa_arr[sl], ghi[sl], zenith[sl])
        while len(self._days) > self.max_days:
            self._days.popitem(last=False)

    def prefetch(self, start: datetime, end: datetime) -> None:
        """Compute every UTC day between two instants in one pvlib call (historical runs)."""
        first = start.astimezone(UTC).date()
        n_days = (end.astimezone(UTC).date() - first).days + 1
        self._compute(first, min(n_days, self.max_days))

    def at(self, when: datetime) -> ClearSky:
        """Clear-sky values at an aware instant (linear interpolation between minutes)."""
        utc = when.astimezone(UTC)
        day = utc.date()
        if day not in self._days:
            self._compute(day, 1)
        poa, ghi, zen = self._days[day]
        pos = (utc.hour * 3600 + utc.minute * 60 + utc.second + utc.microsecond * 1e-6) / _RES_S
        i = min(int(pos), _POINTS - 2)
        f = pos - i
        return ClearSky(
            poa_w_m2=float(poa[i] + f * (poa[i + 1] - poa[i])),
            ghi_w_m2=float(ghi[i] + f * (ghi[i + 1] - ghi[i])),
            zenith_deg=float(zen[i] + f * (zen[i + 1] - zen[i])),
        )
