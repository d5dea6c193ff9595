"""EV charging messages: one connector's telemetry (OCPP) and a charging session with its KPIs."""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from derbus.messages.base import Message, UtcDatetime
from derbus.messages.telemetry import Telemetry

ConnectorStatus = Literal[
    "Available",
    "Preparing",
    "Charging",
    "SuspendedEV",
    "SuspendedEVSE",
    "Finishing",
    "Reserved",
    "Unavailable",
    "Faulted",
    "Occupied",
    "Offline",
]
"""OCPP connector status (1.6 ChargePointStatus ∪ 2.0.1 ConnectorStatus), `Offline` when the
station's WebSocket is down."""

OCPP_CONNECTOR_STATUSES: frozenset[str] = frozenset(get_args(ConnectorStatus)) - {"Offline"}
"""The statuses a station can report (`Offline` is ours, never on the wire)."""

OcppVersion = Literal["1.6", "2.0.1"]

ChargingMode = Literal["off", "now", "minpv", "pv"]
"""Smart charging mode of a session, as evcc names them.

* `off` — no charging.
* `now` — as fast as the charger, the setpoints and the site's import limit allow.
* `minpv` — at least the minimum power, more with PV surplus.
* `pv` — only from PV surplus (starts when the surplus reaches the minimum power).

In every mode but `off` a session with a departure time and an energy need tops up from the grid
in the cheapest intervals when PV alone would not deliver the need by the departure.
"""


class EvChargerTelemetry(Telemetry):
    """One connector (EVSE) of a charging station. `p_kw` > 0 charges the vehicle (load)."""

    p_kw: float = Field(description="active power, kW, + charging (drawn from the site)")
    status: ConnectorStatus = Field(description="connector status as the station reports it")
    station_id: str = Field(description="OCPP charging station identity")
    connector_id: int = Field(ge=0, description="OCPP 1.6 connectorId / 2.0.1 evseId")
    protocol: OcppVersion = Field(description="OCPP version the station speaks")
    online: bool = Field(description="the station's WebSocket is connected")
    limit_kw: float | None = Field(
        default=None, ge=0, description="charging limit the station accepted (profile), kW"
    )
    max_kw: float | None = Field(default=None, ge=0, description="connector rating, kW")
    e_session_kwh: float | None = Field(
        default=None, ge=0, description="energy delivered in the running transaction, kWh"
    )
    e_total_kwh: float | None = Field(default=None, ge=0, description="energy register, kWh")
    soc_pct: float | None = Field(default=None, ge=0, le=100, description="vehicle SoC, %")
    transaction_id: str | None = Field(default=None, description="running transaction, if any")


class EvSessionKpis(BaseModel):
    """What a charging session delivered so far (measured), and what it cost."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    energy_kwh: float = Field(ge=0, description="energy into the vehicle, kWh")
    pv_kwh: float = Field(ge=0, description="of which from the site's PV surplus, kWh")
    grid_kwh: float = Field(ge=0, description="of which imported from the grid, kWh")
    pv_share_pct: float = Field(ge=0, le=100, description="pv_kwh / energy_kwh, %")
    cost: float = Field(description="grid energy x import price, in the price's currency")
    mean_price_per_kwh: float | None = Field(
        default=None, description="cost / grid_kwh (None before any grid energy)"
    )


class EvSession(Message):
    """A charging session of one connector: the user's need, the plan and its KPIs.

    The plan is the power limit per interval (kW, + charging) from `plan_start` every
    `plan_step_s`; `planned_kwh` is what it delivers before `departure`.
    """

    session_id: str
    station_id: str
    connector_id: int = Field(ge=0)
    mode: ChargingMode
    started: UtcDatetime
    ended: UtcDatetime | None = None
    departure: UtcDatetime | None = Field(default=None, description="when the user leaves")
    energy_need_kwh: float | None = Field(
        default=None, ge=0, description="energy the user wants by departure, kWh"
    )
    need_source: Literal["charger", "user", "default"] | None = Field(
        default=None, description="where the departure and energy need came from"
    )
    plan_start: UtcDatetime | None = None
    plan_step_s: int | None = Field(default=None, gt=0)
    plan_kw: list[float] = Field(default_factory=list, description="planned limit, kW")
    planned_kwh: float | None = Field(default=None, ge=0, description="planned energy, kWh")
    plan_meets_need: bool | None = Field(
        default=None, description="the plan delivers the need before departure"
    )
    kpis: EvSessionKpis
