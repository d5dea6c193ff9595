"""`cloud-sync`: run the service (default), drain once, show the backlog, migrate, import history."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from cloud_sync.backlog import status_table
from cloud_sync.importer import detect_format, import_file
from cloud_sync.outbox import Outbox
from cloud_sync.service import build_service
from cloud_sync.settings import Settings
from cloud_sync.state import make_forwarder, offline_snapshot, open_cloud_store
from derbus.bus import make_bus
from derbus.errors import ConfigError, StorageError
from derbus.logging import configure_logging
from derbus.messages import utcnow
from derbus.runner import serve
from derbus.settings import DatabaseSettings, given, load_settings_or_exit

app = typer.Typer(
    help="Telemetry into InfluxDB and, through a durable outbox, into Supabase/Postgres.",
    add_completion=False,
)


def _overrides(**options: Any) -> dict[str, Any]:
    """CLI options as settings overrides (only those given)."""
    out = given(**options)
    if "database_url" in out:
        out["database"] = DatabaseSettings(database_url=out.pop("database_url"))
    return out


@app.callback(invoke_without_command=True)
def main_command(
    ctx: typer.Context,
    once: Annotated[
        bool, typer.Option("--once", help="drain the outbox to the cloud database and exit")
    ] = False,
    continuous: Annotated[
        bool, typer.Option("--continuous", help="run the service (the default)")
    ] = False,
    status: Annotated[
        bool, typer.Option("--status", help="print the backlog table and exit")
    ] = False,
    interval: Annotated[
        float | None, typer.Option("--interval", help="seconds between forwarding passes")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", help="readings per batch")
    ] = None,
    database_url: Annotated[
        str | None, typer.Option("--database-url", help="postgresql://… or sqlite:///…")
    ] = None,
    influxdb_url: Annotated[str | None, typer.Option("--influxdb-url", help="InfluxDB URL")] = None,
    influxdb_token: Annotated[
        str | None, typer.Option("--influxdb-token", help="InfluxDB token")
    ] = None,
    influxdb_org: Annotated[
        str | None, typer.Option("--influxdb-org", help="InfluxDB organisation")
    ] = None,
    influxdb_bucket: Annotated[
        str | None, typer.Option("--influxdb-bucket", help="InfluxDB bucket")
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="folder of the outbox")
    ] = None,
    api_port: Annotated[int | None, typer.Option("--api-port", help="API port")] = None,
) -> None:
    """Run cloud_sync (subscribe, outbox, forward every --interval s) unless told otherwise."""
    overrides = _overrides(
        interval_s=interval,
        batch_size=batch_size,
        database_url=database_url,
        influxdb_url=influxdb_url,
        influxdb_token=influxdb_token,
        influxdb_org=influxdb_org,
        influxdb_bucket=influxdb_bucket,
        data_dir=data_dir,
        api_port=api_port,
    )
    ctx.obj = overrides
    if ctx.invoked_subcommand is not None:
        return
    if sum((once, continuous, status)) > 1:
        raise typer.BadParameter("choose one of --once, --continuous, --status")
    settings = load_settings_or_exit(Settings, **overrides)
    if status:
        raise typer.Exit(show_status(settings))
    if once:
        raise typer.Exit(drain_once(settings))
    bus = make_bus(settings.mqtt, "cloud_sync", client_id=settings.client_id, manual_ack=True)
    serve(build_service(settings, bus))


@app.command("migrate")
def migrate_command(ctx: typer.Context) -> None:
    """Apply the cloud database schema (deploy/postgres on Postgres; the same table on SQLite)."""
    settings = load_settings_or_exit(Settings, **(ctx.obj or {}))
    configure_logging(settings.log_level, "cloud_sync")
    try:
        store = open_cloud_store(settings)
        applied = store.migrate()
    except (ConfigError, StorageError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from err
    typer.echo(
        f"{store.description}: applied {', '.join(applied) if applied else 'nothing (up to date)'}"
    )
    store.close()


@app.command("import")
def import_command(
    ctx: typer.Context,
    file: Annotated[
        Path, typer.Argument(help="--historical JSONL of the edge simulator, or a CSV")
    ],
    file_format: Annotated[
        str | None, typer.Option("--format", help="jsonl or csv (default: from the file name)")
    ] = None,
    site_id: Annotated[
        str | None, typer.Option("--site-id", help="CSV: the site of the readings")
    ] = None,
    device_id: Annotated[
        str, typer.Option("--device-id", help="CSV: the device of the readings")
    ] = "profile",
    timezone: Annotated[
        str, typer.Option("--timezone", help="CSV: zone of naive times (e.g. Europe/Berlin)")
    ] = "UTC",
) -> None:
    """Load a history file into the cloud database (idempotent: run it again, nothing doubles)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    settings = load_settings_or_exit(Settings, **(ctx.obj or {}))
    configure_logging(settings.log_level, "cloud_sync")
    if not file.is_file():
        typer.echo(f"error: no file {file}", err=True)
        raise typer.Exit(2)
    fmt = file_format or detect_format(file)
    if fmt not in ("jsonl", "csv"):
        typer.echo(f"error: --format must be jsonl or csv, not {fmt}", err=True)
        raise typer.Exit(2)
    started = time.perf_counter()
    try:
        store = open_cloud_store(settings)
        store.migrate()
        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            TextColumn("{task.completed:,.0f} / {task.total:,.0f} {task.fields[unit]}"),
            TimeRemainingColumn(),
            transient=False,
        ) as bar:
            task = bar.add_task(f"read {file.name}", total=file.stat().st_size, unit="bytes")
            months = None

            def stored(done: int, total: int) -> None:
                nonlocal months
                if months is None:
                    months = bar.add_task("store by month", total=total, unit="months")
                bar.update(months, completed=done)

            result = import_file(
                store,
                file,
                file_format=fmt,  # type: ignore[arg-type]
                site_id=site_id,
                device_id=device_id,
                timezone=timezone,
                on_progress=lambda done: bar.update(task, completed=done),
                on_stored=stored,
            )
        store.close()
    except (ConfigError, StorageError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from err
    seconds = time.perf_counter() - started
    new = "" if result.stored < 0 else f", {result.stored:,} new"
    typer.echo(
        f"imported {result.records:,} records = {result.readings:,} readings{new} into "
        f"{store.description} in {seconds:.1f} s ({result.readings / max(seconds, 1e-9):,.0f}/s)"
    )
    if result.repeated:
        typer.echo(f"{result.repeated:,} rows of a repeated wall-clock hour (DST) kept once")
    if result.skipped:
        typer.echo(f"{result.skipped:,} lines skipped:", err=True)
        for problem in result.problems:
            typer.echo(f"  {problem}", err=True)
        raise typer.Exit(3)


def show_status(settings: Settings) -> int:
    """Print the backlog of the outbox in `settings.data_dir`; 0, or 1 when it cannot be read."""
    path = settings.outbox_path
    if not path.exists():
        typer.echo(f"no outbox at {path} (cloud_sync has not run with this data folder)")
        return 0
    try:
        outbox = Outbox(path)
        snap = offline_snapshot(outbox, settings)
        outbox.close()
    except StorageError as err:
        typer.echo(f"error: {err}", err=True)
        return 1
    typer.echo(f"outbox: {path}")
    typer.echo(status_table(snap, utcnow()))
    return 0


def drain_once(settings: Settings) -> int:
    """Forward the whole outbox; 0 when empty at the end, 1 when a batch failed (it stays)."""
    configure_logging(settings.log_level, "cloud_sync")
    try:
        outbox = Outbox(settings.outbox_path)
        store = open_cloud_store(settings)
        forwarder = make_forwarder(lambda: settings, outbox, store)
        result = forwarder.drain()
        snap = offline_snapshot(outbox, settings)
    except (ConfigError, StorageError) as err:
        typer.echo(f"error: {err}", err=True)
        return 1
    typer.echo(
        f"forwarded {result.rows:,} readings in {result.batches} batches to {store.description}"
    )
    typer.echo(status_table(snap, utcnow()))
    store.close()
    outbox.close()
    if result.error:
        typer.echo(f"error: {result.error}", err=True)
        return 1
    return 0


def main() -> None:
    """Console script entry point (`cloud-sync`)."""
    app(prog_name="cloud-sync")


if __name__ == "__main__":
    main()
