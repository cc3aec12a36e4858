"""Converters for convolutions and poolings: Conv, ConvTranspose, AveragePool, MaxPool, LpPool,
GlobalAveragePool, GlobalMaxPool, over any number of spatial axes.

Conv and ConvTranspose are dln's `conv` and `conv_transpose` primitives, which take (lo, hi) padding
per axis, so ONNX's asymmetric pads and `auto_pad` need no separate pad.  A ConvTranspose longer than
its full result (output_padding, an `output_shape` beyond it) has zeros padded on instead.

A pooling gathers every window of the padded input onto one new last axis, one strided slice per
kernel tap (`[N, C, *O, prod(kernel)]`), and reduces it (dln's 2-d pooling built-ins gather theirs
alike, over a stride split instead of strided slices).
Windows follow ONNX's rules: `auto_pad`, explicit pads, `ceil_mode` (the last window must start
inside the input or its left padding; what it reads past the right padding does not count).  The
average's divisor is a constant known at conversion: the taps of each window inside the input
(inside the padding too, with `count_include_pad`).  MaxPool's Indices output is the position of
each window's first maximum in the flattened input (row-major, or column-major over the spatial axes
with `storage_order` 1), read from the same windows taken of the positions.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from dln.compiler.emit import GraphBuilder, Tensor
from dln.compiler.ir import DType, Op
from dln.compiler.symbolic import numel
from dln.runtime.onnx.convert import DTYPE_TO_NP, Context, OnnxNode, UnsupportedOnnx, converter

_INT_MIN = {DType.I32: -2 ** 31, DType.I64: -2 ** 63}


# ---- geometry ------------------------------------------------------------------------------------------

def _per_axis(node: OnnxNode, key: str, rank: int, default: int) -> tuple[int, ...]:
    values = node.attr(key)
    if values is None:
        return (default,) * rank
    if len(values) != rank:
        raise UnsupportedOnnx(node, f"{key} {list(values)} for {rank} spatial axes")
    return tuple(int(v) for v in values)


def _sizes(node: OnnxNode, x: Tensor) -> tuple[int, ...]:
    sizes = x.shape[2:]
    if not all(isinstance(n, int) for n in sizes):
        raise UnsupportedOnnx(node, f"{node.op_type} needs known spatial sizes, got {x.type}")
    return tuple(sizes)


def _pads(node: OnnxNode, sizes, kernel, strides, dilations) -> list[tuple[int, int]]:
    """(lo, hi) per spatial axis from `auto_pad` or `pads`.  SAME pads to ceil(size / stride) outputs, the
    odd one after (SAME_UPPER) or before (SAME_LOWER)."""
    rank = len(sizes)
    auto = node.attr("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        out = []
        for n, k, s, d in zip(sizes, kernel, strides, dilations):
            total = max(0, (-(-n // s) - 1) * s + d * (k - 1) + 1 - n)
            small, large = total // 2, total - total // 2
            out.append((small, large) if auto == "SAME_UPPER" else (large, small))
        return out
    if auto == "VALID":
        return [(0, 0)] * rank
    if auto != "NOTSET":
        raise UnsupportedOnnx(node, f"auto_pad {auto!r}")
    pads = _per_axis(node, "pads", 2 * rank, 0)
    return list(zip(pads[:rank], pads[rank:]))


def _pool_size(n: int, k: int, s: int, d: int, pad: tuple[int, int], ceil_mode: bool) -> int:
    """The number of windows on an axis; in ceil mode the last must start inside the input or its left
    padding."""
    span = d * (k - 1) + 1
    reach = n + pad[0] + pad[1] - span
    out = (-(-reach // s) if ceil_mode else reach // s) + 1
    if ceil_mode and (out - 1) * s >= n + pad[0]:
        out -= 1
    return out


# ---- convolutions ----------------------------------------------------------------------------------------

@converter("Conv")
def conv(ctx: Context, node: OnnxNode) -> list:
    b = ctx.builder
    x, w = ctx.tensor(node, 0), ctx.tensor(node, 1)
    rank = w.rank - 2
    kernel = tuple(w.shape[2:])
    strides = _per_axis(node, "strides", rank, 1)
    dilations = _per_axis(node, "dilations", rank, 1)
    pads = _pads(node, _sizes(node, x), kernel, strides, dilations)
    y = b.emit(Op.CONV, (x, b.cast(w, x.dtype)), {"stride": strides, "padding": tuple(pads),
                                                   "dilation": dilations, "groups": int(node.attr("group", 1))})
    return [_bias(ctx, node, y)]


def _bias(ctx: Context, node: OnnxNode, y: Tensor) -> Tensor:
    if not ctx.has(node, 2):
        return y
    b = ctx.builder
    return b.add(y, b.reshape(b.cast(ctx.tensor(node, 2), y.dtype), (y.shape[1],) + (1,) * (y.rank - 2)))


@converter("ConvTranspose")
def conv_transpose(ctx: Context, node: OnnxNode) -> list:
    """Rows lo .. lo + length of the full transposed convolution (zeros past either end), as onnx's
    reference: the length is `output_shape` when given, else the full length with output_padding less
    the pads; lo is the start pad given, or with SAME and no pads, the one that splits the total
    padding as SAME says (the length then size * stride when no output_shape is given)."""
    b = ctx.builder
    x, w = ctx.tensor(node, 0), ctx.tensor(node, 1)
    rank = w.rank - 2
    sizes, kernel = _sizes(node, x), tuple(w.shape[2:])
    strides = _per_axis(node, "strides", rank, 1)
    dilations = _per_axis(node, "dilations", rank, 1)
    extra = _per_axis(node, "output_padding", rank, 0)
    shape = node.attr("output_shape")
    shape = tuple(int(v) for v in shape)[-rank:] if shape is not None else None
    full = [s * (n - 1) + d * (k - 1) + 1 for n, k, s, d in zip(sizes, kernel, strides, dilations)]
    auto = node.attr("auto_pad", "NOTSET")
    if auto not in ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"):
        raise UnsupportedOnnx(node, f"auto_pad {auto!r}")
    if auto in ("SAME_UPPER", "SAME_LOWER") and node.attr("pads") is None:
        length = shape or tuple(n * s for n, s in zip(sizes, strides))
        starts = []
        for f, e, t in zip(full, extra, length):
            total = f + e - t
            starts.append(total // 2 if auto == "SAME_UPPER" else total - total // 2)
    else:
        given = _per_axis(node, "pads", 2 * rank, 0) if auto != "VALID" else (0,) * (2 * rank)
        starts = list(given[:rank])
        length = shape or tuple(f + e - lo - hi for f, e, lo, hi in zip(full, extra, given[:rank], given[rank:]))
    pads = [(lo, f - lo - t) for f, lo, t in zip(full, starts, length)]
    cut = tuple((max(lo, 0), max(hi, 0)) for lo, hi in pads)
    y = b.emit(Op.CONV_TRANSPOSE, (x, b.cast(w, x.dtype)),
               {"stride": strides, "padding": cut, "dilation": dilations, "groups": int(node.attr("group", 1)),
                "output_padding": (0,) * rank})
    fill = [(max(-lo, 0), max(-hi, 0)) for lo, hi in pads]
    if any(lo or hi for lo, hi in fill):
        y = b.pad(y, [(0, 0), (0, 0), *fill], 0.0)
    return [_bias(ctx, node, y)]


# ---- poolings --------------------------------------------------------------------------------------------

class _Pooling:
    """One pooling's windows: kernel, strides, dilations, pads and output size per spatial axis."""

    def __init__(self, node: OnnxNode, x: Tensor) -> None:
        sizes = _sizes(node, x)
        rank = len(sizes)
        if node.attr("kernel_shape") is None:
            raise UnsupportedOnnx(node, "a pooling without kernel_shape")
        self.kernel = _per_axis(node, "kernel_shape", rank, 1)
        self.strides = _per_axis(node, "strides", rank, 1)
        self.dilations = _per_axis(node, "dilations", rank, 1)
        self.sizes = sizes
        self.pads = _pads(node, sizes, self.kernel, self.strides, self.dilations)
        ceil_mode = bool(node.attr("ceil_mode", 0))
        if node.attr("auto_pad", "NOTSET") in ("SAME_UPPER", "SAME_LOWER"):
            self.out = tuple(-(-n // s) for n, s in zip(sizes, self.strides))
        else:
            self.out = tuple(_pool_size(n, k, s, d, p, ceil_mode)
                             for n, k, s, d, p in zip(sizes, self.kernel, self.strides, self.dilations, self.pads))
        if min(self.out) < 1:
            raise UnsupportedOnnx(node, f"the window {self.kernel} is larger than the padded input {sizes}")

    def windows(self, b: GraphBuilder, x: Tensor, fill: float) -> Tensor:
        """Every window of x padded with `fill`: [N, C, *S] -> [N, C, *O, prod(kernel)]."""
        lead = x.rank - len(self.sizes)
        extent = [(o - 1) * s + d * (k - 1) + 1
                  for o, k, s, d in zip(self.out, self.kernel, self.strides, self.dilations)]
        pads = [(lo, max(0, e - n - lo)) for (lo, _), e, n in zip(self.pads, extent, self.sizes)]
        if any(lo or hi for lo, hi in pads):
            x = b.pad(x, [(0, 0)] * lead + pads, fill)
        taps = []
        for tap in itertools.product(*(range(k) for k in self.kernel)):
            starts = [k * d for k, d in zip(tap, self.dilations)]
            stops = [a + (o - 1) * s + 1 for a, o, s in zip(starts, self.out, self.strides)]
            window = b.slice(x, [0] * lead + starts, list(x.shape[:lead]) + stops, [1] * lead + list(self.strides))
            taps.append(b.unsqueeze(window, -1))
        return b.concat(taps, -1)

    def counts(self, include_pad: bool) -> np.ndarray:
        """How many taps of each window [*O] lie inside the input (and its padding, with `include_pad`);
        never those past the right padding, which only ceil mode reaches."""
        per_axis = []
        for n, k, s, d, (lo, hi), o in zip(self.sizes, self.kernel, self.strides, self.dilations, self.pads,
                                           self.out):
            at = np.arange(o)[:, None] * s + np.arange(k)[None, :] * d - lo   # tap positions in the input
            first, last = (-lo, n + hi) if include_pad else (0, n)
            per_axis.append(((at >= first) & (at < last)).sum(axis=1))
        return math.prod(np.ix_(*per_axis)) if per_axis else np.ones(())


@converter("AveragePool", "LpPool")
def average_pool(ctx: Context, node: OnnxNode) -> list:
    b = ctx.builder
    x = ctx.tensor(node, 0)
    pool = _Pooling(node, x)
    if node.op_type == "LpPool":
        p = float(node.attr("p", 2))
        power = b.mul(x, x) if p == 2.0 else b.pow(b.unary(Op.ABS, x), b.const(p, x.dtype))
        total = b.sum(pool.windows(b, power, 0.0), -1)
        return [b.sqrt(total) if p == 2.0 else b.pow(total, b.const(1.0 / p, x.dtype))]
    total = b.sum(pool.windows(b, x, 0.0), -1)
    counts = pool.counts(bool(node.attr("count_include_pad", 0)))
    return [b.div(total, ctx.as_tensor(counts.astype(DTYPE_TO_NP[x.dtype])))]


@converter("MaxPool")
def max_pool(ctx: Context, node: OnnxNode) -> list:
    b = ctx.builder
    x = ctx.tensor(node, 0)
    pool = _Pooling(node, x)
    fill = float("-inf") if x.dtype.is_float else _INT_MIN.get(x.dtype)
    if fill is None:
        raise UnsupportedOnnx(node, f"MaxPool of {x.type}")
    windows = pool.windows(b, x, fill)
    y = b.max(windows, -1)
    if len(node.outputs) < 2 or not node.outputs[1]:
        return [y]
    first = b.argmax(windows, -1, keepdim=True)
    positions = pool.windows(b, _positions(b, x, int(node.attr("storage_order", 0))), -1)
    return [y, b.reshape(b.gather(positions, -1, first), y.shape)]


def _positions(b: GraphBuilder, x: Tensor, storage_order: int) -> Tensor:
    """Each element's index in the flattened input; with storage_order 1, column-major within each
    [N, C] plane."""
    spatial = x.shape[2:]
    plane = numel(spatial)
    if storage_order == 0:
        return b.reshape(b.iota(numel(x.shape)), x.shape)
    inner = b.reshape(b.iota(plane), tuple(reversed(spatial)))
    inner = b.permute(inner, tuple(reversed(range(len(spatial)))))
    planes = b.mul(b.reshape(b.iota(x.shape[0] * x.shape[1]), x.shape[:2] + (1,) * len(spatial)), plane)
    return b.add(planes, inner)


@converter("GlobalAveragePool", "GlobalMaxPool")
def global_pool(ctx: Context, node: OnnxNode) -> list:
    b = ctx.builder
    x = ctx.tensor(node, 0)
    axes = tuple(range(2, x.rank))
    if node.op_type == "GlobalAveragePool":
        return [b.mean(x, axes, keepdim=True)]
    return [b.max(x, axes, keepdim=True)]
