"""`InMemoryBus` QoS 0 throughput alone: one publisher, one subscriber, one process.

The `InMemoryBus` row of `bench_bus.py` runs after every broker row in the same process; this
measures it on a fresh interpreter, so two source trees can be compared without the state the
other rows leave behind (A/B: `PYTHONPATH=OTHER/libs/common/src .venv/bin/python
bench/bench_inmemory_bus.py`). Prints messages per second, median of `--repeat` runs.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from derbus.bus.base import RawMessage
from derbus.bus.memory import InMemoryBroker, InMemoryBus


async def once(messages: int) -> float:
    """Seconds from the first publish to the last delivery of `messages` QoS 0 messages."""
    broker = InMemoryBroker()
    publisher, subscriber = InMemoryBus(broker), InMemoryBus(broker)
    await publisher.connect()
    await subscriber.connect()
    received = 0
    done = asyncio.Event()

    async def handler(message: RawMessage) -> None:
        nonlocal received
        received += 1
        if received == messages:
            done.set()

    await subscriber.subscribe("bench/#", 0, handler)
    payload = b"x" * 190
    began = time.perf_counter()
    for _ in range(messages):
        await publisher.publish("bench/a", payload, qos=0)
    await asyncio.wait_for(done.wait(), 120)
    elapsed = time.perf_counter() - began
    await publisher.close()
    await subscriber.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rates = [args.messages / asyncio.run(once(args.messages)) for _ in range(args.repeat)]
    print(f"InMemoryBus QoS 0: {statistics.median(rates):,.0f} msg/s (median of {args.repeat})")


if __name__ == "__main__":
    main()
