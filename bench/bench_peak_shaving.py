"""Peak shaving benchmarks: EMA solve time, PMA reading→setpoint latency, closed-loop value.

    .venv/bin/python bench/bench_peak_shaving.py [--quick] [--section solve|latency|value|all]

* solve: the EMA LP at 96 and 1440 steps, first solve (compile + solve) and warm re-solves on
  new data, per solver (ECOS, CLARABEL, HIGHS).
* latency: the service as its own process on a real Mosquitto, 100 sites sending a PCC and a
  battery reading once per second; latency = setpoint received − reading timestamp (the
  setpoint carries the reading's timestamp), measured in this process.
* value: closed loop in accelerated time with the pure models (PMA controller + EMA optimiser +
  a battery model, no MQTT) over a month of the SimBench commercial load (g1-a) scaled to a
  100 kW annual peak, with PV (pv1) and a battery; forecasts are seasonal-naive (load one week
  earlier, PV one day earlier; "conservative": the higher load and lower PV of the two). Compared with no battery, the PMA alone (limits only), and the
  perfect-foresight optimum (the same LP on the actual month).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from derbus import topics
from derbus.bus import MqttBus, RawMessage
from derbus.messages import BatteryTelemetry, MeterReading, SetpointCommand
from derbus.settings import MqttSettings
from derbus.tariff import Tariff
from derbus.testing import MosquittoServer, free_port, port_open
from peak_shaving.controller import PeakShavingController, PmaConfig, PmaInputs
from peak_shaving.optimizer import (
    EmaConfig,
    EmaInputs,
    Schedule,
    ScheduleOptimizer,
    uncertainty_reserve_kwh,
)

REPO = Path(__file__).resolve().parents[1]
PROFILES = REPO / "data" / "profiles" / "simbench_2016_15min.csv"
SOLVERS = ("ECOS", "CLARABEL", "HIGHS")
COMMERCIAL_BATTERY: dict[str, float] = {
    "battery_capacity_kwh": 100.0, "battery_max_charge_kw": 50.0, "battery_max_discharge_kw": 50.0,
    "charge_efficiency": 0.95, "discharge_efficiency": 0.95, "soc_min_pct": 5.0,
}  # fmt: skip
"""The battery of the solve and latency rows (the service's old defaults; now the demo home's)."""


def profiles() -> pd.DataFrame:
    """The SimBench profiles, indexed by UTC time (the file's naive times taken as UTC)."""
    df = pd.read_csv(PROFILES, parse_dates=["time"], index_col="time")
    df.index = df.index.tz_localize("UTC")
    return df[~df.index.duplicated(keep="first")]


def table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"
    sep = "| " + " | ".join("-" * w for w in widths) + " |"
    body = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells
    ]
    return "\n".join([line, sep, *body])


# --- EMA solve time ---------------------------------------------------------------------------
def _timed_solve(
    opt: ScheduleOptimizer, net: np.ndarray, start: datetime, prior: np.ndarray
) -> tuple[float, Schedule]:
    t = time.perf_counter()
    s = opt.solve(EmaInputs(start=start, net_load_kw=net, soc_kwh=50.0, prior_kw=prior))
    return time.perf_counter() - t, s


def bench_solve(quick: bool) -> str:
    df = profiles()
    net_all = (df["g1-a_load_pu"] * 100 - df["pv1_pv_pu"] * 50).to_numpy()
    rows = []
    for steps in (96, 1440):
        repeats = (5 if quick else 20) if steps == 96 else (2 if quick else 5)
        for solver in SOLVERS:
            cfg = EmaConfig(
                horizon_steps=steps, solver=solver, import_limit_kw=70.0, export_limit_kw=-20.0,
                energy_cost=True, demand_charge=True, solver_time_limit_s=120.0,
                **COMMERCIAL_BATTERY,
            )  # fmt: skip
            start = datetime(2016, 6, 1, tzinfo=UTC)
            t0 = time.perf_counter()
            opt = ScheduleOptimizer(cfg)
            build_s = time.perf_counter() - t0
            offset = 16_000
            prior = np.zeros(steps)

            first_s, sched = _timed_solve(opt, net_all[offset : offset + steps], start, prior)
            warm, inner = [], []
            for k in range(1, repeats + 1):
                prior = np.concatenate([sched.battery_p_kw[1:], [0.0]])
                data = net_all[offset + k : offset + k + steps]
                when = start + timedelta(minutes=15 * k)
                elapsed, sched = _timed_solve(opt, data, when, prior)
                warm.append(elapsed)
                inner.append(opt.problem.solver_stats.solve_time or float("nan"))
            rows.append([
                steps, solver, f"{build_s * 1000:.0f}", f"{first_s * 1000:.1f}",
                f"{statistics.median(warm) * 1000:.1f}",
                f"{statistics.median(inner) * 1000:.1f}", f"{max(warm) * 1000:.1f}", len(warm),
                sched.status, f"{sched.objective:.2f}",
            ])  # fmt: skip
            print(f"  solve {steps} {solver}: first {first_s * 1000:.1f} ms, warm median "
                  f"{statistics.median(warm) * 1000:.1f} ms", file=sys.stderr)  # fmt: skip
    return table(
        ["steps", "solver", "build ms", "first solve ms", "warm median ms", "of it in the solver ms", "warm max ms",
         "re-solves", "status", "objective (last)"],
        rows,
    )  # fmt: skip


# --- PMA latency on the real broker -------------------------------------------------------------
async def _latency(host: str, port: int, sites: int, duration_s: float) -> dict[str, float]:
    root = f"bench/{uuid.uuid4().hex[:8]}"
    api_port = free_port()
    env = os.environ | {
        "MQTT_HOST": host, "MQTT_PORT": str(port), "MQTT_ROOT": root,
        "PS_API_PORT": str(api_port), "PS_DATA_DIR": tempfile.mkdtemp(), "PS_LOG_LEVEL": "WARNING",
        "PS_IMPORT_LIMIT_KW": "50", "PS_KPI_INTERVAL_S": "3600",
        **{f"PS_{k.upper()}": str(v) for k, v in COMMERCIAL_BATTERY.items()},
    }  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "peak_shaving"], env=env)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/readyz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("peak_shaving did not become ready")
            await asyncio.sleep(0.2)

        settings = MqttSettings(host=host, port=port, root=root)
        client = MqttBus(settings)
        await client.connect()
        latencies: list[float] = []

        async def on_setpoint(message: RawMessage) -> None:
            received = datetime.now(UTC)
            cmd = SetpointCommand.model_validate_json(message.payload)
            latencies.append((received - cmd.ts).total_seconds())

        await client.subscribe(topics.SETPOINT.filter(root=root), 1, on_setpoint)
        echoes: list[float] = []

        async def on_meter(message: RawMessage) -> None:
            received = datetime.now(UTC)
            reading = MeterReading.model_validate_json(message.payload)
            echoes.append((received - reading.ts).total_seconds())

        # baseline: the same readings coming back to this process (one broker hop)
        await client.subscribe(topics.METER.filter(root=root), 1, on_meter)
        rng = np.random.default_rng(1)
        site_ids = [f"site-{i + 1:04d}" for i in range(sites)]
        sent = 0
        began = time.monotonic()
        while time.monotonic() - began < duration_s:
            second = time.monotonic()
            for i, site in enumerate(site_ids):
                # spread the sites over the second, as independent meters would be
                target = second + i / sites
                pause = target - time.monotonic()
                if pause > 0:
                    await asyncio.sleep(pause)
                now = datetime.now(UTC)
                battery = BatteryTelemetry(ts=now, source="bench", p_kw=0.0, soc_pct=50.0)
                await client.publish(topics.BATTERY.topic(site, "battery", root),
                                     battery.to_json_bytes())  # fmt: skip
                reading = MeterReading(ts=now, source="bench", p_kw=float(45 + 15 * rng.random()))
                await client.publish(topics.METER.topic(site, "pcc", root), reading.to_json_bytes())
                sent += 1
            rest = second + 1 - time.monotonic()
            if rest > 0:
                await asyncio.sleep(rest)
        drain_deadline = time.monotonic() + 5
        while len(latencies) < sent and time.monotonic() < drain_deadline:
            await asyncio.sleep(0.05)
        with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/metrics", timeout=5) as r:
            metrics = r.read().decode()
        await client.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
    decision = _histogram_mean(metrics, "peak_shaving_decision_seconds")
    ms = sorted(x * 1000 for x in latencies)
    q = np.percentile(ms, [50, 90, 99]) if ms else [float("nan")] * 3
    echo = np.percentile([x * 1000 for x in echoes], [50, 99]) if echoes else [float("nan")] * 2
    return {
        "echo_p50": echo[0], "echo_p99": echo[1],
        "sent": sent, "received": len(ms), "p50": q[0], "p90": q[1], "p99": q[2],
        "max": ms[-1] if ms else float("nan"), "decision_mean_ms": decision * 1000,
    }  # fmt: skip


def _histogram_mean(metrics: str, name: str) -> float:
    total = count = 0.0
    for line in metrics.splitlines():
        if line.startswith(f"{name}_sum "):
            total = float(line.split()[1])
        if line.startswith(f"{name}_count "):
            count = float(line.split()[1])
    return total / count if count else float("nan")


def bench_latency(quick: bool, system_broker: bool = False) -> str:
    server = None
    if system_broker and port_open("127.0.0.1", 1883):
        host, port, origin = "127.0.0.1", 1883, "the machine's mosquitto on 1883 (its own config)"
    else:
        # our own broker: set_tcp_nodelay and explicit queue limits (derbus.testing config)
        server = MosquittoServer().start()
        host, port, origin = server.host, server.port, f"mosquitto (derbus config) on {server.port}"
    try:
        r = asyncio.run(_latency(host, port, sites=100, duration_s=10 if quick else 30))
    finally:
        if server is not None:
            server.cleanup()
    return (
        f"broker: {origin}; 100 sites x 1 Hz, {r['sent']} readings, {r['received']} setpoints\n\n"
        + table(
            [
                "p50 ms",
                "p90 ms",
                "p99 ms",
                "max ms",
                "PMA handler mean ms (service /metrics)",
                "baseline 1-hop echo p50 / p99 ms",
            ],
            [
                [
                    f"{r['p50']:.2f}",
                    f"{r['p90']:.2f}",
                    f"{r['p99']:.2f}",
                    f"{r['max']:.2f}",
                    f"{r['decision_mean_ms']:.3f}",
                    f"{r['echo_p50']:.2f} / {r['echo_p99']:.2f}",
                ]
            ],
        )
    )


# --- closed-loop value ---------------------------------------------------------------------------
@dataclass
class Site:
    """The evaluated site."""

    load_peak_kw: float = 100.0
    pv_kwp: float = 50.0
    capacity_kwh: float = 100.0
    power_kw: float = 50.0
    efficiency: float = 0.95
    import_limit_kw: float = 75.0
    export_limit_kw: float = -20.0
    step_s: int = 10
    noise_pct: float = 4.0


def actual_series(df: pd.DataFrame, month: str, site: Site, seed: int) -> pd.DataFrame:
    """Load and PV at `step_s` resolution for the month: interpolated 15-min profile + AR(1) noise."""
    start = pd.Timestamp(month + "-01", tz="UTC")
    end = start + pd.offsets.MonthBegin(1)
    profile = df.loc[start - pd.Timedelta(hours=1) : end + pd.Timedelta(hours=1)]
    # 15-min values are averages: place them at their interval middles, interpolate in between
    mid = profile.copy()
    mid.index = mid.index + pd.Timedelta(minutes=7.5)
    index = pd.date_range(start, end, freq=f"{site.step_s}s", inclusive="left")
    fine = mid.reindex(mid.index.union(index)).interpolate("time").reindex(index)
    rng = np.random.default_rng(seed)
    n = len(index)
    rho = np.exp(-site.step_s / 300)  # ~5-minute correlation
    eps = rng.normal(0, site.noise_pct / 100 * np.sqrt(1 - rho**2), n)
    ar = np.zeros(n)
    for i in range(1, n):
        ar[i] = rho * ar[i - 1] + eps[i]
    load = fine["g1-a_load_pu"].to_numpy() * site.load_peak_kw * (1 + ar)
    pv = np.clip(fine["pv1_pv_pu"].to_numpy() * site.pv_kwp * (1 + 0.5 * ar), 0, None)
    return pd.DataFrame({"load_kw": np.clip(load, 0, None), "pv_kw": pv}, index=index)


def seasonal_naive(
    df: pd.DataFrame, site: Site, start: pd.Timestamp, steps: int, conservative: bool
) -> np.ndarray:
    """Net-load forecast from the 15-min profile: load one week earlier, PV one day earlier.

    `conservative` takes the higher load and the lower PV of one day and one week earlier (a
    stand-in for planning on an upper quantile, as peak shaving should).
    """
    times = pd.date_range(start, periods=steps, freq="15min")
    load_w = df["g1-a_load_pu"].reindex(times - pd.Timedelta(days=7)).to_numpy()
    pv_d = df["pv1_pv_pu"].reindex(times - pd.Timedelta(days=1)).to_numpy()
    if conservative:
        load_d = df["g1-a_load_pu"].reindex(times - pd.Timedelta(days=1)).to_numpy()
        pv_w = df["pv1_pv_pu"].reindex(times - pd.Timedelta(days=7)).to_numpy()
        load_w, pv_d = np.fmax(load_w, load_d), np.fmin(pv_d, pv_w)
    return np.nan_to_num(load_w * site.load_peak_kw - pv_d * site.pv_kwp)


def error_bands(
    df: pd.DataFrame, site: Site, month: str, conservative: bool, q: float = 0.9, days: int = 28
) -> dict[Any, np.ndarray]:
    """Per day of the month, the q-quantile of the forecast's error by time of day (96 values),
    from the `days` days before it only (actual 15-min profile − the same seasonal-naive rule)."""
    start = pd.Timestamp(month + "-01", tz="UTC")
    first = start - pd.Timedelta(days=days)
    steps = int((start + pd.offsets.MonthBegin(1) - first) / pd.Timedelta(minutes=15))
    times = pd.date_range(first, periods=steps, freq="15min")
    true = (df["g1-a_load_pu"].reindex(times).to_numpy() * site.load_peak_kw
            - df["pv1_pv_pu"].reindex(times).to_numpy() * site.pv_kwp)  # fmt: skip
    err = (true - seasonal_naive(df, site, first, steps, conservative)).reshape(-1, 96)
    return {
        (first + pd.Timedelta(days=d)).date(): np.nanquantile(err[d - days : d], q, axis=0)
        for d in range(days, len(err))
    }


def ema_config(site: Site, steps: int, demand_target_kw: float | None) -> EmaConfig:
    return EmaConfig(
        horizon_steps=steps, import_limit_kw=site.import_limit_kw,
        export_limit_kw=site.export_limit_kw, demand_target_kw=demand_target_kw,
        battery_capacity_kwh=site.capacity_kwh, battery_max_charge_kw=site.power_kw,
        battery_max_discharge_kw=site.power_kw, charge_efficiency=site.efficiency,
        discharge_efficiency=site.efficiency, energy_cost=True, demand_charge=True,
        solver_time_limit_s=300.0,
    )  # fmt: skip


@dataclass
class Outcome:
    """Figures of one run over the month."""

    name: str
    pcc_kw: np.ndarray  # per step
    battery_kw: np.ndarray
    step_s: int
    index: pd.DatetimeIndex
    ema_solves: int = 0
    ema_mean_ms: float = 0.0


def evaluate(o: Outcome, site: Site, tariff: Tariff) -> list[Any]:
    dt_h = o.step_s / 3600
    s = pd.Series(o.pcc_kw, index=o.index)
    peak15 = s.resample("15min").mean().max()
    over = np.maximum(o.pcc_kw - site.import_limit_kw, 0) + np.maximum(
        site.export_limit_kw - o.pcc_kw, 0
    )
    violating = over > 1e-6
    events = int(np.sum(violating[1:] & ~violating[:-1]) + (1 if violating[0] else 0))
    prices = np.array([tariff.price_at(t) for t in s.resample("15min").mean().index])
    step_price = np.repeat(prices, int(900 / o.step_s))[: len(s)]
    imp, exp = np.maximum(o.pcc_kw, 0), np.maximum(-o.pcc_kw, 0)
    energy = float(np.sum(imp * step_price - exp * tariff.feed_in_per_kwh) * dt_h)
    demand = float(peak15 * tariff.demand_charge_per_kw)
    throughput = float(np.sum(np.abs(o.battery_kw)) * dt_h)
    return [
        o.name, f"{peak15:.1f}", events, f"{violating.sum() * o.step_s / 60:.0f}",
        f"{over.sum() * dt_h:.2f}", f"{energy:.0f}", f"{demand:.0f}", f"{energy + demand:.0f}",
        f"{throughput:.0f}", f"{throughput / (2 * site.capacity_kwh):.1f}",
    ]  # fmt: skip


def closed_loop(
    df: pd.DataFrame,
    actual: pd.DataFrame,
    site: Site,
    demand_target_kw: float | None,
    ema: bool,
    conservative: bool = False,
    reserve_pct: float = 20.0,
    bands: dict[Any, np.ndarray] | None = None,
    label: str = "",
) -> Outcome:
    """PMA every `step_s` (and the EMA every 15 min when `ema`) with a battery model."""
    pma = PeakShavingController(
        PmaConfig(
            import_limit_kw=site.import_limit_kw,
            export_limit_kw=site.export_limit_kw,
            demand_target_kw=demand_target_kw,
            battery_capacity_kwh=site.capacity_kwh,
            battery_max_charge_kw=site.power_kw,
            battery_max_discharge_kw=site.power_kw,
            max_gap_s=60.0,
            reserve_pct=reserve_pct,
        )
    )
    cfg = ema_config(site, 96, demand_target_kw).model_copy(update={"reserve_pct": reserve_pct})
    optimizer = ScheduleOptimizer(cfg) if ema else None
    cap, eta = site.capacity_kwh, site.efficiency
    soc_kwh = 0.5 * cap
    site_kw = (actual["load_kw"] - actual["pv_kw"]).to_numpy()
    n = len(site_kw)
    pcc = np.zeros(n)
    batt = np.zeros(n)
    previous_b = 0.0
    command_kw, command_end = 0.0, actual.index[0]
    schedule: np.ndarray | None = None
    schedule_start: pd.Timestamp | None = None
    plan_peak: float | None = None
    solve_ms: list[float] = []
    per_interval = 900 // site.step_s
    for k, ts in enumerate(actual.index):
        if optimizer is not None and k % per_interval == 0:
            prior = np.zeros(96)
            if schedule is not None:
                prior[:95] = schedule[1:]
            forecast = seasonal_naive(df, site, ts, 96, conservative)
            reserve = None
            if bands is not None:  # keep what shaving the p90 load to the threshold needs
                tod = ((ts.hour * 60 + ts.minute) // 15 + np.arange(96)) % 96
                upper = forecast + bands[ts.date()][tod]
                threshold = pma.month_peak_kw("s") or float(forecast.max())
                reserve = uncertainty_reserve_kwh(upper, threshold, 900, site.efficiency)
            sched = optimizer.solve(
                EmaInputs(start=ts.to_pydatetime(), net_load_kw=forecast,
                          soc_kwh=soc_kwh, prior_kw=prior, peak_floor_kw=pma.month_peak_kw("s"),
                          reserve_kwh=reserve)
            )  # fmt: skip
            schedule, schedule_start = sched.battery_p_kw, ts
            plan_peak = float(sched.pcc_kw.max())
            solve_ms.append(sched.solve_time_s * 1000)
        schedule_kw = None
        if schedule is not None and schedule_start is not None:
            schedule_kw = float(schedule[int((ts - schedule_start).total_seconds() // 900)])
        when = ts.to_pydatetime()
        decision = pma.step(
            PmaInputs(site_id="s", ts=when, pcc_p_kw=site_kw[k] + previous_b,
                      battery_p_kw=previous_b, battery_ts=when, soc_pct=100 * soc_kwh / cap,
                      schedule_p_kw=schedule_kw, plan_peak_kw=plan_peak)
        )  # fmt: skip
        # battery model: follows the live setpoint within power and stored energy for one step;
        # an idle PMA sends nothing: the last command holds until its TTL ends, then the
        # battery's default here is 0 kW (no self-consumption mode in this model)
        if decision.command:
            command_kw = decision.battery_p_kw
            command_end = ts + pd.Timedelta(seconds=decision.ttl_s)
        elif ts >= command_end:
            command_kw = 0.0
        b = float(np.clip(command_kw, -site.power_kw, site.power_kw))
        dt_h = site.step_s / 3600
        if b > 0:
            b = min(b, (cap - soc_kwh) / (eta * dt_h))
            soc_kwh += b * eta * dt_h
        else:
            b = max(b, -soc_kwh * eta / dt_h)
            soc_kwh += b / eta * dt_h
        batt[k], pcc[k] = b, site_kw[k] + b
        previous_b = b
    name = "PMA only (limits)"
    if ema:
        name = "PMA + EMA, " + ("conservative" if conservative else "seasonal-naive") + " forecast"
    if demand_target_kw:
        name += f", demand target {demand_target_kw:g} kW"
    name += label
    return Outcome(
        name, pcc, batt, site.step_s, actual.index, len(solve_ms),
        statistics.mean(solve_ms) if solve_ms else 0.0,
    )  # fmt: skip


def perfect_foresight(actual: pd.DataFrame, site: Site) -> tuple[Outcome, float]:
    """The same LP on the month's actual 15-minute averages, one solve for the whole month."""
    quarter = actual.resample("15min").mean()
    net = (quarter["load_kw"] - quarter["pv_kw"]).to_numpy()
    cfg = ema_config(site, len(net), None)
    optimizer = ScheduleOptimizer(cfg)
    t = time.perf_counter()
    sched = optimizer.solve(
        EmaInputs(start=quarter.index[0].to_pydatetime(), net_load_kw=net,
                  soc_kwh=0.5 * site.capacity_kwh, prior_kw=np.zeros(len(net)))
    )  # fmt: skip
    elapsed = time.perf_counter() - t
    return Outcome("perfect foresight (LP on actuals, 15 min)", sched.pcc_kw, sched.battery_p_kw,
                   900, quarter.index), elapsed  # fmt: skip


def bench_value(quick: bool, month: str) -> str:
    df = profiles()
    site = Site(step_s=30 if quick else 10)
    actual = actual_series(df, month, site, seed=7)
    if quick:
        actual = actual.iloc[: int(7 * 86400 / site.step_s)]
    tariff = Tariff()
    none = Outcome("no battery", (actual["load_kw"] - actual["pv_kw"]).to_numpy(),
                   np.zeros(len(actual)), site.step_s, actual.index)  # fmt: skip
    runs = [none]
    t = time.perf_counter()
    runs.append(closed_loop(df, actual, site, None, ema=False))
    for conservative in (False, True):
        runs.append(closed_loop(df, actual, site, None, ema=True, conservative=conservative))
        print(f"  value: {runs[-1].name} done ({time.perf_counter() - t:.0f} s)", file=sys.stderr)
    for conservative in (False, True):  # + a reserve for the p90 of the forecast's past errors
        bands = error_bands(df, site, month, conservative)
        runs.append(closed_loop(df, actual, site, None, ema=True, conservative=conservative,
                                bands=bands, label=", p90-error reserve"))  # fmt: skip
        print(f"  value: {runs[-1].name} done ({time.perf_counter() - t:.0f} s)", file=sys.stderr)
    optimum, pf_s = perfect_foresight(actual, site)
    runs.append(optimum)
    rows = [evaluate(o, site, tariff) for o in runs]
    days = (actual.index[-1] - actual.index[0]).total_seconds() / 86400
    ema_runs = [o for o in runs if o.ema_solves]
    solves = ", ".join(f"{o.ema_solves} solves, mean {o.ema_mean_ms:.1f} ms" for o in ema_runs)
    header = (
        f"{month}, {days:.1f} days at {site.step_s} s steps; g1-a load scaled to a "
        f"{site.load_peak_kw:g} kW annual peak (+-{site.noise_pct:g} % AR(1) noise), pv1 "
        f"x {site.pv_kwp:g} kWp, battery {site.capacity_kwh:g} kWh / {site.power_kw:g} kW "
        f"(eta {site.efficiency}), import limit {site.import_limit_kw:g} kW, export limit "
        f"{site.export_limit_kw:g} kW; tariff derbus.tariff.Tariff() (ToU 0.09/0.16/0.27, "
        f"feed-in 0.05, demand {tariff.demand_charge_per_kw:g}/kW). EMA: 96 x 15 min, ECOS, "
        f"energy cost + demand charge on ({solves}); perfect foresight: "
        f"one LP over the month ({pf_s:.1f} s).\n\n"
    )
    return header + table(
        ["run", "15-min peak kW", "violations", "violation min", "violation kWh",
         "energy cost", "demand charge", "total", "throughput kWh", "full cycles"],
        rows,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs")
    parser.add_argument("--section", default="all", choices=["solve", "latency", "value", "all"])
    parser.add_argument("--month", default="2016-06", help="month of the value evaluation")
    parser.add_argument(
        "--system-broker", action="store_true", help="latency on 127.0.0.1:1883 if one runs"
    )
    args = parser.parse_args()
    # a SIGTERM unwinds like Ctrl-C, so the service process of the latency run is stopped too
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    print(f"load average at start: {' / '.join(f'{x:.1f}' for x in os.getloadavg())} "
          f"(1/5/15 min) on {os.cpu_count()} CPUs\n")  # fmt: skip
    if args.section in ("solve", "all"):
        print("### EMA solve time\n")
        print(bench_solve(args.quick), "\n", flush=True)
    if args.section in ("latency", "all"):
        print("### PMA latency, reading → setpoint, real broker\n")
        print(bench_latency(args.quick, args.system_broker), "\n", flush=True)
    if args.section in ("value", "all"):
        print("### Closed-loop value\n")
        print(bench_value(args.quick, args.month), "\n", flush=True)
    print(f"load average at end: {' / '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
