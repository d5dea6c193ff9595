"""Settings of feature_engineering (`FEATURE_ENGINEERING_*`, plus the cloud database's `DATABASE_URL`)."""

from __future__ import annotations

from typing import ClassVar, Self

from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from derbus.settings import ApiPort, DatabaseSettings, ServiceSettings
from derbus.topics import validate_id


class Settings(ServiceSettings):
    """feature_engineering: cloud readings to the 15-minute `features` table, incrementally."""

    model_config = SettingsConfigDict(env_prefix="FEATURE_ENGINEERING_")
    mutable_fields: ClassVar[frozenset[str]] = frozenset(
        {"interval_s", "batch_size", "recompute_steps", "max_fill_steps"}
    )

    api_port: ApiPort = 8104
    database: DatabaseSettings = Field(
        default_factory=DatabaseSettings,
        description="cloud database: DATABASE_URL (Postgres / Supabase) else SQLite in data_dir",
    )
    site_id: str | None = Field(
        default=None,
        description="only this site (FEATURE_ENGINEERING_SITE_ID); unset = every site in readings",
    )
    batch_size: int = Field(
        default=2000, ge=96, le=100_000, description="intervals computed and upserted per batch"
    )
    rolling_window_days: float = Field(
        default=7.0, gt=0, le=60, description="long trailing window of the rolling stats, days"
    )
    rolling_short_h: float = Field(
        default=4.0, gt=0, le=48, description="short trailing window of the rolling stats, h"
    )
    lookback_days: float = Field(
        default=35.0, gt=0, le=3660, description="how far back a site's first pass starts, days"
    )
    max_fill_steps: int = Field(
        default=4, ge=0, le=96, description="gap intervals carried forward (and flagged), at most"
    )
    recompute_steps: int = Field(
        default=4, ge=0, le=960, description="latest intervals recomputed each pass (late data)"
    )
    interval_s: float = Field(
        default=900.0, gt=0, le=86_400, description="seconds between passes when continuous"
    )

    @field_validator("site_id")
    @classmethod
    def _site(cls, value: str | None) -> str | None:
        return validate_id("site_id", value) if value else None

    @model_validator(mode="after")
    def _windows(self) -> Self:
        if self.rolling_short_h >= self.rolling_window_days * 24:
            raise ValueError("rolling_short_h must be shorter than rolling_window_days")
        return self

    @property
    def short_window_steps(self) -> int:
        """Intervals of the short window."""
        return max(1, round(self.rolling_short_h * 4))

    @property
    def long_window_steps(self) -> int:
        """Intervals of the long window."""
        return max(2, round(self.rolling_window_days * 96))
