"""Values an ONNX graph computes before any run: shape arithmetic, folded while importing.

Exporters compute reshape targets from the input's shape (`Shape -> Gather -> Unsqueeze -> Concat
-> Reshape`).  A dimension the model's inputs leave open is a `Sym` (dln.compiler.symbolic), so a
shape is an object array of ints and Syms and folds like numbers: `Shape` of `x: f32[B, T, 16]` is
`[B, T, 16]`, and `Concat` of pieces of it is the `(B, T, 2, 8)` the `.dln` text writes.  Nodes of
numbers only go through onnx's reference evaluator; the few ops that shape arithmetic uses have a
rule here that also takes Syms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import onnx
from onnx import helper

from dln.runtime.onnx.importer_graph import INode


@dataclass(frozen=True)
class Fill:
    """`ConstantOfShape` (or `Expand` of one number) to a shape holding a symbol: `value` everywhere,
    the array never made.  `Trilu` of one is a causal mask (importer_ops)."""

    shape: tuple
    value: float
    dtype: np.dtype


class CannotFold(Exception):
    pass


def _ints(a: np.ndarray) -> list:
    return [x if not isinstance(x, (np.integer,)) else int(x) for x in np.reshape(a, -1).tolist()]


def _axes(n: INode, ins: list, position: int) -> list[int] | None:
    """Axes from the attribute (older opsets) or the input at `position` (newer)."""
    if "axes" in n.attrs:
        return [int(a) for a in n.attrs["axes"]]
    if len(ins) > position and ins[position] is not None:
        return [int(a) for a in np.reshape(ins[position], -1)]
    return None


def _gather(n, ins):
    return np.take(ins[0], ins[1].astype(np.int64) if ins[1].dtype != object else ins[1], axis=n.attr("axis", 0))


def _unsqueeze(n, ins):
    out = ins[0]
    rank = out.ndim + len(_axes(n, ins, 1))
    for a in sorted(a % rank for a in _axes(n, ins, 1)):
        out = np.expand_dims(out, a)
    return out


def _squeeze(n, ins):
    axes = _axes(n, ins, 1)
    return np.squeeze(ins[0], axis=None if axes is None else tuple(a % ins[0].ndim for a in axes))


def _slice(n, ins):
    data = ins[0]
    starts, ends = _ints(ins[1]), _ints(ins[2])
    axes = _ints(ins[3]) if len(ins) > 3 and ins[3] is not None else list(range(len(starts)))
    steps = _ints(ins[4]) if len(ins) > 4 and ins[4] is not None else [1] * len(starts)
    index = [slice(None)] * data.ndim
    for s, e, a, st in zip(starts, ends, axes, steps):
        index[a % data.ndim] = slice(s, e, st)
    return data[tuple(index)]


def _binary(fn: Callable[[Any, Any], Any]) -> Callable:
    def fold(n, ins):
        a, b = ins
        if a.dtype != object and b.dtype != object:
            raise CannotFold   # numbers: the reference evaluator computes it exactly as ONNX says
        return np.asarray(np.frompyfunc(fn, 2, 1)(a, b), dtype=object)
    return fold


def _floordiv(a, b):
    return a // b


def _cast(n, ins):
    if ins[0].dtype == object and n.attr("to") in (onnx.TensorProto.INT64, onnx.TensorProto.INT32):
        return ins[0]
    raise CannotFold


# Rules that take arrays of dimensions (object arrays); anything else is evaluated by onnx.reference.
RULES: dict[str, Callable[[INode, list], np.ndarray]] = {
    "Identity": lambda n, ins: ins[0],
    "Gather": _gather,
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Concat": lambda n, ins: np.concatenate([np.asarray(i, dtype=object) if any(x.dtype == object for x in ins) else i
                                             for i in ins], axis=n.attr("axis", 0)),
    "Slice": _slice,
    "Cast": _cast,
    "Add": _binary(lambda a, b: a + b),
    "Sub": _binary(lambda a, b: a - b),
    "Mul": _binary(lambda a, b: a * b),
    "Div": _binary(_floordiv),
    "Reshape": lambda n, ins: np.reshape(ins[0], [int(d) for d in np.reshape(ins[1], -1)]),
}

NEVER = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Bernoulli", "Multinomial",
         "Dropout"}


def _fill_through(n: INode, ins: list) -> Fill:
    """A Fill through an op that only moves values (torch slices one zero state per layer out of one);
    its shape where it is simple to follow, else None."""
    fill = ins[0]
    shape = list(fill.shape) if fill.shape is not None and n.op in ("Identity", "Cast", "Slice") else None
    if shape is not None and n.op == "Slice":
        starts, ends = _ints(ins[1]), _ints(ins[2])
        axes = _ints(ins[3]) if len(ins) > 3 and ins[3] is not None else list(range(len(starts)))
        steps = _ints(ins[4]) if len(ins) > 4 and ins[4] is not None else [1] * len(starts)
        for start, end, axis, step in zip(starts, ends, axes, steps):
            d = shape[axis % len(shape)]
            if isinstance(d, int) and all(isinstance(v, int) for v in (start, end, step)):
                shape[axis % len(shape)] = len(range(*slice(start, end, step).indices(d)))
            elif not (step == 1 and start == 0 and isinstance(end, int) and end >= 2 ** 31):   # not the whole axis
                shape = None
                break
    return Fill(tuple(shape) if shape is not None else None, fill.value, fill.dtype)


def fold(n: INode, ins: list[np.ndarray | None]) -> list[np.ndarray | Fill]:
    """The outputs of node `n` from its known inputs.  Raises CannotFold."""
    if n.op in NEVER:
        raise CannotFold
    if ins and isinstance(ins[0], Fill):
        if n.op not in ("Slice", "Squeeze", "Unsqueeze", "Identity", "Cast"):
            raise CannotFold
        return [_fill_through(n, ins)]
    if n.op == "ConstantOfShape":
        value = n.attr("value", np.zeros(1, np.float32))
        shape = tuple(_ints(ins[0]))
        if all(isinstance(d, int) for d in shape):
            return [np.full(shape, value.reshape(-1)[0], dtype=value.dtype)]
        return [Fill(shape, float(value.reshape(-1)[0]), value.dtype)]
    if n.op == "Expand" and ins[1].dtype == object and ins[0].size == 1 and ins[0].dtype != object:
        return [Fill(tuple(_ints(ins[1])), float(ins[0].reshape(-1)[0]), ins[0].dtype)]
    if n.op in RULES:
        try:
            return [_plain(RULES[n.op](n, ins))]
        except (CannotFold, TypeError, ValueError, IndexError, ArithmeticError):
            pass   # e.g. a slice of numbers bounded by a symbol: not known while importing
    if any(i is not None and i.dtype == object for i in ins) or n.proto is None:
        raise CannotFold
    return _evaluate(n, ins)


def _plain(out: Any) -> np.ndarray:
    """An array of dimensions that holds no symbol is an array of int64: numbers fold on from there."""
    out = out if isinstance(out, np.ndarray) else np.asarray(out, dtype=object)
    if out.dtype == object and all(isinstance(x, (int, np.integer)) for x in out.reshape(-1)):
        return out.astype(np.int64)
    return out


def _evaluate(n: INode, ins: list[np.ndarray | None]) -> list[np.ndarray]:
    from onnx.reference import ReferenceEvaluator

    names = [f"in{k}" if i is not None else "" for k, i in enumerate(ins)]
    node = helper.make_node(n.op, names, [f"out{k}" for k in range(len(n.outputs))], domain=n.proto.domain)
    node.attribute.extend(n.proto.attribute)
    try:
        evaluator = ReferenceEvaluator(node)
        return list(evaluator.run(None, {k: v for k, v in zip(names, ins) if k}))
    except Exception as e:  # an op the evaluator lacks, or inputs it refuses: the node is not folded
        raise CannotFold from e
