"""Settings of the forecaster (`FORECASTER_*`, plus the cloud database's `DATABASE_URL`)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Self

from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from derbus.settings import ApiPort, DatabaseSettings, ServiceSettings
from derbus.topics import validate_id
from forecaster.catalogue import KNOWN_MODELS, LEARNED, TARGETS
from forecaster.coldstart import ColdStartSettings


class Settings(ServiceSettings):
    """forecaster: trains, evaluates and serves day-ahead load and PV forecasts per site."""

    model_config = SettingsConfigDict(env_prefix="FORECASTER_")
    mutable_fields: ClassVar[frozenset[str]] = frozenset(
        {"issue_interval_s", "retrain_interval_h", "test_size", "backtest_folds"}
    )

    api_port: ApiPort = 8105
    database: DatabaseSettings = Field(
        default_factory=DatabaseSettings,
        description="cloud database with the feature table: DATABASE_URL, else SQLite in data_dir",
    )
    model_dir: Path | None = Field(
        default=None,
        description="model registry folder (FORECASTER_MODEL_DIR); unset = <data_dir>/models",
    )
    test_size: float = Field(
        default=0.25, gt=0, lt=0.9, description="share of the history held out for the backtest"
    )
    backtest_folds: int = Field(default=2, ge=1, le=12, description="rolling-origin folds")
    weather_source: str = Field(
        default="simulator",
        description="simulator | none | open-meteo (the public API) | a file or URL answering "
        "in the Open-Meteo hourly JSON layout",
    )
    backtest_issue_every: int = Field(
        default=1, ge=1, le=96, description="intervals between the backtest's issue times"
    )
    site_ids: list[str] = Field(
        default_factory=list, description="sites to serve; empty = every site in the feature table"
    )
    targets: list[str] = Field(default_factory=lambda: ["load", "pv"], description="load, pv")
    models: list[str] = Field(
        default_factory=lambda: list(LEARNED), description="learned models to compare"
    )
    issue_interval_s: float = Field(
        default=900.0, gt=0, le=86_400, description="seconds between published forecasts"
    )
    retrain_interval_h: float = Field(
        default=24.0, gt=0, le=24 * 90, description="hours between retrainings"
    )
    train_at_start: bool = Field(
        default=True, description="train at start-up when a target has no model yet"
    )
    train_history_days: float = Field(
        default=365.0, ge=7, le=3660, description="history used for training, days"
    )
    min_train_days: float = Field(
        default=14.0, ge=7, le=365, description="history needed before a first training, days"
    )
    max_iter: int = Field(default=200, ge=10, le=2000, description="boosting iterations")
    accuracy_days: float = Field(
        default=7.0,
        gt=0,
        le=366,
        description="days of issued forecasts scored by /forecast/{site}/{target}/accuracy and --status",
    )
    cold_start: ColdStartSettings = Field(
        default_factory=ColdStartSettings,
        description="forecasts for sites with little history (FORECASTER_COLD_START_*)",
    )
    fit_threads: int = Field(
        default=1, ge=1, le=64, description="threads per model fit (1 avoids oversubscription)"
    )

    @field_validator("targets")
    @classmethod
    def _targets(cls, value: list[str]) -> list[str]:
        unknown = set(value) - set(TARGETS)
        if unknown:
            raise ValueError(f"unknown targets {sorted(unknown)}; known: {sorted(TARGETS)}")
        return value

    @field_validator("models")
    @classmethod
    def _models(cls, value: list[str]) -> list[str]:
        unknown = set(value) - set(KNOWN_MODELS)
        if unknown or not value:
            raise ValueError(f"models must be among {list(KNOWN_MODELS)}")
        return value

    @field_validator("weather_source")
    @classmethod
    def _weather(cls, value: str) -> str:
        if value in ("simulator", "none", "open-meteo") or value.startswith(
            ("http://", "https://")
        ):
            return value
        if not Path(value).is_file():
            raise ValueError(
                "weather_source must be simulator, none, open-meteo, an http(s) URL or an "
                f"existing file in the Open-Meteo JSON layout; {value!r} is none of these"
            )
        return value

    @field_validator("site_ids")
    @classmethod
    def _sites(cls, value: list[str]) -> list[str]:
        return [validate_id("site_id", v) for v in value]

    @model_validator(mode="after")
    def _history(self) -> Self:
        if self.min_train_days > self.train_history_days:
            raise ValueError("min_train_days must not exceed train_history_days")
        return self

    @property
    def registry_dir(self) -> Path:
        """Where the model registry lives."""
        return self.model_dir if self.model_dir is not None else self.data_dir / "models"
