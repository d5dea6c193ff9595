"""Peak shaving benchmarks: EMA solve time, PMA reading→setpoint latency, closed-loop value.

    .venv/bin/python bench/bench_peak_shaving.py [--quick] [--section solve|latency|value|all]

* solve: the EMA LP at 96 and 1440 steps, first solve (compile + solve) and warm re-solves on
  new data, per solver (ECOS, CLARABEL, HIGHS).
* latency: the service as its own process on a real Mosquitto, 100 sites sending a PCC and a
  battery reading once per second; latency = setpoint received − reading timestamp (the
  setpoint carries the reading's timestamp), measured in this process.
* value: closed loop in accelerated time with the pure models (PMA controller + EMA optimiser +
  a battery model, no MQTT) over months of a load/PV column pair of a profile CSV (default: the
  SimBench commercial load g1-a with pv1), the load scaled to a 100 kW annual peak, with PV and a
  battery; the EMA plans on the forecasts the forecaster service would issue at each re-plan
  (trained at the month's start as the service trains: backtest, best model promoted if it beats
  the better seasonal naive, else the naive fallback; issued with its intraday update and
  calibrated band). Compared with no battery, a threshold rule (threshold from the previous
  month) and the perfect-foresight optimum (the same LP on the actual month).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from harness import PROFILES, Site, profiles
from tables import table

from derbus import topics
from derbus.bus import MqttBus, RawMessage
from derbus.messages import BatteryTelemetry, MeterReading, SetpointCommand, TimeSeries
from derbus.settings import MqttSettings
from derbus.tariff import Tariff
from derbus.testing import MosquittoServer, free_port, port_open
from peak_shaving.controller import PeakShavingController, PmaConfig, PmaInputs
from peak_shaving.optimizer import (
    BIAS_DECAY_STEPS,
    OVERSHOOT,
    SCENARIO_LEVELS,
    EmaConfig,
    EmaInputs,
    Schedule,
    ScheduleOptimizer,
    plan_with_scenarios,
    quantile_scenarios,
)

SOLVERS = ("ECOS", "CLARABEL", "HIGHS")
COMMERCIAL_BATTERY: dict[str, float] = {
    "battery_capacity_kwh": 100.0,
    "battery_max_charge_kw": 50.0,
    "battery_max_discharge_kw": 50.0,
    "charge_efficiency": 0.95,
    "discharge_efficiency": 0.95,
    "soc_min_pct": 5.0,
}
"""The battery of the solve and latency rows (the service's old defaults; now the demo home's)."""


@dataclass
class Delays:
    """Messages of one kind received here, each with its delay: arrival − its own timestamp."""

    model: type[SetpointCommand] | type[MeterReading]
    began_wall: datetime
    delay_s: list[float] = field(default_factory=list)
    at_s: list[float] = field(default_factory=list)
    """When each was stamped, s since `began_wall`."""

    async def __call__(self, message: RawMessage) -> None:
        received = datetime.now(UTC)
        ts = self.model.model_validate_json(message.payload).ts
        self.delay_s.append((received - ts).total_seconds())
        self.at_s.append((ts - self.began_wall).total_seconds())

    def window_ms(self, from_s: float, to_s: float) -> list[float]:
        """The delays in ms of the messages stamped in [from_s, to_s)."""
        return [
            x * 1000 for x, t in zip(self.delay_s, self.at_s, strict=True) if from_s <= t < to_s
        ]


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
                horizon_steps=steps,
                solver=solver,
                import_limit_kw=70.0,
                export_limit_kw=-20.0,
                energy_cost=True,
                demand_charge=True,
                solver_time_limit_s=120.0,
                **COMMERCIAL_BATTERY,
            )
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
                inner.append(sched.solve_time_s)
            rows.append(
                [
                    steps,
                    solver,
                    f"{build_s * 1000:.0f}",
                    f"{first_s * 1000:.1f}",
                    f"{statistics.median(warm) * 1000:.1f}",
                    f"{statistics.median(inner) * 1000:.1f}",
                    f"{max(warm) * 1000:.1f}",
                    len(warm),
                    sched.status,
                    f"{sched.objective:.2f}",
                ]
            )
            print(
                f"  solve {steps} {solver}: first {first_s * 1000:.1f} ms, warm median "
                f"{statistics.median(warm) * 1000:.1f} ms",
                file=sys.stderr,
            )
    return table(
        [
            "steps",
            "solver",
            "build ms",
            "first solve ms",
            "warm median ms",
            "of it in solver calls ms",
            "warm max ms",
            "re-solves",
            "status",
            "objective (last)",
        ],
        rows,
    )


def bench_fleet(quick: bool) -> str:
    """The 96-step warm re-solve against a bare ECOS call on the same LP, and a fleet re-plan.

    Bare: `ecos.solve` on the same LP (the optimiser's matrices and the vectors of that solve,
    `ScheduleOptimizer.lp`), the same options, nothing around it. Warm: the whole
    `ScheduleOptimizer.solve` (checks, the vectors built, the solver, the schedule unpacked).
    Fleet: N sites re-planned one after the other on this one process (one core), each with its
    own net load, SoC and month peak.
    """
    df = profiles()
    net_all = (df["g1-a_load_pu"] * 100 - df["pv1_pv_pu"] * 50).to_numpy()
    start = datetime(2016, 6, 1, tzinfo=UTC)
    cfg = EmaConfig(
        horizon_steps=96,
        import_limit_kw=70.0,
        export_limit_kw=-20.0,
        energy_cost=True,
        demand_charge=True,
        **COMMERCIAL_BATTERY,
    )
    one_pass = ScheduleOptimizer(cfg.model_copy(update={"soft_targets_second_pass": False}))
    warm, bare = [], []
    for k in range(20 if quick else 200):
        data = net_all[16_000 + 7 * k : 16_000 + 7 * k + 96]
        inputs = EmaInputs(
            start=start + timedelta(minutes=15 * k),
            net_load_kw=data,
            soc_kwh=30.0 + k % 40,
            prior_kw=np.zeros(96),
            peak_floor_kw=40.0,
        )
        t = time.perf_counter()
        one_pass.solve(inputs)
        warm.append(time.perf_counter() - t)
        lp = one_pass.lp()
        t = time.perf_counter()
        lp.solve_ecos(max_iters=500)
        bare.append(time.perf_counter() - t)
    warm_ms, bare_ms = statistics.median(warm) * 1000, statistics.median(bare) * 1000
    rows = [
        [
            "96-step re-solve (one pass), ScheduleOptimizer.solve",
            f"{warm_ms:.2f}",
            f"{np.percentile(warm, 99) * 1000:.2f}",
            f"{warm_ms / bare_ms:.2f}x",
        ],
        [
            "same LP, bare ecos.solve",
            f"{bare_ms:.2f}",
            f"{np.percentile(bare, 99) * 1000:.2f}",
            "1.00x",
        ],
    ]
    sites = 100 if quick else 1000
    fleet = []
    levels = SCENARIO_LEVELS
    single = ScheduleOptimizer(cfg)
    joint = ScheduleOptimizer(cfg, [w for _, w in levels])
    for label, plan in (
        ("single trace, one pass", lambda i, inp: one_pass.solve(inp)),
        ("single trace, two passes", lambda i, inp: single.solve(inp)),
        (
            "3 scenarios (two-stage LP), two passes",
            lambda i, inp: plan_with_scenarios(
                joint,
                inp,
                quantile_scenarios(
                    {
                        "p10": inp.net_load_kw * 0.8,
                        "p50": inp.net_load_kw,
                        "p90": inp.net_load_kw * 1.2,
                    },
                    None,
                    levels,
                ),
            ),
        ),
    ):
        began, cpu = time.perf_counter(), time.process_time()
        for i in range(sites):
            data = net_all[(37 * i) % 30_000 : (37 * i) % 30_000 + 96]
            inp = EmaInputs(
                start=start,
                net_load_kw=data,
                soc_kwh=20.0 + i % 60,
                prior_kw=np.zeros(96),
                peak_floor_kw=30.0 + i % 30,
            )
            plan(i, inp)
        total, cpu = time.perf_counter() - began, time.process_time() - cpu
        fleet.append(
            [
                f"{sites} sites, {label}",
                f"{total:.1f}",
                f"{cpu:.1f}",
                f"{cpu / sites * 1000:.1f}",
                f"{cpu / 900 * 100:.1f} %",
            ]
        )
        print(f"  fleet {label}: {total:.1f} s", file=sys.stderr, flush=True)
    return (
        table(["solve", "median ms", "p99 ms", "ratio to bare"], rows)
        + "\n\n"
        + table(
            [
                "re-plan",
                "wall s",
                "CPU s (one core)",
                "CPU per site ms",
                "CPU of a 15-min interval",
            ],
            fleet,
        )
    )


# --- PMA latency on the real broker -------------------------------------------------------------
def _forecast(now: datetime, quantity: str, base: np.ndarray) -> TimeSeries:
    start = datetime.fromtimestamp(int(now.timestamp()) // 900 * 900, tz=UTC)
    return TimeSeries(
        ts=now,
        source="bench",
        kind="forecast",
        quantity=quantity,
        unit="kW",
        issue_time=now,
        start=start,
        step_s=900,
        values=[float(v) for v in base],
        quantiles={
            "p10": [float(v) for v in 0.8 * base],
            "p50": [float(v) for v in base],
            "p90": [float(v) for v in 1.2 * base],
        },
    )


async def _latency(
    host: str, port: int, sites: int, duration_s: float, replan_s: float | None = None
) -> dict[str, Any]:
    root = f"bench/{uuid.uuid4().hex[:8]}"
    api_port = free_port()
    env = os.environ | {
        "MQTT_HOST": host,
        "MQTT_PORT": str(port),
        "MQTT_ROOT": root,
        "PEAK_SHAVING_API_PORT": str(api_port),
        "PEAK_SHAVING_DATA_DIR": tempfile.mkdtemp(),
        "PEAK_SHAVING_LOG_LEVEL": "WARNING",
        "PEAK_SHAVING_IMPORT_LIMIT_KW": "50",
        "PEAK_SHAVING_KPI_INTERVAL_S": "3600",
        **{f"PEAK_SHAVING_{k.upper()}": str(v) for k, v in COMMERCIAL_BATTERY.items()},
    }
    if replan_s is not None:  # the EMA re-plans every site every replan_s during the run
        env |= {
            "PEAK_SHAVING_PLAN_INTERVAL_S": str(replan_s),
            "PEAK_SHAVING_DEMAND_CHARGE": "true",
            "PEAK_SHAVING_ENERGY_COST": "true",
        }
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
        # a setpoint carries the timestamp of the reading it answers
        setpoints = Delays(SetpointCommand, datetime.now(UTC))
        await client.subscribe(topics.SETPOINT.filter(root=root), 1, setpoints)
        # baseline: the same readings coming back to this process (one broker hop)
        echoes = Delays(MeterReading, setpoints.began_wall)
        await client.subscribe(topics.METER.filter(root=root), 1, echoes)
        rng = np.random.default_rng(1)
        site_ids = [f"site-{i + 1:04d}" for i in range(sites)]
        if replan_s is not None:  # forecasts with quantiles: every site gets a scenario plan
            now = datetime.now(UTC)
            hours = np.arange(96) / 4
            load = 40 + 20 * np.exp(-(((hours - 12) / 3) ** 2))
            pv = 15 * np.clip(np.sin((hours - 6) / 12 * np.pi), 0, None)
            for site in site_ids:
                battery = BatteryTelemetry(ts=now, source="bench", p_kw=0.0, soc_pct=50.0)
                await client.publish(
                    topics.BATTERY.topic(site, "battery", root), battery.to_json_bytes()
                )
                for device, quantity, base in (
                    ("load", "load_p_kw", load),
                    ("pv", "pv_generation_kw", pv),
                ):
                    await client.publish(
                        topics.FORECAST.topic(site, device, root),
                        _forecast(now, quantity, base).to_json_bytes(),
                    )
        sent = 0
        began = time.monotonic()
        setpoints.began_wall = echoes.began_wall = datetime.now(UTC)
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
                await client.publish(
                    topics.BATTERY.topic(site, "battery", root), battery.to_json_bytes()
                )
                reading = MeterReading(ts=now, source="bench", p_kw=float(45 + 15 * rng.random()))
                await client.publish(topics.METER.topic(site, "pcc", root), reading.to_json_bytes())
                sent += 1
            rest = second + 1 - time.monotonic()
            if rest > 0:
                await asyncio.sleep(rest)
        drain_deadline = time.monotonic() + 5
        while len(setpoints.delay_s) < sent and time.monotonic() < drain_deadline:
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
    decision = _histogram_mean(metrics, "derbus_peak_shaving_decision_seconds")
    ms = sorted(x * 1000 for x in setpoints.delay_s)
    q = np.percentile(ms, [50, 90, 99]) if ms else [float("nan")] * 3
    echo_ms = [x * 1000 for x in echoes.delay_s]
    echo = np.percentile(echo_ms, [50, 99]) if echo_ms else [float("nan")] * 2
    windows = []
    for w in range(int(duration_s // 10)):
        own = setpoints.window_ms(10 * w, 10 * w + 10)
        hop = echoes.window_ms(10 * w, 10 * w + 10)
        if own and hop:
            windows.append(
                [
                    10 * w,
                    len(own),
                    *np.percentile(own, [50, 99]),
                    max(own),
                    *np.percentile(hop, [50, 99]),
                    max(hop),
                ]
            )
    return {
        "echo_p50": echo[0],
        "echo_p99": echo[1],
        "sent": sent,
        "received": len(ms),
        "p50": q[0],
        "p90": q[1],
        "p99": q[2],
        "max": ms[-1] if ms else float("nan"),
        "decision_mean_ms": decision * 1000,
        "ema_solves": _counter(metrics, 'derbus_peak_shaving_ema_solves_total{outcome="ok"}'),
        "windows": windows,
    }


def _counter(metrics: str, name: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def _histogram_mean(metrics: str, name: str) -> float:
    total = count = 0.0
    for line in metrics.splitlines():
        if line.startswith(f"{name}_sum "):
            total = float(line.split()[1])
        if line.startswith(f"{name}_count "):
            count = float(line.split()[1])
    return total / count if count else float("nan")


def bench_latency(quick: bool, system_broker: bool = False, replan_s: float | None = 10.0) -> str:
    server = None
    if system_broker and port_open("127.0.0.1", 1883):
        host, port, origin = "127.0.0.1", 1883, "the machine's mosquitto on 1883 (its own config)"
    else:
        # our own broker: set_tcp_nodelay and explicit queue limits (derbus.testing config)
        server = MosquittoServer().start()
        host, port, origin = server.host, server.port, f"mosquitto (derbus config) on {server.port}"
    duration = 20 if quick else 60
    try:
        r = asyncio.run(_latency(host, port, sites=100, duration_s=duration, replan_s=replan_s))
    finally:
        if server is not None:
            server.cleanup()
    ema = (
        f"EMA re-planning all 100 sites every {replan_s:g} s (3 scenarios, demand charge and"
        f" energy cost on) in its own process: {r['ema_solves']:.0f} plans during the run"
        if replan_s is not None
        else "no EMA re-planning"
    )
    overall = table(
        [
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "max ms",
            "PMA handler mean ms (service /metrics)",
            "1-hop echo p50 / p99 ms",
            "p99 / echo p99",
        ],
        [
            [
                f"{r['p50']:.2f}",
                f"{r['p90']:.2f}",
                f"{r['p99']:.2f}",
                f"{r['max']:.2f}",
                f"{r['decision_mean_ms']:.3f}",
                f"{r['echo_p50']:.2f} / {r['echo_p99']:.2f}",
                f"{r['p99'] / r['echo_p99']:.2f}x",
            ]
        ],
    )
    per_window = table(
        [
            "window s",
            "setpoints",
            "p50 ms",
            "p99 ms",
            "max ms",
            "echo p50 ms",
            "echo p99 ms",
            "echo max ms",
        ],
        [[f"{w[0]}-{w[0] + 10}", w[1], *(f"{x:.2f}" for x in w[2:])] for w in r["windows"]],
    )
    return (
        f"broker: {origin}; 100 sites x 1 Hz, {r['sent']} readings, {r['received']} setpoints;"
        f" {ema}\n\n{overall}\n\nper 10-second window:\n\n{per_window}"
    )


# --- closed-loop value on any CSV of 15-minute per-unit profiles ---------------------------------
def load_profiles(path: Path, tz: str) -> pd.DataFrame:
    """A profile CSV (`time` + per-unit columns, 15-minute steps) on a gap-free UTC grid.

    `time` is local wall-clock time in `tz` (the shipped file's layout: spring hour missing,
    autumn hour repeated) or already UTC (`tz` = UTC). A year before the first row is added
    from the file itself, shifted 52 weeks earlier (weekdays kept), so January has a history
    to train on and a previous month for the rule-based reference.
    """
    raw = pd.read_csv(path, parse_dates=["time"], index_col="time")
    if raw.index.tz is None:
        try:
            index = raw.index.tz_localize(tz, ambiguous="infer", nonexistent="shift_forward")
        except (ValueError, TypeError):  # not a clean DST sequence: drop what is ambiguous
            index = raw.index.tz_localize(tz, ambiguous="NaT", nonexistent="shift_forward")
        raw.index = index
    raw = raw[raw.index.notna()]
    raw.index = raw.index.tz_convert("UTC")
    raw = raw[~raw.index.duplicated(keep="first")].sort_index().astype(float)
    grid = pd.date_range(raw.index[0], raw.index[-1], freq="15min")
    df = raw.reindex(grid).interpolate("time", limit_direction="both")
    before = df.copy()
    before.index = before.index - pd.Timedelta(weeks=52)
    return pd.concat([before[before.index < df.index[0]], df])


def month_span(year: int, month: int, tz: str) -> tuple[pd.Timestamp, pd.Timestamp]:
    """A billing month, local midnight to local midnight, in UTC."""
    start = pd.Timestamp(year=year, month=month, day=1, tz=tz)
    return start.tz_convert("UTC"), (start + pd.offsets.MonthBegin(1)).tz_convert("UTC")


def actual_series(
    df: pd.DataFrame,
    cols: tuple[str, str],
    start: pd.Timestamp,
    end: pd.Timestamp,
    site: Site,
    seed: int,
) -> pd.DataFrame:
    """Load and PV at `step_s`: the 15-minute profile interpolated, with AR(1) noise."""
    profile = df.loc[start - pd.Timedelta(hours=1) : end + pd.Timedelta(hours=1), list(cols)]
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
    load = fine[cols[0]].to_numpy() * site.load_peak_kw * (1 + ar)
    pv = np.clip(fine[cols[1]].to_numpy() * site.pv_kwp * (1 + 0.5 * ar), 0, None)
    return pd.DataFrame({"load_kw": np.clip(load, 0, None), "pv_kw": pv}, index=index)


@dataclass(frozen=True)
class ForecastSpec:
    """How the bench makes the forecaster's forecasts (its library code, as the service does)."""

    tz: str = "Europe/Berlin"
    country: str = "DE"
    latitude: float = 51.0
    longitude: float = 10.0
    history_days: int = 90
    max_iter: int = 200
    cache: Path | None = None


@dataclass(frozen=True)
class IssuedForecasts:
    """Forecasts as the forecaster service issues them: at each issue time, P10/P50/P90 of the
    96 intervals that follow (`values[j]` was issued at `first + j * every` intervals)."""

    first: pd.Timestamp
    every: int
    values: np.ndarray  # (issues, 96, 3): p10, p50, p90
    model: str

    def at(self, start: pd.Timestamp) -> dict[str, np.ndarray]:
        """The forecast of the latest issue at or before `start`, from `start` on (96 values,
        the intervals after the issue's horizon held at its last value)."""
        steps = int((start - self.first) / pd.Timedelta(minutes=15))
        j = min(max(steps // self.every, 0), len(self.values) - 1)
        skip = steps - j * self.every
        v = self.values[j, skip:]
        v = np.concatenate([v, np.repeat(v[-1:], 96 - len(v), axis=0)]) if len(v) < 96 else v
        return {"p10": v[:, 0], "p50": v[:, 1], "p90": v[:, 2]}


def served_forecasts(
    series_kw: pd.Series,
    target_name: str,
    start: pd.Timestamp,
    end: pd.Timestamp,
    every: int,
    spec: ForecastSpec,
) -> IssuedForecasts:
    """What the forecaster service issues every `every` intervals over [start, end).

    Trained once at `start` as the service trains (`forecaster.training`: the rolling-origin
    backtest of its default models on the `history_days` before `start`, the best point and band
    models fitted if they beat the better seasonal naive, else the seasonal-naive fallback it
    serves), then issued as `forecaster.serving.forecast` issues: a trained model reads the
    last hour before each issue time (its intraday update) and serves its calibrated band. One
    design matrix serves every issue time (`forecaster.design`: an interval t reads nothing at
    or after t - 1 day, so nothing after the issue time of a forecast that covers t).
    """
    from derbus import features as fx
    from forecaster.batch import train_config
    from forecaster.calibration import RESIDUAL_LAGS
    from forecaster.catalogue import TARGETS
    from forecaster.design import design_matrix
    from forecaster.models import Forecaster, finish
    from forecaster.serving import fallback_model
    from forecaster.settings import Settings as ForecasterSettings
    from forecaster.training import evaluate, fit_final

    key = (
        f"served-{target_name}-{series_kw.name}-{start:%Y%m%d%H}-{end:%Y%m%d%H}-{every}-"
        f"{spec.history_days}-{spec.max_iter}-{float(series_kw.abs().max()):.3f}"
    )
    cached = spec.cache / f"{key}.npz" if spec.cache is not None else None
    if cached is not None and cached.exists():
        z = np.load(cached)
        return IssuedForecasts(
            pd.Timestamp(str(z["first"])), int(z["every"]), z["values"], str(z["model"])
        )
    target = TARGETS[target_name]
    site = fx.SiteContext(
        timezone=spec.tz,
        country=spec.country,
        latitude=spec.latitude,
        longitude=spec.longitude,
        tariff=Tariff(timezone=spec.tz),
    )
    history = series_kw.loc[start - pd.Timedelta(days=spec.history_days) : start]
    history = history[history.index < start]
    config = replace(
        train_config(ForecasterSettings(max_iter=spec.max_iter, fit_threads=1)),
        min_train_days=7,
    )
    result = evaluate(history, site, target, config)
    best = result.best_learned()
    promoted, _ = result.decision(best)
    model = (
        fit_final(history, site, target, best, config)
        if promoted
        else fallback_model(history, site, target)
    )
    served = best if promoted else "seasonal_naive_day"
    issues = pd.date_range(start, end, freq=f"{15 * every}min", inclusive="left")
    lead = RESIDUAL_LAGS if isinstance(model, Forecaster) else 0
    span = pd.date_range(
        issues[0] - lead * pd.Timedelta(minutes=15),
        issues[-1] + pd.Timedelta(days=1),
        freq="15min",
        inclusive="left",
    )
    known = series_kw[series_kw.index < span[-1]]
    x = design_matrix(known, span, site, target)
    positions = lead + np.arange(len(issues)) * every
    if isinstance(model, Forecaster):
        y = known.reindex(span).to_numpy(dtype=float)  # only the hour before an issue is read
        values = model.issue(x, y, positions)
    else:
        frame = finish(model.predict(x).set_axis(span), x, target)[["p10", "p50", "p90"]]
        full = frame.to_numpy()
        values = np.stack([full[p : p + 96] for p in positions])
    out = IssuedForecasts(issues[0], every, values, served)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        part = cached.with_suffix(f".{os.getpid()}.npz")  # whole or absent for a second bench
        np.savez(part, first=str(out.first), every=every, values=values, model=served)
        part.replace(cached)
    return out


def ema_config(site: Site, steps: int, tariff: Tariff) -> EmaConfig:
    return EmaConfig(
        horizon_steps=steps,
        import_limit_kw=site.import_cap_kw,
        export_limit_kw=site.export_limit_kw,
        **site.ema_battery(),
        energy_cost=True,
        demand_charge=True,
        solver_time_limit_s=300.0,
        tariff=tariff,
        soc_min_pct=5.0,
    )


@dataclass
class Outcome:
    """One run over the month."""

    name: str
    pcc_kw: np.ndarray  # per step
    battery_kw: np.ndarray
    step_s: int
    index: pd.DatetimeIndex
    ema_solves: int = 0
    ema_mean_ms: float = 0.0
    note: str = ""


def figures(o: Outcome, site: Site, tariff: Tariff) -> dict[str, float]:
    """Billed peak, energy cost, demand charge, bill, violations, throughput of a run."""
    dt_h = o.step_s / 3600
    s = pd.Series(o.pcc_kw, index=o.index)
    quarter = s.resample("15min").mean()
    peak15 = float(max(quarter.max(), 0.0))
    over = np.maximum(o.pcc_kw - site.import_cap_kw, 0) + np.maximum(
        site.export_limit_kw - o.pcc_kw, 0
    )
    prices = np.array([tariff.price_at(t) for t in quarter.index])
    step_price = np.repeat(prices, int(900 / o.step_s))[: len(s)]
    imp, exp = np.maximum(o.pcc_kw, 0), np.maximum(-o.pcc_kw, 0)
    energy = float(np.sum(imp * step_price - exp * tariff.feed_in_per_kwh) * dt_h)
    demand = peak15 * tariff.demand_charge_per_kw
    return {
        "peak_kw": peak15,
        "energy_cost": energy,
        "demand_charge": demand,
        "bill": energy + demand,
        "violation_kwh": float(over.sum() * dt_h),
        "throughput_kwh": float(np.sum(np.abs(o.battery_kw)) * dt_h),
    }


class BatteryModel:
    """Follows the live command within power and stored energy, one step at a time."""

    def __init__(self, site: Site) -> None:
        self.site = site
        self.soc_kwh = 0.5 * site.capacity_kwh

    def apply(self, command_kw: float) -> float:
        site, dt_h = self.site, self.site.step_s / 3600
        b = float(np.clip(command_kw, -site.power_kw, site.power_kw))
        if b > 0:
            b = min(b, (site.capacity_kwh - self.soc_kwh) / (site.efficiency * dt_h))
            self.soc_kwh += b * site.efficiency * dt_h
        else:
            b = max(b, -self.soc_kwh * site.efficiency / dt_h)
            self.soc_kwh += b / site.efficiency * dt_h
        return b


def closed_loop_ema(
    actual: pd.DataFrame,
    site: Site,
    tariff: Tariff,
    tz: str,
    load_q: IssuedForecasts,
    pv_q: IssuedForecasts,
    replan_s: int,
    levels: tuple[tuple[float, float], ...],
    bias_decay: float = BIAS_DECAY_STEPS,
    overshoot: float = OVERSHOOT,
) -> Outcome:
    """PMA every `step_s`, EMA (scenarios from the forecaster's quantiles) every `replan_s`."""
    pma = PeakShavingController(
        PmaConfig(
            import_limit_kw=site.import_cap_kw,
            export_limit_kw=site.export_limit_kw,
            battery_capacity_kwh=site.capacity_kwh,
            battery_max_charge_kw=site.power_kw,
            battery_max_discharge_kw=site.power_kw,
            max_gap_s=max(60.0, 2 * site.step_s),
            billing_timezone=tz,
            soc_min_pct=5.0,
        )
    )
    optimizer = ScheduleOptimizer(ema_config(site, 96, tariff), [w for _, w in levels])
    battery = BatteryModel(site)
    site_kw = (actual["load_kw"] - actual["pv_kw"]).to_numpy()
    n = len(site_kw)
    pcc, batt = np.zeros(n), np.zeros(n)
    previous_b, command_kw, command_end = 0.0, 0.0, actual.index[0]
    schedule: np.ndarray | None = None
    schedule_start: pd.Timestamp | None = None
    threshold: float | None = None
    solve_ms: list[float] = []
    every = max(replan_s // site.step_s, 1)
    per_quarter = 900 // site.step_s
    planned_net: np.ndarray | None = None  # the P50 net load of the last plan, from its start
    for k, ts in enumerate(actual.index):
        if k % every == 0:
            start = ts.floor("15min")
            prior = np.zeros(96)
            bias = 0.0
            if schedule is not None and schedule_start is not None:
                shift = int((start - schedule_start) / pd.Timedelta(minutes=15))
                prior[: 96 - shift] = schedule[shift:]
                if k >= per_quarter and bias_decay > 0 and planned_net is not None and shift > 0:
                    # the last interval's measured error against the forecast planned on
                    measured = float(np.mean(site_kw[k - per_quarter : k]))
                    bias = measured - float(planned_net[shift - 1])
            load_now, pv_now = load_q.at(start), pv_q.at(start)
            planned_net = load_now["p50"] - pv_now["p50"]
            scenarios = quantile_scenarios(load_now, pv_now, levels, bias, bias_decay)
            sched = plan_with_scenarios(
                optimizer,
                EmaInputs(
                    start=start.to_pydatetime(),
                    net_load_kw=scenarios[0].net_load_kw,
                    soc_kwh=battery.soc_kwh,
                    prior_kw=prior,
                    peak_floor_kw=pma.month_peak_kw("s"),
                ),
                scenarios,
                overshoot,
            )
            schedule, schedule_start = sched.battery_p_kw, start
            threshold = sched.demand_threshold_kw
            solve_ms.append(sched.solve_time_s * 1000)
        schedule_kw = None
        if schedule is not None and schedule_start is not None:
            schedule_kw = float(schedule[int((ts - schedule_start).total_seconds() // 900)])
        when = ts.to_pydatetime()
        decision = pma.step(
            PmaInputs(
                site_id="s",
                ts=when,
                pcc_p_kw=site_kw[k] + previous_b,
                battery_p_kw=previous_b,
                battery_ts=when,
                soc_pct=100 * battery.soc_kwh / site.capacity_kwh,
                schedule_p_kw=schedule_kw,
                plan_peak_kw=threshold,
            )
        )
        # an idle PMA sends nothing: the last command holds until its TTL ends, then 0 kW
        if decision.command:
            command_kw = decision.battery_p_kw
            command_end = ts + pd.Timedelta(seconds=decision.ttl_s)
        elif ts >= command_end:
            command_kw = 0.0
        b = battery.apply(command_kw)
        batt[k], pcc[k] = b, site_kw[k] + b
        previous_b = b
    return Outcome(
        "derbus (PMA + EMA, scenarios)",
        pcc,
        batt,
        site.step_s,
        actual.index,
        len(solve_ms),
        statistics.mean(solve_ms) if solve_ms else 0.0,
    )


def rule_run(net_kw: np.ndarray, threshold_kw: float, site: Site, step_s: int) -> np.ndarray:
    """Threshold rule: discharge what the PCC is above the threshold, recharge below it (up to
    it), inside the import/export limits; returns the battery power per step."""
    s = replace(site, step_s=step_s)
    battery = BatteryModel(s)
    cap = min(threshold_kw, site.import_cap_kw - 0.5)
    out = np.zeros(len(net_kw))
    for k, x in enumerate(net_kw):
        want = cap - x  # > 0: room to charge up to the threshold; < 0: discharge to it
        want = max(want, site.export_limit_kw + 0.5 - x) if x < site.export_limit_kw else want
        out[k] = battery.apply(want)
    return out


def rule_threshold(
    previous_quarter_net: np.ndarray, site: Site, tariff: Tariff, times: pd.DatetimeIndex
) -> float:
    """The rule's threshold: the lowest bill on the previous month (15-minute steps), 1 kW grid."""
    top = float(np.max(previous_quarter_net))
    best, best_bill = top, float("inf")
    prices = np.array([tariff.price_at(t) for t in times])
    for threshold in np.arange(max(0.0, top - 2 * site.power_kw), top + 1.0, 1.0):
        pcc = previous_quarter_net + rule_run(previous_quarter_net, float(threshold), site, 900)
        imp, exp = np.maximum(pcc, 0), np.maximum(-pcc, 0)
        bill = float(np.sum(imp * prices - exp * tariff.feed_in_per_kwh) * 0.25)
        bill += max(float(pcc.max()), 0.0) * tariff.demand_charge_per_kw
        if bill < best_bill - 1e-9:
            best, best_bill = float(threshold), bill
    return best


def perfect_foresight(actual: pd.DataFrame, site: Site, tariff: Tariff) -> tuple[Outcome, float]:
    """The same LP on the month's actual 15-minute averages, one solve over the whole month."""
    quarter = actual.resample("15min").mean()
    net = (quarter["load_kw"] - quarter["pv_kw"]).to_numpy()
    # one pass: the bill's own optimum (the second pass only re-weighs soft targets)
    cfg = ema_config(site, len(net), tariff).model_copy(update={"soft_targets_second_pass": False})
    optimizer = ScheduleOptimizer(cfg)
    t = time.perf_counter()
    sched = optimizer.solve(
        EmaInputs(
            start=quarter.index[0].to_pydatetime(),
            net_load_kw=net,
            soc_kwh=0.5 * site.capacity_kwh,
            prior_kw=np.zeros(len(net)),
        )
    )
    elapsed = time.perf_counter() - t
    return Outcome(
        "perfect foresight", sched.pcc_kw, sched.battery_p_kw, 900, quarter.index
    ), elapsed


def share(none: float, got: float, best: float) -> float | None:
    """(none - got) / (none - best); None when nothing could be reduced."""
    possible = none - best
    return None if possible < 1e-6 else (none - got) / possible


@dataclass(frozen=True)
class ValueArgs:
    """What to evaluate."""

    profiles: Path
    load_col: str
    pv_col: str
    months: list[int]
    year: int | None
    site: Site
    spec: ForecastSpec
    replan_s: int = 900
    days: float | None = None
    levels: tuple[tuple[float, float], ...] = SCENARIO_LEVELS
    bias_decay: float = 0.0
    overshoot: float = OVERSHOOT


def evaluate_month(df: pd.DataFrame, year: int, month: int, a: ValueArgs) -> dict[str, Any]:
    """Every run of one month; the figures as a dict (one JSON record)."""
    tz, site = a.spec.tz, a.site
    tariff = Tariff(timezone=tz)
    start, end = month_span(year, month, tz)
    if a.days is not None:
        end = min(end, start + pd.Timedelta(days=a.days))
    began = time.perf_counter()
    actual = actual_series(df, (a.load_col, a.pv_col), start, end, site, seed=year * 12 + month)
    load_kw = (df[a.load_col] * site.load_peak_kw).rename(a.load_col)
    pv_kw = (df[a.pv_col] * site.pv_kwp).rename(a.pv_col)
    month_end = month_span(year, month, tz)[1]  # forecasts of the whole month (cached as such)
    every = max(a.replan_s // 900, 1)  # issued at each re-plan, as the service issues
    load_q = served_forecasts(load_kw, "load", start, month_end, every, a.spec)
    pv_q = served_forecasts(pv_kw, "pv", start, month_end, every, a.spec)
    forecast_s = time.perf_counter() - began
    none = Outcome(
        "no battery",
        (actual["load_kw"] - actual["pv_kw"]).to_numpy(),
        np.zeros(len(actual)),
        site.step_s,
        actual.index,
    )
    ema = closed_loop_ema(
        actual, site, tariff, tz, load_q, pv_q, a.replan_s, a.levels, a.bias_decay, a.overshoot
    )
    # the rule's threshold from the previous month's 15-minute profile
    prev_start = (start.tz_convert(tz) - pd.offsets.MonthBegin(1)).tz_convert("UTC")
    prev = df.loc[prev_start : start - pd.Timedelta(minutes=15)]
    prev_net = (prev[a.load_col] * site.load_peak_kw - prev[a.pv_col] * site.pv_kwp).to_numpy()
    threshold = rule_threshold(prev_net, site, tariff, prev.index)
    net = none.pcc_kw
    rule_b = rule_run(net, threshold, site, site.step_s)
    rule = Outcome(
        "rule (threshold from last month)",
        net + rule_b,
        rule_b,
        site.step_s,
        actual.index,
        note=f"{threshold:g} kW",
    )
    optimum, pf_s = perfect_foresight(actual, site, tariff)
    runs = {"none": none, "derbus": ema, "rule": rule, "perfect": optimum}
    figs = {k: figures(o, site, tariff) for k, o in runs.items()}
    out: dict[str, Any] = {
        "profiles": str(a.profiles),
        "load_col": a.load_col,
        "pv_col": a.pv_col,
        "month": f"{year}-{month:02d}",
        "days": round((end - start) / pd.Timedelta(days=1), 3),
        "import_limit_kw": site.import_limit_kw,
        "rule_threshold_kw": threshold,
        "ema_solves": ema.ema_solves,
        "ema_mean_ms": round(ema.ema_mean_ms, 2),
        "perfect_foresight_s": round(pf_s, 2),
        "forecast_s": round(forecast_s, 1),
        "served_models": {"load": load_q.model, "pv": pv_q.model},
        "elapsed_s": round(time.perf_counter() - began, 1),
        "runs": figs,
    }
    for run in ("derbus", "rule"):
        out[f"{run}_share_peak"] = share(
            figs["none"]["peak_kw"], figs[run]["peak_kw"], figs["perfect"]["peak_kw"]
        )
        out[f"{run}_share_bill"] = share(
            figs["none"]["bill"], figs[run]["bill"], figs["perfect"]["bill"]
        )
    return out


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f} %"


def value_table(records: list[dict[str, Any]]) -> str:
    rows = []
    for r in records:
        f = r["runs"]
        for run, label in (
            ("none", "no battery"),
            ("derbus", "derbus"),
            ("rule", f"rule ({r['rule_threshold_kw']:g} kW)"),
            ("perfect", "perfect foresight"),
        ):
            x = f[run]
            rows.append(
                [
                    r["month"],
                    label,
                    f"{x['peak_kw']:.1f}",
                    f"{x['energy_cost']:.0f}",
                    f"{x['demand_charge']:.0f}",
                    f"{x['bill']:.0f}",
                    f"{x['violation_kwh']:.2f}",
                    f"{x['throughput_kwh']:.0f}",
                    _pct(r.get(f"{run}_share_peak")) if run in ("derbus", "rule") else "",
                    _pct(r.get(f"{run}_share_bill")) if run in ("derbus", "rule") else "",
                ]
            )
    return table(
        [
            "month",
            "run",
            "billed peak kW",
            "energy cost",
            "demand charge",
            "bill",
            "violation kWh",
            "throughput kWh",
            "share of peak reduction",
            "share of bill reduction",
        ],
        rows,
    )


def goal_summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's goals over the months: median and lowest share, months worse than none."""
    shares = [r["derbus_share_bill"] for r in records if r["derbus_share_bill"] is not None]
    worse = [
        r["month"]
        for r in records
        if r["runs"]["derbus"]["bill"] > r["runs"]["none"]["bill"] + 1e-6
        or r["runs"]["derbus"]["peak_kw"] > r["runs"]["none"]["peak_kw"] + 1e-6
    ]
    more_violation = [
        r["month"]
        for r in records
        if r["runs"]["derbus"]["violation_kwh"] > r["runs"]["perfect"]["violation_kwh"] + 1e-3
    ]
    rule = [r["rule_share_bill"] for r in records if r["rule_share_bill"] is not None]
    return {
        "median_share_bill": statistics.median(shares) if shares else None,
        "min_share_bill": min(shares) if shares else None,
        "months_worse_than_none": worse,
        "months_more_violation_than_pf": more_violation,
        "rule_median_share_bill": statistics.median(rule) if rule else None,
    }


def bench_value(a: ValueArgs, json_out: Path | None) -> str:
    df = load_profiles(a.profiles, a.spec.tz)
    for col in (a.load_col, a.pv_col):
        if col not in df.columns:
            raise SystemExit(f"column {col!r} not in {a.profiles} (has {list(df.columns)})")
    local_first = df.index[0].tz_convert(a.spec.tz)
    year = a.year or (local_first + pd.Timedelta(weeks=52, days=1)).year
    records = []
    for month in a.months:
        record = evaluate_month(df, year, month, a)
        records.append(record)
        print(
            f"  value {a.load_col}/{a.pv_col} {record['month']}: derbus "
            f"{_pct(record['derbus_share_bill'])} of the bill reduction, "
            f"{record['elapsed_s']:.0f} s",
            file=sys.stderr,
            flush=True,
        )
        if json_out is not None:
            json_out.write_text(json.dumps({"records": records}, indent=1))
    summary = goal_summary(records)
    if json_out is not None:
        json_out.write_text(json.dumps({"records": records, "summary": summary}, indent=1))
    site = a.site
    limit = f"{site.import_limit_kw:g} kW" if site.import_limit_kw is not None else "none"
    header = (
        f"{a.profiles.name}: load `{a.load_col}` x {site.load_peak_kw:g} kW (+-{site.noise_pct:g}"
        f" % AR(1) noise), PV `{a.pv_col}` x {site.pv_kwp:g} kWp, battery {site.capacity_kwh:g}"
        f" kWh / {site.power_kw:g} kW (eta {site.efficiency}), import limit {limit}, export"
        f" limit {site.export_limit_kw:g} kW; Tariff(timezone={a.spec.tz}) (demand"
        f" {Tariff().demand_charge_per_kw:g}/kW); PMA every {site.step_s} s, EMA every"
        f" {a.replan_s} s (96 x 15 min, scenarios {list(a.levels)}), forecasts: the"
        f" forecaster's library trained at each month's start on {a.spec.history_days} days.\n\n"
    )

    def fmt(x: float | None) -> str:
        return _pct(x)

    foot = (
        f"\n\nderbus: median share of the bill reduction {fmt(summary['median_share_bill'])},"
        f" lowest {fmt(summary['min_share_bill'])}; months with a higher bill or peak than no"
        f" battery: {summary['months_worse_than_none'] or 'none'}; months with more violation"
        f" energy than perfect foresight: {summary['months_more_violation_than_pf'] or 'none'};"
        f" rule-based median {fmt(summary['rule_median_share_bill'])}"
    )
    return header + value_table(records) + foot


def goal_table(paths: list[Path]) -> str:
    """One row per site and month from `--json` files; the goals' summary per file."""
    rows, sums = [], []
    groups: dict[tuple[str, str, Any], list[dict[str, Any]]] = {}
    for path in paths:  # one group per site and limit setting, months from every file
        for r in json.loads(path.read_text())["records"]:
            groups.setdefault((r["load_col"], r["pv_col"], r["import_limit_kw"]), []).append(r)
    for key in sorted(groups, key=lambda k: (k[0], k[1], k[2] is None)):
        records = sorted(groups[key], key=lambda r: r["month"])
        for r in records:
            f = r["runs"]
            limit = "none" if r["import_limit_kw"] is None else f"{r['import_limit_kw']:g}"
            rows.append(
                [
                    r["load_col"],
                    r["pv_col"],
                    limit,
                    r["month"],
                    " / ".join(
                        f"{f[k]['peak_kw']:.1f}" for k in ("none", "derbus", "rule", "perfect")
                    ),
                    " / ".join(
                        f"{f[k]['bill']:.0f}" for k in ("none", "derbus", "rule", "perfect")
                    ),
                    _pct(r["derbus_share_peak"]),
                    _pct(r["derbus_share_bill"]),
                    _pct(r["rule_share_bill"]),
                    f"{f['derbus']['violation_kwh']:.2f} / {f['perfect']['violation_kwh']:.2f}",
                ]
            )
        g = goal_summary(records)
        sums.append(
            [
                records[0]["load_col"],
                records[0]["pv_col"],
                "none"
                if records[0]["import_limit_kw"] is None
                else f"{records[0]['import_limit_kw']:g}",
                len(records),
                _pct(g["median_share_bill"]),
                _pct(g["min_share_bill"]),
                ", ".join(g["months_worse_than_none"]) or "none",
                ", ".join(g["months_more_violation_than_pf"]) or "none",
                _pct(g["rule_median_share_bill"]),
            ]
        )
    months = table(
        [
            "load",
            "PV",
            "import limit kW",
            "month",
            "billed peak kW: none / derbus / rule / PF",
            "bill: none / derbus / rule / PF",
            "derbus share of peak reduction",
            "derbus share of bill reduction",
            "rule share of bill reduction",
            "violation kWh derbus / PF",
        ],
        rows,
    )
    goals = table(
        [
            "load",
            "PV",
            "import limit kW",
            "months",
            "median share of bill reduction (goal >= 85 %)",
            "lowest (goal >= 60 %)",
            "months worse than no battery (goal: none)",
            "months with more violation than PF (goal: none)",
            "rule-based median",
        ],
        sums,
    )
    return goals + "\n\n" + months


def parse_months(text: str) -> list[int]:
    """`1-12`, `6`, `1,3,5-7` → month numbers."""
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    if not out or any(not 1 <= m <= 12 for m in out):
        raise argparse.ArgumentTypeError(f"months must lie in 1..12: {text!r}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs")
    parser.add_argument(
        "--section", default="all", choices=["solve", "fleet", "latency", "value", "all"]
    )
    parser.add_argument(
        "--system-broker", action="store_true", help="latency on 127.0.0.1:1883 if one runs"
    )
    parser.add_argument(
        "--latency-replan-s",
        type=float,
        default=10.0,
        help="EMA re-plan period during the latency run (0: none)",
    )
    value = parser.add_argument_group("value (any CSV of 15-minute per-unit profiles)")
    value.add_argument("--profiles", type=Path, default=PROFILES, help="CSV: time + columns")
    value.add_argument("--load-col", default="g1-a_load_pu", help="load column (per unit)")
    value.add_argument("--pv-col", default="pv1_pv_pu", help="PV column (per unit)")
    value.add_argument("--months", type=parse_months, default=[6], help="e.g. 1-12 or 3,6")
    value.add_argument("--year", type=int, default=None, help="year (default: the file's)")
    value.add_argument("--tz", default="Europe/Berlin", help="time zone of the file's times")
    value.add_argument("--no-import-limit", action="store_true", help="no PCC import limit")
    value.add_argument("--json", type=Path, default=None, help="write the records as JSON")
    value.add_argument("--step-s", type=int, default=60, help="PMA / battery model step, s")
    value.add_argument("--replan-s", type=int, default=900, help="EMA re-plan period, s")
    value.add_argument("--days", type=float, default=None, help="only the first days of a month")
    value.add_argument("--history-days", type=int, default=90, help="forecaster training days")
    value.add_argument("--max-iter", type=int, default=200, help="forecaster boosting rounds")
    value.add_argument("--cache", type=Path, default=None, help="forecast cache folder")
    value.add_argument(
        "--bias-decay",
        type=float,
        default=0.0,
        help="steps the measured forecast error fades over (0: not used)",
    )
    value.add_argument(
        "--overshoot",
        type=float,
        default=OVERSHOOT,
        help="target decision: kW over a scenario's need per kW held below it",
    )
    parser.add_argument(
        "--goal-table",
        type=Path,
        nargs="+",
        default=None,
        help="print the goal table of --json files and exit",
    )
    args = parser.parse_args()
    if 900 % args.step_s:
        parser.error("--step-s must divide 900 (the 15-minute billing interval)")
    if args.step_s > 60:
        print(
            "note: the PMA's 15-minute window needs readings well inside it; at steps above"
            " 60 s the reading that opens an interval also closes the last one with its own"
            " power, so the demand threshold is held loosely (use for plumbing checks only)",
            file=sys.stderr,
        )
    if args.goal_table:
        print(goal_table(args.goal_table))
        return
    if args.profiles != PROFILES and args.section == "all":
        args.section = "value"  # --profiles alone means the value evaluation
    # a SIGTERM unwinds like Ctrl-C, so the service process of the latency run is stopped too
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    print(
        f"load average at start: {' / '.join(f'{x:.1f}' for x in os.getloadavg())} "
        f"(1/5/15 min) on {os.cpu_count()} CPUs\n"
    )
    if args.section in ("solve", "all"):
        print("### EMA solve time\n")
        print(bench_solve(args.quick), "\n", flush=True)
    if args.section in ("fleet", "all"):
        print("### Warm re-solve against the bare solver; fleet re-plan on one core\n")
        print(bench_fleet(args.quick), "\n", flush=True)
    if args.section in ("latency", "all"):
        print("### PMA latency, reading → setpoint, real broker\n")
        replan = args.latency_replan_s if args.latency_replan_s > 0 else None
        print(bench_latency(args.quick, args.system_broker, replan), "\n", flush=True)
    if args.section in ("value", "all"):
        print("### Closed-loop value\n")
        site = Site(step_s=args.step_s)
        if args.no_import_limit:
            site.import_limit_kw = None
        spec = ForecastSpec(
            tz=args.tz, history_days=args.history_days, max_iter=args.max_iter, cache=args.cache
        )
        months = args.months if not args.quick else args.months[:1]
        days = args.days if args.days is not None else (7.0 if args.quick else None)
        a = ValueArgs(
            args.profiles,
            args.load_col,
            args.pv_col,
            months,
            args.year,
            site,
            spec,
            args.replan_s,
            days,
            bias_decay=args.bias_decay,
            overshoot=args.overshoot,
        )
        print(bench_value(a, args.json), "\n", flush=True)
    print(f"load average at end: {' / '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
