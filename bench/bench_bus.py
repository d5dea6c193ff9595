"""Bus benchmark: MqttBus throughput (QoS 0/1) and latency at a paced rate, InMemoryBus for scale.

Starts its own Mosquitto on a free port (explicit queue limits, TCP_NODELAY) and stops it by PID.
Prints a table; figures go in BENCHMARKS.md.

    .venv/bin/python bench/bench_bus.py [--messages 20000] [--rate 1000] [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import time

from derbus import topics
from derbus.bus import InMemoryBus, MqttBus, RawMessage
from derbus.messages import MeterReading, utcnow
from derbus.settings import MqttSettings
from derbus.testing import MosquittoServer

ROOT = "bench/bus"


def payload() -> bytes:
    return MeterReading(
        ts=utcnow(), source="bench", p_kw=12.345, q_kvar=1.2, v_l1_v=230.1, v_l2_v=229.8,
        v_l3_v=231.0, e_import_kwh=1234.5, e_export_kwh=12.0,
    ).to_json_bytes()  # fmt: skip


async def throughput(pub: object, sub: object, qos: int, count: int) -> tuple[float, int]:
    """Messages per second from publish of the first to receipt of the last (bounded to 60 s)."""
    received = 0
    done = asyncio.Event()

    async def on_message(_: RawMessage) -> None:
        nonlocal received
        received += 1
        if received >= count:
            done.set()

    await sub.subscribe(topics.METER.filter(root=ROOT), qos, on_message)  # type: ignore[attr-defined]
    body = payload()
    topic = topics.METER.topic("s1", "pcc", ROOT)
    started = time.perf_counter()
    for i in range(count):
        await pub.publish(topic, body, qos=qos)  # type: ignore[attr-defined]
        if i % 500 == 0:
            await asyncio.sleep(0)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(done.wait(), 60)
    return received / (time.perf_counter() - started), received


async def latency(pub: MqttBus, sub: MqttBus, rate_hz: float, seconds: float) -> list[float]:
    """One-way latency (same host clock) of QoS 1 messages published at a paced rate, ms."""
    samples: list[float] = []

    async def on_message(message: RawMessage) -> None:
        sent = float(message.payload.split(b"|", 1)[0])
        samples.append((time.perf_counter() - sent) * 1000)

    await sub.subscribe(topics.PV.filter(root=ROOT), 1, on_message)
    topic = topics.PV.topic("s1", "pv", ROOT)
    period = 1.0 / rate_hz
    n = int(rate_hz * seconds)
    start = time.perf_counter()
    for i in range(n):
        target = start + i * period
        delay = target - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        await pub.publish(topic, f"{time.perf_counter()}|".encode() + b"x" * 180, qos=1)
    deadline = time.perf_counter() + 10
    while len(samples) < n and time.perf_counter() < deadline:
        await asyncio.sleep(0.01)
    return samples


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main(args: argparse.Namespace) -> None:
    server = MosquittoServer().start()
    try:
        settings = MqttSettings(host=server.host, port=server.port, root=ROOT)
        rows = []
        for qos in (0, 1):
            pub, sub = MqttBus(settings), MqttBus(settings)
            await pub.connect()
            await sub.connect()
            rate, got = await throughput(pub, sub, qos, args.messages)
            rows.append((f"MqttBus → Mosquitto → MqttBus, QoS {qos}", rate, got))
            await pub.close()
            await sub.close()
        mem_pub = InMemoryBus()
        mem_sub = InMemoryBus(mem_pub.broker)
        await mem_pub.connect()
        await mem_sub.connect()
        rate, got = await throughput(mem_pub, mem_sub, 1, args.messages)
        rows.append(("InMemoryBus (same process)", rate, got))
        await mem_pub.close()
        await mem_sub.close()

        pub, sub = MqttBus(settings), MqttBus(settings)
        await pub.connect()
        await sub.connect()
        samples = await latency(pub, sub, args.rate, args.seconds)
        await pub.close()
        await sub.close()
    finally:
        server.cleanup()

    print(f"\n{'path':42s} {'msg/s':>10s} {'received':>10s}")
    for name, rate, got in rows:
        print(f"{name:42s} {rate:10.0f} {got:10d}")
    if samples:
        print(
            f"\nQoS 1 latency at {args.rate:.0f} msg/s for {args.seconds:.0f} s "
            f"({len(samples)} messages): p50 {statistics.median(samples):.2f} ms, "
            f"p99 {pct(samples, 0.99):.2f} ms, max {max(samples):.2f} ms"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    asyncio.run(main(parser.parse_args()))
