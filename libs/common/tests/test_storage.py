"""Storage mapping: readings rows and InfluxDB points follow the documented schema."""

from datetime import UTC, datetime, timedelta

from derbus import topics
from derbus.messages import (
    BatteryTelemetry,
    FeederState,
    LoadTelemetry,
    MeterReading,
    ServiceStatus,
)
from derbus.storage import influx_points, influx_schema, reading_rows
from derbus.testing import time_series
from derbus.topics import TopicIds

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
IDS = TopicIds("s1", "pcc")


def test_reading_rows_use_kind_dot_field_and_skip_none() -> None:
    rows = reading_rows(topics.METER, IDS, MeterReading(ts=T0, source="x", p_kw=2.5, q_kvar=0.5))
    assert {(r.metric, r.value) for r in rows} == {("meter.p_kw", 2.5), ("meter.q_kvar", 0.5)}
    assert all(r.time == T0 and r.site_id == "s1" and r.device_id == "pcc" for r in rows)


def test_bool_fields_are_stored_as_numbers() -> None:
    rows = reading_rows(
        topics.LOAD, TopicIds("s1", "load1"), LoadTelemetry(ts=T0, source="x", p_kw=1.0, on=True)
    )
    assert ("load.on", 1.0) in {(r.metric, r.value) for r in rows}


def test_every_point_matches_the_schema() -> None:
    schema = influx_schema()
    messages = [
        (topics.METER, IDS, MeterReading(ts=T0, source="x", p_kw=1.0, v_l1_v=231.0)),
        (
            topics.BATTERY,
            TopicIds("s1", "battery"),
            BatteryTelemetry(ts=T0, source="x", p_kw=-1, soc_pct=50),
        ),
        (
            topics.SERVICE_STATUS,
            TopicIds("platform", "ps"),
            ServiceStatus(ts=T0, source="ps", service="ps", state="degraded"),
        ),
        (
            topics.FEEDER_STATE,
            TopicIds("f", "ieee123"),
            FeederState(
                ts=T0,
                source="sim",
                feeder_id="ieee123",
                step=0,
                v_pu={"b1": [1.01, None, 1.02]},
                pv_available_kw={"pv1": 10.0},
                pv_output_kw={"pv1": 7.0},
            ),
        ),
        (
            topics.FORECAST,
            TopicIds("s1", "load"),
            time_series(
                [1.0, 2.0],
                T0 + timedelta(hours=1),
                issue_time=T0,
                quantiles={"p10": [0.5, 1.5], "p90": [1.5, 2.5]},
                model="gbr",
            ),
        ),
    ]
    seen = set()
    for spec, ids, msg in messages:
        for point in influx_points(spec, ids, msg):
            tags, fields = schema[point.measurement]
            assert set(point.tags) <= set(tags), point
            assert set(point.fields) <= set(fields), point
            seen.add(point.measurement)
    assert seen == {"meter", "battery", "service_status", "feeder_voltage", "feeder_pv", "forecast"}


def test_forecast_points_are_at_future_times_with_horizon() -> None:
    series = time_series([0.0, 3.0], T0, quantity="pv_generation_kw")
    points = influx_points(topics.FORECAST, TopicIds("s1", "pv"), series)
    assert [p.time for p in points] == [T0, T0 + timedelta(minutes=15)]
    assert points[1].fields["horizon_h"] == 0.25
    assert points[1].tags["target"] == "pv"
