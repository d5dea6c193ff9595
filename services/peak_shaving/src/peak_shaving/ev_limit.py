"""EV chargers as the PMA's second resort: limit them when the battery cannot hold the import cap.

The battery goes first (the PMA's decision). When, with the battery at its discharge limit, the
PCC would still import above the ceiling (import limit or demand cap, minus margin), the site's
charging EVs (learnt from `telemetry.ev_charger`) get an `ev_limit_kw` setpoint: together they
may draw what they draw now minus the excess, shared in proportion to their ratings. While
limited, the room left (ceiling - expected PCC + what the battery could still discharge) raises
the limits again; once they reach the ratings the limits are released (a last setpoint at the
rating, then none: nothing lingers; not sooner than `settle_s` after the last change). A limit
lives `ttl_s` and is refreshed at half of it, so a PMA that stops leaves the chargers at full
power within one TTL. One change per charger is in flight at a time: the next waits until the
charger reports the limit it was sent and `settle_s` have passed (PCC readings may lag the
charger's own; chargers take seconds to follow). When the charger reports a higher limit than
ours (another optimiser's setpoint of the same priority replaced it), ours is sent again once
`settle_s` have passed.
Below `min_kw` (the lowest current a charger can hold, IEC 61851: 6 A) a charger is paused (0).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from derbus.messages import EvChargerTelemetry

_EPS_KW = 1e-3


@dataclass(frozen=True, slots=True)
class EvLimit:
    """One `ev_limit_kw` setpoint to send: charger device, limit, and whether it releases."""

    device_id: str
    limit_kw: float
    release: bool = False


@dataclass
class _Sent:
    limit_kw: float
    ts: datetime  # sent (a refresh too)
    changed: datetime  # the limit last changed


@dataclass
class _Site:
    chargers: dict[str, EvChargerTelemetry] = field(default_factory=dict)
    sent: dict[str, _Sent] = field(default_factory=dict)
    commands: int = 0


def _charging(t: EvChargerTelemetry) -> bool:
    return t.online and t.transaction_id is not None and t.status in ("Charging", "SuspendedEVSE")


class EvLimiter:
    """Per site: the chargers seen and the limits sent; `decide` runs after each PMA decision.

    Args:
        ttl_s: life of an EV limit, s (refreshed at half of it while needed).
        deadband_kw: limit changes smaller than this are not made, kW.
        min_kw: below this a charger is paused (limit 0), kW.
        settle_s: a charger's limit is not changed again sooner than this, s (PCC time).
    """

    def __init__(self, ttl_s: float, deadband_kw: float, min_kw: float, settle_s: float) -> None:
        self.ttl_s, self.deadband_kw, self.min_kw = ttl_s, deadband_kw, min_kw
        self.settle = timedelta(seconds=settle_s)
        self._sites: dict[str, _Site] = {}

    def on_telemetry(self, site_id: str, device_id: str, msg: EvChargerTelemetry) -> None:
        """The latest reading of one charger connector."""
        self._sites.setdefault(site_id, _Site()).chargers[device_id] = msg

    def limits(self, site_id: str) -> dict[str, float]:
        """The limits in force (sent, not released), by charger device."""
        site = self._sites.get(site_id)
        return {d: s.limit_kw for d, s in site.sent.items()} if site else {}

    def kpis(self, site_id: str) -> dict[str, float]:
        """`ev_setpoints_sent`, and `ev_limited` / `ev_limit_kw`: chargers limited now, their sum."""
        site = self._sites.get(site_id)
        if site is None:
            return {}
        return {
            "ev_setpoints_sent": float(site.commands),
            "ev_limited": float(len(site.sent)),
            "ev_limit_kw": sum(s.limit_kw for s in site.sent.values()),
        }

    def decide(self, site_id: str, room_kw: float, ts: datetime) -> list[EvLimit]:
        """The EV limits to send now.

        Args:
            site_id: the site.
            room_kw: import room after the battery: ceiling - expected PCC + the battery's unused
                discharge capability, kW (< 0: the ceiling is exceeded with the battery at its
                limit).
            ts: time of the PCC reading.
        """
        site = self._sites.get(site_id)
        if site is None:
            return []
        now_charging = {d: t for d, t in site.chargers.items() if _charging(t)}
        for device in [d for d in site.sent if d not in now_charging]:
            del site.sent[device]  # the session ended: the station drops its TxProfile
        if not now_charging or (not site.sent and room_kw >= -_EPS_KW):
            return []
        rating = {d: t.max_kw or max(t.p_kw, t.limit_kw or 0.0) for d, t in now_charging.items()}
        total_rating = sum(rating.values())
        # a charger draws at most the limit it reports: its power can lag its limit (the
        # station's MeterValues come after it took the profile) while the PCC already shows the
        # lower draw, and the lagging power would read as room enough to release the limit
        drawn = sum(
            t.p_kw if t.limit_kw is None else min(t.p_kw, t.limit_kw) for t in now_charging.values()
        )
        allowed = max(drawn + room_kw, 0.0)
        out: list[EvLimit] = []
        if allowed >= total_rating - _EPS_KW:  # enough room for all: release
            # once every limit has settled: the PCC can show a limit taken before the charger's
            # telemetry shows it at all (no limit, the old power), which reads as room enough
            if any(ts - s.changed < self.settle for s in site.sent.values()):
                return []
            for device in list(site.sent):
                out.append(EvLimit(device, rating[device], release=True))
                del site.sent[device]
            site.commands += len(out)
            return out
        for device, t in now_charging.items():
            share = allowed * rating[device] / total_rating if total_rating > 0 else 0.0
            limit = round(share if share >= self.min_kw else 0.0, 2)
            last = site.sent.get(device)
            if last is not None:
                waited = ts - last.changed >= self.settle
                reported = t.limit_kw is not None and abs(t.limit_kw - last.limit_kw) < _EPS_KW
                # another optimiser's setpoint of the same priority replaced ours with a higher one
                overridden = t.limit_kw is not None and t.limit_kw > last.limit_kw + _EPS_KW
                due = ts - last.ts >= timedelta(seconds=self.ttl_s / 2) or (overridden and waited)
                small = abs(limit - last.limit_kw) < self.deadband_kw
                if not due and (small or not (reported and waited)):
                    continue
                if due and small:
                    limit = last.limit_kw
            same = last is not None and abs(limit - last.limit_kw) < _EPS_KW
            site.sent[device] = _Sent(limit, ts, last.changed if last and same else ts)
            out.append(EvLimit(device, limit))
        site.commands += len(out)
        return out
