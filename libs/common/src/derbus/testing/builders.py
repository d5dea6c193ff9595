"""Message builders for tests: what a test does not look at gets a plain default."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Literal

from derbus.messages import (
    SETPOINT_UNITS,
    JobRequest,
    PriceOrigin,
    PriceSeries,
    SetpointCommand,
    SetpointTarget,
    TimeSeries,
)


def time_series(
    values: list[float],
    start: datetime,
    *,
    kind: Literal["forecast", "schedule"] = "forecast",
    quantity: str = "load_p_kw",
    step_s: int = 900,
    source: str = "test",
    issue_time: datetime | None = None,
    **fields: Any,
) -> TimeSeries:
    """A series of `values` every `step_s` seconds from `start`.

    It is issued (and stamped) at `issue_time`, by default `start`; `fields` sets the others
    (`quantiles`, `model`, `meta`, `unit`).
    """
    issued = start if issue_time is None else issue_time
    return TimeSeries(
        ts=issued,
        source=source,
        kind=kind,
        quantity=quantity,
        issue_time=issued,
        start=start,
        step_s=step_s,
        values=values,
        **fields,
    )


def price_series(
    import_per_kwh: list[float],
    start: datetime,
    *,
    step_s: int = 3600,
    valid_until: datetime | None = None,
    issue_time: datetime | None = None,
    stale: bool = False,
    zone: str = "site-1",
    origin: PriceOrigin = "csv",
    source: str = "test",
    **fields: Any,
) -> PriceSeries:
    """Import prices (per kWh) every `step_s` seconds from `start`.

    It is issued (and stamped) at `issue_time`, by default `start`, and valid until
    `valid_until`, by default the end of the series; a `stale` series says "source down".
    `fields` sets the others (`export_per_kwh`, `currency`, `demand_windows`).
    """
    issued = start if issue_time is None else issue_time
    end = start + timedelta(seconds=step_s * len(import_per_kwh))
    return PriceSeries(
        ts=issued,
        source=source,
        zone=zone,
        origin=origin,
        issue_time=issued,
        start=start,
        step_s=step_s,
        import_per_kwh=import_per_kwh,
        valid_until=end if valid_until is None else valid_until,
        stale=stale,
        stale_reason="source down" if stale else None,
        **fields,
    )


def job_request(
    profile_kw: list[float],
    earliest_start: datetime,
    latest_start: datetime,
    *,
    job_id: str = "ev1",
    house_id: str = "site-1",
    device_id: str = "ev",
    source: str = "scada",
    ts: datetime | None = None,
    **fields: Any,
) -> JobRequest:
    """A job drawing `profile_kw` (one value a step) that may start in the given window.

    It is stamped at `ts`, by default `earliest_start`; `fields` sets `step_s`.
    """
    return JobRequest(
        ts=earliest_start if ts is None else ts,
        source=source,
        job_id=job_id,
        house_id=house_id,
        device_id=device_id,
        earliest_start=earliest_start,
        latest_start=latest_start,
        profile_kw=profile_kw,
        **fields,
    )


def setpoint_command(
    value: float,
    ts: datetime,
    *,
    target: SetpointTarget = "battery_p_kw",
    ttl_s: float = 60,
    unit: str | None = None,
    source: str = "test",
    **fields: Any,
) -> SetpointCommand:
    """A command setting `target` to `value` for `ttl_s` seconds from `ts`.

    `value` is in `unit`, by default the target's (kW, % or bool); `fields` sets the others
    (`setpoint_id`, `priority`: without one the command is `manual`).
    """
    return SetpointCommand(
        ts=ts,
        source=source,
        target=target,
        value=value,
        unit=SETPOINT_UNITS[target] if unit is None else unit,
        ttl_s=ttl_s,
        **fields,
    )
