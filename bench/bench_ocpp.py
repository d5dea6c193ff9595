"""OCPP bench: N simulated chargers on one central system, MeterValues every 10 s.

A mosquitto and the ev_charging service (its own process, as `make run` starts it) on free
ports; this process runs N simulated OCPP charge points (the edge simulator's `SimChargePoint`,
one vehicle charging each) that connect, boot, start a transaction and report MeterValues every
`--meter-s` seconds. Over a steady window of `--seconds`:

* CPU of the central system process (psutil), and of this client process for scale;
* latency setpoint → SetChargingProfile received: a setpoint (`ev_limit_kw`) is published on the
  bus every `--every-s` seconds to a charger chosen in turn; the charger stamps the profile's
  arrival with `time.time()` (one clock: one machine);
* the raw reference in the same run: a bare `ocpp` central system (the library alone, no bus, its
  own process) calls SetChargingProfile on one more simulated charger of this process at the
  same pace; the same arrival stamp gives its one-way latency, and it times the call round trip.

    .venv/bin/python bench/bench_ocpp.py [--chargers 500] [--seconds 60] [--version 1.6]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from derbus import topics
from derbus.bus import MqttBus
from derbus.messages import Priority
from derbus.settings import MqttSettings
from derbus.testing import MosquittoServer, free_port, setpoint_command
from edge_simulator.ocpp_cp import OcppSimSettings, SimChargePoint

REPO = Path(__file__).resolve().parents[1]
SITES_PER = 10  # chargers per site


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def row(name: str, ms: list[float]) -> str:
    if not ms:
        return f"| {name} | 0 | – | – | – | – |"
    return (
        f"| {name} | {len(ms)} | {statistics.median(ms):.1f} | {pct(ms, 0.99):.1f} "
        f"| {max(ms):.1f} | {statistics.mean(ms):.1f} |"
    )


# --- the raw reference: a bare ocpp central system in its own process ---------------------------
async def reference_server(port: int, count: int, every_s: float, version: str) -> None:
    """Serve one station; once it runs a transaction, call SetChargingProfile `count` times."""
    from ocpp.v16 import ChargePoint as Cp16
    from ocpp.v16 import call as call16
    from ocpp.v201 import ChargePoint as Cp201
    from ocpp.v201 import call as call201
    from websockets.asyncio.server import serve

    done = asyncio.Event()
    out: dict[str, list[float]] = {"sent": [], "rtt_ms": []}

    async def handler(ws: Any) -> None:
        cp = (Cp16 if version == "1.6" else Cp201)("ref", ws)
        reader = asyncio.create_task(cp.start())
        await asyncio.sleep(1.0)  # the station booted and started its transaction (ack'ed)
        for i in range(count):
            limit = 2000 + 100 * (i % 50)
            schedule = {
                "charging_rate_unit": "W",
                "charging_schedule_period": [{"start_period": 0, "limit": limit}],
            }
            if version == "1.6":
                req: Any = call16.SetChargingProfile(
                    connector_id=1,
                    cs_charging_profiles={
                        "charging_profile_id": 1,
                        "stack_level": 1,
                        "transaction_id": 1,
                        "charging_profile_purpose": "TxProfile",
                        "charging_profile_kind": "Relative",
                        "charging_schedule": schedule,
                    },
                )
            else:
                req = call201.SetChargingProfile(
                    evse_id=1,
                    charging_profile={
                        "id": 1,
                        "stack_level": 1,
                        "transaction_id": "ref-tx",
                        "charging_profile_purpose": "TxProfile",
                        "charging_profile_kind": "Relative",
                        "charging_schedule": [{"id": 1, **schedule}],
                    },
                )
            t0 = time.time()
            out["sent"].append(t0)
            await cp.call(req)
            out["rtt_ms"].append((time.time() - t0) * 1000)
            await asyncio.sleep(every_s)
        reader.cancel()
        done.set()

    async with serve(handler, "127.0.0.1", port, subprotocols=["ocpp1.6", "ocpp2.0.1"]):  # type: ignore[list-item]
        await done.wait()
    print(json.dumps(out))


class ReferenceStation(SimChargePoint):
    """A simulated charger for the bare reference server (its tx id is fixed, no central system)."""

    async def connect_reference(self) -> None:
        """Connect (the bare server answers boot and status with NotImplemented) and charge."""
        await self.connect()
        self.ev.transaction_id = "1" if self.version == "1.6" else "ref-tx"

    def rate_changed(self) -> None:
        """No MeterValues to the bare server (it has no handler for them)."""


async def connect_all(points: list[SimChargePoint], batch: int = 25) -> None:
    for i in range(0, len(points), batch):
        group = points[i : i + batch]
        await asyncio.gather(*(p.connect() for p in group))
        await asyncio.gather(*(p.plug_in() for p in group))


async def main(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench_ocpp_"))
    (tmp / "broker").mkdir()
    broker = MosquittoServer(data_dir=tmp / "broker").start()
    mqtt_port = broker.port
    ocpp_port, api_port, ref_port = free_port(), free_port(), free_port()
    stations = {
        f"cp{i:04d}": {"site_id": f"site-{i // SITES_PER:03d}", "id_token_policy": "accept_any"}
        for i in range(args.chargers)
    }
    env = dict(os.environ)
    env.update(
        {
            "MQTT_PORT": str(mqtt_port),
            "EV_CHARGING_API_PORT": str(api_port),
            "EV_CHARGING_OCPP_PORT": str(ocpp_port),
            "EV_CHARGING_DATA_DIR": str(tmp),
            "EV_CHARGING_STATIONS": json.dumps(stations),
            "EV_CHARGING_LOG_LEVEL": "WARNING",
            "EV_CHARGING_REPLAN_S": "3600",
            "PYTHONUNBUFFERED": "1",
        }
    )
    log = (tmp / "ev_charging.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "ev_charging"],
        env=env,
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    ref = None
    points: list[SimChargePoint] = []
    bus = MqttBus(MqttSettings(port=mqtt_port))
    try:
        url = f"ws://127.0.0.1:{ocpp_port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                _reader, writer = await asyncio.open_connection("127.0.0.1", ocpp_port)
                writer.close()
                break
            except OSError:
                await asyncio.sleep(0.2)
        sim = OcppSimSettings(
            url=url,
            version=args.version,
            meter_interval_s=args.meter_s,
            id_token="any",  # noqa: S106
            plug_in=True,
        )
        points = [SimChargePoint(sid, url, args.version, sim) for sid in stations]
        t_connect = time.monotonic()
        await connect_all(points)
        connect_s = time.monotonic() - t_connect
        charging = sum(1 for p in points if p.ev.transaction_id is not None)
        print(f"{len(points)} chargers connected and charging ({charging}) in {connect_s:.1f} s")
        await bus.connect()

        # the reference station and the bare server (its own process)
        ref_sim = OcppSimSettings(
            url=f"ws://127.0.0.1:{ref_port}",
            version=args.version,
            meter_interval_s=3600,
            plug_in=False,
        )
        n_cmds = int(args.seconds / args.every_s)
        ref = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--reference-server",
                str(ref_port),
                "--count",
                str(n_cmds),
                "--every-s",
                str(args.every_s),
                "--version",
                args.version,
            ],
            stdout=subprocess.PIPE,
            cwd=REPO,
        )
        ref_point = ReferenceStation("ref", ref_sim.url or "", args.version, ref_sim)
        for _ in range(100):
            try:
                await ref_point.connect_reference()
                break
            except OSError:
                await asyncio.sleep(0.1)

        proc = psutil.Process(server.pid)
        me = psutil.Process()
        await asyncio.sleep(args.meter_s)  # one MeterValues round before measuring
        c0, m0, w0 = proc.cpu_times(), me.cpu_times(), time.monotonic()
        sent: dict[str, list[tuple[float, float]]] = {}
        before = {p.station_id: len(p.profiles) for p in points}
        for i in range(n_cmds):
            p = points[(i * 7) % len(points)]
            value = round(3.0 + (i % 8) * 0.5, 1)
            cmd = setpoint_command(
                value,
                datetime.now(UTC),
                target="ev_limit_kw",
                ttl_s=600,
                source="bench",
                priority=Priority.SITE_OPTIMISER,
            )
            t0 = time.time()
            sent.setdefault(p.station_id, []).append((t0, value))
            await bus.publish(
                topics.SETPOINT.topic(stations[p.station_id]["site_id"], f"{p.station_id}-1"),
                cmd.to_json_bytes(),
                qos=1,
            )
            await asyncio.sleep(args.every_s)
        await asyncio.sleep(1.0)
        c1, m1, w1 = proc.cpu_times(), me.cpu_times(), time.monotonic()
        wall = w1 - w0
        server_cpu = (c1.user + c1.system - c0.user - c0.system) / wall * 100
        client_cpu = (m1.user + m1.system - m0.user - m0.system) / wall * 100

        lat: list[float] = []
        missing = 0
        for p in points:
            got = [e for e in p.profiles[before[p.station_id] :] if e.call == "set"]
            for (t0, value), event in zip(sent.get(p.station_id, []), got, strict=False):
                if event.limit_kw is not None and abs(event.limit_kw - value) < 1e-6:
                    lat.append((event.received_s - t0) * 1000)
                else:
                    missing += 1
            missing += max(0, len(sent.get(p.station_id, [])) - len(got))
        out, _ = ref.communicate(timeout=120)
        reference = json.loads(out.decode().strip().splitlines()[-1])
        ref_events = [e for e in ref_point.profiles if e.call == "set"]
        ref_lat = [
            (e.received_s - t0) * 1000 for t0, e in zip(reference["sent"], ref_events, strict=False)
        ]
        load = os.getloadavg()
        print()
        print(
            f"OCPP {args.version}, {args.chargers} chargers, MeterValues every {args.meter_s:g} s, "
            f"window {wall:.0f} s, {n_cmds} setpoints (1 per {args.every_s:g} s); "
            f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
        )
        print()
        print("| process | CPU % of one core |")
        print("| --- | --- |")
        print(f"| ev_charging (central system + bus) | {server_cpu:.1f} |")
        print(f"| bench (the {args.chargers} simulated chargers) | {client_cpu:.1f} |")
        print()
        print("| latency, ms | n | p50 | p99 | max | mean |")
        print("| --- | --- | --- | --- | --- | --- |")
        print(row("setpoint on the bus → SetChargingProfile at the charger", lat))
        print(row("raw: bare ocpp call sent → SetChargingProfile at the charger", ref_lat))
        print(row("raw: bare ocpp call round trip (CallResult back)", reference["rtt_ms"]))
        if lat and ref_lat:
            print(
                f"\nratio p50 {statistics.median(lat) / statistics.median(ref_lat):.1f}x, "
                f"p99 {pct(lat, 0.99) / pct(ref_lat, 0.99):.1f}x the bare call; "
                f"{missing} setpoints without a matching profile"
            )
        await ref_point.close()
    finally:
        for p in points:
            await p.close()
        await bus.close()
        if ref is not None and ref.poll() is None:
            ref.kill()
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
        broker.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chargers", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--meter-s", type=float, default=10.0)
    parser.add_argument("--every-s", type=float, default=0.25)
    parser.add_argument("--version", choices=["1.6", "2.0.1"], default="1.6")
    parser.add_argument("--reference-server", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    ns = parser.parse_args()
    if ns.reference_server is not None:
        asyncio.run(reference_server(ns.reference_server, ns.count, ns.every_s, ns.version))
    else:
        asyncio.run(main(ns))
