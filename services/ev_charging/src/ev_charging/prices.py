"""Price sources: a CSV file, the time-of-use tariff model, or an HTTP JSON endpoint → PriceSeries.

Parsing is pure (text or decoded JSON in, `PriceSeries` out); `PriceFeed` keeps the last good
series of each zone and, when a source fails, republishes it marked stale with the reason.
"""

from __future__ import annotations

import asyncio
import csv
import io
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import httpx

from derbus.errors import DeviceError
from derbus.messages import PriceSeries, format_utc
from derbus.messages.prices import DemandWindow
from derbus.tariff import Tariff
from ev_charging.settings import PriceSourceConfig

SOURCE = "ev_charging"


class PriceSourceError(DeviceError):
    """A price source gave nothing usable (unreadable, empty, irregular, not numbers)."""


def _parse_time(text: str, where: str) -> datetime:
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as err:
        raise PriceSourceError(f"{where}: {text!r} is not an ISO 8601 time") from err
    if value.tzinfo is None:
        raise PriceSourceError(f"{where}: {text!r} has no time zone (give Z or an offset)")
    return value


def _number(text: Any, where: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError) as err:
        raise PriceSourceError(f"{where}: {text!r} is not a number") from err
    if not math.isfinite(value):
        raise PriceSourceError(f"{where}: {text!r} is not finite")
    return value


def _regular(starts: list[datetime], where: str) -> int:
    """The common step of interval starts, s (raises when irregular or unordered)."""
    if len(starts) < 2:
        raise PriceSourceError(f"{where}: need at least two intervals to know the step")
    step = (starts[1] - starts[0]).total_seconds()
    if step <= 0:
        raise PriceSourceError(f"{where}: interval starts are not increasing")
    for i in range(1, len(starts)):
        if (starts[i] - starts[i - 1]).total_seconds() != step:
            raise PriceSourceError(f"{where}: interval {i} breaks the {step:g} s step")
    return int(step)


@dataclass(frozen=True)
class Intervals:
    """Prices of a source, before they become a series."""

    starts: list[datetime]
    import_per_kwh: list[float]
    export_per_kwh: list[float] | None
    demand_windows: list[DemandWindow] = field(default_factory=list)


def parse_csv(text: str, cfg: PriceSourceConfig) -> Intervals:
    """A price CSV: header `start,import_per_kwh[,export_per_kwh][,demand_charge_per_kw]`.

    `start` is ISO 8601 with a zone; prices are multiplied by `cfg.price_scale`. Consecutive
    intervals with a `demand_charge_per_kw` > 0 form one demand-charge window.
    """
    reader = csv.DictReader(io.StringIO(text))
    fields = reader.fieldnames or []
    for needed in ("start", "import_per_kwh"):
        if needed not in fields:
            raise PriceSourceError(f"price CSV lacks the column {needed!r} (has {fields})")
    starts, imp, exp, demand = [], [], [], []
    for n, row in enumerate(reader, start=2):
        where = f"price CSV line {n}"
        starts.append(_parse_time(row["start"], where))
        imp.append(_number(row["import_per_kwh"], where) * cfg.price_scale)
        if "export_per_kwh" in fields:
            exp.append(_number(row["export_per_kwh"], where) * cfg.price_scale)
        if row.get("demand_charge_per_kw"):
            demand.append(_number(row["demand_charge_per_kw"], where))
        else:
            demand.append(0.0)
    step = _regular(starts, "price CSV")
    return Intervals(starts, imp, exp or None, _windows(starts, demand, step))


def _windows(starts: list[datetime], charge: list[float], step_s: int) -> list[DemandWindow]:
    """Runs of equal positive demand charge as windows."""
    out: list[DemandWindow] = []
    i = 0
    while i < len(starts):
        if charge[i] <= 0:
            i += 1
            continue
        j = i
        while j + 1 < len(starts) and charge[j + 1] == charge[i]:
            j += 1
        end = starts[j] + timedelta(seconds=step_s)
        out.append(DemandWindow(start=starts[i], end=end, charge_per_kw=charge[i]))
        i = j + 1
    return out


def _dig(data: Any, path: str) -> Any:
    for part in [p for p in path.split(".") if p]:
        if not isinstance(data, dict) or part not in data:
            raise PriceSourceError(f"price JSON has no {part!r} on the path {path!r}")
        data = data[part]
    return data


def parse_json(data: Any, cfg: PriceSourceConfig) -> Intervals:
    """Decoded JSON of an HTTP price source: a list of objects at `cfg.json_path`.

    Each object has `cfg.start_field` (ISO 8601 with zone), `cfg.import_field` and, if set,
    `cfg.export_field`; prices are multiplied by `cfg.price_scale`.
    """
    rows = _dig(data, cfg.json_path)
    if not isinstance(rows, list) or not rows:
        raise PriceSourceError(f"price JSON at {cfg.json_path or '(root)'!r} is not a list")
    starts, imp, exp = [], [], []
    for n, row in enumerate(rows):
        where = f"price JSON item {n}"
        if not isinstance(row, dict):
            raise PriceSourceError(f"{where} is not an object")
        if cfg.start_field not in row or cfg.import_field not in row:
            raise PriceSourceError(f"{where} lacks {cfg.start_field!r} or {cfg.import_field!r}")
        starts.append(_parse_time(str(row[cfg.start_field]), where))
        imp.append(_number(row[cfg.import_field], where) * cfg.price_scale)
        if cfg.export_field is not None and cfg.export_field in row:
            exp.append(_number(row[cfg.export_field], where) * cfg.price_scale)
    if exp and len(exp) != len(imp):
        raise PriceSourceError("price JSON gives an export price for some intervals only")
    return Intervals(starts, imp, exp or None, [])


def tou_intervals(tariff: Tariff, start: datetime, horizon_h: float, step_s: int) -> Intervals:
    """The time-of-use model (`derbus.tariff`, the simulator's) as intervals from `start`.

    `start` is floored to the step; each interval takes the price at its start; the demand
    charge is one window over the horizon (the tariff bills the month's peak).
    """
    epoch = start.timestamp()
    first = datetime.fromtimestamp(epoch - epoch % step_s, tz=start.tzinfo)
    n = max(2, math.ceil(horizon_h * 3600 / step_s))
    starts = [first + timedelta(seconds=i * step_s) for i in range(n)]
    windows = []
    if tariff.demand_charge_per_kw > 0:
        end = starts[-1] + timedelta(seconds=step_s)
        windows = [
            DemandWindow(start=starts[0], end=end, charge_per_kw=tariff.demand_charge_per_kw)
        ]
    return Intervals(
        starts, [tariff.price_at(s) for s in starts], [tariff.feed_in_per_kwh] * n, windows
    )


def to_series(intervals: Intervals, cfg: PriceSourceConfig, now: datetime) -> PriceSeries:
    """A source's intervals as the bus message, valid for `cfg.valid_for_s` from `now`."""
    step = _regular(intervals.starts, f"price source {cfg.zone}")
    end = intervals.starts[-1] + timedelta(seconds=step)
    valid_until = min(now + timedelta(seconds=cfg.valid_for_s), end)
    return PriceSeries(
        ts=now,
        source=SOURCE,
        zone=cfg.zone,
        currency=cfg.currency,
        origin=cfg.kind,
        issue_time=now,
        start=intervals.starts[0],
        step_s=step,
        import_per_kwh=intervals.import_per_kwh,
        export_per_kwh=intervals.export_per_kwh,
        demand_windows=intervals.demand_windows,
        valid_until=valid_until,
    )


def marked_stale(series: PriceSeries, now: datetime, reason: str) -> PriceSeries:
    """The last good series again, marked stale with the reason (consumers fall back)."""
    return series.with_changes(ts=now, stale=True, stale_reason=reason)


@dataclass
class PriceFeed:
    """The price sources and the last series of each zone.

    `read` is called with a source's config and returns its intervals (the service gives it a
    CSV reader off the event loop or an HTTP client); `refresh` turns them into a series or,
    on failure, into the last good one marked stale.
    """

    sources: list[PriceSourceConfig]
    last: dict[str, PriceSeries] = field(default_factory=dict)
    next_read: dict[str, datetime] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)

    def due(self, now: datetime) -> list[PriceSourceConfig]:
        """Sources whose refresh time has come."""
        return [s for s in self.sources if self.next_read.get(s.zone, now) <= now]

    def accept(self, cfg: PriceSourceConfig, intervals: Intervals, now: datetime) -> PriceSeries:
        """A fresh read of a source: its series (kept as the zone's last good one)."""
        series = to_series(intervals, cfg, now)
        self.last[cfg.zone] = series
        self.next_read[cfg.zone] = now + timedelta(seconds=cfg.refresh_s)
        return series

    def fail(self, cfg: PriceSourceConfig, now: datetime, reason: str) -> PriceSeries | None:
        """A failed read: the last good series marked stale (None when there never was one)."""
        self.failures[cfg.zone] = self.failures.get(cfg.zone, 0) + 1
        # retry sooner than a normal refresh, but not in a tight loop
        self.next_read[cfg.zone] = now + timedelta(seconds=min(cfg.refresh_s, 60.0))
        last = self.last.get(cfg.zone)
        if last is None:
            return None
        stale = marked_stale(last, now, f"source failed at {format_utc(now)}: {reason}")
        self.last[cfg.zone] = stale
        return stale


async def read_source(
    cfg: PriceSourceConfig, now: datetime, client: httpx.AsyncClient, timeout_s: float = 10.0
) -> Intervals:
    """Read one source (CSV off the event loop, HTTP with `client`, ToU computed).

    Raises:
        PriceSourceError: the source is unreachable or gave nothing usable (the reason).
    """
    if cfg.kind == "tou":
        return tou_intervals(cfg.tariff, now, cfg.horizon_h, cfg.step_s)
    if cfg.kind == "csv":
        assert cfg.path is not None  # checked by the config
        try:
            text = await asyncio.to_thread(cfg.path.read_text)
        except OSError as err:
            raise PriceSourceError(f"cannot read {cfg.path}: {err}") from err
        return parse_csv(text, cfg)
    try:
        response = await client.get(str(cfg.url), timeout=timeout_s)
        response.raise_for_status()
        data = response.json()
    except (httpx.HTTPError, ValueError) as err:
        raise PriceSourceError(f"GET {cfg.url}: {err}") from err
    return parse_json(data, cfg)
