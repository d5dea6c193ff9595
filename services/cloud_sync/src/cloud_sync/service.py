"""cloud_sync wiring: telemetry → durable outbox (+ InfluxDB) → batches to the cloud database."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from typing import Any

from fastapi import APIRouter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cloud_sync.backlog import fill_state, has_room
from cloud_sync.cloud import CloudStore, open_store
from cloud_sync.forwarder import Forwarder, RetryPolicy
from cloud_sync.influx import InfluxSink, PointSink
from cloud_sync.intake import Entry, GroupCommit, fitting
from cloud_sync.outbox import Outbox
from cloud_sync.settings import Settings
from derbus import topics
from derbus.bus.base import Bus, RawMessage
from derbus.errors import StorageError
from derbus.http import TokenDep
from derbus.messages import KpiReport, Message, format_utc, utcnow
from derbus.service import Context, Handler, Service
from derbus.storage import influx_points, reading_rows
from derbus.topics import PLATFORM_SITE, TopicSpec

log = logging.getLogger(__name__)

SERVICE_NAME = "cloud_sync"
MAX_ID_LENGTH = 100
"""site_id / device_id longer than this do not fit the `readings` columns: dead-lettered."""

INFLUX_ONLY: tuple[TopicSpec[Any], ...] = (
    topics.FORECAST,
    topics.BATTERY_SCHEDULE,
    topics.KPI,
    topics.SERVICE_STATUS,
    topics.DEAD_LETTER,
    topics.FEEDER_STATE,
)
"""Messages written to InfluxDB only (dashboards), not to the cloud database."""


def _has_room_in(pending_rows: int, incoming_rows: int, *, max_rows: int) -> bool:
    return has_room(pending_rows, incoming_rows, max_rows)


def make_forwarder(current: Callable[[], Settings], outbox: Outbox, store: CloudStore) -> Forwarder:
    """A forwarder reading batch size and outbox limits from `current()` before each use."""
    first = current()
    forwarder = Forwarder(
        outbox,
        store,
        batch_size=lambda: current().batch_size,
        retry=RetryPolicy(
            first.retry_attempts, first.retry_initial_delay_s, first.retry_max_delay_s
        ),
        capacity_rows=lambda: current().outbox_max_rows,
        warn_pct=lambda: current().outbox_warn_pct,
    )
    forwarder.migrated = not first.migrate_on_start
    return forwarder


def open_cloud_store(settings: Settings) -> CloudStore:
    """The cloud database the settings name."""
    return open_store(
        settings.database,
        settings.data_dir,
        migrations_dir=settings.migrations_dir,
        connect_timeout_s=settings.db_connect_timeout_s,
    )


def open_influx(settings: Settings) -> InfluxSink | None:
    """The InfluxDB writer, or None when INFLUXDB_URL is not set."""
    influx = settings.influxdb
    if influx.url is None or influx.token is None:
        return None
    return InfluxSink(
        influx.url,
        influx.token.get_secret_value(),
        influx.org,
        influx.bucket,
        batch_points=settings.influx_batch_points,
        flush_interval_ms=settings.influx_flush_interval_ms,
    )


class BacklogCollector(Collector):
    """Prometheus view of the backlog, computed at scrape time."""

    def __init__(self, forwarder: Forwarder, influx: PointSink | None) -> None:
        self.forwarder = forwarder
        self.influx = influx

    def collect(self) -> Iterator[Metric]:
        s = self.forwarder.snapshot()
        gauges: list[tuple[str, str, float]] = [
            ("cloud_sync_outbox_rows", "Readings pending in the outbox", s.pending_rows),
            ("cloud_sync_outbox_capacity_rows", "Outbox capacity, readings", s.capacity_rows),
            ("cloud_sync_outbox_fill_ratio", "Outbox fill level (0-1)", s.fill_pct / 100.0),
            ("cloud_sync_outbox_oldest_age_seconds", "Age of the oldest pending reading (0 when empty)",
             s.oldest_age_s or 0.0),
            ("cloud_sync_outbox_full", "1 while the outbox is full and intake is paused",
             1.0 if s.state == "full" else 0.0),
            ("cloud_sync_rows_in_per_second", "Readings appended per second (10 s window)",
             s.rows_in_per_s),
            ("cloud_sync_rows_out_per_second", "Readings forwarded per second (10 s window)",
             s.rows_out_per_s),
            ("cloud_sync_last_success_timestamp_seconds", "Last successful forwarding pass (0 = never)",
             s.last_success.timestamp() if s.last_success else 0.0),
            ("cloud_sync_last_error_timestamp_seconds", "Last forwarding error (0 = never)",
             s.last_error_at.timestamp() if s.last_error_at else 0.0),
        ]  # fmt: skip
        for name, doc, value in gauges:
            yield GaugeMetricFamily(name, doc, value=float(value))
        counters: list[tuple[str, str, float]] = [
            ("cloud_sync_rows_in", "Readings appended to the outbox", s.rows_in_total),
            ("cloud_sync_rows_out", "Readings stored in the cloud database", s.rows_out_total),
            ("cloud_sync_messages_refused", "Messages held back because the outbox was full",
             s.refused_messages_total),
        ]  # fmt: skip
        if self.influx is not None:
            counters += [
                ("cloud_sync_influx_points_written", "Points written to InfluxDB",
                 self.influx.points_written),
                ("cloud_sync_influx_points_failed", "Points InfluxDB refused after retries",
                 self.influx.points_failed),
            ]  # fmt: skip
        for name, doc, value in counters:
            yield CounterMetricFamily(name, doc, value=float(value))


def build_service(
    settings: Settings,
    bus: Bus,
    *,
    store: CloudStore | None = None,
    influx: PointSink | None = None,
) -> Service[Settings]:
    """Wire cloud_sync: every telemetry message into the outbox (and InfluxDB), forwarded in batches.

    Args:
        settings: the service settings.
        bus: the bus (an `MqttBus` with a fixed client id and `manual_ack=True` in production, so
            a delivery is acknowledged only after its readings are on disk).
        store: the cloud database (default: the one the settings name).
        influx: the InfluxDB writer (default: from the settings, None without INFLUXDB_URL).
    """
    service: Service[Settings] = Service(SERVICE_NAME, settings, bus)
    outbox = Outbox(settings.outbox_path)
    cloud = store if store is not None else open_cloud_store(settings)
    sink = influx if influx is not None else open_influx(settings)
    forwarder = make_forwarder(lambda: service.settings, outbox, cloud)
    service.state.update(outbox=outbox, forwarder=forwarder, store=cloud, influx=sink)
    service.metrics.registry.register(BacklogCollector(forwarder, sink))
    service.declare_publishes(topics.KPI, topics.SERVICE_STATUS, topics.DEAD_LETTER)
    stopping = asyncio.Event()  # no new intake
    closing = asyncio.Event()  # the outbox and the sinks are closing

    async def update_fill_status() -> None:
        s = service.settings
        state = fill_state(outbox.pending_rows, s.outbox_max_rows, s.outbox_warn_pct)
        if state == "ok":
            await service.clear_degraded("outbox")
        elif state == "warn":
            await service.set_degraded(
                "outbox", f"outbox above {s.outbox_warn_pct:g} % of its {s.outbox_max_rows:,} rows"
            )

    async def commit(entries: Sequence[Entry]) -> int:
        """Append the leading entries that fit in one durable transaction; retry until it works.

        While the outbox is full (or failing) nothing is committed, so nothing is acknowledged:
        the messages wait here, then at the broker. Returns 0 only when the service stops.
        """
        delay_s = 0.05
        while not closing.is_set():
            s = service.settings
            room = functools.partial(_has_room_in, max_rows=s.outbox_max_rows)
            n = fitting(entries, outbox.pending_rows, room)
            if n:
                rows = [row for entry in entries[:n] for row in entry.rows]
                try:
                    await service.run_blocking(outbox.append, rows, time.time())
                except StorageError as err:
                    await service.set_degraded("outbox", f"cannot write the outbox: {err}")
                else:
                    forwarder.record_in(len(rows))
                    await update_fill_status()
                    return n
            else:
                for entry in entries:
                    if not entry.refused:
                        entry.refused = True
                        forwarder.record_refused()
                await service.set_degraded(
                    "outbox",
                    f"outbox FULL ({s.outbox_max_rows:,} rows): intake paused, messages wait at "
                    "the broker until the cloud database takes the backlog",
                )
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, 1.0)
        return 0

    intake = GroupCommit(
        commit,
        max_messages=lambda: service.settings.intake_batch_messages,
        max_wait_s=lambda: service.settings.intake_batch_ms / 1000.0,
    )
    service.state["intake"] = intake

    def telemetry_handler(spec: TopicSpec[Any]) -> Handler[Any]:
        async def handle(message: Message, ctx: Context) -> None:
            ids = ctx.ids
            assert ids is not None
            assert ctx.topic is not None
            if len(ids.site_id) > MAX_ID_LENGTH or len(ids.device_id) > MAX_ID_LENGTH:
                raw = RawMessage(ctx.topic, message.to_json_bytes(), spec.qos)
                await service.dead_letter(
                    raw, spec, f"site_id/device_id longer than {MAX_ID_LENGTH} characters"
                )
                return
            ack = ctx.defer_ack()  # acknowledged once its readings are committed to the outbox
            if stopping.is_set():
                return  # never acknowledged: the broker delivers it again after the restart
            after_commit = None
            if sink is not None:
                points = influx_points(spec, ids, message)

                def after_commit() -> None:
                    if not closing.is_set():
                        sink.write(points)

            await intake.add(Entry(reading_rows(spec, ids, message), ack, after_commit))

        handle.__name__ = f"on_{spec.name}"
        return handle

    for spec in topics.TELEMETRY:
        service.on(spec, shared_group=settings.shared_group)(telemetry_handler(spec))

    if sink is not None:

        def influx_handler(spec: TopicSpec[Any]) -> Handler[Any]:
            def handle(message: Message, ctx: Context) -> None:
                if ctx.ids is not None and not closing.is_set():
                    sink.write(influx_points(spec, ctx.ids, message))

            handle.__name__ = f"influx_{spec.key.replace('.', '_')}"
            return handle

        for spec in INFLUX_ONLY:
            service.on(spec, shared_group=settings.shared_group)(influx_handler(spec))

    @service.every(lambda: service.settings.interval_seconds, run_at_start=True)
    async def forward(ctx: Context) -> None:
        result = await service.run_blocking(forwarder.drain)
        if result.error:
            await service.set_degraded("cloud_db", result.error)
        else:
            await service.clear_degraded("cloud_db")
        await update_fill_status()

    @service.every(lambda: service.settings.kpi_interval_s)
    async def report(ctx: Context) -> None:
        now = utcnow()
        snap = await service.run_blocking(forwarder.snapshot, now)
        await service.publish(
            topics.KPI,
            KpiReport(ts=now, source=SERVICE_NAME, name="backlog", values=snap.kpis(now)),
            site_id=PLATFORM_SITE,
            device_id=SERVICE_NAME,
        )
        outbox.set_meta(
            {
                "rows_in_per_s": f"{snap.rows_in_per_s:.3f}",
                "rows_out_per_s": f"{snap.rows_out_per_s:.3f}",
                "refused_messages_total": str(snap.refused_messages_total),
                "reported_at": format_utc(now),
            }
        )
        if sink is not None:
            if sink.last_error:
                await service.set_degraded("influxdb", sink.last_error)
            else:
                await service.clear_degraded("influxdb")

    @service.on_shutdown
    async def close() -> None:
        stopping.set()
        await intake.close()
        try:  # commit and acknowledge what is buffered; if that cannot finish, the broker re-sends
            await asyncio.wait_for(intake.flush(), 5.0)
        except TimeoutError:
            log.warning("%d buffered messages left unacknowledged at shutdown", intake.buffered)
        closing.set()
        if not await asyncio.to_thread(forwarder.stop, 30.0):
            log.warning("a forwarding pass did not stop within 30 s")
        if sink is not None:
            await asyncio.to_thread(sink.close)
        cloud.close()
        outbox.close()

    router = APIRouter(tags=["cloud_sync"])

    @router.get("/backlog")
    async def backlog() -> dict[str, Any]:
        """The backlog: rows pending, oldest age, rates, totals, last success and error."""
        snap = await service.run_blocking(forwarder.snapshot)
        data = asdict(snap)
        for key in ("last_success", "last_error_at"):
            data[key] = format_utc(data[key]) if data[key] else None
        data["fill_pct"] = snap.fill_pct
        data["target"] = cloud.description
        return data

    @router.post("/sync")
    async def sync_now(_auth: TokenDep) -> dict[str, Any]:
        """Run a forwarding pass now (waits for a running one) and report what it did."""
        result = await service.run_blocking(forwarder.drain)
        return asdict(result)

    service.include_router(router)
    return service
