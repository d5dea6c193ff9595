"""cloud_sync benchmarks: end-to-end readings/s next to the raw broker rate, and backlog drain time.

    .venv/bin/python bench/bench_cloud_sync.py            # 20k messages, 1 million-reading backlog
    .venv/bin/python bench/bench_cloud_sync.py --quick    # 4k messages, 100k-reading backlog
    .venv/bin/python bench/bench_cloud_sync.py --e2e-only # only the end-to-end table

Everything is real and local: a Mosquitto of our own (explicit queue limits), PostgreSQL
(127.0.0.1:5432 when it accepts connections, else a temporary cluster) with a fresh database per
run. Publisher and consumers run in this one process for both rates, so they are comparable.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

from cloud_sync.cloud import SqlCloudStore
from cloud_sync.forwarder import Forwarder, RetryPolicy
from cloud_sync.outbox import Outbox
from cloud_sync.service import build_service
from cloud_sync.settings import Settings
from derbus import topics
from derbus.bus import MqttBus
from derbus.bus.base import RawMessage
from derbus.messages import MeterReading
from derbus.settings import DatabaseSettings, MqttSettings
from derbus.storage import ReadingRow
from derbus.testing.servers import (
    MosquittoServer,
    PostgresServer,
    create_database,
    drop_database,
    port_open,
    postgres_accepts,
)

ROOT = "bench/v1"


@contextmanager
def postgres_admin() -> Iterator[str]:
    local = "postgresql://postgres@127.0.0.1:5432/postgres"
    if port_open("127.0.0.1", 5432) and postgres_accepts(local):
        yield local
        return
    server = PostgresServer().start()
    try:
        yield server.url
    finally:
        server.cleanup()


@contextmanager
def fresh_database(admin: str) -> Iterator[str]:
    url = create_database(admin, prefix="derbus_bench")
    try:
        yield url
    finally:
        drop_database(admin, url)


def count(url: str) -> int:
    try:
        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT count(*) FROM readings").fetchone()
    except psycopg.errors.UndefinedTable:
        return 0
    return int(row[0]) if row else 0


def payloads(n: int, site: str) -> list[tuple[str, bytes]]:
    """`n` meter readings, 3 numeric fields each (p_kw, q_kvar, v_l1_v) → 3 readings."""
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    topic = topics.METER.topic(site, "pcc", ROOT)
    return [
        (
            topic,
            MeterReading(
                ts=start + timedelta(seconds=i),
                source="bench",
                p_kw=i / 10,
                q_kvar=0.5,
                v_l1_v=230.0,
            ).to_json_bytes(),
        )
        for i in range(n)
    ]


async def raw_broker_rate(mqtt: MqttSettings, n: int) -> float:
    """Messages/s publisher → broker → a bare subscriber (QoS 1), in this process."""
    got = 0
    done = asyncio.Event()

    async def on_message(_: RawMessage) -> None:
        nonlocal got
        got += 1
        if got == n:
            done.set()

    sub = MqttBus(mqtt)
    await sub.connect()
    await sub.subscribe(topics.METER.filter(root=ROOT), 1, on_message)
    pub = MqttBus(mqtt)
    await pub.connect()
    data = payloads(n, f"raw-{uuid.uuid4().hex[:6]}")
    started = time.perf_counter()
    for topic, payload in data:
        await pub.publish(topic, payload, qos=1)
    await asyncio.wait_for(done.wait(), 300)
    elapsed = time.perf_counter() - started
    await pub.close()
    await sub.close()
    return n / elapsed


async def end_to_end(mqtt: MqttSettings, db_url: str, data_dir: Path, n: int) -> dict[str, float]:
    """Publisher → broker → cloud_sync (manual ack, durable outbox) → PostgreSQL."""
    settings = Settings(
        data_dir=data_dir, database=DatabaseSettings(database_url=db_url), mqtt=mqtt,
        client_id=f"bench-{uuid.uuid4().hex[:6]}", interval_seconds=0.2, batch_size=5000,
        kpi_interval_s=3600, log_level="WARNING",
    )  # fmt: skip
    service = build_service(settings, MqttBus(mqtt, client_id=settings.client_id, manual_ack=True))
    await service.start()
    forwarder = service.state["forwarder"]
    while forwarder.last_success is None:  # the migration pass at start
        await asyncio.sleep(0.05)
    pub = MqttBus(mqtt)
    await pub.connect()
    expected = 3 * n
    started = time.perf_counter()
    for topic, payload in payloads(n, f"e2e-{uuid.uuid4().hex[:6]}"):
        await pub.publish(topic, payload, qos=1)
    outbox = forwarder.outbox
    in_outbox_s = None
    deadline = started + 600
    while time.perf_counter() < deadline:
        if in_outbox_s is None and int(outbox.meta().get("rows_in_total", 0)) >= expected:
            in_outbox_s = time.perf_counter() - started
        if in_outbox_s is not None and count(db_url) >= expected:
            break
        await asyncio.sleep(0.05)
    total_s = time.perf_counter() - started
    await pub.close()
    await service.stop()
    if count(db_url) != expected:
        raise SystemExit(f"end to end: {count(db_url)} of {expected} readings stored")
    return {
        "messages_per_s": n / total_s,
        "readings_per_s": expected / total_s,
        "intake_messages_per_s": n / (in_outbox_s or total_s),
        "total_s": total_s,
    }


def drain_backlog(store: SqlCloudStore, data_dir: Path, rows: int, batch: int) -> dict[str, float]:
    """Time to forward a pre-filled outbox of `rows` readings."""
    outbox = Outbox(data_dir / f"backlog-{batch}.db")
    start = datetime(2026, 1, 1, tzinfo=UTC)
    sites = [f"site-{i:04d}" for i in range(100)]
    chunk = 100_000
    filled = 0
    t0 = time.perf_counter()
    while filled < rows:
        n = min(chunk, rows - filled)
        outbox.append(
            [
                ReadingRow(
                    start + timedelta(seconds=15 * ((filled + i) // 100)),
                    sites[(filled + i) % 100],
                    "pcc",
                    "meter.p_kw",
                    float(i),
                )
                for i in range(n)
            ],
            received_at=time.time(),
        )
        filled += n
    fill_s = time.perf_counter() - t0
    forwarder = Forwarder(
        outbox, store, batch_size=lambda: batch, retry=RetryPolicy(3, 0.2, 2.0),
        capacity_rows=lambda: 10 * rows, warn_pct=lambda: 90.0,
    )  # fmt: skip
    t0 = time.perf_counter()
    result = forwarder.drain()
    drain_s = time.perf_counter() - t0
    if result.error or outbox.pending_rows:
        raise SystemExit(f"drain failed: {result.error}, {outbox.pending_rows} left")
    outbox.close()
    return {"fill_s": fill_s, "drain_s": drain_s, "rows_per_s": rows / drain_s}


def table(title: str, header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print(f"\n{title}")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |")
    print("| " + " | ".join("-" * w for w in widths) + " |")
    for r in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run")
    parser.add_argument(
        "--e2e-only", action="store_true", help="only the end-to-end table (no backlog drain)"
    )
    args = parser.parse_args()
    messages = 4_000 if args.quick else 20_000
    backlog = 100_000 if args.quick else 1_000_000
    work = Path(tempfile.mkdtemp(prefix="derbus-bench-sync-"))
    broker = MosquittoServer().start()
    try:
        mqtt = MqttSettings(host=broker.host, port=broker.port, root=ROOT)
        with postgres_admin() as admin:
            raw = await raw_broker_rate(mqtt, messages)
            with fresh_database(admin) as db:
                e2e = await end_to_end(mqtt, db, work / "e2e", messages)
            table(
                f"end to end, {messages:,} meter messages (3 readings each), QoS 1, same process",
                ("path", "messages/s", "readings/s"),
                [
                    ("publisher → broker → bare subscriber (raw)", f"{raw:,.0f}", f"{3 * raw:,.0f}"),
                    ("publisher → broker → cloud_sync outbox (intake)",
                     f"{e2e['intake_messages_per_s']:,.0f}", f"{3 * e2e['intake_messages_per_s']:,.0f}"),
                    ("publisher → broker → cloud_sync → PostgreSQL",
                     f"{e2e['messages_per_s']:,.0f}", f"{e2e['readings_per_s']:,.0f}"),
                ],
            )  # fmt: skip
            load_1, load_5, _ = os.getloadavg()
            print(
                f"load average after the end-to-end runs: {load_1:.1f} (1 min), {load_5:.1f} (5 min)"
            )
            if args.e2e_only:
                return
            drains: list[tuple[str, ...]] = []
            for batch in (1_000, 5_000, 20_000):
                with fresh_database(admin) as db:
                    store = SqlCloudStore(db.replace("postgresql://", "postgresql+psycopg://"))
                    store.migrate()
                    d = drain_backlog(store, work, backlog, batch)
                    store.close()
                drains.append(("PostgreSQL (partitioned)", f"{batch:,}", f"{d['drain_s']:.1f}",
                               f"{d['rows_per_s']:,.0f}", f"{d['fill_s']:.1f}"))  # fmt: skip
            sqlite = SqlCloudStore(f"sqlite:///{work / 'cloud.db'}")
            sqlite.migrate()
            d = drain_backlog(sqlite, work, backlog, 5_000)
            drains.append(("SQLite (embedded)", "5,000", f"{d['drain_s']:.1f}",
                           f"{d['rows_per_s']:,.0f}", f"{d['fill_s']:.1f}"))  # fmt: skip
            table(
                f"drain a backlog of {backlog:,} readings (outbox → cloud database)",
                ("target", "batch", "drain s", "readings/s", "outbox fill s"),
                drains,
            )
    finally:
        broker.cleanup()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
