"""cloud_sync benchmarks, each next to its raw reference measured in the same run.

    .venv/bin/python bench/bench_cloud_sync.py --quick          # small sizes, every table
    .venv/bin/python bench/bench_cloud_sync.py                  # 20k messages, 1 M backlog, imports
    .venv/bin/python bench/bench_cloud_sync.py --only drain --backlog 8640000   # the fleet-day
    .venv/bin/python bench/bench_cloud_sync.py --bus gmqtt      # on the asyncio bus (when present)

Tables (`--only` picks some): `decode` (intake decoding per message, pydantic vs msgspec),
`e2e` (publisher → broker → cloud_sync → PostgreSQL against a bare subscriber of the same bus),
`outbox` (bytes per reading, former row layout vs segments), `drain` (outbox → PostgreSQL against
a bare binary COPY into a staging table + INSERT … ON CONFLICT of the same rows, and a bare COPY
into `readings`), `import` (`cloud-sync import` of a simulator site-year at 5 min and a fleet-day
at 1 min against the staging reference), `influx` (the InfluxDB sink against a bare gzip'd
line-protocol POST of the same points, VictoriaMetrics).

Everything is real and local: a Mosquitto of our own (explicit queue limits), PostgreSQL
(127.0.0.1:5432 when it accepts connections, else a temporary cluster) with a fresh database per
measurement, Debian's victoria-metrics. The machine is shared: read the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import os
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psycopg

from cloud_sync.cloud import SqlCloudStore
from cloud_sync.decode import TelemetryDecoder
from cloud_sync.forwarder import Forwarder, RetryPolicy
from cloud_sync.importer import import_file
from cloud_sync.influx import InfluxSink, telemetry_line
from cloud_sync.intake import Entry
from cloud_sync.outbox import Outbox
from cloud_sync.readings import ReadingBatch, from_epoch_us
from cloud_sync.service import build_service
from cloud_sync.settings import Settings
from derbus import bus as buses
from derbus import topics
from derbus.bus.base import Bus, RawMessage
from derbus.messages import MeterReading
from derbus.settings import DatabaseSettings, MqttSettings
from derbus.storage import reading_rows
from derbus.testing.servers import (
    MosquittoServer,
    PostgresServer,
    create_database,
    drop_database,
    port_open,
    postgres_accepts,
)
from derbus.testing.victoria import VictoriaMetricsServer
from derbus.topics import TopicIds

ROOT = "bench/v1"
TABLES = ("decode", "e2e", "outbox", "drain", "import", "influx")


# --- helpers ----------------------------------------------------------------------------------------
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


def sa_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://")


def count(url: str) -> int:
    try:
        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT count(*) FROM readings").fetchone()
    except psycopg.errors.UndefinedTable:
        return 0
    return int(row[0]) if row else 0


def pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def table(title: str, header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print(f"\n{title}")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |")
    print("| " + " | ".join("-" * w for w in widths) + " |")
    for r in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")
    load = os.getloadavg()
    print(f"(load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f})", flush=True)


def bus_class(name: str) -> type[Any]:
    """The bus implementation: `paho` = MqttBus (today's), `gmqtt` = GmqttBus when present."""
    found = {"paho": "MqttBus", "gmqtt": "GmqttBus"}[name]
    cls = getattr(buses, found, None)
    if cls is None:
        raise SystemExit(f"--bus {name}: derbus.bus.{found} is not in this tree")
    return cls  # type: ignore[no-any-return]


START = datetime(2026, 1, 5, tzinfo=UTC)


def meter_payloads(n: int, site: str) -> list[tuple[str, bytes]]:
    """`n` meter readings, 3 numeric fields each (p_kw, q_kvar, v_l1_v) → 3 readings."""
    topic = topics.METER.topic(site, "pcc", ROOT)
    return [
        (
            topic,
            MeterReading(
                ts=START + timedelta(seconds=i),
                source="bench",
                p_kw=i / 10,
                q_kvar=0.5,
                v_l1_v=230.0,
            ).to_json_bytes(),
        )
        for i in range(n)
    ]


# --- decode -------------------------------------------------------------------------------------------
def bench_decode(n: int) -> None:
    payloads = [p for _, p in meter_payloads(n, "s")]
    ids = TopicIds("s", "pcc")
    decoder = TelemetryDecoder(topics.METER)
    rows: list[tuple[str, str, float]] = []
    for label, fn in (
        (
            "pydantic model + reading_rows (before)",
            lambda p: reading_rows(topics.METER, ids, MeterReading.model_validate_json(p)),
        ),
        ("msgspec struct + finite/tz check (intake)", decoder.decode),
        (
            "msgspec + InfluxDB line (intake with InfluxDB)",
            lambda p: telemetry_line(
                "meter", "s", "pcc", (d := decoder.decode(p)).time_us, d.values
            ),
        ),
    ):
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            for p in payloads:
                fn(p)
            best = min(best, time.perf_counter() - t0)
        rows.append((label, f"{best / n * 1e6:.2f}", f"{n / best:,.0f}"))
    table(
        f"decoding one meter message (3 readings), best of 3 × {n:,}",
        ("path", "µs / message", "messages/s"),
        [(a, b, c) for a, b, c in rows],
    )


# --- end to end --------------------------------------------------------------------------------------
async def raw_rate(bus_cls: type[Any], mqtt: MqttSettings, n: int) -> float:
    """Messages/s publisher → broker → a bare subscriber (QoS 1) of the same bus, this process."""
    got = 0
    done = asyncio.Event()

    async def on_message(_: RawMessage) -> None:
        nonlocal got
        got += 1
        if got == n:
            done.set()

    sub: Bus = bus_cls(mqtt, client_id=f"raw-sub-{uuid.uuid4().hex[:6]}")
    await sub.connect()
    await sub.subscribe(topics.METER.filter(root=ROOT), 1, on_message)
    pub: Bus = bus_cls(mqtt, client_id=f"raw-pub-{uuid.uuid4().hex[:6]}")
    await pub.connect()
    data = meter_payloads(n, f"raw-{uuid.uuid4().hex[:6]}")
    started = time.perf_counter()
    for topic, payload in data:
        await pub.publish(topic, payload, qos=1)
    await asyncio.wait_for(done.wait(), 600)
    elapsed = time.perf_counter() - started
    await pub.close()
    await sub.close()
    return n / elapsed


async def end_to_end(
    bus_cls: type[Any],
    mqtt: MqttSettings,
    db_url: str,
    data_dir: Path,
    n: int,
    forward_during: bool = True,
) -> dict[str, Any]:
    """Publisher → broker → cloud_sync (manual ack, durable outbox) → PostgreSQL; with
    `forward_during` False the forwarder waits until the intake has everything (intake alone)."""
    settings = Settings(
        data_dir=data_dir,
        database=DatabaseSettings(database_url=db_url),
        mqtt=mqtt,
        client_id=f"bench-{uuid.uuid4().hex[:6]}",
        interval_s=0.2 if forward_during else 3600,
        batch_size=20_000,
        kpi_interval_s=3600,
        log_level="WARNING",
    )
    service = build_service(settings, bus_cls(mqtt, client_id=settings.client_id, manual_ack=True))
    sync = service.state
    published: dict[int, float] = {}
    latency_s: list[float] = []
    committed_readings = 0

    def committed(entries: Sequence[Entry]) -> None:  # an intake observer
        nonlocal committed_readings
        now = time.perf_counter()
        for e in entries:
            committed_readings += e.rows
            sent = published.get(e.decoded.time_us)
            if sent is not None:
                latency_s.append(now - sent)

    sync.intake.observers.append(committed)
    await service.start()
    while sync.forwarder.last_success is None:  # the migration pass at start
        await asyncio.sleep(0.05)
    pub: Bus = bus_cls(mqtt, client_id=f"e2e-pub-{uuid.uuid4().hex[:6]}")
    await pub.connect()
    expected = 3 * n
    data = meter_payloads(n, f"e2e-{uuid.uuid4().hex[:6]}")
    started = time.perf_counter()
    for i, (topic, payload) in enumerate(data):
        published[int((START + timedelta(seconds=i)).timestamp()) * 1_000_000] = time.perf_counter()
        await pub.publish(topic, payload, qos=1)
    in_outbox_s = None
    deadline = started + 900
    while time.perf_counter() < deadline:  # cheap checks: the poll must not slow the service
        if in_outbox_s is None:
            if committed_readings >= expected:
                in_outbox_s = time.perf_counter() - started
                if not forward_during:
                    await sync.forward()
            await asyncio.sleep(0.01)
            continue
        if sync.outbox.pending_rows == 0 and count(db_url) >= expected:
            break
        await asyncio.sleep(0.1)
    total_s = time.perf_counter() - started
    await pub.close()
    await service.stop()
    if count(db_url) != expected:
        raise SystemExit(f"end to end: {count(db_url)} of {expected} readings stored")
    return {
        "messages_per_s": n / total_s,
        "intake_messages_per_s": n / (in_outbox_s or total_s),
        "p50_ms": pct(latency_s, 50) * 1000,
        "p99_ms": pct(latency_s, 99) * 1000,
        "max_ms": max(latency_s) * 1000 if latency_s else float("nan"),
    }


async def bench_e2e(bus_name: str, admin: str, work: Path, n: int) -> None:
    bus_cls = bus_class(bus_name)
    broker = MosquittoServer().start()
    try:
        mqtt = MqttSettings(host=broker.host, port=broker.port, root=ROOT)
        raw = await raw_rate(bus_cls, mqtt, n)
        with fresh_database(admin) as db:
            alone = await end_to_end(bus_cls, mqtt, db, work / f"alone-{bus_name}", n, False)
        with fresh_database(admin) as db:
            e2e = await end_to_end(bus_cls, mqtt, db, work / f"e2e-{bus_name}", n)
        raw_after = await raw_rate(bus_cls, mqtt, n)
    finally:
        broker.cleanup()
    ref = (raw + raw_after) / 2
    table(
        f"end to end on {bus_cls.__name__}, {n:,} meter messages (3 readings each), QoS 1, "
        "publisher and consumer in this process",
        ("path", "messages/s", "readings/s", "vs raw", "commit latency p50 / p99 / max ms"),
        [
            (
                f"bare subscriber of {bus_cls.__name__} (raw, before / after)",
                f"{raw:,.0f} / {raw_after:,.0f}",
                f"{3 * ref:,.0f}",
                "1.00",
                "—",
            ),
            (
                "cloud_sync intake alone (forwarding after): committed, acknowledged",
                f"{alone['intake_messages_per_s']:,.0f}",
                f"{3 * alone['intake_messages_per_s']:,.0f}",
                f"{alone['intake_messages_per_s'] / ref:.2f}",
                f"{alone['p50_ms']:.0f} / {alone['p99_ms']:.0f} / {alone['max_ms']:.0f}",
            ),
            (
                "cloud_sync intake while forwarding: committed, acknowledged",
                f"{e2e['intake_messages_per_s']:,.0f}",
                f"{3 * e2e['intake_messages_per_s']:,.0f}",
                f"{e2e['intake_messages_per_s'] / ref:.2f}",
                f"{e2e['p50_ms']:.0f} / {e2e['p99_ms']:.0f} / {e2e['max_ms']:.0f}",
            ),
            (
                "cloud_sync end to end: stored in PostgreSQL",
                f"{e2e['messages_per_s']:,.0f}",
                f"{3 * e2e['messages_per_s']:,.0f}",
                f"{e2e['messages_per_s'] / ref:.2f}",
                "—",
            ),
        ],
    )


# --- backlog data ------------------------------------------------------------------------------------
def fleet_batches(total: int, sites: int = 100, segment: int = 2_500) -> Iterator[ReadingBatch]:
    """`total` readings of `sites` sites at 1 Hz, one `meter.p_kw` each, in outbox segments."""
    keys = [(f"site-{i:04d}", "pcc", "meter.p_kw") for i in range(sites)]
    t0 = int(START.timestamp()) * 1_000_000
    rng = np.random.default_rng(20)
    for first in range(0, total, segment):
        n = min(segment, total - first)
        idx = np.arange(first, first + n)
        yield ReadingBatch(
            keys,
            (idx % sites).astype(np.uint32),
            t0 + (idx // sites) * 1_000_000,
            rng.normal(2.0, 1.5, n),
        )


def fill_outbox(path: Path, total: int) -> Outbox:
    box = Outbox(path)
    for batch in fleet_batches(total, segment=100_000):
        # one transaction per 100k readings; the segments inside stay intake-sized (2,500)
        box._db.execute("BEGIN")
        for part in range(0, len(batch), 2_500):
            sub = ReadingBatch(
                batch.keys,
                batch.key_idx[part : part + 2_500],
                batch.time_us[part : part + 2_500],
                batch.value[part : part + 2_500],
            )
            box._insert(sub, time.time())
        box._db.execute("COMMIT")
    box.close()
    return Outbox(path)


# --- outbox size -------------------------------------------------------------------------------------
def file_bytes(path: Path) -> int:
    db = sqlite3.connect(path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    pages = (
        db.execute("PRAGMA page_count").fetchone()[0] * db.execute("PRAGMA page_size").fetchone()[0]
    )
    db.close()
    return int(pages)


def bench_outbox(work: Path, total: int) -> None:
    """Bytes per reading on disk: the former one-row-per-reading table vs compressed segments."""
    rows = []
    for label, sites, devices in (
        ("fleet: 100 sites × 1 meter reading", 100, 1),
        ("site: 1 site × 25 metrics (simulator record)", 1, 25),
    ):
        keys = [
            (f"site-{s:04d}", f"device-{d % 8}", f"kind.metric_{d}")
            for s in range(sites)
            for d in range(devices)
        ]
        n = total
        idx = np.arange(n)
        batch = ReadingBatch(
            keys,
            (idx % len(keys)).astype(np.uint32),
            int(START.timestamp()) * 1_000_000 + (idx // len(keys)) * 1_000_000,
            np.round(np.random.default_rng(1).normal(2, 1.5, n), 4),
        )
        old = work / f"old-{sites}.db"
        db = sqlite3.connect(old)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(
            "CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, time_us INTEGER NOT NULL,"
            " site_id TEXT NOT NULL, device_id TEXT NOT NULL, metric TEXT NOT NULL,"
            " value REAL NOT NULL, received_at REAL NOT NULL)"
        )
        now = time.time()
        db.executemany(
            "INSERT INTO outbox (time_us, site_id, device_id, metric, value, received_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (
                (t, *keys[k], v, now)
                for k, t, v in zip(
                    batch.key_idx.tolist(),
                    batch.time_us.tolist(),
                    batch.value.tolist(),
                    strict=True,
                )
            ),
        )
        db.commit()
        db.close()
        new = work / f"new-{sites}.db"
        box = Outbox(new)
        for part in range(0, n, 2_500):  # intake-sized segments (500 messages × 5 readings)
            box.append(
                ReadingBatch(
                    batch.keys,
                    batch.key_idx[part : part + 2_500],
                    batch.time_us[part : part + 2_500],
                    batch.value[part : part + 2_500],
                ),
                now,
            )
        box.close()
        before, after = file_bytes(old) / n, file_bytes(new) / n
        rows.append((label, f"{n:,}", f"{before:.1f}", f"{after:.1f}", f"{before / after:.1f}×"))
    table(
        "outbox on disk, bytes per reading (SQLite pages after a checkpoint)",
        ("readings", "count", "row per reading (before)", "segments (now)", "smaller"),
        rows,
    )


# --- the staging reference ---------------------------------------------------------------------------
def copy_rows(batch: ReadingBatch) -> list[tuple[Any, ...]]:
    """The batch as `(time, site_id, device_id, metric, value)` tuples for a binary COPY."""
    return [
        (from_epoch_us(t), *batch.keys[k], v)
        for k, t, v in zip(
            batch.key_idx.tolist(),
            batch.time_us.tolist(),
            batch.value.tolist(),
            strict=True,
        )
    ]


def staging_reference(url: str, batches: Iterator[ReadingBatch], batch_rows: int) -> float:
    """Readings/s of a bare psycopg binary COPY of full rows into a temporary table + one
    INSERT … ON CONFLICT DO NOTHING per batch (the issue's reference), same rows, same batches."""
    store = SqlCloudStore(sa_url(url))
    store.migrate()
    months: set[tuple[int, int]] = set()
    total = 0
    elapsed = 0.0
    pending: list[ReadingBatch] = []
    with psycopg.connect(url) as conn:
        conn.execute(
            "CREATE TEMP TABLE ref_stage (time timestamptz, site_id text, device_id text,"
            " metric text, value float8) ON COMMIT DELETE ROWS"
        )
        conn.commit()

        def flush() -> float:
            batch = ReadingBatch.concat(pending)
            pending.clear()
            for m in batch.months() - months:
                store.prepare(datetime(m[0], m[1], 1, tzinfo=UTC))
                months.add(m)
            rows = copy_rows(batch)
            t0 = time.perf_counter()
            with conn.transaction(), conn.cursor() as cur:
                with cur.copy("COPY ref_stage FROM STDIN (FORMAT BINARY)") as cp:
                    cp.set_types(["timestamptz", "text", "text", "text", "float8"])
                    for row in rows:
                        cp.write_row(row)
                cur.execute("INSERT INTO readings SELECT * FROM ref_stage ON CONFLICT DO NOTHING")
            return time.perf_counter() - t0

        size = 0
        for b in batches:
            pending.append(b)
            size += len(b)
            total += len(b)
            if size >= batch_rows:
                elapsed += flush()
                size = 0
        if pending:
            elapsed += flush()
    store.close()
    return total / elapsed


def bare_copy_reference(url: str, batches: Iterator[ReadingBatch]) -> float:
    """Readings/s of a bare binary COPY of the rows straight into `readings` (no de-duplication)."""
    store = SqlCloudStore(sa_url(url))
    store.migrate()
    store.prepare(START)
    store.close()
    elapsed = 0.0
    total = 0
    with psycopg.connect(url) as conn:
        for batch in batches:
            rows = copy_rows(batch)
            t0 = time.perf_counter()
            with (
                conn.transaction(),
                conn.cursor() as cur,
                cur.copy(
                    "COPY readings (time, site_id, device_id, metric, value) FROM STDIN (FORMAT BINARY)"
                ) as cp,
            ):
                cp.set_types(["timestamptz", "text", "text", "text", "float8"])
                for row in rows:
                    cp.write_row(row)
            elapsed += time.perf_counter() - t0
            total += len(batch)
    return total / elapsed


# --- drain -------------------------------------------------------------------------------------------
def bench_drain(admin: str, work: Path, total: int, batch_rows: int) -> None:
    box = fill_outbox(work / "backlog.db", total)
    assert box.pending_rows == total
    with fresh_database(admin) as db:
        store = SqlCloudStore(sa_url(db))
        store.migrate()
        forwarder = Forwarder(
            box, store, batch_size=lambda: batch_rows, retry=RetryPolicy(3, 0.2, 2.0)
        )
        times: list[float] = []
        t0 = time.perf_counter()
        while True:
            b0 = time.perf_counter()
            moved = forwarder.forward_batch()
            if not moved:
                break
            times.append(time.perf_counter() - b0)
        drain_s = time.perf_counter() - t0
        stored = count(db)
        store.close()
    box.close()
    if stored != total:
        raise SystemExit(f"drain: {stored} of {total} stored")
    with fresh_database(admin) as db:
        staging = staging_reference(db, fleet_batches(total), batch_rows)
    with fresh_database(admin) as db:
        bare = bare_copy_reference(db, fleet_batches(total, segment=batch_rows))
    rate = total / drain_s
    table(
        f"drain a backlog of {total:,} readings (100 sites at 1 Hz) into PostgreSQL 15, "
        f"batch {batch_rows:,}",
        ("path", "readings/s", "time s", "vs staging ref", "per batch p50 / p99 / max s"),
        [
            (
                "reference: bare COPY straight into readings (no de-duplication)",
                f"{bare:,.0f}",
                f"{total / bare:.1f}",
                f"{bare / staging:.2f}",
                "—",
            ),
            (
                "reference: bare COPY into a temp table + INSERT … ON CONFLICT",
                f"{staging:,.0f}",
                f"{total / staging:.1f}",
                "1.00",
                "—",
            ),
            (
                "cloud_sync forwarder: outbox → binary COPY + merge → delete",
                f"{rate:,.0f}",
                f"{drain_s:.1f}",
                f"{rate / staging:.2f}",
                f"{pct(times, 50):.2f} / {pct(times, 99):.2f} / {max(times):.2f}",
            ),
        ],
    )


# --- import ------------------------------------------------------------------------------------------
def simulator_history(path: Path, sites: int, interval_s: int, start: str, end: str) -> Path:
    if not path.exists():
        print(
            f"writing {path} with the edge simulator ({sites} sites, {interval_s} s)…", flush=True
        )
        subprocess.run(
            [
                sys.executable,
                "-m",
                "edge_simulator",
                "--historical",
                "--sites",
                str(sites),
                "--interval",
                str(interval_s),
                "--start",
                start,
                "--end",
                end,
                "--output",
                str(path),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return path


def bench_import(admin: str, files: list[tuple[str, Path]]) -> None:
    rows = []
    for label, path in files:
        with fresh_database(admin) as db:
            store = SqlCloudStore(sa_url(db))
            store.migrate()
            t0 = time.perf_counter()
            first = import_file(store, path)
            first_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            again = import_file(store, path)
            again_s = time.perf_counter() - t0
            stored = count(db)
            store.close()
        if stored != first.readings or again.stored != 0:
            raise SystemExit(f"import {path}: {stored} stored of {first.readings}")
        batches = list(_history_batches(path))
        with fresh_database(admin) as db:
            ref = staging_reference(db, iter(batches), 500_000)
        rate = first.readings / first_s
        rows.append(
            (
                label,
                f"{first.records:,}",
                f"{first.readings:,}",
                f"{first_s:.1f}",
                f"{rate:,.0f}",
                f"{ref:,.0f}",
                f"{rate / ref:.2f}",
                f"{again_s:.1f}",
            )
        )
    table(
        "cloud-sync import of simulator --historical JSONL into PostgreSQL (fresh database; "
        "then the same file again)",
        (
            "file",
            "records",
            "readings",
            "import s",
            "readings/s",
            "staging ref/s",
            "vs ref",
            "again s (0 new)",
        ),
        rows,
    )
    print(
        f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB"
    )


def _history_batches(path: Path) -> Iterator[ReadingBatch]:
    from cloud_sync.importer import ImportResult, historical_batches

    with path.open("rb") as stream:
        yield from historical_batches(stream, ImportResult())


# --- InfluxDB ----------------------------------------------------------------------------------------
def bench_influx(n_messages: int) -> None:
    vm = VictoriaMetricsServer().start()
    try:
        site = f"bench-{uuid.uuid4().hex[:6]}"
        decoder = TelemetryDecoder(topics.METER)
        lines = []
        for _, payload in meter_payloads(n_messages, site):
            d = decoder.decode(payload)
            text = telemetry_line("meter", site, "pcc", d.time_us, d.values)
            assert text is not None
            lines.append(text)

        def bare() -> tuple[float, int, int]:
            """One gzip'd POST per 5,000 lines, sequential, no retries: (s, raw bytes, sent)."""
            raw_bytes = sent_bytes = 0
            t0 = time.perf_counter()
            with httpx.Client(timeout=30) as http:
                for first in range(0, len(lines), 5_000):
                    body = ("\n".join(lines[first : first + 5_000]) + "\n").encode()
                    raw_bytes += len(body)
                    packed = gzip.compress(body, 1)
                    sent_bytes += len(packed)
                    http.post(
                        f"{vm.url}/api/v2/write",
                        params={"org": "o", "bucket": "b"},
                        headers={"Content-Encoding": "gzip"},
                        content=packed,
                    ).raise_for_status()
            return time.perf_counter() - t0, raw_bytes, sent_bytes

        bare()  # warm-up: the first writes create the storage
        bare_s, raw_bytes, sent_bytes = bare()
        sink = InfluxSink(vm.url, "t", "o", "b", batch_points=5_000, flush_interval_ms=100)
        t0 = time.perf_counter()
        for first in range(0, len(lines), 500):  # as the intake hands them over: per group commit
            sink.write_lines(lines[first : first + 500])
        sink.close()
        sink_s = time.perf_counter() - t0
        if sink.points_written != len(lines):
            raise SystemExit(f"influx: {sink.points_written} of {len(lines)} written")
        bare_after_s = bare()[0]
    finally:
        vm.cleanup()
    points = len(lines)
    table(
        f"InfluxDB write path, {points:,} telemetry points (3 fields each) into VictoriaMetrics",
        ("path", "points/s", "time s", "vs bare", "bytes sent / point"),
        [
            (
                "bare line-protocol POST, gzip, 5,000 per request (before / after)",
                f"{points / bare_s:,.0f} / {points / bare_after_s:,.0f}",
                f"{bare_s:.2f} / {bare_after_s:.2f}",
                "1.00",
                f"{sent_bytes / points:.1f} (raw {raw_bytes / points:.0f})",
            ),
            (
                "cloud_sync InfluxSink (queue, sender thread, gzip)",
                f"{points / sink_s:,.0f}",
                f"{sink_s:.2f}",
                f"{(bare_s + bare_after_s) / 2 / sink_s:.2f}",
                f"{sink.bytes_sent / points:.1f}",
            ),
        ],
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes")
    parser.add_argument("--only", action="append", choices=TABLES, help="tables to run")
    parser.add_argument(
        "--bus",
        default="paho",
        choices=("paho", "gmqtt"),
        help="bus implementation for the end-to-end table",
    )
    parser.add_argument("--messages", type=int, help="end-to-end messages")
    parser.add_argument("--backlog", type=int, help="readings in the drained backlog")
    parser.add_argument("--batch", type=int, default=50_000, help="forwarding batch, readings")
    parser.add_argument(
        "--history-dir",
        type=Path,
        default=Path(tempfile.gettempdir()),
        help="where the simulator JSONL files are (re)used",
    )
    args = parser.parse_args()
    only = set(args.only or TABLES)
    messages = args.messages or (4_000 if args.quick else 20_000)
    backlog = args.backlog or (200_000 if args.quick else 1_000_000)
    work = Path(tempfile.mkdtemp(prefix="derbus-bench-sync-"))
    print(f"cloud_sync bench, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores")
    try:
        if "decode" in only:
            bench_decode(20_000 if args.quick else 100_000)
        if "outbox" in only:
            bench_outbox(work, 100_000 if args.quick else 1_000_000)
        if "influx" in only:
            bench_influx(messages * 5)
        with postgres_admin() as admin:
            if "e2e" in only:
                await bench_e2e(args.bus, admin, work, messages)
            if "drain" in only:
                bench_drain(admin, work, backlog, args.batch)
            if "import" in only:
                d = args.history_dir
                files = [
                    (
                        "1 site, 1 year at 5 min",
                        simulator_history(
                            d / "derbus-site-year-5min.jsonl", 1, 300, "2025-01-01", "2026-01-01"
                        ),
                    )
                ]
                if not args.quick:
                    files.append(
                        (
                            "100 sites, 1 day at 1 min",
                            simulator_history(
                                d / "derbus-fleet-day-1min.jsonl",
                                100,
                                60,
                                "2025-06-01",
                                "2025-06-02",
                            ),
                        )
                    )
                bench_import(admin, files)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
