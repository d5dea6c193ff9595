"""Settings of the voltage coordinator, its area agents and its feeder simulation (`VOLTAGE_COORDINATOR_*`)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from derbus.settings import ApiPort, ServiceSettings
from voltage_coordinator.admm import AdmmOptions
from voltage_coordinator.feeder import Feeder, bundled_feeder
from voltage_coordinator.optimizer import Limits

Mode = Literal["centralised", "distributed", "agents"]


class Settings(ServiceSettings):
    """The coordinator (`VOLTAGE_COORDINATOR_*`); the area agents and the feeder simulation read the same group."""

    model_config = SettingsConfigDict(env_prefix="VOLTAGE_COORDINATOR_")
    mutable_fields: ClassVar[frozenset[str]] = frozenset(
        {
            "solve_interval_s",
            "fairness",
            "group_by",
            "margin_pu",
            "v_max_pu",
            "setpoint_ttl_s",
            "mode",
            "distributed_method",
        }
    )

    api_port: ApiPort = 8108
    feeder_file: Path | None = Field(
        default=None,
        description="feeder JSON (derbus-feeder/1) or an OpenDSS master file (.dss, imported as "
        "modelled); default: the bundled ieee123",
    )
    mode: Mode = Field(
        default="centralised",
        description="centralised LP, distributed (area agents in this process) or agents "
        "(area agents as separate services on the broker)",
    )
    distributed_method: Literal["sweep", "admm"] = Field(
        default="sweep",
        description="distributed mode: exact affine boundary sweep, or consensus ADMM "
        "(comparison; falls back to the centralised LP when it does not converge)",
    )
    solve_interval_s: float = Field(default=5.0, gt=0, le=3600, description="re-solve cadence, s")
    fairness: Literal["equal_fraction", "equal_kw", "none"] = Field(
        default="equal_fraction", description="equal curtailed fraction / kW per group, or none"
    )
    group_by: Literal["feeder", "area"] = Field(default="feeder", description="fairness group")
    v_max_pu: float = Field(default=1.05, gt=1.0, lt=1.2, description="upper voltage limit, pu")
    v_min_pu: float = Field(default=0.95, gt=0.8, lt=1.0, description="lower voltage limit, pu")
    margin_pu: float = Field(
        default=0.00003, ge=0, lt=0.05, description="kept below v_max in the linear model, pu"
    )
    setpoint_ttl_s: float = Field(
        default=120.0, gt=0, le=86_400, description="TTL of the PV limits sent, s"
    )
    cvx_solver: str = Field(default="ECOS", description="cvxpy solver of the centralised LP")
    admm_rho: float = Field(default=10.0, gt=0, description="ADMM initial penalty")
    admm_max_iterations: int = Field(default=60, ge=1, le=10_000, description="ADMM bound")
    admm_eps_abs: float = Field(default=1e-5, gt=0, description="ADMM absolute tolerance")
    admm_eps_rel: float = Field(default=1e-4, gt=0, description="ADMM relative tolerance")
    ac_model: bool = Field(
        default=True,
        description="settle the AC bias to its fixed point in each decision on an OpenDSS model "
        "of the feeder (false: bound it conservatively, a negative bias is not used)",
    )
    residual_gain: float = Field(
        default=0.1,
        ge=0,
        le=2,
        description="what the AC model misses may move by this share of the voltage change "
        "from the measured point (a first decision far from it is conservative)",
    )
    write_setpoint_files: bool = Field(
        default=True,
        description="write <data_dir>/voltage_coordinator/<feeder>/setpoints/<area>.json per decision",
    )
    round_timeout_s: float = Field(
        default=20.0, gt=0, description="agents mode: give up a distributed round after this, s"
    )
    sim_interval_s: float = Field(
        default=2.0, gt=0, description="feeder simulation: wall seconds per simulated step"
    )
    sim_start_step: int = Field(default=40, ge=0, description="feeder simulation: first step")
    sim_hold_step: bool = Field(
        default=False, description="feeder simulation: stay on the first step (tests, demos)"
    )

    @model_validator(mode="after")
    def _band(self) -> Settings:
        if self.v_min_pu >= self.v_max_pu - self.margin_pu:
            raise ValueError("v_min_pu must be below v_max_pu - margin_pu")
        if (
            self.fairness == "equal_kw"
            and self.mode == "distributed"
            and self.distributed_method == "admm"
        ):
            raise ValueError("distributed_method: fairness equal_kw needs the sweep, not admm")
        return self

    def load_feeder(self) -> Feeder:
        """The feeder to coordinate: the bundled IEEE 123 unless `feeder_file` is set; a `.dss`
        file is imported as modelled (its own PV systems, areas found automatically)."""
        if self.feeder_file is None:
            return bundled_feeder()
        if self.feeder_file.suffix.lower() == ".dss":
            from voltage_coordinator.dss_import import import_dss

            return import_dss(self.feeder_file)
        return Feeder.load(self.feeder_file)

    def limits(self) -> Limits:
        """The voltage band with the margin."""
        return Limits(self.v_max_pu, self.v_min_pu, self.margin_pu)

    def admm(self) -> AdmmOptions:
        """ADMM options from the settings."""
        return AdmmOptions(
            rho=self.admm_rho,
            max_iterations=self.admm_max_iterations,
            eps_abs=self.admm_eps_abs,
            eps_rel=self.admm_eps_rel,
        )
