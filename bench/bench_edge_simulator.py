"""Edge simulator benchmarks: site-steps per second for many sites, and a one-year backfill.

Run: .venv/bin/python bench/bench_edge_simulator.py [--quick]

1. physics only: `Fleet.step` for N sites (the pure vectorised step, no messages);
2. physics + the 8 typed telemetry messages per site (what the service builds before publishing);
3. the service on InMemoryBus: step + publish of every site's messages through `Service.publish`;
4. `--historical`: a one-year 5-minute backfill of one site to JSONL (wall time).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import time
from datetime import UTC, datetime, timedelta

from rich.console import Console
from rich.table import Table

from derbus.bus import InMemoryBus
from edge_simulator.config import SimConfig
from edge_simulator.fleet import Fleet, Location
from edge_simulator.historical import backfill
from edge_simulator.output import StepView
from edge_simulator.service import build_service
from edge_simulator.settings import Settings

T0 = datetime(2026, 6, 22, 6, 0, tzinfo=UTC)


def physics(n_sites: int, steps: int) -> float:
    fleet = Fleet(SimConfig(), Location(), n_sites, 42, T0)
    fleet.step(T0 + timedelta(seconds=1), 1.0)  # warm the sky cache
    started = time.perf_counter()
    for k in range(steps):
        fleet.step(T0 + timedelta(seconds=2 + k), 1.0)
    return n_sites * steps / (time.perf_counter() - started)


def with_messages(n_sites: int, steps: int) -> float:
    fleet = Fleet(SimConfig(), Location(), n_sites, 42, T0)
    fleet.step(T0 + timedelta(seconds=1), 1.0)
    started = time.perf_counter()
    for k in range(steps):
        view = StepView(fleet.step(T0 + timedelta(seconds=2 + k), 1.0))
        for i in range(n_sites):
            view.messages(i, "edge_simulator")
    return n_sites * steps / (time.perf_counter() - started)


async def service_publish(n_sites: int, steps: int) -> float:
    clock_now = [T0]
    service = build_service(
        Settings(mqtt={"root": "bench"}, sites=n_sites, interval_s=3600.0),
        InMemoryBus(),
        clock=lambda: clock_now[0],
    )
    await service.start()
    step = service.state["step"]
    started = time.perf_counter()
    for k in range(steps):
        clock_now[0] = T0 + timedelta(seconds=1 + k)
        await step()
    rate = n_sites * steps / (time.perf_counter() - started)
    await service.stop()
    return rate


def year_backfill(days: int) -> tuple[float, int]:
    start = datetime(2025, 1, 1, tzinfo=UTC)
    out = io.StringIO()
    started = time.perf_counter()
    written = backfill(
        Settings(interval_s=300.0), SimConfig(), start, start + timedelta(days=days), out
    )
    return time.perf_counter() - started, written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short run")
    args = parser.parse_args()
    steps = 20 if args.quick else 120
    console = Console()
    table = Table(title="edge_simulator: site-steps per second (one core)")
    for col in ("sites", "physics", "physics + messages", "service + InMemoryBus publish",
                "1 Hz real time for N sites?"):  # fmt: skip
        table.add_column(col, justify="right")
    for n in (1, 100, 1000) if not args.quick else (1, 1000):
        p = physics(n, steps)
        m = with_messages(n, max(2, steps // 10))
        s = asyncio.run(service_publish(n, max(2, steps // 20)))
        table.add_row(str(n), f"{p:,.0f}", f"{m:,.0f}", f"{s:,.0f}", "yes" if s >= n else "no")
    console.print(table)
    days = 30 if args.quick else 365
    wall, records = year_backfill(days)
    t2 = Table(title="edge_simulator: historical backfill, 1 site, 5-minute steps")
    for col in ("days", "records", "wall s", "records/s"):
        t2.add_column(col, justify="right")
    t2.add_row(str(days), f"{records:,}", f"{wall:.1f}", f"{records / wall:,.0f}")
    console.print(t2)


if __name__ == "__main__":
    main()
