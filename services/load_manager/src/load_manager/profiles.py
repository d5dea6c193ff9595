"""Load profiles on a step grid: resampling by energy, cumulative Wh to kW (pure)."""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence


def _cumulative_at(times_s: Sequence[float], cum_wh: Sequence[float], t: float) -> float:
    """Piecewise-linear cumulative energy at `t` (flat beyond the ends)."""
    if t <= times_s[0]:
        return cum_wh[0]
    if t >= times_s[-1]:
        return cum_wh[-1]
    i = bisect.bisect_right(times_s, t) - 1
    t0, t1 = times_s[i], times_s[i + 1]
    return cum_wh[i] + (cum_wh[i + 1] - cum_wh[i]) * (t - t0) / (t1 - t0)


def profile_from_cumulative(points: Sequence[tuple[float, float]], step_s: int) -> list[float]:
    """Power per step (kW) from cumulative energy points (time_s, Wh), linear in between.

    The profile starts at the first point's time; the last partial step is kept. Raises
    ValueError when times do not increase or energy decreases.
    """
    if len(points) < 2:
        raise ValueError("a cumulative profile needs at least two points")
    times = [float(t) for t, _ in points]
    cum = [float(e) for _, e in points]
    for i in range(1, len(points)):
        if times[i] <= times[i - 1]:
            raise ValueError(f"point {i + 1}: time_s must increase ({times[i]} <= {times[i - 1]})")
        if cum[i] < cum[i - 1]:
            raise ValueError(f"point {i + 1}: cumulative_wh must not decrease")
    duration = times[-1] - times[0]
    n = max(1, math.ceil(duration / step_s - 1e-9))
    out = []
    for k in range(n):
        a = times[0] + k * step_s
        b = times[0] + (k + 1) * step_s
        e_wh = _cumulative_at(times, cum, b) - _cumulative_at(times, cum, a)
        out.append(e_wh / (step_s / 3600.0) / 1000.0)
    return out


def resample_profile(profile_kw: Sequence[float], src_step_s: int, dst_step_s: int) -> list[float]:
    """Re-grid a power profile (kW per step) to another step, conserving energy."""
    if src_step_s == dst_step_s:
        return [float(p) for p in profile_kw]
    points = [(0.0, 0.0)]
    total = 0.0
    for i, p in enumerate(profile_kw):
        total += p * 1000.0 * src_step_s / 3600.0
        points.append(((i + 1) * float(src_step_s), total))
    return profile_from_cumulative(points, dst_step_s)
