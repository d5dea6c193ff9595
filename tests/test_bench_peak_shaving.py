"""The peak-shaving value bench on any CSV of 15-minute per-unit profiles (a small fixture)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench" / "bench_peak_shaving.py"


def fixture_csv(path: Path) -> Path:
    """Six weeks of a made-up site in the shipped file's layout (naive local times, per unit)."""
    times = pd.date_range("2021-01-01", "2021-02-11", freq="15min", inclusive="left")
    hour = times.hour + times.minute / 60
    rng = np.random.default_rng(3)
    workday = (times.day_of_week < 5).astype(float)
    load = 0.3 + 0.5 * workday * np.exp(-(((hour - 11) / 3) ** 2)) + 0.05 * rng.random(len(times))
    pv = np.clip(np.sin((hour - 8) / 8 * np.pi), 0, None) * (0.6 + 0.4 * rng.random(len(times)))
    frame = pd.DataFrame(
        {
            "time": times.strftime("%Y-%m-%dT%H:%M:%S"),
            "site_load_pu": load / load.max(),
            "roof_pv_pu": pv,
        }
    )
    frame.to_csv(path, index=False)
    return path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(BENCH), *args],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def run_value(csv: Path, out: Path, days: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """The value section on the fixture's two months, `days` of each, written to `out`."""
    return run(
        "--profiles",
        str(csv),
        "--load-col",
        "site_load_pu",
        "--pv-col",
        "roof_pv_pu",
        "--months",
        "2",
        "--days",
        days,
        "--step-s",
        "900",
        "--replan-s",
        "3600",
        "--history-days",
        "21",
        "--max-iter",
        "10",
        *extra,
        "--json",
        str(out),
    )


def test_value_bench_runs_on_any_profile_csv(tmp_path: Path) -> None:
    csv = fixture_csv(tmp_path / "site.csv")
    out = tmp_path / "value.json"
    done = run_value(csv, out, "1")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "share of bill reduction" in done.stdout
    body = json.loads(out.read_text())
    (record,) = body["records"]
    assert record["month"] == "2021-02"
    assert record["load_col"] == "site_load_pu"
    assert record["import_limit_kw"] == 75.0
    runs = record["runs"]
    assert set(runs) == {"none", "derbus", "rule", "perfect"}
    for figures in runs.values():
        assert figures["bill"] == figures["energy_cost"] + figures["demand_charge"]
    assert runs["none"]["throughput_kwh"] == 0
    assert runs["derbus"]["throughput_kwh"] > 0
    # at 15-minute steps the optimum sees exactly the month the others run on: never worse
    assert runs["perfect"]["bill"] <= runs["none"]["bill"] + 1e-6
    possible = runs["none"]["bill"] - runs["perfect"]["bill"]
    if possible > 1e-6:
        share = (runs["none"]["bill"] - runs["derbus"]["bill"]) / possible
        assert record["derbus_share_bill"] == share
    assert record["ema_solves"] == 24  # one re-plan an hour for the day
    assert body["summary"]["median_share_bill"] == record["derbus_share_bill"]


def test_value_bench_without_import_limit_and_with_a_wrong_column(tmp_path: Path) -> None:
    csv = fixture_csv(tmp_path / "site.csv")
    out = tmp_path / "value.json"
    done = run_value(csv, out, "0.5", "--no-import-limit")
    assert done.returncode == 0, done.stderr[-3000:]
    (record,) = json.loads(out.read_text())["records"]
    assert record["import_limit_kw"] is None
    assert all(f["violation_kwh"] == 0 for f in record["runs"].values())
    wrong = run("--profiles", str(csv), "--load-col", "nope", "--pv-col", "roof_pv_pu")
    assert wrong.returncode != 0
    assert "'nope'" in wrong.stderr
