"""One incremental pass: readings of a site -> 15-minute features -> upsert on (time, site_id)."""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from derbus import features as fx
from derbus.errors import StorageError
from derbus.storage import as_utc, readings_table

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

HISTORY_EXTRA = timedelta(hours=1)


def floor_step(value: datetime) -> datetime:
    """Start of the 15-minute interval containing `value` (UTC)."""
    value = as_utc(value)
    return value.replace(minute=value.minute - value.minute % 15, second=0, microsecond=0)


@dataclass(frozen=True)
class PassWindow:
    """The intervals [start, end) one pass computes for a site."""

    start: datetime
    end: datetime

    @property
    def intervals(self) -> int:
        """How many 15-minute intervals the window holds."""
        return int((self.end - self.start) / fx.STEP)

    def batches(self, batch_size: int) -> Iterator[PassWindow]:
        """Consecutive windows of at most `batch_size` intervals."""
        start = self.start
        while start < self.end:
            end = min(self.end, start + batch_size * fx.STEP)
            yield PassWindow(start, end)
            start = end


def plan_pass(
    readings_first: datetime,
    readings_last: datetime,
    features_last: datetime | None,
    *,
    lookback: timedelta,
    recompute_steps: int,
) -> PassWindow | None:
    """Which intervals to compute: only new ones (plus a few recent ones for late readings).

    Args:
        readings_first: earliest reading time of the site.
        readings_last: latest reading time of the site; its interval may still be filling,
            so the window ends at its start.
        features_last: start of the latest interval already in the feature table, if any.
        lookback: how far before `readings_last` a site's first pass starts.
        recompute_steps: latest already computed intervals to compute again.

    Returns:
        The window, or None when nothing is new.
    """
    end = floor_step(readings_last)
    if features_last is None:
        start = max(floor_step(readings_first), floor_step(end - lookback))
    else:
        start = floor_step(features_last) + fx.STEP - recompute_steps * fx.STEP
    return PassWindow(start, end) if start < end else None


def history_needed(long_window_steps: int) -> timedelta:
    """How much history before a batch the lags (one week) and the long window need."""
    return fx.STEPS_PER_WEEK * fx.STEP + long_window_steps * fx.STEP + HISTORY_EXTRA


def observed_frame(
    samples: pd.DataFrame, index: pd.DatetimeIndex, max_fill_steps: int
) -> pd.DataFrame:
    """Readings (columns time, column, value) resampled onto the grid, one column per source."""
    import pandas as pd

    out: dict[str, pd.Series] = {}
    for source in fx.SOURCES:
        rows = samples[samples["column"] == source.column]
        series = pd.Series(
            rows["value"].to_numpy(dtype=float), index=pd.DatetimeIndex(rows["time"])
        )
        values, filled = fx.resample(series, index, max_fill_steps)
        out[source.column] = values
        out[f"{source.column}_filled"] = filled
    return pd.DataFrame(out, index=index)


def compute_batch(
    samples: pd.DataFrame,
    window: PassWindow,
    history_start: datetime,
    site: fx.SiteContext,
    *,
    max_fill_steps: int,
    short_window_steps: int,
    long_window_steps: int,
) -> pd.DataFrame:
    """Feature rows for the intervals of `window`, from samples covering history and window."""
    import pandas as pd

    index = fx.grid(history_start, window.end)
    observed = observed_frame(samples, index, max_fill_steps)
    frame = fx.build_features(
        observed, site, short_window_steps=short_window_steps, long_window_steps=long_window_steps
    )
    return frame[frame.index >= pd.Timestamp(window.start)]


def _records(frame: pd.DataFrame, site_id: str, computed_at: datetime) -> list[dict[str, Any]]:
    kinds = {c.name: c.kind for c in fx.FEATURE_COLUMNS}
    records = []
    columns = list(frame.columns)
    for when, row in zip(frame.index, frame.itertuples(index=False, name=None), strict=True):
        record: dict[str, Any] = {
            "time": when.to_pydatetime(),
            "site_id": site_id,
            "computed_at": computed_at,
        }
        for name, value in zip(columns, row, strict=True):
            record[name] = _sql_value(kinds[name], value)
        records.append(record)
    return records


def _sql_value(kind: str, value: Any) -> Any:
    if value is None or (isinstance(value, numbers.Real) and not math.isfinite(value)):
        return None
    if kind == "float":
        return float(value)
    if kind == "int":
        return int(value)
    if kind == "bool":
        return bool(value)
    return str(value)


@dataclass
class SitePassResult:
    """What one pass did for a site."""

    site_id: str
    window: PassWindow | None
    rows: int


class FeatureStore:
    """The database side: readings in, feature rows upserted (PostgreSQL and SQLite alike)."""

    def __init__(self, url: str) -> None:
        self.engine = sa.create_engine(url, pool_pre_ping=True)
        self.metadata = sa.MetaData()
        self.readings = readings_table(self.metadata)
        self.features = fx.feature_table(self.metadata)

    def ensure_schema(self) -> None:
        """Create `readings` (when cloud_sync has not yet) and `features` if missing."""
        try:
            self.metadata.create_all(self.engine, checkfirst=True)
        except sa.exc.SQLAlchemyError as err:
            raise StorageError(f"cannot create the feature table: {err}") from err

    def dispose(self) -> None:
        """Close the connection pool."""
        self.engine.dispose()

    def sites(self) -> list[str]:
        """Every site with readings."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(self.readings.c.site_id).distinct()).scalars().all()
        return sorted(rows)

    def readings_bounds(self, site_id: str) -> tuple[datetime, datetime] | None:
        """Earliest and latest reading time of the site's feature sources."""
        r = self.readings.c
        metrics = [s.metric for s in fx.SOURCES]
        query = sa.select(sa.func.min(r.time), sa.func.max(r.time)).where(
            r.site_id == site_id, r.metric.in_(metrics)
        )
        with self.engine.connect() as conn:
            first, last = conn.execute(query).one()
        if first is None or last is None:
            return None
        return as_utc(first), as_utc(last)

    def last_feature_time(self, site_id: str) -> datetime | None:
        """Start of the latest computed interval of the site."""
        f = self.features.c
        with self.engine.connect() as conn:
            last = conn.execute(sa.select(sa.func.max(f.time)).where(f.site_id == site_id)).scalar()
        return None if last is None else as_utc(last)

    def samples(self, site_id: str, start: datetime, end: datetime) -> pd.DataFrame:
        """Readings of the feature sources in [start, end): columns time, column, value."""
        import pandas as pd

        r = self.readings.c
        wanted = {(s.device_id, s.metric): s.column for s in fx.SOURCES}
        query = sa.select(r.time, r.device_id, r.metric, r.value).where(
            r.site_id == site_id,
            r.time >= as_utc(start),
            r.time < as_utc(end),
            r.metric.in_({m for _, m in wanted}),
            r.device_id.in_({d for d, _ in wanted}),
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        data = [(as_utc(t), wanted[(d, m)], v) for t, d, m, v in rows if (d, m) in wanted]
        frame = pd.DataFrame(data, columns=["time", "column", "value"])
        frame["time"] = pd.to_datetime(frame["time"], utc=True)
        return frame

    def upsert(self, site_id: str, frame: pd.DataFrame, computed_at: datetime) -> int:
        """Insert the rows, updating those already there (ON CONFLICT (time, site_id))."""
        records = _records(frame, site_id, computed_at)
        if not records:
            return 0
        dialect = self.engine.dialect.name
        insert: Callable[[sa.Table], Any]
        if dialect == "postgresql":
            insert = postgresql.insert
        elif dialect == "sqlite":
            insert = sqlite.insert
        else:
            raise StorageError(f"unsupported database dialect {dialect!r}")
        stmt = insert(self.features)
        keys = {"time", "site_id"}
        stmt = stmt.on_conflict_do_update(
            index_elements=["time", "site_id"],
            set_={
                c.name: stmt.excluded[c.name] for c in self.features.columns if c.name not in keys
            },
        )
        with self.engine.begin() as conn:
            conn.execute(stmt, records)
        return len(records)

    def status(self) -> list[dict[str, Any]]:
        """Per site: rows, first and last interval, missing and filled load rows, lag behind readings."""
        f = self.features.c
        query = sa.select(
            f.site_id,
            sa.func.count(),
            sa.func.min(f.time),
            sa.func.max(f.time),
            sa.func.sum(sa.case((f.load_kw.is_(None), 1), else_=0)),
            sa.func.sum(sa.case((f.load_kw_filled.is_(True), 1), else_=0)),
        ).group_by(f.site_id)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        out = []
        for site_id, count, first, last, missing, filled in rows:
            bounds = self.readings_bounds(site_id)
            last_utc = as_utc(last)
            behind = (floor_step(bounds[1]) - fx.STEP - last_utc).total_seconds() if bounds else 0.0
            out.append(
                {
                    "site_id": site_id,
                    "rows": int(count),
                    "first": as_utc(first).isoformat(),
                    "last": last_utc.isoformat(),
                    "load_missing_rows": int(missing or 0),
                    "load_filled_rows": int(filled or 0),
                    "behind_readings_s": max(0.0, behind),
                }
            )
        return out


@dataclass
class PassOptions:
    """The knobs of a pass (from the settings)."""

    lookback: timedelta
    recompute_steps: int
    batch_size: int
    max_fill_steps: int
    short_window_steps: int
    long_window_steps: int


def run_site(
    store: FeatureStore,
    site_id: str,
    site: fx.SiteContext,
    options: PassOptions,
    now: datetime,
    progress: Callable[[int], None] | None = None,
) -> SitePassResult:
    """Compute and upsert the new intervals of one site (blocking; run off the event loop)."""
    bounds = store.readings_bounds(site_id)
    if bounds is None:
        return SitePassResult(site_id, None, 0)
    window = plan_pass(
        bounds[0],
        bounds[1],
        store.last_feature_time(site_id),
        lookback=options.lookback,
        recompute_steps=options.recompute_steps,
    )
    if window is None:
        return SitePassResult(site_id, None, 0)
    history = history_needed(options.long_window_steps)
    rows = 0
    for batch in window.batches(options.batch_size):
        history_start = batch.start - history
        samples = store.samples(site_id, history_start, batch.end)
        frame = compute_batch(
            samples,
            batch,
            history_start,
            site,
            max_fill_steps=options.max_fill_steps,
            short_window_steps=options.short_window_steps,
            long_window_steps=options.long_window_steps,
        )
        rows += store.upsert(site_id, frame, now)
        if progress is not None:
            progress(batch.intervals)
    log.info("features of %s: %d intervals %s .. %s", site_id, rows, window.start, window.end)
    return SitePassResult(site_id, window, rows)
