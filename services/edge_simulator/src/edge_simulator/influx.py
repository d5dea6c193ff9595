"""Optional direct InfluxDB writes of the simulated readings (derbus.storage point schema)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from influxdb_client.client.influxdb_client import InfluxDBClient
from influxdb_client.client.write_api import SYNCHRONOUS

from derbus.errors import ConfigError, StorageError
from derbus.messages import Message
from derbus.settings import InfluxSettings
from derbus.storage import InfluxPoint, influx_points
from derbus.topics import TopicIds, TopicSpec


def to_points(items: Iterable[tuple[TopicSpec[Any], TopicIds, Message]]) -> list[InfluxPoint]:
    """The InfluxDB points of published messages (measurements meter, pv, battery, load, price)."""
    out: list[InfluxPoint] = []
    for spec, ids, message in items:
        out.extend(influx_points(spec, ids, message))
    return out


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace(",", "\\,").replace(" ", "\\ ").replace("=", "\\=")


def line_protocol(point: InfluxPoint) -> str:
    """One point as an InfluxDB line (millisecond timestamp)."""
    tags = "".join(f",{_escape(k)}={_escape(v)}" for k, v in sorted(point.tags.items()))
    fields = ",".join(f"{_escape(k)}={float(v)!r}" for k, v in point.fields.items())
    ms = int(point.time.timestamp() * 1000)
    return f"{_escape(point.measurement)}{tags} {fields} {ms}"


class InfluxWriter:
    """Writes points synchronously (call it off the event loop); errors become StorageError."""

    def __init__(self, settings: InfluxSettings) -> None:
        if settings.url is None or settings.token is None:
            raise ConfigError("InfluxDB writes need INFLUXDB_URL and INFLUXDB_TOKEN")
        token = settings.token.get_secret_value()
        self._client: Any = InfluxDBClient(url=settings.url, token=token, org=settings.org)
        self._api: Any = self._client.write_api(write_options=SYNCHRONOUS)
        self._bucket = settings.bucket
        self._org = settings.org

    def write(self, items: Iterable[tuple[TopicSpec[Any], TopicIds, Message]]) -> int:
        """Write the messages' points; returns how many were written."""
        records = [line_protocol(p) for p in to_points(items)]
        try:
            self._api.write(
                bucket=self._bucket, org=self._org, record=records, write_precision="ms"
            )
        except Exception as err:  # the client raises several unrelated types; wrap at the boundary
            raise StorageError(f"InfluxDB write failed: {err}") from err
        return len(records)

    def close(self) -> None:
        """Close the client."""
        self._client.close()
