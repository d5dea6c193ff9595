"""Simulator hot paths of two source trees, interleaved in one run (A/B under the same load).

Run: .venv/bin/python bench/bench_simulator_ab.py BEFORE_SRC [AFTER_SRC] [--rounds N]

Each tree is the `src` folder of an edge_simulator checkout (default AFTER: this repository's);
every round runs each tree in its own subprocess, alternating, so a load swing hits both.
Per tree: `Fleet.step` time per step for 1 and 1,000 sites (p50, p99, max over 300 / 60 steps
after a warm-up), the bus messages of one step of 1,000 sites (`StepView.messages`, 20 steps)
and the wall time of a 30-day one-site 5-minute backfill to JSONL.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
CHILD = r"""
import io, json, time
from datetime import UTC, datetime, timedelta
from edge_simulator.sim_config import SimConfig
from edge_simulator.fleet import Fleet, Location
from edge_simulator.historical import backfill
from edge_simulator.output import StepView
from edge_simulator.settings import Settings

T0 = datetime(2026, 6, 22, 6, 0, tzinfo=UTC)
out = {}
for n, steps in ((1, 300), (1000, 60)):
    fleet = Fleet(SimConfig(), Location(), n, 42, T0)
    fleet.step(T0 + timedelta(seconds=1), 1.0)
    times = []
    for k in range(steps):
        t = time.perf_counter()
        fleet.step(T0 + timedelta(seconds=2 + k), 1.0)
        times.append(time.perf_counter() - t)
    out[f"step_{n}"] = times
fleet = Fleet(SimConfig(), Location(), 1000, 42, T0)
times = []
for k in range(20):
    result = fleet.step(T0 + timedelta(seconds=1 + k), 1.0)
    t = time.perf_counter()
    view = StepView(result)
    for i in range(1000):
        view.messages(i, "site")
    times.append(time.perf_counter() - t)
out["messages_1000"] = times
start = datetime(2025, 1, 1, tzinfo=UTC)
t = time.perf_counter()
backfill(Settings(interval_s=300.0), SimConfig(), start, start + timedelta(days=30), io.StringIO())
out["backfill_30d"] = [time.perf_counter() - t]
print(json.dumps(out))
"""


def run(src: Path) -> dict[str, list[float]]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    done = subprocess.run(
        [sys.executable, "-c", CHILD],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=True,
    )
    result: dict[str, list[float]] = json.loads(done.stdout.splitlines()[-1])
    return result


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("before", type=Path)
    parser.add_argument(
        "after", type=Path, nargs="?", default=HERE.parent / "services/edge_simulator/src"
    )
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    runs: dict[str, list[dict[str, list[float]]]] = {"before": [], "after": []}
    loads = []
    for _ in range(args.rounds):
        for name in ("before", "after"):
            loads.append(os.getloadavg()[0])
            runs[name].append(run(getattr(args, name)))
    table = Table(
        title=f"edge_simulator A/B, {args.rounds} interleaved rounds "
        f"(load average {min(loads):.1f}–{max(loads):.1f} on {os.cpu_count()} cores)"
    )
    for col in (
        "tree",
        "step 1 site p50 / p99 / max, ms",
        "step 1,000 sites p50 / p99 / max, ms",
        "messages of 1,000 sites p50 / p99 / max, ms",
        "30-day backfill s (median of rounds)",
    ):
        table.add_column(col, justify="right")
    medians = {}
    for name, rounds in runs.items():
        cells = []
        for key in ("step_1", "step_1000", "messages_1000"):
            values = [v * 1000 for r in rounds for v in r[key]]
            cells.append(f"{pct(values, 0.5):.2f} / {pct(values, 0.99):.2f} / {max(values):.2f}")
        medians[name] = statistics.median(r["backfill_30d"][0] for r in rounds)
        table.add_row(name, *cells, f"{medians[name]:.1f}")
    Console().print(table)
    print(f"backfill after/before: {medians['after'] / medians['before']:.2f}")


if __name__ == "__main__":
    main()
