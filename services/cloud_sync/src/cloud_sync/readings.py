"""Readings in columns: series keys once, then (key index, time µs, value) arrays — compact and fast.

A `ReadingBatch` is what the intake commits to the outbox (one segment per group commit), what the
forwarder sends to the cloud database and what `cloud-sync import` loads. Its series keys are
`(site_id, device_id, metric)`; each reading refers to its key by index, so a batch of thousands of
readings of a few hundred series carries each name once. `to_blob` / `from_blob` give the outbox's
compressed form (zlib over the three arrays), `rows()` the `derbus.storage.ReadingRow`s for the
targets that want rows (SQLite, Supabase REST).
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta

import numpy as np
import numpy.typing as npt

from derbus.errors import StorageError
from derbus.storage import ReadingRow

SeriesKey = tuple[str, str, str]
"""(site_id, device_id, metric) of a reading."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_HEADER = struct.Struct("<4sII")  # magic, readings, keys-json length
_MAGIC = b"RB01"
_ZLIB_LEVEL = 1  # level 1 already takes most of the gain (times repeat, keys are indices)


def to_epoch_us(when: datetime) -> int:
    """Microseconds since the Unix epoch of an aware datetime (exact)."""
    delta = when - _EPOCH  # aware minus aware: exact whatever the zone
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_epoch_us(us: int) -> datetime:
    """The aware UTC datetime of microseconds since the Unix epoch."""
    return _EPOCH + timedelta(microseconds=us)


def month_codes(time_us: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Per reading, its UTC month as months since 1970-01 (see `year_month`)."""
    return time_us.astype("datetime64[us]").astype("datetime64[M]").astype(np.int64)


def year_month(code: int) -> tuple[int, int]:
    """(year, month) of a `month_codes` value."""
    return 1970 + code // 12, code % 12 + 1


class ReadingBatch:
    """Readings as columns: `keys[key_idx[i]]` measured `value[i]` at `time_us[i]` (µs, UTC).

    Args:
        keys: the series keys, each once.
        key_idx: per reading, the index of its key (uint32).
        time_us: per reading, µs since the Unix epoch (int64).
        value: per reading, the value (float64, finite).
    """

    __slots__ = ("key_idx", "keys", "time_us", "value")

    def __init__(
        self,
        keys: list[SeriesKey],
        key_idx: npt.NDArray[np.uint32],
        time_us: npt.NDArray[np.int64],
        value: npt.NDArray[np.float64],
    ) -> None:
        if not len(key_idx) == len(time_us) == len(value):
            raise ValueError("key_idx, time_us and value must have the same length")
        self.keys = keys
        self.key_idx = key_idx
        self.time_us = time_us
        self.value = value

    def __len__(self) -> int:
        return len(self.value)

    @classmethod
    def empty(cls) -> ReadingBatch:
        """A batch without readings."""
        return cls([], np.empty(0, np.uint32), np.empty(0, np.int64), np.empty(0, np.float64))

    @classmethod
    def from_rows(cls, rows: Iterable[ReadingRow]) -> ReadingBatch:
        """A batch of `derbus.storage.ReadingRow`s."""
        builder = BatchBuilder()
        for r in rows:
            builder.add(r.site_id, r.device_id, r.metric, to_epoch_us(r.time), r.value)
        return builder.build()

    @classmethod
    def concat(cls, batches: Sequence[ReadingBatch]) -> ReadingBatch:
        """One batch of several (keys merged, readings in order)."""
        if not batches:
            return cls.empty()
        if len(batches) == 1:
            return batches[0]
        keys: list[SeriesKey] = []
        index: dict[SeriesKey, int] = {}
        parts: list[npt.NDArray[np.uint32]] = []
        for b in batches:
            remap = np.empty(len(b.keys), np.uint32)
            for i, key in enumerate(b.keys):
                found = index.get(key)
                if found is None:
                    found = index[key] = len(keys)
                    keys.append(key)
                remap[i] = found
            parts.append(remap[b.key_idx] if len(b.keys) else b.key_idx)
        return cls(
            keys,
            np.concatenate(parts).astype(np.uint32, copy=False),
            np.concatenate([b.time_us for b in batches]),
            np.concatenate([b.value for b in batches]),
        )

    def rows(self) -> list[ReadingRow]:
        """The readings as `ReadingRow`s (for row-wise targets)."""
        keys = self.keys
        return [
            ReadingRow(from_epoch_us(t), keys[k][0], keys[k][1], keys[k][2], v)
            for k, t, v in zip(
                self.key_idx.tolist(), self.time_us.tolist(), self.value.tolist(), strict=True
            )
        ]

    def months(self) -> set[tuple[int, int]]:
        """The UTC (year, month) pairs the readings fall in."""
        return {year_month(m) for m in np.unique(month_codes(self.time_us)).tolist()}

    # --- the outbox's form ------------------------------------------------------------------------
    def to_blob(self) -> bytes:
        """Compressed bytes of the batch (see `from_blob`)."""
        keys = json.dumps(self.keys, separators=(",", ":")).encode()
        body = b"".join(
            (
                keys,
                self.key_idx.astype("<u4", copy=False).tobytes(),
                self.time_us.astype("<i8", copy=False).tobytes(),
                self.value.astype("<f8", copy=False).tobytes(),
            )
        )
        return _HEADER.pack(_MAGIC, len(self), len(keys)) + zlib.compress(body, _ZLIB_LEVEL)

    @classmethod
    def from_blob(cls, blob: bytes) -> ReadingBatch:
        """The batch `to_blob` wrote.

        Raises:
            StorageError: the bytes are not a batch (corrupt outbox).
        """
        try:
            magic, n, key_len = _HEADER.unpack_from(blob)
            if magic != _MAGIC:
                raise ValueError(f"unknown segment format {magic!r}")
            body = zlib.decompress(blob[_HEADER.size :])
            keys = [tuple(k) for k in json.loads(body[:key_len])]
            at = key_len
            key_idx = np.frombuffer(body, "<u4", n, at).astype(np.uint32)
            at += 4 * n
            time_us = np.frombuffer(body, "<i8", n, at).astype(np.int64)
            at += 8 * n
            value = np.frombuffer(body, "<f8", n, at).astype(np.float64)
        except (ValueError, zlib.error, struct.error) as err:
            raise StorageError(f"outbox segment unreadable: {err}") from err
        return cls(keys, key_idx, time_us, value)


class BatchBuilder:
    """Collects readings one by one (the intake, row-wise sources) into a `ReadingBatch`."""

    __slots__ = ("_index", "_key_idx", "_keys", "_time_us", "_value")

    def __init__(self) -> None:
        self._keys: list[SeriesKey] = []
        self._index: dict[SeriesKey, int] = {}
        self._key_idx: list[int] = []
        self._time_us: list[int] = []
        self._value: list[float] = []

    def __len__(self) -> int:
        return len(self._value)

    def add(self, site_id: str, device_id: str, metric: str, time_us: int, value: float) -> None:
        """One reading."""
        key = (site_id, device_id, metric)
        idx = self._index.get(key)
        if idx is None:
            idx = self._index[key] = len(self._keys)
            self._keys.append(key)
        self._key_idx.append(idx)
        self._time_us.append(time_us)
        self._value.append(value)

    def add_message(
        self, site_id: str, device_id: str, time_us: int, values: Sequence[tuple[str, float]]
    ) -> None:
        """The readings of one message: its `(metric, value)` pairs at one time."""
        index = self._index
        keys = self._keys
        for metric, _ in values:
            key = (site_id, device_id, metric)
            idx = index.get(key)
            if idx is None:
                idx = index[key] = len(keys)
                keys.append(key)
            self._key_idx.append(idx)
        n = len(values)
        self._time_us.extend([time_us] * n)
        self._value.extend([v for _, v in values])

    def build(self) -> ReadingBatch:
        """The batch of everything added."""
        return ReadingBatch(
            list(self._keys),
            np.array(self._key_idx, np.uint32),
            np.array(self._time_us, np.int64),
            np.array(self._value, np.float64),
        )
