"""Cloud database targets: Postgres/SQLite through SQLAlchemy Core, or Supabase's REST API.

Every target stores `derbus.storage` readings idempotently: a row whose (time, site_id,
device_id, metric) is already stored is skipped (`ON CONFLICT DO NOTHING`), so re-sending a
batch after a crash or a timeout never doubles a row. Driver and HTTP errors are wrapped in
`StorageError` at this boundary.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from cloud_sync.outbox import to_epoch_us
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


class CloudStore(Protocol):
    """Where forwarded readings end up."""

    @property
    def description(self) -> str:
        """What the target is (no secrets), for logs and `--status`."""
        ...

    def migrate(self) -> list[str]:
        """Apply missing schema migrations; returns the versions applied now."""
        ...

    def write(self, rows: Sequence[ReadingRow]) -> int:
        """Store rows idempotently in one transaction; returns the rows sent.

        Raises:
            StorageError: nothing of the batch may be assumed stored.
        """
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


def _row_dict(row: ReadingRow) -> dict[str, Any]:
    return {
        "time": row.time,
        "site_id": row.site_id,
        "device_id": row.device_id,
        "metric": row.metric,
        "value": row.value,
    }


@dataclass(frozen=True)
class _Months:
    """UTC (year, month) pairs of a batch."""

    keys: frozenset[tuple[int, int]]

    @classmethod
    def of(cls, rows: Sequence[ReadingRow]) -> _Months:
        return cls(frozenset((r.time.year, r.time.month) for r in rows))


class SqlCloudStore:
    """Postgres (monthly partitions) or SQLite (one table) through SQLAlchemy Core.

    Args:
        url: a SQLAlchemy URL (`postgresql+psycopg://…` or `sqlite:///…`).
        migrations_dir: the Postgres migrations (`deploy/postgres`); unused for SQLite.
        connect_timeout_s: connect timeout, s.
    """

    def __init__(
        self, url: str, *, migrations_dir: Path | None = None, connect_timeout_s: int = 5
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
        self._insert = self._insert_statement()
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
                "migrations_dir (SYNC_MIGRATIONS_DIR): deploy/postgres not found; set it",
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

    def _ensure_partitions(self, rows: Sequence[ReadingRow]) -> None:
        missing = sorted(_Months.of(rows).keys - self._months_ready)
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

    # --- data -----------------------------------------------------------------------------------
    def _insert_statement(self) -> sa.Executable:
        """`INSERT … ON CONFLICT (unique key) DO NOTHING` for a whole batch.

        SQLite: an executemany (sqlite3 runs it in C). PostgreSQL: one statement whose rows come
        from `unnest` of five array parameters, one round trip per batch — psycopg's executemany
        sends a statement per row and was the bottleneck of draining a backlog.
        """
        key = list(UNIQUE_KEY)
        if self.dialect == "sqlite":
            return sqlite.insert(self.table).on_conflict_do_nothing(index_elements=key)
        c = self.table.c
        # time travels as integer microseconds since the epoch (exact, and far cheaper to send
        # than an array of datetimes); the server turns it back into timestamptz.
        arrays = [sa.bindparam("a_time_us", type_=postgresql.ARRAY(sa.BigInteger))] + [
            sa.bindparam(f"a_{col.name}", type_=postgresql.ARRAY(col.type)) for col in c[1:]
        ]
        rows = sa.func.unnest(*arrays).table_valued(*[col.name for col in c]).render_derived()
        epoch: sa.ColumnElement[Any] = sa.literal_column("TIMESTAMPTZ 'epoch'")
        time_col = epoch + rows.c.time * sa.literal_column("INTERVAL '1 microsecond'")
        select = sa.select(time_col, *[rows.c[col.name] for col in c[1:]])
        return (
            postgresql.insert(self.table)
            .from_select([col.name for col in c], select)
            .on_conflict_do_nothing(index_elements=key)
        )

    def _parameters(self, rows: Sequence[ReadingRow]) -> dict[str, Any] | list[dict[str, Any]]:
        if self.dialect == "sqlite":
            return [_row_dict(r) for r in rows]
        return {
            "a_time_us": [to_epoch_us(r.time) for r in rows],
            "a_site_id": [r.site_id for r in rows],
            "a_device_id": [r.device_id for r in rows],
            "a_metric": [r.metric for r in rows],
            "a_value": [r.value for r in rows],
        }

    def write(self, rows: Sequence[ReadingRow]) -> int:
        """Insert rows with `ON CONFLICT DO NOTHING` in one transaction."""
        if not rows:
            return 0
        try:
            if self.dialect == "postgresql":
                self._ensure_partitions(rows)
            with self.engine.begin() as conn:
                conn.execute(self._insert, self._parameters(rows))
        except (sa.exc.SQLAlchemyError, OSError) as err:
            raise StorageError(f"write to {self.description} failed: {_short(err)}") from err
        return len(rows)

    def count(self) -> int:
        """Rows in `readings` (tests, `--status`)."""
        with self.engine.connect() as conn:
            return int(
                conn.execute(sa.select(sa.func.count()).select_from(self.table)).scalar_one()
            )

    def close(self) -> None:
        """Dispose of the connection pool."""
        self.engine.dispose()


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
    """

    def __init__(
        self,
        url: str,
        key: str,
        *,
        timeout_s: float = 30.0,
        http_client: httpx.Client | None = None,
    ) -> None:
        from supabase import SupabaseException, create_client
        from supabase.lib.client_options import SyncClientOptions

        self.description = f"supabase REST {url}"
        options = SyncClientOptions(postgrest_client_timeout=timeout_s, httpx_client=http_client)
        try:
            self.client = create_client(url, key, options)
        except SupabaseException as err:
            raise ConfigError(f"database: SUPABASE_URL / SUPABASE_KEY rejected: {err}") from err

    def migrate(self) -> list[str]:
        """Nothing to do over REST (see the class docstring)."""
        log.info("Supabase REST target: apply deploy/postgres in the Supabase SQL editor")
        return []

    def write(self, rows: Sequence[ReadingRow]) -> int:
        """POST the rows to /rest/v1/readings (Prefer: resolution=ignore-duplicates)."""
        import httpx
        from postgrest.exceptions import APIError
        from postgrest.types import ReturnMethod

        if not rows:
            return 0
        body = [
            {"time": format_utc(r.time), "site_id": r.site_id, "device_id": r.device_id,
             "metric": r.metric, "value": r.value}
            for r in rows
        ]  # fmt: skip
        try:
            self.client.table(READINGS_TABLE).upsert(
                body,
                on_conflict=",".join(UNIQUE_KEY),
                ignore_duplicates=True,
                returning=ReturnMethod.minimal,
            ).execute()
        except (APIError, httpx.HTTPError) as err:
            raise StorageError(f"write to {self.description} failed: {err}") from err
        return len(rows)

    def close(self) -> None:
        """Nothing to release (the HTTP client closes with the process)."""


def open_store(
    database: DatabaseSettings,
    data_dir: Path,
    *,
    migrations_dir: Path | None,
    connect_timeout_s: int,
) -> SqlCloudStore | SupabaseCloudStore:
    """The target the settings name: DATABASE_URL, else Supabase REST, else SQLite in data_dir."""
    if database.database_url is None and database.supabase_url and database.supabase_key:
        return SupabaseCloudStore(database.supabase_url, database.supabase_key.get_secret_value())
    return SqlCloudStore(
        database.sqlalchemy_url(data_dir),
        migrations_dir=migrations_dir,
        connect_timeout_s=connect_timeout_s,
    )
