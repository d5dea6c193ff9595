"""An example service (used by the library's own tests and as a template for new services)."""

from __future__ import annotations

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


def build_echo(settings: EchoSettings, bus: Bus) -> Service[EchoSettings]:
    """Records meter readings above the limit; raises on a reading of exactly 13 kW (for tests)."""
    service = Service("echo", settings, bus)
    over: list[tuple[str, str | None, float]] = []
    service.state["over"] = over

    @service.on(topics.METER)
    async def on_meter(msg: MeterReading, ctx: Context) -> None:
        if msg.p_kw == 13:
            raise RuntimeError("unlucky reading")
        if msg.p_kw > service.settings.limit_kw:
            over.append((ctx.site_id, ctx.device_id, msg.p_kw))

    return service
