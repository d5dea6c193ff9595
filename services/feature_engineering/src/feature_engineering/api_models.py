"""The REST bodies of feature_engineering (what its OpenAPI shows)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class SitePass(BaseModel):
    """What a pass computed for a site."""

    site_id: str
    rows: int
    start: str | None = Field(description="first interval computed, ISO 8601")
    end: str | None


class SiteStatus(BaseModel):
    """A site's rows in the feature table."""

    site_id: str
    rows: int
    first: str
    last: str
    load_missing_rows: int
    load_filled_rows: int
    behind_readings_s: float = Field(description="how far the features lag the readings, s")


class FeatureStatus(BaseModel):
    """Per site: rows, first/last interval, missing and filled load rows, lag; the last pass."""

    sites: list[SiteStatus]
    last_pass: list[SitePass] | None = Field(description="None before the first pass")


class PassDone(BaseModel):
    """The pass just run."""

    sites: list[SitePass]


class Column(BaseModel):
    """A documented column of the feature table."""

    name: str
    kind: str
    availability: str
    description: str
