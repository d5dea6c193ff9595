"""Command line of the console: `derbus-console` (or `python -m console`) serves the pages."""

from __future__ import annotations

import json
import logging
import os
from importlib import resources
from pathlib import Path
from typing import Annotated

import typer
from pydantic import SecretStr

from console.service import build_service
from console.settings import Settings
from derbus.acl import new_secret
from derbus.bus import make_bus
from derbus.runner import serve
from derbus.settings import add_check_config, given, load_settings_or_exit

app = typer.Typer(help="derbus console: the platform in a browser.")
log = logging.getLogger("console")
TOKEN_FILE = "api_token"  # noqa: S105 - a file name, not a secret


def ensure_token(settings: Settings) -> Settings:
    """Setpoints need a token: without CONSOLE_API_TOKEN one is made and kept in the data folder.

    The file (mode 0600) survives restarts so a token once read stays valid.
    """
    if settings.api_token is not None:
        return settings
    path = settings.data_dir / TOKEN_FILE
    if not path.exists():
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(new_secret() + "\n")
    token = path.read_text().strip()
    print(f"console: setpoint token in {path.resolve()}", flush=True)
    return settings.model_copy(update={"api_token": SecretStr(token)})


@app.callback(invoke_without_command=True)
def run(
    ctx: typer.Context,
    api_port: Annotated[
        int | None, typer.Option(help="port of the pages (CONSOLE_API_PORT)")
    ] = None,
) -> None:
    """Serve the console (the default command)."""
    if ctx.invoked_subcommand is not None:
        return
    vendor = Path(str(resources.files("console") / "static" / "vendor"))
    if not (vendor / "htmx.min.js").is_file():
        typer.echo(
            f"error: the browser assets are missing in {vendor}: run `make console-assets`",
            err=True,
        )
        raise typer.Exit(2)
    settings = ensure_token(load_settings_or_exit(Settings, **given(api_port=api_port)))
    serve(build_service(settings, make_bus(settings.mqtt, "console", site_id=settings.site.id)))


add_check_config(app, Settings)


@app.command("feeder-drawing")
def feeder_drawing(
    coords: Annotated[Path, typer.Option(help="OpenDSS BusCoords file (bus x y)")],
    feeder: Annotated[Path, typer.Option(help="derbus-feeder/1 JSON (buses, branches, pvs)")],
    output: Annotated[Path, typer.Option(help="drawing JSON to write")],
) -> None:
    """Write the drawing the Feeder page uses: bus coordinates, branches, PV per bus."""
    xy: dict[str, list[float]] = {}
    for line in coords.read_text().splitlines():
        parts = line.replace(",", " ").split()
        if len(parts) == 3:
            xy[parts[0].lower()] = [float(parts[1]), float(parts[2])]
    data = json.loads(feeder.read_text())
    buses = [b["name"] for b in data["buses"]]
    missing = [b for b in buses if b.lower() not in xy]
    if missing:
        raise typer.BadParameter(f"no coordinates for buses {missing}")
    drawing = {
        "feeder_id": data["feeder_id"],
        "attribution": (
            f"{data.get('attribution', '')} Bus coordinates from EPRI's OpenDSS IEEE 123 model "
            "(BusCoords.dat, Copyright (c) 2008-2014 Electric Power Research Institute, Inc.; "
            "licence in LICENSE-EPRI-OpenDSS.txt)."
        ).strip(),
        "xy": {b: xy[b.lower()] for b in buses},
        "branches": [
            [br["from_bus"], br["to_bus"], bool(br.get("normally_open", False))]
            for br in data["branches"]
        ],
        "pv_bus": {pv["id"]: pv["bus"] for pv in data["pvs"]},
        "pv_kw": {pv["id"]: round(sum(pv["kw"].values()), 3) for pv in data["pvs"]},
    }
    output.write_text(json.dumps(drawing, separators=(",", ":")) + "\n")
    typer.echo(f"wrote {output} ({len(buses)} buses, {len(drawing['branches'])} branches)")


def main() -> None:
    """Console script entry point (`derbus-console`)."""
    app()


if __name__ == "__main__":
    main()
