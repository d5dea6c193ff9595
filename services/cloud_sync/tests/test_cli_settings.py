"""Settings (env names the issue lists, cross-field checks) and the `cloud-sync` command line."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cloud_sync.__main__ import app
from cloud_sync.cloud import SqlCloudStore
from cloud_sync.outbox import Outbox
from cloud_sync.readings import ReadingBatch
from cloud_sync.settings import Settings
from derbus.errors import ConfigError
from derbus.settings import load_settings
from derbus.storage import ReadingRow


def test_unprefixed_and_prefixed_environment_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFLUXDB_URL", "http://influx:8086")
    monkeypatch.setenv("INFLUXDB_TOKEN", "tok")
    monkeypatch.setenv("INFLUXDB_ORG", "plain-org")
    monkeypatch.setenv("CLOUD_SYNC_INFLUXDB_ORG", "sync-org")
    monkeypatch.setenv("INFLUXDB_BUCKET", "b1")
    monkeypatch.setenv("CLOUD_SYNC_BATCH_SIZE", "250")
    monkeypatch.setenv("CLOUD_SYNC_INTERVAL_S", "2.5")
    monkeypatch.setenv("DATABASE_URL", "postgres://u:p@db:5432/derbus")
    s = Settings()
    assert s.influxdb.url == "http://influx:8086"
    assert s.influxdb.token is not None
    assert s.influxdb.token.get_secret_value() == "tok"
    assert s.influxdb.org == "sync-org"  # the prefixed name wins
    assert s.influxdb.bucket == "b1"
    assert (s.batch_size, s.interval_s) == (250, 2.5)
    assert s.database.sqlalchemy_url(s.data_dir) == "postgresql+psycopg://u:p@db:5432/derbus"
    assert s.api_port == 8103


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"interval_s": -1}, "interval_s"),
        ({"influxdb_url": "http://x:8086"}, "INFLUXDB_TOKEN"),
        ({"retry_initial_delay_s": 20, "retry_max_delay_s": 1}, "retry_initial_delay_s"),
        ({"shared_group": "a/b"}, "shared_group"),
    ],
)
def test_invalid_settings_name_the_field(overrides: dict[str, object], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        load_settings(Settings, **overrides)


def test_supabase_needs_url_and_key_together(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("SUPABASE_URL", "https://p.supabase.co")
    monkeypatch.delenv("SUPABASE_KEY", raising=False)
    with pytest.raises(ConfigError, match="SUPABASE_KEY"):
        load_settings(Settings)


def cli(tmp_path: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(
        app,
        [*args, "--data-dir", str(tmp_path), "--database-url", f"sqlite:///{tmp_path / 'c.db'}"]
        if args and args[0] != "migrate"
        else [
            "--data-dir",
            str(tmp_path),
            "--database-url",
            f"sqlite:///{tmp_path / 'c.db'}",
            *args,
        ],
    )
    return result.exit_code, result.output


def test_status_prints_the_backlog_table(
    tmp_path: Path, make_rows: Callable[..., list[ReadingRow]]
) -> None:
    code, out = cli(tmp_path, "--status")
    assert code == 0
    assert "no outbox" in out
    box = Outbox(tmp_path / "outbox.db")
    box.append(ReadingBatch.from_rows(make_rows(7)), received_at=1.0)
    box.set_meta({"last_error": "write to db failed: connection refused"})
    box.close()
    code, out = cli(tmp_path, "--status")
    assert code == 0
    assert "rows pending" in out
    assert "| 7" in out
    assert "connection refused" in out


def test_once_drains_the_outbox_and_exits(
    tmp_path: Path, make_rows: Callable[..., list[ReadingRow]]
) -> None:
    box = Outbox(tmp_path / "outbox.db")
    data = make_rows(12)
    for first in range(0, 12, 4):  # three group commits of 4
        box.append(ReadingBatch.from_rows(data[first : first + 4]), received_at=1.0)
    box.close()
    code, out = cli(tmp_path, "--once", "--batch-size", "8")
    assert code == 0, out
    assert "forwarded 12 readings in 2 batches" in out
    assert SqlCloudStore(f"sqlite:///{tmp_path / 'c.db'}").count() == 12
    assert Outbox(tmp_path / "outbox.db").count() == 0


def test_once_fails_loudly_and_keeps_rows_when_the_database_is_unusable(
    tmp_path: Path, make_rows: Callable[..., list[ReadingRow]]
) -> None:
    box = Outbox(tmp_path / "outbox.db")
    box.append(ReadingBatch.from_rows(make_rows(3)), received_at=1.0)
    box.close()
    (tmp_path / "c.db").write_text("this is not a database")
    code, out = cli(tmp_path, "--once")
    assert code == 1
    assert "error" in out
    assert Outbox(tmp_path / "outbox.db").count() == 3


def test_migrate_command_and_exclusive_modes(tmp_path: Path) -> None:
    code, out = cli(tmp_path, "migrate")
    assert code == 0, out
    assert "applied 001_readings" in out
    code, out = cli(tmp_path, "migrate")
    assert "up to date" in out
    code, out = cli(tmp_path, "--once", "--status")
    assert code != 0


def test_invalid_cli_value_exits_2_naming_the_field(tmp_path: Path) -> None:
    code, out = cli(tmp_path, "--batch-size", "0", "--status")
    assert code == 2
    assert "batch_size" in out
