"""CLI start-up errors, `scan` output, and the Modbus clients (TCP per device, RTU shared per port)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from typer.testing import CliRunner

from derbus.errors import ConfigError
from meter_gateway.__main__ import app
from meter_gateway.device_map import SerialConnection, TcpConnection, load_map
from meter_gateway.devsim import MemoryLink, sunspec_image, words
from meter_gateway.link import LinkPool, make_client
from meter_gateway.registers import DataType
from meter_gateway.scan import parse_target, scan_registers, scan_sunspec


async def test_rtu_client_is_built_with_the_line_settings() -> None:
    conn = SerialConnection(type="rtu", port="/dev/ttyUSB9", baudrate=19200, parity="E", stopbits=2)
    client = make_client(conn, 0.5)
    assert isinstance(client, AsyncModbusSerialClient)
    params = client.comm_params
    assert params.host == "/dev/ttyUSB9"
    assert params.baudrate == 19200
    assert params.parity == "E"
    assert params.stopbits == 2
    assert not client.connected


async def test_link_pool_shares_a_serial_port_but_not_tcp() -> None:
    pool = LinkPool()
    rtu = SerialConnection(type="rtu", port="/dev/ttyUSB0")
    tcp = TcpConnection(host="127.0.0.1", port=5020)
    assert pool.link_for("a", rtu, 1) is pool.link_for("b", rtu, 1)
    assert pool.link_for("a", tcp, 1) is not pool.link_for("b", tcp, 1)
    assert isinstance(pool.link_for("a", tcp, 1).client, AsyncModbusTcpClient)
    pool.close()


async def test_rtu_link_without_hardware_fails_as_a_device_error() -> None:
    from derbus.errors import DeviceError

    pool = LinkPool()
    link = pool.link_for("x", SerialConnection(type="rtu", port="/dev/does-not-exist"), 0.2)
    with pytest.raises(DeviceError, match="cannot connect"):
        await link.read("holding", 0, 1, 1)


def test_links_are_built_outside_an_event_loop_and_clients_on_first_use() -> None:
    pool = LinkPool()
    link = pool.link_for("a", TcpConnection(host="127.0.0.1", port=5020), 1)
    assert link._client is None  # the pymodbus client needs the service's running loop
    pool.close()


def test_bad_devices_file_stops_start_up_naming_device_and_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "devices.yaml"
    path.write_text(
        "devices:\n  - {id: pcc, kind: meter, connection: {type: tcp, host: h},"
        " registers: [{field: p_kw, address: 0, type: int24}]}\n"
    )
    monkeypatch.setenv("METER_GATEWAY_DEVICES_FILE", str(path))
    result = CliRunner().invoke(app, [])
    assert result.exit_code == 2
    assert "device 'pcc' field registers.0.type" in result.output
    check = CliRunner().invoke(app, ["check-config"])
    assert check.exit_code == 2


@pytest.mark.parametrize(
    ("target", "expected"), [("10.0.0.5", ("10.0.0.5", 502)), ("h:5020", ("h", 5020))]
)
def test_parse_target(target: str, expected: tuple[str, int]) -> None:
    assert parse_target(target) == expected


def test_parse_target_refuses_a_bad_port() -> None:
    with pytest.raises(ConfigError, match="HOST"):
        parse_target("h:port")


async def test_scan_prints_sunspec_models_and_points() -> None:
    link = MemoryLink({})
    link.load(1, 40000, sunspec_image([(1, {"Mn": "acme"}), (103, {"W": 1500, "W_SF": 0})]))
    text = await scan_sunspec(link, 1, points=True)
    assert "inverter_three_phase" in text
    assert "40070" in text  # model 103 after the 66-register common model
    assert "acme" in text


async def test_scan_prints_a_maps_registers() -> None:
    link = MemoryLink({})
    link.load(1, 0, [0] * 80)
    link.load(1, 52, words(-1200.0, DataType.FLOAT32))
    text = await scan_registers(link, 1, load_map("generic_three_phase_meter").registers)
    row = next(line for line in text.splitlines() if line.startswith("p_kw"))
    assert "-1.2" in row
    assert "kW" in row
