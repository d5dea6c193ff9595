"""Wiring of scada_bridge: derbus topics in → Sparkplug B edge node and Home Assistant out."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from derbus import topics
from derbus.bus.base import Bus
from derbus.http import TokenDep
from derbus.messages import KpiReport, Message, ServiceStatus, SetpointAck, utcnow
from derbus.service import Context, Service
from derbus.topics import TopicSpec
from scada_bridge import ha_discovery as ha
from scada_bridge.bridge import NAME, Bridge
from scada_bridge.settings import Settings


class SparkplugInfo(BaseModel):
    """The Sparkplug edge node as the bridge sees it now."""

    enabled: bool
    connected: bool
    group_id: str
    edge_node_id: str
    bd_seq: int | None = Field(description="bdSeq of the current session (its NDEATH will)")
    seq: int | None = Field(description="seq of the last message of the session")
    born_sites: list[str] = Field(description="sites with a DBIRTH in force")


class HomeAssistantInfo(BaseModel):
    """Home Assistant discovery as published."""

    enabled: bool
    discovery_prefix: str
    configs: int = Field(description="discovery configs published (retained)")


class Rebirth(BaseModel):
    """Answer of a rebirth request."""

    rebirth: bool
    bd_seq: int | None


def build_service(
    settings: Settings,
    bus: Bus,
    *,
    make_link: Callable[[], Bus] | None = None,
    clock: Callable[[], datetime] = utcnow,
) -> Service[Settings, Bridge]:
    """The bridge on a bus; `make_link` gives each Sparkplug connection its own bus (None: off).

    `service.state` is the `Bridge` (sites, metrics, Sparkplug session, HA configs).
    """
    service: Service[Settings, Bridge] = Service(NAME, settings, bus)
    bridge = Bridge(service, make_link if settings.sparkplug_enabled else None, clock)
    service.state = bridge
    service.declare_publishes(topics.SETPOINT)

    for spec in topics.TELEMETRY:
        service.on(spec)(_telemetry_handler(bridge, spec))

    @service.on(topics.KPI)
    async def on_kpi(msg: KpiReport, ctx: Context) -> None:
        await bridge.on_kpi(ctx.site_id, ctx.device_id or msg.name, msg)

    @service.on(topics.SERVICE_STATUS, site_id=topics.PLATFORM_SITE)
    async def on_status(msg: ServiceStatus, ctx: Context) -> None:
        await bridge.on_status(msg)

    @service.on(topics.SETPOINT_ACK)
    async def on_ack(msg: SetpointAck, ctx: Context) -> None:
        await bridge.on_ack(msg)

    @service.on_startup
    async def subscribe_home_assistant() -> None:
        if settings.ha_enabled:
            await bus.subscribe(ha.birth_topic(settings.ha_discovery_prefix), 1, bridge.on_ha_birth)
            await bus.subscribe(
                ha.setpoint_command_filter(settings.ha_command_prefix), 1, bridge.on_ha_command
            )

    @service.every(lambda: bridge.settings.link_check_s, run_at_start=True)
    async def sparkplug_link(ctx: Context) -> None:
        await bridge.ensure_link()
        await bridge.check_stale()

    @service.on_shutdown
    async def sparkplug_goodbye() -> None:
        await bridge.drop_link(graceful=True)

    router = APIRouter(tags=["scada_bridge"])

    @router.get("/sparkplug", response_model=SparkplugInfo)
    def get_sparkplug() -> SparkplugInfo:
        """The Sparkplug session: bdSeq, last seq, sites with a DBIRTH in force."""
        session = bridge.session
        return SparkplugInfo(
            enabled=bridge.make_link is not None,
            connected=bridge.link_up(),
            group_id=bridge.settings.group_id,
            edge_node_id=bridge.settings.edge_node_id,
            bd_seq=session.bd_seq if session else None,
            seq=session.seq if session else None,
            born_sites=sorted(s.site_id for s in bridge.sites.values() if s.born_names),
        )

    @router.post("/sparkplug/rebirth", response_model=Rebirth)
    async def post_rebirth(_auth: TokenDep) -> Rebirth:
        """Publish the full birth sequence again (as an NCMD Node Control/Rebirth would)."""
        await bridge.birth()
        session = bridge.session
        return Rebirth(rebirth=session is not None, bd_seq=session.bd_seq if session else None)

    @router.get("/homeassistant", response_model=HomeAssistantInfo)
    def get_homeassistant() -> HomeAssistantInfo:
        """How many discovery configs are published, under which prefix."""
        return HomeAssistantInfo(
            enabled=bridge.settings.ha_enabled,
            discovery_prefix=bridge.settings.ha_discovery_prefix,
            configs=len(bridge.ha_published),
        )

    service.include_router(router)
    return service


def _telemetry_handler(bridge: Bridge, spec: TopicSpec[Any]) -> Callable[..., Any]:
    """The handler of one telemetry spec (one per catalogue entry, the same sentence)."""

    async def on_telemetry(msg: Message, ctx: Context) -> None:
        await bridge.on_telemetry(spec, ctx.site_id, ctx.device_id or "", msg)

    on_telemetry.__name__ = f"on_{spec.name}"
    return on_telemetry
