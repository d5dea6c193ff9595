"""InfluxDB writes (operators' history for Grafana): influxdb-client's batching write API.

Points follow `derbus.storage.influx_points`. Writing is asynchronous and best-effort: the client
batches, retries with exponential backoff, and reports through callbacks (counted here and shown
as degraded by the service). The lossless path is the outbox to the cloud database.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from derbus.storage import InfluxPoint

if TYPE_CHECKING:  # influxdb-client is imported when first used (it is slow to import)
    from influxdb_client.client.write.point import Point

log = logging.getLogger(__name__)


class PointSink(Protocol):
    """Where InfluxDB points go."""

    points_written: int
    points_failed: int
    last_error: str | None

    def write(self, points: Sequence[InfluxPoint]) -> None:
        """Queue points for writing (does not block on the network)."""
        ...

    def close(self) -> None:
        """Flush what is queued and stop."""
        ...


def to_point(point: InfluxPoint) -> Point:
    """An influxdb-client `Point` of a derbus point."""
    from influxdb_client.client.write.point import Point

    p: Point = Point(point.measurement)  # type: ignore[no-untyped-call]
    p.time(point.time)  # type: ignore[no-untyped-call]
    for key, value in point.tags.items():
        p.tag(key, value)  # type: ignore[no-untyped-call]
    for key, number in point.fields.items():
        p.field(key, float(number))  # type: ignore[no-untyped-call]
    return p


def _lines(data: Any) -> int:
    if isinstance(data, bytes | str):
        text = data.decode() if isinstance(data, bytes) else data
        return len([line for line in text.split("\n") if line.strip()])
    return 1


class InfluxSink:
    """Batched, retried writes to an InfluxDB 2 bucket (or anything speaking `/api/v2/write`).

    Args:
        url: INFLUXDB_URL.
        token: INFLUXDB_TOKEN.
        org: INFLUXDB_ORG.
        bucket: INFLUXDB_BUCKET.
        batch_points: points per write request.
        flush_interval_ms: longest time a point waits in the batch, ms.
    """

    def __init__(
        self,
        url: str,
        token: str,
        org: str,
        bucket: str,
        *,
        batch_points: int = 5000,
        flush_interval_ms: int = 1000,
    ) -> None:
        self.url = url
        self.bucket = bucket
        self.org = org
        self.points_written = 0
        self.points_failed = 0
        self.last_error: str | None = None
        self._lock = threading.Lock()
        from influxdb_client.client.influxdb_client import InfluxDBClient
        from influxdb_client.client.write_api import WriteOptions

        self._client = InfluxDBClient(url=url, token=token, org=org, timeout=10_000)
        self._write = self._client.write_api(
            write_options=WriteOptions(
                batch_size=batch_points,
                flush_interval=flush_interval_ms,
                retry_interval=1_000,
                max_retries=5,
                max_retry_delay=30_000,
                max_retry_time=120_000,
                exponential_base=2,
                max_close_wait=15_000,
            ),
            success_callback=self._ok,
            error_callback=self._failed,
            retry_callback=self._retrying,
        )

    def write(self, points: Sequence[InfluxPoint]) -> None:
        """Queue points in the batching writer."""
        if points:
            self._write.write(self.bucket, self.org, [to_point(p) for p in points])

    def _ok(self, conf: Any, data: Any) -> None:
        with self._lock:
            self.points_written += _lines(data)
            self.last_error = None

    def _failed(self, conf: Any, data: Any, err: Exception) -> None:
        lines = _lines(data)
        with self._lock:
            self.points_failed += lines
            self.last_error = f"{type(err).__name__}: {err}"[:300]
        log.error("InfluxDB write of %d points to %s gave up: %s", lines, self.url, err)

    def _retrying(self, conf: Any, data: Any, err: Exception) -> None:
        with self._lock:
            self.last_error = f"retrying: {type(err).__name__}: {err}"[:300]
        log.warning("InfluxDB write to %s failed, retrying: %s", self.url, err)

    def close(self) -> None:
        """Flush and close."""
        self._write.close()  # type: ignore[no-untyped-call]
        self._client.close()  # type: ignore[no-untyped-call]
