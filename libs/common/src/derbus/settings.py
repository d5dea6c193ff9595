"""Settings shared by every service: `MQTT_*`, `SITE_*` and the per-service base (pydantic-settings).

Settings are built only in a service's `__main__` via `load_settings`, which stops the process
with the offending field named when a value is invalid.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Self, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import typer
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from derbus.errors import ConfigError
from derbus.topics import DEFAULT_ROOT, PLATFORM_SITE, topic_level


class MqttSettings(BaseSettings):
    """Broker connection, shared by every service (`MQTT_*`)."""

    model_config = SettingsConfigDict(env_prefix="MQTT_", extra="ignore")

    host: str = Field(default="127.0.0.1", description="broker host")
    port: int = Field(default=1883, ge=1, le=65535, description="broker port")
    brokers: str = Field(
        default="",
        description="comma-separated host:port list of a broker cluster's nodes; the bus connects "
        "to the first that answers and fails over to the next (empty = host:port)",
    )
    username: str | None = Field(default=None, description="broker user name")
    password: SecretStr | None = Field(default=None, description="broker password (secret)")
    tls: bool = Field(default=False, description="connect with TLS")
    ca_file: str | None = Field(default=None, description="CA bundle for TLS")
    cert_file: str | None = Field(
        default=None, description="client certificate for a TLS listener that requires one"
    )
    key_file: str | None = Field(default=None, description="private key of cert_file")
    client: Literal["gmqtt", "paho"] = Field(
        default="gmqtt",
        description="bus implementation: gmqtt (asyncio, the fast one) or paho (threaded)",
    )
    protocol: Literal["5", "3.1.1"] = Field(
        default="5",
        description="MQTT protocol version; 3.1.1 for brokers without MQTT 5 (NATS): no message "
        "expiry, response topics or will delay there",
    )
    client_id: str | None = Field(
        default=None,
        description="fixed client id; unset = derived from topic root, service, site and replica",
    )
    replica: str = Field(
        default="0", description="replica name of this instance (part of the derived client id)"
    )
    persistent_session: bool = Field(
        default=True,
        description="keep the session (subscriptions, queued QoS 1 messages) across reconnects "
        "and broker restarts",
    )
    session_expiry_s: int = Field(
        default=86_400,
        ge=0,
        le=0xFFFFFFFF,
        description="MQTT 5: how long the broker keeps the session of a vanished client, s",
    )
    will_delay_s: int = Field(
        default=2,
        ge=0,
        description="MQTT 5: the last will is published this long after the connection is lost "
        "(a reconnect within it publishes none), s",
    )
    max_queued: int = Field(
        default=20_000,
        ge=1,
        le=60_000,
        description="QoS 1 publishes not yet acknowledged (or held while disconnected) above "
        "which publish waits (back-pressure)",
    )
    keepalive_s: int = Field(default=30, ge=5, le=3600, description="MQTT keepalive, s")
    root: str = Field(
        default=DEFAULT_ROOT, description="topic root (see derbus.topics.DEFAULT_ROOT)"
    )
    status_site: Annotated[str, topic_level("status site")] = Field(
        default=PLATFORM_SITE,
        description="site level of the service's own status, last will and dead letters: "
        f"`{PLATFORM_SITE}`, or the site id for an edge gateway that logs in with its site's "
        "credentials (MQTT_USERNAME = site id; the ACL lets a site write only under its own id)",
    )
    connect_retries: int = Field(default=10, ge=0, description="connect attempts at start-up")
    reconnect_min_delay_s: float = Field(default=0.2, gt=0, description="first reconnect backoff")
    reconnect_max_delay_s: float = Field(default=10.0, gt=0, description="longest backoff")

    @field_validator("root")
    @classmethod
    def _root(cls, value: str) -> str:
        if not value or value.endswith("/") or any(c in value for c in "+#"):
            raise ValueError("topic root must be non-empty, without trailing / or wildcards")
        return value

    @field_validator("brokers")
    @classmethod
    def _brokers(cls, value: str) -> str:
        for item in filter(None, (v.strip() for v in value.split(","))):
            host, sep, port = item.rpartition(":")
            if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
                raise ValueError(f"{item!r} is not host:port")
        return value

    def endpoints(self) -> list[tuple[str, int]]:
        """The brokers to try, in order: `brokers` when set, else `host:port`."""
        items = [v.strip() for v in self.brokers.split(",") if v.strip()]
        if not items:
            return [(self.host, self.port)]
        return [(h, int(p)) for h, _, p in (item.rpartition(":") for item in items)]

    def derived_client_id(self, service: str, site_id: str | None = None) -> str:
        """The client id of a service: `client_id`, else root/service/site/replica (stable).

        The topic root is part of it so that two deployments (or two tests) on one broker never
        share a session; characters outside [A-Za-z0-9_.-] become `_`.
        """
        if self.client_id:
            return self.client_id
        parts = [self.root, service, site_id or "-", self.replica]
        return re.sub(r"[^A-Za-z0-9_.-]", "_", ".".join(parts))


class SiteSettings(BaseSettings):
    """The site a service instance looks after by default (`SITE_*`)."""

    model_config = SettingsConfigDict(env_prefix="SITE_", extra="ignore")

    id: Annotated[str, topic_level("site id")] = Field(
        default="site-1", description="site id (a topic level)"
    )
    latitude: float = Field(default=41.39, ge=-90, le=90, description="degrees north")
    longitude: float = Field(default=2.17, ge=-180, le=180, description="degrees east")
    timezone: str = Field(default="Europe/Madrid", description="IANA time zone for tariffs")
    country: str = Field(default="ES", min_length=2, max_length=2, description="ISO country code")

    @field_validator("timezone")
    @classmethod
    def _tz(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as err:
            raise ValueError(f"unknown time zone {value!r}") from err
        return value


class DatabaseSettings(BaseSettings):
    """The cloud database, shared by cloud_sync, feature_engineering and forecaster (no prefix).

    `DATABASE_URL` (Postgres / Supabase's database URL, or sqlite:///file) wins; else
    `SUPABASE_URL` + `SUPABASE_KEY` (REST); else an embedded SQLite file in the data folder.
    """

    model_config = SettingsConfigDict(env_prefix="", extra="ignore")

    database_url: SecretStr | None = Field(
        default=None, description="DATABASE_URL: postgresql://… or sqlite:///path (secret)"
    )
    supabase_url: str | None = Field(default=None, description="SUPABASE_URL for the REST API")
    supabase_key: SecretStr | None = Field(default=None, description="SUPABASE_KEY (secret)")

    def sqlalchemy_url(self, data_dir: Path) -> str:
        """A SQLAlchemy URL: DATABASE_URL with the psycopg driver, or the embedded SQLite file."""
        if self.database_url is None:
            return f"sqlite:///{(data_dir / 'cloud.db').resolve()}"
        url = self.database_url.get_secret_value()
        for prefix in ("postgres://", "postgresql://"):
            if url.startswith(prefix):
                return "postgresql+psycopg://" + url[len(prefix) :]
        return url


class InfluxSettings(BaseSettings):
    """InfluxDB 2 connection (`INFLUXDB_URL`, `_TOKEN`, `_ORG`, `_BUCKET`): cloud_sync, edge_simulator.

    Services that let their own prefix win build it with `InfluxSettings.from_env("CLOUD_SYNC_")`.
    """

    model_config = SettingsConfigDict(env_prefix="INFLUXDB_", extra="ignore")

    url: str | None = Field(
        default=None, description="InfluxDB URL, e.g. http://influxdb:8086; unset = no InfluxDB"
    )
    token: SecretStr | None = Field(default=None, description="API token (secret)")
    org: str = Field(default="derbus", description="organisation")
    bucket: str = Field(default="derbus", description="bucket")

    @classmethod
    def from_env(cls, service_prefix: str = "") -> InfluxSettings:
        """`INFLUXDB_*`, each overridden by `<service_prefix>INFLUXDB_*` where that one is set."""
        plain = cls()
        if not service_prefix:
            return plain
        prefixed = cls(_env_prefix=f"{service_prefix}INFLUXDB_")
        return plain.model_copy(update={k: getattr(prefixed, k) for k in prefixed.model_fields_set})


ApiPort = Annotated[int, Field(ge=0, le=65535, description="API port (0 = any free)")]
"""The type of `api_port`: a service sets only its default, `api_port: ApiPort = 8103`."""


class ServiceSettings(BaseSettings):
    """Base of every service's settings. Subclasses set `env_prefix` and add their fields.

    `mutable_fields` names the fields `PUT /config` may change at run time.
    """

    model_config = SettingsConfigDict(extra="ignore", validate_default=True)
    mutable_fields: ClassVar[frozenset[str]] = frozenset()

    api_host: str = Field(default="127.0.0.1", description="API listen address")
    api_port: ApiPort = 8100
    api_token: SecretStr | None = Field(
        default=None, description="bearer token required by state-changing REST calls"
    )
    api_allow_open: bool = Field(
        default=False,
        description="serve state-changing REST calls without a token on a non-loopback "
        "api_host (refused at start-up unless set)",
    )
    api_tls_cert_file: Path | None = Field(
        default=None, description="serve the API over HTTPS with this certificate (PEM)"
    )
    api_tls_key_file: Path | None = Field(default=None, description="private key of the API cert")
    log_level: str = Field(default="INFO", pattern="^(DEBUG|INFO|WARNING|ERROR)$")
    data_dir: Path = Field(
        default=Path("var"), description="folder for the service's state (outbox, models, plans)"
    )
    mqtt: MqttSettings = Field(default_factory=MqttSettings)
    site: SiteSettings = Field(default_factory=SiteSettings)

    @model_validator(mode="after")
    def _secure_api(self) -> Self:
        if not is_loopback(self.api_host) and self.api_token is None and not self.api_allow_open:
            raise ValueError(
                f"api_token: the API listens on {self.api_host} (not loopback) without a token; "
                "set the API_TOKEN of the service, bind 127.0.0.1, or set API_ALLOW_OPEN=true"
            )
        if (self.api_tls_cert_file is None) != (self.api_tls_key_file is None):
            raise ValueError("api_tls_cert_file and api_tls_key_file go together")
        return self


def is_loopback(host: str) -> bool:
    """Whether a listen address only accepts connections from this machine."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


S = TypeVar("S", bound=BaseSettings)


def describe_validation_error(err: ValidationError, prefix: str = "") -> str:
    """One line per invalid field, naming the field (and its environment variable)."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(settings)"
        env = (prefix + "_".join(str(p) for p in e["loc"])).upper() if prefix else ""
        where = f"{loc} ({env})" if env else loc
        lines.append(f"invalid setting {where}: {e['msg']}")
    return "; ".join(lines)


def _prefix_of(cls: type[BaseSettings], title: str) -> str:
    """The env prefix of the (possibly nested) settings model an error is about."""
    if title == cls.__name__:
        return str(cls.model_config.get("env_prefix", ""))
    for field in cls.model_fields.values():
        kind = field.annotation
        if isinstance(kind, type) and issubclass(kind, BaseSettings) and kind.__name__ == title:
            return str(kind.model_config.get("env_prefix", ""))
    return str(cls.model_config.get("env_prefix", ""))


def given(**options: Any) -> dict[str, Any]:
    """The options a user actually gave (not None): command-line flags as settings overrides."""
    return {name: value for name, value in options.items() if value is not None}


def redacted(settings: BaseSettings) -> dict[str, Any]:
    """Settings as JSON data with secrets hidden: SecretStr fields and passwords inside URLs."""
    data: dict[str, Any] = _redact_urls(settings.model_dump(mode="json"))
    return data


def _redact_urls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _redact_urls(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact_urls(v) for v in value]
    if isinstance(value, str) and "://" in value and "@" in value:
        scheme, rest = value.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:**********@{host}"
    return value


def load_settings(cls: type[S], **overrides: Any) -> S:
    """Build settings from the environment (and overrides) or raise ConfigError naming the field."""
    try:
        return cls(**overrides)
    except ValidationError as err:
        raise ConfigError(describe_validation_error(err, _prefix_of(cls, err.title))) from err


def load_settings_or_exit(cls: type[S], **overrides: Any) -> S:
    """`load_settings` for `__main__`: print the named field and exit with status 2."""
    try:
        return load_settings(cls, **overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from err


def add_check_config(app: typer.Typer, cls: type[BaseSettings]) -> None:
    """Give a service's command line `check-config`: its settings validated and printed as JSON.

    An invalid setting exits with status 2 naming the field, as `load_settings_or_exit` does.
    """

    @app.command("check-config")
    def check_config() -> None:
        """Validate the settings from the environment and print them (secrets redacted)."""
        typer.echo(json.dumps(redacted(load_settings_or_exit(cls)), indent=2))
