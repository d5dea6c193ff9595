"""The REST bodies of voltage_coordinator (what its OpenAPI shows)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class SentLimits(BaseModel):
    """The PV limits last sent (only `feeder_id` and `published: false` before the first)."""

    feeder_id: str
    published: bool
    setpoint_id: str | None = None
    ts: str | None = None
    ttl_s: float | None = None
    priority: str | None = None
    step: int | None = None
    method: str | None = Field(default=None, description="centralised or distributed-…")
    limits_kw: dict[str, float] | None = Field(default=None, description="per PV, kW")
    fraction: dict[str, float] | None = Field(default=None, description="per PV, curtailed 0..1")
    group_fraction: dict[str, float] | None = None
    curtailed_kw: float | None = None
    iterations: int | None = None
    passes: int | None = None
    solve_s: float | None = None


class Voltages(BaseModel):
    """Measured voltages (latest state) and the profile predicted after the last decision."""

    feeder_id: str
    v_max_pu: float
    step: int | None = None
    ts: str | None = None
    measured_pu: dict[str, list[float | None]] | None = Field(
        default=None, description="per bus, phases a, b, c (None: no such phase)"
    )
    measured_max_pu: float | None = None
    nodes_above: int | None = None
    predicted_after_pu: dict[str, list[float | None]] | None = None
    predicted_max_pu: float | None = None
