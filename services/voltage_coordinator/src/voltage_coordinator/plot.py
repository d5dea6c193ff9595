"""PNG plots (matplotlib, Agg): voltage profile before/after and the curtailment per PV."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from derbus.messages import FeederState
from voltage_coordinator.coordinator import Decision
from voltage_coordinator.feeder import Feeder
from voltage_coordinator.network import FloatArray, Tree


def plot_profiles(
    nodes: Sequence[tuple[str, int]],
    v_before_pu: FloatArray,
    v_after_pu: FloatArray,
    available_kw: Mapping[str, float],
    limit_kw: Mapping[str, float],
    v_max_pu: float,
    out: Path | IO[bytes],
    title: str,
    after_label: str = "after",
) -> None:
    """Write the two-panel PNG: node voltages per phase, and available vs allowed PV power."""
    fig, (ax_v, ax_pv) = plt.subplots(2, 1, figsize=(12, 8), constrained_layout=True)
    x = np.arange(len(nodes))
    phases = np.array([k for _, k in nodes])
    for k, colour in zip(range(3), ("tab:red", "tab:green", "tab:blue"), strict=True):
        sel = phases == k
        ax_v.scatter(
            x[sel], v_before_pu[sel], s=8, c=colour, alpha=0.35, label=f"before {'abc'[k]}"
        )
        ax_v.scatter(
            x[sel], v_after_pu[sel], s=10, c=colour, marker="x", label=f"{after_label} {'abc'[k]}"
        )
    ax_v.axhline(v_max_pu, color="k", linestyle="--", linewidth=1, label=f"limit {v_max_pu} pu")
    ax_v.set_xlabel("node (bus.phase, from the source outwards)")
    ax_v.set_ylabel("voltage, pu")
    ax_v.set_title(title)
    ax_v.legend(ncol=4, fontsize=8)
    ids = list(available_kw)
    avail = np.array([available_kw[i] for i in ids])
    allowed = np.array([min(limit_kw.get(i, available_kw[i]), available_kw[i]) for i in ids])
    xi = np.arange(len(ids))
    ax_pv.bar(xi, avail, color="0.8", label="available")
    ax_pv.bar(xi, allowed, color="tab:orange", label="allowed (after curtailment)")
    ax_pv.set_xticks(xi, ids, rotation=90, fontsize=6)
    ax_pv.set_ylabel("PV power, kW")
    ax_pv.legend(fontsize=8)
    fig.savefig(out, format="png", dpi=90)
    plt.close(fig)


def plot_decision(
    feeder: Feeder, tree: Tree, before: FeederState, decision: Decision, out: Path | IO[bytes]
) -> None:
    """Plot a coordinator decision: measured profile, predicted profile, limits per PV."""
    measured = np.array(
        [(before.v_pu.get(bus) or [None, None, None])[k] or np.nan for bus, k in tree.nodes]
    )
    plot_profiles(
        tree.nodes,
        measured,
        decision.predicted_pu,
        decision.curtailment.available_kw,
        decision.limits_kw,
        1.05,
        out,
        f"{feeder.feeder_id} step {decision.step}: {decision.method}",
        after_label="predicted",
    )


def plot_day(
    hours: Sequence[float],
    v_none_pu: Sequence[float],
    v_after_pu: Sequence[float],
    available_kw: Sequence[float],
    curtailed_kw: Sequence[float],
    v_max_pu: float,
    out: Path | IO[bytes],
    title: str,
) -> None:
    """Write the day PNG: highest node voltage without and with control, and the curtailment."""
    fig, (ax_v, ax_p) = plt.subplots(2, 1, figsize=(11, 7), sharex=True, constrained_layout=True)
    ax_v.plot(hours, v_none_pu, color="0.5", label="no control")
    ax_v.plot(hours, v_after_pu, color="tab:blue", label="coordinator (after each decision)")
    ax_v.axhline(v_max_pu, color="k", linestyle="--", linewidth=1, label=f"limit {v_max_pu} pu")
    ax_v.set_ylabel("highest node voltage, pu (AC)")
    ax_v.set_title(title)
    ax_v.legend(fontsize=8)
    ax_p.fill_between(hours, available_kw, color="0.85", label="PV available")
    ax_p.fill_between(hours, curtailed_kw, color="tab:orange", label="curtailed")
    ax_p.set_xlabel("hour of the day")
    ax_p.set_ylabel("kW")
    ax_p.legend(fontsize=8)
    fig.savefig(out, format="png", dpi=90)
    plt.close(fig)
