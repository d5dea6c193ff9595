"""`derbus-gateway scan`: what a device holds, as a table: SunSpec models and points, or a map's registers."""

from __future__ import annotations

from typing import Any

from derbus.errors import ConfigError, DeviceError
from meter_gateway import sunspec
from meter_gateway.device_map import RegisterPoint, TcpConnection
from meter_gateway.link import ModbusLink, PymodbusLink
from meter_gateway.readings import ReadPoint, decode_point
from meter_gateway.registers import ReadBlock, decode, field_unit


def parse_target(target: str) -> tuple[str, int]:
    """`HOST[:PORT]` → (host, port), port 502 by default."""
    host, sep, port = target.rpartition(":")
    if not sep:
        return target, 502
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(f"target {target!r}: expected HOST[:PORT]", ("target",))
    return host, int(port)


def tcp_link(host: str, port: int, timeout_s: float) -> PymodbusLink:
    """A link to a Modbus TCP device."""
    connection = TcpConnection(host=host, port=port)
    return PymodbusLink(connection, timeout_s, f"{host}:{port}")


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A plain text table."""
    cells = [[str(c) for c in r] for r in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    rule = "  ".join("-" * w for w in widths)
    body = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join([line, rule, *body])


async def scan_sunspec(
    link: ModbusLink, unit_id: int, base: int | None = None, points: bool = False
) -> str:
    """SunSpec models found on a device (and every point's value with `points`)."""
    found, models = await sunspec.discover(link, unit_id, base)
    out = [f"SunSpec base {found}, unit {unit_id}: {len(models)} models", ""]
    out.append(
        table(
            ["model", "name", "address", "length"],
            [[m.model_id, m.name, m.address, m.length] for m in models],
        )
    )
    if points:
        for m in models:
            values = await sunspec.read_model(link, unit_id, m)
            rows = []
            for name, pdef in sunspec.model_points(m.model_id).items():
                if pdef.type == "sunssf" or name in ("ID", "L"):
                    continue
                value: Any = values.get(name)
                if value is not None and pdef.type != "string":
                    value = sunspec.scaled(values, m.model_id, name)
                    value = f"{value:g}" if isinstance(value, float) else value
                rows.append(
                    [
                        name,
                        m.address + pdef.offset,
                        pdef.type,
                        "—" if value is None else value,
                        pdef.units or "",
                        pdef.access,
                    ]
                )
            out += ["", f"model {m.model_id} ({m.name}) at {m.address}", ""]
            out.append(table(["point", "address", "type", "value", "units", "access"], rows))
    return "\n".join(out)


async def scan_registers(link: ModbusLink, unit_id: int, registers: list[RegisterPoint]) -> str:
    """The registers of a map: raw words and decoded values in the fields' units."""
    rows = []
    for p in registers:
        try:
            block = ReadBlock(p.function, p.address, p.span.count)
            regs = await link.read(p.function, p.address, p.span.count, unit_id)
            blocks = {block: regs}
            if p.sf_span is not None:
                sf_block = ReadBlock(p.function, p.sf_span.address, 1)
                blocks[sf_block] = await link.read(p.function, p.sf_span.address, 1, unit_id)
            value, drop = decode_point(ReadPoint(p), blocks)
            shown = (
                f"{value:g}" if value is not None else f"dropped: {drop.reason if drop else '—'}"
            )
            raw = decode(regs, p.type, p.word_order, p.byte_order)
        except DeviceError as err:
            regs, raw, shown = [], "—", f"error: {err}"
        rows.append(
            [
                p.field,
                p.function,
                p.address,
                p.type.value,
                " ".join(f"{r:04x}" for r in regs),
                raw,
                shown,
                field_unit(p.field),
            ]
        )
    return table(["field", "function", "address", "type", "words", "raw", "value", "unit"], rows)
