"""`derbus up`'s pieces: port choice, the broker URL file, supervision with bounded backoff."""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from derbus import launcher
from derbus.cli import app
from derbus.errors import ConfigError
from derbus.settings import MqttSettings
from derbus.testing import free_port


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def test_a_taken_default_port_is_said_in_one_line_with_how_to_choose(taken_port: int) -> None:
    choice = launcher.choose_port(None, taken_port, "MQTT", "`make run MQTT_PORT=<port>`")
    assert choice.port != taken_port
    assert choice.note is not None
    assert "\n" not in choice.note
    assert f"MQTT port {taken_port} is taken" in choice.note
    assert f"127.0.0.1:{choice.port}" in choice.note
    assert "make run MQTT_PORT=" in choice.note


def test_a_free_default_port_is_used_silently_and_a_taken_request_refused(taken_port: int) -> None:
    port = free_port()
    assert launcher.choose_port(None, port, "MQTT", "x") == launcher.PortChoice(port)
    assert launcher.choose_port(port, 1883, "MQTT", "x") == launcher.PortChoice(port)
    with pytest.raises(ConfigError, match=f"MQTT port {taken_port} is already taken"):
        launcher.choose_port(taken_port, 1883, "MQTT", "`make run MQTT_PORT=<port>`")


def test_broker_url_prints_the_running_broker_and_refuses_a_stale_one(
    tmp_path: Path, taken_port: int
) -> None:
    runner = CliRunner()
    missing = runner.invoke(app, ["broker-url", "--run-root", str(tmp_path)])
    assert missing.exit_code == 1
    (tmp_path / launcher.BROKER_URL_FILE).write_text(launcher.broker_url(taken_port) + "\n")
    result = runner.invoke(app, ["broker-url", "--run-root", str(tmp_path)])
    assert result.exit_code == 0
    assert result.output.strip() == f"mqtt://127.0.0.1:{taken_port}"
    (tmp_path / launcher.BROKER_URL_FILE).write_text(launcher.broker_url(free_port()) + "\n")
    stale = runner.invoke(app, ["broker-url", "--run-root", str(tmp_path)])
    assert stale.exit_code == 1


@pytest.mark.parametrize(
    ("failures", "delay_s"), [(1, 1.0), (2, 2.0), (3, 4.0), (5, 16.0), (6, 30.0), (40, 30.0)]
)
def test_restart_backoff_doubles_up_to_a_bound(failures: int, delay_s: float) -> None:
    assert launcher.restart_delay_s(failures) == delay_s


def test_a_restart_waits_past_the_will_delay() -> None:
    """A child back within its will delay would take its session over: no offline on the bus."""
    floor = launcher.restart_floor_s(MqttSettings(will_delay_s=2))
    assert floor > 2 + 0.9  # Mosquitto published a 2 s will up to 2.9 s after the loss
    assert launcher.restart_delay_s(1, floor) == floor
    assert launcher.restart_delay_s(6, floor) == launcher.RESTART_MAX_S  # the backoff still grows
    assert launcher.restart_floor_s(MqttSettings(will_delay_s=0)) == launcher.RESTART_MIN_S
    no_delay = MqttSettings(protocol="3.1.1", will_delay_s=2)  # no will delay in MQTT 3.1.1
    assert launcher.restart_floor_s(no_delay) == launcher.RESTART_MIN_S


def quitter(tmp_path: Path, code: str, failures_in_a_row: int = 0) -> launcher.Platform:
    """A platform supervising one child `quitter` (Python running `code`), run to its end."""
    child = launcher.Child(
        "quitter",
        [sys.executable, "-c", code],
        {},
        tmp_path / "q.log",
        tmp_path,
        failures_in_a_row=failures_in_a_row,
    )
    platform = launcher.Platform(tmp_path, tmp_path, tmp_path, 1883, {"quitter": child}, {})
    child.start()
    assert child.proc is not None
    child.proc.wait(30)
    return platform


def test_supervise_reports_an_exit_and_restarts_after_the_backoff(tmp_path: Path) -> None:
    platform = quitter(tmp_path, "import sys; sys.exit(3)")
    child = platform.children["quitter"]
    assert child.proc is not None
    t0 = child.started_at + 1.0  # ran 1 s: an early failure
    events = platform.supervise(now=t0)
    assert len(events) == 1
    assert "quitter: exited with status 3" in events[0]
    assert "restarting in 1 s" in events[0]
    assert platform.supervise(now=t0 + 0.5) == []  # still waiting
    first_pid = child.pid
    events = platform.supervise(now=t0 + 1.0)
    assert events == [f"quitter: restarted (pid {child.pid}, restart 1)"]
    assert child.pid != first_pid
    child.proc.wait(30)
    events = platform.supervise(now=child.started_at + 1.0)
    assert "restarting in 2 s" in events[0]  # the second early failure in a row waits longer
    platform.stop()
    assert platform.supervise() == []  # stopping: nothing is restarted any more


def test_supervise_forgets_old_failures_after_a_stable_run(tmp_path: Path) -> None:
    platform = quitter(tmp_path, "pass", failures_in_a_row=4)
    child = platform.children["quitter"]
    events = platform.supervise(now=child.started_at + launcher.STABLE_AFTER_S + 1)
    assert "restarting in 1 s" in events[0]
    platform.stop()


def test_make_run_gives_the_gateway_the_simulators_modbus_port(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[3]
    env = launcher.run_defaults(repo, tmp_path, 41234)
    assert env["edge_simulator"]["EDGE_SIMULATOR_MODBUS_PORT"] == "41234"
    devices = Path(env["meter_gateway"]["METER_GATEWAY_DEVICES_FILE"]).read_text()
    assert "port: 41234" in devices
    assert "port: 5020" not in devices
    assert devices.count("host: 127.0.0.1") == 3


def test_make_run_connects_the_simulators_charge_point_to_ev_charging(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[3]
    env = launcher.run_defaults(repo, tmp_path, 41234, ocpp_port=49001, environ={})
    assert env["edge_simulator"]["EDGE_SIMULATOR_OCPP_URL"] == "ws://127.0.0.1:49001"
    stations = json.loads(env["ev_charging"]["EV_CHARGING_STATIONS"])
    assert stations == {"sim-site-1": {"site_id": "site-1", "id_tokens": ["SIM-TAG"]}}
    custom = {"SITE_ID": "home", "EDGE_SIMULATOR_OCPP_ID_TOKEN": "MINE"}
    assert launcher.demo_stations(custom) == {
        "sim-home": {"site_id": "home", "id_tokens": ["MINE"]}
    }
    # without ev_charging, or for a fleet, no charge points
    assert (
        "EDGE_SIMULATOR_OCPP_URL"
        not in launcher.run_defaults(repo, tmp_path, 1, environ={})["edge_simulator"]
    )
    fleet = launcher.run_defaults(
        repo, tmp_path, 1, ocpp_port=2, environ={"EDGE_SIMULATOR_SITES": "10"}
    )
    assert "EDGE_SIMULATOR_OCPP_URL" not in fleet["edge_simulator"]
