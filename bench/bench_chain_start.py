"""Seconds from `derbus up` (what `make run` runs) to each part of the value chain on the bus.

Launches the platform as `make run` does (fresh run folder, so a fresh embedded store: the
forecaster's cold start), on free ports, `--runs` times one after the other; prints when each
part was first seen (telemetry, banded forecasts, the EMA's battery schedule, an acknowledged
PMA setpoint, a meter-gateway reading, the load manager's plan, the feeder state) and the load
average, which on a shared 2-core machine decides most of it.

    .venv/bin/python bench/bench_chain_start.py [--runs 3] [--timeout 300]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from derbus import topics
from derbus.bus import MqttBus, RawMessage
from derbus.settings import MqttSettings
from derbus.testing import free_port
from derbus.testing.process import up_command
from derbus.testing.servers import port_open
from derbus.watch import WatchState

REPO = Path(__file__).resolve().parents[1]


async def one_run(timeout_s: float) -> dict[str, float]:
    """Launch, watch until every part was seen (or timeout), stop; first-seen seconds per part."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="chain-bench-") as run_root:
        started = time.monotonic()
        proc = subprocess.Popen(
            up_command(REPO, run_root, port, "--no-watch"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        state = WatchState(root=topics.DEFAULT_ROOT)
        seen: dict[str, float] = {}

        async def record(raw: RawMessage) -> None:
            state.update(raw)
            for part, ok in state.chain().items():
                if ok and part not in seen:
                    seen[part] = time.monotonic() - started

        bus = MqttBus(MqttSettings(port=port))
        try:
            while not port_open("127.0.0.1", port) and time.monotonic() - started < 30:
                await asyncio.sleep(0.1)
            await bus.connect()
            await bus.subscribe(topics.all_topics_filter(), 1, record)
            while len(seen) < len(state.chain()) and time.monotonic() - started < timeout_s:
                await asyncio.sleep(0.2)
            await bus.close()
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(60)
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()
    parts = list(WatchState(root="x").chain())
    print(f"{'run':>3s} {'load1':>6s} " + " ".join(f"{p[:16]:>16s}" for p in parts))
    for run in range(1, args.runs + 1):
        load = os.getloadavg()[0]
        seen = asyncio.run(one_run(args.timeout))
        cells = " ".join(f"{seen[p]:16.1f}" if p in seen else f"{'—':>16s}" for p in parts)
        print(f"{run:3d} {load:6.1f} {cells}", flush=True)
    print(f"seconds after launch; load average now {os.getloadavg()}")


if __name__ == "__main__":
    main()
