"""Distribution-feeder messages: feeder state, PV curtailment setpoints, area agent exchanges."""

from __future__ import annotations

from pydantic import Field

from derbus.messages.base import Message
from derbus.messages.control import Priority, new_setpoint_id


class FeederState(Message):
    """One power-flow snapshot of a feeder.

    `v_pu` maps bus name -> per-phase voltage magnitudes [a, b, c] in per unit (None where the
    bus lacks the phase). PV powers are positive generation in kW (see the sign convention).
    """

    feeder_id: str
    step: int = Field(ge=0, description="index of the interval in the day (or run)")
    v_pu: dict[str, list[float | None]]
    pv_available_kw: dict[str, float] = Field(description="per PV: what it could produce now")
    pv_output_kw: dict[str, float] = Field(description="per PV: what it produces now")
    load_p_kw: float | None = Field(default=None, description="total feeder load, kW")


class PvCurtailmentSet(Message):
    """A batch of PV power-limit setpoints for one feeder (setpoint contract: TTL, priority)."""

    setpoint_id: str = Field(default_factory=new_setpoint_id)
    feeder_id: str
    limits_kw: dict[str, float] = Field(description="per PV id: maximum output, kW, >= 0")
    ttl_s: float = Field(gt=0, le=86_400)
    priority: Priority = Priority.GRID_OPERATOR


class AreaExchange(Message):
    """Boundary values an area agent shares with its neighbours in one iteration."""

    area_id: str
    round_id: str = Field(description="identifies one distributed solve")
    iteration: int = Field(ge=0)
    values: dict[str, float] = Field(description="boundary voltages, flows, shared fraction…")
    residual_primal: float | None = None
    residual_dual: float | None = None
    converged: bool = False
