"""cloud_sync wiring: telemetry → durable outbox (+ InfluxDB) → batches to the cloud database.

The state and every decision live in `CloudSync` (`cloud_sync.state`); this module only binds
it to topics, periodic tasks, metrics and REST routes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

from fastapi import APIRouter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cloud_sync.api_models import Backlog, Drained
from cloud_sync.backlog import HEALTH_KEYS
from cloud_sync.cloud import CloudStore
from cloud_sync.gaps import ReplayRange
from cloud_sync.influx import PointSink
from cloud_sync.settings import Settings
from cloud_sync.state import SERVICE_NAME, CloudSync
from derbus import topics
from derbus.bus.base import Bus, RawMessage
from derbus.http import TokenDep
from derbus.messages import Message, ReplayRequest, utcnow
from derbus.service import Context, Handler, RawHandler, Service
from derbus.topics import PLATFORM_SITE, TopicSpec

INFLUX_ONLY: tuple[TopicSpec[Any], ...] = (
    topics.FORECAST,
    topics.BATTERY_SCHEDULE,
    topics.KPI,
    topics.SERVICE_STATUS,
    topics.DEAD_LETTER,
    topics.FEEDER_STATE,
)
"""Messages written to InfluxDB only (dashboards), not to the cloud database."""

PREFIX = "derbus_cloud_sync_"


class BacklogCollector(Collector):
    """Prometheus view of the backlog and health (`derbus_cloud_sync_<quantity>_<unit>`),
    computed at scrape time from the same snapshot as `/backlog` and the KPI topic."""

    def __init__(self, sync: CloudSync) -> None:
        self.sync = sync

    def collect(self) -> Iterator[Metric]:
        s = self.sync.snapshot()
        gauges: list[tuple[str, str, float]] = [
            ("outbox_readings", "Readings pending in the outbox", s.pending_rows),
            ("outbox_capacity_readings", "Outbox capacity, readings", s.capacity_rows),
            ("outbox_fill_ratio", "Outbox fill level (0-1)", s.fill_pct / 100.0),
            (
                "outbox_size_bytes",
                "Outbox file size on disk (with its WAL)",
                _file_bytes(self.sync.outbox.path),
            ),
            (
                "outbox_oldest_age_seconds",
                "Age of the oldest pending reading (0 when empty)",
                s.oldest_age_s or 0.0,
            ),
            (
                "outbox_full",
                "1 while the outbox is full and intake is paused",
                1.0 if s.fill == "full" else 0.0,
            ),
            (
                "readings_in_per_second",
                "Readings appended per second (10 s window)",
                s.rows_in_per_s,
            ),
            (
                "readings_out_per_second",
                "Readings forwarded per second (10 s window)",
                s.rows_out_per_s,
            ),
            (
                "last_success_timestamp_seconds",
                "Last successful forwarding pass (0 = never)",
                s.last_success.timestamp() if s.last_success else 0.0,
            ),
            (
                "last_error_timestamp_seconds",
                "Last forwarding error (0 = never)",
                s.last_error_at.timestamp() if s.last_error_at else 0.0,
            ),
            (
                "buffered_messages",
                "Messages received, not yet committed nor acknowledged",
                self.sync.intake.buffered,
            ),
        ]
        for name, doc, value in gauges:
            yield GaugeMetricFamily(PREFIX + name, doc, value=float(value))
        failing = GaugeMetricFamily(
            PREFIX + "failing",
            "1 while this part is degraded (same reasons as /healthz)",
            labels=["part"],
        )
        for key in HEALTH_KEYS:
            failing.add_metric([key], 1.0 if key in s.reasons else 0.0)
        yield failing
        counters: list[tuple[str, str, float]] = [
            ("readings_in", "Readings appended to the outbox", s.rows_in_total),
            ("readings_out", "Readings stored in the cloud database", s.rows_out_total),
            (
                "messages_refused",
                "Messages held back because the outbox was full",
                s.refused_messages_total,
            ),
        ]
        sink = self.sync.sink
        if sink is not None:
            counters += [
                ("influx_points_written", "Points written to InfluxDB", sink.points_written),
                (
                    "influx_points_failed",
                    "Points InfluxDB refused or dropped after retries",
                    sink.points_failed,
                ),
            ]
        for name, doc, value in counters:
            yield CounterMetricFamily(PREFIX + name, doc, value=float(value))
        gaps = self.sync.gaps
        yield GaugeMetricFamily(
            PREFIX + "readings_missing",
            "Readings missing now (seq gaps asked again)",
            value=float(gaps.missing),
        )
        for name, doc, value in [
            ("seq_gaps", "Sequence jumps seen in telemetry streams", gaps.gaps),
            ("readings_missed", "Readings found missing (seq gaps), all told", gaps.missed),
            ("readings_repaired", "Missing readings that arrived later (replayed)", gaps.repaired),
            ("readings_lost", "Missing readings given up on", gaps.lost),
        ]:
            yield CounterMetricFamily(PREFIX + name, doc, value=float(value))


def _file_bytes(path: os.PathLike[str]) -> float:
    total = 0
    for suffix in ("", "-wal"):
        try:
            total += os.stat(f"{os.fspath(path)}{suffix}").st_size
        except FileNotFoundError:
            continue
    return float(total)


def telemetry_handler(service: Service[Settings, CloudSync], spec: TopicSpec[Any]) -> RawHandler:
    """Telemetry into the intake (acknowledged once on disk); refused payloads dead-lettered."""

    async def handle(raw: RawMessage, ctx: Context) -> None:
        assert ctx.ids is not None
        if reason := await service.state.receive(spec, ctx.ids, raw.payload, ctx.defer_ack):
            await service.dead_letter(raw, spec, reason)

    handle.__name__ = f"on_{spec.name}"
    return handle


def influx_handler(sync: CloudSync, spec: TopicSpec[Any]) -> Handler[Any]:
    """A dashboard-only message into InfluxDB."""

    def handle(message: Message, ctx: Context) -> None:
        sync.to_influx(spec, ctx.ids, message)

    handle.__name__ = f"influx_{spec.key.replace('.', '_')}"
    return handle


def build_service(
    settings: Settings,
    bus: Bus,
    *,
    store: CloudStore | None = None,
    influx: PointSink | None = None,
) -> Service[Settings, CloudSync]:
    """Wire cloud_sync: every telemetry message into the outbox (and InfluxDB), forwarded in batches.

    Args:
        settings: the service settings.
        bus: the bus (an `MqttBus` with a fixed client id and `manual_ack=True` in production, so
            a delivery is acknowledged only after its readings are on disk).
        store: the cloud database (default: the one the settings name).
        influx: the InfluxDB writer (default: from the settings, None without INFLUXDB_URL).
    """
    sync = CloudSync.open(settings, store, influx)
    service: Service[Settings, CloudSync] = Service(SERVICE_NAME, settings, bus, state=sync)
    sync.attach(service)
    service.metrics.registry.register(BacklogCollector(sync))
    service.declare_publishes(
        topics.KPI, topics.SERVICE_STATUS, topics.DEAD_LETTER, topics.REPLAY_REQUEST
    )
    for spec in topics.TELEMETRY:
        service.on_raw(spec, shared_group=settings.shared_group)(telemetry_handler(service, spec))
    if sync.sink is not None:
        for spec in INFLUX_ONLY:
            service.on(spec, shared_group=settings.shared_group)(influx_handler(sync, spec))

    @service.every(lambda: service.settings.interval_s, run_at_start=True)
    async def forward(ctx: Context) -> None:
        await sync.forward()

    async def ask(r: ReplayRange) -> None:
        request = ReplayRequest(
            ts=utcnow(), source=SERVICE_NAME, from_seq=r.from_seq, to_seq=r.to_seq
        )
        await service.publish(
            topics.REPLAY_REQUEST, request, site_id=r.site_id, device_id=r.device_id
        )

    @service.every(lambda: service.settings.gap_retry_s / 2)
    async def repair(ctx: Context) -> None:
        await sync.repair_gaps(ask)

    @service.every(lambda: service.settings.kpi_interval_s)
    async def report(ctx: Context) -> None:
        await ctx.publish(
            topics.KPI, await sync.report(), site_id=PLATFORM_SITE, device_id=SERVICE_NAME
        )

    service.on_shutdown(sync.close)
    router = APIRouter(tags=["cloud_sync"])

    @router.get("/backlog", response_model=Backlog)
    async def backlog() -> dict[str, Any]:
        """The backlog and health: pending, oldest age, rates, totals, last success and error,
        `state` (online/degraded) with `reasons` — the same as `/healthz` says for these parts."""
        return await sync.backlog()

    @router.post("/sync", response_model=Drained)
    async def sync_now(_auth: TokenDep) -> dict[str, Any]:
        """Run a forwarding pass now (waits for a running one) and report what it did."""
        return asdict(await sync.forward())

    service.include_router(router)
    return service
