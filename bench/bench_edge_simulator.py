"""Edge simulator benchmarks: site-steps per second for many sites, and a one-year backfill.

Run: .venv/bin/python bench/bench_edge_simulator.py [--quick]

1. physics only: `Fleet.step` for N sites (the pure vectorised step, no messages);
2. physics + serialise: the 8 telemetry payloads per site (`wire.encode_step`, what is published);
3. the service on InMemoryBus: `step()` = physics + payloads + one `bus.publish` per message;
4. the service on a real Mosquitto (started here on a free port, QoS 1 retained as in the
   catalogue): steps as fast as they go, timed until the broker acknowledged the last message;
   with every device (8 messages per site) and with `--devices pcc,pv,battery,load` (4);
5. `--historical`: a one-year 5-minute backfill of one site to JSONL (wall time).
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
from derbus.bus.base import Bus
from derbus.bus.mqtt import MqttBus
from derbus.settings import MqttSettings
from derbus.testing import MosquittoServer
from edge_simulator.fleet import Fleet, Location
from edge_simulator.historical import backfill
from edge_simulator.service import build_service
from edge_simulator.settings import Settings
from edge_simulator.sim_config import SimConfig
from edge_simulator.wire import encode_step

T0 = datetime(2026, 6, 22, 6, 0, tzinfo=UTC)


def physics(n_sites: int, steps: int) -> float:
    fleet = Fleet(SimConfig(), Location(), n_sites, 42, T0)
    fleet.step(T0 + timedelta(seconds=1), 1.0)  # warm the sky cache
    started = time.perf_counter()
    for k in range(steps):
        fleet.step(T0 + timedelta(seconds=2 + k), 1.0)
    return n_sites * steps / (time.perf_counter() - started)


def with_payloads(n_sites: int, steps: int) -> float:
    fleet = Fleet(SimConfig(), Location(), n_sites, 42, T0)
    fleet.step(T0 + timedelta(seconds=1), 1.0)
    started = time.perf_counter()
    for k in range(steps):
        encode_step(fleet.step(T0 + timedelta(seconds=2 + k), 1.0), "edge_simulator")
    return n_sites * steps / (time.perf_counter() - started)


async def service_publish(
    n_sites: int,
    steps: int,
    bus: Bus | None = None,
    mqtt: MqttSettings | None = None,
    devices: str | None = None,
) -> float:
    clock_now = [T0]
    extra = {"devices": devices} if devices else {}
    service = build_service(
        Settings(
            mqtt=mqtt or MqttSettings(root="bench"), sites=n_sites, interval_s=3600.0, **extra
        ),
        bus or InMemoryBus(),
        clock=lambda: clock_now[0],
    )
    await service.start()
    step = service.state.step
    await step()  # the first step loads pvlib and the day's sky: not timed
    await acked(service.bus)
    started = time.perf_counter()
    for k in range(steps):
        clock_now[0] = T0 + timedelta(seconds=2 + k)
        await step()
    await acked(service.bus)
    rate = n_sites * steps / (time.perf_counter() - started)
    await service.stop()
    return rate


async def acked(bus: Bus) -> None:
    """Wait until the broker acknowledged everything published so far (MQTT bus only).

    QoS 1 messages are sent and acknowledged in order, so a last QoS 1 marker's PUBACK means
    every earlier message reached the broker.
    """
    if isinstance(bus, MqttBus):
        client = bus._client  # bench only: the paho handle, for the marker
        assert client is not None
        info = client.publish(f"{bus.settings.root}/bench-marker", b"", qos=1)
        await asyncio.to_thread(info.wait_for_publish, 300.0)


async def over_mosquitto(n_sites: int, steps: int, devices: str | None) -> float:
    broker = MosquittoServer().start()
    try:
        mqtt = MqttSettings(host=broker.host, port=broker.port, root="bench")
        return await service_publish(n_sites, steps, MqttBus(mqtt), mqtt, devices)
    finally:
        broker.stop()


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
    table = Table(title="edge_simulator: site-steps per second (one Python process)")
    for col in (
        "sites",
        "physics",
        "physics + payloads",
        "service, InMemoryBus",
        "service, Mosquitto, 8 devices",
        "service, Mosquitto, 4 devices",
        "1 Hz real time (Mosquitto, 8 / 4 devices)?",
    ):
        table.add_column(col, justify="right")
    for n in (1, 100, 1000) if not args.quick else (1, 1000):
        p = physics(n, steps)
        m = with_payloads(n, max(2, steps // 10))
        s = asyncio.run(service_publish(n, max(2, steps // 10)))
        # paho keeps at most 65,535 unacknowledged QoS 1 messages (16-bit message ids): a burst
        # above that fails with "Message queue full", so 1,000 sites run 6 steps (48k messages)
        mq_steps = max(3, steps // 4) if n < 1000 else 6
        q8 = asyncio.run(over_mosquitto(n, mq_steps, None))
        q4 = asyncio.run(over_mosquitto(n, mq_steps, "pcc,pv,battery,load"))
        verdict = f"{'yes' if q8 >= n else 'no'} / {'yes' if q4 >= n else 'no'}"
        table.add_row(
            str(n), f"{p:,.0f}", f"{m:,.0f}", f"{s:,.0f}", f"{q8:,.0f}", f"{q4:,.0f}", verdict
        )
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
