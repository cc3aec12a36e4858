"""Converters for the normalizations: BatchNormalization, LayerNormalization, InstanceNormalization,
GroupNormalization, RMSNormalization, LpNormalization, MeanVarianceNormalization.

Layer, instance and group normalization standardize contiguous runs of elements: x is reshaped to
[rows, elements of a row] and normalized by dln's `layernorm` composite (without its affine part),
whose row mean and 1/std are LayerNormalization's Mean and InvStdDev outputs; the scale and bias
then broadcast over the result in x's own shape.  The statistics are computed in `stash_type`
(float32 by default) and the normalized values cast back to x's type before the scale, as the ONNX
functions do.  The others are a few primitives each, written as the ONNX definitions read.
"""

from __future__ import annotations

from dln.compiler.composites import emit as emit_composite
from dln.compiler.emit import GraphBuilder, Tensor
from dln.compiler.ir import Op
from dln.compiler.symbolic import numel
from dln.runtime.onnx.convert import Context, OnnxNode, UnsupportedOnnx, converter, onnx_dtype


def _axis(node: OnnxNode, x: Tensor, default: int) -> int:
    axis = int(node.attr("axis", default))
    if not -x.rank <= axis < max(x.rank, 1):
        raise UnsupportedOnnx(node, f"axis {axis} for {x.type}")
    return axis % x.rank if x.rank else 0


def _stash(ctx: Context, node: OnnxNode, x: Tensor) -> Tensor:
    """x in the type the statistics are computed in: `stash_type` (float32 by default) where the op
    has it, x's own type where it does not (GroupNormalization before opset 21)."""
    if node.op_type == "GroupNormalization" and ctx.opset < 21:
        return x
    return ctx.builder.cast(x, onnx_dtype(int(node.attr("stash_type", 1)), node))


def _standardize_rows(b: GraphBuilder, x: Tensor, rows, cols, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """x standardized over runs of `cols` elements: (normalized x in x's shape, mean [rows], 1/std
    [rows])."""
    flat = b.reshape(x, (rows, cols))
    y, mean, rstd = emit_composite(b, "layernorm", (flat,), eps=float(eps), affine=False)
    return b.reshape(y, x.shape), mean, rstd


def _channels(b: GraphBuilder, v: Tensor, x: Tensor) -> Tensor:
    """A per-channel vector [C] shaped to broadcast over x [N, C, ...]."""
    return b.reshape(b.cast(v, x.dtype), (x.shape[1],) + (1,) * (x.rank - 2))


@converter("LayerNormalization")
def layer_normalization(ctx: Context, node: OnnxNode) -> list:
    b = ctx.builder
    x = ctx.tensor(node, 0)
    axis = _axis(node, x, -1)
    y, mean, rstd = _standardize_rows(b, _stash(ctx, node, x), numel(x.shape[:axis]), numel(x.shape[axis:]),
                                      node.attr("epsilon", 1e-5))
    y = b.mul(b.cast(y, x.dtype), b.cast(ctx.tensor(node, 1), x.dtype))
    if ctx.has(node, 2):
        y = b.add(y, b.cast(ctx.tensor(node, 2), x.dtype))
    stats = x.shape[:axis] + (1,) * (x.rank - axis)
    return [y, b.reshape(mean, stats), b.reshape(rstd, stats)]


@converter("InstanceNormalization")
def instance_normalization(ctx: Context, node: OnnxNode) -> list:
    b = ctx.builder
    x = ctx.tensor(node, 0)
    y, _, _ = _standardize_rows(b, b.to_float(x), x.shape[0] * x.shape[1], numel(x.shape[2:]),
                                node.attr("epsilon", 1e-5))
    y = b.cast(y, x.dtype)
    return [b.add(b.mul(y, _channels(b, ctx.tensor(node, 1), x)), _channels(b, ctx.tensor(node, 2), x))]


@converter("GroupNormalization")
def group_normalization(ctx: Context, node: OnnxNode) -> list:
    """Opset 18 scales and shifts each group (scale and bias [num_groups]), opset 21 each channel
    ([C]); a vector of either length is read as what its length says."""
    b = ctx.builder
    x = ctx.tensor(node, 0)
    groups = int(node.attr("num_groups"))
    channels = x.shape[1]
    if not isinstance(channels, int) or channels % groups:
        raise UnsupportedOnnx(node, f"{channels} channels in {groups} groups")
    y, _, _ = _standardize_rows(b, _stash(ctx, node, x), x.shape[0] * groups,
                                channels // groups * numel(x.shape[2:]), node.attr("epsilon", 1e-5))
    y = b.cast(y, x.dtype)
    scale, bias = ctx.tensor(node, 1), ctx.tensor(node, 2)
    if scale.shape != (channels,):
        scale, bias = (_per_channel(b, v, groups, channels) for v in (scale, bias))
    return [b.add(b.mul(y, _channels(b, scale, x)), _channels(b, bias, x))]


def _per_channel(b: GraphBuilder, v: Tensor, groups: int, channels: int) -> Tensor:
    """A per-group vector [G] repeated to one value per channel [C]."""
    v = b.reshape(v, (groups, 1))
    return b.reshape(b.broadcast_to(v, (groups, channels // groups)), (channels,))


@converter("RMSNormalization")
def rms_normalization(ctx: Context, node: OnnxNode) -> list:
    b = ctx.builder
    x = ctx.tensor(node, 0)
    axis = _axis(node, x, -1)
    s = _stash(ctx, node, x)
    mean_square = b.mean(b.mul(s, s), tuple(range(axis, x.rank)), keepdim=True)
    rstd = b.unary(Op.RSQRT, b.add(mean_square, b.const(float(node.attr("epsilon", 1e-5)), s.dtype)))
    y = b.cast(b.mul(s, rstd), x.dtype)
    return [b.mul(y, b.cast(ctx.tensor(node, 1), x.dtype))]


@converter("BatchNormalization")
def batch_normalization(ctx: Context, node: OnnxNode) -> list:
    """Inference: the running statistics given.  In training (opset 14's training_mode 1; before opset
    14, asking for the running statistics as outputs): the batch's mean and biased variance, and the
    running statistics updated by `momentum` (then, before 14, the batch's statistics) as outputs."""
    b = ctx.builder
    x, scale, bias, mean, var = (ctx.tensor(node, i) for i in range(5))
    eps = b.const(float(node.attr("epsilon", 1e-5)), x.dtype)
    if ctx.opset >= 14:
        training = bool(node.attr("training_mode", 0))
    else:
        training = any(node.outputs[1:])
    if not training:
        y = b.mul(b.sub(x, _channels(b, mean, x)), b.unary(Op.RSQRT, b.add(_channels(b, var, x), eps)))
        return [b.add(b.mul(y, _channels(b, scale, x)), _channels(b, bias, x))]
    axes = (0,) + tuple(range(2, x.rank))
    batch_mean = b.mean(x, axes, keepdim=True)
    centered = b.sub(x, batch_mean)
    batch_var = b.mean(b.mul(centered, centered), axes, keepdim=True)
    y = b.mul(centered, b.unary(Op.RSQRT, b.add(batch_var, eps)))
    y = b.add(b.mul(y, _channels(b, scale, x)), _channels(b, bias, x))
    momentum = float(node.attr("momentum", 0.9))
    channels = (x.shape[1],)
    batch_mean, batch_var = b.reshape(batch_mean, channels), b.reshape(batch_var, channels)

    def running(old: Tensor, batch: Tensor) -> Tensor:
        return b.add(b.mul(b.cast(old, x.dtype), momentum), b.mul(batch, 1.0 - momentum))
    outs = [y, running(mean, batch_mean), running(var, batch_var)]
    return outs if ctx.opset >= 14 else outs + [batch_mean, batch_var]


@converter("LpNormalization")
def lp_normalization(ctx: Context, node: OnnxNode) -> list:
    b = ctx.builder
    x = ctx.tensor(node, 0)
    axis = _axis(node, x, -1)
    p = int(node.attr("p", 2))
    if p == 1:
        norm = b.sum(b.unary(Op.ABS, x), axis, keepdim=True)
    elif p == 2:
        norm = b.sqrt(b.sum(b.mul(x, x), axis, keepdim=True))
    else:
        raise UnsupportedOnnx(node, f"LpNormalization with p = {p} (ONNX defines 1 and 2)")
    # A zero norm gives zeros (0 / 0 = 0, as the ONNX definition says), not NaN.
    zero = b.compare(Op.EQ, norm, b.const(0.0, norm.dtype))
    return [b.where(b.broadcast_to(zero, x.shape), b.const(0.0, x.dtype), b.div(x, b.where(zero, 1.0, norm)))]


@converter("MeanVarianceNormalization")
def mean_variance_normalization(ctx: Context, node: OnnxNode) -> list:
    """(x - E[x]) / (sqrt(E[x^2] - E[x]^2) + 1e-9), the moments over `axes`, as the ONNX function."""
    b = ctx.builder
    x = ctx.tensor(node, 0)
    axes = tuple(int(a) for a in node.attr("axes", [0, 2, 3]))
    mean = b.mean(x, axes, keepdim=True)
    variance = b.sub(b.mean(b.mul(x, x), axes, keepdim=True), b.mul(mean, mean))
    return [b.div(b.sub(x, mean), b.add(b.sqrt(variance), 1e-9))]
