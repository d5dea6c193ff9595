"""Command line of the edge simulator: continuous service, once, scheduled, historical backfill."""

from __future__ import annotations

import json
import sys
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

from derbus.bus import make_bus
from derbus.errors import ConfigError
from derbus.runner import serve
from derbus.settings import InfluxSettings, given, load_settings_or_exit
from edge_simulator.output import StepView
from edge_simulator.service import build_service
from edge_simulator.settings import Settings
from edge_simulator.sim_config import SimConfig, dump_sim_config
from edge_simulator.simulator import SERVICE_NAME, build_fleet, resolve_config

app = typer.Typer(add_completion=False, help="Simulated DER sites on the bus and over Modbus TCP.")


def _parse_day(value: str, option: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as err:
        raise typer.BadParameter(f"{option}: not an ISO date/time: {value!r}") from err
    if isinstance(parsed, date) and len(value) <= 10:
        parsed = datetime.combine(parsed.date(), time(0))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


@app.command()
def cli(
    once: Annotated[
        bool, typer.Option("--once", help="one step of every site, printed as JSON")
    ] = False,
    continuous: Annotated[
        bool, typer.Option("--continuous", help="run as a service (default)")
    ] = False,
    scheduled: Annotated[
        bool,
        typer.Option("--scheduled", help="continuous, aligned to clock multiples of --interval"),
    ] = False,
    historical: Annotated[
        bool, typer.Option("--historical", help="backfill --start..--end into --output")
    ] = False,
    generate_config: Annotated[
        bool, typer.Option("--generate-config", help="write the default model config to --config")
    ] = False,
    interval: Annotated[
        float | None, typer.Option("--interval", help="seconds between steps")
    ] = None,
    start: Annotated[
        str | None, typer.Option("--start", help="historical/simulated start (ISO date)")
    ] = None,
    end: Annotated[
        str | None, typer.Option("--end", help="historical end (ISO date, exclusive)")
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", help="JSONL file for --historical")
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="model configuration (YAML/JSON)")
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="run seed")] = None,
    sites: Annotated[int | None, typer.Option("--sites", help="number of sites")] = None,
    speed: Annotated[
        float | None, typer.Option("--speed", help="simulated seconds per wall second")
    ] = None,
    replay: Annotated[
        Path | None, typer.Option("--replay", help="CSV profile file to replay")
    ] = None,
    replay_load_column: Annotated[str | None, typer.Option("--replay-load-column")] = None,
    replay_pv_column: Annotated[str | None, typer.Option("--replay-pv-column")] = None,
    modbus_port: Annotated[
        int | None, typer.Option("--modbus-port", help="serve SunSpec Modbus TCP")
    ] = None,
    devices: Annotated[
        str | None,
        typer.Option(
            "--devices",
            help="devices published per site, comma-separated (default all: pcc,pv,battery,load,ev,load1,load2,grid)",
        ),
    ] = None,
    enable_influxdb: Annotated[
        bool, typer.Option("--enable-influxdb", help="also write InfluxDB")
    ] = False,
    influxdb_url: Annotated[str | None, typer.Option("--influxdb-url")] = None,
    influxdb_token: Annotated[str | None, typer.Option("--influxdb-token")] = None,
    influxdb_org: Annotated[str | None, typer.Option("--influxdb-org")] = None,
    influxdb_bucket: Annotated[str | None, typer.Option("--influxdb-bucket")] = None,
    shards: Annotated[
        int | None,
        typer.Option(
            "--shards",
            help="run the fleet as N processes, each a shard of the sites (0 = one per core)",
            min=0,
        ),
    ] = None,
) -> None:
    """Run the simulator. Without a mode it runs continuously (1 site, 1 s) with its API."""
    modes = [once, continuous, scheduled, historical, generate_config]
    if sum(modes) > 1:
        _fail("choose one of --once, --continuous, --scheduled, --historical, --generate-config")
    if generate_config:
        if config is None:
            _fail("--generate-config needs --config FILE")
        assert config is not None
        dump_sim_config(SimConfig(), config)
        typer.echo(f"wrote {config}")
        return
    overrides = given(
        interval_s=interval,
        seed=seed,
        sites=sites,
        speed=speed,
        config_file=config,
        replay_file=replay,
        replay_load_column=replay_load_column,
        replay_pv_column=replay_pv_column,
        modbus_port=modbus_port,
        devices=devices,
    )
    if scheduled:
        overrides["align_to_clock"] = True
    if start is not None and not historical:
        overrides["start_time"] = _parse_day(start, "--start")
    influx = {
        k: v
        for k, v in (
            ("url", influxdb_url),
            ("token", influxdb_token),
            ("org", influxdb_org),
            ("bucket", influxdb_bucket),
        )
        if v
    }
    if enable_influxdb:
        overrides["enable_influxdb"] = True
    if influx:  # flags over the INFLUXDB_* environment
        overrides["influxdb"] = InfluxSettings.model_validate(
            {**InfluxSettings().model_dump(), **influx}
        )
    settings = load_settings_or_exit(Settings, **overrides)
    try:
        sim_config = resolve_config(settings)
    except ConfigError as err:
        _fail(str(err))
        return
    if shards is not None and not (once or historical):
        _run_shards(settings, shards)
    elif once:
        _run_once(settings, sim_config)
    elif historical:
        if start is None or end is None or output is None:
            _fail("--historical needs --start, --end and --output")
        assert start is not None
        assert end is not None
        assert output is not None
        _run_historical(
            settings, sim_config, _parse_day(start, "--start"), _parse_day(end, "--end"), output
        )
    else:
        serve(
            build_service(
                settings,
                make_bus(settings.mqtt, "edge_simulator", site_id=settings.site.id),
                config=sim_config,
            )
        )


def _without(argv: list[str], options: tuple[str, ...]) -> list[str]:
    """`argv` without the given options and their values (`--opt v` or `--opt=v`)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in options:
            skip = True
        elif not arg.startswith(tuple(f"{o}=" for o in options)):
            out.append(arg)
    return out


def _run_shards(settings: Settings, shards: int) -> None:
    """Run the fleet as `shards` processes of `python -m edge_simulator`, each simulating its
    slice of the sites (`EDGE_SIMULATOR_FIRST_SITE`, `EDGE_SIMULATOR_SITES`) with its own MQTT session
    (`MQTT_REPLICA`) and API port; stops them on SIGTERM/SIGINT, exits with the worst status.

    Each shard's bus applies back-pressure on its own (`MQTT_MAX_QUEUED`): a shard publishing
    faster than the broker acknowledges waits instead of dropping.
    """
    import os
    import signal
    import subprocess

    if settings.modbus_port is not None:
        _fail("--shards serves no Modbus (one server per process): drop --modbus-port")
    n = min(shards or os.cpu_count() or 1, settings.sites)
    base, extra = divmod(settings.sites, n)
    argv = _without(sys.argv[1:], ("--shards", "--sites"))
    fixed_id = settings.mqtt.client_id
    procs: list[subprocess.Popen[bytes]] = []
    first = 0
    for k in range(n):
        count = base + (1 if k < extra else 0)
        env = {
            **os.environ,
            "EDGE_SIMULATOR_SITES": str(count),
            "EDGE_SIMULATOR_FIRST_SITE": str(first),
            "MQTT_REPLICA": f"shard{k}",
            "EDGE_SIMULATOR_API_PORT": str(settings.api_port + k if settings.api_port else 0),
        }
        if fixed_id:
            env["MQTT_CLIENT_ID"] = f"{fixed_id}-shard{k}"
        procs.append(subprocess.Popen([sys.executable, "-m", "edge_simulator", *argv], env=env))
        typer.echo(f"shard {k}: sites {first + 1}..{first + count} (pid {procs[-1].pid})", err=True)
        first += count

    stopping: list[bool] = []

    def stop(*_: Any) -> None:
        stopping.append(True)
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    codes = [proc.wait() for proc in procs]
    # a shard ended by the SIGTERM passed on stopped as asked
    codes = [0 if stopping and c == -signal.SIGTERM else c for c in codes]
    raise typer.Exit(max(abs(c) for c in codes))


def _run_once(settings: Settings, config: SimConfig) -> None:
    now = settings.start_time or datetime.now(UTC)
    fleet = build_fleet(settings, config, now - timedelta(seconds=settings.interval_s))
    view = StepView(fleet.step(now, settings.interval_s))
    records = [view.record(i, sid) for i, sid in enumerate(fleet.ids)]
    for rec in records:
        sys.stdout.write(json.dumps(rec) + "\n")
    if settings.enable_influxdb:
        _write_influx(settings, [view], fleet.ids)


def _write_influx(settings: Settings, views: list[StepView], ids: list[str]) -> None:
    from derbus.topics import TopicIds
    from edge_simulator.influx import InfluxWriter

    writer = InfluxWriter(settings.influxdb)
    try:
        items = [
            (o.spec, TopicIds(sid, o.device_id), o.message)
            for v in views
            for i, sid in enumerate(ids)
            for o in v.messages(i, SERVICE_NAME)
        ]
        writer.write(items)
    finally:
        writer.close()


def _run_historical(
    settings: Settings, config: SimConfig, start: datetime, end: datetime, output: Path
) -> None:
    from rich.progress import Progress

    from edge_simulator.historical import backfill

    if end <= start:
        _fail("--end must be after --start")
    total = int((end - start).total_seconds() // settings.interval_s)
    with Progress(transient=False) as progress, output.open("w") as fh:
        task = progress.add_task("backfill", total=total)
        written = backfill(
            settings,
            config,
            start,
            end,
            fh,
            on_progress=lambda done: progress.update(task, completed=done),
        )
    typer.echo(f"wrote {written} records to {output}", err=True)


def main() -> None:
    """Console script entry point."""
    app()


if __name__ == "__main__":
    main()
