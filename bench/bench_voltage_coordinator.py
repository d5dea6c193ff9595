"""Voltage coordinator over a high-PV day on IEEE 13, 34 and 123 (JSON and OpenDSS), per rule.

For every feeder and fairness rule: steps with a node above 1.05 pu in the AC flow without
control, after the coordinator's decision in the closed loop (the previous step's limits still
live when the step is measured), and after the first decision from a cold start (measured with
no limit in force); the curtailed energy against the AC-optimal reference of the same rule;
exchange rounds, bias rounds and wall time per decision, beside the bare centralised LP (cvxpy)
on the peak step as the raw reference.

AC-optimal reference: for the rules with one value for the feeder (equal fraction, equal kW) a
bisection of that value on the AC flow (60 halvings) to the largest curtailment-free point that
keeps every node <= 1.05 pu; for the rules with several values (per area, per PV) the linear
optimum with the AC bias at its fixed point and no margin (no AC bisection exists for them).

The OpenDSS feeders are imported with one study for all (loads x 0.25, PV = each load's kW,
source 1.0 pu); nothing is set per feeder.

Run: .venv/bin/python bench/bench_voltage_coordinator.py [--quick] [--feeders ieee13,ieee34]
     [--rules equal_fraction/feeder,...] [--plot-dir bench/results]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from derbus.messages import FeederState
from voltage_coordinator.acflow import AcFlow, AcResult
from voltage_coordinator.coordinator import Coordinator
from voltage_coordinator.correction import settle
from voltage_coordinator.dss_import import OriginalModel, Study, import_dss
from voltage_coordinator.feeder import Feeder, bundled_feeder
from voltage_coordinator.optimizer import CentralisedSolver, Limits, StepInputs
from voltage_coordinator.settings import Settings
from voltage_coordinator.sweep import RULES, SweepSolver

LIMIT = 1.05
DATA = Path(__file__).resolve().parents[1] / "data" / "feeders"
STUDY = Study(pv_share=1.0, load_scale=0.25, source_pu=1.0)
T0 = datetime(2026, 6, 1, tzinfo=UTC)


MODELS: dict[str, tuple[Path, tuple[str, ...]]] = {
    "ieee123-dss": (
        DATA / "ieee123-opendss" / "IEEE123Master.dss",
        ("set voltagebases=[4.16, 0.48]", "calcv"),
    ),
    "ieee13": (DATA / "ieee13" / "IEEE13Nodeckt.dss", ()),
    "ieee34": (DATA / "ieee34" / "ieee34Mod1.dss", ()),
}


def feeders(names: list[str]) -> dict[str, Feeder]:
    """The bench's feeders by name (imported once)."""
    return {
        n: bundled_feeder()
        if n == "ieee123-json"
        else import_dss(MODELS[n][0], STUDY, MODELS[n][1])
        for n in names
    }


def state_of(
    feeder: Feeder, step: int, ac: AcResult, avail: dict[str, float], out: dict[str, float]
) -> FeederState:
    return FeederState(
        ts=T0 + timedelta(seconds=feeder.profiles.interval_s * step),
        source="bench",
        feeder_id=feeder.feeder_id,
        step=step,
        v_pu=ac.by_bus(),
        pv_available_kw=avail,
        pv_output_kw=out,
        load_p_kw=feeder.total_load_kw * feeder.profiles.load[step],
    )


def bisect_reference(
    ac: AcFlow | OriginalModel, load: float, avail: dict[str, float], kind: str, halvings: int = 60
) -> float:
    """Least curtailment (kW) with one common value for the feeder that holds in AC."""
    top = 1.0 if kind == "equal_fraction" else max(avail.values())

    def outputs(x: float) -> dict[str, float]:
        if kind == "equal_fraction":
            return {p: a * (1 - x) for p, a in avail.items()}
        return {p: max(0.0, a - x) for p, a in avail.items()}

    lo, hi = 0.0, top
    if ac.solve(load, outputs(0.0)).max_pu <= LIMIT:
        return 0.0
    for _ in range(halvings):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if ac.solve(load, outputs(mid)).max_pu <= LIMIT else (mid, hi)
    return sum(avail.values()) - sum(outputs(hi).values())


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_rule(
    feeder: Feeder,
    ac: AcFlow,
    fairness: str,
    group_by: str,
    steps: list[int],
    margin: float,
    plant: AcFlow | OriginalModel | None = None,
    cycles: int = 1,
) -> dict[str, object]:
    """The day for one rule: `ac` is the coordinator's model, `plant` the feeder (default: the
    same model)."""
    plant = plant or ac
    settings = Settings(mode="distributed", fairness=fairness, group_by=group_by, margin_pu=margin)  # type: ignore[arg-type]
    coordinator = Coordinator(feeder, settings, model=ac)
    hours = feeder.profiles.interval_s / 3600
    ref_sweep = SweepSolver(feeder, Limits(margin_pu=0.0), fairness, group_by)  # type: ignore[arg-type]
    live: dict[str, float] = {}
    over_loop = over_cold = over_none = over_first = 0
    e_cut = e_ref = 0.0
    times: list[float] = []
    rounds: set[int] = set()
    bias_rounds: list[int] = []
    unsettled = 0
    worst = 0.0
    lowest = 2.0
    series: dict[str, list[float]] = {"h": [], "v_none": [], "v_after": [], "avail": [], "cut": []}
    for step in steps:
        load = feeder.profiles.load[step]
        avail = {pv.id: pv.rating_kw * feeder.profiles.pv[step] for pv in feeder.pvs}
        free = plant.solve(load, avail)
        if free.max_pu > LIMIT:
            over_none += 1
        # closed loop: measured under the previous step's limits, decide, apply; with cycles > 1
        # re-solve on the fresh measurement (the service does every VOLTAGE_COORDINATOR_SOLVE_INTERVAL_S) until
        # the decision stops moving
        held = {p: min(a, live.get(p, a)) for p, a in avail.items()}
        measured = plant.solve(load, held)
        out = held
        for cycle in range(cycles):
            t0 = time.perf_counter()
            decision = coordinator.decide(state_of(feeder, step, measured, avail, out))
            times.append(time.perf_counter() - t0)
            rounds.add(decision.curtailment.iterations)
            bias_rounds.append(decision.curtailment.bias_rounds)
            unsettled += not decision.settled
            previous, live = live, dict(decision.limits_kw)
            out = {p: min(a, live[p]) for p, a in avail.items()}
            measured = after = plant.solve(load, out)
            if cycle == 0:
                over_first += after.max_pu > LIMIT
            moved = max((abs(live[p] - previous.get(p, 0.0)) for p in live), default=0.0)
            if cycle > 0 and moved < 0.01:  # kW
                break
        worst = max(worst, after.max_pu)
        lowest = min(lowest, min(after.v_pu.values()))
        over_loop += after.max_pu > LIMIT
        e_cut += (sum(avail.values()) - sum(out.values())) * hours
        for key, value in (
            ("h", step * hours),
            ("v_none", free.max_pu),
            ("v_after", after.max_pu),
            ("avail", sum(avail.values())),
            ("cut", sum(avail.values()) - sum(out.values())),
        ):
            series[key].append(value)
        if free.max_pu <= LIMIT:
            continue  # nothing to curtail: the cold start and the reference curtail nothing
        cold = coordinator.decide(state_of(feeder, step, free, avail, avail))
        cold_out = {p: min(a, cold.limits_kw[p]) for p, a in avail.items()}
        over_cold += plant.solve(load, cold_out).max_pu > LIMIT
        if group_by == "feeder" and fairness != "none":
            e_ref += bisect_reference(plant, load, avail, fairness) * hours
        else:
            ref = settle(ref_sweep.solve, plant, feeder, ref_sweep.tree, StepInputs(load, avail))
            e_ref += ref.curtailment.curtailed_kw * hours
    scale = (feeder.steps / len(steps)) if steps else 1.0
    return {
        "over_none": over_none,
        "over_loop": over_loop,
        "over_cold": over_cold,
        "over_first": over_first,
        "e_cut": e_cut * scale,
        "e_ref": e_ref * scale,
        "rounds": sorted(rounds),
        "bias_max": max(bias_rounds),
        "unsettled": unsettled,
        "worst": worst,
        "lowest": lowest,
        "p50": statistics.median(times),
        "p99": pct(times, 0.99),
        "max": max(times),
        "series": series,
    }


def bare_lp_s(feeder: Feeder, fairness: str, group_by: str, step: int) -> float:
    """The raw reference: one centralised LP solve (cvxpy) on the peak step, median of 5."""
    solver = CentralisedSolver(feeder, fairness, group_by, Limits())  # type: ignore[arg-type]
    inputs = StepInputs(
        feeder.profiles.load[step],
        {pv.id: pv.rating_kw * feeder.profiles.pv[step] for pv in feeder.pvs},
    )
    solver.solve(inputs)
    runs = []
    for _ in range(5):
        t0 = time.perf_counter()
        solver.solve(inputs)
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs)


async def broker_rounds(rules: list[tuple[str, ...]], decisions: int) -> None:
    """Agents mode on a real Mosquitto: five area agents, the coordinator, the feeder simulation
    held on the IEEE 123 peak step; time from a round's start to its decision, beside the same
    decision solved in one process (the raw reference)."""
    import asyncio
    import tempfile

    from derbus.bus import MqttBus
    from derbus.settings import MqttSettings
    from derbus.testing import MosquittoServer
    from voltage_coordinator.agents import build_area_agent
    from voltage_coordinator.service import build_service
    from voltage_coordinator.sim_service import build_feeder_sim

    feeder = bundled_feeder()
    peak = max(range(feeder.steps), key=lambda s: feeder.profiles.pv[s])
    server = MosquittoServer().start()
    print(
        f"\n## agents on the broker (IEEE 123 JSON, step {peak} held, {decisions} decisions per rule)"
    )
    print("| rule | decision over the broker p50 / p99 / max ms | in one process p50 ms | ratio |")
    print("| --- | --- | --- | --- |")
    try:
        mqtt = MqttSettings(host=server.host, port=server.port, root="bench")
        for fairness, group_by in rules:
            base = {
                "mqtt": mqtt.model_dump(),
                "api_port": 0,
                "data_dir": tempfile.mkdtemp(),
                "fairness": fairness,
                "group_by": group_by,
            }
            sim = build_feeder_sim(
                Settings(**base, sim_start_step=peak, sim_hold_step=True, sim_interval_s=0.5),
                MqttBus(mqtt),
                feeder,
            )
            vc_settings = Settings(**base, mode="agents", solve_interval_s=0.2, round_timeout_s=30)
            vc = build_service(vc_settings, MqttBus(mqtt), feeder)
            agents = [
                build_area_agent(vc_settings, MqttBus(mqtt), a.id, feeder) for a in feeder.areas
            ]
            services = [*agents, vc, sim]
            for svc in services:
                await svc.start()
            st = vc.state
            times: list[float] = []
            started: dict[str, float] = {}
            deadline = time.monotonic() + 120
            solves = st.solves
            while len(times) < decisions and time.monotonic() < deadline:
                if st.round is not None:
                    started.setdefault(st.round.round_id, st.round.started_s)
                if st.solves > solves:
                    solves = st.solves
                    if started:
                        times.append(time.monotonic() - started[max(started, key=started.get)])  # type: ignore[arg-type]
                    started.clear()
                await asyncio.sleep(0.002)
            local = Coordinator(
                feeder, Settings(mode="distributed", fairness=fairness, group_by=group_by)
            )  # type: ignore[arg-type]
            assert st.before is not None
            local_t = []
            for _ in range(5):
                t0 = time.perf_counter()
                local.decide(st.before)
                local_t.append(time.perf_counter() - t0)
            local.close()
            for svc in reversed(services):
                await svc.stop()
            p50 = statistics.median(times)
            print(
                f"| {fairness} / {group_by} | {1000 * p50:.0f} / {1000 * pct(times, 0.99):.0f} / "
                f"{1000 * max(times):.0f} | {1000 * statistics.median(local_t):.0f} | "
                f"{p50 / statistics.median(local_t):.1f} |"
            )
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="every 4th step")
    parser.add_argument("--feeders", default="ieee13,ieee34,ieee123-json,ieee123-dss")
    parser.add_argument("--rules", default=",".join(f"{f}/{g}" for f, g in RULES.values()))
    parser.add_argument("--margin-pu", type=float, default=Settings().margin_pu)
    parser.add_argument("--plot-dir", type=Path, default=None, help="voltage/curtailment PNGs")
    parser.add_argument(
        "--cycles", type=int, default=1, help="closed-loop decisions per step (re-solves)"
    )
    parser.add_argument(
        "--original-plant",
        action="store_true",
        help="OpenDSS feeders: the original model is the feeder (the coordinator keeps the import)",
    )
    parser.add_argument(
        "--broker",
        type=int,
        default=0,
        metavar="N",
        help="only the agents mode on a real Mosquitto, N decisions per rule",
    )
    args = parser.parse_args()
    rules = [tuple(r.split("/")) for r in args.rules.split(",")]
    if args.broker:
        import asyncio

        print(f"load average at start: {os.getloadavg()}")
        asyncio.run(broker_rounds(rules, args.broker))
        print(f"load average at end: {os.getloadavg()}")
        return
    print(f"load average at start: {os.getloadavg()}")
    for name, feeder in feeders(args.feeders.split(",")).items():
        ac = AcFlow(feeder)
        plant = (
            OriginalModel(MODELS[name][0], feeder, STUDY, MODELS[name][1])
            if args.original_plant and name in MODELS
            else None
        )
        steps = list(range(0, feeder.steps, 4 if args.quick else 1))
        peak = max(range(feeder.steps), key=lambda s: feeder.profiles.pv[s])
        print(
            f"\n## {name}: {len(feeder.buses)} buses, {len(feeder.pvs)} PVs = "
            f"{feeder.total_pv_kw:.0f} kW, load {feeder.total_load_kw:.0f} kW, "
            f"areas {len(feeder.areas)}, {len(steps)} steps, margin {args.margin_pu} pu, "
            f"plant: {'the original OpenDSS model' if plant else 'the feeder as imported'}"
        )
        print(
            "| rule | steps > 1.05 pu: no control / coordinator / cold start | min / max pu after | "
            "(after the first decision of a step) | "
            "curtailed kWh: coordinator / AC-optimal ref | vs ref | exchange rounds | bias rounds "
            "(max) | decision p50 / p99 / max ms | bare LP ms (peak) | ratio p50 |"
        )
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for fairness, group_by in rules:
            t0 = time.perf_counter()
            r = run_rule(feeder, ac, fairness, group_by, steps, args.margin_pu, plant, args.cycles)
            lp = bare_lp_s(feeder, fairness, group_by, peak)
            gap = (r["e_cut"] - r["e_ref"]) / r["e_ref"] * 100 if r["e_ref"] else 0.0  # type: ignore[operator]
            ref_kind = (
                "AC bisection"
                if group_by == "feeder" and fairness != "none"
                else "LP+AC fixed point"
            )
            print(
                f"| {fairness} / {group_by} | {r['over_none']} / {r['over_loop']} / {r['over_cold']} | "
                f"{r['lowest']:.4f} / {r['worst']:.5f} | {r['over_first']} | {r['e_cut']:.1f} / {r['e_ref']:.1f} ({ref_kind}) | {gap:+.2f} % | "
                f"{r['rounds']} | {r['bias_max']} ({r['unsettled']} unsettled) | "
                f"{1000 * r['p50']:.0f} / {1000 * r['p99']:.0f} / {1000 * r['max']:.0f} | "  # type: ignore[operator]
                f"{1000 * lp:.0f} | {r['p50'] / lp:.1f} |"  # type: ignore[operator]
            )
            print(
                f"<!-- {name} {fairness}/{group_by}: {time.perf_counter() - t0:.0f} s, load {os.getloadavg()[0]:.1f} -->"
            )
            if args.plot_dir is not None and (fairness, group_by) == rules[0]:
                from voltage_coordinator.plot import plot_day

                args.plot_dir.mkdir(parents=True, exist_ok=True)
                suffix = "_original" if plant else ""
                path = args.plot_dir / f"voltage_coordinator_{name}{suffix}.png"
                d = r["series"]
                plot_day(
                    d["h"],
                    d["v_none"],
                    d["v_after"],
                    d["avail"],
                    d["cut"],
                    LIMIT,
                    path,  # type: ignore[index]
                    f"{name}, {fairness} / {group_by}",
                )
                print(f"plot: {path}")
        ac.close()
    print(f"\nload average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
