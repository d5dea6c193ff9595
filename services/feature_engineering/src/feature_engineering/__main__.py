"""Command line: serve (default / --continuous), one pass (--once) or the table status (--status)."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from derbus.bus import make_bus
from derbus.errors import DerbusError
from derbus.logging import configure_logging
from derbus.messages import utcnow
from derbus.runner import serve
from derbus.settings import given, load_settings_or_exit
from derbus.storage import guarded
from feature_engineering.pipeline import FeatureStore
from feature_engineering.service import build_service
from feature_engineering.settings import Settings
from feature_engineering.state import run_pass, summary

cli = typer.Typer(add_completion=False, help="derbus feature_engineering: readings -> features")


def _print_status(rows: list[dict[str, Any]], console: Console) -> None:
    table = Table(title="feature table")
    for col in (
        "site_id",
        "rows",
        "first",
        "last",
        "load_missing_rows",
        "load_filled_rows",
        "behind_readings_s",
    ):
        table.add_column(col)
    for r in rows:
        table.add_row(*(str(v) for v in r.values()))
    console.print(table)


@cli.command()
def run(
    once: Annotated[bool, typer.Option("--once", help="run one incremental pass and exit")] = False,
    continuous: Annotated[
        bool, typer.Option("--continuous", help="serve, computing every --interval seconds")
    ] = False,
    interval: Annotated[
        float | None,
        typer.Option("--interval", help="seconds between passes (FEATURE_ENGINEERING_INTERVAL_S)"),
    ] = None,
    status: Annotated[
        bool, typer.Option("--status", help="print the table status and exit")
    ] = False,
    lookback_days: Annotated[
        float | None, typer.Option("--lookback-days", help="first pass starts N days back")
    ] = None,
    site_id: Annotated[str | None, typer.Option("--site-id", help="only this site")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """With no option: run the service (API + periodic passes) on embedded defaults."""
    settings = load_settings_or_exit(
        Settings, **given(interval_s=interval, lookback_days=lookback_days, site_id=site_id)
    )
    if once or status:
        configure_logging(settings.log_level, "feature_engineering")
        sys.exit(_one_shot(settings, once=once, as_json=as_json))
    del continuous  # serving is continuous
    serve(
        build_service(
            settings, make_bus(settings.mqtt, "feature_engineering", site_id=settings.site.id)
        )
    )


def _one_shot(settings: Settings, *, once: bool, as_json: bool) -> int:
    console = Console(stderr=not as_json)
    if settings.database.database_url is None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = FeatureStore(settings.database.sqlalchemy_url(settings.data_dir))
    try:
        guarded(store.ensure_schema)
        if once:
            with Progress(
                TextColumn("features"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=console,
                disable=as_json or not console.is_terminal,
            ) as bar:
                task = bar.add_task("features", total=None)
                results = guarded(
                    run_pass, store, settings, utcnow(), lambda n: bar.advance(task, n)
                )
            done = summary(results)
            if as_json:
                print(json.dumps(done))
            else:
                for r in done:
                    console.print(f"{r['site_id']}: {r['rows']} rows [{r['start']} .. {r['end']})")
        rows = guarded(store.status)
        if as_json and not once:
            print(json.dumps(rows))
        elif not as_json:
            _print_status(rows, console)
    except DerbusError as err:
        console.print(f"error: {err}")
        return 1
    finally:
        store.dispose()
    return 0


def main() -> None:
    """Console script `feature-engineering`."""
    cli()


if __name__ == "__main__":
    main()
