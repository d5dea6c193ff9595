"""The evaluation report: Markdown tables and a PNG of forecast vs actual with its 80 % band."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from forecaster.evaluation import BacktestResult, summary_rows

PLOT = "backtest.png"
REPORT = "report.md"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def plot(result: BacktestResult, model: str, path: Path, days: int = 7) -> Path:
    """Forecast (P50) vs actual with the P10-P90 band over the last `days` of the backtest."""
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    frame = result.predictions[result.predictions["model"] == model].sort_values("time")
    end = frame["time"].max()
    frame = frame[frame["time"] > end - pd.Timedelta(days=days)]
    fig, ax = plt.subplots(figsize=(11, 3.8), dpi=100)
    ax.fill_between(
        frame["time"], frame["p10"], frame["p90"], color="tab:blue", alpha=0.25, label="P10-P90"
    )
    ax.plot(frame["time"], frame["p50"], color="tab:blue", linewidth=1.2, label=f"{model} P50")
    ax.plot(frame["time"], frame["actual"], color="black", linewidth=0.9, label="actual")
    ax.set_ylabel("kW")
    ax.set_title(f"{result.target}: day-ahead forecast vs actual (last {days} days of backtest)")
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def markdown(
    result: BacktestResult,
    *,
    site_id: str,
    model: str,
    promoted: bool,
    reason: str,
    training: dict[str, Any],
) -> str:
    """The report text."""
    every = result.issue_every * 15
    ref = result.reference
    day = "daylight " if result.solar else ""
    cov = "coverage_80_daylight" if result.solar else "coverage_80"
    lines = [
        f"# {site_id} / {result.target}: evaluation",
        "",
        f"Rolling-origin backtest of the issued forecasts (an issue every {every} min, 96 "
        f"intervals ahead, each reading only what was measured before it), folds {result.folds}.",
        f"Training window: {training.get('start')} .. {training.get('end')} "
        f"({training.get('rows')} intervals).",
        "",
        f"Served: **{model}**; promoted: **{'yes' if promoted else 'no'}** ({reason}).",
        f"Choice: the point forecast (P50) by MAE, the band (P10/P90) by its pinball loss; "
        f"skill is measured against `{ref}`"
        + (
            " (PV: the 1-day seasonal naive)."
            if result.solar
            else " (the better of the 1-day and 7-day seasonal naive)."
        ),
        "",
        "| model | MAE kW | RMSE kW | nMAE | skill vs the better seasonal naive | skill vs "
        "persistence | pinball | 80 % coverage | 80 % coverage, daylight | 80 % width kW "
        "| day-ahead (00:00 UTC) skill | n |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in summary_rows(result):
        m = str(row["model"])
        lines.append(
            f"| {m} | {_fmt(row['mae'])} | {_fmt(row['rmse'])} | {_fmt(row['nmae'])} "
            f"| {_fmt(row['skill'])} | {_fmt(row['skill_persistence'])} "
            f"| {_fmt(row['pinball'])} | {_fmt(row['coverage_80'])} "
            f"| {_fmt(row.get('coverage_80_daylight', '–'))} | {_fmt(row['width_80'])} "
            f"| {_fmt(result.day_ahead.get(m, {}).get('skill', float('nan')))} | {int(row['n'])} |"
        )
    lines += [
        "",
        f"## {model} by horizon group",
        "",
        f"| horizon | MAE kW | skill vs {ref} | skill vs persistence of the last 15 min "
        f"| 80 % {day}coverage | 80 % width kW | pinball |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for group, values in result.by_group.get(model, {}).items():
        lines.append(
            f"| {group} | {_fmt(values['mae'])} | {_fmt(values['skill'])} "
            f"| {_fmt(values['skill_last_15min'])} | {_fmt(values.get(cov, float('nan')))} "
            f"| {_fmt(values['width_80'])} | {_fmt(values['pinball'])} |"
        )
    lines += [
        "",
        f"## {model} by hour ahead",
        "",
        "| horizon h | MAE kW | nMAE | skill | 80 % coverage | 80 % coverage, daylight | pinball |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in result.by_horizon_h.get(model, []):
        lines.append(
            f"| {int(row['horizon_h'])}-{int(row['horizon_h']) + 1} | {_fmt(row['mae'])} "
            f"| {_fmt(row['nmae'])} | {_fmt(row['skill'])} | {_fmt(row['coverage_80'])} "
            f"| {_fmt(row.get('coverage_80_daylight', '–'))} | {_fmt(row['pinball'])} |"
        )
    lines += ["", f"![forecast vs actual]({PLOT})", ""]
    return "\n".join(lines)


def write_report(
    folder: Path,
    result: BacktestResult,
    *,
    site_id: str,
    model: str,
    promoted: bool,
    reason: str,
    training: dict[str, Any],
) -> Path:
    """Write `report.md` and `backtest.png` into a folder (the model's version folder)."""
    folder.mkdir(parents=True, exist_ok=True)
    plot(result, model, folder / PLOT)
    path = folder / REPORT
    path.write_text(
        markdown(
            result,
            site_id=site_id,
            model=model,
            promoted=promoted,
            reason=reason,
            training=training,
        )
    )
    return path
