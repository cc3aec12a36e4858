"""Converters for the dense layers' ops: MatMul, Gemm, Dropout.

MatMul is numpy's matmul, which is torch's (1-d operands, broadcast batch axes): the builder's
`matmul` as it is.  Gemm is `alpha * A' @ B' + beta * C` with C broadcast to [M, N].

Dropout is the identity outside training, with a mask of all true.  In training mode (opset 12's
`training_mode` input, which must be known before the run) it draws its mask from dln's own
counter-based stream (Philox, as `dropout` in a .dln model), keyed by the `seed` attribute (0 when
there is none): the same seed gives the same mask on every run.  ONNX leaves a seeded draw's values
to the implementation; the suite's expected masks are numpy's `RandomState(seed)`, which dln does
not imitate (those cases are expected failures).  The ratio may be computed.
"""

from __future__ import annotations

import numpy as np

from dln.compiler.emit import Tensor
from dln.compiler.ir import DType, Op
from dln.runtime.onnx.convert import Context, OnnxNode, UnsupportedOnnx, converter


@converter("MatMul")
def matmul(ctx: Context, node: OnnxNode) -> list:
    return [ctx.builder.matmul(ctx.tensor(node, 0), ctx.tensor(node, 1))]


@converter("Gemm")
def gemm(ctx: Context, node: OnnxNode) -> list:
    b = ctx.builder
    a, w = ctx.tensor(node, 0), ctx.tensor(node, 1)
    if a.rank != 2 or w.rank != 2:
        raise UnsupportedOnnx(node, f"Gemm takes matrices, got {a.type} and {w.type}")
    if node.attr("transA", 0):
        a = b.transpose(a)
    if node.attr("transB", 0):
        w = b.transpose(w)
    y = b.matmul(a, w)
    alpha, beta = float(node.attr("alpha", 1.0)), float(node.attr("beta", 1.0))
    if alpha != 1.0:
        y = b.mul(y, b.const(alpha, y.dtype))
    if ctx.has(node, 2):
        c = b.cast(ctx.tensor(node, 2), y.dtype)
        if beta != 1.0:
            c = b.mul(c, b.const(beta, y.dtype))
        y = b.add(y, c)
    return [y]


@converter("Dropout")
def dropout(ctx: Context, node: OnnxNode) -> list:
    b = ctx.builder
    x = ctx.tensor(node, 0)
    if ctx.opset < 12:
        training, ratio = False, node.attr("ratio", 0.5)
    else:
        mode = ctx.static(node, 2, "the training mode")
        training = bool(mode) if mode is not None else False
        ratio = ctx.static(node, 1)
        if ratio is None:
            ratio = ctx.tensor(node, 1) if ctx.has(node, 1) else 0.5
    wants_mask = len(node.outputs) > 1 and node.outputs[1] != ""
    if not training or (not isinstance(ratio, Tensor) and float(np.asarray(ratio)) == 0.0):
        if not wants_mask:
            return [x]
        mask = b.const(True, DType.BOOL, x.shape)
        return [x, mask if ctx.opset >= 10 else b.cast(mask, x.dtype)]
    seed = b.const(int(node.attr("seed", 0)), DType.I64)
    draws = b.rand(x.shape, seed, b.const(0, DType.I64), 0, DType.F32, "dropout")
    rate = b.cast(ratio, DType.F32) if isinstance(ratio, Tensor) else float(np.asarray(ratio))
    keep = b.compare(Op.GE, draws, rate)
    scale = b.div(b.const(1.0, x.dtype), b.sub(b.const(1.0, x.dtype), b.cast(ratio, x.dtype)
                                               if isinstance(ratio, Tensor) else float(np.asarray(ratio))))
    y = b.mul(b.where(keep, x, b.const(0.0, x.dtype)), scale)
    return [y, keep] if wants_mask else [y]
