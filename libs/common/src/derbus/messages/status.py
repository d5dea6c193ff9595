"""Status messages: service status (with last will), device status, dead letters, KPIs."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from derbus.messages.base import Message, UtcDatetime

ServiceState = Literal["online", "degraded", "offline"]


WILL_SEQ_LOW = 0xFFFFFFFF
"""Low 32 bits of a last will's `seq`: after every status of its connection, before the next."""


class ServiceStatus(Message):
    """A service's state, retained; the MQTT last will publishes `offline`.

    Order statuses of one service by `(incarnation, seq)`, not by `ts`: the last will is built
    when its connection is made, so its `ts` is older than the `online` it replaces, but its
    `seq` is higher than that of every status published on the same connection and lower than
    those of the next connection (`seq = connection << 32 | n`, the will's low bits all ones).
    """

    service: str
    state: ServiceState
    reason: str | None = None
    version: str | None = None
    details: dict[str, float | int | str | None] = Field(default_factory=dict)
    incarnation: int | None = Field(
        default=None,
        ge=0,
        description="start of the publishing process (ms since the epoch): a restart is higher",
    )
    seq: int | None = Field(
        default=None,
        ge=0,
        description="order within the incarnation: connection number << 32 | status number; "
        "the last will of a connection has the low 32 bits all ones",
    )

    def order_key(self) -> tuple[int, int]:
        """Sort key: the status with the highest key is the service's current one."""
        return (self.incarnation or 0, self.seq or 0)


class DeviceStatus(Message):
    """A field device as seen by its gateway: ok, or stale after repeated failures."""

    device_id: str
    state: Literal["ok", "stale"]
    consecutive_failures: int = Field(ge=0)
    last_ok: UtcDatetime | None = None
    reason: str | None = None


class DeadLetter(Message):
    """A payload that could not be decoded or validated, with the reason."""

    original_topic: str
    payload: str = Field(description="the raw payload, as text (invalid UTF-8 replaced)")
    error: str
    service: str


class KpiReport(Message):
    """Named figures a controller reports (efficiency, time on limit, …), units in names."""

    name: str = Field(description="what these KPIs describe, e.g. net_balance_hourly")
    values: dict[str, float]
    period_start: UtcDatetime | None = None
    period_end: UtcDatetime | None = None
