"""Converters for the dense layers' ops: MatMul, Gemm, Dropout.

MatMul is numpy's matmul, which is torch's (1-d operands, broadcast batch axes): the builder's
`matmul` as it is.  Gemm is `alpha * A' @ B' + beta * C` with C broadcast to [M, N].

Dropout is the identity outside training, with a mask of all true.  In training mode (opset 12's
`training_mode` input, which must be known before the run) a seeded Dropout draws its mask as onnx's
reference defines the seed's stream: numpy's `RandomState(seed).uniform(0, 1, shape) >= ratio`,
drawn at conversion (the shape is fixed), so the same seed gives the same mask as the reference
evaluator.  Without a seed the stream is a fresh one per conversion.  The ratio may be computed:
it is compared with the drawn numbers in the graph, in float64 as numpy compares them.
"""

from __future__ import annotations

import numpy as np

from dln.compiler.emit import Tensor
from dln.compiler.ir import DType, Op
from dln.runtime.onnx.convert import DTYPE_TO_NP, Context, OnnxNode, UnsupportedOnnx, converter


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
    if not all(isinstance(n, int) for n in x.shape):
        raise UnsupportedOnnx(node, f"Dropout in training mode needs a known shape, got {x.type}")
    seed = node.attr("seed")
    draws = np.random.RandomState(seed).uniform(0.0, 1.0, x.shape)
    if isinstance(ratio, Tensor):
        keep = b.compare(Op.GE, ctx.as_tensor(draws), b.cast(ratio, DType.F64))
        scale = b.div(b.const(1.0, x.dtype), b.sub(b.const(1.0, x.dtype), b.cast(ratio, x.dtype)))
    else:
        keep = ctx.as_tensor(draws >= float(np.asarray(ratio)))
        r = np.asarray(ratio, DTYPE_TO_NP[x.dtype])
        scale = b.const(float(np.asarray(1.0, r.dtype) / (np.asarray(1.0, r.dtype) - r)), x.dtype)
    y = b.mul(b.where(keep, x, b.const(0.0, x.dtype)), scale)
    return [y, keep] if wants_mask else [y]
