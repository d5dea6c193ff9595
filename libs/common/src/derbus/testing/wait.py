"""Waiting for conditions instead of sleeping, and recording what arrives on a bus."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from derbus.bus.base import Bus, RawMessage
from derbus.messages import Message
from derbus.topics import TopicSpec

M = TypeVar("M", bound=Message)


async def wait_for(
    predicate: Callable[[], bool | Awaitable[bool]],
    timeout: float = 10.0,
    interval: float = 0.02,
    message: str = "condition",
) -> None:
    """Poll `predicate` until true; raise AssertionError naming `message` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.1f} s waiting for {message}")
        await asyncio.sleep(interval)


def wait_until(
    predicate: Callable[[], bool],
    timeout: float = 10.0,
    interval: float = 0.02,
    message: str = "condition",
) -> None:
    """Synchronous `wait_for` for code outside an event loop."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.1f} s waiting for {message}")
        time.sleep(interval)


@dataclass
class BusRecorder(Generic[M]):
    """Subscribes to a spec on a bus and keeps the validated messages with their topics."""

    spec: TopicSpec[M]
    root: str
    messages: list[tuple[str, M]] = field(default_factory=list)
    raw: list[RawMessage] = field(default_factory=list)

    async def attach(
        self, bus: Bus, site_id: str | None = None, device_id: str | None = None
    ) -> None:
        """Subscribe on `bus` (returns after the broker acknowledged)."""

        async def record(message: RawMessage) -> None:
            self.raw.append(message)
            if message.payload:
                self.messages.append(
                    (message.topic, self.spec.model.model_validate_json(message.payload))
                )

        await bus.subscribe(
            self.spec.filter(site_id, device_id, root=self.root), self.spec.qos, record
        )

    @property
    def values(self) -> list[M]:
        """The messages received so far."""
        return [m for _, m in self.messages]

    async def wait(self, count: int = 1, timeout: float = 10.0) -> list[M]:
        """Wait until at least `count` messages arrived."""
        await wait_for(
            lambda: len(self.messages) >= count, timeout, message=f"{count} x {self.spec.key}"
        )
        return self.values

    async def first(
        self, match: Callable[[M], bool], timeout: float = 10.0, message: str | None = None
    ) -> M:
        """Wait until a message `match`es (e.g. the ack of one setpoint id); the first that does."""
        await wait_for(
            lambda: any(match(m) for m in self.values),
            timeout,
            message=message or f"a matching {self.spec.key}",
        )
        return next(m for m in self.values if match(m))
