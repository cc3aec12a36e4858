"""Constant folding and algebraic simplification.

Constants in the IR are filled tensors (`const(value=...)` of a shape), so
folding works on their single value: elementwise ops of constants become
constants, computed with NumPy scalars of the node's element type (the same
arithmetic the NumPy backend does).  Identities are removed where they are
exact for every input, signed zeros, infinities and NaN included: `x * 1`,
`x / 1`, `x - 0`, `x + 0` for integers (for floats only `x + -0.0`: `-0.0 +
0.0` is `+0.0`), `--x`, a reshape or broadcast to the same shape, chains of
reshapes and of permutes.  `x * 0` is kept: it is NaN for infinite x.
"""

from __future__ import annotations

import math

import numpy as np

from dln.compiler.ir import DType, Graph, GroupOp, Op, map_bodies
from dln.compiler.passes.rewrite import rewrite

_NP = {DType.F16: np.float16, DType.BF16: np.float32, DType.F32: np.float32, DType.F64: np.float64,
       DType.I32: np.int32, DType.I64: np.int64, DType.BOOL: np.bool_}

_FOLD = {
    Op.NEG: np.negative, Op.EXP: np.exp, Op.LOG: np.log, Op.LOG1P: np.log1p, Op.SQRT: np.sqrt,
    Op.ABS: np.abs, Op.SIGN: np.sign, Op.SIN: np.sin, Op.COS: np.cos, Op.TANH: np.tanh, Op.NOT: np.logical_not,
    Op.ATAN: np.arctan, Op.FLOOR: np.floor,
    Op.ADD: np.add, Op.SUB: np.subtract, Op.MUL: np.multiply, Op.DIV: np.divide, Op.POW: np.power,
    Op.MAXIMUM: np.maximum, Op.MINIMUM: np.minimum, Op.LT: np.less, Op.LE: np.less_equal,
    Op.GT: np.greater, Op.GE: np.greater_equal, Op.EQ: np.equal, Op.NE: np.not_equal,
    Op.AND: np.logical_and, Op.OR: np.logical_or,
}


def fold(graph: Graph) -> Graph:
    graph = map_bodies(graph, fold)   # loop bodies first
    users = graph.users()

    def const_value(b, i):
        n = b.index[i]
        return n.attrs["value"] if n.op is Op.CONST else None

    def rule(b, n):
        ins = [b.index[i] for i in n.inputs]
        values = [const_value(b, i) for i in n.inputs]
        # Elementwise op of constants -> constant.
        if n.op in _FOLD and ins and all(v is not None for v in values):
            with np.errstate(all="ignore"):
                args = [_NP[m.dtype](v) for m, v in zip(ins, values)]
                try:
                    result = _FOLD[n.op](*args)
                except (ValueError, ZeroDivisionError):
                    return None
            return b.const(result.item(), n.dtype, n.shape).id
        if n.op is Op.CAST and values[0] is not None:
            with np.errstate(all="ignore"):
                return b.const(_NP[n.dtype](_NP[ins[0].dtype](values[0])).item(), n.dtype, n.shape).id
        if n.op in (Op.BROADCAST, Op.RESHAPE) and values[0] is not None:
            return b.const(values[0], n.dtype, n.shape).id
        if n.op in (Op.RESHAPE, Op.BROADCAST) and ins[0].shape == n.shape:
            return ins[0].id
        if n.op is Op.RESHAPE and ins[0].op is Op.RESHAPE:
            return b.reshape(b.tensor(ins[0].inputs[0]), n.shape).id
        if n.op is Op.BROADCAST and ins[0].op is Op.BROADCAST:
            return b.broadcast_to(b.tensor(ins[0].inputs[0]), n.shape).id
        if n.op is Op.PERMUTE and ins[0].op is Op.MATMUL and _swaps_last_two(n) and len(users.get(ins[0].id, ())) == 1:
            # (a @ b).T = b.T @ a.T: the product comes out in the layout its reader wants.
            a, bb = (b.tensor(i) for i in ins[0].inputs)
            with b.at(loc=ins[0].loc, label=ins[0].name, phase=ins[0].phase):
                return b.emit(Op.MATMUL, (b.transpose(bb), b.transpose(a))).id
        if n.op is Op.PERMUTE and ins[0].op is Op.PERMUTE:
            inner, outer = ins[0].attrs["perm"], n.attrs["perm"]
            return b.permute(b.tensor(ins[0].inputs[0]), [inner[p] for p in outer]).id
        if n.op is Op.NEG and ins[0].op is Op.NEG:
            return ins[0].inputs[0]
        if n.op in GroupOp.Binary and len(ins) == 2:
            return _identity(n, ins, values)
        return None

    return rewrite(graph, rule)


def _swaps_last_two(n) -> bool:
    perm = n.attrs["perm"]
    rank = len(perm)
    return rank >= 2 and tuple(perm) == tuple(range(rank - 2)) + (rank - 1, rank - 2)


def _identity(n, ins, values):
    a, b = ins
    va, vb = values
    same = a.type == n.type and b.type == n.type
    if not same:
        return None
    if n.op is Op.ADD and _is_zero(vb, n.dtype, negative=True):
        return a.id
    if n.op is Op.ADD and _is_zero(va, n.dtype, negative=True):
        return b.id
    if n.op is Op.SUB and _is_zero(vb, n.dtype, negative=False):
        return a.id
    if n.op is Op.MUL and vb == 1 and vb is not True:
        return a.id
    if n.op is Op.MUL and va == 1 and va is not True:
        return b.id
    if n.op is Op.DIV and vb == 1 and vb is not True:
        return a.id
    return None


def _is_zero(v, dtype: DType, negative: bool) -> bool:
    """Is `v` a zero that adds exactly (`negative`: x + v) or subtracts exactly (x - v)?  Any integer 0;
    for floats the zero of the right sign: x + -0.0 and x - +0.0 keep x, even x = -0.0."""
    if v is None or isinstance(v, bool) or v != 0:
        return False
    return not dtype.is_float or math.copysign(1.0, v) == (-1.0 if negative else 1.0)
