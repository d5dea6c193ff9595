"""Command line of load_manager: `load-manager` (or `python -m load_manager`) runs the service."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from derbus.bus import make_bus
from derbus.errors import ConfigError
from derbus.runner import serve
from derbus.settings import add_check_config, given, load_settings_or_exit
from load_manager.cossmic import load_jobs, load_neighbourhood
from load_manager.service import build_service
from load_manager.settings import Settings

app = typer.Typer(help="derbus load manager: settlement-period net balancing and deferrable jobs.")


@app.callback(invoke_without_command=True)
def run(
    ctx: typer.Context,
    rule: Annotated[
        str | None,
        typer.Option(help="hysteresis, min_on_time or time_to_consume (LOAD_MANAGER_RULE)"),
    ] = None,
    settlement_period_s: Annotated[
        int | None, typer.Option(help="settlement period, s (LOAD_MANAGER_SETTLEMENT_PERIOD_S)")
    ] = None,
    neighbourhood_file: Annotated[
        Path | None, typer.Option(help="neighbourhood XML (LOAD_MANAGER_NEIGHBOURHOOD_FILE)")
    ] = None,
    jobs_file: Annotated[
        Path | None, typer.Option(help="jobs CSV or XML to import (LOAD_MANAGER_JOBS_FILE)")
    ] = None,
    api_port: Annotated[int | None, typer.Option(help="API port (LOAD_MANAGER_API_PORT)")] = None,
) -> None:
    """Run the service (the default command): net balancing every cycle, jobs planned and started."""
    if ctx.invoked_subcommand is not None:
        return
    overrides = given(
        rule=rule,
        settlement_period_s=settlement_period_s,
        neighbourhood_file=neighbourhood_file,
        jobs_file=jobs_file,
        api_port=api_port,
    )
    settings = load_settings_or_exit(Settings, **overrides)
    try:
        service = build_service(
            settings, make_bus(settings.mqtt, "load_manager", site_id=settings.site.id)
        )
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from err
    serve(service)


add_check_config(app, Settings)


@app.command("check-files")
def check_files(
    neighbourhood: Annotated[Path | None, typer.Option(help="neighbourhood XML")] = None,
    jobs: Annotated[Path | None, typer.Option(help="jobs CSV or XML")] = None,
) -> None:
    """Validate CoSSMic-style input files and summarise them (exit 2 naming the bad line)."""
    try:
        hood = load_neighbourhood(neighbourhood) if neighbourhood else None
        if hood is not None:
            typer.echo(f"neighbourhood {hood.neighbourhood_id}: {len(hood.houses)} houses")
        if jobs is not None:
            requests = load_jobs(jobs, neighbourhood=hood)
            energy = sum(r.energy_kwh for r in requests)
            typer.echo(f"jobs: {len(requests)} ({energy:.2f} kWh)")
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from err


def main() -> None:
    """Console script entry point (`load-manager`)."""
    app()


if __name__ == "__main__":
    main()
