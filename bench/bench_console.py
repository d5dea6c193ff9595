"""Console bench: the fleet page with N sites at 1 Hz — reading on the bus -> value on the page.

A mosquitto and the console (its own process, as `make run` starts it) on free ports; headless
Debian chromium (Selenium) opens /fleet; a publisher sends one PCC reading per site per second
whose value is the round number. A MutationObserver in the page stamps every change of a PCC
cell (`performance.timeOrigin + now()`, the same wall clock as the publisher's `time.time()`),
so each value's latency is page time − send time. In the same run a bare paho subscriber on the
same broker stamps the same messages: the raw reference. The page's CPU is the renderer main
thread's task time (Chrome's `Performance.getMetrics` TaskDuration) over the measured span;
the console process's CPU is read with psutil.

    .venv/bin/python bench/bench_console.py [--sites 100] [--seconds 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import psutil
from selenium import webdriver
from selenium.webdriver.chrome.service import Service as ChromeService

from derbus import topics
from derbus.bus import MqttBus
from derbus.launcher import ready
from derbus.messages import MeterReading, utcnow
from derbus.settings import MqttSettings
from derbus.testing import MosquittoServer, free_port, wait_until
from derbus.testing.process import HEADLESS_CHROMIUM_ARGS

REPO = Path(__file__).resolve().parents[1]
OBSERVER = """
window.__seen = [];
new MutationObserver((changes) => {
  const t = performance.timeOrigin + performance.now();
  for (const c of changes) {
    const cell = c.target;
    if (cell.dataset && cell.dataset.k === "pcc_kw") window.__seen.push([cell.parentNode.id, cell.textContent, t]);
  }
}).observe(document.getElementById("fleet-body"), {subtree: true, childList: true});
"""


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def start_console(mqtt_port: int, api_port: int, data_dir: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env.update(
        {
            "MQTT_PORT": str(mqtt_port),
            "CONSOLE_API_PORT": str(api_port),
            "CONSOLE_DATA_DIR": data_dir,
            "CONSOLE_API_TOKEN": "bench",
            "CONSOLE_SERVICE_URLS": "{}",
            "PYTHONUNBUFFERED": "1",
        }
    )
    log = Path(data_dir) / "console.log"
    return subprocess.Popen(
        [sys.executable, "-m", "console"],
        env=env,
        cwd=REPO,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


def browser() -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "chromium"
    for arg in HEADLESS_CHROMIUM_ARGS:
        options.add_argument(arg)
    driver_path = shutil.which("chromedriver") or "chromedriver"
    return webdriver.Chrome(options=options, service=ChromeService(executable_path=driver_path))


def task_seconds(driver: webdriver.Chrome) -> float:
    metrics = driver.execute_cdp_cmd("Performance.getMetrics", {})["metrics"]
    return float(next(m["value"] for m in metrics if m["name"] == "TaskDuration"))


async def publish_rounds(
    port: int, sites: list[str], seconds: int, sent: dict[tuple[str, int], float]
) -> None:
    """One reading per site per second, value = the round number; send times recorded."""
    bus = MqttBus(MqttSettings(port=port))
    await bus.connect()
    try:
        began = time.monotonic()
        for k in range(1, seconds + 1):
            for site in sites:
                payload = MeterReading(ts=utcnow(), source="bench", p_kw=float(k)).to_json_bytes()
                sent[site, k] = time.time()
                await bus.publish(topics.METER.topic(site, "pcc"), payload, 1, True)
            await asyncio.sleep(max(0.0, began + k - time.monotonic()))
    finally:
        await bus.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=100)
    parser.add_argument("--seconds", type=int, default=60)
    args = parser.parse_args()
    sites = [f"b{i:03d}" for i in range(args.sites)]
    broker = MosquittoServer()
    broker.start()
    api_port = free_port()
    data_dir = tempfile.mkdtemp(prefix="bench-console-")
    console = start_console(broker.port, api_port, data_dir)
    driver = None
    raw: dict[tuple[str, int], float] = {}
    reference = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    try:
        wait_until(lambda: ready(api_port), 120, 0.2, "the console")

        def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
            ids = topics.METER.parse(msg.topic)
            if ids is not None and not msg.retain:
                raw[ids.site_id, int(json.loads(msg.payload)["p_kw"])] = time.time()

        reference.on_message = on_message
        reference.connect("127.0.0.1", broker.port)
        reference.subscribe(topics.METER.filter(), 1)
        reference.loop_start()
        driver = browser()
        driver.get(f"http://127.0.0.1:{api_port}/fleet")
        driver.execute_script(OBSERVER)
        driver.execute_cdp_cmd("Performance.enable", {})
        server = psutil.Process(console.pid)
        sent: dict[tuple[str, int], float] = {}
        cpu0, task0, wall0 = server.cpu_times(), task_seconds(driver), time.monotonic()
        asyncio.run(publish_rounds(broker.port, sites, args.seconds, sent))
        time.sleep(2)  # let the last round arrive before reading the page
        cpu1, task1, wall1 = server.cpu_times(), task_seconds(driver), time.monotonic()
        seen = driver.execute_script("return window.__seen")
    finally:
        reference.loop_stop()
        if driver is not None:
            driver.quit()
        console.terminate()
        console.wait(15)
        broker.cleanup()
        shutil.rmtree(data_dir, ignore_errors=True)
    page_ms = []
    for row_id, text, t_ms in seen:
        site = row_id.removeprefix("site-")
        try:
            k = round(float(text))
        except ValueError:
            continue
        if (site, k) in sent:
            page_ms.append(t_ms - 1000 * sent[site, k])
    raw_ms = [1000 * (t - sent[key]) for key, t in raw.items() if key in sent]
    span = wall1 - wall0
    expected = len(sites) * args.seconds
    print(
        f"console bench: {len(sites)} sites x 1 Hz for {args.seconds} s, load avg "
        f"{os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}"
    )
    print(f"{'path':38s} {'values':>7s} {'p50 ms':>8s} {'p99 ms':>8s} {'max ms':>8s}")
    for name, values in (
        ("bus -> value on the page (console)", page_ms),
        ("bus -> bare paho subscriber (raw)", raw_ms),
    ):
        if values:
            print(
                f"{name:38s} {len(values):7d} {statistics.median(values):8.1f} "
                f"{pct(values, 0.99):8.1f} {max(values):8.1f}"
            )
    print(
        f"values shown on the page: {len(page_ms)} of {expected} sent "
        f"({100 * len(page_ms) / expected:.1f} %; a value replaced within one push is not shown)"
    )
    if page_ms and raw_ms:
        print(
            f"p50 ratio page / raw: {statistics.median(page_ms) / statistics.median(raw_ms):.1f}x"
        )
    print(f"page main-thread CPU: {100 * (task1 - task0) / span:.1f} % of one core")
    server_s = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
    print(f"console process CPU: {100 * server_s / span:.1f} % of one core")


if __name__ == "__main__":
    main()
