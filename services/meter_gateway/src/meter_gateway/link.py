"""Modbus I/O: one async link per TCP device, one shared per serial port; errors become DeviceError."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Protocol

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from derbus.errors import DeviceError
from meter_gateway.device_map import SerialConnection, TcpConnection
from meter_gateway.registers import Function

_EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    10: "gateway path unavailable",
    11: "gateway target failed to respond",
}


class ModbusLink(Protocol):
    """What the pollers need from a Modbus connection."""

    async def read(self, function: Function, address: int, count: int, unit_id: int) -> list[int]:
        """Read `count` registers; raises DeviceError."""
        ...

    async def write(self, address: int, registers: list[int], unit_id: int) -> None:
        """Write holding registers (fc 16); raises DeviceError."""
        ...

    def close(self) -> None:
        """Drop the connection (the next call reconnects)."""
        ...


@dataclass
class PymodbusLink:
    """A pymodbus async client with a connect-on-demand, a timeout per request and no retries.

    Retries and backoff are the poller's business (so one device's failures are visible and
    never stall another device's schedule).
    """

    connection: TcpConnection | SerialConnection
    timeout_s: float
    name: str
    _client: Any = None
    _connect_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def client(self) -> Any:
        """The pymodbus client, built on first use (it needs a running event loop)."""
        if self._client is None:
            self._client = make_client(self.connection, self.timeout_s)
        return self._client

    async def _ensure_connected(self) -> None:
        if self.client.connected:
            return
        async with self._connect_lock:
            if self.client.connected:
                return
            try:
                async with asyncio.timeout(self.timeout_s * 2):
                    ok = await self.client.connect()
            except (TimeoutError, OSError, ModbusException) as err:
                self.client.close()
                raise DeviceError(f"{self.name}: cannot connect ({err or 'timeout'})") from err
            if not ok:
                self.client.close()
                raise DeviceError(f"{self.name}: cannot connect")

    async def _call(self, what: str, coro_fn: Any, **kwargs: Any) -> Any:
        await self._ensure_connected()
        try:
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation that
            # lands as the request completes, and the poll task would then never stop.
            async with asyncio.timeout(self.timeout_s * 2):
                response = await coro_fn(**kwargs)
        except TimeoutError as err:
            self.client.close()
            raise DeviceError(f"{self.name}: {what} timed out") from err
        except (ModbusException, OSError) as err:
            self.client.close()
            raise DeviceError(f"{self.name}: {what} failed: {err}") from err
        if response.isError():
            code = getattr(response, "exception_code", None)
            name = _EXCEPTION_NAMES.get(code or 0, "error")
            raise DeviceError(f"{self.name}: {what}: modbus exception {code} ({name})")
        return response

    async def read(self, function: Function, address: int, count: int, unit_id: int) -> list[int]:
        """Read `count` holding (fc 3) or input (fc 4) registers."""
        fn = (
            self.client.read_holding_registers
            if function == "holding"
            else self.client.read_input_registers
        )
        response = await self._call(
            f"read {function} {address}+{count} unit {unit_id}",
            fn,
            address=address,
            count=count,
            device_id=unit_id,
        )
        registers: list[int] = list(response.registers)[:count]
        if len(registers) != count:
            raise DeviceError(f"{self.name}: short read at {address}: {len(registers)}/{count}")
        return registers

    async def write(self, address: int, registers: list[int], unit_id: int) -> None:
        """Write holding registers (fc 16)."""
        await self._call(
            f"write {address}+{len(registers)} unit {unit_id}",
            self.client.write_registers,
            address=address,
            values=registers,
            device_id=unit_id,
        )

    def close(self) -> None:
        """Close the client (if one was built)."""
        if self._client is not None:
            self._client.close()


def make_client(connection: TcpConnection | SerialConnection, timeout_s: float) -> Any:
    """The pymodbus async client for a connection (no automatic reconnect, no retries)."""
    if isinstance(connection, TcpConnection):
        return AsyncModbusTcpClient(
            connection.host,
            port=connection.port,
            timeout=timeout_s,
            retries=0,
            reconnect_delay=0,
            name=f"{connection.host}:{connection.port}",
        )
    return AsyncModbusSerialClient(
        connection.port,
        baudrate=connection.baudrate,
        parity=connection.parity,
        stopbits=connection.stopbits,
        bytesize=connection.bytesize,
        timeout=timeout_s,
        retries=0,
        reconnect_delay=0,
        name=connection.port,
    )


@dataclass
class LinkPool:
    """Links for the devices: a TCP device gets its own, devices on one serial port share one."""

    links: dict[str, PymodbusLink] = field(default_factory=dict)

    def link_for(
        self, device_key: str, connection: TcpConnection | SerialConnection, timeout_s: float
    ) -> PymodbusLink:
        """The link a device uses."""
        key = (
            f"tcp:{device_key}"
            if isinstance(connection, TcpConnection)
            else f"rtu:{connection.port}"
        )
        link = self.links.get(key)
        if link is None:
            name = (
                f"{connection.host}:{connection.port}"
                if isinstance(connection, TcpConnection)
                else connection.port
            )
            link = PymodbusLink(connection, timeout_s, name)
            self.links[key] = link
        return link

    def close(self) -> None:
        """Close every link."""
        for link in self.links.values():
            link.close()
