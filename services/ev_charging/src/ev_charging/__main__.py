"""Command line of ev_charging: `ev-charging` (or `python -m ev_charging`) runs the service."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from derbus.bus import make_bus
from derbus.runner import serve
from derbus.settings import add_check_config, given, load_settings_or_exit
from ev_charging.service import build_service
from ev_charging.settings import Settings

app = typer.Typer(help="derbus EV charging: OCPP central system, smart charging, price series.")


@app.callback(invoke_without_command=True)
def run(
    ctx: typer.Context,
    ocpp_port: Annotated[
        int | None, typer.Option(help="OCPP WebSocket port (EV_CHARGING_OCPP_PORT)")
    ] = None,
    api_port: Annotated[int | None, typer.Option(help="API port (EV_CHARGING_API_PORT)")] = None,
) -> None:
    """Run the service (the default command): API, OCPP central system, price sources."""
    if ctx.invoked_subcommand is not None:
        return
    settings = load_settings_or_exit(Settings, **given(ocpp_port=ocpp_port, api_port=api_port))
    # the ocpp library logs every frame at INFO: only with EV_CHARGING_LOG_LEVEL=DEBUG
    if settings.log_level != "DEBUG":
        logging.getLogger("ocpp").setLevel(logging.WARNING)
    serve(build_service(settings, make_bus(settings.mqtt, "ev_charging", site_id=settings.site.id)))


add_check_config(app, Settings)


def main() -> None:
    """Console script entry point (`ev-charging`)."""
    app()


if __name__ == "__main__":
    main()
