"""The InfluxDB sink: line protocol as derbus.storage points, gzip'd batches, retries, bounds."""

from __future__ import annotations

import gzip
from datetime import UTC, datetime

import httpx

from cloud_sync.influx import InfluxSink, telemetry_line, to_line
from derbus import topics
from derbus.messages import MeterReading
from derbus.storage import InfluxPoint, influx_points
from derbus.testing import wait_for
from derbus.topics import TopicIds

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
NS = 1_780_315_200_000_000_000


def sink_with(handler: object, **kwargs: object) -> InfluxSink:
    client = httpx.Client(transport=httpx.MockTransport(handler))  # type: ignore[arg-type]
    return InfluxSink("http://influx:8086", "tok", "org", "bucket", http_client=client, **kwargs)  # type: ignore[arg-type]


def test_a_telemetry_line_is_the_point_of_derbus_storage() -> None:
    msg = MeterReading(ts=T0, source="t", p_kw=-1.5, q_kvar=0.25)
    (point,) = influx_points(topics.METER, TopicIds("site 1", "pcc,a"), msg)
    line = telemetry_line(
        "meter", "site 1", "pcc,a", NS // 1000, [("meter.p_kw", -1.5), ("meter.q_kvar", 0.25)]
    )
    assert line == to_line(point)
    assert line == rf"meter,device_id=pcc\,a,site_id=site\ 1 p_kw=-1.5,q_kvar=0.25 {NS}"
    assert to_line(InfluxPoint("kpi", T0, {"name": "x"}, {})) is None


def test_lines_go_out_gzip_in_batches_with_the_token() -> None:
    bodies: list[list[str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"] == "Token tok"
        assert request.headers["content-encoding"] == "gzip"
        assert request.url.path == "/api/v2/write"
        assert dict(request.url.params) == {"org": "org", "bucket": "bucket", "precision": "ns"}
        bodies.append(gzip.decompress(request.content).decode().splitlines())
        return httpx.Response(204)

    sink = sink_with(handler, batch_points=3, flush_interval_ms=10_000)
    sink.write_lines([f"m v={i} {i}" for i in range(7)])
    sink.close()
    assert bodies == [
        ["m v=0 0", "m v=1 1", "m v=2 2"],
        ["m v=3 3", "m v=4 4", "m v=5 5"],
        ["m v=6 6"],
    ]
    assert (sink.points_written, sink.points_failed, sink.last_error) == (7, 0, None)


async def test_server_errors_are_retried_and_refusals_counted() -> None:
    replies = [503, 204, 400]

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(replies.pop(0), text="bad line")

    sink = sink_with(handler, batch_points=2, flush_interval_ms=10)
    sink._sleep = lambda seconds: None  # type: ignore[method-assign]
    sink.write_lines(["m v=1 1", "m v=2 2"])
    await wait_for(lambda: sink.points_written == 2, 10, message="written after one retry")
    sink.write_lines(["m v=3 3", "m v=4 4"])
    sink.close()
    assert (sink.points_written, sink.points_failed) == (2, 2)
    assert sink.last_error is not None
    assert "HTTP 400" in sink.last_error


async def test_an_unreachable_influxdb_never_holds_more_than_the_bound() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    sink = sink_with(handler, batch_points=2, flush_interval_ms=10, max_buffer_points=4, attempts=1)
    sink.write_lines([f"m v={i} {i}" for i in range(10)])
    await wait_for(lambda: sink.points_failed == 10, 10, message="all counted as failed")
    assert sink.points_written == 0
    assert sink.last_error is not None
    sink.close()
