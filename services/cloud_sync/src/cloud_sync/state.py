"""`CloudSync`, the service's state: outbox, intake, forwarder, cloud store, InfluxDB, and health."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from datetime import datetime
from typing import Any, Protocol

from cloud_sync.backlog import BacklogSnapshot, fill_state, health_reasons
from cloud_sync.cloud import CloudStore, open_store
from cloud_sync.forwarder import FAILING_NOTE, DrainResult, Forwarder, RetryPolicy, parse_time
from cloud_sync.gaps import GapTracker, ReplayRange
from cloud_sync.influx import InfluxSink, PointSink
from cloud_sync.intake import Intake, IntakeLimits, StatusReporter, outbox_reason
from cloud_sync.outbox import Outbox
from cloud_sync.settings import Settings
from derbus import topics
from derbus.bus.base import Ack
from derbus.errors import StorageError
from derbus.messages import KpiReport, Message, format_utc, utcnow
from derbus.storage import influx_points
from derbus.topics import TopicIds, TopicSpec

log = logging.getLogger(__name__)

SERVICE_NAME = "cloud_sync"
GAPS_KEY = "telemetry_gaps"
"""Degraded reason while readings are missing (sequence gaps not yet repaired)."""
INFLUX_NOTE = "influxdb_failing"
SEQ_NOTE = "seq_next"
"""Outbox note: each telemetry stream's next expected `seq` (JSON), so a restart sees gaps too."""
"""Outbox note: InfluxDB's last error ("" when fine), for `--status` from another process."""


def open_cloud_store(settings: Settings) -> CloudStore:
    """The cloud database the settings name."""
    return open_store(
        settings.database,
        settings.data_dir,
        migrations_dir=settings.migrations_dir,
        connect_timeout_s=settings.db_connect_timeout_s,
        months_ahead=settings.partition_months_ahead,
        request_rows=settings.batch_size,
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


def make_forwarder(current: Callable[[], Settings], outbox: Outbox, store: CloudStore) -> Forwarder:
    """A forwarder reading its batch size from `current()` before each batch."""
    first = current()
    forwarder = Forwarder(
        outbox,
        store,
        batch_size=lambda: current().batch_size,
        retry=RetryPolicy(
            first.retry_attempts, first.retry_initial_delay_s, first.retry_max_delay_s
        ),
    )
    forwarder.migrated = not first.migrate_on_start
    return forwarder


class Host(StatusReporter, Protocol):
    """What `CloudSync` is attached to (the `Service`): current settings, degraded reasons."""

    @property
    def settings(self) -> Settings:
        """The current settings."""
        ...


class _Detached:
    """The host before `CloudSync.attach`: the settings at start, health told to nobody."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def set_degraded(self, key: str, reason: str) -> None:
        """Nothing to tell yet."""

    async def clear_degraded(self, key: str) -> None:
        """Nothing to tell yet."""


class CloudSync:
    """What cloud_sync remembers and decides: the intake into the outbox, the forwarding to the
    cloud database, InfluxDB, and one health that every status surface reports.

    Args:
        settings: the settings at start (after `attach`, the service's current ones are read).
        store: the cloud database.
        sink: InfluxDB (None: no InfluxDB writes).
        outbox: the outbox (default: `settings.outbox_path`).
    """

    def __init__(
        self,
        settings: Settings,
        store: CloudStore,
        sink: PointSink | None = None,
        outbox: Outbox | None = None,
    ) -> None:
        self._host: Host = _Detached(settings)
        self._limits_of: Settings | None = None
        self._limits = IntakeLimits(0, 0.0, 0, 0.0)
        self.store = store
        self.sink = sink
        self.outbox = outbox if outbox is not None else Outbox(settings.outbox_path)
        self.forwarder = make_forwarder(lambda: self.settings, self.outbox, store)
        self.intake = Intake(self.outbox, topics.TELEMETRY, self.limits, self, sink)
        self.gaps = GapTracker(settings.gap_retry_s, settings.gap_max_attempts)
        tracking = settings.gap_tracking
        self.tracking = tracking == "on" or (tracking == "auto" and settings.shared_group is None)
        if self.tracking:
            self.intake.observers.append(
                lambda entries: self.gaps.observe(entries, time.monotonic())
            )
            self.gaps.resume(_saved_seqs(self.outbox.meta().get(SEQ_NOTE)))

    @classmethod
    def open(
        cls, settings: Settings, store: CloudStore | None = None, sink: PointSink | None = None
    ) -> CloudSync:
        """The state on the targets the settings name (or the ones given)."""
        return cls(
            settings,
            store if store is not None else open_cloud_store(settings),
            sink if sink is not None else open_influx(settings),
        )

    def attach(self, host: Host) -> None:
        """Read the settings of `host` (the service; they change at run time), report to it."""
        self._host = host

    @property
    def settings(self) -> Settings:
        """The current settings."""
        return self._host.settings

    def limits(self) -> IntakeLimits:
        """The intake's current limits (read per message: rebuilt only when the settings change)."""
        s = self.settings
        if s is not self._limits_of:
            self._limits = IntakeLimits(
                s.intake_batch_messages,
                s.intake_batch_ms / 1000.0,
                s.outbox_max_rows,
                s.outbox_warn_pct,
            )
            self._limits_of = s
        return self._limits

    # --- health -------------------------------------------------------------------------------------
    async def set_degraded(self, key: str, reason: str) -> None:
        """Degraded for `key` (passed on to the service)."""
        await self._host.set_degraded(key, reason)

    async def clear_degraded(self, key: str) -> None:
        """No longer degraded for `key` (passed on to the service)."""
        await self._host.clear_degraded(key)

    def reasons(self) -> dict[str, str]:
        """Why cloud_sync is degraded, per part — what `/healthz`, `/backlog`, the KPI topic and
        `--status` report."""
        influx_error = self.sink.last_error if self.sink is not None else None
        return health_reasons(self.forwarder.failing, self.intake.reason(), influx_error)

    async def reflect(self) -> None:
        """Bring the service's degraded reasons in line with `reasons()`."""
        reasons = self.reasons()
        for key in ("cloud_db", "influxdb"):
            if key in reasons:
                await self.set_degraded(key, reasons[key])
            else:
                await self.clear_degraded(key)
        await self.intake.report()

    # --- telemetry in ---------------------------------------------------------------------------------
    async def receive(
        self, spec: TopicSpec[Any], ids: TopicIds, payload: bytes, defer_ack: Callable[[], Ack]
    ) -> str | None:
        """Take one telemetry message (see `Intake.receive`); returns why it is refused."""
        return await self.intake.receive(spec, ids.site_id, ids.device_id, payload, defer_ack)

    def to_influx(self, spec: TopicSpec[Any], ids: TopicIds | None, message: Message) -> None:
        """Write a dashboard-only message (forecast, schedule, KPI, status…) to InfluxDB."""
        if self.sink is not None and ids is not None and not self.intake.closing:
            self.sink.write(influx_points(spec, ids, message))

    # --- forwarding -----------------------------------------------------------------------------------
    async def forward(self) -> DrainResult:
        """One forwarding pass (off the event loop), then the health it leaves."""
        result = await asyncio.to_thread(self.forwarder.drain)
        await self.reflect()
        return result

    # --- reporting ------------------------------------------------------------------------------------
    def snapshot(self, now: datetime | None = None) -> BacklogSnapshot:
        """The backlog and health as they stand (reads the outbox: call off the event loop)."""
        now = now or utcnow()
        pending = self.outbox.pending_rows
        oldest = self.outbox.oldest_received_at() if pending else None
        counters = self.outbox.meta()
        limits = self.limits()
        return BacklogSnapshot(
            pending_rows=pending,
            capacity_rows=limits.outbox_max_rows,
            oldest_age_s=None if oldest is None else max(0.0, now.timestamp() - oldest),
            rows_in_total=int(counters.get("rows_in_total", 0)),
            rows_out_total=int(counters.get("rows_out_total", 0)),
            rows_in_per_s=self.intake.rates_in.rate(time.monotonic()),
            rows_out_per_s=self.forwarder.rate_out(),
            last_success=self.forwarder.last_success,
            last_error=self.forwarder.last_error,
            last_error_at=self.forwarder.last_error_at,
            fill=fill_state(pending, limits.outbox_max_rows, limits.outbox_warn_pct),
            refused_messages_total=self.intake.refused_messages,
            reasons=self.reasons(),
        )

    async def report(self) -> KpiReport:
        """The backlog KPI report; notes the figures for `--status` and reflects the health."""
        await self.reflect()
        now = utcnow()
        snap = await asyncio.to_thread(self.snapshot, now)
        influx_error = self.sink.last_error if self.sink is not None else None
        await asyncio.to_thread(
            self.outbox.set_meta,
            {
                "rows_in_per_s": f"{snap.rows_in_per_s:.3f}",
                "rows_out_per_s": f"{snap.rows_out_per_s:.3f}",
                "refused_messages_total": str(snap.refused_messages_total),
                "reported_at": format_utc(now),
                INFLUX_NOTE: influx_error or "",
                **self._seq_note(),
            },
        )
        values = {**snap.kpis(now), **self.gaps.figures()}
        return KpiReport(ts=now, source=SERVICE_NAME, name="backlog", values=values)

    async def backlog(self) -> dict[str, Any]:
        """The backlog as JSON (`GET /backlog`)."""
        snap = await asyncio.to_thread(self.snapshot)
        data = asdict(snap)
        for key in ("last_success", "last_error_at"):
            data[key] = format_utc(data[key]) if data[key] else None
        data["state"] = snap.state
        data["fill_pct"] = snap.fill_pct
        data["target"] = self.store.description
        data["gaps"] = self.gaps.figures()
        return data

    def _seq_note(self) -> dict[str, str | None]:
        """The streams' next expected numbers as an outbox note (none without tracking)."""
        return {SEQ_NOTE: json.dumps(self.gaps.expected())} if self.tracking else {}

    async def repair_gaps(self, ask: Callable[[ReplayRange], Awaitable[None]]) -> None:
        """Ask for the missing readings that are due (`ask` publishes one request); say in the
        status how many are missing while any are."""
        gaps = self.gaps
        gaps.retry_s, gaps.max_attempts = self.settings.gap_retry_s, self.settings.gap_max_attempts
        for request in gaps.due_requests(time.monotonic()):
            await ask(request)
        missing = gaps.missing
        if missing:
            streams = sum(1 for s in gaps.streams.values() if s.missing)
            await self._host.set_degraded(
                GAPS_KEY, f"{missing} readings missing in {streams} streams, asked again"
            )
        else:
            await self._host.clear_degraded(GAPS_KEY)

    # --- stopping -------------------------------------------------------------------------------------
    async def close(self) -> None:
        """Commit and acknowledge what is buffered (else the broker re-sends it), stop forwarding,
        flush InfluxDB, close the stores."""
        if not await self.intake.stop(5.0):
            log.warning(
                "%d buffered messages left unacknowledged at shutdown", self.intake.buffered
            )
        try:
            await asyncio.to_thread(self.outbox.set_meta, self._seq_note())
        except StorageError as err:
            log.warning("could not save the streams' sequence numbers: %s", err)
        if not await asyncio.to_thread(self.forwarder.stop, 30.0):
            log.warning("a forwarding pass did not stop within 30 s")
        if self.sink is not None:
            await asyncio.to_thread(self.sink.close)
        self.store.close()
        self.outbox.close()


def _saved_seqs(note: str | None) -> dict[str, int]:
    try:
        saved = json.loads(note) if note else {}
    except ValueError:
        log.warning("ignoring an unreadable %s note in the outbox", SEQ_NOTE)
        return {}
    return saved if isinstance(saved, dict) else {}


def offline_snapshot(outbox: Outbox, settings: Settings) -> BacklogSnapshot:
    """The backlog and health read from an outbox file alone (what `--status` shows): the last
    forwarding pass's error, the fill level and InfluxDB's error as last noted by the service."""
    notes = outbox.meta()
    pending = outbox.count()
    oldest = outbox.oldest_received_at()
    now = utcnow()
    fill = fill_state(pending, settings.outbox_max_rows, settings.outbox_warn_pct)
    reasons = health_reasons(
        notes.get(FAILING_NOTE) or None,
        outbox_reason(None, fill, settings.outbox_max_rows, settings.outbox_warn_pct),
        notes.get(INFLUX_NOTE) or None,
    )
    return BacklogSnapshot(
        pending_rows=pending,
        capacity_rows=settings.outbox_max_rows,
        oldest_age_s=None if oldest is None else max(0.0, now.timestamp() - oldest),
        rows_in_total=int(notes.get("rows_in_total", 0)),
        rows_out_total=int(notes.get("rows_out_total", 0)),
        rows_in_per_s=float(notes.get("rows_in_per_s", 0.0)),
        rows_out_per_s=float(notes.get("rows_out_per_s", 0.0)),
        last_success=parse_time(notes.get("last_success")),
        last_error=notes.get("last_error"),
        last_error_at=parse_time(notes.get("last_error_at")),
        fill=fill,
        refused_messages_total=int(notes.get("refused_messages_total", 0)),
        reasons=reasons,
    )
