"""`cloud-sync import FILE`: history files into the cloud database, idempotently, in columns.

Two layouts are read:

* **JSONL** of the edge simulator's `--historical` (one record per site and step, see
  `edge_simulator.output.record`): each record becomes the `readings` its telemetry messages would
  have stored live — same devices, same `<kind>.<field>` metrics (`HISTORICAL_FIELDS`). Fields the
  record does not carry (the meter's reactive power, voltage, frequency and energy counters, the
  loads' energy counters and relay states) are not invented; record fields that are no telemetry
  (cloud cover, clear-sky irradiance, the load break-down) are not stored.
* **CSV** in the layout of `data/profiles`: a `time` column (wall-clock time in `--timezone`;
  repeated wall-clock hours of a daylight-saving change are kept once, the first) and one numeric
  column per series, each stored as `metric = <column>` of one `--site-id` / `--device-id`.

The file is read in chunks (`chunk_records`), decoded by msgspec straight into columns, and each
chunk goes to the store as one `ReadingBatch` (`CloudStore.write_many`: on PostgreSQL a month
without a partition is built whole and indexed once, a month with one is merged with `INSERT … ON
CONFLICT DO NOTHING`), so importing the same file twice stores every reading once. A line that does not
decode (or names an invalid site) is skipped and counted with its line number; the rest goes in.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Literal
from zoneinfo import ZoneInfo

import msgspec
import numpy as np

from cloud_sync.cloud import CloudStore, MonthsStored
from cloud_sync.intake import MAX_ID_LENGTH
from cloud_sync.readings import ReadingBatch, SeriesKey, to_epoch_us
from derbus.errors import ConfigError
from derbus.topics import validate_id

FileFormat = Literal["jsonl", "csv"]

HISTORICAL_FIELDS: tuple[tuple[str, str, str, str], ...] = (
    # (record group ("" = top level), record field, device_id, metric) — the devices and metrics
    # of the edge simulator's live telemetry (edge_simulator.output.StepView.messages)
    ("", "net_grid_flow_kw", "pcc", "meter.p_kw"),
    ("solar", "generation_kw", "pv", "pv.generation_kw"),
    ("solar", "available_kw", "pv", "pv.available_kw"),
    ("solar", "limit_kw", "pv", "pv.limit_kw"),
    ("solar", "energy_kwh", "pv", "pv.e_total_kwh"),
    ("solar", "irradiance_w_m2", "pv", "pv.irradiance_w_m2"),
    ("solar", "cell_temp_c", "pv", "pv.temp_c"),
    ("battery", "power_kw", "battery", "battery.p_kw"),
    ("battery", "soc_pct", "battery", "battery.soc_pct"),
    ("battery", "capacity_kwh", "battery", "battery.capacity_kwh"),
    ("battery", "soh_pct", "battery", "battery.soh_pct"),
    ("battery", "max_charge_kw", "battery", "battery.max_charge_kw"),
    ("battery", "max_discharge_kw", "battery", "battery.max_discharge_kw"),
    ("battery", "voltage_v", "battery", "battery.voltage_v"),
    ("battery", "temp_c", "battery", "battery.temp_c"),
    ("battery", "cycles", "battery", "battery.cycles"),
    ("home_load", "total_kw", "load", "load.p_kw"),
    ("home_load", "ev_kw", "ev", "load.p_kw"),
    ("home_load", "load1_kw", "load1", "load.p_kw"),
    ("home_load", "load2_kw", "load2", "load.p_kw"),
    ("grid_price", "price_per_kwh", "grid", "price.price_per_kwh"),
    ("grid_price", "feed_in_per_kwh", "grid", "price.feed_in_per_kwh"),
    ("grid_price", "demand_charge_per_kw", "grid", "price.demand_charge_per_kw"),
    ("grid_price", "carbon_g_per_kwh", "grid", "price.carbon_g_per_kwh"),
)
EV_ON = ("ev", "load.on")
"""The EV charger's relay, derived as live (`on = ev_kw > 0`)."""

_Number = float | None


class _Solar(msgspec.Struct):
    generation_kw: _Number = None
    available_kw: _Number = None
    limit_kw: _Number = None
    energy_kwh: _Number = None
    irradiance_w_m2: _Number = None
    cell_temp_c: _Number = None


class _Battery(msgspec.Struct):
    power_kw: _Number = None
    soc_pct: _Number = None
    capacity_kwh: _Number = None
    soh_pct: _Number = None
    max_charge_kw: _Number = None
    max_discharge_kw: _Number = None
    voltage_v: _Number = None
    temp_c: _Number = None
    cycles: _Number = None


class _HomeLoad(msgspec.Struct):
    total_kw: _Number = None
    ev_kw: _Number = None
    load1_kw: _Number = None
    load2_kw: _Number = None


class _GridPrice(msgspec.Struct):
    price_per_kwh: _Number = None
    feed_in_per_kwh: _Number = None
    demand_charge_per_kw: _Number = None
    carbon_g_per_kwh: _Number = None


class HistoricalRecord(msgspec.Struct):
    """The fields of a `--historical` line that are stored (other fields are ignored)."""

    timestamp: datetime
    device_id: str
    solar: _Solar = msgspec.field(default_factory=_Solar)
    battery: _Battery = msgspec.field(default_factory=_Battery)
    home_load: _HomeLoad = msgspec.field(default_factory=_HomeLoad)
    grid_price: _GridPrice = msgspec.field(default_factory=_GridPrice)
    net_grid_flow_kw: _Number = None


@dataclass
class ImportResult:
    """What an import did."""

    records: int = 0
    readings: int = 0
    """Readings sent to the store."""
    stored: int = 0
    """Readings the store did not have yet (-1 when the store cannot tell)."""
    skipped: int = 0
    """Lines that did not decode (not imported)."""
    problems: list[str] = field(default_factory=list)
    """The first skipped lines with their reasons."""
    repeated: int = 0
    """CSV rows of a wall-clock hour repeated by a daylight-saving change (the first is kept)."""

    def skip(self, line_no: int, reason: str) -> None:
        """Count a line that is not imported."""
        self.skipped += 1
        if len(self.problems) < 10:
            self.problems.append(f"line {line_no}: {reason}")


Progress = Callable[[int], None]
"""Called with the bytes of the file read so far."""


def check_site(site_id: str) -> str | None:
    """Why a site id cannot be stored (None when it can)."""
    if len(site_id) > MAX_ID_LENGTH:
        return f"site id longer than {MAX_ID_LENGTH} characters"
    try:
        validate_id("site_id", site_id)
    except ValueError as err:
        return str(err)
    return None


# --- JSONL --------------------------------------------------------------------------------------------


def _chunks(stream: IO[bytes], chunk_bytes: int) -> Iterator[tuple[bytes, int]]:
    """Whole lines, about `chunk_bytes` at a time, with the bytes read so far."""
    tail = b""
    read = 0
    while True:
        block = stream.read(chunk_bytes)
        if not block:
            if tail.strip():
                yield tail, read
            return
        read += len(block)
        block = tail + block
        cut = block.rfind(b"\n")
        if cut < 0:
            tail = block
            continue
        tail = block[cut + 1 :]
        yield block[: cut + 1], read


def historical_batches(
    stream: IO[bytes],
    result: ImportResult,
    *,
    chunk_bytes: int = 8 << 20,
    on_progress: Progress | None = None,
) -> Iterator[ReadingBatch]:
    """The readings of a `--historical` JSONL stream, one batch per chunk of lines."""
    decoder = msgspec.json.Decoder(HistoricalRecord)
    line_no = 0
    for block, read in _chunks(stream, chunk_bytes):
        first = line_no
        line_no += block.count(b"\n") + (0 if block.endswith(b"\n") else 1)
        numbers: list[int] | None = None  # line numbers of the records, worked out when needed
        try:
            records = decoder.decode_lines(block)
        except msgspec.MsgspecError:
            records, numbers = [], []
            for i, text in enumerate(block.split(b"\n")):
                if not text.strip():
                    continue
                try:
                    records.append(decoder.decode(text))
                    numbers.append(first + i + 1)
                except msgspec.MsgspecError as err:
                    result.skip(first + i + 1, str(err))
        good = []
        for i, rec in enumerate(records):
            reason = check_site(rec.device_id)
            if reason is None and (
                rec.timestamp.tzinfo is None or rec.timestamp.utcoffset() is None
            ):
                reason = "timestamp without a time zone"
            if reason is None:
                good.append(rec)
                continue
            if numbers is None:
                numbers = [first + j + 1 for j, t in enumerate(block.split(b"\n")) if t.strip()]
            result.skip(numbers[i], reason)
        result.records += len(good)
        if good:
            yield historical_batch(good)
        if on_progress is not None:
            on_progress(read)


def historical_batch(records: list[HistoricalRecord]) -> ReadingBatch:
    """The readings of decoded `--historical` records (record-major: time order kept)."""
    n = len(records)
    site_code: dict[str, int] = {}
    codes = np.fromiter(
        (site_code.setdefault(r.device_id, len(site_code)) for r in records), np.int64, n
    )
    times = np.fromiter((to_epoch_us(r.timestamp) for r in records), np.int64, n)
    columns: list[list[Any]] = []
    series: list[tuple[str, str]] = []
    for group, name, device, metric in HISTORICAL_FIELDS:
        if group:
            columns.append([getattr(getattr(r, group), name) for r in records])
        else:
            columns.append([getattr(r, name) for r in records])
        series.append((device, metric))
    ev_kw = columns[[f[1] for f in HISTORICAL_FIELDS].index("ev_kw")]
    columns.append([None if v is None else float(v > 0) for v in ev_kw])
    series.append(EV_ON)
    values = np.array(columns, dtype=np.float64).T  # None -> nan; (records, fields)
    fields = len(series)
    keys: list[SeriesKey] = [
        (site, device, metric) for site in site_code for device, metric in series
    ]
    key_idx = codes[:, None] * fields + np.arange(fields)[None, :]
    time_us = np.repeat(times, fields).reshape(n, fields)
    keep = np.isfinite(values)
    return ReadingBatch(
        keys,
        key_idx[keep].astype(np.uint32),
        time_us[keep].astype(np.int64),
        values[keep].astype(np.float64),
    )


# --- CSV ----------------------------------------------------------------------------------------------


def profile_batches(
    stream: IO[bytes],
    result: ImportResult,
    *,
    site_id: str,
    device_id: str,
    timezone: str,
    chunk_records: int = 50_000,
    on_progress: Progress | None = None,
) -> Iterator[ReadingBatch]:
    """The readings of a CSV in the layout of `data/profiles` (see the module doc)."""
    zone = ZoneInfo(timezone)
    text = io.TextIOWrapper(stream, encoding="utf-8", newline="")
    reader = csv.reader(text)
    header = next(reader, None)
    if header is None or not header or header[0].strip() != "time" or len(header) < 2:
        raise ConfigError("the CSV must start with a `time` column and one column per series")
    metrics = [h.strip() for h in header[1:]]
    keys: list[SeriesKey] = [(site_id, device_id, m) for m in metrics]
    fields = len(metrics)
    seen: set[int] = set()
    times: list[int] = []
    rows: list[list[float]] = []
    line_no = 1

    def flush() -> ReadingBatch:
        values = np.array(rows, dtype=np.float64).reshape(len(rows), fields)
        key_idx = np.broadcast_to(np.arange(fields), values.shape)
        time_us = np.repeat(np.array(times, np.int64), fields).reshape(values.shape)
        keep = np.isfinite(values)
        times.clear()
        rows.clear()
        return ReadingBatch(keys, key_idx[keep].astype(np.uint32), time_us[keep], values[keep])

    for row in reader:
        line_no += 1
        if not row or not any(c.strip() for c in row):
            continue
        try:
            if len(row) != fields + 1:
                raise ValueError(f"{len(row)} columns, the header has {fields + 1}")
            wall = datetime.fromisoformat(row[0].strip())
            when = wall if wall.tzinfo is not None else wall.replace(tzinfo=zone)
            us = to_epoch_us(when)
            values = [float(c) if c.strip() else math.nan for c in row[1:]]
        except ValueError as err:
            result.skip(line_no, str(err))
            continue
        if us in seen:  # the repeated wall-clock hour at the end of daylight saving time
            result.repeated += 1
            continue
        seen.add(us)
        times.append(us)
        rows.append(values)
        result.records += 1
        if len(rows) >= chunk_records:
            yield flush()
            if on_progress is not None:
                on_progress(stream.tell() if stream.seekable() else 0)
    if rows:
        yield flush()
    if on_progress is not None:
        on_progress(stream.tell() if stream.seekable() else 0)
    text.detach()


# --- the command --------------------------------------------------------------------------------------


def detect_format(path: Path) -> FileFormat:
    """`csv` for a .csv file, else `jsonl`."""
    return "csv" if path.suffix.lower() == ".csv" else "jsonl"


def import_file(
    store: CloudStore,
    path: Path,
    *,
    file_format: FileFormat | None = None,
    site_id: str | None = None,
    device_id: str = "profile",
    timezone: str = "UTC",
    on_progress: Progress | None = None,
    on_stored: MonthsStored | None = None,
) -> ImportResult:
    """Import a history file into the store (idempotent: the store ignores stored readings).

    Args:
        store: the cloud database (migrated).
        path: the file.
        file_format: `jsonl` or `csv` (default: from the file name).
        site_id: the site of a CSV's readings (required for CSV).
        device_id: the device of a CSV's readings.
        timezone: the zone of a CSV's naive `time` values (IANA name).
        on_progress: told the bytes read so far.
        on_stored: told the months stored so far and their total (PostgreSQL stores by month
            once the file is read).

    Raises:
        ConfigError: a CSV without `site_id`, or a bad header, time zone or id.
        StorageError: the store refused a batch (what went before it is stored).
    """
    fmt = file_format or detect_format(path)
    result = ImportResult()
    with path.open("rb") as stream:
        if fmt == "csv":
            if site_id is None:
                raise ConfigError("--site-id is required for a CSV file", ("site_id",))
            for name, value in (("site_id", site_id), ("device_id", device_id)):
                reason = check_site(value)
                if reason is not None:
                    raise ConfigError(f"{name}: {reason}", (name,))
            try:
                ZoneInfo(timezone)
            except (KeyError, ValueError) as err:
                raise ConfigError(f"timezone: unknown zone {timezone!r}", ("timezone",)) from err
            batches = profile_batches(
                stream,
                result,
                site_id=site_id,
                device_id=device_id,
                timezone=timezone,
                on_progress=on_progress,
            )
        else:
            batches = historical_batches(stream, result, on_progress=on_progress)
        result.stored = store.write_many(_counted(batches, result), on_stored=on_stored)
    return result


def _counted(batches: Iterator[ReadingBatch], result: ImportResult) -> Iterator[ReadingBatch]:
    for batch in batches:
        result.readings += len(batch)
        yield batch
