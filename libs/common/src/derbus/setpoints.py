"""The setpoint contract as one pure object: range and staleness checks, priority, TTL, acks.

Every receiver of setpoints (the edge simulator's devices, the meter gateway's devices) keeps one
`SetpointArbiter` per device. It never reads the clock: `now` comes in as an argument.

Rules:
* refused (ack `rejected` with the reason): a target the device does not have, a value outside
  the device's declared range, a command already expired on arrival (stale), a timestamp too far
  in the future;
* per target, the highest-priority live setpoint applies; among equals the newest. A new command
  at the same priority (or the same id) replaces the previous one, which is acknowledged
  `superseded`; lower-priority commands wait (accepted) until the higher one ends;
* at `expires_at` a setpoint ends (ack `expired`); with none left, the device reverts to its own
  default behaviour.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from derbus.messages import SetpointAck, SetpointCommand, SetpointTarget


@dataclass(frozen=True)
class TargetLimits:
    """The range a device accepts for one target, in the target's unit."""

    min_value: float
    max_value: float

    def check(self, value: float) -> str | None:
        """None when inside the range, else the reason."""
        if self.min_value <= value <= self.max_value:
            return None
        return f"value {value:g} outside the allowed range [{self.min_value:g}, {self.max_value:g}]"


@dataclass
class SetpointArbiter:
    """Live setpoints of one device, keyed by target.

    Args:
        source: the `source` written in acknowledgements (device or service name).
        limits: per target the accepted range; targets not listed are refused.
        max_future_s: tolerated clock skew for command timestamps in the future.
    """

    source: str
    limits: dict[SetpointTarget, TargetLimits]
    max_future_s: float = 30.0
    live: dict[SetpointTarget, list[SetpointCommand]] = field(default_factory=dict)

    def _ack(
        self,
        cmd: SetpointCommand,
        status: str,
        now: datetime,
        reason: str | None = None,
    ) -> SetpointAck:
        active = self.active(cmd.target, now)
        return SetpointAck(
            ts=now,
            source=self.source,
            setpoint_id=cmd.setpoint_id,
            status=status,  # type: ignore[arg-type]
            reason=reason,
            applied_value=active.value if active else None,
            target=cmd.target,
        )

    def submit(self, cmd: SetpointCommand, now: datetime) -> list[SetpointAck]:
        """Take a command; returns its ack first, then acks of commands it superseded."""
        limits = self.limits.get(cmd.target)
        if limits is None:
            supported = ", ".join(sorted(self.limits)) or "none"
            return [
                self._ack(
                    cmd,
                    "rejected",
                    now,
                    f"target {cmd.target} not supported (supported: {supported})",
                )
            ]
        reason = limits.check(cmd.value)
        if reason is not None:
            return [self._ack(cmd, "rejected", now, reason)]
        if cmd.expires_at <= now:
            return [
                self._ack(
                    cmd,
                    "rejected",
                    now,
                    f"stale: expired at {cmd.expires_at.isoformat()} before it arrived",
                )
            ]
        if cmd.ts - now > timedelta(seconds=self.max_future_s):
            return [self._ack(cmd, "rejected", now, "timestamp is in the future (clock skew?)")]

        stack = self.live.setdefault(cmd.target, [])
        displaced = [
            old
            for old in stack
            if old.setpoint_id == cmd.setpoint_id or old.priority.rank == cmd.priority.rank
        ]
        self.live[cmd.target] = [old for old in stack if old not in displaced] + [cmd]
        acks = [self._ack(cmd, "accepted", now)]
        for old in displaced:
            if old.setpoint_id != cmd.setpoint_id:
                acks.append(self._ack(old, "superseded", now, f"replaced by {cmd.setpoint_id}"))
        return acks

    def expire(self, now: datetime) -> list[SetpointAck]:
        """Remove setpoints whose TTL has passed; returns their `expired` acks."""
        acks: list[SetpointAck] = []
        for target, stack in list(self.live.items()):
            ended = [c for c in stack if c.expires_at <= now]
            if ended:
                self.live[target] = [c for c in stack if c.expires_at > now]
                acks.extend(self._ack(c, "expired", now, "ttl elapsed; reverting") for c in ended)
            if not self.live[target]:
                del self.live[target]
        return acks

    def active(self, target: SetpointTarget, now: datetime) -> SetpointCommand | None:
        """The setpoint that applies now for a target: highest priority, newest among equals."""
        live = [c for c in self.live.get(target, []) if c.expires_at > now]
        if not live:
            return None
        return max(live, key=lambda c: (c.priority.rank, c.ts))

    def value(
        self, target: SetpointTarget, now: datetime, default: float | None = None
    ) -> float | None:
        """The applied value for a target, or `default` when no setpoint is live."""
        active = self.active(target, now)
        return active.value if active else default

    def next_expiry(self) -> datetime | None:
        """When the next live setpoint ends (to schedule `expire`)."""
        ends = [c.expires_at for stack in self.live.values() for c in stack]
        return min(ends) if ends else None
