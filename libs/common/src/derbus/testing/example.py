"""An example service (used by the library's own tests and as a template for new services)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from derbus import topics
from derbus.bus.base import Bus
from derbus.messages import MeterReading
from derbus.service import Context, Service
from derbus.settings import ServiceSettings


class EchoSettings(ServiceSettings):
    """Settings of the example service (`ECHO_*`)."""

    model_config = SettingsConfigDict(env_prefix="ECHO_")
    mutable_fields: ClassVar[frozenset[str]] = frozenset({"limit_kw", "floor_kw"})

    limit_kw: float = Field(default=5.0, gt=0, description="import limit, kW")
    floor_kw: float = Field(default=-5.0, description="export limit, kW (negative)")

    @model_validator(mode="after")
    def _order(self) -> EchoSettings:
        if self.floor_kw >= self.limit_kw:
            raise ValueError("floor_kw must be below limit_kw")
        return self


@dataclass
class Echo:
    """The example's state: the readings above the limit, as (site, device, kW)."""

    over: list[tuple[str, str | None, float]] = field(default_factory=list)

    def on_reading(self, site_id: str, device_id: str | None, p_kw: float, limit_kw: float) -> None:
        """Keep a reading above `limit_kw`; raise on exactly 13 kW (a failing handler, for tests)."""
        if p_kw == 13:
            raise RuntimeError("unlucky reading")
        if p_kw > limit_kw:
            self.over.append((site_id, device_id, p_kw))


def build_echo(settings: EchoSettings, bus: Bus) -> Service[EchoSettings, Echo]:
    """Records meter readings above the limit; raises on a reading of exactly 13 kW (for tests)."""
    service: Service[EchoSettings, Echo] = Service("echo", settings, bus, state=Echo())

    @service.on(topics.METER)
    async def on_meter(msg: MeterReading, ctx: Context) -> None:
        service.state.on_reading(ctx.site_id, ctx.device_id, msg.p_kw, service.settings.limit_kw)

    return service
