"""Message models of the bus (pydantic v2, frozen, UTC `ts`, `source`).

Sign convention — load-referenced, everywhere in derbus:
    Positive power is drawn from the grid / consumed by the device.
    * PCC meter `p_kw`: import > 0, export < 0.
    * Battery `p_kw`: charging > 0, discharging < 0.
    * Loads `p_kw` >= 0.
    * PV reports a positive `generation_kw`; in a balance it enters as negative power.
    So the site balance is: pcc_p_kw = load_p_kw - pv_generation_kw + battery_p_kw
    (see `pcc_power_kw`).

Units are in field names (`p_kw`, `e_kwh`, `soc_pct`, `v_pu`, `price_per_kwh`); timestamps are
timezone-aware UTC and serialised with a trailing `Z`.
"""

from derbus.messages.base import (
    Message,
    UtcDatetime,
    describe_problems,
    format_utc,
    utcnow,
    validation_problems,
)
from derbus.messages.control import (
    ACK_STATUSES,
    SETPOINT_TARGETS,
    SETPOINT_UNITS,
    AckStatus,
    Priority,
    SetpointAck,
    SetpointCommand,
    SetpointRequest,
    SetpointTarget,
    new_setpoint_id,
)
from derbus.messages.ev import (
    OCPP_CONNECTOR_STATUSES,
    ChargingMode,
    ConnectorStatus,
    EvChargerTelemetry,
    EvSession,
    EvSessionKpis,
    OcppVersion,
)
from derbus.messages.grid import AreaExchange, FeederState, PvCurtailmentSet
from derbus.messages.jobs import JobPlan, JobRequest, PlannedJob
from derbus.messages.prices import DemandWindow, PriceOrigin, PriceSeries
from derbus.messages.status import DeadLetter, DeviceStatus, KpiReport, ServiceState, ServiceStatus
from derbus.messages.telemetry import (
    BatteryTelemetry,
    LoadKind,
    LoadTelemetry,
    MeterReading,
    PriceTelemetry,
    PvTelemetry,
    ReplayRequest,
    Telemetry,
    TouPeriod,
)
from derbus.messages.timeseries import TimeSeries


def pcc_power_kw(load_p_kw: float, pv_generation_kw: float, battery_p_kw: float) -> float:
    """Power at the point of common coupling, kW, load-referenced (+ import, - export).

    Args:
        load_p_kw: site consumption, kW, >= 0.
        pv_generation_kw: PV output, kW, >= 0 (enters the balance as negative).
        battery_p_kw: battery power, kW, + charging / - discharging.
    """
    return load_p_kw - pv_generation_kw + battery_p_kw


__all__ = [
    "ACK_STATUSES",
    "OCPP_CONNECTOR_STATUSES",
    "SETPOINT_TARGETS",
    "SETPOINT_UNITS",
    "AckStatus",
    "AreaExchange",
    "BatteryTelemetry",
    "ChargingMode",
    "ConnectorStatus",
    "DeadLetter",
    "DemandWindow",
    "DeviceStatus",
    "EvChargerTelemetry",
    "EvSession",
    "EvSessionKpis",
    "FeederState",
    "JobPlan",
    "JobRequest",
    "KpiReport",
    "LoadKind",
    "LoadTelemetry",
    "Message",
    "MeterReading",
    "OcppVersion",
    "PlannedJob",
    "PriceOrigin",
    "PriceSeries",
    "PriceTelemetry",
    "Priority",
    "PvCurtailmentSet",
    "PvTelemetry",
    "ReplayRequest",
    "ServiceState",
    "ServiceStatus",
    "SetpointAck",
    "SetpointCommand",
    "SetpointRequest",
    "SetpointTarget",
    "Telemetry",
    "TimeSeries",
    "TouPeriod",
    "UtcDatetime",
    "describe_problems",
    "format_utc",
    "new_setpoint_id",
    "pcc_power_kw",
    "utcnow",
    "validation_problems",
]
