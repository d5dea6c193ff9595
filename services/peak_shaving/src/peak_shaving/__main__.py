"""Command line of peak_shaving: `peak-shaving` (or `python -m peak_shaving`) runs the service."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from derbus.bus import make_bus
from derbus.runner import serve
from derbus.settings import add_check_config, given, load_settings_or_exit
from peak_shaving.optimizer import EmaInputs, ScheduleOptimizer
from peak_shaving.service import build_service, bus_client_name
from peak_shaving.settings import Settings

app = typer.Typer(help="derbus peak shaving: PCC limits (PMA) and battery schedule (EMA).")


@app.callback(invoke_without_command=True)
def run(
    ctx: typer.Context,
    import_limit_kw: Annotated[
        float | None, typer.Option(help="PCC import limit, kW (PEAK_SHAVING_IMPORT_LIMIT_KW)")
    ] = None,
    export_limit_kw: Annotated[
        float | None,
        typer.Option(help="PCC export limit, kW, negative (PEAK_SHAVING_EXPORT_LIMIT_KW)"),
    ] = None,
    demand_target_kw: Annotated[
        float | None,
        typer.Option(help="15-minute demand target, kW (PEAK_SHAVING_DEMAND_TARGET_KW)"),
    ] = None,
    solver: Annotated[
        str | None, typer.Option(help="EMA solver: ECOS, CLARABEL or HIGHS (PEAK_SHAVING_SOLVER)")
    ] = None,
    api_port: Annotated[int | None, typer.Option(help="API port (PEAK_SHAVING_API_PORT)")] = None,
) -> None:
    """Run the service (the default command): API, PMA on every PCC reading, EMA every 15 min."""
    if ctx.invoked_subcommand is not None:
        return
    overrides = given(
        import_limit_kw=import_limit_kw,
        export_limit_kw=export_limit_kw,
        demand_target_kw=demand_target_kw,
        solver=solver,
        api_port=api_port,
    )
    settings = load_settings_or_exit(Settings, **overrides)
    bus = make_bus(settings.mqtt, bus_client_name(settings), site_id=settings.site.id)
    serve(build_service(settings, bus))


add_check_config(app, Settings)


@app.command("solve-demo")
def solve_demo(
    steps: Annotated[int, typer.Option(help="horizon steps")] = 96,
) -> None:
    """Solve one EMA problem on a synthetic day (checks that the solver works here)."""
    import math
    from datetime import UTC, datetime

    import numpy as np

    settings = load_settings_or_exit(Settings, horizon_steps=steps)
    net = np.array(
        [
            0.8 * settings.import_limit_kw
            + 0.4 * settings.import_limit_kw * math.sin(2 * math.pi * i / 96)
            for i in range(steps)
        ]
    )
    optimizer = ScheduleOptimizer(settings)
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    schedule = optimizer.solve(
        EmaInputs(
            start=start,
            net_load_kw=net,
            soc_kwh=0.5 * settings.battery_capacity_kwh,
            prior_kw=np.zeros(steps),
        )
    )
    typer.echo(json.dumps(schedule.meta(), indent=2))


def main() -> None:
    """Console script entry point (`peak-shaving`)."""
    app()


if __name__ == "__main__":
    main()
