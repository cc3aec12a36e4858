"""Test inputs shared by the parity tests: seeded, away from kinks where asked."""

import numpy as np


def R(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def normal(shape, seed=0, lo_abs: float | None = None) -> np.ndarray:
    """Standard normal values; with `lo_abs`, pushed at least that far from zero (away from kinks)."""
    x = R(seed).standard_normal(shape)
    if lo_abs is not None:
        x = np.where(x >= 0, x + lo_abs, x - lo_abs)
    return x


def positive(shape, seed=0, lo=0.3, hi=2.5) -> np.ndarray:
    return R(seed).uniform(lo, hi, shape)
