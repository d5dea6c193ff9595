"""The edge simulator sharded over processes: does 1,000 sites × 8 devices keep 1 Hz?

Runs `python -m edge_simulator --sites N --interval 1 --shards K` (each shard its own process,
session and API) on its own Mosquitto (the derbus configuration), for K = 1 (the reference: one
process) and each `--shards` value; after a warm-up, reads every shard's `/sites` step count at
the start and end of a `--seconds` window and reports the site-steps per second the fleet
achieved (goal: N per second, i.e. every site every second), the steps each shard made against
the due ones, and the load average.

    .venv/bin/python bench/bench_edge_shards.py [--sites 1000] [--shards 2] [--seconds 30]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from derbus.testing import MosquittoServer, free_port
from derbus.testing.process import service_env


def steps(ports: list[int]) -> list[int] | None:
    """Each shard's step count (None while one does not answer)."""
    counts = []
    for port in ports:
        try:
            got = httpx.get(f"http://127.0.0.1:{port}/sites", timeout=5)
        except httpx.HTTPError:
            return None
        if got.status_code != 200:
            return None
        counts.append(int(got.json()["steps"]))
    return counts


def run(sites: int, shards: int, seconds: float, warmup_s: float) -> tuple[float, list[int]]:
    broker = MosquittoServer()
    broker.start()
    base = free_port()
    ports = [base + k for k in range(shards)] if shards > 1 else [base]
    env = service_env(
        "EDGE_SIMULATOR_",
        broker.host,
        broker.port,
        f"bench/shards-{os.getpid()}",
        EDGE_SIMULATOR_API_PORT=str(base),
        EDGE_SIMULATOR_LOG_LEVEL="WARNING",
    )
    args = ["--sites", str(sites), "--interval", "1"]
    if shards > 1:
        args += ["--shards", str(shards)]
    log = Path(tempfile.mkdtemp(prefix="derbus-shards-")) / "edge.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edge_simulator", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 180
        while (first := steps(ports)) is None or min(first) < 1:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"the simulator did not start: {log.read_text()[-2000:]}")
            time.sleep(0.5)
        time.sleep(warmup_s)
        start, t0 = steps(ports), time.monotonic()
        time.sleep(seconds)
        end, t1 = steps(ports), time.monotonic()
        if start is None or end is None:
            raise RuntimeError("a shard stopped answering during the window")
        made = [e - s for s, e in zip(start, end, strict=True)]
        per_shard = [sites // shards + (1 if k < sites % shards else 0) for k in range(shards)]
        site_steps = sum(m * n for m, n in zip(made, per_shard, strict=True)) / (t1 - t0)
        return site_steps, made
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        broker.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sites", type=int, default=1000)
    parser.add_argument("--shards", type=int, nargs="+", default=[2])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--warmup", type=float, default=10.0)
    args = parser.parse_args()
    load = os.getloadavg()
    print(
        f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, {os.cpu_count()} CPUs"
    )
    print(f"{args.sites} sites x 8 devices, a step every 1 s, {args.seconds:.0f} s window")
    print("| processes | site-steps/s (goal = sites) | share of 1 Hz | steps per shard in window |")
    print("| ---: | ---: | ---: | --- |")
    for shards in [1, *args.shards]:
        rate, made = run(args.sites, shards, args.seconds, args.warmup)
        print(f"| {shards} | {rate:,.0f} | {rate / args.sites:.0%} | {made} |", flush=True)
    load = os.getloadavg()
    print(f"load average at end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
