"""Modbus TCP: each site's SunSpec image on unit id = site index + 1; control writes become setpoints.

Reads refresh the unit's image from the latest step. A write must fall on read-write control
points (model 123 WMaxLim*, model 124 StorCtl_Mod / InWRte / OutWRte / InOutWRte_*); it is turned
into a setpoint for the site's `pv` or `battery` and goes through the same SetpointArbiter as MQTT
setpoints (priority `settings.modbus_priority`, TTL from the *_RvrtTms register or
`settings.modbus_default_ttl_s`); the ack is published on the bus, and a refused setpoint answers
the Modbus write with exception 3 (illegal data value).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from derbus.messages import Priority, SetpointCommand
from edge_simulator.control import AckOut, Controls
from edge_simulator.fleet import Fleet
from edge_simulator.output import StepView
from edge_simulator.sunspec import Image, Layout, build_layout

if TYPE_CHECKING:
    from edge_simulator.simulator import Simulator

log = logging.getLogger(__name__)

MAX_UNITS = 247
"""Modbus unit ids 1..247: sites beyond the 247th are not served."""

BATTERY_CONTROLS = (
    "StorCtl_Mod",
    "InWRte",
    "OutWRte",
    "InOutWRte_WinTms",
    "InOutWRte_RvrtTms",
    "InOutWRte_RmpTms",
)
PV_CONTROLS = (
    "WMaxLimPct",
    "WMaxLimPct_WinTms",
    "WMaxLimPct_RvrtTms",
    "WMaxLimPct_RmpTms",
    "WMaxLim_Ena",
)
WRITABLE: frozenset[tuple[int, str]] = frozenset(
    [(124, n) for n in BATTERY_CONTROLS] + [(123, n) for n in PV_CONTROLS]
)

# ChaSt enumeration (models 124 and 802)
_EMPTY, _DISCHARGING, _CHARGING, _FULL, _HOLDING = 2, 3, 4, 5, 6


def init_image(layout: Layout, fleet: Fleet, index: int) -> Image:
    """A unit's image with its identity, ratings and control defaults."""
    image = Image(layout)
    b = fleet.config.battery
    image.set_raw(1, "Mn", "derbus")
    image.set_raw(1, "Md", "edge-simulator")
    image.set_raw(1, "Opt", "simulated")
    image.set_raw(1, "Vr", "0.1.0")
    image.set_raw(1, "SN", fleet.ids[index])
    image.set_raw(1, "DA", index + 1)
    ch_w = float(fleet.battery_max_charge_kw[index]) * 1000
    dis_w = float(fleet.battery_max_discharge_kw[index]) * 1000
    cap_wh = float(fleet.battery_capacity_kwh[index]) * 1000
    image.set(802, "WHRtg", cap_wh)
    image.set(802, "AHRtg", cap_wh / b.nominal_voltage_v)
    image.set(802, "WChaRteMax", ch_w)
    image.set(802, "WDisChaRteMax", dis_w)
    image.set(802, "SoCMax", b.max_soc_pct)
    image.set(802, "SoCMin", b.min_soc_pct)
    image.set_raw(802, "LocRemCtl", 0)
    image.set_raw(802, "Typ", 4)  # lithium-ion
    image.set(124, "WChaMax", ch_w)
    image.set(124, "MinRsvPct", b.min_soc_pct)
    image.set_raw(124, "ChaGriSet", 1)
    for name in BATTERY_CONTROLS:
        image.set_raw(124, name, 0)
    for name in PV_CONTROLS:
        image.set_raw(123, name, 0)
    image.set(123, "WMaxLimPct", 100.0)
    image.set_raw(123, "Conn", 1)
    return image


def fill_image(image: Image, view: StepView, index: int, fleet: Fleet) -> None:
    """Write a step's readings of site `index` into its image (control points untouched)."""
    g = view.__getitem__
    i = index
    v = g("pcc_voltage_v")[i]
    hz = g("pcc_frequency_hz")[i]
    pv_w = g("pv_generation_kw")[i] * 1000
    image.set(103, "W", pv_w)
    image.set(103, "VA", pv_w)
    image.set(103, "VAr", 0.0)
    image.set(103, "PF", 100.0)
    image.set(103, "Hz", hz)
    for ph in ("A", "B", "C"):
        image.set(103, f"PhVph{ph}", v)
        image.set(103, f"Aph{ph}", pv_w / 3 / v if v > 0 else 0.0)
    for pair in ("AB", "BC", "CA"):
        image.set(103, f"PPVph{pair}", v * 3**0.5)
    image.set(103, "A", pv_w / v if v > 0 else 0.0)
    image.set(103, "WH", g("pv_energy_kwh")[i] * 1000)
    dc_w = pv_w / fleet.config.solar.inverter_efficiency
    image.set(103, "DCW", dc_w)
    image.set(103, "DCV", 600.0)
    image.set(103, "DCA", dc_w / 600.0)
    image.set(103, "TmpCab", g("cell_temp_c")[i])
    image.set_raw(103, "St", 4 if pv_w > 0 else 2)  # MPPT / SLEEPING
    image.set_raw(103, "Evt1", 0)

    p_w = g("battery_p_kw")[i] * 1000
    soc = g("battery_soc_pct")[i]
    b = fleet.config.battery
    if abs(p_w) < 1.0:
        state = (
            _FULL
            if soc >= b.max_soc_pct - 0.01
            else _EMPTY
            if soc <= b.min_soc_pct + 0.01
            else _HOLDING
        )
    else:
        state = _CHARGING if p_w > 0 else _DISCHARGING
    volts = g("battery_voltage_v")[i]
    image.set(802, "SoC", soc)
    image.set(802, "DoD", 100.0 - soc)
    image.set(802, "SoH", g("battery_soh_pct")[i])
    image.set_raw(802, "NCyc", int(g("battery_cycles")[i]))
    image.set_raw(802, "ChaSt", state)
    image.set_raw(802, "State", 3)  # connected
    image.set(802, "V", volts)
    image.set(802, "A", p_w / volts if volts > 0 else 0.0)
    image.set(802, "W", p_w)
    image.set(124, "ChaState", soc)
    e_avail_kwh = max(
        g("battery_energy_kwh")[i] - g("battery_capacity_kwh")[i] * b.min_soc_pct / 100, 0.0
    )
    image.set(124, "StorAval", e_avail_kwh * 1000 / b.nominal_voltage_v)
    image.set(124, "InBatV", volts)
    image.set_raw(124, "ChaSt", state)

    pcc_w = g("pcc_p_kw")[i] * 1000
    q_var = g("pcc_q_kvar")[i] * 1000
    image.set(203, "W", pcc_w)
    image.set(203, "VAR", q_var)
    image.set(203, "VA", (pcc_w**2 + q_var**2) ** 0.5)
    image.set(203, "PF", 100.0 * pcc_w / max((pcc_w**2 + q_var**2) ** 0.5, 1e-9))
    image.set(203, "Hz", hz)
    image.set(203, "PhV", v)
    image.set(203, "PPV", v * 3**0.5)
    image.set(203, "A", pcc_w / v if v > 0 else 0.0)
    for ph in ("A", "B", "C"):
        image.set(203, f"W{'ph' + ph}", pcc_w / 3)
        image.set(203, f"PhVph{ph}", v)
        image.set(203, f"Aph{ph}", pcc_w / 3 / v if v > 0 else 0.0)
    image.set(203, "TotWhImp", g("import_kwh")[i] * 1000)
    image.set(203, "TotWhExp", g("export_kwh")[i] * 1000)


@dataclass(frozen=True)
class ModbusRequest:
    """What a control write asks for: a command, a cancellation, or an invalid combination."""

    device_id: str
    setpoint_id: str
    command: SetpointCommand | None
    error: str | None = None


def request_from_image(
    image: Image,
    model_id: int,
    unit: int,
    now: datetime,
    priority: Priority,
    default_ttl_s: float,
) -> ModbusRequest:
    """Interpret the control registers of model 123 (PV) or 124 (battery) after a write.

    124: StorCtl_Mod 0 cancels; bit 0 (CHARGE) charges at InWRte % of WChaMax; bit 1 (DISCHARGE)
    discharges at OutWRte % of WDisChaRteMax (model 802); both bits at once are refused.
    123: WMaxLim_Ena 1 limits PV to WMaxLimPct % of its capacity; 0 cancels.
    """
    if model_id == 124:
        sid = f"modbus-{unit}-battery"
        mode = int(image.get(124, "StorCtl_Mod"))
        rvrt = image.get(124, "InOutWRte_RvrtTms")
        ttl = rvrt if rvrt > 0 else default_ttl_s
        if mode & 3 == 0:
            return ModbusRequest("battery", sid, None)
        if mode & 3 == 3:
            return ModbusRequest("battery", sid, None, "StorCtl_Mod: CHARGE and DISCHARGE together")
        if mode & 1:
            p_kw = image.get(124, "InWRte") / 100 * image.get(124, "WChaMax") / 1000
        else:
            p_kw = -image.get(124, "OutWRte") / 100 * image.get(802, "WDisChaRteMax") / 1000
        cmd = SetpointCommand(
            ts=now,
            source=f"modbus-unit-{unit}",
            setpoint_id=sid,
            target="battery_p_kw",
            value=round(p_kw, 6),
            unit="kW",
            ttl_s=min(ttl, 86_400),
            priority=priority,
        )
        return ModbusRequest("battery", sid, cmd)
    sid = f"modbus-{unit}-pv"
    if int(image.get(123, "WMaxLim_Ena")) == 0:
        return ModbusRequest("pv", sid, None)
    rvrt = image.get(123, "WMaxLimPct_RvrtTms")
    cmd = SetpointCommand(
        ts=now,
        source=f"modbus-unit-{unit}",
        setpoint_id=sid,
        target="pv_limit_pct",
        value=image.get(123, "WMaxLimPct"),
        unit="%",
        ttl_s=min(rvrt if rvrt > 0 else default_ttl_s, 86_400),
        priority=priority,
    )
    return ModbusRequest("pv", sid, cmd)


@dataclass
class UnitHandler:
    """The pymodbus action of one unit: refresh on read, setpoints on write."""

    sim: Simulator
    layout: Layout
    index: int
    image: Image
    filled_step: int = -1

    def _bind(self, start_address: int, registers: list[int]) -> None:
        if self.image.registers is not registers and start_address == self.layout.base:
            registers[:] = self.image.registers[: len(registers)]
            self.image.registers = registers

    async def action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        """pymodbus SimDevice action (see pymodbus.simulator.SimDevice.action).

        pymodbus checks `inspect.iscoroutinefunction(action)`: this bound coroutine method
        passes (a callable object would not).
        """
        self._bind(start_address, registers)
        if set_values is None:
            if self.sim.view is not None and self.filled_step != self.sim.steps:
                fill_image(self.image, self.sim.view, self.index, self.sim.fleet)
                self.filled_step = self.sim.steps
            return None
        return await self._write(address, [int(v) for v in set_values])

    async def _write(self, address: int, values: list[int]) -> ExcCodes | None:
        touched: set[int] = set()
        for k in range(len(values)):
            point = self.layout.at(address + k)
            if point is None or (point.model_id, point.name) not in WRITABLE:
                return ExcCodes.ILLEGAL_ADDRESS
            touched.add(point.model_id)
        trial = Image(self.layout, list(self.image.registers))
        off = address - self.layout.base
        trial.registers[off : off + len(values)] = values
        settings = self.sim.settings
        now = self.sim.clock()
        in_force = False
        for model_id in sorted(touched):
            req = request_from_image(
                trial,
                model_id,
                self.index + 1,
                now,
                settings.modbus_priority,
                settings.modbus_default_ttl_s,
            )
            if req.error is not None:
                log.info("modbus unit %d: refused write: %s", self.index + 1, req.error)
                return ExcCodes.ILLEGAL_VALUE
            acks = await apply_request(self.sim.controls, self.index, req, now)
            await self.sim.publish_acks(acks)
            if acks and acks[0].ack.status == "rejected":
                return ExcCodes.ILLEGAL_VALUE
            in_force |= any(a.ack.status == "accepted" for a in acks)
        # only a write that put a setpoint in force steps the site at once: a control block is
        # written register by register (rate, revert time, then the mode), and the one
        # immediate step per interval must show the setpoint, not the half-written block
        if settings.publish_on_setpoint and in_force:
            self.sim.kick(self.index)
        return None


async def apply_request(
    controls: Controls, index: int, req: ModbusRequest, now: datetime
) -> list[AckOut]:
    """Submit (or cancel) the setpoint a Modbus write asked for."""
    if req.command is None:
        return controls.cancel(index, req.device_id, req.setpoint_id, now, "cancelled over Modbus")
    return controls.submit(index, req.device_id, req.command, now)


async def start_modbus(sim: Simulator) -> tuple[ModbusTcpServer, int]:
    """Start the Modbus TCP server in the running loop: the server (`shutdown()` stops it) and
    its port."""
    settings = sim.settings
    layout = build_layout()
    fleet = sim.fleet
    devices = []
    for index in range(min(fleet.n_sites, MAX_UNITS)):
        image = init_image(layout, fleet, index)
        if sim.view is not None:
            fill_image(image, sim.view, index, fleet)
        handler = UnitHandler(sim, layout, index, image)
        devices.append(
            SimDevice(
                id=index + 1,
                simdata=[
                    SimData(layout.base, values=list(image.registers), datatype=DataType.REGISTERS)
                ],
                action=handler.action,
            )
        )
    server = ModbusTcpServer(devices, address=(settings.modbus_host, settings.modbus_port or 0))
    await server.serve_forever(background=True)
    transport: Any = server.transport  # an asyncio Server once listening
    port = int(transport.sockets[0].getsockname()[1] if transport else settings.modbus_port or 0)
    log.info("SunSpec Modbus TCP on %s:%s, units 1..%d", settings.modbus_host, port, len(devices))
    return server, port
