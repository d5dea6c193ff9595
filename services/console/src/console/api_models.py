"""The JSON bodies of the console's API (its HTML pages and forms are not in the OpenAPI)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class History(BaseModel):
    """Chart points of the last hours."""

    rows: list[list[float | None]] = Field(
        description="[unix s, PCC kW, PV kW, load kW, battery kW, SoC %] per point"
    )


class SeriesColumns(BaseModel):
    """A forecast or schedule as chart columns (empty lists when there is none)."""

    t: list[float] = Field(description="interval starts, unix s")
    p50: list[float]
    low: list[float] = Field(description="P10 (empty without quantiles)")
    high: list[float] = Field(description="P90 (empty without quantiles)")
    issued: str | None = Field(default=None, description="issue time, ISO 8601")
    model: str | None = None


class Plans(BaseModel):
    """A site's forecasts, battery schedule, month peak and the peak_shaving limits."""

    load: SeriesColumns
    pv: SeriesColumns
    schedule: SeriesColumns
    schedule_status: str | None
    soc_kwh: list[float]
    month_peak_kw: float | None
    import_limit_kw: float | None
    demand_target_kw: float | None
    export_limit_kw: float | None
