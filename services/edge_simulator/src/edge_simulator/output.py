"""What a step becomes: the nested JSON record per site and the typed telemetry messages."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from derbus.messages import Message, format_utc
from derbus.topics import TopicSpec
from edge_simulator.fleet import StepResult
from edge_simulator.wire import DEVICES, Bools, Device, device_fields


def _r(value: float, digits: int = 4) -> float:
    return round(float(value), digits)


def _opt(value: float) -> float | None:
    return None if math.isnan(value) else _r(value)


@dataclass(frozen=True)
class Outgoing:
    """One message to publish: its catalogue spec, device id and model."""

    spec: TopicSpec[Any]
    device_id: str
    message: Message


def record(
    g: Callable[[str], list[float]],
    i: int,
    site_id: str,
    ts_text: str,
    clear_sky_w_m2: float,
    feed_in_per_kwh: float,
    tou_period: str,
    demand_charge_per_kw: float,
) -> dict[str, Any]:
    """The nested JSON record (`--historical` / `--once` line) of entry `i` of the columns `g`.

    Args:
        g: a `StepResult` field name -> its values as a list (sites of a step, or steps of a
            site in a backfill).
        i: the entry.
        site_id: the record's `device_id`.
        ts_text: the timestamp, formatted (`format_utc`).
        clear_sky_w_m2: clear-sky plane-of-array irradiance of the step.
        feed_in_per_kwh: feed-in tariff.
        tou_period: time-of-use period of the step.
        demand_charge_per_kw: demand charge.
    """
    return {
        "timestamp": ts_text,
        "device_id": site_id,
        "solar": {
            "generation_kw": _r(g("pv_generation_kw")[i]),
            "available_kw": _r(g("pv_available_kw")[i]),
            "limit_kw": _opt(g("pv_limit_kw")[i]),
            "irradiance_w_m2": _r(g("irradiance_w_m2")[i], 1),
            "clear_sky_w_m2": _r(clear_sky_w_m2, 1),
            "cloud_cover": _r(g("cloud_cover")[i], 3),
            "cell_temp_c": _r(g("cell_temp_c")[i], 2),
            "energy_kwh": _r(g("pv_energy_kwh")[i]),
        },
        "battery": {
            "power_kw": _r(g("battery_p_kw")[i]),
            "soc_pct": _r(g("battery_soc_pct")[i], 3),
            "soh_pct": _r(g("battery_soh_pct")[i], 4),
            "capacity_kwh": _r(g("battery_capacity_kwh")[i]),
            "max_charge_kw": _r(g("battery_max_charge_kw")[i]),
            "max_discharge_kw": _r(g("battery_max_discharge_kw")[i]),
            "voltage_v": _r(g("battery_voltage_v")[i], 2),
            "temp_c": _r(g("battery_temp_c")[i], 2),
            "cycles": _r(g("battery_cycles")[i], 5),
        },
        "home_load": {
            "total_kw": _r(g("load_total_kw")[i]),
            "base_kw": _r(g("base_kw")[i]),
            "hvac_kw": _r(g("hvac_kw")[i]),
            "appliances_kw": _r(g("appliance_kw")[i]),
            "lighting_kw": _r(g("lighting_kw")[i]),
            "cooking_kw": _r(g("cooking_kw")[i]),
            "ev_kw": _r(g("ev_kw")[i]),
            "ev_plugged": bool(g("ev_plugged")[i]),
            "ev_energy_needed_kwh": _r(g("ev_need_kwh")[i]),
            "load1_kw": _r(g("load1_kw")[i]),
            "load2_kw": _r(g("load2_kw")[i]),
            "outdoor_temp_c": _r(g("outdoor_temp_c")[i], 2),
        },
        "grid_price": {
            "price_per_kwh": _r(g("price_per_kwh")[i], 5),
            "feed_in_per_kwh": _r(feed_in_per_kwh, 5),
            "tou_period": tou_period,
            "demand_charge_per_kw": _r(demand_charge_per_kw, 4),
            "carbon_g_per_kwh": _r(g("carbon_g_per_kwh")[i], 1),
        },
        "net_grid_flow_kw": _r(g("pcc_p_kw")[i]),
    }


class StepView:
    """Per-site access to a `StepResult` (arrays converted to Python lists once)."""

    def __init__(self, result: StepResult) -> None:
        self.result = result
        self._lists: dict[str, list[float]] = {}
        self._devices: list[tuple[Device, dict[str, list[Any]], dict[str, Any]]] | None = None

    def __getitem__(self, name: str) -> list[float]:
        got = self._lists.get(name)
        if got is None:
            got = self._lists[name] = getattr(self.result, name).tolist()
        return got

    def record(self, i: int, site_id: str) -> dict[str, Any]:
        """The nested JSON record of site `i` (the `--historical` / `--once` output line)."""
        r = self.result
        return record(
            self.__getitem__,
            i,
            site_id,
            format_utc(r.ts),
            r.clear_sky_w_m2,
            r.feed_in_per_kwh,
            r.tou_period,
            r.demand_charge_per_kw,
        )

    def messages(self, i: int, source: str, validate: bool = False) -> list[Outgoing]:
        """The telemetry messages of site `i` with their device ids (the bus contract).

        The fields are `wire.device_fields` of every device in `wire.DEVICES` (NaN is None).
        The physics only produces valid values (finite, in range: the unit tests validate every
        message of whole simulated days), so by default the models are built without
        re-validation (`model_construct`), which is what lets 1,000 sites run at 1 Hz.
        """
        if self._devices is None:
            self._devices = [(d, *_site_columns(self.result, d.device_id)) for d in DEVICES]
        ts = self.result.ts
        out = []
        for device, columns, constants in self._devices:
            model = device.spec.model
            values = {name: column[i] for name, column in columns.items()}
            if validate:
                message = model(ts=ts, source=source, **constants, **values)
            else:
                message = model.model_construct(ts=ts, source=source, **constants, **values)
            out.append(Outgoing(device.spec, device.device_id, message))
        return out


def _site_columns(r: StepResult, device_id: str) -> tuple[dict[str, list[Any]], dict[str, Any]]:
    """A device's fields as per-site Python lists (NaN as None) and step constants."""
    columns: dict[str, list[Any]] = {}
    constants: dict[str, Any] = {}
    for name, value in device_fields(r, device_id).items():
        if isinstance(value, Bools):
            columns[name] = value.values.tolist()
        elif isinstance(value, np.ndarray):
            listed = value.tolist()
            columns[name] = (
                [None if v != v else v for v in listed] if np.isnan(value).any() else listed
            )
        else:
            constants[name] = value
    return columns, constants
