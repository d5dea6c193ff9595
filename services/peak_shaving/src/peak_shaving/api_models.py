"""The REST bodies of peak_shaving (what its OpenAPI shows)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from derbus.messages import TimeSeries


class ScheduleView(TimeSeries):
    """A site's battery schedule (the bus message) with whether the PMA follows it."""

    site_id: str
    followed_by_pma: bool = Field(description="the PMA tracks this schedule now")


class KpisView(BaseModel):
    """The PMA's KPIs of a site."""

    site_id: str
    values: dict[str, float] = Field(description="time on limit, violations, month peak…")


class Replanning(BaseModel):
    """The sites whose schedule is being re-solved."""

    replanning: list[str]
