"""Command line: serve (default), --train, --evaluate, --status; --model-dir for the registry."""

from __future__ import annotations

import json
import sys
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from derbus import features as fx
from derbus.bus import make_bus
from derbus.errors import DerbusError
from derbus.logging import configure_logging
from derbus.messages import utcnow
from derbus.runner import serve
from derbus.settings import given, load_settings_or_exit
from derbus.storage import guarded
from forecaster.batch import (
    accuracy_status,
    outcome_json,
    registry_status,
    site_ids,
    train_all,
    train_config,
)
from forecaster.catalogue import TARGETS
from forecaster.registry import Registry
from forecaster.service import build_service
from forecaster.settings import Settings
from forecaster.store import ForecastStore

cli = typer.Typer(add_completion=False, help="derbus forecaster: day-ahead load and PV forecasts")


def _table(title: str, rows: list[dict[str, Any]], console: Console) -> None:
    table = Table(title=title)
    if not rows:
        console.print(f"{title}: none")
        return
    for col in rows[0]:
        table.add_column(str(col))
    for r in rows:
        table.add_row(*(f"{v:.3f}" if isinstance(v, float) else str(v) for v in r.values()))
    console.print(table)


@cli.command()
def run(
    train: Annotated[bool, typer.Option("--train", help="train, register, promote; exit")] = False,
    evaluate_: Annotated[
        bool, typer.Option("--evaluate", help="backtest and write the report only; exit")
    ] = False,
    status: Annotated[bool, typer.Option("--status", help="print the registry and exit")] = False,
    model_dir: Annotated[
        Path | None, typer.Option("--model-dir", help="model registry (FORECASTER_MODEL_DIR)")
    ] = None,
    site_id: Annotated[str | None, typer.Option("--site-id", help="only this site")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """With no option: run the service (API, forecasts every 15 min, scheduled retraining)."""
    settings = load_settings_or_exit(
        Settings, **given(model_dir=model_dir, site_ids=None if site_id is None else [site_id])
    )
    if train or evaluate_ or status:
        configure_logging(settings.log_level, "forecaster")
        sys.exit(
            _one_shot(
                settings, train=train, evaluate_only=evaluate_, status=status, as_json=as_json
            )
        )
    serve(build_service(settings, make_bus(settings.mqtt, "forecaster", site_id=settings.site.id)))


def _one_shot(
    settings: Settings, *, train: bool, evaluate_only: bool, status: bool, as_json: bool
) -> int:
    console = Console(stderr=as_json)
    if settings.database.database_url is None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = ForecastStore(settings.database.sqlalchemy_url(settings.data_dir))
    registry = Registry(settings.registry_dir)
    out: dict[str, Any] = {}
    try:
        guarded(store.ensure_schema)
        with Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=console,
            disable=not console.is_terminal,
        ) as bar:
            task = bar.add_task("forecaster", total=None)

            def progress(label: str) -> None:
                bar.update(task, description=label)

            if train:
                outcomes = guarded(train_all, settings, store, registry, utcnow(), False, progress)
                out["trained"] = [outcome_json(o) for o in outcomes]
            if evaluate_only:
                out["evaluated"] = _evaluate(settings, store, registry, progress)
        out["models"] = registry_status(registry)
        if status:
            out["issued_accuracy"] = guarded(accuracy_status, settings, store, utcnow())
    except DerbusError as err:
        console.print(f"error: {err}")
        return 1
    finally:
        store.dispose()
    if as_json:
        print(json.dumps(out, default=str))
        return 0
    for o in out.get("trained", []):
        console.print(
            f"{o['site_id']}/{o['target']}: {o['version']} {o['model']} "
            f"promoted={o['promoted']} ({o['reason']})"
        )
    for e in out.get("evaluated", []):
        title = f"{e['site_id']}/{e['target']} backtest, skill vs {e['reference']} ({e['report']})"
        _table(title, e["rows"], console)
    _table("model registry", out["models"], console)
    if "issued_accuracy" in out:
        _table(
            f"issued forecasts, last {settings.accuracy_days:g} days",
            out["issued_accuracy"],
            console,
        )
    return 0


def _evaluate(
    settings: Settings, store: ForecastStore, registry: Registry, progress: Any
) -> list[dict[str, Any]]:
    from forecaster.evaluation import summary_rows
    from forecaster.report import write_report
    from forecaster.serving import issue_time_of
    from forecaster.training import enough_history, evaluate

    site = fx.SiteContext.of(settings.site)
    end = issue_time_of(utcnow()).to_pydatetime()
    start = end - timedelta(days=settings.train_history_days)
    done = []
    for site_id in site_ids(settings, store):
        for name in settings.targets:
            target = TARGETS[name]
            history = store.history(site_id, target.column, start, end)
            if history.notna().any():
                history = history.loc[history.first_valid_index() :]
            if not enough_history(history, settings.min_train_days):
                continue
            result = evaluate(history, site, target, train_config(settings), progress)
            best = result.best_learned()
            folder = registry.folder(site_id, name) / "evaluation"
            report = write_report(
                folder,
                result,
                site_id=site_id,
                model=best,
                promoted=result.beats_seasonal_naive(best),
                reason="evaluation only",
                training={
                    "start": history.index[0],
                    "end": history.index[-1],
                    "rows": len(history),
                },
            )
            keep = (
                "model",
                "mae",
                "skill",
                "skill_persistence",
                "pinball",
                "coverage_80",
                "coverage_80_daylight",
                "width_80",
            )
            rows = [{k: r[k] for k in keep if k in r} for r in summary_rows(result)]
            done.append(
                {
                    "site_id": site_id,
                    "target": name,
                    "report": str(report),
                    "reference": result.reference,
                    "rows": rows,
                }
            )
    return done


def main() -> None:
    """Console script `forecaster`."""
    cli()


if __name__ == "__main__":
    main()
