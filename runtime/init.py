"""Drawing initial parameter values from initializer specs (dln.compiler.builtins.inits).

`draw_all` first checks that the parameters fit in this machine's memory: a size
typed with a few zeros too many (`linear(100000000000)`) is a diagnostic at
the layer, not a MemoryError, nor the operating system stopping the process.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import numpy as np

from dln.compiler.build import ParamInfo
from dln.compiler.ir import TensorType
from dln.compiler.symbolic import numel
from dln.compiler.values import InitSpec
from dln.dsl.diagnostics import Diagnostic, DlnError, Note
from dln.runtime.numpy_ops import np_dtype


def draw_all(params: Sequence[ParamInfo], rng: np.random.Generator,
             place: Callable[[np.ndarray], Any] = lambda a: a) -> dict[str, Any]:
    """Every parameter's initial value, put where `place` puts arrays (the backend's memory)."""
    sizes = {p.name: _nbytes(p.type) for p in params}
    memory = physical_memory()
    total = sum(sizes.values())
    if params and memory is not None and total > memory:
        biggest = max(params, key=lambda p: sizes[p.name])
        largest = Note(f"the largest is {biggest.name}: {biggest.type}, {_human(sizes[biggest.name])}")
        raise DlnError(Diagnostic("E0208", f"the parameters need {_human(total)}, more than this machine's memory "
                                           f"({_human(memory)})", biggest.span, (largest,)))
    out = {}
    for p in params:
        try:
            out[p.name] = place(draw(p.init, p.type, rng))
        except MemoryError:
            raise DlnError(Diagnostic("E0208", f"cannot allocate parameter {p.name}: {p.type}, "
                                               f"{_human(sizes[p.name])}", p.span)) from None
    return out


def physical_memory() -> int | None:
    """Bytes of RAM, when the system says."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def _nbytes(t: TensorType) -> int:
    return int(numel(t.shape)) * t.dtype.itemsize


def _human(n: int) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


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
