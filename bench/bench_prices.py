"""The bill on a static time-of-use tariff against a day-ahead price series with the same mean.

Same site, same battery, same EMA (peak_shaving's `ScheduleOptimizer`, energy cost and demand
charge on), same forecasts: the actual 15-minute profile (perfect foresight of load and PV, so
the difference is the prices' alone). The EMA re-plans every hour over 96 steps from the SoC the
previous hour left and the month's billed peak so far; the battery follows the plan exactly.

No market data is reachable from here, so the day-ahead series is a stand-in built from the
shared SimBench profiles themselves: a merit-order price, affine in the residual load of a
"system" (the mean of the three load columns minus 0.5 × the mean of the two PV columns),
scaled to a day-ahead-like spread (coefficient of variation 0.4, the order of EPEX day-ahead
prices in 2016-2019), floored at 0 (the EMA's LP takes no negative import price) and scaled so
that its mean over each month equals the ToU tariff's mean over the same month. Export is paid the tariff's feed-in in both cases.

    uv run python bench/bench_prices.py [--months 3,6,9,12] [--loads h0-a,g1-a]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
from harness import Site, profiles
from tables import table

from derbus.tariff import Tariff
from peak_shaving.optimizer import EmaConfig, EmaInputs, ScheduleOptimizer

LOADS = ("h0-a_load_pu", "h0-b_load_pu", "g1-a_load_pu")
PVS = ("pv1_pv_pu", "pv3_pv_pu")
STEP_S = 900
HORIZON = 96
REPLAN = 4  # steps between re-plans (1 h)


def day_ahead_stand_in(df: pd.DataFrame, tou: np.ndarray, month: pd.DatetimeIndex) -> np.ndarray:
    """A merit-order price on the month's intervals with the ToU prices' mean (see the module)."""
    system = df.loc[month, list(LOADS)].mean(axis=1) - 0.5 * df.loc[month, list(PVS)].mean(axis=1)
    z = ((system - system.mean()) / system.std()).to_numpy()
    mean = float(tou.mean())
    price = np.maximum(mean + 0.4 * mean * z, 0.0)  # the EMA prices no negative import
    return price * mean / price.mean()


def tou_prices(tariff: Tariff, index: pd.DatetimeIndex) -> np.ndarray:
    return np.array([tariff.price_at(t.to_pydatetime()) for t in index])


@dataclass
class Bill:
    """A month's bill: energy (import × price − export × feed-in) and demand charge."""

    energy: float
    demand: float
    peak_kw: float
    throughput_kwh: float

    @property
    def total(self) -> float:
        return self.energy + self.demand


def bill(pcc_kw: np.ndarray, price: np.ndarray, tariff: Tariff, battery_kw: np.ndarray) -> Bill:
    dt_h = STEP_S / 3600
    imp, exp = np.maximum(pcc_kw, 0), np.maximum(-pcc_kw, 0)
    energy = float(np.sum(imp * price - exp * tariff.feed_in_per_kwh) * dt_h)
    peak = float(pcc_kw.max())
    return Bill(
        energy, peak * tariff.demand_charge_per_kw, peak, float(np.abs(battery_kw).sum() * dt_h)
    )


def rolling_plan(
    net_kw: np.ndarray,
    index: pd.DatetimeIndex,
    price: np.ndarray | None,
    tariff: Tariff,
    site: Site,
    optimizer: ScheduleOptimizer,
    solve_ms: list[float],
) -> np.ndarray:
    """Battery power per interval: the EMA every hour on the next 96 steps (None: the tariff)."""
    n = len(net_kw)
    padded_net = np.concatenate([net_kw, np.repeat(net_kw[-96:], 2)])[: n + HORIZON]
    padded_price = None
    if price is not None:
        padded_price = np.concatenate([price, np.repeat(price[-96:], 2)])[: n + HORIZON]
    battery = np.zeros(n)
    soc = 0.5 * site.capacity_kwh
    prior = np.zeros(HORIZON)
    month_peak = 0.0
    for k in range(0, n, REPLAN):
        window = slice(k, k + HORIZON)
        plan = optimizer.solve(
            EmaInputs(
                start=index[k].to_pydatetime(),
                net_load_kw=padded_net[window],
                soc_kwh=soc,
                prior_kw=prior,
                peak_floor_kw=month_peak,
                price_per_kwh=None if padded_price is None else padded_price[window],
                export_per_kwh=None
                if padded_price is None
                else np.full(HORIZON, tariff.feed_in_per_kwh),
            )
        )
        solve_ms.append(plan.solve_time_s * 1000)
        done = min(REPLAN, n - k)
        battery[k : k + done] = plan.battery_p_kw[:done]
        soc = float(plan.soc_kwh[done])
        month_peak = max(month_peak, float((net_kw[k : k + done] + battery[k : k + done]).max()))
        prior = np.concatenate([plan.battery_p_kw[done:], np.zeros(done)])
    return battery


def run(months: list[int], loads: list[str]) -> str:
    df = profiles()
    site = Site()
    tariff = Tariff()
    cfg = EmaConfig(
        horizon_steps=HORIZON,
        step_s=STEP_S,
        import_limit_kw=1e4,
        export_limit_kw=-1e4,
        **site.ema_battery(),
        energy_cost=True,
        demand_charge=True,
        reserve_pct=10.0,  # = soc_min_pct: no reserve above the floor (5 % did that before the check)
        end_soc_pct=50.0,
        tariff=tariff,
    )
    optimizer = ScheduleOptimizer(cfg)
    rows: list[list[str]] = []
    solve_ms: list[float] = []
    savings: dict[str, list[float]] = {"ToU": [], "day-ahead": []}
    for load in loads:
        for month in months:
            start = pd.Timestamp(2016, month, 1, tz="UTC")
            index = df.loc[
                start : start + pd.offsets.MonthBegin(1) - pd.Timedelta(minutes=15)
            ].index
            net = (
                df.loc[index, f"{load}_load_pu"] * site.load_peak_kw
                - df.loc[index, "pv1_pv_pu"] * site.pv_kwp
            ).to_numpy()
            tou = tou_prices(tariff, index)
            da = day_ahead_stand_in(df, tou, index)
            zero = np.zeros(len(net))
            for name, price, planned_on in (("ToU", tou, None), ("day-ahead", da, da)):
                none = bill(net, price, tariff, zero)
                battery = rolling_plan(net, index, planned_on, tariff, site, optimizer, solve_ms)
                with_battery = bill(net + battery, price, tariff, battery)
                saving = none.total - with_battery.total
                savings[name].append(saving)
                rows.append(
                    [
                        load,
                        start.strftime("%b"),
                        name,
                        f"{price.mean():.4f}",
                        f"{none.energy:.0f}",
                        f"{none.demand:.0f}",
                        f"{none.total:.0f}",
                        f"{with_battery.energy:.0f}",
                        f"{with_battery.demand:.0f}",
                        f"{with_battery.total:.0f}",
                        f"{saving:.0f}",
                        f"{100 * saving / none.total:.1f} %",
                        f"{with_battery.throughput_kwh:.0f}",
                    ]
                )
    headers = [
        "load",
        "month",
        "prices",
        "mean price/kWh",
        "no battery: energy",
        "demand",
        "bill",
        "battery: energy",
        "demand",
        "bill",
        "saving",
        "saving %",
        "throughput kWh",
    ]
    ms = sorted(solve_ms)
    summary = (
        f"\nsaving with the battery, sum over the rows: ToU {sum(savings['ToU']):.0f}, "
        f"day-ahead {sum(savings['day-ahead']):.0f}; {len(ms)} EMA solves, "
        f"p50 {statistics.median(ms):.1f} ms, p99 {ms[int(0.99 * (len(ms) - 1))]:.1f} ms, "
        f"max {ms[-1]:.1f} ms; load average {os.getloadavg()[0]:.1f}"
    )
    return table(headers, rows) + summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--months", default="3,6,9,12", help="months of 2016, comma-separated")
    parser.add_argument("--loads", default="h0-a,g1-a", help="load columns without _load_pu")
    args = parser.parse_args()
    started = time.perf_counter()
    print(run([int(m) for m in args.months.split(",")], args.loads.split(",")))
    print(f"took {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
