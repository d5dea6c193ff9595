"""Group commit of the intake: messages buffered, made durable together, then acknowledged."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from derbus.bus.base import Ack
from derbus.storage import ReadingRow


@dataclass
class Entry:
    """One received message: its readings, its deferred acknowledgement, what to do after."""

    rows: list[ReadingRow]
    ack: Ack
    after_commit: Callable[[], None] | None = None
    refused: bool = field(default=False)
    """Set once the outbox had no room for it (so it is counted as refused only once)."""


Commit = Callable[[Sequence[Entry]], Awaitable[int]]
"""Makes the leading entries durable; returns how many (0: nothing, e.g. while stopping)."""


class GroupCommit:
    """Buffers entries and commits them in one go when `max_messages()` accumulated or
    `max_wait_s()` passed since the first one; acknowledges them only after their commit.

    Commits run one at a time, in arrival order. While one runs, new entries keep arriving in
    the buffer; a handler adding the `max_messages()`-th entry waits for the commit (back
    pressure: the bus stops taking messages, the broker keeps them).

    Args:
        commit: writes entries durably (see `Commit`); it may take a prefix only (room left).
        max_messages: buffered messages that trigger a commit.
        max_wait_s: longest time an entry waits in the buffer before a commit starts, s.
    """

    def __init__(
        self, commit: Commit, max_messages: Callable[[], int], max_wait_s: Callable[[], float]
    ) -> None:
        self._commit = commit
        self._max_messages = max_messages
        self._max_wait_s = max_wait_s
        self._buffer: list[Entry] = []
        self._lock = asyncio.Lock()
        self._timer: asyncio.Task[None] | None = None

    @property
    def buffered(self) -> int:
        """Messages received and not yet committed (hence not acknowledged)."""
        return len(self._buffer)

    async def add(self, entry: Entry) -> None:
        """Buffer one entry; commits (and waits) when the buffer reached `max_messages()`."""
        self._buffer.append(entry)
        if len(self._buffer) >= self._max_messages():
            await self.flush()
        else:
            self._arm()

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
                for entry in committed:
                    if entry.after_commit is not None:
                        entry.after_commit()
        if self._buffer:
            self._arm()

    async def close(self) -> None:
        """Stop the timer (buffered entries stay unacknowledged unless `flush` is called)."""
        timer, self._timer = self._timer, None
        if timer is not None and timer is not asyncio.current_task():
            timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await timer

    def _arm(self) -> None:
        timer = self._timer
        if timer is None or timer.done() or timer is asyncio.current_task():
            self._timer = asyncio.get_running_loop().create_task(
                self._flush_later(), name="cloud_sync:group-commit"
            )

    async def _flush_later(self) -> None:
        await asyncio.sleep(max(0.0, self._max_wait_s()))
        await self.flush()


def fitting(
    entries: Sequence[Entry], pending_rows: int, has_room: Callable[[int, int], bool]
) -> int:
    """How many leading entries fit an outbox holding `pending_rows` readings.

    Args:
        entries: the buffered entries, oldest first.
        pending_rows: readings already in the outbox.
        has_room: `has_room(pending_rows, incoming_rows)` of the outbox.
    """
    count = 0
    total = pending_rows
    for entry in entries:
        if not has_room(total, len(entry.rows)):
            break
        total += len(entry.rows)
        count += 1
    return count
