"""The bulk (time-vectorised) backfill path against stepping the fleet one step at a time."""

from __future__ import annotations

import io
import json
from datetime import timedelta

import numpy as np
import pytest

from edge_simulator.fleet import Fleet, Location
from edge_simulator.historical import backfill
from edge_simulator.series import run_series, step_times
from edge_simulator.settings import Settings
from edge_simulator.sim_config import SimConfig
from edge_simulator.testing import T0, make_fleet

CONFIGS = {
    "default": {},
    "spread, no self-consumption": {"size_spread": 0.3, "battery": {"self_consumption": False}},
    "no taper, no EV": {"battery": {"taper_band_pct": 0.0}, "ev": {"enabled": False}},
}


@pytest.mark.parametrize("name", CONFIGS)
def test_bulk_equals_step_by_step(name: str) -> None:
    config = SimConfig.model_validate(CONFIGS[name])
    dt_s = 300.0
    times = step_times(T0, T0 + timedelta(days=3), dt_s)
    stepped = make_fleet(config, n_sites=2)
    stepped.reset_clock(T0 - timedelta(seconds=dt_s))
    steps = [stepped.step(t, dt_s) for t in times]
    bulk = make_fleet(config, n_sites=2)
    bulk.reset_clock(T0 - timedelta(seconds=dt_s))
    # in two chunks: the fleet state carries over from one call to the next
    half = len(times) // 2
    parts = [run_series(bulk, times[:half], dt_s), run_series(bulk, times[half:], dt_s)]
    cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0] if parts[0][k].ndim == 2}
    for field, values in cols.items():
        reference = np.stack([getattr(r, field) for r in steps])
        np.testing.assert_allclose(values, reference, rtol=1e-9, atol=1e-9, err_msg=field)
    assert [r.tou_period for r in steps] == [
        ("off_peak", "shoulder", "peak")[int(p)] for part in parts for p in part["tou_period_index"]
    ]
    np.testing.assert_allclose(bulk.energy_kwh, stepped.energy_kwh, rtol=1e-9)
    assert cols["ev_kw"].max() > 0 or name == "no taper, no EV"
    assert cols["battery_p_kw"].min() < 0 < cols["battery_p_kw"].max() or "no self" in name


def test_backfill_records_match_the_step_path_and_the_seed() -> None:
    settings = Settings(interval_s=900.0, sites=2, seed=5)
    config = SimConfig()
    out = io.StringIO()
    written = backfill(settings, config, T0, T0 + timedelta(days=1), out)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert written == len(lines) == 96 * 2
    fleet = Fleet(config, Location(), 2, 5, T0)
    fleet.reset_clock(T0 - timedelta(seconds=900))
    for k, t in enumerate(step_times(T0, T0 + timedelta(days=1), 900.0)):
        r = fleet.step(t, 900.0)
        for i in range(2):
            rec = lines[2 * k + i]
            assert rec["device_id"] == fleet.ids[i]
            assert rec["net_grid_flow_kw"] == pytest.approx(round(r.pcc_p_kw[i], 4), abs=2e-4)
            assert rec["battery"]["soc_pct"] == pytest.approx(r.battery_soc_pct[i], abs=2e-3)
            assert rec["grid_price"]["tou_period"] == r.tou_period
    again = io.StringIO()
    backfill(settings, config, T0, T0 + timedelta(days=1), again)
    assert again.getvalue() == out.getvalue()
