"""Control plans: the register writes for a setpoint value and for the revert, and when to (re)write."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol

from derbus.errors import SetpointRejectedError
from derbus.messages import SetpointTarget
from derbus.messages.control import SETPOINT_UNITS
from derbus.setpoints import TargetLimits
from meter_gateway.device_map import ControlSpec
from meter_gateway.registers import DataType, encode, unit_factor


@dataclass(frozen=True)
class Write:
    """Registers to write (fc 16) starting at `address`; read back to confirm."""

    address: int
    registers: tuple[int, ...]


class ControlPlan(Protocol):
    """How one setpoint target is written to one device."""

    @property
    def target(self) -> SetpointTarget:
        """The setpoint target."""
        ...

    @property
    def limits(self) -> TargetLimits:
        """The declared range."""
        ...

    @property
    def refresh_s(self) -> float | None:
        """Rewrite period while a setpoint is live (before the device's own timer ends)."""
        ...

    def writes(self, value: float) -> list[Write]:
        """Writes applying `value` (target's unit); raises SetpointRejectedError if impossible."""
        ...

    def revert(self) -> list[Write]:
        """Writes returning the device to its own behaviour."""
        ...


@dataclass(frozen=True)
class DeclaredControl:
    """Base of the control plans: the declared spec gives the target and its limits."""

    spec: ControlSpec

    @property
    def target(self) -> SetpointTarget:
        """The setpoint target."""
        return self.spec.target

    @property
    def limits(self) -> TargetLimits:
        """The declared range."""
        return TargetLimits(self.spec.min, self.spec.max)


@dataclass(frozen=True)
class RegisterControl(DeclaredControl):
    """A control declared in a register map: value register, optional enable and watchdog."""

    @property
    def refresh_s(self) -> float | None:
        """Declared refresh, else half the device's reversion timeout, else none."""
        if self.spec.refresh_s is not None:
            return self.spec.refresh_s
        if self.spec.reversion is not None:
            return self.spec.reversion.seconds / 2
        return None

    def _value_writes(self, value: float) -> list[Write]:
        reg = self.spec.write
        assert reg is not None
        unit = SETPOINT_UNITS[self.target]
        raw = value * unit_factor(unit, reg.unit or unit) / reg.scale
        try:
            regs = encode(raw, reg.type, reg.word_order, reg.byte_order, reg.length)
        except ValueError as err:
            raise SetpointRejectedError(f"cannot encode {value:g}: {err}") from err
        return [Write(reg.address, tuple(regs))]

    def writes(self, value: float) -> list[Write]:
        """Watchdog timeout first, then the value, then the enable flag."""
        out: list[Write] = []
        rv = self.spec.reversion
        if rv is not None and rv.address is not None:
            out.append(Write(rv.address, tuple(encode(rv.seconds, DataType.UINT16))))
        out += self._value_writes(value)
        if self.spec.enable is not None:
            out.append(Write(self.spec.enable.address, (self.spec.enable.on,)))
        return out

    def revert(self) -> list[Write]:
        """The revert value, then the enable flag off."""
        assert self.spec.revert_value is not None
        out = self._value_writes(self.spec.revert_value)
        if self.spec.enable is not None:
            out.append(Write(self.spec.enable.address, (self.spec.enable.off,)))
        return out


Action = Literal["write", "refresh", "revert"]


@dataclass
class ControlState:
    """What the gateway last wrote for one target (None: nothing, or reverted)."""

    applied: float | None = None
    written_at: datetime | None = None


def decide(
    desired: float | None, state: ControlState, now: datetime, refresh_s: float | None
) -> Action | None:
    """What to do for one target this tick.

    Args:
        desired: the arbiter's live value, None when no setpoint is live.
        state: what was last written.
        now: current time.
        refresh_s: rewrite period while live, None when the device has no reversion timer.

    Returns:
        `write` a new value, `refresh` the same value before the device's timer ends,
        `revert` once nothing is live any more (only if the gateway had written), or None.
    """
    if desired is None:
        return "revert" if state.applied is not None else None
    if state.applied is None or state.applied != desired:
        return "write"
    if (
        refresh_s is not None
        and state.written_at is not None
        and (now - state.written_at).total_seconds() >= refresh_s
    ):
        return "refresh"
    return None
