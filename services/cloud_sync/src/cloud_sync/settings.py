"""Settings of cloud_sync (`CLOUD_SYNC_*`, plus `INFLUXDB_*`, `DATABASE_URL`, `SUPABASE_*`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal, Self

from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from derbus.settings import ApiPort, DatabaseSettings, InfluxSettings, ServiceSettings

_INFLUX_KEYS = ("url", "token", "org", "bucket")


class Settings(ServiceSettings):
    """cloud_sync: telemetry into InfluxDB and, through a durable outbox, into the cloud database.

    The InfluxDB connection (`derbus.settings.InfluxSettings`) takes `CLOUD_SYNC_INFLUXDB_*` first,
    then the plain `INFLUXDB_*` variables.
    """

    model_config = SettingsConfigDict(env_prefix="CLOUD_SYNC_")
    mutable_fields: ClassVar[frozenset[str]] = frozenset(
        {
            "batch_size",
            "interval_s",
            "outbox_max_rows",
            "outbox_warn_pct",
            "kpi_interval_s",
            "intake_batch_messages",
            "intake_batch_ms",
        }
    )

    api_port: ApiPort = 8103
    database: DatabaseSettings = Field(
        default_factory=DatabaseSettings,
        description="cloud database: DATABASE_URL, else SUPABASE_URL + SUPABASE_KEY, else SQLite",
    )
    influxdb: InfluxSettings = Field(
        default_factory=lambda: InfluxSettings.from_env("CLOUD_SYNC_"),
        description="INFLUXDB_URL/_TOKEN/_ORG/_BUCKET (CLOUD_SYNC_INFLUXDB_* first); no URL = no writes",
    )
    influx_batch_points: int = Field(
        default=5000, ge=1, le=100_000, description="points per InfluxDB write request"
    )
    influx_flush_interval_ms: int = Field(
        default=1000, ge=10, le=600_000, description="InfluxDB batch flush interval, ms"
    )
    batch_size: int = Field(
        default=5000, ge=1, le=100_000, description="readings per batch sent to the cloud database"
    )
    interval_s: float = Field(
        default=5.0, gt=0, le=86_400, description="seconds between forwarding passes"
    )
    intake_batch_messages: int = Field(
        default=500,
        ge=1,
        le=100_000,
        description="messages committed to the outbox together (then acknowledged together)",
    )
    intake_batch_ms: float = Field(
        default=50.0,
        ge=0,
        le=10_000,
        description="longest wait of a received message before its outbox commit, ms",
    )
    outbox_max_rows: int = Field(
        default=10_000_000, ge=1, description="outbox capacity, readings; when full, intake stops"
    )
    outbox_warn_pct: float = Field(
        default=90.0, gt=0, le=100, description="outbox fill level that raises a warning, %"
    )
    retry_attempts: int = Field(
        default=5, ge=1, le=100, description="attempts per batch before the pass gives up"
    )
    retry_initial_delay_s: float = Field(
        default=0.2, gt=0, le=60, description="first retry delay (doubles each attempt), s"
    )
    retry_max_delay_s: float = Field(
        default=10.0, gt=0, le=600, description="longest retry delay, s"
    )
    db_connect_timeout_s: int = Field(
        default=5, ge=1, le=120, description="cloud database connect timeout, s"
    )
    client_id: str = Field(
        default="derbus-cloud-sync",
        min_length=1,
        max_length=200,
        description="MQTT client id; fixed so the broker keeps unacknowledged messages across crashes",
    )
    shared_group: str | None = Field(
        default=None, description="MQTT shared-subscription group for replicas (None = plain)"
    )
    gap_tracking: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="find telemetry seq gaps and ask the edge again; auto = on unless "
        "shared_group is set (a shared subscription deals a stream's readings round robin over "
        "the replicas, so one replica's jumps are not losses; on only with a broker that keeps a "
        "topic on one member, e.g. EMQX hash_topic)",
    )
    gap_retry_s: float = Field(
        default=2.0,
        gt=0,
        le=3600,
        description="seconds between requests for a stream's missing readings (seq gaps)",
    )
    gap_max_attempts: int = Field(
        default=5,
        ge=1,
        le=1000,
        description="replay requests without a repair before missing readings count as lost",
    )
    kpi_interval_s: float = Field(
        default=10.0, gt=0, le=3600, description="seconds between backlog KPI publications"
    )
    partition_months_ahead: int = Field(
        default=1,
        ge=0,
        le=24,
        description="monthly PostgreSQL partitions created ahead of the current month",
    )
    migrate_on_start: bool = Field(
        default=True, description="apply the cloud database migrations at start-up"
    )
    migrations_dir: Path | None = Field(
        default=None,
        description="folder of the Postgres migrations (default: deploy/postgres of the tree)",
    )

    @model_validator(mode="before")
    @classmethod
    def _flat_influx(cls, data: Any) -> Any:
        """Fold flat `influxdb_url`/`_token`/`_org`/`_bucket` arguments (CLI) into `influxdb`."""
        if not isinstance(data, dict):
            return data
        flat = {k: data.pop(f"influxdb_{k}") for k in _INFLUX_KEYS if f"influxdb_{k}" in data}
        if flat:
            base = data.get("influxdb") or InfluxSettings.from_env("CLOUD_SYNC_")
            current = base if isinstance(base, dict) else base.model_dump()
            data["influxdb"] = InfluxSettings.model_validate({**current, **flat})
        return data

    @field_validator("shared_group")
    @classmethod
    def _group(cls, value: str | None) -> str | None:
        if value is not None and (not value or any(c in value for c in "/+#")):
            raise ValueError("shared_group must be non-empty without / + #")
        return value

    @model_validator(mode="after")
    def _cross(self) -> Self:
        if self.retry_initial_delay_s > self.retry_max_delay_s:
            raise ValueError("retry_initial_delay_s must not exceed retry_max_delay_s")
        if self.influxdb.url is not None and self.influxdb.token is None:
            raise ValueError("influxdb.token (INFLUXDB_TOKEN) is required with influxdb.url")
        db = self.database
        if db.database_url is None and (db.supabase_url is None) != (db.supabase_key is None):
            raise ValueError("database: SUPABASE_URL and SUPABASE_KEY must be given together")
        return self

    @property
    def outbox_path(self) -> Path:
        """The on-disk outbox (SQLite, WAL, synchronous=FULL)."""
        return self.data_dir / "outbox.db"
