"""`voltage-coordinator`: the coordinator service, its area agents, the feeder simulation, tools."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from derbus.bus import make_bus
from derbus.runner import serve
from derbus.settings import given, load_settings_or_exit
from voltage_coordinator.settings import Settings

app = typer.Typer(
    help="Fair PV curtailment against feeder over-voltage (LinDistFlow, area agents, OpenDSS).",
    invoke_without_command=True,
)

DATA = Path("data/ieee123")


def _settings(**overrides: Any) -> Settings:
    return load_settings_or_exit(Settings, **given(**overrides))


@app.callback()
def run(
    ctx: typer.Context,
    mode: Annotated[str | None, typer.Option(help="centralised | distributed | agents")] = None,
    api_port: Annotated[int | None, typer.Option(help="API port")] = None,
) -> None:
    """With no command: run the coordinator service (settings from VOLTAGE_COORDINATOR_* and MQTT_*)."""
    if ctx.invoked_subcommand is not None:
        return
    from voltage_coordinator.service import build_service

    settings = _settings(mode=mode, api_port=api_port)
    serve(build_service(settings, make_bus(settings.mqtt, "voltage_coordinator")))


@app.command("feeder-sim")
def feeder_sim(
    api_port: Annotated[int, typer.Option(help="API port of the simulation")] = 8118,
    interval_s: Annotated[float | None, typer.Option(help="wall seconds per step")] = None,
    start_step: Annotated[int | None, typer.Option(help="first step of the day")] = None,
    hold: Annotated[bool, typer.Option(help="stay on the first step")] = False,
) -> None:
    """Run the feeder simulation (OpenDSS AC flow) as its own service on the broker."""
    from voltage_coordinator.sim_service import build_feeder_sim

    settings = _settings(
        api_port=api_port,
        sim_interval_s=interval_s,
        sim_start_step=start_step,
        sim_hold_step=hold or None,
    )
    serve(build_feeder_sim(settings, make_bus(settings.mqtt, "feeder_sim")))


@app.command("area-agent")
def area_agent(
    area: Annotated[str, typer.Option(help="area id, e.g. area1")],
    api_port: Annotated[int, typer.Option(help="API port of this agent (0 = any)")] = 0,
) -> None:
    """Run one area agent (for `VOLTAGE_COORDINATOR_MODE=agents`) as its own service on the broker."""
    from voltage_coordinator.agents import build_area_agent

    settings = _settings(api_port=api_port)
    serve(build_area_agent(settings, make_bus(settings.mqtt, "area_agent", site_id=area), area))


@app.command("convert")
def convert(
    output: Annotated[Path, typer.Option(help="feeder JSON to write")],
    bus_info: Annotated[Path, typer.Option(help="DEC bus_info JSON")] = DATA
    / "bus_info_ieee123_pri.json",
    branch_info: Annotated[Path, typer.Option(help="DEC branch_sw_xfmr JSON")] = DATA
    / "branch_sw_xfmr_ieee123_pri.json",
    load_shape: Annotated[Path, typer.Option(help="load multipliers, one per line")] = DATA
    / "loadshape_15min.csv",
    pv_shape: Annotated[Path, typer.Option(help="PV multipliers, one per line")] = DATA
    / "pvshape_15min.csv",
    feeder_id: Annotated[str, typer.Option(help="feeder id (topic site level)")] = "ieee123",
    source_bus: Annotated[str, typer.Option(help="substation bus")] = "150",
    source_v_pu: Annotated[float, typer.Option(help="substation voltage, pu")] = 1.0475,
    open_switch: Annotated[
        list[str] | None, typer.Option(help="normally-open switch (repeat)")
    ] = None,
    area: Annotated[
        list[str] | None, typer.Option(help="area as id=root_bus (repeat); default IEEE 123's")
    ] = None,
) -> None:
    """Convert DEC-style feeder JSON (bus_info + branch_sw_xfmr) into derbus-feeder/1."""
    from voltage_coordinator.feeder import convert_dec

    areas = dict(a.split("=", 1) for a in area) if area else None
    feeder = convert_dec(
        bus_info,
        branch_info,
        load_shape,
        pv_shape,
        feeder_id=feeder_id,
        source_bus=source_bus,
        source_v_pu=source_v_pu,
        normally_open=open_switch or ("sw7", "sw8"),
        areas=areas,
    )
    output.write_text(feeder.to_json() + "\n")
    typer.echo(
        f"wrote {output}: {len(feeder.buses)} buses, {len(feeder.branches)} branches "
        f"({len(feeder.in_service)} closed), {len(feeder.pvs)} PVs = {feeder.total_pv_kw:.0f} kW, "
        f"load {feeder.total_load_kw:.1f} kW, {len(feeder.areas)} areas, {feeder.steps} steps"
    )


@app.command("import-dss")
def import_dss_command(
    master: Annotated[Path, typer.Argument(help="the OpenDSS master file")],
    output: Annotated[Path, typer.Option(help="feeder JSON to write")] = Path("feeder.json"),
    pv_share: Annotated[
        float, typer.Option(help="add PV = this x each load's modelled kW, per phase (0: none)")
    ] = 0.0,
    pv: Annotated[list[str] | None, typer.Option(help="add PV as bus=kW (repeat)")] = None,
    load_scale: Annotated[
        float, typer.Option(help="loads x this (the regulators' taps are solved there)")
    ] = 1.0,
    source_pu: Annotated[
        float | None, typer.Option(help="source voltage for the study, pu (default: modelled)")
    ] = None,
    load_shape: Annotated[
        Path | None, typer.Option(help="day load multipliers (CSV, last column)")
    ] = None,
    pv_shape: Annotated[
        Path | None, typer.Option(help="day PV multipliers (CSV, last column)")
    ] = None,
    profiles: Annotated[
        Path | None,
        typer.Option(
            help="profile table (time + columns), e.g. data/profiles/simbench_2016_15min.csv"
        ),
    ] = None,
    day: Annotated[str, typer.Option(help="the day to take from --profiles")] = "2016-06-21",
    load_column: Annotated[str, typer.Option(help="load column of --profiles")] = "h0-a_load_pu",
    pv_column: Annotated[str, typer.Option(help="PV column of --profiles")] = "pv1_pv_pu",
    interval_s: Annotated[int, typer.Option(help="step of the shapes, s")] = 900,
    areas: Annotated[
        Path | None, typer.Option(help="areas file (JSON area id -> root bus), overrides the cut")
    ] = None,
    area_count: Annotated[
        int, typer.Option(help="N balanced areas instead of cutting at regulators/switches")
    ] = 0,
    feeder_id: Annotated[str | None, typer.Option(help="feeder id (default: circuit name)")] = None,
    command: Annotated[
        list[str] | None, typer.Option(help="extra OpenDSS command after the compile (repeat)")
    ] = None,
) -> None:
    """Build the coordinator's feeder from an OpenDSS model (opendssdirect)."""
    from derbus.errors import ConfigError
    from voltage_coordinator.areas import read_areas
    from voltage_coordinator.dss_import import Study, day_profiles, import_dss
    from voltage_coordinator.feeder import read_shape

    load_day = pv_day = None
    if profiles is not None:
        try:
            load_day, pv_day = day_profiles(profiles, day, load_column, pv_column)
        except ConfigError as err:
            typer.echo(f"import-dss: {err}", err=True)
            raise typer.Exit(2) from err
    study = Study(
        load_scale=load_scale,
        pv_share=pv_share,
        source_pu=source_pu,
        pv_kw={k: float(v) for k, v in (item.split("=", 1) for item in pv or [])},
        load_profile=read_shape(load_shape) if load_shape else load_day,
        pv_profile=read_shape(pv_shape) if pv_shape else pv_day,
        interval_s=interval_s,
        areas=read_areas(areas) if areas else None,
        area_count=area_count,
        feeder_id=feeder_id,
    )
    try:
        feeder = import_dss(master, study, command or ())
    except ConfigError as err:
        typer.echo(f"import-dss: {err}", err=True)
        raise typer.Exit(2) from err
    output.write_text(feeder.to_json() + "\n")
    typer.echo(
        f"wrote {output}: {len(feeder.buses)} buses, {len(feeder.branches)} branches, "
        f"{len(feeder.pvs)} PVs = {feeder.total_pv_kw:.0f} kW, load {feeder.total_load_kw:.1f} kW, "
        f"areas {', '.join(f'{a.id}@{a.root_bus}' for a in feeder.areas)}"
    )


@app.command("plot")
def plot(
    output: Annotated[Path, typer.Option(help="PNG to write")] = Path("voltage_profile.png"),
    step: Annotated[int, typer.Option(help="step of the day")] = 58,
) -> None:
    """Plot one step offline: AC voltages without control and with the AC-checked curtailment."""
    from voltage_coordinator.acflow import AcFlow
    from voltage_coordinator.correction import settle
    from voltage_coordinator.optimizer import CentralisedSolver, StepInputs
    from voltage_coordinator.plot import plot_profiles

    settings = _settings()
    feeder = settings.load_feeder()
    solver = CentralisedSolver(
        feeder, settings.fairness, settings.group_by, settings.limits(), settings.cvx_solver
    )
    ac = AcFlow(feeder)
    load = feeder.profiles.load[step]
    avail = {pv.id: pv.rating_kw * feeder.profiles.pv[step] for pv in feeder.pvs}
    try:
        before = ac.solve(load, avail)
        fixed = settle(solver.solve, ac, feeder, solver.tree, StepInputs(load, avail))
        after = ac.solve(load, fixed.curtailment.limit_kw)
    finally:
        ac.close()
    plot_profiles(
        solver.tree.nodes,
        before.vector(solver.tree),
        after.vector(solver.tree),
        avail,
        fixed.curtailment.limit_kw,
        settings.v_max_pu,
        output,
        f"{feeder.feeder_id} step {step}: no control max {before.max_pu:.4f} pu, "
        f"coordinated max {after.max_pu:.4f} pu, curtailed {fixed.curtailment.curtailed_kw:.0f} kW",
        after_label="AC after",
    )
    typer.echo(f"wrote {output}")


def main() -> None:
    """Console script entry point."""
    app()


if __name__ == "__main__":
    main()
