"""Cloud targets: SQLite schema and idempotent inserts; the Supabase REST request shapes."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from cloud_sync.cloud import (
    SqlCloudStore,
    SupabaseCloudStore,
    default_migrations_dir,
    open_store,
    postgres_migrations,
)
from cloud_sync.readings import ReadingBatch
from derbus.errors import ConfigError, StorageError
from derbus.settings import DatabaseSettings
from derbus.storage import ReadingRow


def test_sqlite_migration_is_idempotent_and_creates_the_shared_table(tmp_path: Path) -> None:
    store = SqlCloudStore(f"sqlite:///{tmp_path / 'c.db'}")
    assert store.migrate() == ["001_readings"]
    assert store.migrate() == []
    inspector = sa.inspect(store.engine)
    assert [c["name"] for c in inspector.get_columns("readings")] == [
        "time",
        "site_id",
        "device_id",
        "metric",
        "value",
    ]
    assert inspector.get_pk_constraint("readings")["constrained_columns"] == [
        "time",
        "site_id",
        "device_id",
        "metric",
    ]
    assert "readings_series_idx" in {i["name"] for i in inspector.get_indexes("readings")}


def test_sqlite_insert_ignores_duplicates_within_and_across_batches(
    tmp_path: Path, make_rows: Callable[..., list[ReadingRow]]
) -> None:
    store = SqlCloudStore(f"sqlite:///{tmp_path / 'c.db'}")
    store.migrate()
    data = make_rows(3)
    store.write(ReadingBatch.from_rows([*data, data[0]]))
    store.write(ReadingBatch.from_rows(data))
    assert store.count() == 3


def test_write_without_schema_is_a_storage_error(
    tmp_path: Path, make_rows: Callable[..., list[ReadingRow]]
) -> None:
    store = SqlCloudStore(f"sqlite:///{tmp_path / 'c.db'}")
    with pytest.raises(StorageError, match="no such table"):
        store.write(ReadingBatch.from_rows(make_rows(1)))


def test_unsupported_database_url_names_the_setting() -> None:
    with pytest.raises(ConfigError, match="DATABASE_URL"):
        SqlCloudStore("mysql://u@h/db")


def test_the_postgres_migrations_ship_in_deploy_postgres() -> None:
    folder = default_migrations_dir()
    assert folder is not None
    assert folder.name == "postgres"
    versions = [v for v, _ in postgres_migrations(folder)]
    assert versions[0] == "001_readings"
    sql = dict(postgres_migrations(folder))["001_readings"]
    assert "PARTITION BY RANGE (time)" in sql
    assert "ON CONFLICT DO NOTHING" in sql


def test_open_store_prefers_database_url_then_supabase_then_sqlite(tmp_path: Path) -> None:
    url = DatabaseSettings(database_url="postgresql://u:secret@h/db", supabase_url=None)
    store = open_store(url, tmp_path, migrations_dir=None, connect_timeout_s=1)
    assert isinstance(store, SqlCloudStore)
    assert store.dialect == "postgresql"
    assert "secret" not in store.description
    rest = DatabaseSettings(
        database_url=None, supabase_url="https://abc.supabase.co", supabase_key="k"
    )
    assert isinstance(
        open_store(rest, tmp_path, migrations_dir=None, connect_timeout_s=1), SupabaseCloudStore
    )
    embedded = open_store(
        DatabaseSettings(database_url=None, supabase_url=None, supabase_key=None),
        tmp_path,
        migrations_dir=None,
        connect_timeout_s=1,
    )
    assert isinstance(embedded, SqlCloudStore)
    assert embedded.description.endswith("cloud.db")


def supabase_with(handler: Callable[[httpx.Request], httpx.Response]) -> SupabaseCloudStore:
    client = httpx.Client(transport=httpx.MockTransport(handler))
    return SupabaseCloudStore("https://proj.supabase.co", "service-key", http_client=client)


def test_supabase_rest_upsert_request_shape() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201)

    store = supabase_with(handler)
    when = datetime(2026, 6, 1, 12, 0, 0, 500000, tzinfo=UTC)
    rows = [
        ReadingRow(when, "site-1", "pcc", "meter.p_kw", 2.5),
        ReadingRow(when, "site-1", "pv", "pv.generation_kw", 3.0),
    ]
    assert store.write(ReadingBatch.from_rows(rows)) == -1  # PostgREST does not tell
    assert len(seen) == 1
    req = seen[0]
    assert req.method == "POST"
    assert req.url.host == "proj.supabase.co"
    assert req.url.path == "/rest/v1/readings"
    assert req.url.params["on_conflict"] == "time,site_id,device_id,metric"
    prefer = req.headers["prefer"]
    assert "resolution=ignore-duplicates" in prefer
    assert "return=minimal" in prefer
    assert req.headers["apikey"] == "service-key"
    assert json.loads(req.content) == [
        {
            "time": "2026-06-01T12:00:00.500000Z",
            "site_id": "site-1",
            "device_id": "pcc",
            "metric": "meter.p_kw",
            "value": 2.5,
        },
        {
            "time": "2026-06-01T12:00:00.500000Z",
            "site_id": "site-1",
            "device_id": "pv",
            "metric": "pv.generation_kw",
            "value": 3.0,
        },
    ]


def test_supabase_errors_become_storage_errors() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            503,
            json={"message": "upstream unavailable", "code": "503", "hint": None, "details": None},
        )

    store = supabase_with(handler)
    row = ReadingRow(datetime(2026, 6, 1, tzinfo=UTC), "s", "d", "meter.p_kw", 1.0)
    with pytest.raises(StorageError, match="supabase REST"):
        store.write(ReadingBatch.from_rows([row]))

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(StorageError, match="connection refused"):
        supabase_with(refuse).write(ReadingBatch.from_rows([row]))
    assert supabase_with(refuse).migrate() == []
