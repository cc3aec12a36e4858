"""Backends behind one interface (ARCHITECTURE.md, decision 8).

A backend keeps tensors in its own memory (NumPy arrays, torch tensors on a
GPU) and prepares graphs into executables with `run(feeds, env)`.  Parameters
and optimizer state are *persistent* buffers an executable reads, and writes
in place when an output is donated to them.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any, Mapping, Protocol

import numpy as np

from dln.compiler.ir import Graph
from dln.dsl.diagnostics import Diagnostic, DlnError
from dln.runtime.interpreter import Executable


class Prepared(Protocol):
    def run(self, feeds: Mapping[str, Any], env: Mapping[str, int]) -> dict[str, Any]: ...


class Backend(Protocol):
    name: str

    def asarray(self, array: np.ndarray) -> Any: ...
    def to_numpy(self, value: Any) -> np.ndarray: ...
    def copy_into(self, dst: Any, src: np.ndarray) -> None: ...
    def assign(self, dst: Any, src: Any, tau: float | None = None) -> None: ...
    def prepare(self, graph: Graph, persistent: Mapping[str, Any], donate: Mapping[str, str]) -> Prepared: ...


class NumpyBackend:
    """The NumPy interpreter (dln.runtime.interpreter)."""

    name = "numpy"

    def asarray(self, array: np.ndarray) -> np.ndarray:
        return np.array(array, copy=True)

    def to_numpy(self, value: Any) -> np.ndarray:
        return np.asarray(value)

    def copy_into(self, dst: np.ndarray, src: np.ndarray) -> None:
        np.copyto(dst, src, casting="unsafe")

    def assign(self, dst: np.ndarray, src: np.ndarray, tau: float | None = None) -> None:
        """One buffer into another (`Model.copy_from`): `src`, or `tau * src + (1 - tau) * dst`."""
        np.copyto(dst, src if tau is None else tau * src + (1.0 - tau) * dst)

    def prepare(self, graph: Graph, persistent: Mapping[str, Any], donate: Mapping[str, str]) -> Executable:
        return Executable(graph, persistent, donate)


BACKENDS = ("numpy", "triton")

# Whether a backend's graphs merge the products that share an operand (`merge=` of the pipeline, the pass
# dln.compiler.passes.horizontal): on a GPU a kernel launch saved outweighs the concatenation's copy; NumPy
# gains nothing from fewer calls (measured, one thread: the GAN's step 4-8% slower, the VAE's the same).
MERGES_PRODUCTS = {"numpy": False, "triton": True}


def cuda_visible() -> bool:
    """A CUDA GPU is visible: the driver is loaded and torch sees a device (checked without importing
    torch when there is no driver at all)."""
    if not os.path.exists("/proc/driver/nvidia") or importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


def get_backend(name: str | None, precision: str | None = None) -> Backend:
    """`precision`: how the Triton backend's matrix products use tensor cores — "ieee" (exact fp32,
    the default), "tf32", "tf32x3" or "bf16x3" (Triton's `tl.dot` input precisions); or a mixed mode
    ("bf16-mixed", "16-mixed"), which the model applies to its graphs on every backend (their float32
    products, if any, stay "ieee")."""
    from dln.kernels.precision import MODES, dot_precision

    if precision is not None and precision not in MODES:
        raise DlnError(Diagnostic("E0601", f"unknown precision '{precision}'; precisions: {', '.join(MODES)}"))
    if name is None:
        name = "triton" if cuda_visible() and importlib.util.find_spec("triton") else "numpy"
    if name == "numpy":
        return NumpyBackend()
    if name == "triton":
        if importlib.util.find_spec("triton") is None or importlib.util.find_spec("torch") is None:
            raise DlnError(Diagnostic("E0601", "the triton backend needs the packages torch and triton",
                                      None))
        from dln.runtime.triton_backend import TritonBackend

        return TritonBackend(dot_precision(precision))
    raise DlnError(Diagnostic("E0601", f"unknown backend '{name}'; backends: {', '.join(BACKENDS)}"))
