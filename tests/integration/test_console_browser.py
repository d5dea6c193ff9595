"""The console in a real browser (Debian's chromium via Selenium) on the real platform.

`derbus up` starts a mosquitto and the services as processes (edge simulator, peak shaving,
load manager, voltage coordinator with its feeder simulation, and the console); the test
publishes day-ahead forecasts for the simulated site (standing in for a forecaster that has
history), then uses every page as a person would. Each page is checked for errors in the
browser's console and with axe-core (no serious or critical violations), and photographed into
`DERBUS_SCREENSHOTS` (default `run/console-screenshots`; `make console-docs` writes docs/console).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import shutil
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service as ChromeService
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select, WebDriverWait

from derbus import topics
from derbus.bus import MqttBus
from derbus.launcher import Platform, up, wait_ready
from derbus.messages import TimeSeries
from derbus.settings import MqttSettings
from derbus.testing import free_port
from derbus.testing.process import HEADLESS_CHROMIUM_ARGS

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
AXE = REPO / "services" / "console" / "tests" / "vendor" / "axe.min.js"
TOKEN = "console-test-token"
SITE = "site-1"
SERVICES = ["console", "edge_simulator", "peak_shaving", "load_manager", "voltage_coordinator"]
SHOTS = Path(os.environ.get("DERBUS_SCREENSHOTS", REPO / "run" / "console-screenshots"))
WAIT_S = 60.0


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - our own localhost API
        return json.loads(response.read())


@pytest.fixture(scope="module")
def platform() -> Iterator[Platform]:
    """The platform as `make run` starts it, on free ports, the console with a known token."""
    env = {
        "CONSOLE_API_TOKEN": TOKEN,
        "CONSOLE_HISTORY_STEP_S": "1",
        "CONSOLE_REST_INTERVAL_S": "1",
        "VOLTAGE_COORDINATOR_SOLVE_INTERVAL_S": "2",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        started = up(REPO, free_port(), SERVICES, free_ports=True)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    try:
        status = wait_ready(started, 120.0)
        assert all(status.values()), f"not ready: {status}; logs in {started.run_dir}"
        asyncio.run(_publish_forecasts(started))
        yield started
    finally:
        started.stop()


async def _publish_forecasts(platform: Platform) -> None:
    """Retained day-ahead load and PV forecasts for the site, from the simulator's own time."""
    api = f"http://127.0.0.1:{platform.api_ports['edge_simulator']}"
    sim_time: str | None = None
    for _ in range(200):
        sim_time = _get_json(f"{api}/sites")["sim_time"]
        if sim_time:
            break
        await asyncio.sleep(0.1)
    assert sim_time, "the edge simulator has not stepped"
    now = datetime.fromisoformat(sim_time).astimezone(UTC)
    start = now.replace(minute=now.minute - now.minute % 15, second=0, microsecond=0)
    hours = [(start + timedelta(minutes=15 * k)).hour + k % 4 / 4 for k in range(96)]
    load = [1.2 + 0.8 * math.exp(-(((h - 19) % 24) ** 2) / 6) for h in hours]
    pv = [max(0.0, 6.0 * math.sin(math.pi * (h - 6) / 14)) if 6 <= h <= 20 else 0.0 for h in hours]
    bus = MqttBus(MqttSettings(port=platform.mqtt_port))
    await bus.connect()
    try:
        for target, values in (("load", load), ("pv", pv)):
            series = TimeSeries(
                ts=now,
                source="test-forecaster",
                kind="forecast",
                quantity=f"{target}_p_kw",
                issue_time=now,
                start=start,
                step_s=900,
                values=[round(v, 3) for v in values],
                quantiles={
                    "p10": [round(0.8 * v, 3) for v in values],
                    "p50": [round(v, 3) for v in values],
                    "p90": [round(1.25 * v, 3) for v in values],
                },
                model="test",
            )
            spec = topics.FORECAST
            await bus.publish(spec.topic(SITE, target), series.to_json_bytes(), 1, True)
    finally:
        await bus.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    """Headless Debian chromium through its chromedriver (installed by the Makefile)."""
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.fail(
            "chromium and chromium-driver are required (make deps installs them)", pytrace=False
        )
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (*HEADLESS_CHROMIUM_ARGS, "--lang=en"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=ChromeService(executable_path=driver_path))
    driver.set_script_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def console(platform: Platform, browser: WebDriver) -> str:
    return f"http://127.0.0.1:{platform.api_ports['console']}"


def until(driver: WebDriver, what: str, predicate: Any, timeout: float = WAIT_S) -> Any:
    """Wait for a condition in the page (polled by Selenium), naming it when it times out."""
    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(
        lambda d: predicate(d), message=f"waiting for {what}"
    )


def text(driver: WebDriver, element_id: str) -> str:
    return str(driver.find_element(By.ID, element_id).text)


def errors_in_console(driver: WebDriver, allowed: str | None = None) -> list[str]:
    """SEVERE browser-console entries since the last call (`allowed` matches expected ones)."""
    logs = driver.get_log("browser")
    return [
        e["message"]
        for e in logs
        if e["level"] == "SEVERE" and not (allowed and re.search(allowed, e["message"]))
    ]


def serious_violations(driver: WebDriver) -> list[str]:
    """axe-core on the page: serious and critical violations, with where they are."""
    driver.execute_script(AXE.read_text())
    result = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "axe.run(document, {resultTypes: ['violations']}).then(r => done(r.violations));"
    )
    return [
        f"{v['id']} ({v['impact']}): {[n['target'] for n in v['nodes'][:3]]}"
        for v in result
        if v["impact"] in ("serious", "critical")
    ]


def check_page(driver: WebDriver, name: str, allowed: str | None = None) -> None:
    """No console errors, no serious accessibility violations; then a screenshot."""
    assert AXE.exists(), "axe-core is not vendored: run make console-assets"
    assert errors_in_console(driver, allowed) == []
    assert serious_violations(driver) == []
    SHOTS.mkdir(parents=True, exist_ok=True)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, min(int(height) + 140, 4000))  # the whole page in one picture
    driver.execute_script("window.scrollTo(0, 0)")
    driver.save_screenshot(str(SHOTS / f"{name}.png"))
    driver.set_window_size(1280, 1000)


def number(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


def test_fleet_shows_the_site_and_services_live(console: str, browser: WebDriver) -> None:
    browser.get(f"{console}/fleet")
    cell = f"#site-{SITE} [data-k=ts]"
    first = until(
        browser,
        "a reading on the fleet page",
        lambda d: d.find_element(By.CSS_SELECTOR, cell).text.strip("—") or None,
    )
    until(
        browser,
        "the reading time to change live",
        lambda d: d.find_element(By.CSS_SELECTOR, cell).text not in ("", "—", first),
    )
    pcc = browser.find_element(By.CSS_SELECTOR, f"#site-{SITE} [data-k=pcc_kw]").text
    assert number(pcc) is not None, pcc
    until(
        browser,
        "peak_shaving online in the services table",
        lambda d: "online" in d.find_element(By.ID, "svc-peak_shaving").text,
    )
    assert "edge_simulator" in browser.find_element(By.ID, "services-table").text
    check_page(browser, "fleet")


def test_site_page_charts_live_and_a_setpoint_gets_its_ack(
    console: str, browser: WebDriver
) -> None:
    browser.get(f"{console}/sites/{SITE}")
    first = until(browser, "a reading time", lambda d: text(d, "v-ts").strip("—") or None)
    until(browser, "the reading time to change", lambda d: text(d, "v-ts") not in ("—", first))
    until(
        browser, "the live chart", lambda d: d.find_elements(By.CSS_SELECTOR, "#live-chart canvas")
    )
    until(
        browser,
        "the forecast chart with its bands",
        lambda d: d.find_elements(By.CSS_SELECTOR, "#forecast-chart canvas"),
    )
    assert "P90" in browser.find_element(By.ID, "forecast-chart").text
    until(
        browser,
        "the battery schedule from peak_shaving",
        lambda d: d.find_elements(By.CSS_SELECTOR, "#schedule-chart canvas"),
        90,
    )
    until(
        browser,
        "the import limit from peak_shaving's config",
        lambda d: number(text(d, "import-limit")) is not None,
    )

    # a wrong token is refused next to the token field, nothing is sent
    form = browser.find_element(By.ID, "setpoint-form")
    form.find_element(By.NAME, "value").send_keys("1.5")
    form.find_element(By.NAME, "token").send_keys("not-the-token")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    until(browser, "the token error", lambda d: d.find_elements(By.ID, "err-token"))
    assert text(browser, "err-token") == "wrong token"
    assert errors_in_console(browser, allowed=r"status of 403") == []

    form = browser.find_element(By.ID, "setpoint-form")
    Select(form.find_element(By.NAME, "priority")).select_by_visible_text("grid_operator")
    form.find_element(By.NAME, "ttl_s").clear()
    form.find_element(By.NAME, "ttl_s").send_keys("30")
    token = form.find_element(By.NAME, "token")
    token.clear()
    token.send_keys(TOKEN)
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    span = until(
        browser,
        "the sent setpoint",
        lambda d: (d.find_elements(By.CSS_SELECTOR, "#setpoint-result .ack") or [None])[0],
    )
    setpoint_id = span.get_attribute("data-setpoint")
    ack = until(
        browser,
        "its ack to arrive",
        lambda d: (t := text(d, f"ack-{setpoint_id}")) != "waiting…" and t,
    )
    assert ack.split()[0] in ("accepted", "queued", "rejected", "superseded"), ack
    until(
        browser,
        "the ack in the log",
        lambda d: setpoint_id[:12] in d.find_element(By.ID, "log-body").text,
    )
    check_page(browser, "site", allowed=r"status of 403")


def test_decisions_say_what_each_hour_does(console: str, browser: WebDriver) -> None:
    def loaded(d: WebDriver) -> bool:
        if not d.find_elements(By.ID, "hours-table"):
            d.refresh()
            return False
        return True

    browser.get(f"{console}/decisions/{SITE}")
    until(browser, "the decisions table", loaded)
    rows = browser.find_elements(By.CSS_SELECTOR, "#hours-table tbody tr")
    assert len(rows) == 24
    actions = {r.find_element(By.CSS_SELECTOR, ".action").text for r in rows}
    assert actions <= {"buy", "sell", "store", "use stored", "hold"}
    assert actions & {"sell", "store"}  # 6 kW of forecast PV at midday against ~1.2 kW of load
    summary = browser.find_element(By.ID, "summary").text
    assert "Expected bill" in summary
    assert number(text(browser, "bill-without")) is not None
    until(
        browser, "the chart", lambda d: d.find_elements(By.CSS_SELECTOR, "#decisions-chart canvas")
    )
    check_page(browser, "decisions")


def test_a_two_house_neighbourhood_runs_twice(console: str, browser: WebDriver) -> None:
    browser.get(f"{console}/planner")

    def click(locator: str) -> None:
        old = browser.find_element(By.ID, "planner-editor")
        browser.find_element(By.CSS_SELECTOR, locator).click()
        until(browser, f"the editor after {locator}", lambda d: _stale(old))

    browser.find_element(By.ID, "f-token").send_keys(TOKEN)
    click("#add-house")
    click("#add-house")
    click("#add-job-0")
    click("#add-job-1")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#jobs-table tbody tr")) == 2

    # invalid input is shown next to its field
    latest = browser.find_element(By.ID, "f-jobs-1-latest_start")
    browser.execute_script(
        "arguments[0].value = arguments[1]", latest, latest.get_attribute("value")[:11] + "03:00"
    )
    click("button[value=check]")
    error = text(browser, "err-jobs-1-latest_start")
    assert "before the earliest" in error
    assert (
        browser.find_element(By.ID, "f-jobs-1-latest_start").get_attribute("aria-invalid") == "true"
    )
    latest = browser.find_element(By.ID, "f-jobs-1-latest_start")
    browser.execute_script(
        "arguments[0].value = arguments[1]", latest, latest.get_attribute("value")[:11] + "18:00"
    )

    runs = browser.find_element(By.ID, "f-runs")
    runs.clear()
    runs.send_keys("2")
    Select(browser.find_element(By.ID, "f-algorithm")).select_by_value("milp")
    click("#run-button")
    table = until(browser, "the results", lambda d: d.find_elements(By.ID, "results-table"), 120)[0]
    households = [
        r.find_element(By.TAG_NAME, "th").text
        for r in table.find_elements(By.CSS_SELECTOR, "tbody tr")
    ]
    assert households == ["house-1", "house-2", "neighbourhood"]
    runs_rows = browser.find_elements(By.CSS_SELECTOR, "#runs-table tbody tr")
    assert len(runs_rows) == 2
    for row in runs_rows:
        cells = [c.text for c in row.find_elements(By.TAG_NAME, "td")]
        assert cells[-1] == "2", cells  # both jobs placed in each run
        assert cells[2].endswith("%"), cells
        assert float(cells[3]) > 0, cells  # the jobs' energy is imported or covered by PV
    starts = browser.find_elements(By.CSS_SELECTOR, "#starts-table tbody tr")
    energy = [sum(float(c.text) for c in r.find_elements(By.TAG_NAME, "td")[-2:]) for r in starts]
    assert energy == [pytest.approx(6.3 * 0.25, abs=0.011)] * 2  # the default profile, kWh
    until(
        browser,
        "one household's table",
        lambda d: "house-1 in every run" in d.find_element(By.ID, "house-results").text,
    )
    link = browser.find_element(By.PARTIAL_LINK_TEXT, "Download CSV").get_attribute("href")
    with urllib.request.urlopen(link, timeout=10) as response:  # noqa: S310 - our console
        csv_text = response.read().decode()
    assert csv_text.splitlines()[0].startswith("run,seed,status,household")
    assert len(csv_text.splitlines()) == 1 + 2 * 3
    check_page(browser, "planner", allowed=r"status of 422")


def test_cossmic_files_import_into_the_editor_and_save(console: str, browser: WebDriver) -> None:
    examples = REPO / "services" / "load_manager" / "examples"
    browser.get(f"{console}/planner")
    old = browser.find_element(By.ID, "planner-editor")
    form = browser.find_element(By.ID, "import-form")
    form.find_element(By.NAME, "neighbourhood").send_keys(str(examples / "neighbourhood.xml"))
    form.find_element(By.NAME, "jobs").send_keys(str(examples / "jobs.csv"))
    profiles = "\n".join(str(p) for p in sorted((examples / "profiles").glob("*.csv")))
    form.find_element(By.NAME, "profiles").send_keys(profiles)
    form.find_element(By.NAME, "token").send_keys(TOKEN)
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    until(browser, "the imported neighbourhood", lambda d: _stale(old))
    assert text(browser, "planner-notice") == "imported demo-street"
    legends = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "fieldset.house legend")]
    assert legends == ["House 1: house-1", "House 2: house-2", "House 3: house-3"]
    assert len(browser.find_elements(By.CSS_SELECTOR, "#jobs-table tbody tr")) == 5
    browser.find_element(By.ID, "f-token").send_keys(TOKEN)
    old = browser.find_element(By.ID, "planner-editor")
    browser.find_element(By.CSS_SELECTOR, "button[value=save]").click()
    until(browser, "the save", lambda d: _stale(old))
    assert text(browser, "planner-notice") == "saved as demo-street"
    browser.get(f"{console}/planner?scenario=demo-street")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#jobs-table tbody tr")) == 5
    assert errors_in_console(browser) == []


def _stale(element: Any) -> bool:
    try:
        element.is_enabled()
    except WebDriverException:
        return True
    return False


def test_feeder_is_drawn_with_live_voltages(console: str, browser: WebDriver) -> None:
    browser.get(f"{console}/feeder")
    first = until(
        browser,
        "a feeder step",
        lambda d: number(text(d, "feeder-step")) is not None and text(d, "feeder-step"),
    )
    until(browser, "the next feeder step", lambda d: text(d, "feeder-step") != first)
    circles = browser.find_elements(By.CSS_SELECTOR, "svg.feeder circle[id^=before-]")
    assert len(circles) == 129
    coloured = {c.get_attribute("fill") for c in circles}
    assert coloured - {"#9e9e9e"}, "no bus has a voltage colour"
    assert len(browser.find_elements(By.CSS_SELECTOR, "#pv-table tbody tr")) > 50
    check_page(browser, "feeder")
