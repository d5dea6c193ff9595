"""The edge's memory of what it sent: per-site sequence numbers and a bounded buffer of payloads.

Every published reading carries its stream's `seq` (one counter per site: all devices of a site
publish together, so each device stream of the site counts +1 per reading too). The payloads of
the last steps stay in `SentBuffer` (bounded in bytes, oldest step dropped first), so a consumer
that saw a gap can ask for it (`control.replay`) and get the very same payloads again, even when
the broker lost them with all its state.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class SentStep:
    """The payloads of one published step: `payloads[device][j]` is site `sites[j]`'s."""

    sites: Sequence[int]
    seqs: IntArray
    payloads: list[list[bytes]]
    nbytes: int
    all_sites: bool

    def position(self, site: int) -> int | None:
        """Where site `site` stands in this step (None: not published in it)."""
        if self.all_sites:
            return site if site < len(self.sites) else None
        j = int(np.searchsorted(np.asarray(self.sites), site))
        return j if j < len(self.sites) and self.sites[j] == site else None


class SentBuffer:
    """The last steps' payloads, at most `max_bytes` of them (the newest step always kept).

    Args:
        n_sites: sites of the fleet (the sequence counters).
        max_bytes: payload bytes kept; older steps are dropped first.
    """

    def __init__(self, n_sites: int, max_bytes: int) -> None:
        self.next_seq: IntArray = np.zeros(n_sites, dtype=np.int64)
        self.max_bytes = max_bytes
        self.steps: collections.deque[SentStep] = collections.deque()
        self.nbytes = 0

    def number(self, sites: Sequence[int]) -> IntArray:
        """Take the next sequence number of each site (in `sites` order)."""
        index = np.asarray(sites, dtype=np.intp)
        seqs = self.next_seq[index].copy()
        self.next_seq[index] += 1
        return seqs

    def add(self, sites: Sequence[int], seqs: IntArray, payloads: list[list[bytes]]) -> None:
        """Keep one step's payloads (`sites` ascending), dropping the oldest beyond the bound."""
        nbytes = sum(len(p) for column in payloads for p in column)
        all_sites = len(sites) == len(self.next_seq)
        self.steps.append(SentStep(sites, seqs, payloads, nbytes, all_sites))
        self.nbytes += nbytes
        while len(self.steps) > 1 and self.nbytes > self.max_bytes:
            self.nbytes -= self.steps.popleft().nbytes

    def find(self, site: int, device: int, from_seq: int, to_seq: int) -> list[bytes]:
        """The held payloads of site `site`'s `device`-th device with `seq` in from..to, in order."""
        found: list[bytes] = []
        for step in self.steps:
            j = step.position(site)
            if j is not None and from_seq <= step.seqs[j] <= to_seq:
                found.append(step.payloads[device][j])
        return found
