"""The devices YAML: valid files resolve; every invalid one stops start-up naming device and field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from derbus.errors import ConfigError
from meter_gateway.device_map import (
    SHIPPED_MAPS,
    load_devices,
    load_map,
    load_sunspec_map,
    parse_config,
    resolve,
)
from meter_gateway.registers import DataType

GOOD = """
defaults: {poll_interval_s: 2, stale_after_failures: 4}
devices:
  - id: pcc
    kind: meter
    connection: {type: tcp, host: 127.0.0.1, port: 5020}
    unit_id: 3
    registers:
      - {field: p_kw, address: 0, type: int32, unit: W, min: -50, max: 50}
      - {field: v_l1_v, address: 2, type: uint16, scale: 0.1, unit: V}
  - id: inverter
    site_id: site-7
    kind: pv
    connection: {type: rtu, port: /dev/ttyUSB0, baudrate: 19200, parity: E}
    sunspec: auto
    poll_interval_s: 0.5
    controls:
      - {target: pv_limit_pct, min: 0, max: 100, reversion: {seconds: 30}}
  - id: main
    kind: meter
    connection: {type: tcp, host: meter.local}
    map: generic_three_phase_meter
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "devices.yaml"
    path.write_text(text)
    return path


def test_a_good_file_resolves_with_defaults_sites_and_maps(tmp_path: Path) -> None:
    devices = load_devices(write(tmp_path, GOOD), "site-1")
    pcc, inverter, main = devices
    assert pcc.key == ("site-1", "pcc")
    assert pcc.poll_interval_s == 2
    assert pcc.stale_after_failures == 4
    assert pcc.unit_id == 3
    assert pcc.registers[0].type is DataType.INT32
    assert inverter.key == ("site-7", "inverter")
    assert inverter.sunspec
    assert inverter.poll_interval_s == 0.5
    assert inverter.connection.type == "rtu"
    assert inverter.connection.parity == "E"
    assert inverter.sunspec_map is not None
    assert "pv" in inverter.sunspec_map.kinds
    assert {p.field for p in main.registers} >= {"p_kw", "v_l1_v", "e_import_kwh"}


def test_shipped_maps_load() -> None:
    assert load_map("generic_three_phase_meter").kind == "meter"
    assert set(load_sunspec_map("sunspec_inverter_storage").kinds) == {"meter", "pv", "battery"}
    assert len(SHIPPED_MAPS) == 2


def _error(text: str) -> str:
    data = yaml.safe_load(text)
    with pytest.raises(ConfigError) as info:
        resolve(parse_config(data), "site-1")
    return str(info.value)


def _device(extra: str, registers: str = "[{field: p_kw, address: 0}]") -> str:
    return f"""
devices:
  - id: meter-a
    kind: meter
    connection: {{type: tcp, host: h}}
    registers: {registers}
{extra}
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            _device("", "[{field: p_kw, address: 0, type: int24}]"),
            "device 'meter-a' field registers.0.type",
        ),
        (
            _device("", "[{field: p_kw, address: 70000}]"),
            "device 'meter-a' field registers.0.address",
        ),
        (
            _device("", "[{field: p_kw, address: 0, colour: red}]"),
            "device 'meter-a' field registers.0.colour: Extra inputs are not permitted",
        ),
        (
            _device("", "[{field: power, address: 0}]"),
            "registers[0].field: 'power' is not a meter field",
        ),
        (
            _device("", "[{field: p_kw, address: 0, unit: V}]"),
            "registers[0].unit: cannot convert V",
        ),
        (_device("", "[{field: p_kw, address: 0, unit: furlong}]"), "unknown unit 'furlong'"),
        (_device("", "[{field: p_kw, address: 0, type: string}]"), "type string needs `length`"),
        (_device("", "[{field: p_kw, address: 0, min: 5, max: 1}]"), "min must not exceed max"),
        (
            _device("", "[{field: q_kvar, address: 0, unit: var}]"),
            "device 'meter-a' field registers: no register feeds the required p_kw",
        ),
        (_device("    unit_id: 300"), "device 'meter-a' field unit_id"),
        (_device("    poll_interval_s: 0"), "device 'meter-a' field poll_interval_s"),
        (
            _device("    controls: [{target: battery_p_kw, min: -1, max: 1}]"),
            "controls[0].target: battery_p_kw is not a meter target",
        ),
        (
            "devices:\n  - {id: x, kind: heater, connection: {type: tcp, host: h}, sunspec: auto}",
            "device 'x' field kind",
        ),
        (
            "devices:\n  - {id: x, kind: pv, connection: {type: udp, host: h}, sunspec: auto}",
            "device 'x' field connection",
        ),
        (
            "devices:\n  - {id: x, kind: pv, connection: {type: rtu, port: /dev/x, baudrate: 1234}, sunspec: auto}",
            "baudrate 1234",
        ),
        (
            "devices:\n  - {id: x, kind: pv, connection: {type: tcp, host: h}}",
            "needs `registers`, `map` or `sunspec: auto`",
        ),
        (
            "devices:\n  - {id: a/b, kind: pv, connection: {type: tcp, host: h}, sunspec: auto}",
            "field id: ",
        ),
        (
            "devices:\n  - {id: x, kind: pv, connection: {type: tcp, host: h}, map: nowhere}",
            "device 'x' field map",
        ),
        (
            "devices:\n  - {id: x, kind: pv, connection: {type: tcp, host: h}, map: generic_three_phase_meter}",
            "is for meter, not pv",
        ),
        (
            "devices:\n  - {id: x, kind: pv, connection: {type: tcp, host: h}, sunspec: auto}\n"
            "  - {id: x, kind: pv, connection: {type: tcp, host: h}, sunspec: auto}",
            "declared twice",
        ),
    ],
)
def test_invalid_yaml_names_device_and_field(text: str, expected: str) -> None:
    assert expected in _error(text)


REGISTER_MAPPED_BATTERY = """
devices:
  - id: bat
    kind: battery
    connection: {type: tcp, host: h}
    registers: [{field: p_kw, address: 0}, {field: soc_pct, address: 1}]
    controls: [{target: battery_p_kw, min: -1, max: 1%s}]
"""


@pytest.mark.parametrize(
    ("control", "expected"),
    [
        ("", "controls[0].write: required without SunSpec"),
        (", write: {address: 9, unit: W}", "revert_value: required"),
        (", write: {address: 9, unit: V}, revert_value: 0", "write.unit: cannot convert V"),
    ],
    ids=["no-write-register", "no-revert-value", "unit-not-power"],
)
def test_a_control_of_a_register_map_needs_a_write_register_revert_value_and_power_unit(
    control: str, expected: str
) -> None:
    assert expected in _error(REGISTER_MAPPED_BATTERY % control)


def test_missing_file_and_broken_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_devices(tmp_path / "nope.yaml", "site-1")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_devices(write(tmp_path, "devices: [\n"), "site-1")


def test_an_empty_file_means_no_devices(tmp_path: Path) -> None:
    assert load_devices(write(tmp_path, ""), "site-1") == []
