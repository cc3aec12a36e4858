"""Reductions and the softmax family.

`axis` is an int, a tuple of ints or omitted (all axes); `keepdim` keeps the
reduced axes with size 1.  Softmax, log-softmax and logsumexp subtract the
row maximum first, detached: the result does not depend on it, so no
gradient has to flow through the max.
"""

from __future__ import annotations

import math

from dln.compiler.builtins import AXIS, BOOL, INT, TENSOR, builtin
from dln.compiler.emit import Tensor
from dln.compiler.ir import Op


@builtin()
def sum(cx, x: TENSOR, axis: AXIS = None, keepdim: BOOL = False):
    """sum over axis (all axes when omitted)"""
    return cx.b.sum(x, axis, keepdim)


@builtin()
def mean(cx, x: TENSOR, axis: AXIS = None, keepdim: BOOL = False):
    """mean over axis (all axes when omitted)"""
    return cx.b.mean(x, axis, keepdim)


@builtin()
def max(cx, x: TENSOR, axis: AXIS = None, keepdim: BOOL = False):
    """largest value over axis; use argmax for its index"""
    return cx.b.max(x, axis, keepdim)


@builtin()
def min(cx, x: TENSOR, axis: AXIS = None, keepdim: BOOL = False):
    """smallest value over axis"""
    return cx.b.min(x, axis, keepdim)


@builtin()
def argmax(cx, x: TENSOR, axis: INT = None, keepdim: BOOL = False):
    """index of the largest value (the first one on ties), i64"""
    return cx.b.argmax(x, axis, keepdim)


@builtin()
def var(cx, x: TENSOR, axis: AXIS = None, keepdim: BOOL = False, correction: INT = 1):
    """variance; correction = 1 divides by n - 1, as torch.var"""
    b = cx.b
    x = cx.b.to_float(x)
    axes = b.axes(x, axis)
    count = b.reduced_count(x, axes)
    centered = b.sub(x, b.mean(x, axes, keepdim=True))
    total = b.sum(b.mul(centered, centered), axes, keepdim)
    return b.div(total, b.dim_value(count - correction, x.dtype))


@builtin()
def std(cx, x: TENSOR, axis: AXIS = None, keepdim: BOOL = False, correction: INT = 1):
    """standard deviation; correction = 1 divides by n - 1, as torch.std"""
    return cx.b.sqrt(var(cx, x, axis, keepdim, correction))


def _shifted(cx, x: Tensor, axis) -> tuple[Tensor, Tensor]:
    """x minus its (detached) maximum over axis, and that maximum with keepdim."""
    b = cx.b
    m = b.detach(b.max(x, axis, keepdim=True))
    return b.sub(x, m), m


@builtin()
def logsumexp(cx, x: TENSOR, axis: AXIS = None, keepdim: BOOL = False):
    """log(sum(exp(x))) over axis, computed stably"""
    b = cx.b
    x = cx.b.to_float(x)
    # torch's shift: the row maximum, or 0 where it is infinite, so that a row of -inf gives -inf
    # (not -inf - -inf = nan) and a row holding +inf gives +inf.
    m = b.max(x, axis, keepdim=True)
    m = b.detach(b.where(b.compare(Op.EQ, b.unary(Op.ABS, m), math.inf), 0.0, m))
    out = b.add(b.log(b.sum(b.exp(b.sub(x, m)), axis, keepdim=True)), m)
    if not keepdim:
        out = b.reshape(out, tuple(d for i, d in enumerate(out.shape) if i not in b.axes(x, axis)))
    return out


@builtin()
def softmax(cx, x: TENSOR, axis: INT = -1):
    """exp(x) / sum(exp(x)) along axis (the last by default)"""
    b = cx.b
    x = cx.b.to_float(x)
    shifted, _ = _shifted(cx, x, axis)
    e = b.exp(shifted)
    return b.div(e, b.sum(e, axis, keepdim=True))


@builtin()
def log_softmax(cx, x: TENSOR, axis: INT = -1):
    """x - logsumexp(x) along axis (the last by default)"""
    return log_softmax_of(cx, cx.b.to_float(x), axis)


def log_softmax_of(cx, x: Tensor, axis: int) -> Tensor:
    b = cx.b
    shifted, _ = _shifted(cx, x, axis)
    return b.sub(shifted, b.log(b.sum(b.exp(shifted), axis, keepdim=True)))
