"""The intake: telemetry in, decoded, made durable by group commit, then acknowledged.

`Intake` is the one object that answers "do these messages fit, are they on disk, may they be
acknowledged": it decodes each payload (`decode.TelemetryDecoder`), buffers the message with its
deferred acknowledgement, commits the buffered readings to the outbox in one transaction when
`intake_batch_messages` accumulated or `intake_batch_ms` passed, acknowledges them only after that
commit, then hands their InfluxDB lines to the sink. It owns the outbox's side of the health
(write failures, full, above the warning level) and the refusal accounting while it is full.

What a later consumer of committed messages (e.g. a per-device sequence-gap detector) needs is an
`observers` entry: it is called with every committed group, in arrival order, after the commit
and the acknowledgements — it sees each durable message once per commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from cloud_sync.backlog import FillState, RateMeter, fill_state, has_room
from cloud_sync.decode import Decoded, InvalidPayload, TelemetryDecoder
from cloud_sync.influx import PointSink, telemetry_line
from cloud_sync.outbox import Outbox
from cloud_sync.readings import BatchBuilder, ReadingBatch
from derbus.bus.base import Ack
from derbus.errors import StorageError
from derbus.topics import TopicSpec

MAX_ID_LENGTH = 100
"""site_id / device_id longer than this do not fit the `readings` columns: dead-lettered."""


class StatusReporter(Protocol):
    """Where the intake says it is degraded (the `Service`)."""

    async def set_degraded(self, key: str, reason: str) -> None:
        """Degraded for `key`, with a reason."""
        ...

    async def clear_degraded(self, key: str) -> None:
        """No longer degraded for `key`."""
        ...


@dataclass(frozen=True)
class IntakeLimits:
    """The intake's settings, read before each use (they may change at run time)."""

    batch_messages: int
    batch_wait_s: float
    outbox_max_rows: int
    outbox_warn_pct: float


@dataclass
class Entry:
    """One received message: where from, its readings, its deferred acknowledgement."""

    site_id: str
    device_id: str
    decoded: Decoded
    ack: Ack
    line: str | None = None
    """Its InfluxDB line, written after the commit (None without InfluxDB)."""
    refused: bool = field(default=False)
    """Set once the outbox had no room for it (so it is counted as refused only once)."""

    @property
    def rows(self) -> int:
        """Readings of the message."""
        return len(self.decoded.values)


Observer = Callable[[Sequence[Entry]], None]
"""Called with each committed group of entries (after their acknowledgements)."""


class Intake:
    """Telemetry → decoded entries → one durable outbox commit per group → acks → InfluxDB.

    Commits run one at a time, in arrival order. While one runs, new entries keep arriving in the
    buffer; a handler adding the `batch_messages`-th entry waits for the commit (back pressure:
    the bus stops taking messages, the broker keeps them). While the outbox is full or failing
    nothing is committed, so nothing is acknowledged: the messages wait in the buffer, then at
    the broker; the commit is retried with backoff until it works or the intake closes.

    Args:
        outbox: the durable outbox.
        specs: the telemetry specs taken in.
        limits: the current limits (read before each use).
        status: where the outbox's health goes (`key` "outbox").
        sink: InfluxDB (None: no InfluxDB writes).
    """

    def __init__(
        self,
        outbox: Outbox,
        specs: Sequence[TopicSpec[Any]],
        limits: Callable[[], IntakeLimits],
        status: StatusReporter,
        sink: PointSink | None = None,
    ) -> None:
        self.outbox = outbox
        self.decoders = {spec.key: TelemetryDecoder(spec) for spec in specs}
        self.limits = limits
        self.status = status
        self.sink = sink
        self.observers: list[Observer] = []
        self.rates_in = RateMeter()
        self.refused_messages = 0
        self.write_error: str | None = None
        self.stopping = False  # no new intake
        self.closing = False  # the outbox and the sinks are closing
        self._buffer: list[Entry] = []
        self._lock = asyncio.Lock()
        self._timer: asyncio.Task[None] | None = None
        self._reason: str | None = None

    # --- receiving ----------------------------------------------------------------------------------
    def decode(self, spec: TopicSpec[Any], site_id: str, device_id: str, payload: bytes) -> Decoded:
        """The payload's readings.

        Raises:
            InvalidPayload: it does not validate (the model's reason), or an id is too long.
        """
        decoded = self.decoders[spec.key].decode(payload)
        if len(site_id) > MAX_ID_LENGTH or len(device_id) > MAX_ID_LENGTH:
            raise InvalidPayload(f"site_id/device_id longer than {MAX_ID_LENGTH} characters")
        return decoded

    async def receive(
        self,
        spec: TopicSpec[Any],
        site_id: str,
        device_id: str,
        payload: bytes,
        defer_ack: Callable[[], Ack],
    ) -> str | None:
        """Take one message; returns why it is refused (to dead-letter), None when taken.

        Its acknowledgement is taken over (`defer_ack`) and given once its readings are on disk.
        While stopping, the message is left unacknowledged: the broker delivers it again.
        """
        try:
            decoded = self.decode(spec, site_id, device_id, payload)
        except InvalidPayload as err:
            return str(err)
        ack = defer_ack()
        if self.stopping:
            return None
        line = None
        if self.sink is not None:
            line = telemetry_line(spec.name, site_id, device_id, decoded.time_us, decoded.values)
        await self.add(Entry(site_id, device_id, decoded, ack, line))
        return None

    async def add(self, entry: Entry) -> None:
        """Buffer one entry; commits (and waits) when the buffer reached `batch_messages`."""
        self._buffer.append(entry)
        if len(self._buffer) >= self.limits().batch_messages:
            await self.flush()
        else:
            self._arm()

    @property
    def buffered(self) -> int:
        """Messages received and not yet committed (hence not acknowledged)."""
        return len(self._buffer)

    # --- committing ---------------------------------------------------------------------------------
    async def flush(self) -> None:
        """Commit what is buffered now (in as many commits as the room allows), then ack it."""
        async with self._lock:
            todo = len(self._buffer)
            while todo > 0:
                done = await self._commit(self._buffer[:todo])
                if done <= 0:
                    break
                committed = self._buffer[:done]
                del self._buffer[:done]
                todo -= done
                for entry in committed:
                    entry.ack()
                if self.sink is not None and not self.closing:
                    self.sink.write_lines([e.line for e in committed if e.line is not None])
                for observe in self.observers:
                    observe(committed)
        if self._buffer:
            self._arm()

    async def _commit(self, entries: Sequence[Entry]) -> int:
        """Append the leading entries that fit in one durable transaction; retry until it works.

        Returns how many entries were committed (0 only when the intake closes).
        """
        delay_s = 0.05
        while not self.closing:
            n = fitting(entries, self.outbox.pending_rows, self.limits().outbox_max_rows)
            if n:
                batch = to_batch(entries[:n])
                try:
                    await asyncio.to_thread(self.outbox.append, batch, time.time())
                except StorageError as err:
                    self.write_error = f"cannot write the outbox: {err}"
                else:
                    self.write_error = None
                    self.rates_in.add(time.monotonic(), len(batch))
                    await self.report()
                    return n
            else:
                for entry in entries:
                    if not entry.refused:
                        entry.refused = True
                        self.refused_messages += 1
            await self.report()
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, 1.0)
        return 0

    # --- health ---------------------------------------------------------------------------------------
    def fill_state(self) -> FillState:
        """Where the outbox stands against its capacity."""
        limits = self.limits()
        return fill_state(self.outbox.pending_rows, limits.outbox_max_rows, limits.outbox_warn_pct)

    def reason(self) -> str | None:
        """Why the outbox side is degraded (None when it is fine)."""
        return outbox_reason(
            self.write_error,
            self.fill_state(),
            self.limits().outbox_max_rows,
            self.limits().outbox_warn_pct,
        )

    async def report(self) -> None:
        """Say the outbox's health (once per change)."""
        reason = self.reason()
        if reason == self._reason:
            return
        self._reason = reason
        if reason is None:
            await self.status.clear_degraded("outbox")
        else:
            await self.status.set_degraded("outbox", reason)

    # --- closing ----------------------------------------------------------------------------------
    async def stop(self, timeout_s: float = 5.0) -> bool:
        """Take no more messages; commit and acknowledge what is buffered (True when all was)."""
        self.stopping = True
        await self._cancel_timer()
        # what cannot be committed in time stays unacknowledged: the broker delivers it again
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.flush(), timeout_s)
        self.closing = True
        return not self._buffer

    async def _cancel_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer is not asyncio.current_task():
            timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await timer

    def _arm(self) -> None:
        # called per message: no asyncio.current_task() here, `_timer` is None once it fired
        if self._timer is None:
            self._timer = asyncio.get_running_loop().create_task(
                self._flush_later(), name="cloud_sync:group-commit"
            )

    async def _flush_later(self) -> None:
        await asyncio.sleep(max(0.0, self.limits().batch_wait_s))
        self._timer = None  # fired: the next message arms a new one
        await self.flush()


def outbox_reason(
    write_error: str | None, state: FillState, max_rows: int, warn_pct: float
) -> str | None:
    """The outbox's degraded reason: a write failure, full, above the warning level, or None."""
    if write_error is not None:
        return write_error
    if state == "full":
        return (
            f"outbox FULL ({max_rows:,} rows): intake paused, messages wait at the broker until "
            "the cloud database takes the backlog"
        )
    if state == "warn":
        return f"outbox above {warn_pct:g} % of its {max_rows:,} rows"
    return None


def fitting(entries: Sequence[Entry], pending_rows: int, max_rows: int) -> int:
    """How many leading entries fit an outbox holding `pending_rows` of `max_rows` readings."""
    count = 0
    total = pending_rows
    for entry in entries:
        if not has_room(total, entry.rows, max_rows):
            break
        total += entry.rows
        count += 1
    return count


def to_batch(entries: Sequence[Entry]) -> ReadingBatch:
    """The readings of entries as one columnar batch."""
    builder = BatchBuilder()
    for e in entries:
        builder.add_message(e.site_id, e.device_id, e.decoded.time_us, e.decoded.values)
    return builder.build()
