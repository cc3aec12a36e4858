"""Every value's shape in terms of the model's symbolic dimensions (`B`, `T`), found with onnx's
own shape inference run on concrete sizes.

onnx's inference is exact for concrete shapes (with data propagation it follows `Shape -> Gather
-> Concat -> Reshape` and a reshape's -1), but with symbolic ones it gives up on anything computed
(`C // heads`, a -1 beside a symbol) and invents `unk__0`.  So the model is inferred 2^k times,
each symbol taking one of two sizes, and each dimension is fitted as the multilinear polynomial
of the symbols through those values (`B`, `B*T`, `3*T - 1`); one more run at other sizes checks
the fit.  A dimension that does not fit (inference failed, or it is not multilinear) stays None.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import onnx
from onnx import shape_inference

from dln.compiler.symbolic import Sym

LOW, HIGH, CHECK = (6, 10, 14, 18), (7, 11, 15, 19), (9, 13, 17, 21)   # sizes per symbol, at most 4 symbols


def _skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model without its float weights' data (inputs of their shape instead): inference reads
    only the integer constants, and copying the weights 2^k times would cost their size each time."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    keep = []
    for t in out.graph.initializer:
        if t.data_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32):
            keep.append(t)
        else:
            out.graph.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    del out.graph.initializer[:]
    out.graph.initializer.extend(keep)
    return out


def _run(skeleton: onnx.ModelProto, where: dict[str, list[tuple[str, int]]], sizes: dict[str, int]
         ) -> dict[str, list[int | None]]:
    m = onnx.ModelProto()
    m.CopyFrom(skeleton)
    for v in m.graph.input:
        for name, places in where.items():
            for value, axis in places:
                if v.name == value:
                    v.type.tensor_type.shape.dim[axis].Clear()
                    v.type.tensor_type.shape.dim[axis].dim_value = sizes[name]
    try:
        m = shape_inference.infer_shapes(m, data_prop=True)
    except Exception:   # inference refuses these sizes (a reshape that does not divide): nothing learnt
        return {}
    out = {}
    for v in list(m.graph.value_info) + list(m.graph.output):
        t = v.type.tensor_type
        if t.HasField("shape"):
            out[v.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    return out


def symbolic_shapes(model: onnx.ModelProto, where: dict[str, list[tuple[str, int]]]) -> dict[str, tuple[Any, ...]]:
    """Each value's shape, dimensions as ints, Syms or None; `where` names the (input, axis) of each
    symbol.  Empty when there are too many symbols to probe."""
    names = list(where)
    if len(names) > len(LOW):
        return {}
    skeleton = _skeleton(model)
    corners = list(itertools.product((0, 1), repeat=len(names)))
    runs = [_run(skeleton, where, {n: (HIGH if c[i] else LOW)[i] for i, n in enumerate(names)}) for c in corners]
    check = _run(skeleton, where, {n: CHECK[i] for i, n in enumerate(names)})
    subsets = list(itertools.product((0, 1), repeat=len(names)))   # which symbols a monomial holds

    def point(sizes: list[int]) -> list[int]:
        return [int(np.prod([s for s, use in zip(sizes, subset) if use])) for subset in subsets]

    system = np.array([point([(HIGH if c[i] else LOW)[i] for i in range(len(names))]) for c in corners], float)
    at_check = point([CHECK[i] for i in range(len(names))])
    shapes: dict[str, tuple[Any, ...]] = {}
    for value, dims in runs[0].items():
        rank = len(dims)
        if any(len(r.get(value, ())) != rank for r in runs) or len(check.get(value, ())) != rank:
            continue
        fitted = []
        for axis in range(rank):
            seen = [r[value][axis] for r in runs] + [check[value][axis]]
            fitted.append(None if None in seen else _fit(system, at_check, seen, names, subsets))
        shapes[value] = tuple(fitted)
    return shapes


def _fit(system: np.ndarray, at_check: list[int], seen: list[int], names: list[str], subsets: list) -> Any:
    """The integer multilinear polynomial through the corner values that also gives the check's."""
    coeffs = np.linalg.solve(system, np.array(seen[:-1], float))
    rounded = [int(round(c)) for c in coeffs]
    if any(abs(c - r) > 1e-6 for c, r in zip(coeffs, rounded)) or \
            sum(c * p for c, p in zip(rounded, at_check)) != seen[-1]:
        return None
    dim: Any = 0
    for c, subset in zip(rounded, subsets):
        if c:
            term: Any = c
            for name, use in zip(names, subset):
                if use:
                    term = term * Sym.var(name)
            dim = dim + term
    return dim
