"""Drawing initial parameter values from initializer specs (dln.compiler.builtins.inits)."""

from __future__ import annotations

import numpy as np

from dln.compiler.values import InitSpec
from dln.runtime.numpy_ops import np_dtype
from dln.compiler.ir import TensorType


def draw(init: InitSpec, type_: TensorType, rng: np.random.Generator) -> np.ndarray:
    shape = tuple(int(d) for d in type_.shape)
    dtype = np_dtype(type_.dtype)
    kind = init.kind
    if kind == "zeros":
        return np.zeros(shape, dtype)
    if kind == "ones":
        return np.ones(shape, dtype)
    if kind == "constant":
        return np.full(shape, init.arg("value"), dtype)
    if kind == "uniform":
        return rng.uniform(init.arg("a"), init.arg("b"), shape).astype(dtype)
    if kind == "normal":
        return rng.normal(init.arg("mean"), init.arg("std"), shape).astype(dtype)
    if kind == "orthogonal":
        return (_orthogonal(shape, rng) * init.arg("gain")).astype(dtype)
    raise ValueError(f"unknown initializer {kind}")  # the compiler resolves every other kind


def _orthogonal(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """torch.nn.init.orthogonal_: QR of a normal matrix, signs fixed by R's diagonal."""
    if len(shape) < 2:
        raise ValueError("orthogonal initialization needs at least 2 dimensions")
    rows = shape[0]
    cols = int(np.prod(shape[1:]))
    flat = rng.standard_normal((rows, cols))
    if rows < cols:
        flat = flat.T
    q, r = np.linalg.qr(flat)
    q *= np.sign(np.diag(r))
    if rows < cols:
        q = q.T
    return q.reshape(shape)
