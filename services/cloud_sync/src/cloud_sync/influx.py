"""InfluxDB writes (operators' history for Grafana): line protocol, batched, gzip, one sender thread.

Points follow `derbus.storage.influx_points`. The intake hands over ready-made line-protocol
lines (`telemetry_line`, no point object per message); a sender thread collects them into
requests of `batch_points` lines (or what `flush_interval_ms` gathered), gzips the body and POSTs
it to `/api/v2/write` (InfluxDB 2, and VictoriaMetrics which speaks the same API). Writing is
best-effort: a failed request is retried with exponential backoff (tenacity), then counted as
failed and shown as degraded by the service. The lossless path is the outbox to the cloud
database. At most `max_buffer_points` lines wait; beyond that the oldest are dropped and counted
as failed, so an InfluxDB outage never grows memory without bound.
"""

from __future__ import annotations

import functools
import gzip
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Protocol

import httpx
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from cloud_sync.readings import to_epoch_us
from derbus.storage import InfluxPoint

log = logging.getLogger(__name__)

_GZIP_LEVEL = 1  # the body shrinks ~5-10x already; higher levels cost CPU for a few % more


class PointSink(Protocol):
    """Where InfluxDB points go."""

    points_written: int
    points_failed: int
    last_error: str | None

    def write(self, points: Sequence[InfluxPoint]) -> None:
        """Queue points for writing (does not block on the network)."""
        ...

    def write_lines(self, lines: Sequence[str]) -> None:
        """Queue line-protocol lines (see `telemetry_line`)."""
        ...

    def close(self) -> None:
        """Flush what is queued and stop."""
        ...


@functools.lru_cache(maxsize=65_536)  # ids and field names recur on every message
def _escape_key(text: str) -> str:
    """Tag keys, tag values and field keys: `,`, `=` and space are escaped."""
    if any(c in text for c in ", =\\"):
        text = text.replace("\\", "\\\\").replace(",", r"\,").replace("=", r"\=")
        text = text.replace(" ", r"\ ")
    return text


@functools.lru_cache(maxsize=1024)
def _escape_measurement(text: str) -> str:
    if any(c in text for c in ", \\"):
        text = text.replace("\\", "\\\\").replace(",", r"\,").replace(" ", r"\ ")
    return text


def series_prefix(measurement: str, tags: Sequence[tuple[str, str]]) -> str:
    """`measurement,tag=value,…` of a line (tags sorted by key, as InfluxDB prefers)."""
    parts = [_escape_measurement(measurement)]
    parts += [f"{_escape_key(k)}={_escape_key(v)}" for k, v in sorted(tags) if v != ""]
    return ",".join(parts)


def line(prefix: str, fields: Sequence[tuple[str, float]], time_ns: int) -> str:
    """One line: `prefix field=value,… time` (float fields)."""
    body = ",".join(f"{_escape_key(k)}={float(v)!r}" for k, v in fields)
    return f"{prefix} {body} {time_ns}"


def to_line(point: InfluxPoint) -> str | None:
    """The line of a derbus point (None when it has no field)."""
    if not point.fields:
        return None
    prefix = series_prefix(point.measurement, list(point.tags.items()))
    return line(prefix, list(point.fields.items()), to_epoch_us(point.time) * 1000)


def telemetry_line(
    measurement: str,
    site_id: str,
    device_id: str,
    time_us: int,
    values: Sequence[tuple[str, float]],
) -> str | None:
    """The line of one telemetry message from its decoded `(metric, value)` pairs.

    Same point as `derbus.storage.influx_points`: measurement = the telemetry kind, tags
    `site_id` and `device_id`, fields = the stored values under their field names.
    """
    if not values:
        return None
    cut = len(measurement) + 1  # metric = "<kind>.<field>"
    body = ",".join(f"{_escape_key(m[cut:])}={v!r}" for m, v in values)
    return (
        f"{_escape_measurement(measurement)},device_id={_escape_key(device_id)},"
        f"site_id={_escape_key(site_id)} {body} {time_us * 1000}"
    )


class InfluxSink:
    """Batched, gzip'd, retried line-protocol writes to an InfluxDB 2 bucket (`/api/v2/write`).

    Args:
        url: INFLUXDB_URL.
        token: INFLUXDB_TOKEN.
        org: INFLUXDB_ORG.
        bucket: INFLUXDB_BUCKET.
        batch_points: lines per write request.
        flush_interval_ms: longest time a line waits before its request, ms.
        max_buffer_points: lines kept while InfluxDB does not take them (oldest dropped beyond).
        attempts: tries per request before its lines count as failed.
        timeout_s: HTTP timeout per request, s.
        http_client: an httpx client to send through (default: a new one).
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
        max_buffer_points: int = 1_000_000,
        attempts: int = 5,
        timeout_s: float = 10.0,
        http_client: httpx.Client | None = None,
    ) -> None:
        self.url = url
        self.org = org
        self.bucket = bucket
        self.batch_points = max(1, batch_points)
        self.flush_interval_s = flush_interval_ms / 1000.0
        self.max_buffer_points = max(self.batch_points, max_buffer_points)
        self.attempts = max(1, attempts)
        self.points_written = 0
        self.points_failed = 0
        self.bytes_sent = 0
        self.last_error: str | None = None
        self._http = http_client or httpx.Client(timeout=timeout_s)
        self._headers = {
            "Authorization": f"Token {token}",
            "Content-Encoding": "gzip",
            "Content-Type": "text/plain; charset=utf-8",
        }
        self._params = {"org": org, "bucket": bucket, "precision": "ns"}
        self._lines: deque[str] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._stop_retrying = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cloud_sync:influx", daemon=True)
        self._thread.start()

    # --- producers (event loop thread) -------------------------------------------------------------
    def write(self, points: Sequence[InfluxPoint]) -> None:
        """Queue derbus points."""
        self.write_lines([text for p in points if (text := to_line(p)) is not None])

    def write_lines(self, lines: Sequence[str]) -> None:
        """Queue lines; wakes the sender when a request's worth is waiting."""
        if not lines:
            return
        with self._cond:
            self._lines.extend(lines)
            overflow = len(self._lines) - self.max_buffer_points
            if overflow > 0:
                for _ in range(overflow):
                    self._lines.popleft()
                self.points_failed += overflow
                self.last_error = f"InfluxDB too slow or down: {overflow} points dropped"
            if len(self._lines) >= self.batch_points:
                self._cond.notify()

    # --- the sender thread -------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                deadline = time.monotonic() + self.flush_interval_s
                while not self._closing and len(self._lines) < self.batch_points:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                n = min(len(self._lines), self.batch_points)
                chunk = [self._lines.popleft() for _ in range(n)]
                closing = self._closing and not self._lines
            if chunk:
                self._send(chunk)
            if closing:
                return

    def _send(self, chunk: list[str]) -> None:
        body = gzip.compress(("\n".join(chunk) + "\n").encode(), _GZIP_LEVEL)
        try:
            for attempt in Retrying(
                stop=stop_after_attempt(self.attempts),
                wait=wait_exponential(multiplier=0.5, min=0.5, max=30.0),
                retry=retry_if_exception_type(httpx.HTTPError),
                sleep=self._sleep,
                reraise=True,
            ):
                with attempt:
                    reply = self._http.post(
                        f"{self.url.rstrip('/')}/api/v2/write",
                        params=self._params,
                        headers=self._headers,
                        content=body,
                    )
                    if reply.status_code >= 500 or reply.status_code == 429:
                        self.last_error = f"retrying: HTTP {reply.status_code}"
                        reply.raise_for_status()
        except (httpx.HTTPError, _Stopped) as err:
            self._count(failed=len(chunk), error=f"{type(err).__name__}: {err}"[:300])
            log.error("InfluxDB write of %d points to %s gave up: %s", len(chunk), self.url, err)
            return
        if reply.status_code >= 300:  # 4xx: the data is refused, retrying will not help
            error = f"HTTP {reply.status_code}: {reply.text[:200]}"
            self._count(failed=len(chunk), error=error)
            log.error("InfluxDB refused %d points: %s", len(chunk), error)
            return
        self._count(written=len(chunk), sent_bytes=len(body))

    def _count(
        self, *, written: int = 0, failed: int = 0, sent_bytes: int = 0, error: str | None = None
    ) -> None:
        with self._cond:  # the producers count dropped lines under the same lock
            self.points_written += written
            self.points_failed += failed
            self.bytes_sent += sent_bytes
            self.last_error = error

    def _sleep(self, seconds: float) -> None:
        if self._stop_retrying.wait(seconds):
            raise _Stopped("closing")

    def close(self, timeout_s: float = 15.0) -> None:
        """Send what is queued (retries cut short after `timeout_s`) and stop."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout_s)
        self._stop_retrying.set()
        self._thread.join(5.0)
        self._http.close()


class _Stopped(Exception):
    """The sink is closing while a request waits to be retried."""
