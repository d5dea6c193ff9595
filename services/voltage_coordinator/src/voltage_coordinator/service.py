"""Wiring of the coordinator: feeder state in, PV limits (TTL, grid_operator) and KPIs out."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Response

from derbus import topics
from derbus.bus.base import Bus
from derbus.http import content, errors
from derbus.messages import AreaExchange, FeederState
from derbus.service import Context, Service
from voltage_coordinator.api_models import SentLimits, Voltages
from voltage_coordinator.feeder import FEEDER_DEVICE, Feeder
from voltage_coordinator.settings import Settings
from voltage_coordinator.state import NAME, CoordinatorState


def build_service(
    settings: Settings, bus: Bus, feeder: Feeder | None = None
) -> Service[Settings, CoordinatorState]:
    """The voltage coordinator on a bus: subscribes to the feeder state, re-solves on a cadence.

    `service.state` is its `CoordinatorState` (latest state, round in flight, last decision).

    Args:
        settings: the coordinator's settings.
        bus: the bus.
        feeder: the feeder (default: from the settings).
    """
    service: Service[Settings, CoordinatorState] = Service(NAME, settings, bus)
    vc = service.state = CoordinatorState(service, feeder or settings.load_feeder())
    service.declare_publishes(topics.PV_CURTAILMENT, topics.AREA_EXCHANGE, topics.KPI)
    service.on_config_change(vc.reconfigure)
    service.on_shutdown(vc.close)

    @service.on(topics.FEEDER_STATE, site_id=vc.feeder_id, device_id=FEEDER_DEVICE)
    async def on_feeder_state(msg: FeederState, ctx: Context) -> None:
        vc.on_feeder_state(msg)

    @service.on(topics.AREA_EXCHANGE, site_id=vc.feeder_id)
    async def on_area_exchange(msg: AreaExchange, ctx: Context) -> None:
        await vc.on_area_exchange(msg)

    @service.every(lambda: service.settings.solve_interval_s)
    async def solve(ctx: Context) -> None:
        await vc.cycle()

    service.include_router(_router(vc))
    return service


def _router(vc: CoordinatorState) -> APIRouter:
    router = APIRouter(tags=["voltage"])

    @router.get("/setpoints", response_model=SentLimits, response_model_exclude_none=True)
    def get_setpoints() -> dict[str, Any]:
        """The PV limits last sent, with fractions, curtailed power and how they were solved."""
        return vc.setpoints_view()

    @router.get("/voltages", response_model=Voltages, response_model_exclude_none=True)
    def get_voltages() -> dict[str, Any]:
        """Measured voltages (latest state) and the predicted profile after the last decision."""
        return vc.voltages_view()

    @router.get(
        "/plot.png",
        response_class=Response,
        responses={200: content("image/png", "the profiles and curtailment"), **errors(404)},
    )
    def get_plot() -> Response:
        """PNG: voltage profile before/after the last decision and the curtailment per PV."""
        png = vc.plot_png()
        if png is None:
            raise HTTPException(status_code=404, detail="no decision yet")
        return Response(png, media_type="image/png")

    return router
