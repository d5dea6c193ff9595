"""Meter gateway throughput: registers read per second with 100 SunSpec devices over Modbus TCP.

The device server runs in a child process (the edge simulator's SunSpec Modbus server with
`--sites N`, or the gateway's own pymodbus `DeviceServer` with the same models); the gateway runs
here on an in-memory bus, so the figure is Modbus + decoding, not MQTT.

    .venv/bin/python bench/bench_meter_gateway.py            # both servers, 100 devices, 10 s
    .venv/bin/python bench/bench_meter_gateway.py --quick    # 3 s windows
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import time
from datetime import UTC, datetime
from typing import Any

from derbus.bus import InMemoryBus
from derbus.testing import free_port, port_open
from meter_gateway.device_map import parse_config, resolve
from meter_gateway.service import build_service
from meter_gateway.settings import Settings

KINDS = ("meter", "pv", "battery")


def _run_simulator(port: int, sites: int) -> None:
    from edge_simulator.service import SimClock
    from edge_simulator.service import build_service as build_simulator
    from edge_simulator.settings import Settings as SimSettings

    async def main() -> None:
        settings = SimSettings(api_port=0, interval_s=3600, modbus_port=port, sites=sites)
        clock = SimClock(datetime(2026, 6, 21, 10, tzinfo=UTC), speed=1)
        service = build_simulator(settings, InMemoryBus(), clock=clock)
        await service.start()
        await asyncio.Event().wait()

    asyncio.run(main())


def _run_own_server(port: int, units: int) -> None:
    from meter_gateway.devsim import DeviceServer, sunspec_image

    image = sunspec_image(
        [
            (1, {"Mn": "bench"}),
            (103, {"W": 3000, "W_SF": 0}),
            (123, {}),
            (802, {"W": -800, "W_SF": 0, "SoC": 555, "SoC_SF": -1}),
            (124, {"WChaMax": 5000, "WChaMax_SF": 0, "ChaState": 555, "ChaState_SF": -1}),
            (
                203,
                {
                    "W": 1200,
                    "W_SF": 0,
                    "PhVphA": 2300,
                    "PhVphB": 2310,
                    "PhVphC": 2290,
                    "V_SF": -1,
                    "Hz": 5000,
                    "Hz_SF": -2,
                    "TotWhImp": 1000,
                    "TotWhExp": 10,
                    "TotWh_SF": 0,
                },
            ),
        ]
    )

    async def main() -> None:
        server = DeviceServer({u: {40000: list(image)} for u in range(1, units + 1)}, port=port)
        await server.start()
        await asyncio.Event().wait()

    asyncio.run(main())


def _devices(port: int, n_sites: int, kinds: tuple[str, ...], interval_s: float) -> list[Any]:
    devices = [
        {
            "id": kind,
            "site_id": f"site-{unit:04d}",
            "kind": kind,
            "unit_id": unit,
            "connection": {"type": "tcp", "host": "127.0.0.1", "port": port},
            "sunspec": "auto",
            "sunspec_base": 40000,
            "poll_interval_s": interval_s,
            "timeout_s": 2.0,
        }
        for unit in range(1, n_sites + 1)
        for kind in kinds
    ]
    return resolve(parse_config({"devices": devices}), "site-1")


def _total(service: Any, name: str) -> float:
    total = 0.0
    for metric in service.metrics.registry.collect():
        for sample in metric.samples:
            if sample.name == name:
                total += sample.value
    return total


async def _measure(
    port: int, n_sites: int, kinds: tuple[str, ...], interval_s: float, seconds: float
) -> dict[str, float]:
    devices = _devices(port, n_sites, kinds, interval_s)
    service = build_service(Settings(retry_backoff_max_s=1.0), InMemoryBus(), devices)
    await service.start()
    try:
        runners = service.state.runners.values()
        deadline = time.monotonic() + 120
        while not all(r.last_reading is not None for r in runners):
            if time.monotonic() > deadline:
                raise RuntimeError("devices not all discovered within 120 s")
            await asyncio.sleep(0.1)
        names = (
            "derbus_meter_gateway_registers_read_total",
            "derbus_meter_gateway_read_requests_total",
            "derbus_meter_gateway_readings_published_total",
            "derbus_meter_gateway_poll_failures_total",
        )
        before = {n: _total(service, n) for n in names}
        cpu0, t0 = time.process_time(), time.monotonic()
        await asyncio.sleep(seconds)
        cpu1, t1 = time.process_time(), time.monotonic()
        after = {n: _total(service, n) for n in names}
    finally:
        await service.stop()
    dt = t1 - t0
    rate = {n: (after[n] - before[n]) / dt for n in names}
    return {
        "registers_s": rate["derbus_meter_gateway_registers_read_total"],
        "requests_s": rate["derbus_meter_gateway_read_requests_total"],
        "readings_s": rate["derbus_meter_gateway_readings_published_total"],
        "failures": after["derbus_meter_gateway_poll_failures_total"]
        - before["derbus_meter_gateway_poll_failures_total"],
        "cpu_pct": 100 * (cpu1 - cpu0) / dt,
    }


def _start(target: str, port: int, n_sites: int) -> mp.process.BaseProcess:
    ctx = mp.get_context("spawn")
    fn = _run_simulator if target == "simulator" else _run_own_server
    proc = ctx.Process(target=fn, args=(port, n_sites), daemon=True)
    proc.start()
    deadline = time.monotonic() + 120
    while not port_open("127.0.0.1", port):
        if not proc.is_alive() or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"{target} Modbus server did not start on {port}")
        time.sleep(0.2)
    return proc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=100, help="sites (one unit id each)")
    parser.add_argument("--seconds", type=float, default=10.0, help="measurement window")
    parser.add_argument("--quick", action="store_true", help="3 s windows")
    parser.add_argument("--target", choices=("simulator", "own", "both"), default="both")
    args = parser.parse_args()
    seconds = 3.0 if args.quick else args.seconds
    targets = ("simulator", "own") if args.target == "both" else (args.target,)
    cases = [
        ("meter", ("meter",), 0.01),  # as fast as the server answers
        ("meter", ("meter",), 1.0),  # the usual 1 s poll
        ("meter+pv+battery", KINDS, 0.01),
    ]
    rows = []
    for target in targets:
        port = free_port()
        proc = _start(target, port, args.devices)
        try:
            for label, kinds, interval in cases:
                r = asyncio.run(_measure(port, args.devices, kinds, interval, seconds))
                rows.append((target, args.devices * len(kinds), label, interval, r))
        finally:
            proc.kill()
            proc.join(5)
    print(f"\nmeter_gateway: Modbus TCP SunSpec polling, {seconds:g} s windows\n")
    print(
        f"{'server':10} {'devices':>7} {'kinds':18} {'poll s':>6} {'registers/s':>12} "
        f"{'requests/s':>10} {'readings/s':>10} {'failures':>8} {'gw CPU %':>8}"
    )
    for target, n, label, interval, r in rows:
        print(
            f"{target:10} {n:7d} {label:18} {interval:6g} {r['registers_s']:12.0f} "
            f"{r['requests_s']:10.0f} {r['readings_s']:10.0f} {r['failures']:8.0f} "
            f"{r['cpu_pct']:8.0f}"
        )


if __name__ == "__main__":
    main()
