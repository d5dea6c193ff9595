"""Counter-based random numbers: a site's noise depends only on its seed, the instant and a stream.

Each value is a hash (SplitMix64) of (site key, time counter, stream id), so site `i` of a run
with seed `s` sees exactly the same random numbers whatever the number of sites, and the whole
fleet is drawn in one vectorised numpy expression per quantity.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
KeyArray = npt.NDArray[np.uint64]

_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(x: KeyArray) -> KeyArray:
    """SplitMix64 finaliser on uint64 arrays (wrapping arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * _M1
    x = x ^ (x >> np.uint64(27))
    x = x * _M2
    return x ^ (x >> np.uint64(31))


def site_keys(seed: int, n_sites: int) -> KeyArray:
    """One 64-bit key per site derived from the run seed and the site index."""
    base = np.arange(n_sites, dtype=np.uint64)
    offset = np.uint64((seed * _GOLDEN) & _MASK)
    with np.errstate(over="ignore"):
        return _mix(base + offset)


def uniform(keys: KeyArray, counter: int, stream: int) -> FloatArray:
    """Uniform numbers in [0, 1), one per site, for a counter (e.g. epoch ms) and a stream id."""
    salt = np.uint64(((counter * _GOLDEN) ^ (stream * 0xD1B54A32D192ED03)) & _MASK)
    with np.errstate(over="ignore"):
        bits = _mix(keys ^ salt)
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)


def normal(keys: KeyArray, counter: int, stream: int) -> FloatArray:
    """Standard normal numbers (Box-Muller), one per site."""
    u1 = uniform(keys, counter, 2 * stream)
    u2 = uniform(keys, counter, 2 * stream + 1)
    return np.sqrt(-2.0 * np.log1p(-u1)) * np.cos(2.0 * np.pi * u2)


def uniform_block(keys: KeyArray, counter: int, n_streams: int) -> FloatArray:
    """Uniform numbers for streams 0..n_streams-1 at once: shape (n_streams, n_sites)."""
    block: FloatArray = uniform_blocks(keys, [counter], n_streams)[0]
    return block


def uniform_blocks(keys: KeyArray, counters: list[int], n_streams: int) -> FloatArray:
    """`uniform_block` for many counters at once: shape (counters, n_streams, n_sites)."""
    streams = np.arange(n_streams, dtype=np.uint64)
    c = np.asarray([counter & _MASK for counter in counters], dtype=np.uint64)
    with np.errstate(over="ignore"):
        base = c * np.uint64(_GOLDEN)
        salts = base[:, None] ^ (streams * np.uint64(0xD1B54A32D192ED03))[None, :]
        bits = _mix(keys[None, None, :] ^ salts[:, :, None])
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)


def box_muller(u1: FloatArray, u2: FloatArray) -> FloatArray:
    """Standard normal numbers from two independent uniform arrays."""
    return np.sqrt(-2.0 * np.log1p(-u1)) * np.cos(2.0 * np.pi * u2)
