"""Loss you can see: per-stream sequence gaps in the committed telemetry, and their repair.

Each telemetry stream (site, device) numbers its readings (`Telemetry.seq`, +1 a reading). The
tracker sees every committed message (an `Intake` observer: only what is on disk counts as
received) and keeps, per stream, the next expected number and the numbers it has missed. A
missed reading that arrives later (a replay, a late redelivery) is repaired; `due_requests`
says which ranges to ask the edge for again (`control.replay`), at most `max_attempts` times
each `retry_s` apart without progress, after which the readings still missing are counted lost.

A stream that starts again from 0 is a restarted publisher: what it still missed is lost (its
buffer went with it). Messages without `seq` are never a gap.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

MAX_RANGES_PER_REQUEST_PASS = 8
"""Ranges asked for per stream and pass (the rest in the next pass)."""


@dataclass(frozen=True)
class ReplayRange:
    """Ask the edge for `site_id`/`device_id`'s readings `from_seq`..`to_seq` again."""

    site_id: str
    device_id: str
    from_seq: int
    to_seq: int


@dataclass
class _Stream:
    next_seq: int
    missing: set[int] = field(default_factory=set)
    given_up: set[int] = field(default_factory=set)
    attempts: int = 0
    asked_at: float = 0.0


def ranges(numbers: set[int]) -> list[tuple[int, int]]:
    """Contiguous (first, last) runs of `numbers`, ascending."""
    runs: list[tuple[int, int]] = []
    for n in sorted(numbers):
        if runs and runs[-1][1] == n - 1:
            runs[-1] = (runs[-1][0], n)
        else:
            runs.append((n, n))
    return runs


class GapTracker:
    """Per-stream expected sequence numbers, the missed ones, and the counts of both.

    Args:
        retry_s: seconds between two requests for a stream's missing readings (also the wait
            before the first: a late redelivery is not asked for).
        max_attempts: requests without any repair before the missing readings count as lost.
        max_missing: missing numbers tracked per stream; a larger jump counts the excess lost.
    """

    def __init__(self, retry_s: float = 2.0, max_attempts: int = 5, max_missing: int = 100_000):
        self.retry_s = retry_s
        self.max_attempts = max_attempts
        self.max_missing = max_missing
        self.streams: dict[tuple[str, str], _Stream] = {}
        self.gaps = 0
        """Jumps seen (each may miss several readings)."""
        self.missed = 0
        """Readings found missing, all told."""
        self.repaired = 0
        """Missing readings that arrived later."""
        self.lost = 0
        """Missing readings given up on (not held by the edge any more, or too many); one that
        arrives after all is counted repaired instead."""
        self.duplicates = 0
        """Readings received again that were not missing."""
        self.restarts = 0
        """Streams that started again from 0."""

    @property
    def missing(self) -> int:
        """Readings missing now (asked for, not yet arrived nor given up)."""
        return sum(len(s.missing) for s in self.streams.values())

    def observe(self, entries: Sequence[Any], now: float) -> None:
        """Take committed entries (each with `site_id`, `device_id`, `decoded.seq`)."""
        for entry in entries:
            seq = entry.decoded.seq
            if seq is not None:
                self.see(entry.site_id, entry.device_id, seq, now)

    def see(self, site_id: str, device_id: str, seq: int, now: float) -> None:
        """One reading of a stream with its sequence number."""
        stream = self.streams.get((site_id, device_id))
        if stream is None:
            self.streams[(site_id, device_id)] = _Stream(seq + 1)
            return
        if seq == stream.next_seq:
            stream.next_seq += 1
        elif seq > stream.next_seq:
            jump = seq - stream.next_seq
            self.gaps += 1
            self.missed += jump
            room = max(0, self.max_missing - len(stream.missing))
            first = seq - min(jump, room)
            self.lost += first - stream.next_seq
            if not stream.missing:
                stream.attempts, stream.asked_at = 0, now
            stream.missing.update(range(first, seq))
            stream.next_seq = seq + 1
        elif seq in stream.missing:
            stream.missing.discard(seq)
            stream.attempts = 0
            self.repaired += 1
        elif seq in stream.given_up:  # it came after all: not lost
            stream.given_up.discard(seq)
            self.lost -= 1
            self.repaired += 1
        elif seq == 0:
            self.restarts += 1
            self.lost += len(stream.missing)
            self.streams[(site_id, device_id)] = _Stream(1)  # new numbering: nothing to wait for
        else:
            self.duplicates += 1

    def expected(self) -> dict[str, int]:
        """The next number expected per stream (`site/device` -> seq), to save across restarts."""
        return {f"{site}/{device}": s.next_seq for (site, device), s in self.streams.items()}

    def resume(self, expected: dict[str, int]) -> None:
        """Start from saved `expected` numbers: a jump past them after a restart is a gap too.

        After a crash the saved numbers may be older than what was stored: the readings in
        between are then asked for again and stored once (the readings key), counted repaired.
        """
        for key, next_seq in expected.items():
            site, _, device = key.partition("/")
            if site and device and isinstance(next_seq, int) and next_seq >= 0:
                self.streams.setdefault((site, device), _Stream(next_seq))

    def due_requests(self, now: float) -> list[ReplayRange]:
        """The ranges to ask for now; gives up (counts lost) after `max_attempts` fruitless ones."""
        due: list[ReplayRange] = []
        for (site_id, device_id), stream in self.streams.items():
            if not stream.missing or now - stream.asked_at < self.retry_s:
                continue
            if stream.attempts >= self.max_attempts:
                log.warning(
                    "%s/%s: %d readings lost (not sent again after %d requests)",
                    site_id,
                    device_id,
                    len(stream.missing),
                    stream.attempts,
                )
                self.lost += len(stream.missing)
                if len(stream.given_up) + len(stream.missing) <= self.max_missing:
                    stream.given_up |= stream.missing  # counted back if they still come
                stream.missing.clear()
                continue
            stream.attempts += 1
            stream.asked_at = now
            for first, last in ranges(stream.missing)[:MAX_RANGES_PER_REQUEST_PASS]:
                due.append(ReplayRange(site_id, device_id, first, last))
        return due

    def figures(self) -> dict[str, float]:
        """The counts, for /metrics, /backlog and the KPI report."""
        return {
            "seq_gaps": float(self.gaps),
            "readings_missed": float(self.missed),
            "readings_missing": float(self.missing),
            "readings_repaired": float(self.repaired),
            "readings_lost": float(self.lost),
            "readings_duplicate": float(self.duplicates),
            "stream_restarts": float(self.restarts),
        }
