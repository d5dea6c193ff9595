"""Command line of meter_gateway: `derbus-gateway` runs the service; `derbus-gateway scan` inspects a device."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated

import typer

from derbus.bus import make_bus
from derbus.errors import ConfigError, DeviceError
from derbus.runner import serve
from derbus.settings import given, load_settings_or_exit
from meter_gateway.device_map import load_devices, load_map
from meter_gateway.scan import parse_target, scan_registers, scan_sunspec, tcp_link
from meter_gateway.service import build_service
from meter_gateway.settings import Settings

app = typer.Typer(help="derbus meter gateway: Modbus TCP/RTU and SunSpec devices on the bus.")


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


@app.callback(invoke_without_command=True)
def run(
    ctx: typer.Context,
    devices_file: Annotated[
        Path | None, typer.Option(help="devices YAML (METER_GATEWAY_DEVICES_FILE)")
    ] = None,
    api_port: Annotated[int | None, typer.Option(help="API port (METER_GATEWAY_API_PORT)")] = None,
) -> None:
    """Run the service (the default command): poll the devices, publish, write setpoints."""
    if ctx.invoked_subcommand is not None:
        return
    overrides = given(devices_file=devices_file, api_port=api_port)
    settings = load_settings_or_exit(Settings, **overrides)
    try:
        service = build_service(
            settings, make_bus(settings.mqtt, "meter_gateway", site_id=settings.site.id)
        )
    except ConfigError as err:
        _fail(str(err))
        return
    serve(service)


@app.command("check-config")
def check_config() -> None:
    """Validate the settings and the devices file; print the devices."""
    settings = load_settings_or_exit(Settings)
    if settings.devices_file is None:
        typer.echo("no devices file (METER_GATEWAY_DEVICES_FILE)")
        return
    try:
        devices = load_devices(settings.devices_file, settings.site.id)
    except ConfigError as err:
        _fail(str(err))
        return
    for d in devices:
        how = "sunspec auto" if d.sunspec else f"{len(d.registers)} registers"
        typer.echo(f"{d.label}: {d.kind}, {how}, every {d.poll_interval_s:g} s")
    typer.echo(json.dumps({"devices": len(devices)}))


@app.command("scan")
def scan(
    target: Annotated[str, typer.Argument(help="HOST[:PORT] of a Modbus TCP device")],
    unit: Annotated[int, typer.Option(help="Modbus unit id")] = 1,
    base: Annotated[int | None, typer.Option(help="SunSpec base address (default: scan)")] = None,
    points: Annotated[bool, typer.Option(help="print every SunSpec point's value")] = False,
    map_name: Annotated[
        str | None, typer.Option("--map", help="read this register map instead of SunSpec")
    ] = None,
    devices_file: Annotated[
        Path | None, typer.Option(help="read the registers of --device in this devices file")
    ] = None,
    device: Annotated[str | None, typer.Option(help="device id in --devices-file")] = None,
    timeout_s: Annotated[float, typer.Option(help="request timeout, s")] = 2.0,
) -> None:
    """Print what a device holds: SunSpec models (and points), or the registers of a map."""
    try:
        host, port = parse_target(target)
        registers = None
        if map_name:
            registers = load_map(map_name).registers
        elif devices_file:
            found = [d for d in load_devices(devices_file, "site") if d.id == device]
            if not found:
                _fail(f"no device {device!r} in {devices_file}")
            registers = list(found[0].registers)
    except ConfigError as err:
        _fail(str(err))
        return

    async def go() -> str:
        link = tcp_link(host, port, timeout_s)
        try:
            if registers is not None:
                return await scan_registers(link, unit, registers)
            return await scan_sunspec(link, unit, base, points)
        finally:
            link.close()

    try:
        typer.echo(asyncio.run(go()))
    except DeviceError as err:
        _fail(str(err))


def main() -> None:
    """Console script entry point (`derbus-gateway`)."""
    app()


if __name__ == "__main__":
    main()
