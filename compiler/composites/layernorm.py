"""Layer normalization over the last axis, forward (`layernorm`) and backward (`layernorm_vjp`).

    layernorm(x [..., N] [, weight [N], bias [N]]; eps, affine) -> (y [..., N], mean [...], rstd [...])

    mean = mean(x);  rstd = 1 / sqrt(mean((x - mean)^2) + eps)
    y = (x - mean) * rstd [* weight + bias]

The row statistics are results of their own, as Apex's and Liger's kernels
keep them: the backward reads them instead of recomputing two reductions per
row, and a kernel stores them beside y for two floats a row.

    layernorm_vjp(x, [weight,] mean, rstd, dy; affine) -> (dx [, dweight, dbias])

    xhat = (x - mean) * rstd;  g = dy [* weight]
    dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
    dweight = sum over rows of dy * xhat;  dbias = sum over rows of dy

dx is row-local; the weight and bias gradients reduce across rows, which a
kernel does in two stages (kernels/layernorm.py).
"""

from __future__ import annotations

from dln.compiler.composites import composite, emit
from dln.compiler.ir import Op, TensorType
from dln.compiler.shapes import ShapeError


def _check(cx, x: TensorType, params: list[TensorType]) -> None:
    if x.rank == 0 or not x.dtype.is_float:
        raise ShapeError("E0201", f"layernorm takes a float tensor of rank >= 1, got {x}")
    for p in params:
        if p.rank != 1 or p.dtype is not x.dtype:
            raise ShapeError("E0201", f"layernorm: a weight or bias {p} for {x}")
        cx.unify(p.shape[0], x.shape[-1], "E0201", f"layernorm: a weight or bias {p} for {x}")


def _infer(cx, types, attrs):
    x, params = types[0], list(types[1:])
    if len(params) != (2 if attrs["affine"] else 0):
        raise ShapeError("E0201", "layernorm takes a weight and a bias exactly when affine")
    _check(cx, x, params)
    rows = TensorType(x.dtype, x.shape[:-1])
    return x, rows, rows


def _infer_vjp(cx, types, attrs):
    affine = attrs["affine"]
    if len(types) != 4 + affine:
        raise ShapeError("E0201", "layernorm_vjp takes x, [weight,] mean, rstd and dy")
    x = types[0]
    _check(cx, x, list(types[1:1 + affine]))
    mean, rstd, dy = types[1 + affine:]
    if dy != x or mean != TensorType(x.dtype, x.shape[:-1]) or rstd != mean:
        raise ShapeError("E0201", f"layernorm_vjp: statistics {mean}, {rstd} and dy {dy} for x {x}")
    return (x, *types[1:2], *types[1:2]) if affine else x


def _row(b, stat, x):
    """A per-row statistic [...] broadcast back over x [..., N]."""
    return b.broadcast_to(b.unsqueeze(stat, -1), x.shape)


def _vjp(b, n, g, xs, out):
    d_y = g[0]   # the statistics are read only by this rule, never differentiated
    if d_y is None:
        return [None] * len(xs)
    _, mean, rstd = b.results(out)
    return emit(b, "layernorm_vjp", (xs[0], *xs[1:2], mean, rstd, d_y), affine=n.attrs["affine"])


@composite("layernorm", "layer normalization over the last axis, with its row mean and 1/std", _infer, _vjp)
def layernorm(b, xs, attrs):
    x = xs[0]
    mean = b.mean(x, -1, keepdim=True)
    centered = b.sub(x, mean)
    variance = b.mean(b.mul(centered, centered), -1, keepdim=True)
    rstd = b.unary(Op.RSQRT, b.add(variance, attrs["eps"]))
    y = b.mul(centered, rstd)
    if attrs["affine"]:
        weight, bias = xs[1:]
        y = b.add(b.mul(y, weight), bias)
    return [y, b.reshape(mean, x.shape[:-1]), b.reshape(rstd, x.shape[:-1])]


@composite("layernorm_vjp", "layernorm's backward: dx, and the weight and bias gradients summed over rows",
           _infer_vjp)
def layernorm_vjp(b, xs, attrs):
    x, dy = xs[0], xs[-1]
    mean, rstd = xs[-3:-1]
    xhat = b.mul(b.sub(x, _row(b, mean, x)), _row(b, rstd, x))
    g = b.mul(dy, b.broadcast_to(xs[1], x.shape)) if attrs["affine"] else dy
    dot = b.mean(b.mul(g, xhat), -1, keepdim=True)
    inner = b.sub(b.sub(g, b.mean(g, -1, keepdim=True)), b.mul(xhat, dot))
    dx = b.mul(_row(b, rstd, x), inner)
    if not attrs["affine"]:
        return [dx]
    rows = tuple(range(x.rank - 1))
    return [dx, b.sum(b.mul(dy, xhat), rows), b.sum(dy, rows)]


def layer_norm(b, x, weight=None, bias=None, *, eps: float):
    """The normalized x of a `layernorm` node (for the built-in); weight and bias both or neither."""
    affine = weight is not None
    y, _, _ = emit(b, "layernorm", (x, weight, bias) if affine else (x,), eps=float(eps), affine=affine)
    return y
