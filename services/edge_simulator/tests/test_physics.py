"""The shared formulas on their own: floats and arrays alike, sessions across midnight."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import numpy as np

from edge_simulator import physics
from edge_simulator.sim_config import SimConfig


def test_ou_step_is_the_same_on_floats_and_arrays() -> None:
    for params in (physics.ou_params(0.5, 1.2, 0.25), physics.ou_params(0.0, 1.2, 0.25)):
        x, z = np.array([-1.0, 0.0, 2.5]), np.array([0.3, -1.1, 0.0])
        stepped = physics.ou_step(x, 0.4, params, z)
        assert stepped.tolist() == [
            physics.ou_step(a, 0.4, params, b) for a, b in zip(x, z, strict=True)
        ]
    reverting = physics.ou_params(2.0, 1.0, 1.0)
    assert physics.ou_step(10.0, 0.0, reverting, 0.0) < 10.0, "pulled towards the mean"


def test_ev_session_runs_from_arrival_to_the_next_morning() -> None:
    midnight = 1_000_000.0
    today = (np.array([midnight + 18 * 3600.0]), np.array([0.0]), np.array([1.0]), np.array([7.0]))
    night_before = (
        np.array([midnight - 6 * 3600.0]),
        np.array([midnight + 7 * 3600.0]),
        np.array([1.0]),
        np.array([4.0]),
    )
    at = [midnight + h * 3600.0 for h in (6.0, 12.0, 19.0)]
    got = [physics.ev_sessions(100.0, t, today, night_before) for t in at]
    assert [(s.tolist(), e.tolist()) for s, e in got] == [
        ([99.0], [4.0]),  # still plugged in from the evening before
        ([-1.0], [0.0]),  # away
        ([100.0], [7.0]),  # today's session
    ]


def test_instant_reads_local_time_and_the_tariff() -> None:
    config = SimConfig()
    tz = ZoneInfo("Europe/Madrid")
    tariff = config.grid_price.tariff.model_copy(update={"timezone": "Europe/Madrid"})
    start = datetime(2026, 1, 1, tzinfo=UTC)
    night = physics.instant(
        datetime(2026, 6, 22, 1, 0, tzinfo=UTC), tz, config, 41.4, tariff, start
    )
    assert (night.hour, night.night, night.lighting_use) == (3.0, 1.0, 0.05)
    evening = physics.instant(
        datetime(2026, 6, 22, 18, 30, tzinfo=UTC), tz, config, 41.4, tariff, start
    )
    assert (evening.hour, evening.night, evening.lighting_use) == (20.5, 0.0, 1.0)
    assert evening.day == night.day
    assert evening.counter - night.counter == 17.5 * 3600 * 1000
    assert evening.period == tariff.period_at(datetime(2026, 6, 22, 18, 30, tzinfo=UTC))
    assert 0.46 < evening.age_years < 0.48
