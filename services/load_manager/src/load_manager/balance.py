"""Settlement-period balance: integrates PCC (and PV) power into Wh per period, pure and restorable.

Sign: the balance is produced − consumed = −∫ pcc_p_kw dt (PCC import > 0), so a positive
balance is a surplus exported so far in the period, a negative one a debt imported.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo


def period_bounds(now: datetime, period_s: int, timezone: str) -> tuple[datetime, datetime]:
    """Start and end of the settlement period containing `now`, aligned to local wall time.

    Args:
        now: aware instant.
        period_s: period length, s (divides a day).
        timezone: IANA zone whose clock the periods follow (matters for :30 offsets).
    """
    offset = now.astimezone(ZoneInfo(timezone)).utcoffset() or timedelta(0)
    local_epoch = now.timestamp() + offset.total_seconds()
    start_local = math.floor(local_epoch / period_s) * period_s
    start = datetime.fromtimestamp(start_local - offset.total_seconds(), UTC)
    return start, start + timedelta(seconds=period_s)


@dataclass
class PeriodTotals:
    """Energy of one settlement period, Wh.

    Attributes:
        balance_wh: produced − consumed at the PCC (= −∫p dt): > 0 net export, < 0 net import.
        import_wh: gross energy imported (∫ max(p, 0) dt).
        export_wh: gross energy exported (∫ max(−p, 0) dt).
        pv_wh: PV generation (∫ generation_kw dt), 0 when no PV telemetry arrived.
        covered_s: seconds of the period covered by readings.
    """

    start: datetime
    end: datetime
    balance_wh: float = 0.0
    import_wh: float = 0.0
    export_wh: float = 0.0
    pv_wh: float = 0.0
    covered_s: float = 0.0
    has_pv: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly copy."""
        data = asdict(self)
        data["start"] = self.start.isoformat()
        data["end"] = self.end.isoformat()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PeriodTotals:
        """Inverse of `to_dict`."""
        values = dict(data)
        values["start"] = datetime.fromisoformat(values["start"])
        values["end"] = datetime.fromisoformat(values["end"])
        return cls(**values)


@dataclass
class _Stream:
    ts: datetime | None = None
    value_kw: float = 0.0


@dataclass
class BalanceIntegrator:
    """Integrates readings into the current period's totals; closes periods at their boundaries.

    Zero-order hold: the power of a reading holds until the next one, for at most `max_gap_s`.

    Args:
        period_s: settlement period, s.
        timezone: IANA zone the periods align to.
        max_gap_s: longest interval integrated at the last known power.
    """

    period_s: int
    timezone: str
    max_gap_s: float = 60.0
    current: PeriodTotals | None = None
    meter: _Stream = field(default_factory=_Stream)
    pv: _Stream = field(default_factory=_Stream)

    def _open(self, when: datetime) -> PeriodTotals:
        start, end = period_bounds(when, self.period_s, self.timezone)
        return PeriodTotals(start=start, end=end)

    def roll(self, now: datetime) -> list[PeriodTotals]:
        """Close every period that ended at or before `now`; returns the closed ones."""
        closed: list[PeriodTotals] = []
        if self.current is None:
            self.current = self._open(now)
            return closed
        if now >= self.current.end:
            closed.append(self.current)
            self.current = self._open(now)
        return closed

    def _integrate(self, stream: _Stream, until: datetime, is_pv: bool) -> list[PeriodTotals]:
        closed: list[PeriodTotals] = []
        if stream.ts is None or until <= stream.ts:
            return closed
        t0 = stream.ts
        t1 = min(until, t0 + timedelta(seconds=self.max_gap_s))
        while t0 < t1:
            closed.extend(self.roll(t0))
            assert self.current is not None
            if t0 < self.current.start:  # reading older than the open period: drop the part
                t0 = self.current.start
                continue
            seg_end = min(t1, self.current.end)
            hours = (seg_end - t0).total_seconds() / 3600.0
            p = stream.value_kw
            if is_pv:
                self.current.pv_wh += p * hours * 1000.0
                self.current.has_pv = True
            else:
                self.current.balance_wh -= p * hours * 1000.0
                self.current.import_wh += max(p, 0.0) * hours * 1000.0
                self.current.export_wh += max(-p, 0.0) * hours * 1000.0
                self.current.covered_s += hours * 3600.0
            t0 = seg_end
        return closed

    def add_meter(self, ts: datetime, p_kw: float) -> list[PeriodTotals]:
        """Take a PCC reading (kW, + import); returns periods closed on the way."""
        if self.meter.ts is not None and ts <= self.meter.ts:
            return []  # duplicate or out of order (QoS 1 redelivery)
        closed = self._integrate(self.meter, ts, is_pv=False)
        closed.extend(self.roll(ts))
        self.meter = _Stream(ts, p_kw)
        return closed

    def add_pv(self, ts: datetime, generation_kw: float) -> list[PeriodTotals]:
        """Take a PV reading (kW, >= 0); returns periods closed on the way."""
        if self.pv.ts is not None and ts <= self.pv.ts:
            return []
        closed = self._integrate(self.pv, ts, is_pv=True)
        closed.extend(self.roll(ts))
        self.pv = _Stream(ts, generation_kw)
        return closed

    @property
    def balance_wh(self) -> float:
        """Balance of the open period so far, Wh (0 before the first reading)."""
        return self.current.balance_wh if self.current else 0.0

    @property
    def last_meter(self) -> tuple[datetime | None, float]:
        """Time and power (kW, + import) of the latest PCC reading."""
        return self.meter.ts, self.meter.value_kw

    # --- persistence ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """State to save under data_dir."""
        return {
            "period_s": self.period_s,
            "current": self.current.to_dict() if self.current else None,
            "meter": _stream_dict(self.meter),
            "pv": _stream_dict(self.pv),
        }

    def restore(self, data: dict[str, Any], now: datetime) -> list[PeriodTotals]:
        """Restore saved state if it belongs to the period containing `now`.

        A state from an earlier period is returned as closed (its totals still count in the KPIs)
        and the balance starts again at 0; a state saved with another period length is ignored.
        """
        if data.get("period_s") != self.period_s or data.get("current") is None:
            return []
        saved = PeriodTotals.from_dict(data["current"])
        start, _ = period_bounds(now, self.period_s, self.timezone)
        if saved.start != start:
            self.current = self._open(now)
            return [saved] if saved.start < start else []
        self.current = saved
        self.meter = _stream_from(data.get("meter"))
        self.pv = _stream_from(data.get("pv"))
        return []


def _stream_dict(stream: _Stream) -> dict[str, Any]:
    return {"ts": stream.ts.isoformat() if stream.ts else None, "value_kw": stream.value_kw}


def _stream_from(data: dict[str, Any] | None) -> _Stream:
    if not data or data.get("ts") is None:
        return _Stream()
    return _Stream(datetime.fromisoformat(data["ts"]), float(data["value_kw"]))
