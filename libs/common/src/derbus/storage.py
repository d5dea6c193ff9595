"""How bus messages are stored: the long-format `readings` table and the InfluxDB point schema.

One definition shared by cloud_sync (the writer), feature_engineering and the forecaster
(readers of `readings`) and the Grafana dashboards (readers of InfluxDB), so a dashboard query or
a feature can be checked against what is really written.

* `readings(time, site_id, device_id, metric, value)`: one row per numeric field of a telemetry
  message; `metric` is `<kind>.<field>` (e.g. `meter.p_kw`, `pv.generation_kw`, `load.p_kw`),
  unique on (time, site_id, device_id, metric).
* InfluxDB: telemetry kind → measurement (`meter`, `pv`, `battery`, `load`, `price`), tags
  `site_id`, `device_id`, fields = the numeric fields with their unit-bearing names. Forecasts,
  schedules, KPIs, feeder states and service statuses have measurements of their own (below).
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import sqlalchemy as sa

from derbus import topics
from derbus.errors import StorageError
from derbus.messages import (
    DeadLetter,
    FeederState,
    KpiReport,
    Message,
    ServiceStatus,
    Telemetry,
    TimeSeries,
)
from derbus.topics import TopicIds, TopicSpec

# --- the cloud database ------------------------------------------------------------------------

READINGS_TABLE = "readings"
T = TypeVar("T")


def as_utc(value: datetime) -> datetime:
    """An aware UTC datetime (SQLite returns naive UTC values)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def guarded(fn: Callable[..., T], *args: Any) -> T:
    """Call `fn(*args)`, turning database errors (SQLAlchemyError) into StorageError."""
    try:
        return fn(*args)
    except sa.exc.SQLAlchemyError as err:
        raise StorageError(f"cloud database: {type(err).__name__}: {err}".splitlines()[0]) from err


def readings_table(metadata: sa.MetaData) -> sa.Table:
    """The long-format readings table (same columns on PostgreSQL and SQLite)."""
    return sa.Table(
        READINGS_TABLE,
        metadata,
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("site_id", sa.String(100), nullable=False),
        sa.Column("device_id", sa.String(100), nullable=False),
        sa.Column("metric", sa.String(100), nullable=False),
        sa.Column("value", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("time", "site_id", "device_id", "metric", name="readings_pkey"),
    )


@dataclass(frozen=True)
class ReadingRow:
    """One row of `readings`."""

    time: datetime
    site_id: str
    device_id: str
    metric: str
    value: float


def _numeric_fields(model: type[Message]) -> list[str]:
    names = []
    for name, info in model.model_fields.items():
        if name in ("ts", "source", "seq"):  # seq numbers the stream; it is not a reading
            continue
        kinds = set(_flatten(info.annotation))
        if kinds & {float, int, bool} and not kinds - {float, int, bool, type(None)}:
            names.append(name)
    return names


def _flatten(annotation: Any) -> list[Any]:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        out: list[Any] = []
        for arg in typing.get_args(annotation):
            out.extend(_flatten(arg))
        return out
    return [annotation]


def telemetry_fields(model: type[Message]) -> list[str]:
    """The numeric fields of a telemetry model that are stored (bools as 0/1)."""
    return _numeric_fields(model)


def metric_name(spec: TopicSpec[Any], field_name: str) -> str:
    """The `readings.metric` of a field, `<kind>.<field>`."""
    return f"{spec.name}.{field_name}"


def reading_rows(spec: TopicSpec[Any], ids: TopicIds, message: Message) -> list[ReadingRow]:
    """The `readings` rows of one telemetry message (None and non-finite values are skipped)."""
    if not isinstance(message, Telemetry):
        raise TypeError(f"{spec.key} is not telemetry")
    rows = []
    for name in telemetry_fields(type(message)):
        value = getattr(message, name)
        if value is None:
            continue
        number = float(value)
        if math.isfinite(number):
            rows.append(
                ReadingRow(message.ts, ids.site_id, ids.device_id, metric_name(spec, name), number)
            )
    return rows


# --- InfluxDB ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InfluxPoint:
    """One InfluxDB point (measurement, tags, fields, time)."""

    measurement: str
    time: datetime
    tags: dict[str, str] = field(default_factory=dict)
    fields: dict[str, float] = field(default_factory=dict)


TAGS_TELEMETRY = ("site_id", "device_id")

#: measurement -> (tags, fields) for everything that is not plain telemetry.
DERIVED_SCHEMA: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "forecast": (
        ("site_id", "target", "quantity", "model"),
        ("value", "p10", "p50", "p90", "horizon_h"),
    ),
    "schedule": (("site_id", "device_id", "quantity"), ("value",)),
    "kpi": (("site_id", "device_id", "name"), ()),  # fields are the KPI names (open set)
    "service_status": (("service",), ("state_code",)),
    "dead_letter": (("service",), ("count",)),
    "feeder_voltage": (("feeder_id", "bus", "phase"), ("v_pu",)),
    "feeder_pv": (("feeder_id", "pv_id"), ("available_kw", "output_kw", "curtailed_kw")),
}

STATE_CODES = {"offline": 0, "degraded": 1, "online": 2}


def influx_schema() -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    """Every measurement derbus writes: measurement -> (tag keys, field keys)."""
    schema: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}
    for spec in topics.TELEMETRY:
        schema[spec.name] = (TAGS_TELEMETRY, tuple(telemetry_fields(spec.model)))
    schema.update(DERIVED_SCHEMA)
    return schema


def influx_points(spec: TopicSpec[Any], ids: TopicIds, message: Message) -> list[InfluxPoint]:
    """The InfluxDB points of one bus message (empty for messages not stored in InfluxDB)."""
    if isinstance(message, Telemetry):
        fields = {r.metric.split(".", 1)[1]: r.value for r in reading_rows(spec, ids, message)}
        tags = {"site_id": ids.site_id, "device_id": ids.device_id}
        return [InfluxPoint(spec.name, message.ts, tags, fields)] if fields else []
    if isinstance(message, TimeSeries):
        return _series_points(spec, ids, message)
    if isinstance(message, KpiReport):
        tags = {"site_id": ids.site_id, "device_id": ids.device_id, "name": message.name}
        return [InfluxPoint("kpi", message.ts, tags, dict(message.values))]
    if isinstance(message, ServiceStatus):
        return [
            InfluxPoint(
                "service_status",
                message.ts,
                {"service": message.service},
                {"state_code": float(STATE_CODES[message.state])},
            )
        ]
    if isinstance(message, DeadLetter):
        return [
            InfluxPoint("dead_letter", message.ts, {"service": message.service}, {"count": 1.0})
        ]
    if isinstance(message, FeederState):
        return _feeder_points(message)
    return []


def _series_points(spec: TopicSpec[Any], ids: TopicIds, series: TimeSeries) -> list[InfluxPoint]:
    points = []
    quantiles = series.quantiles or {}
    for i, (when, value) in enumerate(zip(series.times(), series.values, strict=True)):
        fields: dict[str, float] = {"value": value}
        if series.kind == "forecast":
            for q in ("p10", "p50", "p90"):
                if q in quantiles:
                    fields[q] = quantiles[q][i]
            fields["horizon_h"] = (when - series.issue_time) / timedelta(hours=1)
            tags = {
                "site_id": ids.site_id,
                "target": ids.device_id,
                "quantity": series.quantity,
                "model": series.model or "unknown",
            }
            points.append(InfluxPoint("forecast", when, tags, fields))
        else:
            tags = {"site_id": ids.site_id, "device_id": ids.device_id, "quantity": series.quantity}
            points.append(InfluxPoint("schedule", when, tags, fields))
    return points


def _feeder_points(state: FeederState) -> list[InfluxPoint]:
    points = []
    for bus, phases in state.v_pu.items():
        for phase, v in zip("abc", phases, strict=False):
            if v is not None:
                points.append(
                    InfluxPoint(
                        "feeder_voltage",
                        state.ts,
                        {"feeder_id": state.feeder_id, "bus": bus, "phase": phase},
                        {"v_pu": v},
                    )
                )
    for pv_id, available in state.pv_available_kw.items():
        output = state.pv_output_kw.get(pv_id, available)
        points.append(
            InfluxPoint(
                "feeder_pv",
                state.ts,
                {"feeder_id": state.feeder_id, "pv_id": pv_id},
                {
                    "available_kw": available,
                    "output_kw": output,
                    "curtailed_kw": max(0.0, available - output),
                },
            )
        )
    return points
