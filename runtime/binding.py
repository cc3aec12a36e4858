"""Binding inputs: arrays checked against the declared types, symbols bound.

The first input that mentions a symbolic dimension binds it; every later use
must agree, and so must the constraints the compiler could not prove.  Each
mismatch is an error at the input's declaration, naming the input and the
dimension.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import numpy as np

from dln.compiler.build import InputInfo
from dln.compiler.ir import Constraint, DType
from dln.compiler.symbolic import Sym, evaluate
from dln.dsl.diagnostics import Diagnostic, DlnError, Note
from dln.runtime.checks import human_bytes
from dln.runtime.init import physical_memory
from dln.runtime.numpy_ops import np_dtype


class NotAnArray(Exception):
    """A value that cannot be read as an array; the message says why, for the caller's diagnostic
    (an input's is E0701 at its declaration, a weight's E0703 at the model)."""


def to_numpy(value: Any) -> np.ndarray:
    """NumPy arrays pass; torch tensors are read without copying when possible (bfloat16 and other
    floats NumPy lacks widen exactly to float32, sparse tensors are made dense); anything else goes
    through `np.asarray` (lists, scalars).  Raises NotAnArray."""
    if isinstance(value, np.ndarray):
        return value
    if value is None:
        raise NotAnArray("is None")
    if type(value).__module__.startswith("torch"):
        return _torch_to_numpy(value)
    try:
        return np.asarray(value)
    except (ValueError, TypeError, OverflowError) as e:  # ragged lists, objects NumPy cannot convert
        raise NotAnArray(f"cannot be read as an array ({e})") from None


def _torch_to_numpy(value: Any) -> np.ndarray:
    import torch

    if not isinstance(value, torch.Tensor):
        raise NotAnArray(f"is a {type(value).__module__}.{type(value).__name__}, not a tensor")
    t = value.detach()
    if t.device.type == "meta":
        raise NotAnArray("is a tensor on the meta device, which holds no values")
    if t.layout != torch.strided:
        t = t.to_dense()
    if t.is_floating_point() and t.dtype not in (torch.float16, torch.float32, torch.float64):
        t = t.float()  # bfloat16, float8: NumPy has no such type; float32 holds every value exactly
    try:
        return t.cpu().resolve_conj().resolve_neg().numpy()
    except (TypeError, RuntimeError) as e:  # quantized, nested, unsigned types NumPy lacks
        raise NotAnArray(f"is a torch tensor NumPy cannot read ({t.dtype}, {t.layout}): {e}") from None


def real_dtype(arr: np.ndarray) -> bool:
    """Bool, integer or float: the element types an array of numbers may have (not complex, object,
    strings, dates)."""
    return arr.dtype.kind in "biuf"


def convert(info: InputInfo, value: Any) -> np.ndarray:
    """`value` as a contiguous array of the declared element type, or E0701 at the input's declaration.
    Floats of any width convert to a declared float (float16 and bfloat16 exactly, float64 rounded, as
    torch's `.to()` does); ints and bools convert to a declared float; only ints to a declared int."""
    try:
        arr = to_numpy(value)
    except NotAnArray as e:
        raise DlnError(Diagnostic("E0701", f"input '{info.name}' is declared {info.type}, but the value given "
                                           f"{e}", info.span)) from None
    want = info.type.dtype
    got_float = arr.dtype.kind == "f"
    got_int = arr.dtype.kind in "biu"
    if want.is_float and not (got_float or got_int) or want.is_int and not got_int or \
            want is DType.BOOL and arr.dtype != np.bool_:
        raise DlnError(Diagnostic("E0701", f"input '{info.name}' is declared {info.type}, got an array of "
                                           f"{arr.dtype}", info.span))
    if arr.ndim != info.type.rank:
        raise DlnError(Diagnostic("E0701", f"input '{info.name}' is declared {info.type} (rank {info.type.rank}), "
                                           f"got shape {tuple(arr.shape)}", info.span))
    dtype = np_dtype(want)
    if not (arr.flags.c_contiguous and arr.dtype == dtype):  # a copy: sized before it is made
        memory = physical_memory()
        if memory is not None and arr.size * dtype.itemsize > memory:
            raise DlnError(Diagnostic("E0706", f"input '{info.name}' of shape {tuple(arr.shape)} needs "
                                               f"{human_bytes(arr.size * dtype.itemsize)} as a {want} array, more "
                                               f"than this machine's memory ({human_bytes(memory)})", info.span))
    return np.ascontiguousarray(arr, dtype=dtype)


def bind(infos: Iterable[InputInfo], arrays: Mapping[str, np.ndarray],
         constraints: Iterable[Constraint] = ()) -> dict[str, int]:
    """The value of every symbolic dimension, from the arrays given for `infos`."""
    env: dict[str, int] = {}
    bound_by: dict[str, InputInfo] = {}
    infos = [i for i in infos if i.name in arrays]
    for info in infos:  # bare symbols first: `B` in f32[B, 64]
        for axis, d in enumerate(info.type.shape):
            if isinstance(d, Sym) and len(d.symbols) == 1 and d == Sym.var(next(iter(d.symbols))):
                name = next(iter(d.symbols))
                size = int(arrays[info.name].shape[axis])
                if name not in env:
                    env[name] = size
                    bound_by[name] = info
    for info in infos:
        shape = arrays[info.name].shape
        for axis, d in enumerate(info.type.shape):
            if isinstance(d, Sym) and not d.symbols <= env.keys():
                missing = ", ".join(sorted(d.symbols - env.keys()))
                raise DlnError(Diagnostic("E0701", f"input '{info.name}': dimension {axis} ({d}) uses {missing}, "
                                                   "which no input gives directly", info.span))
            want = evaluate(d, env)
            if want != shape[axis] and isinstance(d, int):
                raise DlnError(Diagnostic("E0701", f"input '{info.name}' is declared {info.type}, got shape "
                                                   f"{tuple(shape)}", info.span))
            if want != shape[axis]:
                notes = ()
                if isinstance(d, Sym) and d.symbols:
                    first = next(iter(sorted(d.symbols)))
                    by = bound_by[first]
                    notes = (Note(f"{first} = {env[first]} was bound by input '{by.name}'", by.span),)
                raise DlnError(Diagnostic("E0205", f"input '{info.name}': dimension {axis} is {shape[axis]} but "
                                                   f"{d} = {want}", info.span, notes))
    for c in constraints:
        if not (_known(c.lhs, env) and _known(c.rhs, env)):
            continue
        lhs, rhs = evaluate(c.lhs, env), evaluate(c.rhs, env)
        if not c.holds(lhs, rhs):
            if c.relation != "==":  # an index bound, or a least size: the sizes say it all
                raise DlnError(Diagnostic(c.code or "E0207", f"{c.message} (with {_describe(env)})", c.loc))
            raise DlnError(Diagnostic("E0205", f"{c.message} (with {_describe(env)}: {c.lhs} = {lhs}, "
                                               f"{c.rhs} = {rhs})", c.loc))
    return env


def _known(d, env) -> bool:
    return not isinstance(d, Sym) or d.symbols <= env.keys()


def _describe(env: Mapping[str, int]) -> str:
    return ", ".join(f"{k} = {v}" for k, v in sorted(env.items()))
