"""The setpoint contract as one pure object: range and staleness checks, priority, TTL, acks.

Every receiver of setpoints (the edge simulator's devices, the meter gateway's devices, the
feeder simulation's PVs) keeps one `SetpointArbiter` per device. It never reads the clock: `now`
comes in as an argument. Per target it holds at most one live setpoint per priority; the highest
applies.

Rules (the ack statuses are those of `derbus.messages.AckStatus`):

* refused, ack `rejected` with the reason, nothing changes: a target the device does not have, a
  value outside the device's declared range, a command already expired on arrival (stale), a
  timestamp more than `max_future_s` in the future;
* a valid command ends every live setpoint for its target of the same or lower priority (ack
  `superseded`, naming it), except one with its own id, which it simply replaces (a refresh);
* it is then in force (ack `accepted`) unless a live setpoint of higher priority holds the target:
  ack `queued`, naming that winner; it comes into force when the winner ends (ack `accepted`
  again, then), unless its own life ends first;
* at `expires_at` a setpoint ends (ack `expired`), as does one withdrawn by the receiver
  (`withdraw`, ack `expired` with the receiver's reason); with none left the device reverts to its
  own behaviour.

Pure functions beside it build the `rejected` acks a receiver sends before any arbiter is asked:
`invalid_command_ack` (a payload that failed the schema but carries an id) and
`unknown_device_ack`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError

from derbus.messages import (
    SETPOINT_TARGETS,
    AckStatus,
    SetpointAck,
    SetpointCommand,
    SetpointTarget,
    format_utc,
    validation_problems,
)
from derbus.messages.control import SETPOINT_ID_MAX_LENGTH


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
        max_future_s: tolerated clock skew for command timestamps in the future, s.
    """

    source: str
    limits: dict[SetpointTarget, TargetLimits]
    max_future_s: float = 30.0
    _live: dict[SetpointTarget, list[SetpointCommand]] = field(
        default_factory=dict, init=False, repr=False
    )
    _in_force: dict[SetpointTarget, str] = field(default_factory=dict, init=False, repr=False)

    # --- the answers ---------------------------------------------------------------------------
    def _ack(
        self,
        cmd: SetpointCommand,
        status: AckStatus,
        now: datetime,
        reason: str | None = None,
    ) -> SetpointAck:
        active = self.active(cmd.target, now)
        return SetpointAck(
            ts=now,
            source=self.source,
            setpoint_id=cmd.setpoint_id,
            status=status,
            reason=reason,
            applied_value=active.value if active else None,
            active_setpoint_id=active.setpoint_id if active else None,
            active_priority=active.priority if active else None,
            target=cmd.target,
        )

    def check(self, cmd: SetpointCommand, now: datetime) -> str | None:
        """Why the command would be refused (target, range, stale, future), or None."""
        limits = self.limits.get(cmd.target)
        if limits is None:
            supported = ", ".join(sorted(self.limits)) or "none"
            return f"target {cmd.target} not supported (supported: {supported})"
        reason = limits.check(cmd.value)
        if reason is not None:
            return reason
        if cmd.expires_at <= now:
            return f"stale: expired at {format_utc(cmd.expires_at)} before it arrived"
        if cmd.ts - now > timedelta(seconds=self.max_future_s):
            return "timestamp is in the future (clock skew?)"
        return None

    def reject(self, cmd: SetpointCommand, now: datetime, reason: str) -> SetpointAck:
        """A `rejected` ack for a command (nothing changes)."""
        return self._ack(cmd, "rejected", now, reason)

    def holder(self, cmd: SetpointCommand, now: datetime) -> SetpointCommand | None:
        """The live setpoint of higher priority that would keep `cmd` queued (None: in force)."""
        above = [
            c
            for c in self._live.get(cmd.target, [])
            if c.expires_at > now
            and c.setpoint_id != cmd.setpoint_id
            and c.priority.rank > cmd.priority.rank
        ]
        return max(above, key=lambda c: (c.priority.rank, c.ts)) if above else None

    # --- the life of a setpoint ----------------------------------------------------------------
    def submit(self, cmd: SetpointCommand, now: datetime) -> list[SetpointAck]:
        """Take a command; returns its ack first, then the acks of the setpoints it ended.

        Its ack is `rejected` (see `check`), `accepted` or `queued` (naming the winner); the
        setpoints of the same or lower priority it ended follow as `superseded`.
        """
        reason = self.check(cmd, now)
        if reason is not None:
            return [self.reject(cmd, now, reason)]
        stack = [c for c in self._live.get(cmd.target, []) if c.setpoint_id != cmd.setpoint_id]
        # a setpoint already past its end is left for `expire` to report as expired
        ended = [c for c in stack if c.expires_at > now and c.priority.rank <= cmd.priority.rank]
        self._live[cmd.target] = [c for c in stack if c not in ended] + [cmd]
        winner = self.holder(cmd, now)
        if winner is None:
            self._in_force[cmd.target] = cmd.setpoint_id
            acks = [self._ack(cmd, "accepted", now)]
        else:
            acks = [
                self._ack(
                    cmd,
                    "queued",
                    now,
                    f"queued behind {winner.priority} setpoint {winner.setpoint_id} "
                    f"(live until {format_utc(winner.expires_at)})",
                )
            ]
        acks += [
            self._ack(old, "superseded", now, f"superseded by {cmd.setpoint_id} ({cmd.priority})")
            for old in ended
        ]
        # a refresh at a lower priority can hand the target to a queued setpoint
        return acks + self._take_over(now, [cmd.target])

    def expire(self, now: datetime) -> list[SetpointAck]:
        """End the setpoints whose TTL has passed (`expired`), then announce who took over.

        Returns the `expired` acks, then an `accepted` ack for each queued setpoint that is in
        force now because the one before it ended.
        """
        acks: list[SetpointAck] = []
        for target, stack in list(self._live.items()):
            ended = [c for c in stack if c.expires_at <= now]
            if ended:
                self._live[target] = [c for c in stack if c.expires_at > now]
                acks.extend(self._ack(c, "expired", now, "ttl elapsed") for c in ended)
        return acks + self._take_over(now, list(self._live))

    def withdraw(self, setpoint_id: str, now: datetime, reason: str) -> list[SetpointAck]:
        """End a setpoint before its TTL (the receiver gave up on it, e.g. a Modbus cancel).

        Returns its `expired` ack with `reason` (none when no live setpoint has that id), then an
        `accepted` ack for a queued setpoint that is in force now.
        """
        acks: list[SetpointAck] = []
        for target, stack in list(self._live.items()):
            ended = [c for c in stack if c.setpoint_id == setpoint_id]
            if ended:
                self._live[target] = [c for c in stack if c.setpoint_id != setpoint_id]
                acks.extend(self._ack(c, "expired", now, reason) for c in ended)
        return acks + self._take_over(now, list(self._live))

    def _take_over(self, now: datetime, targets: list[SetpointTarget]) -> list[SetpointAck]:
        """Drop emptied targets; `accepted` for each setpoint that came into force."""
        acks: list[SetpointAck] = []
        for target in targets:
            if not self._live.get(target, True):
                del self._live[target]
            active = self.active(target, now)
            before = self._in_force.get(target)
            if active is None:
                self._in_force.pop(target, None)
            elif active.setpoint_id != before:
                self._in_force[target] = active.setpoint_id
                why = f"in force: {before} no longer holds {target}" if before else "in force"
                acks.append(self._ack(active, "accepted", now, why))
        return acks

    # --- what applies --------------------------------------------------------------------------
    def active(self, target: SetpointTarget, now: datetime) -> SetpointCommand | None:
        """The setpoint that applies now for a target: the highest-priority live one."""
        live = [c for c in self._live.get(target, []) if c.expires_at > now]
        if not live:
            return None
        return max(live, key=lambda c: (c.priority.rank, c.ts))

    def value(
        self, target: SetpointTarget, now: datetime, default: float | None = None
    ) -> float | None:
        """The applied value for a target, or `default` when no setpoint is live."""
        active = self.active(target, now)
        return active.value if active else default

    @property
    def idle(self) -> bool:
        """No setpoint held for any target (the device runs on its own behaviour)."""
        return not self._live

    def commands(self, target: SetpointTarget | None = None) -> list[SetpointCommand]:
        """The setpoints held (in force or queued; of one target or all), not yet expired."""
        targets = [target] if target is not None else list(self._live)
        return [c for t in targets for c in self._live.get(t, [])]

    def next_expiry(self) -> datetime | None:
        """When the next held setpoint ends (to schedule `expire`)."""
        ends = [c.expires_at for stack in self._live.values() for c in stack]
        return min(ends) if ends else None


def _command_id(data: Any) -> str | None:
    """The `setpoint_id` of a decoded payload when it can address an ack, else None."""
    if not isinstance(data, dict):
        return None
    sid = data.get("setpoint_id")
    if isinstance(sid, int) and not isinstance(sid, bool):
        sid = str(sid)
    if isinstance(sid, str) and 1 <= len(sid) <= SETPOINT_ID_MAX_LENGTH:
        return sid
    return None


def invalid_command_ack(
    payload: bytes, error: ValidationError, source: str, now: datetime
) -> SetpointAck | None:
    """The `rejected` ack for a setpoint payload that failed the schema, if it carries an id.

    Args:
        payload: the raw payload of a `control.set` message.
        error: why `SetpointCommand` refused it.
        source: the receiver, written in the ack.
        now: the receiver's time, UTC.

    Returns:
        `rejected` with `field` = the first invalid field and `reason` = every problem
        (`field: reason; …`); None when there is no usable `setpoint_id` to answer (not JSON, not
        an object, no id, or an id that is not a string/integer of 1–100 characters).
    """
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    sid = _command_id(data)
    if sid is None:
        return None
    problems = validation_problems(error)
    target = data.get("target")
    return SetpointAck(
        ts=now,
        source=source,
        setpoint_id=sid,
        status="rejected",
        field=problems[0][0] if problems else None,
        reason="; ".join(f"{where}: {why}" for where, why in problems)[:2000] or "invalid",
        target=next((t for t in SETPOINT_TARGETS if t == target), None),
    )


def unknown_device_ack(
    cmd: SetpointCommand, device_id: str, known: Iterable[str], source: str, now: datetime
) -> SetpointAck:
    """The `rejected` ack for a setpoint to a device the receiver does not have on that site."""
    names = ", ".join(sorted(known)) or "none"
    return SetpointAck(
        ts=now,
        source=source,
        setpoint_id=cmd.setpoint_id,
        status="rejected",
        reason=f"unknown device {device_id!r} (devices of this site: {names})",
        target=cmd.target,
    )
