"""The sender's side of commands with a TTL: which were answered, which expired unanswered."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Outcomes:
    """Commands sent with a TTL and a correlation id, until each is answered or has expired.

    With MQTT 5 the broker drops a command its receiver could not get within the TTL (message
    expiry); the receiver answers on the command's response topic with its correlation data.
    The sender thus learns which: `answer` for those answered, `expire` for those whose TTL
    passed without an answer (never delivered, or delivered and not answered in time).

    Args:
        clock: seconds, monotonic (injected in tests).
    """

    clock: Callable[[], float] = time.monotonic
    pending: dict[bytes, float] = field(default_factory=dict)
    answered: list[bytes] = field(default_factory=list)
    expired: list[bytes] = field(default_factory=list)

    def sent(self, correlation: bytes, ttl_s: float) -> None:
        """A command went out: it must be answered within `ttl_s` seconds."""
        self.pending[correlation] = self.clock() + ttl_s

    def answer(self, correlation: bytes | None) -> bool:
        """An answer arrived; False when it answers nothing pending (late, duplicate, unknown)."""
        if correlation is None or self.pending.pop(correlation, None) is None:
            return False
        self.answered.append(correlation)
        return True

    def expire(self) -> list[bytes]:
        """Move the commands whose TTL has passed unanswered to `expired`; return them."""
        now = self.clock()
        overdue = [c for c, deadline in self.pending.items() if deadline <= now]
        for correlation in overdue:
            del self.pending[correlation]
        self.expired.extend(overdue)
        return overdue
