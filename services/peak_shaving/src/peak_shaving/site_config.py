"""Site limits and battery parameters shared by the PMA controller and the EMA optimiser."""

from __future__ import annotations

from pydantic import BaseModel, Field, ValidationInfo, field_validator


class SiteConfig(BaseModel):
    """PCC limits and the battery, load-referenced (+ import / + charge).

    Cross-field checks run on the later field so that an error names the field at fault:
    an export limit at or above the import limit is reported on `export_limit_kw`.
    """

    import_limit_kw: float = Field(
        default=50.0, description="PCC import limit, kW (PCC power must stay at or below it)"
    )
    export_limit_kw: float = Field(
        default=-50.0,
        description="PCC export limit, kW, negative = export allowed (PCC power stays at or above)",
    )
    demand_target_kw: float | None = Field(
        default=None,
        gt=0,
        description="billed 15-minute average import to stay under, kW (None: no demand control)",
    )
    # the battery defaults are the simulated demo site's (edge_simulator's BatteryConfig; a test
    # keeps them equal): on `make run` the optimiser plans for the battery that is there
    battery_capacity_kwh: float = Field(default=10.0, gt=0, description="usable capacity, kWh")
    battery_max_charge_kw: float = Field(default=5.0, gt=0, description="charge rating, kW")
    battery_max_discharge_kw: float = Field(default=5.0, gt=0, description="discharge rating, kW")
    charge_efficiency: float = Field(default=0.949, gt=0, le=1, description="AC→stored, 0..1")
    discharge_efficiency: float = Field(default=0.949, gt=0, le=1, description="stored→AC, 0..1")
    soc_min_pct: float = Field(default=10.0, ge=0, le=100, description="lowest SoC, %")
    soc_max_pct: float = Field(default=95.0, ge=0, le=100, description="highest SoC, %")
    reserve_pct: float = Field(
        default=20.0,
        ge=0,
        le=100,
        description="SoC held back for the PMA to shave unforecast peaks, %; schedule tracking"
        " does not discharge below it, limit enforcement may (down to soc_min_pct)",
    )
    end_soc_pct: float = Field(
        default=50.0, ge=0, le=100, description="SoC target at the end of the EMA horizon, %"
    )

    @field_validator("export_limit_kw")
    @classmethod
    def _export_below_import(cls, value: float, info: ValidationInfo) -> float:
        imp = info.data.get("import_limit_kw")
        if imp is not None and value >= imp:
            raise ValueError(f"export_limit_kw ({value:g}) must be below import_limit_kw ({imp:g})")
        return value

    @field_validator("demand_target_kw")
    @classmethod
    def _demand_within_import(cls, value: float | None, info: ValidationInfo) -> float | None:
        imp = info.data.get("import_limit_kw")
        if value is not None and imp is not None and value > imp:
            raise ValueError(
                f"demand_target_kw ({value:g}) must not exceed import_limit_kw ({imp:g})"
            )
        return value

    @field_validator("soc_max_pct")
    @classmethod
    def _soc_order(cls, value: float, info: ValidationInfo) -> float:
        low = info.data.get("soc_min_pct")
        if low is not None and value <= low:
            raise ValueError(f"soc_max_pct ({value:g}) must be above soc_min_pct ({low:g})")
        return value

    @field_validator("reserve_pct", "end_soc_pct")
    @classmethod
    def _within_soc_band(cls, value: float, info: ValidationInfo) -> float:
        low, high = info.data.get("soc_min_pct"), info.data.get("soc_max_pct")
        if low is not None and high is not None and not low <= value <= high:
            raise ValueError(
                f"{info.field_name} ({value:g}) must lie within soc_min_pct..soc_max_pct"
                f" ({low:g}..{high:g})"
            )
        return value
