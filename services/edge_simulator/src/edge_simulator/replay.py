"""Replay of measured profiles: one CSV column (per unit), interpolated to any instant of any year."""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np

from derbus.errors import ConfigError
from edge_simulator.noise import FloatArray


@dataclass(frozen=True)
class Profile:
    """A per-unit profile indexed by seconds since 1 January 00:00 (local time) of its year.

    The profile's own year does not matter: an instant is mapped to the same local month, day
    and time of day in the profile's year (29 February to the 28th when that year has none),
    wrapping at the profile's end, then interpolated linearly.
    """

    name: str
    year: int
    offsets_s: FloatArray
    values: FloatArray
    period_s: float

    def at(self, when: datetime, timezone: str) -> float:
        """Per-unit value at an aware instant, for a site in `timezone`."""
        local = when.astimezone(ZoneInfo(timezone)).replace(tzinfo=None)
        day = local.day
        if local.month == 2 and day == 29 and not calendar.isleap(self.year):
            day = 28
        same = local.replace(year=self.year, day=day)
        offset = (same - datetime(self.year, 1, 1)).total_seconds()
        return float(
            np.interp(offset % self.period_s, self.offsets_s, self.values, period=self.period_s)
        )


def load_profile(path: Path, column: str) -> Profile:
    """Read one column of a profile CSV (a `time` column of naive local timestamps).

    Raises:
        ConfigError: the file cannot be read, lacks `time` or the column, or has bad values.
    """
    import pandas as pd  # only replay needs pandas; keep it off the start-up path

    try:
        frame = pd.read_csv(path, usecols=lambda c: c in ("time", column))
    except (OSError, ValueError) as err:
        raise ConfigError(f"replay file {path}: {err}", ("replay.file",)) from err
    if "time" not in frame or column not in frame:
        available = ", ".join(pd.read_csv(path, nrows=0).columns)
        raise ConfigError(
            f"replay column {column!r} (or `time`) not in {path}; columns: {available}",
            ("replay.load_column",),
        )
    times = pd.to_datetime(frame["time"])
    values = frame[column].to_numpy(dtype=float)
    if not np.all(np.isfinite(values)):
        raise ConfigError(f"replay column {column!r} has missing or non-finite values")
    year_start = pd.Timestamp(year=times.iloc[0].year, month=1, day=1)
    offsets = (times - year_start).dt.total_seconds().to_numpy(dtype=float)
    step = float(np.median(np.diff(offsets))) if len(offsets) > 1 else 900.0
    period = float(offsets[-1] + step)
    return Profile(column, int(year_start.year), offsets, values, period)
