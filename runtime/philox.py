"""Counter-based random numbers: Philox-4x32-10, bit for bit as `tl.philox` computes it.

A random op draws element `i` of stream `s` at training step `t` from the
counter (i, s, t, 0) under the 64-bit key `seed`, and keeps the first output
word, turned into a float in [0, 1) exactly as `tl.random.uint_to_uniform_float`
does.  The Triton backend calls `tl.philox` with the same counter, so both
backends draw the same dropout masks.
"""

from __future__ import annotations

import numpy as np

ROUND_A = np.uint64(0xD2511F53)
ROUND_B = np.uint64(0xCD9E8D57)
KEY_A = 0x9E3779B9
KEY_B = 0xBB67AE85
MASK32 = np.uint64(0xFFFFFFFF)
SHIFT32 = np.uint64(32)
UNIFORM_SCALE = np.float32(4.6566127342e-10)  # < 2**-31, so the largest int maps below 1.0


def philox(seed: int, c0: np.ndarray, c1: int, c2: int, c3: int, rounds: int = 10) -> np.ndarray:
    """The first 32-bit output word of Philox-4x32 for counters (c0[i], c1, c2, c3)."""
    k0 = seed & 0xFFFFFFFF
    k1 = (seed >> 32) & 0xFFFFFFFF
    x0 = c0.astype(np.uint64)
    x1 = np.full_like(x0, c1 & 0xFFFFFFFF)
    x2 = np.full_like(x0, c2 & 0xFFFFFFFF)
    x3 = np.full_like(x0, c3 & 0xFFFFFFFF)
    for _ in range(rounds):
        p0 = ROUND_A * x0
        p2 = ROUND_B * x2
        x0, x1, x2, x3 = ((p2 >> SHIFT32) ^ x1 ^ np.uint64(k0),
                          p2 & MASK32,
                          (p0 >> SHIFT32) ^ x3 ^ np.uint64(k1),
                          p0 & MASK32)
        k0 = (k0 + KEY_A) & 0xFFFFFFFF
        k1 = (k1 + KEY_B) & 0xFFFFFFFF
    return x0.astype(np.uint32)


def uniform(seed: int, stream: int, step: int, shape: tuple[int, ...], first: int = 0) -> np.ndarray:
    """float32 numbers in [0, 1), one per element of `shape` (row-major index, from `first`, = counter)."""
    n = int(np.prod(shape, dtype=np.int64))
    counters = (np.arange(n, dtype=np.uint64) + np.uint64(first)) & MASK32 if first else np.arange(n, dtype=np.uint32)
    bits = philox(seed, counters, stream, step, 0).view(np.int32)
    bits = np.where(bits < 0, ~bits, bits)
    return (bits.astype(np.float32) * UNIFORM_SCALE).reshape(shape)
