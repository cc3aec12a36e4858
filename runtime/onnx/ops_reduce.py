"""Converters for ONNX's reductions (Reduce*, ArgMax, ArgMin), the softmax family (Softmax,
LogSoftmax, Hardmax) and the two classification losses (NegativeLogLikelihoodLoss,
SoftmaxCrossEntropyLoss).

Every Reduce* op is an elementwise step before (|x|, x^2), one of the IR's reductions (sum, max,
min; a product as a tree of multiplications: the IR has none) and a step after (sqrt, log).  ONNX
moved `axes` from an attribute to an optional input (at opset 18; ReduceSum at 13); no axes
reduce every axis, unless `noop_with_empty_axes`, where the op reduces none and only the steps
before and after remain (ReduceL2 of x is then |x|).  A reduction over an empty axis is the op's
identity (0 for a sum, 1 for a product, -inf for a max), which the IR's reductions, like NumPy's,
do not all define: those are constants.

Before opset 13 the softmax family works on the input seen as 2-D at `axis` ([prod of the axes
before, prod of the rest], default axis 1); from 13 on one axis, default the last.  Softmax and
LogSoftmax are dln's built-ins; the losses are written here because ONNX's differ from dln's
`cross_entropy`/`nll` (classes on axis 1, class weights, an ignored index).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from dln.compiler.builtins import reductions
from dln.compiler.emit import GraphBuilder, Tensor
from dln.compiler.ir import DType, Op
from dln.compiler.symbolic import numel
from dln.runtime.onnx.convert import Context, OnnxNode, UnsupportedOnnx, converter
from dln.runtime.onnx.ops_shape import axes_of, axis_of, gather_along, ints


@dataclass
class Builtins:
    """What dln's built-in softmax and log-softmax read of a call: the builder (they use nothing else)."""

    b: GraphBuilder


# ---- Reduce* -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Reduction:
    kind: str                                          # sum | max | min | prod | mean | logsumexp
    before: Callable[[GraphBuilder, Tensor], Tensor] | None = None
    after: Callable[[GraphBuilder, Tensor], Tensor] | None = None


REDUCTIONS = {
    "ReduceSum": Reduction("sum"),
    "ReduceSumSquare": Reduction("sum", before=lambda b, x: b.mul(x, x)),
    "ReduceL1": Reduction("sum", before=lambda b, x: b.unary(Op.ABS, x)),
    "ReduceL2": Reduction("sum", before=lambda b, x: b.mul(x, x), after=lambda b, x: b.sqrt(x)),
    "ReduceLogSum": Reduction("sum", after=lambda b, x: b.log(x)),
    "ReduceLogSumExp": Reduction("logsumexp"),
    "ReduceMean": Reduction("mean"),
    "ReduceMax": Reduction("max"),
    "ReduceMin": Reduction("min"),
    "ReduceProd": Reduction("prod"),
}


def reduce_axes(ctx: Context, node: OnnxNode, rank: int) -> tuple[int, ...]:
    """The axes a Reduce* node reduces: () for none (noop_with_empty_axes)."""
    since = 13 if node.op_type == "ReduceSum" else 18
    if ctx.opset >= since:
        given = ints(ctx.static(node, 1, "the axes")) if ctx.has(node, 1) else []
    else:
        given = [int(a) for a in node.attr("axes", [])]
    if not given:
        return () if node.attr("noop_with_empty_axes", 0) else tuple(range(rank))
    return tuple(sorted(axes_of(node, given, rank)))


@converter(*REDUCTIONS)
def reduce(ctx: Context, node: OnnxNode) -> list:
    b = ctx.builder
    x = ctx.tensor(node, 0)
    spec = REDUCTIONS[node.op_type]
    axes = reduce_axes(ctx, node, x.rank)
    keepdim = bool(node.attr("keepdims", 1))
    if spec.before is not None:
        x = b.cast(spec.before(b, x), x.dtype)
    if not axes or x.rank == 0:
        out = x
    elif numel(tuple(x.shape[a] for a in axes)) == 0 or numel(x.shape) == 0:
        out = b.const(_identity(spec.kind, x.dtype), x.dtype, _reduced(x.shape, axes, keepdim))
    else:
        out = _reduce(b, spec.kind, x, axes, keepdim)
    if spec.after is not None:
        out = b.cast(spec.after(b, out), out.dtype)
    return [out]


def _reduced(shape, axes, keepdim: bool) -> tuple:
    return tuple(1 if i in axes else d for i, d in enumerate(shape) if keepdim or i not in axes)


def _identity(kind: str, dtype: DType):
    """What a reduction of nothing is (ONNX follows NumPy; a mean of nothing is 0 / 0)."""
    if kind in ("sum", "prod"):
        return int(kind == "prod")
    if kind in ("logsumexp", "mean"):
        return -math.inf if kind == "logsumexp" else math.nan
    low = kind == "max"   # the identity of a max is the lowest value
    if dtype is DType.BOOL:
        return not low
    if dtype.is_int:
        info = np.iinfo(np.int32 if dtype is DType.I32 else np.int64)
        return int(info.min if low else info.max)
    return -math.inf if low else math.inf


def _reduce(b: GraphBuilder, kind: str, x: Tensor, axes: tuple[int, ...], keepdim: bool) -> Tensor:
    if kind == "sum":
        return b.cast(b.sum(x, axes, keepdim), x.dtype)
    if kind == "mean":
        return b.cast(b.mean(x, axes, keepdim), x.dtype)
    if kind == "max":
        return b.max(x, axes, keepdim)
    if kind == "min":
        return b.min(x, axes, keepdim)
    if kind == "logsumexp":
        return reductions.logsumexp(Builtins(b), x, axes, keepdim)
    return _product(b, x, axes, keepdim)


def _product(b: GraphBuilder, x: Tensor, axes: tuple[int, ...], keepdim: bool) -> Tensor:
    """The product over `axes` as a tree: the reduced values moved to one last axis, its halves
    multiplied until one value is left (an odd length padded with a 1)."""
    shape = x.shape
    kept = [i for i in range(x.rank) if i not in axes]
    x = b.reshape(b.permute(x, kept + list(axes)),
                  tuple(shape[i] for i in kept) + (numel(tuple(shape[a] for a in axes)),))
    while x.shape[-1] > 1:
        n = x.shape[-1]
        if n % 2:
            x = b.pad(x, [(0, 0)] * (x.rank - 1) + [(0, 1)], 1.0 if x.dtype.is_float else 1)
            n += 1
        x = b.mul(b.slice_axis(x, x.rank - 1, 0, n // 2), b.slice_axis(x, x.rank - 1, n // 2, n))
    return b.reshape(x, _reduced(shape, axes, keepdim))


# ---- ArgMax / ArgMin -----------------------------------------------------------------------------------

@converter("ArgMax", "ArgMin")
def arg_extreme(ctx: Context, node: OnnxNode) -> list:
    """The first index of the largest (smallest) value along an axis, or the last one with
    select_last_index: the extreme found, then the least (greatest) position holding it."""
    b = ctx.builder
    x = ctx.tensor(node, 0)
    axis = axis_of(node, node.attr("axis", 0), x.rank)
    keepdim = bool(node.attr("keepdims", 1))
    last = bool(node.attr("select_last_index", 0))
    if node.op_type == "ArgMax" and not last:
        return [b.argmax(x, axis, keepdim)]
    extreme = (b.max if node.op_type == "ArgMax" else b.min)(x, axis, keepdim=True)
    hit = b.compare(Op.EQ, x, b.broadcast_to(extreme, x.shape))
    if last:
        return [b.max(b.where(hit, positions(b, x, axis), -1), axis, keepdim)]
    return [b.min(b.where(hit, positions(b, x, axis), b.dim_value(x.shape[axis], DType.I64)), axis, keepdim)]


def positions(b: GraphBuilder, x: Tensor, axis: int) -> Tensor:
    """Each element's position along `axis` (i64, x's shape)."""
    n = x.shape[axis]
    return b.broadcast_to(b.reshape(b.iota(n), tuple(n if i == axis else 1 for i in range(x.rank))), x.shape)


# ---- the softmax family ---------------------------------------------------------------------------------

def _along_axis(ctx: Context, node: OnnxNode, fn: Callable[[Tensor, int], Tensor]) -> list:
    """fn(x, axis) on one axis (opset 13 on), or on the input seen as 2-D at `axis` (before)."""
    b = ctx.builder
    x = ctx.tensor(node, 0)
    if ctx.opset >= 13:
        return [fn(x, axis_of(node, node.attr("axis", -1), x.rank))]
    axis = node.attr("axis", 1)
    axis = axis + x.rank if axis < 0 else axis
    flat = b.reshape(x, (numel(x.shape[:axis]), numel(x.shape[axis:])))
    return [b.reshape(fn(flat, 1), x.shape)]


@converter("Softmax")
def softmax(ctx: Context, node: OnnxNode) -> list:
    return _along_axis(ctx, node, lambda x, axis: reductions.softmax(Builtins(ctx.builder), x, axis))


@converter("LogSoftmax")
def log_softmax(ctx: Context, node: OnnxNode) -> list:
    return _along_axis(ctx, node, lambda x, axis: reductions.log_softmax(Builtins(ctx.builder), x, axis))


@converter("Hardmax")
def hardmax(ctx: Context, node: OnnxNode) -> list:
    """1 at the first largest value along the axis, 0 elsewhere."""
    b = ctx.builder

    def one_hot(x: Tensor, axis: int) -> Tensor:
        first = b.broadcast_to(b.argmax(x, axis, keepdim=True), x.shape)
        return b.cast(b.compare(Op.EQ, first, positions(b, x, axis)), x.dtype)
    return _along_axis(ctx, node, one_hot)


# ---- losses ----------------------------------------------------------------------------------------------

def nll_loss(ctx: Context, node: OnnxNode, logp: Tensor, target: Tensor, weight: Tensor | None) -> Tensor:
    """ONNX's NegativeLogLikelihoodLoss of log-probabilities [N, C, d1, ..., dk] and classes
    [N, d1, ..., dk]: -logp[n, target, d...] * weight[target], 0 where the target is the ignored
    index; a mean divides by the weights of the targets counted."""
    b = ctx.builder
    reduction = node.attr("reduction", "mean")
    if reduction not in ("none", "sum", "mean"):
        raise UnsupportedOnnx(node, f"reduction {reduction!r}")
    if logp.rank < 2 or target.shape != (logp.shape[0],) + logp.shape[2:]:
        raise UnsupportedOnnx(node, f"classes {list(target.shape)} for an input {list(logp.shape)}: the input's "
                                    "shape without axis 1 expected")
    ignore = node.attr("ignore_index")
    counted = b.compare(Op.NE, target, b.const(ignore, target.dtype, ())) if ignore is not None else None
    if counted is not None:   # an ignored target may be no class at all: read class 0 there
        target = b.where(counted, target, b.const(0, target.dtype, ()))
    picked = b.gather(logp, 1, b.unsqueeze(target, 1))
    loss = b.neg(b.reshape(picked, target.shape))
    scale = gather_along(b, b.cast(weight, logp.dtype), 0, target) if weight is not None else None
    if scale is not None:
        loss = b.mul(loss, scale)
    if counted is not None:   # where, not a product: class 0's log-probability may be -inf
        zero = b.const(0, logp.dtype, ())
        loss = b.where(counted, loss, zero)
        scale = b.cast(counted, logp.dtype) if scale is None else b.where(counted, scale, zero)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return b.sum(loss)
    if scale is None:
        return b.mean(loss)
    return b.div(b.sum(loss), b.sum(scale))


@converter("NegativeLogLikelihoodLoss")
def negative_log_likelihood_loss(ctx: Context, node: OnnxNode) -> list:
    weight = ctx.tensor(node, 2) if ctx.has(node, 2) else None
    return [nll_loss(ctx, node, ctx.tensor(node, 0), ctx.tensor(node, 1), weight)]


@converter("SoftmaxCrossEntropyLoss")
def softmax_cross_entropy_loss(ctx: Context, node: OnnxNode) -> list:
    """The NLL of log-softmax over axis 1; the log-probabilities are the optional second output."""
    scores = ctx.tensor(node, 0)
    logp = reductions.log_softmax(Builtins(ctx.builder), scores, 1)
    weight = ctx.tensor(node, 2) if ctx.has(node, 2) else None
    return [nll_loss(ctx, node, logp, ctx.tensor(node, 1), weight), logp]
