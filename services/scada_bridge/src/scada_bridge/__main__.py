"""Command line of scada_bridge: `scada-bridge` (or `python -m scada_bridge`) runs the service."""

from __future__ import annotations

from typing import Annotated

import typer

from derbus.bus import MqttBus, make_bus
from derbus.runner import serve
from derbus.settings import MqttSettings, add_check_config, given, load_settings_or_exit
from scada_bridge.service import build_service
from scada_bridge.settings import Settings

app = typer.Typer(help="derbus SCADA bridge: Sparkplug B edge node and Home Assistant discovery.")


def link_settings(settings: Settings) -> MqttSettings:
    """The Sparkplug connection's broker settings: the service's, reconnected by the bridge.

    paho's own reconnect is pushed far out (the bridge opens a new session, with the next
    bdSeq in its will, as soon as it sees the connection gone) and each attempt is one try.
    """
    return settings.mqtt.model_copy(
        update={
            "client_id": None,
            "connect_retries": 0,
            "reconnect_min_delay_s": 3600.0,
            "reconnect_max_delay_s": 3600.0,
            "protocol": "3.1.1",
            "client": "paho",
        }
    )


@app.callback(invoke_without_command=True)
def run(
    ctx: typer.Context,
    group_id: Annotated[
        str | None, typer.Option(help="Sparkplug group (SCADA_BRIDGE_GROUP_ID)")
    ] = None,
    edge_node_id: Annotated[
        str | None, typer.Option(help="Sparkplug edge node id (SCADA_BRIDGE_EDGE_NODE_ID)")
    ] = None,
    api_port: Annotated[int | None, typer.Option(help="API port (SCADA_BRIDGE_API_PORT)")] = None,
) -> None:
    """Run the bridge (the default command): API, Sparkplug edge node, HA discovery."""
    if ctx.invoked_subcommand is not None:
        return
    settings = load_settings_or_exit(
        Settings, **given(group_id=group_id, edge_node_id=edge_node_id, api_port=api_port)
    )
    serve(
        build_service(
            settings,
            make_bus(settings.mqtt, "scada_bridge", site_id=settings.site.id),
            make_link=lambda: MqttBus(link_settings(settings)),
        )
    )


add_check_config(app, Settings)


def main() -> None:
    """Console script entry point (`scada-bridge`)."""
    app()


if __name__ == "__main__":
    main()
