"""Bus benchmark: the buses against the raw clients they are built on, same broker, same run.

Rows: raw paho (in-flight window 20 = paho's default, and 0 = no window), raw gmqtt, `MqttBus`
as it was before issue 19 (paho, in-flight 1000, MQTT 3.1.1), `MqttBus` now (in-flight 0, MQTT 5
and 3.1.1), `GmqttBus` (MQTT 5) and `InMemoryBus`. For each: QoS 0 and QoS 1 throughput (publisher
and subscriber in this process, from the first publish to the last receipt, 240-byte JSON) and
QoS 1 one-way latency at a paced rate (p50 / p99 / max). Each throughput figure is the median of
`--repeat` runs, interleaved across rows so a noisy neighbour hits every row alike. Beside the
wall-clock rate, the CPU time this process spent per message (publisher + subscriber, all
threads; the broker excluded): on a shared machine the wall-clock rate follows the CPU share the
process gets, the CPU cost per message much less. Prints the ratios the issue asks for, on both.

Starts its own Mosquitto on a free port (the derbus test configuration: explicit queue limits,
`set_tcp_nodelay`) and stops it by PID.

    .venv/bin/python bench/bench_bus.py [--messages 20000] [--rate 1000] [--seconds 5] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gmqtt
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from derbus.bus import Bus, GmqttBus, InMemoryBroker, InMemoryBus, MqttBus, RawMessage
from derbus.messages import MeterReading, utcnow
from derbus.settings import MqttSettings
from derbus.testing import MosquittoServer

OnMessage = Callable[[bytes], None]


def payload() -> bytes:
    return MeterReading(
        ts=utcnow(),
        source="bench",
        p_kw=12.345,
        q_kvar=1.2,
        v_l1_v=230.1,
        v_l2_v=229.8,
        v_l3_v=231.0,
        e_import_kwh=1234.5,
        e_export_kwh=12.0,
    ).to_json_bytes()


class Client:
    """What the bench needs of a client: connect, subscribe with a callback, publish, close."""

    async def connect(self) -> None:
        raise NotImplementedError

    async def subscribe(self, topic: str, qos: int, on_message: OnMessage) -> None:
        raise NotImplementedError

    async def publish(self, topic: str, body: bytes, qos: int) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class RawPaho(Client):
    """paho-mqtt 2 with its network thread (`loop_start`), callbacks in that thread."""

    def __init__(self, port: int, inflight: int | None) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        if inflight is not None:
            self.client.max_inflight_messages_set(inflight)
        self.client.max_queued_messages_set(0)
        self.port = port

    async def connect(self) -> None:
        connected = threading.Event()
        self.client.on_connect = lambda *a: connected.set()
        self.client.connect("127.0.0.1", self.port)
        self.client.loop_start()
        await asyncio.to_thread(connected.wait, 10)

    async def subscribe(self, topic: str, qos: int, on_message: OnMessage) -> None:
        acked = threading.Event()
        self.client.on_message = lambda c, u, m: on_message(m.payload)
        self.client.on_subscribe = lambda *a: acked.set()
        self.client.subscribe(topic, qos)
        await asyncio.to_thread(acked.wait, 10)

    async def publish(self, topic: str, body: bytes, qos: int) -> None:
        self.client.publish(topic, body, qos=qos)

    async def close(self) -> None:
        self.client.disconnect()
        await asyncio.to_thread(self.client.loop_stop)


class RawGmqtt(Client):
    """gmqtt on the event loop, MQTT 5, callbacks on the loop."""

    def __init__(self, port: int) -> None:
        self.client = gmqtt.Client(f"bench-{uuid.uuid4().hex[:8]}")
        self.port = port

    async def connect(self) -> None:
        await self.client.connect("127.0.0.1", self.port)

    async def subscribe(self, topic: str, qos: int, on_message: OnMessage) -> None:
        acked = asyncio.Event()

        def on_msg(client: Any, topic: str, body: bytes, qos: int, props: Any) -> int:
            on_message(body)
            return 0

        self.client.on_message = on_msg
        self.client.on_subscribe = lambda *a: acked.set()
        self.client.subscribe(topic, qos)
        await asyncio.wait_for(acked.wait(), 10)

    async def publish(self, topic: str, body: bytes, qos: int) -> None:
        self.client.publish(topic, body, qos=qos)

    async def close(self) -> None:
        await self.client.disconnect()


class OnBus(Client):
    """A derbus `Bus` (callbacks through its dispatcher, on the loop)."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    async def connect(self) -> None:
        await self.bus.connect()

    async def subscribe(self, topic: str, qos: int, on_message: OnMessage) -> None:
        async def callback(message: RawMessage) -> None:
            on_message(message.payload)

        await self.bus.subscribe(topic, qos, callback)

    async def publish(self, topic: str, body: bytes, qos: int) -> None:
        await self.bus.publish(topic, body, qos=qos)

    async def close(self) -> None:
        await self.bus.close()


@dataclass
class Row:
    name: str
    make: Callable[[], Client]
    rates: dict[int, list[float]] = field(default_factory=lambda: {0: [], 1: []})
    cpu_us: dict[int, list[float]] = field(default_factory=lambda: {0: [], 1: []})
    lost: dict[int, int] = field(default_factory=lambda: {0: 0, 1: 0})
    latency_ms: list[float] = field(default_factory=list)


async def throughput(row: Row, qos: int, count: int) -> None:
    """Messages per second from the first publish to the receipt of the last (bounded 60 s)."""
    loop = asyncio.get_running_loop()
    received = 0
    done = asyncio.Event()

    def on_message(_: bytes) -> None:
        nonlocal received
        received += 1
        if received == count:
            loop.call_soon_threadsafe(done.set)

    topic = f"bench/{uuid.uuid4().hex[:8]}/s1/telemetry/pcc/meter"
    pub, sub = row.make(), row.make()
    await sub.connect()
    await pub.connect()
    await sub.subscribe(topic, qos, on_message)
    body = payload()
    started, cpu_started = time.perf_counter(), time.process_time()
    for i in range(count):
        await pub.publish(topic, body, qos)
        if i % 500 == 0:
            await asyncio.sleep(0)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(done.wait(), 60)
    row.rates[qos].append(received / (time.perf_counter() - started))
    row.cpu_us[qos].append((time.process_time() - cpu_started) / max(1, received) * 1e6)
    row.lost[qos] += count - received
    await pub.close()
    await sub.close()


async def latency(row: Row, rate_hz: float, seconds: float) -> None:
    """One-way latency (same host clock) of QoS 1 messages published at a paced rate, ms."""
    samples = row.latency_ms

    def on_message(body: bytes) -> None:
        samples.append((time.perf_counter() - float(body.split(b"|", 1)[0])) * 1000)

    topic = f"bench/{uuid.uuid4().hex[:8]}/s1/telemetry/pv/pv"
    pub, sub = row.make(), row.make()
    await sub.connect()
    await pub.connect()
    await sub.subscribe(topic, 1, on_message)
    period = 1.0 / rate_hz
    n = int(rate_hz * seconds)
    start = time.perf_counter()
    for i in range(n):
        delay = start + i * period - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        await pub.publish(topic, f"{time.perf_counter()}|".encode() + b"x" * 200, 1)
    deadline = time.perf_counter() + 10
    while len(samples) < n and time.perf_counter() < deadline:
        await asyncio.sleep(0.01)
    await pub.close()
    await sub.close()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def rows_for(port: int) -> list[Row]:
    def settings(**kw: Any) -> MqttSettings:
        return MqttSettings(host="127.0.0.1", port=port, root="bench", **kw)

    broker = InMemoryBroker()
    return [
        Row("raw paho, in-flight 20 (paho default)", lambda: RawPaho(port, None)),
        Row("raw paho, in-flight 0", lambda: RawPaho(port, 0)),
        Row("raw gmqtt (MQTT 5)", lambda: RawGmqtt(port)),
        Row(
            "MqttBus before (paho, in-flight 1000, 3.1.1)",
            lambda: OnBus(MqttBus(settings(protocol="3.1.1"), max_inflight=1000)),
        ),
        Row("MqttBus now (paho, in-flight 0, MQTT 5)", lambda: OnBus(MqttBus(settings()))),
        Row(
            "MqttBus now, 3.1.1 (paho, in-flight 0)",
            lambda: OnBus(MqttBus(settings(protocol="3.1.1"))),
        ),
        Row("GmqttBus (MQTT 5)", lambda: OnBus(GmqttBus(settings()))),
        Row("InMemoryBus (same process)", lambda: OnBus(InMemoryBus(broker))),
    ]


async def main(args: argparse.Namespace) -> None:
    server = MosquittoServer().start()
    load = os.getloadavg()
    try:
        rows = rows_for(server.port)
        for _ in range(args.repeat):
            for qos in (0, 1):
                for row in rows:
                    await throughput(row, qos, args.messages)
        for row in rows:
            if "InMemory" not in row.name:
                await latency(row, args.rate, args.seconds)
    finally:
        server.cleanup()
    load_after = os.getloadavg()

    print(
        f"\n{args.messages} messages of {len(payload())} bytes, median of {args.repeat} runs; "
        f"QoS 1 latency at {args.rate:.0f} msg/s for {args.seconds:.0f} s; load average "
        f"{load[0]:.1f} before, {load_after[0]:.1f} after"
    )
    header = (
        f"{'path':46s} {'QoS 0 msg/s':>11s} {'QoS 1 msg/s':>11s} {'QoS 0 CPU µs':>12s} "
        f"{'QoS 1 CPU µs':>12s} {'lost':>4s} {'p50 ms':>7s} {'p99 ms':>7s} {'max ms':>7s}"
    )
    print(header)
    rate1: dict[str, float] = {}
    cpu1: dict[str, float] = {}
    for row in rows:
        q0, q1 = statistics.median(row.rates[0]), statistics.median(row.rates[1])
        c0, c1 = statistics.median(row.cpu_us[0]), statistics.median(row.cpu_us[1])
        rate1[row.name], cpu1[row.name] = q1, c1
        lat = row.latency_ms
        tail = (
            f"{statistics.median(lat):7.2f} {pct(lat, 0.99):7.2f} {max(lat):7.2f}"
            if lat
            else f"{'-':>7s} {'-':>7s} {'-':>7s}"
        )
        print(
            f"{row.name:46s} {q0:11,.0f} {q1:11,.0f} {c0:12.1f} {c1:12.1f} "
            f"{row.lost[0] + row.lost[1]:4d} {tail}"
        )
    raw_paho20, raw_paho0, raw_gmqtt, before, now, now311, new = (r.name for r in rows[:7])
    print("\nQoS 1 ratios (wall-clock msg/s | CPU cost per message, inverted):")
    for label, a, b, goal in (
        ("GmqttBus / MqttBus before", new, before, ">= 4"),
        ("GmqttBus / raw gmqtt", new, raw_gmqtt, ">= 0.8"),
        ("MqttBus now / MqttBus before", now, before, ""),
        ("MqttBus now 3.1.1 / MqttBus before", now311, before, ""),
        ("raw paho in-flight 0 / in-flight 20", raw_paho0, raw_paho20, ""),
    ):
        print(
            f"  {label:38s} {rate1[a] / rate1[b]:5.2f} | {cpu1[b] / cpu1[a]:5.2f}"
            + (f"   (goal {goal})" if goal else "")
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=3)
    asyncio.run(main(parser.parse_args()))
