"""Cloud database targets: PostgreSQL (binary COPY), SQLite (SQLAlchemy Core), Supabase REST.

Every target stores `derbus.storage` readings idempotently: a row whose (time, site_id,
device_id, metric) is already stored is skipped (`ON CONFLICT DO NOTHING`), so re-sending a
batch after a crash or a timeout never doubles a row. Driver and HTTP errors are wrapped in
`StorageError` at this boundary.

PostgreSQL takes a batch in one transaction: the batch's series keys and its readings are
`COPY`'d (binary for the readings: key index, timestamptz, float8 — built as one numpy record
array) into two temporary tables, then one `INSERT … SELECT … JOIN … ON CONFLICT DO NOTHING` moves
them into `readings`. Monthly partitions are created ahead of the months being written.
"""

from __future__ import annotations

import logging
import re
import secrets
import struct
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt
import sqlalchemy as sa
from sqlalchemy.dialects import sqlite

from cloud_sync.readings import ReadingBatch, SeriesKey, month_codes, year_month
from derbus.errors import ConfigError, StorageError
from derbus.messages import format_utc
from derbus.settings import DatabaseSettings
from derbus.storage import READINGS_TABLE, ReadingRow, readings_table

if TYPE_CHECKING:  # the supabase client is imported only when used (it is slow to import)
    import httpx

log = logging.getLogger(__name__)

UNIQUE_KEY = ("time", "site_id", "device_id", "metric")
MIGRATIONS_TABLE = "schema_migrations"
SQLITE_MIGRATION = "001_readings"


MonthsStored = Callable[[int, int], None]
"""Told (months stored, months in all) as an import stores month by month."""


class CloudStore(Protocol):
    """Where forwarded readings end up."""

    @property
    def description(self) -> str:
        """What the target is (no secrets), for logs and `--status`."""
        ...

    def migrate(self) -> list[str]:
        """Apply missing schema migrations; returns the versions applied now."""
        ...

    def write(self, batch: ReadingBatch) -> int:
        """Store a batch idempotently; returns the readings newly stored (-1: unknown).

        Raises:
            StorageError: nothing of the batch may be assumed stored.
        """
        ...

    def write_many(
        self, batches: Iterable[ReadingBatch], *, on_stored: MonthsStored | None = None
    ) -> int:
        """Store many batches idempotently (an import); returns the readings newly stored (-1:
        unknown). `on_stored`: told the months stored so far and their total, where the store
        stores by month after reading every batch (PostgreSQL).

        Raises:
            StorageError: what went before may be stored (storing again stores it once).
        """
        ...

    def prepare(self, now: datetime) -> None:
        """Get ready for the readings of `now` and the coming months (partitions ahead)."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


def default_migrations_dir() -> Path | None:
    """`deploy/postgres` of the source tree this package runs from (None when not found)."""
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "deploy" / "postgres"
        if candidate.is_dir() and any(candidate.glob("*.sql")):
            return candidate
    return None


def postgres_migrations(folder: Path) -> list[tuple[str, str]]:
    """The (version, SQL) migrations of a folder, in file-name order (version = file stem)."""
    files = sorted(folder.glob("*.sql"))
    if not files:
        raise ConfigError(f"migrations_dir: no .sql migrations in {folder}", ("migrations_dir",))
    return [(f.stem, f.read_text()) for f in files]


_PG_EPOCH_US = 946_684_800_000_000
"""µs from the Unix epoch to PostgreSQL's (2000-01-01 UTC), the origin of binary timestamptz."""
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_COPY_TRAILER = struct.pack(">h", -1)
_COPY_RECORD = np.dtype(
    [
        ("n", ">i2"),
        ("k_len", ">i4"),
        ("k", ">i4"),
        ("t_len", ">i4"),
        ("t", ">i8"),
        ("v_len", ">i4"),
        ("v", ">f8"),
    ]
)
_STAGE_SQL = (
    "CREATE TEMP TABLE IF NOT EXISTS sync_keys"
    " (k int4 PRIMARY KEY, site_id text, device_id text, metric text) ON COMMIT DELETE ROWS;"
    "CREATE TEMP TABLE IF NOT EXISTS sync_stage"
    " (k int4, time timestamptz, value float8) ON COMMIT DELETE ROWS"
)


def merge_sql(stage: str, keys: str) -> str:
    """Move staged readings (`stage`: k, time, value; `keys`: k and the names) into `readings`,
    skipping what is stored."""
    return (
        f"INSERT INTO {READINGS_TABLE} (time, site_id, device_id, metric, value)"  # noqa: S608
        " SELECT s.time, k.site_id, k.device_id, k.metric, s.value"
        f" FROM {stage} s JOIN {keys} k ON k.k = s.k"
        " ON CONFLICT (time, site_id, device_id, metric) DO NOTHING"
    )


_MERGE_SQL = merge_sql("sync_stage", "sync_keys")


def copy_binary(
    key_idx: npt.NDArray[np.uint32], time_us: npt.NDArray[np.int64], value: npt.NDArray[np.float64]
) -> bytes:
    """The PostgreSQL binary COPY stream of (k int4, time timestamptz, value float8) rows.

    Args:
        key_idx: series key index per reading.
        time_us: µs since the Unix epoch per reading.
        value: value per reading.
    """
    rec = np.empty(len(value), _COPY_RECORD)
    rec["n"] = 3
    rec["k_len"] = 4
    rec["k"] = key_idx
    rec["t_len"] = 8
    rec["t"] = time_us - _PG_EPOCH_US
    rec["v_len"] = 8
    rec["v"] = value
    return _COPY_HEADER + rec.tobytes() + _COPY_TRAILER


def _stage_months(pg: Any, token: str, batches: Iterable[ReadingBatch]) -> list[tuple[int, int]]:
    """`COPY` the readings into one unlogged table per UTC month (`import_<token>_yYYYYmMM`, key
    index, time, value) and their series into `import_<token>_keys` (k, names, and r: the rank of
    the series in the order of `readings_series_idx`); returns the months, committed."""
    keys: dict[SeriesKey, int] = {}
    months: set[tuple[int, int]] = set()
    with pg.cursor() as cur:
        for batch in batches:
            if not len(batch):
                continue
            remap = np.array([keys.setdefault(k, len(keys)) for k in batch.keys], np.uint32)
            key_idx = remap[batch.key_idx]
            month = month_codes(batch.time_us)
            for m in np.unique(month).tolist():
                ym = year_month(m)
                stage = _stage_name(token, ym)
                if ym not in months:
                    cur.execute(
                        f"CREATE UNLOGGED TABLE {stage} (k int4, time timestamptz, value float8)"
                    )
                    months.add(ym)
                rows = month == m
                with cur.copy(f"COPY {stage} (k, time, value) FROM STDIN (FORMAT BINARY)") as cp:
                    cp.write(copy_binary(key_idx[rows], batch.time_us[rows], batch.value[rows]))
        cur.execute(
            f"CREATE UNLOGGED TABLE import_{token}_keys (k int4 PRIMARY KEY, site_id text,"
            " device_id text, metric text, r int4)"
        )
        with cur.copy(f"COPY import_{token}_keys (k, site_id, device_id, metric) FROM STDIN") as cp:
            for key, k in keys.items():
                cp.write_row((k, *key))
        # r: a new month's rows are written sorted by (r, time) — an integer sort — so that the
        # build of the per-series index (site_id, metric, device_id, time) gets them in order
        cur.execute(
            f"UPDATE import_{token}_keys i SET r = o.r FROM (SELECT k, row_number() OVER"  # noqa: S608
            f" (ORDER BY site_id, metric, device_id) AS r FROM import_{token}_keys) o"
            " WHERE o.k = i.k"
        )
    pg.commit()
    return sorted(months)


def _stage_name(token: str, ym: tuple[int, int]) -> str:
    """The staging table of an import's readings of one UTC month."""
    return f"import_{token}_y{ym[0]:04d}m{ym[1]:02d}"


def _drop_stage(pg: Any, token: str) -> None:
    """Drop an import's staging tables (a failure is logged: the import's own outcome stands).

    A process killed during an import leaves its `import_<token>_*` tables behind (unlogged:
    PostgreSQL empties them after a crash); `DROP TABLE` them by hand."""
    import psycopg

    try:
        with pg.cursor() as cur:
            cur.execute(
                "SELECT tablename FROM pg_tables WHERE tablename LIKE %s",
                (f"import\\_{token}\\_%",),
            )
            for (name,) in cur.fetchall():
                cur.execute(f"DROP TABLE IF EXISTS {name}")
        pg.commit()
    except psycopg.Error as err:
        log.warning("import: staging tables import_%s_* not dropped: %s", token, _short(err))


def _partition_exists(cur: Any, part: str) -> bool:
    """Whether the table exists, read from pg_class by a new statement (to_regclass may answer
    from a cache that taking an advisory lock does not refresh)."""
    cur.execute(
        "SELECT count(*) FROM pg_class WHERE relname = %s"
        " AND relnamespace = current_schema()::regnamespace",
        (part,),
    )
    return bool(cur.fetchone()[0])


def _partition_indexes(cur: Any, part: str) -> list[tuple[str, str]]:
    """(statement, index name) that give a new table `part` the primary key and the indexes of
    `readings` (so that attaching it as a partition adopts them instead of building its own)."""
    cur.execute(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint"
        " WHERE conrelid = %s::regclass AND contype = 'p'",
        (READINGS_TABLE,),
    )
    out = [
        (f"ALTER TABLE {part} ADD CONSTRAINT {_ident(part + '_pkey')} {row[0]}", f"{part}_pkey")
        for row in cur.fetchall()
    ]
    cur.execute(
        "SELECT c.relname, pg_get_indexdef(i.indexrelid) FROM pg_index i"
        " JOIN pg_class c ON c.oid = i.indexrelid"
        " WHERE i.indrelid = %s::regclass AND NOT i.indisprimary ORDER BY c.relname",
        (READINGS_TABLE,),
    )
    for parent_name, definition in cur.fetchall():
        found = _INDEX_DEF.match(definition)
        if found is None:  # not a plain index: attaching builds it
            continue
        name = f"{part}_{parent_name.removeprefix(READINGS_TABLE + '_')}"  # readings_yYYYYmMM_…
        out.append(
            (f"CREATE {found['unique'] or ''}INDEX {_ident(name)} ON {part} {found['rest']}", name)
        )
    return out


def _ident(name: str) -> str:
    """A quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


_INDEX_DEF = re.compile(r"^CREATE (?P<unique>UNIQUE )?INDEX \S+ ON ONLY \S+ (?P<rest>USING .*)$")


def month_starts(now: datetime, months_ahead: int) -> set[tuple[int, int]]:
    """(year, month) of `now`'s UTC month and the `months_ahead` after it."""
    year, month = now.year, now.month
    out = set()
    for _ in range(months_ahead + 1):
        out.add((year, month))
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return out


class SqlCloudStore:
    """Postgres (monthly partitions) or SQLite (one table) through SQLAlchemy Core.

    Args:
        url: a SQLAlchemy URL (`postgresql+psycopg://…` or `sqlite:///…`).
        migrations_dir: the Postgres migrations (`deploy/postgres`); unused for SQLite.
        connect_timeout_s: connect timeout, s.
        months_ahead: monthly partitions created ahead of the current month (`prepare`).
    """

    def __init__(
        self,
        url: str,
        *,
        migrations_dir: Path | None = None,
        connect_timeout_s: int = 5,
        months_ahead: int = 1,
    ) -> None:
        try:
            parsed = sa.engine.make_url(url)
        except sa.exc.ArgumentError as err:
            raise ConfigError(f"database_url (DATABASE_URL): {err}", ("database_url",)) from err
        self.dialect = parsed.get_backend_name()
        if self.dialect not in ("postgresql", "sqlite"):
            raise ConfigError(
                f"database_url (DATABASE_URL): {self.dialect} is not supported (postgresql, sqlite)",
                ("database_url",),
            )
        self.description = parsed.render_as_string(hide_password=True)
        self.migrations_dir = migrations_dir
        self.months_ahead = months_ahead
        if self.dialect == "postgresql":
            self.engine = sa.create_engine(
                parsed,
                pool_pre_ping=True,
                pool_size=2,
                connect_args={"connect_timeout": connect_timeout_s},
            )
        else:
            if parsed.database:
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            self.engine = sa.create_engine(
                parsed, connect_args={"timeout": 30.0, "check_same_thread": False}
            )
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        self.metadata = sa.MetaData()
        self.table = readings_table(self.metadata)
        self._insert = sqlite.insert(self.table).on_conflict_do_nothing(
            index_elements=list(UNIQUE_KEY)
        )
        self._months_ready: set[tuple[int, int]] = set()

    # --- schema ---------------------------------------------------------------------------------
    def migrate(self) -> list[str]:
        """Apply the migrations not yet recorded in `schema_migrations`."""
        try:
            if self.dialect == "postgresql":
                return self._migrate_postgres()
            return self._migrate_sqlite()
        except (sa.exc.SQLAlchemyError, OSError) as err:
            raise StorageError(f"migration of {self.description} failed: {err}") from err

    def _migrate_postgres(self) -> list[str]:
        folder = self.migrations_dir or default_migrations_dir()
        if folder is None:
            raise ConfigError(
                "migrations_dir (CLOUD_SYNC_MIGRATIONS_DIR): deploy/postgres not found; set it",
                ("migrations_dir",),
            )
        applied: list[str] = []
        for version, sql in postgres_migrations(folder):
            with self.engine.begin() as conn:
                # One migrator at a time across processes; the lock ends with the transaction.
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext('derbus_migrate'))"))
                if self._recorded(conn, version):
                    continue
                raw = conn.connection.driver_connection
                assert raw is not None
                with raw.cursor() as cur:  # the file as one script: no placeholder parsing
                    cur.execute(sql)
                conn.execute(
                    sa.text(
                        f"INSERT INTO {MIGRATIONS_TABLE} (version) VALUES (:v) ON CONFLICT DO NOTHING"  # noqa: S608
                    ),
                    {"v": version},
                )
                applied.append(version)
                log.info("applied migration %s to %s", version, self.description)
        return applied

    def _migrate_sqlite(self) -> list[str]:
        with self.engine.begin() as conn:
            if self._recorded(conn, SQLITE_MIGRATION):
                return []
            conn.exec_driver_sql(
                f"CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (version TEXT PRIMARY KEY,"
                " applied_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)"
            )
            self.metadata.create_all(conn, tables=[self.table])
            conn.exec_driver_sql(
                f"CREATE INDEX IF NOT EXISTS readings_series_idx ON {READINGS_TABLE}"
                " (site_id, metric, device_id, time)"
            )
            conn.execute(
                sa.text(f"INSERT OR IGNORE INTO {MIGRATIONS_TABLE} (version) VALUES (:v)"),  # noqa: S608
                {"v": SQLITE_MIGRATION},
            )
        return [SQLITE_MIGRATION]

    def _recorded(self, conn: sa.Connection, version: str) -> bool:
        if not sa.inspect(conn).has_table(MIGRATIONS_TABLE):
            return False
        found = conn.execute(
            sa.text(f"SELECT 1 FROM {MIGRATIONS_TABLE} WHERE version = :v"),  # noqa: S608
            {"v": version},
        ).first()
        return found is not None

    def _ensure_partitions(self, months: set[tuple[int, int]]) -> None:
        missing = sorted(months - self._months_ready)
        if not missing:
            return
        with self.engine.begin() as conn:
            for year, month in missing:
                conn.execute(
                    sa.text(
                        "SELECT readings_ensure_partition(make_timestamptz(:y, :m, 1, 0, 0, 0, 'UTC'))"
                    ),
                    {"y": year, "m": month},
                )
        self._months_ready.update(missing)

    def prepare(self, now: datetime) -> None:
        """Create the partitions of `now`'s month and of `months_ahead` months after it."""
        if self.dialect != "postgresql":
            return
        try:
            self._ensure_partitions(month_starts(now, self.months_ahead))
        except (sa.exc.SQLAlchemyError, OSError) as err:
            raise StorageError(f"partitions of {self.description}: {_short(err)}") from err

    # --- data -----------------------------------------------------------------------------------
    def write(self, batch: ReadingBatch) -> int:
        """Store a batch with `ON CONFLICT DO NOTHING` in one transaction; returns the readings
        newly stored."""
        if not len(batch):
            return 0
        try:
            if self.dialect == "postgresql":
                self._ensure_partitions(batch.months())
                return self._copy_merge(batch)
            with self.engine.begin() as conn:
                done = conn.execute(self._insert, [_row_dict(r) for r in batch.rows()])
        except (sa.exc.SQLAlchemyError, OSError) as err:
            raise StorageError(f"write to {self.description} failed: {_short(err)}") from err
        return int(done.rowcount)

    def _copy_merge(self, batch: ReadingBatch) -> int:
        import psycopg

        data = copy_binary(batch.key_idx, batch.time_us, batch.value)
        try:
            with self.engine.begin() as conn:
                raw = conn.connection.driver_connection
                assert raw is not None
                with raw.cursor() as cur:
                    cur.execute(_STAGE_SQL)
                    with cur.copy(
                        "COPY sync_keys (k, site_id, device_id, metric) FROM STDIN"
                    ) as cp:
                        for i, (site, device, metric) in enumerate(batch.keys):
                            cp.write_row((i, site, device, metric))
                    with cur.copy(
                        "COPY sync_stage (k, time, value) FROM STDIN (FORMAT BINARY)"
                    ) as cp:
                        cp.write(data)
                    cur.execute(_MERGE_SQL)
                    return int(cur.rowcount)
        except psycopg.Error as err:
            raise StorageError(f"write to {self.description} failed: {_short(err)}") from err

    def write_many(
        self,
        batches: Iterable[ReadingBatch],
        *,
        on_stored: MonthsStored | None = None,
        workers: int = 2,
    ) -> int:
        """Store many batches (`cloud-sync import`); returns the readings newly stored.

        SQLite: batch by batch (`write`). PostgreSQL: every reading is first `COPY`'d into an
        unlogged table per UTC month (`import_<token>_yYYYYmMM`, dropped at the end), then the
        months are stored by `workers` connections in parallel, each month in a transaction:

        * a month without a partition yet is **built whole**: its rows (one per key and time)
          go into a new table without indexes, sorted by series and time; the primary key and
          the indexes of `readings` are built once on the full table (a sorted build instead of
          a B-tree insert per row), and its range is checked as a constraint (so ATTACH does not
          scan it again); then, under the lock of `readings_ensure_partition`, rows of that
          month waiting in `readings_default` are moved in (their values win: they were stored
          first) and the table is attached as the month's partition. If another writer created
          the partition meanwhile, the built table is dropped and the month merged.
        * a month that has a partition is merged as `write` does (`ON CONFLICT DO NOTHING`), as
          is every month on PostgreSQL 11 (whose ATTACH locks `readings` exclusively).

        A failed month stops the months not begun yet (so does Ctrl-C). A process killed
        mid-import leaves its unlogged `import_<token>_*` tables (see `_drop_stage`).

        What was stored before a failure stays; importing again stores each reading once. Of a
        series' reading given twice in the batches, one value is stored.
        """
        if self.dialect != "postgresql":
            return sum(self.write(b) for b in batches)
        import psycopg

        token = secrets.token_hex(4)
        try:
            with self.engine.connect() as conn:
                pg = conn.connection.driver_connection
                assert pg is not None
                build = pg.info.server_version >= 120000  # ATTACH without an exclusive lock
                try:
                    months = _stage_months(pg, token, batches)
                    pool = ThreadPoolExecutor(max(1, workers))
                    try:
                        done = [pool.submit(self._load_month, token, ym, build) for ym in months]
                        stored = 0
                        for i, future in enumerate(as_completed(done)):
                            stored += future.result()
                            if on_stored is not None:
                                on_stored(i + 1, len(months))
                    finally:  # a failed month (or Ctrl-C) stops the months not yet begun
                        pool.shutdown(wait=True, cancel_futures=True)
                finally:
                    pg.rollback()
                    _drop_stage(pg, token)
        except (psycopg.Error, sa.exc.SQLAlchemyError, OSError) as err:
            raise StorageError(f"import into {self.description} failed: {_short(err)}") from err
        return stored

    def _load_month(self, token: str, ym: tuple[int, int], build: bool) -> int:
        """Store a staged month: built whole when it has no partition (and `build`), else
        merged; returns the readings newly stored."""
        stage = _stage_name(token, ym)
        if build:
            new = self._build_month(token, ym, stage)
            if new is not None:
                self._months_ready.add(ym)
                return new
        self._ensure_partitions({ym})
        with self.engine.begin() as conn:
            pg = conn.connection.driver_connection
            assert pg is not None
            with pg.cursor() as cur:
                cur.execute(merge_sql(stage, f"import_{token}_keys"))
                return int(cur.rowcount)

    def _build_month(self, token: str, ym: tuple[int, int], stage: str) -> int | None:
        """Build a month without a partition whole and attach it; None (nothing done) when the
        month has a partition, or another writer created it meanwhile."""
        part = f"readings_y{ym[0]:04d}m{ym[1]:02d}"
        build = f"{stage}_new"
        lo = f"{ym[0]:04d}-{ym[1]:02d}-01 00:00:00+00"
        hi_ym = (ym[0] + 1, 1) if ym[1] == 12 else (ym[0], ym[1] + 1)
        hi = f"{hi_ym[0]:04d}-{hi_ym[1]:02d}-01 00:00:00+00"
        with self.engine.connect() as conn:
            pg = conn.connection.driver_connection
            assert pg is not None
            with pg.cursor() as cur:
                if _partition_exists(cur, part):
                    pg.rollback()
                    return None
                cur.execute(
                    "SET LOCAL work_mem = '256MB'; SET LOCAL maintenance_work_mem = '256MB'"
                )
                cur.execute(f"CREATE TABLE {build} (LIKE {READINGS_TABLE} INCLUDING DEFAULTS)")
                cur.execute(
                    f"INSERT INTO {build} (time, site_id, device_id, metric, value)"  # noqa: S608
                    " SELECT DISTINCT ON (k.r, s.time) s.time, k.site_id, k.device_id, k.metric,"
                    f" s.value FROM {stage} s JOIN import_{token}_keys k ON k.k = s.k"
                    " ORDER BY k.r, s.time"
                )
                new = int(cur.rowcount)
                renames = []
                for statement, name in _partition_indexes(cur, build):
                    cur.execute(statement)
                    renames.append((name, name.replace(build, part, 1)))
                # the partition's range as a constraint, checked here (a scan of the month,
                # outside the lock), so that ATTACH does not scan the table again
                cur.execute(
                    f"ALTER TABLE {build} ADD CONSTRAINT {build}_range"
                    f" CHECK (time >= '{lo}' AND time < '{hi}')"
                )
                cur.execute("SELECT pg_advisory_xact_lock(hashtext('readings_ensure_partition'))")
                if _partition_exists(cur, part):
                    # created meanwhile by another writer: drop what was built (rollback) and
                    # merge without holding everyone's partition lock
                    pg.rollback()
                    return None
                # rows of the month stored before it had a partition: they were first, so their
                # values stay and the file's readings of the same key and time are not new
                cur.execute(
                    "WITH moved AS (DELETE FROM readings_default"  # noqa: S608
                    " WHERE time >= %s AND time < %s RETURNING *),"
                    f" known AS (SELECT count(*) AS n FROM moved JOIN {build}"
                    " USING (site_id, metric, device_id, time)),"
                    f" put AS (INSERT INTO {build} SELECT * FROM moved"
                    " ON CONFLICT (time, site_id, device_id, metric)"
                    " DO UPDATE SET value = EXCLUDED.value RETURNING 1)"
                    " SELECT (SELECT n FROM known), (SELECT count(*) FROM put)",
                    (lo, hi),
                )
                known, _ = cur.fetchone()
                new -= int(known)
                cur.execute(f"ALTER TABLE {build} RENAME TO {part}")
                for old, name in renames:
                    cur.execute(f"ALTER INDEX {_ident(old)} RENAME TO {_ident(name)}")
                cur.execute(
                    f"ALTER TABLE {READINGS_TABLE} ATTACH PARTITION {part}"
                    f" FOR VALUES FROM ('{lo}') TO ('{hi}')"
                )
                cur.execute(f"ALTER TABLE {part} DROP CONSTRAINT {build}_range")
            pg.commit()
        return new

    def count(self) -> int:
        """Rows in `readings` (tests, `--status`)."""
        with self.engine.connect() as conn:
            return int(
                conn.execute(sa.select(sa.func.count()).select_from(self.table)).scalar_one()
            )

    def close(self) -> None:
        """Dispose of the connection pool."""
        self.engine.dispose()


def _row_dict(row: ReadingRow) -> dict[str, Any]:
    return {
        "time": row.time,
        "site_id": row.site_id,
        "device_id": row.device_id,
        "metric": row.metric,
        "value": row.value,
    }


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")  # readers (feature engineering) do not block writes
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def _short(err: BaseException) -> str:
    text = str(getattr(err, "orig", None) or err).strip().splitlines()
    return text[0][:300] if text else type(err).__name__


class SupabaseCloudStore:
    """Supabase's REST API (PostgREST): bulk upsert ignoring duplicates on the unique key.

    The schema cannot be created over REST: apply `deploy/postgres` once (Supabase SQL editor, or
    `cloud-sync migrate` with the database URL).

    Args:
        url: SUPABASE_URL (https://<project>.supabase.co).
        key: SUPABASE_KEY (service-role key: it writes).
        timeout_s: HTTP timeout, s.
        http_client: an httpx client to send through (tests inject one with a mock transport).
        request_rows: readings per POST at most.
    """

    def __init__(
        self,
        url: str,
        key: str,
        *,
        timeout_s: float = 30.0,
        http_client: httpx.Client | None = None,
        request_rows: int = 5000,
    ) -> None:
        from supabase import SupabaseException, create_client
        from supabase.lib.client_options import SyncClientOptions

        self.description = f"supabase REST {url}"
        self.request_rows = max(1, request_rows)
        options = SyncClientOptions(postgrest_client_timeout=timeout_s, httpx_client=http_client)
        try:
            self.client = create_client(url, key, options)
        except SupabaseException as err:
            raise ConfigError(f"database: SUPABASE_URL / SUPABASE_KEY rejected: {err}") from err

    def migrate(self) -> list[str]:
        """Nothing to do over REST (see the class docstring)."""
        log.info("Supabase REST target: apply deploy/postgres in the Supabase SQL editor")
        return []

    def prepare(self, now: datetime) -> None:
        """Nothing to do over REST (partitions are created by `readings_ensure_partition` in SQL)."""

    def write(self, batch: ReadingBatch) -> int:
        """POST the readings to /rest/v1/readings (Prefer: resolution=ignore-duplicates), in
        requests of at most `request_rows` readings (each idempotent: a failed batch is re-sent
        whole, the requests that went through are no-ops the second time)."""
        import httpx
        from postgrest.exceptions import APIError
        from postgrest.types import ReturnMethod

        rows = batch.rows()
        for first in range(0, len(rows), self.request_rows):
            body = [
                {
                    "time": format_utc(r.time),
                    "site_id": r.site_id,
                    "device_id": r.device_id,
                    "metric": r.metric,
                    "value": r.value,
                }
                for r in rows[first : first + self.request_rows]
            ]
            try:
                self.client.table(READINGS_TABLE).upsert(
                    body,
                    on_conflict=",".join(UNIQUE_KEY),
                    ignore_duplicates=True,
                    returning=ReturnMethod.minimal,
                ).execute()
            except (APIError, httpx.HTTPError) as err:
                raise StorageError(f"write to {self.description} failed: {err}") from err
        return -1

    def write_many(
        self, batches: Iterable[ReadingBatch], *, on_stored: MonthsStored | None = None
    ) -> int:
        """`write` batch by batch (the REST API has no bulk path)."""
        for batch in batches:
            self.write(batch)
        return -1

    def close(self) -> None:
        """Nothing to release (the HTTP client closes with the process)."""


def open_store(
    database: DatabaseSettings,
    data_dir: Path,
    *,
    migrations_dir: Path | None,
    connect_timeout_s: int,
    months_ahead: int = 1,
    request_rows: int = 5000,
) -> SqlCloudStore | SupabaseCloudStore:
    """The target the settings name: DATABASE_URL, else Supabase REST, else SQLite in data_dir."""
    if database.database_url is None and database.supabase_url and database.supabase_key:
        return SupabaseCloudStore(
            database.supabase_url,
            database.supabase_key.get_secret_value(),
            request_rows=request_rows,
        )
    return SqlCloudStore(
        database.sqlalchemy_url(data_dir),
        migrations_dir=migrations_dir,
        connect_timeout_s=connect_timeout_s,
        months_ahead=months_ahead,
    )
