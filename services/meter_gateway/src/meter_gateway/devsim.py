"""A small Modbus TCP device server (pymodbus) with SunSpec images built from pysunspec2, for tests and benches."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType as SimType
from pymodbus.simulator import SimData, SimDevice
from sunspec2.device import Model

from derbus.errors import DeviceError
from derbus.testing import free_port
from meter_gateway.registers import DataType, encode
from meter_gateway.sunspec import SUNS_MARKER, model_points

logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


def model_length(model_id: int) -> int:
    """L of a SunSpec model without repeating groups (registers after ID and L)."""
    points = model_points(model_id)
    return sum(p.size for p in points.values()) - 2


def sunspec_image(models: list[tuple[int, dict[str, Any]]]) -> list[int]:
    """Registers from the base: "SunS", each model (raw point values), the end marker.

    Unset points hold SunSpec's "not implemented" values (pysunspec2 fills them in).
    """
    regs = list(SUNS_MARKER)
    for model_id, values in models:
        length = model_length(model_id)
        model = Model(
            model_id=model_id, model_len=length, data={"ID": model_id, "L": length, **values}
        )
        data = model.get_mb()
        regs += [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]
    return [*regs, 0xFFFF, 0]


def sunspec_addresses(models: list[int], base: int = 40000) -> dict[int, int]:
    """Address of each model's ID register in an image built by `sunspec_image`."""
    out: dict[int, int] = {}
    address = base + 2
    for model_id in models:
        out.setdefault(model_id, address)
        address += 2 + model_length(model_id)
    return out


def words(
    value: float, dtype: DataType, word_order: str = "big", byte_order: str = "big"
) -> list[int]:
    """Registers holding `value` (shorthand for building images)."""
    return encode(value, dtype, word_order, byte_order)  # type: ignore[arg-type]


@dataclass
class DeviceServer:
    """A pymodbus TCP server on 127.0.0.1 serving register blocks per unit id.

    `blocks[unit][start] = registers`; holding and input registers share the memory. Values
    written by clients survive `stop()`/`start()` (a restart keeps the device's state).
    """

    blocks: dict[int, dict[int, list[int]]]
    port: int = field(default_factory=free_port)
    server: ModbusTcpServer | None = None

    async def start(self) -> None:
        """Listen (again) on the same port."""
        devices = [
            SimDevice(
                id=unit,
                simdata=[
                    SimData(start, values=list(regs), datatype=SimType.REGISTERS)
                    for start, regs in sorted(blocks.items())
                ],
            )
            for unit, blocks in sorted(self.blocks.items())
        ]
        self.server = ModbusTcpServer(devices, address=("127.0.0.1", self.port))
        await self.server.serve_forever(background=True)

    async def stop(self) -> None:
        """Stop listening and drop the connections (the device "dies")."""
        if self.server is None:
            return
        for unit, blocks in self.blocks.items():
            for start, regs in blocks.items():
                blocks[start] = await self.get(unit, start, len(regs))
        await self.server.shutdown()  # type: ignore[no-untyped-call]
        self.server = None

    async def get(self, unit: int, address: int, count: int) -> list[int]:
        """Current registers (as a client would read them)."""
        if self.server is None:
            block = next((s, r) for s, r in self.blocks[unit].items() if s <= address < s + len(r))
            offset = address - block[0]
            return block[1][offset : offset + count]
        values = await self.server.context.async_getValues(unit, 3, address, count)
        if not isinstance(values, list):
            raise DeviceError(f"unit {unit} has no registers at {address}+{count}: {values}")
        return [int(v) for v in values]

    async def set(self, unit: int, address: int, values: list[int]) -> None:
        """Change registers (the device's own measurement moving)."""
        if self.server is None:
            for start, regs in self.blocks[unit].items():
                if start <= address < start + len(regs):
                    regs[address - start : address - start + len(values)] = values
                    return
            raise KeyError(address)
        await self.server.context.async_setValues(unit, 16, address, values)


@dataclass
class MemoryLink:
    """A Modbus link to registers in memory per unit id (holding and input share them).

    For unit tests and dry runs: `fail` makes every call raise DeviceError, `frozen`
    addresses ignore writes (a device refusing silently, which read-back catches).
    """

    registers: dict[int, dict[int, int]]
    fail: str | None = None
    reads: list[tuple[str, int, int]] = field(default_factory=list)
    writes: list[tuple[int, list[int]]] = field(default_factory=list)
    frozen: set[int] = field(default_factory=set)

    def load(self, unit: int, start: int, values: list[int]) -> None:
        """Put registers at `start`."""
        regs = self.registers.setdefault(unit, {})
        for i, v in enumerate(values):
            regs[start + i] = v

    async def read(self, function: str, address: int, count: int, unit_id: int) -> list[int]:
        """Read; an address never loaded answers illegal data address."""
        if self.fail:
            raise DeviceError(self.fail)
        self.reads.append((function, address, count))
        regs = self.registers.get(unit_id, {})
        if any(a not in regs for a in range(address, address + count)):
            raise DeviceError(f"modbus exception 2 (illegal data address) at {address}+{count}")
        return [regs[a] for a in range(address, address + count)]

    async def write(self, address: int, registers: list[int], unit_id: int) -> None:
        """Write (frozen addresses keep their value)."""
        if self.fail:
            raise DeviceError(self.fail)
        self.writes.append((address, list(registers)))
        regs = self.registers.setdefault(unit_id, {})
        for i, v in enumerate(registers):
            if address + i not in self.frozen:
                regs[address + i] = v

    def close(self) -> None:
        """Nothing to close."""
