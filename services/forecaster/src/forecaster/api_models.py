"""The REST bodies of forecaster (what its OpenAPI shows)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Accuracy(BaseModel):
    """How the forecasts issued since `since` did: the scores by name (MAE, coverage…).

    Scores are numbers (None where undefined); `reference` names the baseline the skill is
    measured against.
    """

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, float | str | None] = Field(init=False)

    site_id: str
    target: str
    since: str = Field(description="start of the window, ISO 8601")


class TrainOutcomeView(BaseModel):
    """What training a site's target did."""

    site_id: str
    target: str
    version: str | None
    model: str | None
    promoted: bool
    reason: str
    metrics: dict[str, Any] = Field(description="backtest metrics of the chosen model")
    report: str | None = Field(description="path of the backtest report")


class Trained(BaseModel):
    """The outcomes of a training run."""

    outcomes: list[TrainOutcomeView]


class ModelVersion(BaseModel):
    """A registered model version."""

    site_id: str
    target: str
    version: str
    model: str | None
    trained_at: str | None
    training_window: Any = Field(description="the data the version was trained on")
    mae_kw: float | None
    skill: float | None
    coverage_80: float | None
    coverage_80_daylight: float | None
    served: bool


class Models(BaseModel):
    """The registry: versions per site and target, the promoted one, their metrics."""

    models: list[ModelVersion]
