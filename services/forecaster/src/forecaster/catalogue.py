"""What the forecaster forecasts and with which models: plain names, no heavy imports."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    """A forecast target: its feature-table column and its quantity on the bus."""

    name: str
    column: str
    quantity: str
    non_negative: bool = True
    solar: bool = False


TARGETS: dict[str, Target] = {
    "load": Target("load", "load_kw", "load_p_kw"),
    "pv": Target("pv", "pv_kw", "pv_generation_kw", solar=True),
}
BASELINES = ("seasonal_naive_day", "seasonal_naive_week", "persistence", "clear_sky_persistence")
LEARNED = ("linear", "gbm", "gbm_median")
"""The default learned models (`gbm_quantile` may be configured, see models.QuantileModel)."""
KNOWN_MODELS = (*LEARNED, "gbm_quantile")
