"""Voltage coordinator over the IEEE 123 day: no control vs the closed loop vs the AC optimum.

Run: .venv/bin/python bench/bench_voltage_coordinator.py [--quick] [--plot PATH] [--rules-only STEP]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from derbus.messages import FeederState, utcnow
from voltage_coordinator.acflow import AcFlow, AcResult
from voltage_coordinator.admm import AdmmOptions, DistributedSolver
from voltage_coordinator.coordinator import Coordinator
from voltage_coordinator.correction import settle
from voltage_coordinator.feeder import Feeder, bundled_feeder
from voltage_coordinator.optimizer import CentralisedSolver, Limits, StepInputs
from voltage_coordinator.settings import Settings
from voltage_coordinator.sweep import SweepSolver

LIMIT = 1.05


def state_of(feeder: Feeder, step: int, ac: AcResult, avail: dict[str, float],
             out: dict[str, float]) -> FeederState:  # fmt: skip
    return FeederState(
        ts=utcnow(), source="bench", feeder_id=feeder.feeder_id, step=step, v_pu=ac.by_bus(),
        pv_available_kw=avail, pv_output_kw=out,
        load_p_kw=feeder.total_load_kw * feeder.profiles.load[step],
    )  # fmt: skip


def jain(values: list[float]) -> float:
    x = np.array(values)
    return float(x.sum() ** 2 / (len(x) * (x**2).sum())) if (x**2).sum() > 0 else 1.0


def rule_table(feeder: Feeder, step: int) -> StepInputs:
    """Print the per-rule table: centralised LP vs distributed sweep at one step."""
    load = feeder.profiles.load[step]
    avail = {pv.id: pv.rating_kw * feeder.profiles.pv[step] for pv in feeder.pvs}
    inputs = StepInputs(load, avail)
    print("\n## distributed vs centralised per fairness rule (peak step, same inputs, no bias)")
    print("| rule | centralised kW | centralised time | sweep kW | rel. gap | exchange rounds | "
          "sweep time | values exchanged |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for fair, group in [
        ("equal_fraction", "feeder"),
        ("equal_fraction", "area"),
        ("none", "feeder"),
        ("equal_kw", "feeder"),
        ("equal_kw", "area"),
    ]:
        cen_solver = CentralisedSolver(feeder, fair, group, Limits(margin_pu=0.0))  # type: ignore[arg-type]
        cen = cen_solver.solve(inputs)
        cen_t = []
        for _ in range(5):
            t0 = time.perf_counter()
            cen_solver.solve(inputs)
            cen_t.append(time.perf_counter() - t0)
        sweep = SweepSolver(feeder, Limits(margin_pu=0.0), fair, group)  # type: ignore[arg-type]
        times = []
        for _ in range(10):
            t0 = time.perf_counter()
            res = sweep.solve(inputs)
            times.append(time.perf_counter() - t0)
        gap = abs(res.curtailed_kw - cen.curtailed_kw) / cen.curtailed_kw
        print(
            f"| {fair} / {group} | {cen.curtailed_kw:.3f} | {1000 * statistics.median(cen_t):.1f} ms | "
            f"{res.curtailed_kw:.3f} | {gap:.1e} | {res.iterations} ({res.passes} passes) | "
            f"{1000 * statistics.median(times):.1f} ms | "
            f"{sweep.last_exchanged} |"
        )
    return inputs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="every 4th step, short ADMM")
    parser.add_argument("--margin-pu", type=float, default=0.0005, help="coordinator margin, pu")
    parser.add_argument(
        "--cycles", type=int, default=3, help="closed-loop cycles per step (1 = no refinement)"
    )
    # --plot "" skips the PNG
    parser.add_argument(
        "--plot", type=Path, default=Path("bench/results/voltage_coordinator_peak.png")
    )
    parser.add_argument(
        "--rules-only", type=int, default=None, metavar="STEP",
        help="only the per-rule distributed vs centralised table at this step",
    )  # fmt: skip
    args = parser.parse_args()
    feeder = bundled_feeder()
    if args.rules_only is not None:
        rule_table(feeder, args.rules_only)
        return
    ac = AcFlow(feeder)
    settings = Settings(mode="distributed", margin_pu=args.margin_pu)  # the exact boundary sweep
    coordinator = Coordinator(feeder, settings)
    reference = CentralisedSolver(feeder, limits=Limits(margin_pu=0.0))
    hours = feeder.profiles.interval_s / 3600
    steps = range(0, feeder.steps, 4 if args.quick else 1)

    rows = []
    first_cycle_over: list[int] = []
    measured_over: list[int] = []
    live_limits: dict[str, float] = {}
    cen_s, sweep_s = [], []
    for step in steps:
        load = feeder.profiles.load[step]
        avail = {pv.id: pv.rating_kw * feeder.profiles.pv[step] for pv in feeder.pvs}
        before = ac.solve(load, avail)
        # closed loop: the previous step's limits are still live (TTL) when this step's state is
        # measured; measured state -> decision -> limits applied -> next AC state (<= 3 cycles)
        held = {p: min(avail[p], live_limits.get(p, avail[p])) for p in avail}
        held_ac = ac.solve(load, held)
        state, cycles, after = state_of(feeder, step, held_ac, avail, held), 0, held_ac
        if held_ac.max_pu > LIMIT:
            measured_over.append(step)
        decision = None
        previous_cut = None
        over_in_step = 0
        max_in_step = 0.0
        while cycles < args.cycles:
            decision = coordinator.decide(state)
            sweep_s.append(decision.curtailment.solve_s)
            out = {p: min(avail[p], decision.limits_kw[p]) for p in avail}
            live_limits = dict(decision.limits_kw)
            after = ac.solve(load, out)
            cycles += 1
            state = state_of(feeder, step, after, avail, out)
            over_in_step = max(over_in_step, after.nodes_above(LIMIT))
            max_in_step = max(max_in_step, after.max_pu)
            if after.max_pu > LIMIT:
                first_cycle_over.append(step)
                continue
            cut_now = decision.curtailment.curtailed_kw
            # the service re-solves every few seconds on fresh measurements: a later cycle
            # refines the bias until the decision stops moving
            if previous_cut is not None and abs(cut_now - previous_cut) <= 1e-4 * max(cut_now, 1.0):
                break
            previous_cut = cut_now
        assert decision is not None
        t0 = time.perf_counter()
        cen = reference.solve(decision.inputs)
        cen_s.append(time.perf_counter() - t0)
        optimum = settle(reference.solve, ac, feeder, reference.tree, StepInputs(load, avail))
        optimum_ac = ac.solve(load, optimum.curtailment.limit_kw)
        cut = sum(avail[p] - min(avail[p], decision.limits_kw[p]) for p in avail)
        live = [f for p, f in decision.curtailment.fraction.items() if avail[p] > 1e-6]
        rows.append(
            dict(
                step=step, before_max=before.max_pu, before_n=before.nodes_above(LIMIT),
                after_max=max_in_step, after_n=over_in_step, cycles=cycles,
                cut_kw=cut, opt_kw=optimum.curtailment.curtailed_kw, opt_ac=optimum_ac.max_pu,
                lin_max=decision.curtailment.v_lin_max_pu, spread=(max(live) - min(live)) if live else 0.0,
                jain=jain(live) if live and max(live) > 0 else 1.0, cen_kw=cen.curtailed_kw,
                avail_kw=sum(avail.values()),
            )
        )  # fmt: skip

    over = [r for r in rows if r["before_n"] > 0]
    print(f"## IEEE 123 day ({len(rows)} steps of {feeder.profiles.interval_s} s)")
    print(
        f"| | no control | coordinator (closed loop, sweep, margin {args.margin_pu}) | AC optimum (LP + AC correction, no margin) |"
    )
    print("| --- | --- | --- | --- |")
    print(
        f"| steps with a node > {LIMIT} pu | {len(over)} | {sum(1 for r in rows if r['after_n'] > 0)} | {sum(1 for r in rows if r['opt_ac'] > LIMIT + 1e-9)} |"
    )
    print(
        f"| most nodes > {LIMIT} pu in a step | {max(r['before_n'] for r in rows)} | {max(r['after_n'] for r in rows)} | 0 |"
    )
    print(
        f"| max voltage of the day, pu (AC) | {max(r['before_max'] for r in rows):.4f} | {max(r['after_max'] for r in rows):.4f} | {max(r['opt_ac'] for r in rows):.4f} |"
    )
    scale = 4 if args.quick else 1
    e_avail = sum(r["avail_kw"] for r in rows) * hours * scale
    e_cut = sum(r["cut_kw"] for r in rows) * hours * scale
    e_opt = sum(r["opt_kw"] for r in rows) * hours * scale
    print(f"| curtailed energy, kWh (of {e_avail:.0f} available) | 0 | {e_cut:.1f} | {e_opt:.1f} |")
    print(f"\ncoordinator vs AC optimum: {100 * (e_cut - e_opt) / e_opt:+.2f} % curtailed energy")
    print(f"steps whose state under the previous step's limits was over the limit: {measured_over}")
    print(f"steps over the limit after the first cycle (fixed by the next): {first_cycle_over}")
    print(f"closed-loop cycles per step: max {max(r['cycles'] for r in rows)}, "
          f"steps needing >1: {sum(1 for r in rows if r['cycles'] > 1)}")  # fmt: skip
    print(f"fairness: max fraction spread within the feeder group {max(r['spread'] for r in rows):.2e}; "
          f"min Jain index {min(r['jain'] for r in rows):.6f}")  # fmt: skip
    print(f"max linear-model voltage of the decisions {max(r['lin_max'] for r in rows):.5f} pu "
          f"(limit - margin - measured bias)")  # fmt: skip

    peak = max(rows, key=lambda r: r["before_max"])
    step = peak["step"]
    print(f"\n## peak step {step}")
    print("| | value |\n| --- | --- |")
    for key, label in [("before_max", "AC max, no control, pu"), ("before_n", "nodes > 1.05, no control"),
                       ("after_max", "AC max, coordinator, pu"), ("lin_max", "linear max of the decision, pu"),
                       ("cut_kw", "curtailed, coordinator, kW"), ("opt_kw", "curtailed, AC optimum, kW"),
                       ("opt_ac", "AC max at the optimum, pu")]:  # fmt: skip
        v = peak[key]
        print(f"| {label} | {v:.5f} |" if isinstance(v, float) else f"| {label} | {v} |")

    inputs = rule_table(feeder, step)
    load, avail = inputs.load_mult, dict(inputs.pv_available_kw)
    iters = 40 if args.quick else 200
    for fair, group in [("equal_fraction", "feeder"), ("none", "feeder")]:
        cen = CentralisedSolver(feeder, fair, group, Limits(margin_pu=0.0)).solve(inputs)  # type: ignore[arg-type]
        admm = DistributedSolver(feeder, fair, group, limits=Limits(margin_pu=0.0),  # type: ignore[arg-type]
                                 options=AdmmOptions(rho=10, mu=1e9, v_scale=10, max_iterations=iters))  # fmt: skip
        res, rep = admm.solve(inputs, warm=False)
        print(
            f"| ADMM (comparison) {fair} / {group} | {cen.curtailed_kw:.3f} | — | {res.curtailed_kw:.3f} | "
            f"{abs(res.curtailed_kw - cen.curtailed_kw) / cen.curtailed_kw:.1e} | {rep.iterations} iterations "
            f"(converged: {rep.converged}) | {rep.wall_s:.2f} s total, {rep.max_area_s:.2f} s critical path | — |"
        )

    if str(args.plot) not in ("", "."):
        from voltage_coordinator.plot import plot_profiles

        before = ac.solve(load, avail)
        fixed = settle(reference.solve, ac, feeder, reference.tree, inputs)
        fixed_ac = ac.solve(load, fixed.curtailment.limit_kw)
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        plot_profiles(
            reference.tree.nodes, before.vector(reference.tree), fixed_ac.vector(reference.tree),
            avail, fixed.curtailment.limit_kw, LIMIT, args.plot,
            f"IEEE 123 step {step}: no control {before.max_pu:.4f} pu -> {fixed_ac.max_pu:.4f} pu, "
            f"curtailed {fixed.curtailment.curtailed_kw:.0f} kW", after_label="AC after",
        )  # fmt: skip
        print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    main()
