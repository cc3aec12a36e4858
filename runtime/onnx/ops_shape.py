"""Converters for ONNX's shape and indexing ops: Shape, Size, ConstantOfShape, Reshape's kin
(Flatten, Squeeze, Unsqueeze, Expand, Tile, Transpose), Concat, Split, Slice, Pad, Gather,
GatherElements, and Range, Trilu, CumSum, OneHot.

Everything ONNX passes as an input but that decides a shape (axes, starts, pads, repeats, split
sizes) must be known before the run: `ctx.static(..., what)` reads it, and asks the backend to
convert again with the integer inputs known when it is computed (`NeedsValue`).  ONNX's ranges
follow NumPy's slicing (negative positions count from the end, out-of-range ones clamp), so the
index arithmetic is done by Python's own `slice.indices` on the known numbers.

The IR's SLICE steps forward only and its GATHER is torch.gather (an index of the input's rank):
a backward or irregular walk along one axis (a negative Slice step, reflect/edge/wrap padding) is
a GATHER of an index made of iota or of the known positions (`take`), and ONNX's Gather (an index
of any rank, replacing one axis) folds the axes around it into a [before, n, after] view.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from onnx import numpy_helper

from dln.compiler.emit import GraphBuilder, Tensor
from dln.compiler.ir import DType, Op
from dln.compiler.symbolic import Dim, numel
from dln.runtime.onnx.convert import Context, OnnxNode, UnsupportedOnnx, converter


# ---- shared helpers (ops_reduce and ops_einsum use them too) -------------------------------------------

def axis_of(node: OnnxNode, axis: int, rank: int) -> int:
    """An ONNX axis (negative counts from the end) as 0 .. rank - 1."""
    if not -rank <= axis < max(rank, 1):
        raise UnsupportedOnnx(node, f"axis {axis} is out of range for a tensor of rank {rank}")
    return axis % rank if rank else 0


def axes_of(node: OnnxNode, axes: Sequence[int], rank: int) -> list[int]:
    out = [axis_of(node, int(a), rank) for a in axes]
    if len(set(out)) != len(out):
        raise UnsupportedOnnx(node, f"axes {list(axes)} name an axis twice")
    return out


def ints(a: np.ndarray | None) -> list[int]:
    return [] if a is None else [int(v) for v in np.asarray(a).reshape(-1)]


def attr_or_input(ctx: Context, node: OnnxNode, name: str, index: int, since: int) -> list[int] | None:
    """Integers ONNX moved from an attribute to an input at opset `since` (axes, split sizes):
    None when neither is given."""
    if ctx.opset >= since:
        value = ctx.static(node, index, f"the {name}")
        return None if value is None else ints(value)
    value = node.attr(name)
    return None if value is None else [int(v) for v in value]


def wrap_index(b: GraphBuilder, index: Tensor, n: Dim) -> Tensor:
    """ONNX indices count from the end when negative: i + n there."""
    return b.where(b.compare(Op.LT, index, 0), b.add(index, b.dim_value(n, index.dtype)), index)


def take(ctx: Context, x: Tensor, axis: int, positions: Sequence[int] | np.ndarray) -> Tensor:
    """x at the known `positions` along `axis`: a slice where they step forward evenly, a gather
    otherwise (an iota for any even step, the positions themselves where irregular)."""
    b = ctx.builder
    positions = np.asarray(positions, dtype=np.int64).reshape(-1)
    count, steps = len(positions), np.diff(positions)
    step = int(steps[0]) if count > 1 else 1
    if count > 1 and not (steps == step).all():
        return gather_along(b, x, axis, ctx.as_tensor(positions))
    first = int(positions[0]) if count else 0
    if step > 0:
        return b.slice_axis(x, axis, first, first + step * (count - 1) + 1 if count else first, step)
    return gather_along(b, x, axis, b.add(b.mul(b.iota(count), step), first))


def gather_along(b: GraphBuilder, x: Tensor, axis: int, index: Tensor) -> Tensor:
    """numpy.take(x, index, axis): the axis replaced by the index's axes (indices in 0 .. n - 1).
    The IR's GATHER wants an index of x's rank: x is seen as [before, n, after] and the flat index
    broadcast over the other two."""
    before, after = x.shape[:axis], x.shape[axis + 1:]
    outer, inner, count = numel(before), numel(after), numel(index.shape)
    x3 = b.reshape(x, (outer, x.shape[axis], inner))
    i3 = b.broadcast_to(b.reshape(index, (1, count, 1)), (outer, count, inner))
    return b.reshape(b.gather(x3, 1, i3), before + index.shape + after)


# ---- shapes as values --------------------------------------------------------------------------------

def _dims(b: GraphBuilder, dims: Sequence[Dim]) -> np.ndarray | Tensor:
    """A shape as an int64 vector: an array when every dimension is a number."""
    if all(isinstance(d, int) for d in dims):
        return np.array(dims, dtype=np.int64)
    return b.concat([b.reshape(b.dim_value(d, DType.I64), (1,)) for d in dims], 0)


@converter("Shape")
def shape(ctx: Context, node: OnnxNode) -> list:
    x = ctx.values[node.inputs[0]]
    dims = list(x.shape)
    start, end = node.attr("start", 0), node.attr("end", len(dims))
    return [_dims(ctx.builder, dims[start:end])]


@converter("Size")
def size(ctx: Context, node: OnnxNode) -> list:
    n = numel(tuple(ctx.values[node.inputs[0]].shape))
    return [np.array(n, dtype=np.int64) if isinstance(n, int) else ctx.builder.dim_value(n, DType.I64)]


@converter("ConstantOfShape")
def constant_of_shape(ctx: Context, node: OnnxNode) -> list:
    dims = ints(ctx.static(node, 0, "the shape"))
    value = node.attrs.get("value")
    fill = numpy_helper.to_array(value).reshape(-1)[0] if value is not None else np.float32(0)
    return [np.full(dims, fill, dtype=fill.dtype)]


@converter("Range")
def range_(ctx: Context, node: OnnxNode) -> list:
    start, limit, delta = (ctx.static(node, i, "the range's bounds") for i in range(3))
    return [np.arange(start, limit, delta).astype(np.asarray(start).dtype)]


# ---- movement ------------------------------------------------------------------------------------------

@converter("Flatten")
def flatten(ctx: Context, node: OnnxNode) -> list:
    x = ctx.tensor(node, 0)
    axis = node.attr("axis", 1)
    axis = axis + x.rank if axis < 0 else axis
    if not 0 <= axis <= x.rank:
        raise UnsupportedOnnx(node, f"axis {node.attr('axis')} is out of range for a tensor of rank {x.rank}")
    return [ctx.builder.reshape(x, (numel(x.shape[:axis]), numel(x.shape[axis:])))]


@converter("Squeeze")
def squeeze(ctx: Context, node: OnnxNode) -> list:
    x = ctx.tensor(node, 0)
    axes = attr_or_input(ctx, node, "axes", 1, 13)
    axes = [i for i, d in enumerate(x.shape) if d == 1] if axes is None else axes_of(node, axes, x.rank)
    for a in axes:
        if x.shape[a] != 1:
            raise UnsupportedOnnx(node, f"cannot squeeze axis {a} of size {x.shape[a]}")
    return [ctx.builder.reshape(x, tuple(d for i, d in enumerate(x.shape) if i not in axes))]


@converter("Unsqueeze")
def unsqueeze(ctx: Context, node: OnnxNode) -> list:
    x = ctx.tensor(node, 0)
    axes = attr_or_input(ctx, node, "axes", 1, 13)
    if axes is None:
        raise UnsupportedOnnx(node, "Unsqueeze needs axes")
    rank = x.rank + len(axes)
    axes = axes_of(node, axes, rank)
    rest = iter(x.shape)
    return [ctx.builder.reshape(x, tuple(1 if i in axes else next(rest) for i in range(rank)))]


@converter("Transpose")
def transpose(ctx: Context, node: OnnxNode) -> list:
    x = ctx.tensor(node, 0)
    perm = node.attr("perm", list(range(x.rank))[::-1])
    return [ctx.builder.permute(x, axes_of(node, perm, x.rank))]


@converter("Expand")
def expand(ctx: Context, node: OnnxNode) -> list:
    """Broadcasting both ways: the target shape's 1s keep the input's sizes."""
    b = ctx.builder
    x = ctx.tensor(node, 0)
    dims = ints(ctx.static(node, 1, "the shape"))
    return [b.broadcast_to(x, b.broadcast_shapes(x.shape, tuple(dims)))]


@converter("Tile")
def tile(ctx: Context, node: OnnxNode) -> list:
    """x repeated r_i times along axis i: each axis [d] as [1, d], broadcast to [r, d], merged."""
    b = ctx.builder
    x = ctx.tensor(node, 0)
    repeats = ints(ctx.static(node, 1, "the repeats"))
    if len(repeats) != x.rank:
        raise UnsupportedOnnx(node, f"{len(repeats)} repeats for a tensor of rank {x.rank}")
    pairs = b.reshape(x, tuple(d for size in x.shape for d in (1, size)))
    pairs = b.broadcast_to(pairs, tuple(d for r, size in zip(repeats, x.shape) for d in (r, size)))
    return [b.reshape(pairs, tuple(r * size for r, size in zip(repeats, x.shape)))]


@converter("Concat")
def concat(ctx: Context, node: OnnxNode) -> list:
    xs = [ctx.tensor(node, i) for i in range(len(node.inputs)) if ctx.has(node, i)]
    if node.attr("axis") is None:
        raise UnsupportedOnnx(node, "Concat needs an axis")
    axis = axis_of(node, node.attr("axis"), xs[0].rank)
    xs = [x for x in xs if x.shape[axis] != 0] or xs[:1]
    return [ctx.builder.concat(xs, axis)]


@converter("Split")
def split(ctx: Context, node: OnnxNode) -> list:
    x = ctx.tensor(node, 0)
    axis = axis_of(node, node.attr("axis", 0), x.rank)
    n = x.shape[axis]
    sizes = attr_or_input(ctx, node, "split", 1, 13)
    parts = node.attr("num_outputs")
    if sizes is None and parts:
        # num_outputs (opset 18): chunks of ceil(n / parts), the last one shorter.
        chunk = -(-n // parts)
        sizes = [max(min(chunk, n - k * chunk), 0) for k in range(parts)]
    elif sizes is None:
        parts = len(node.outputs)
        if n % parts:
            raise UnsupportedOnnx(node, f"an axis of size {n} does not split into {parts} equal parts")
        sizes = [n // parts] * parts
    if sum(sizes) != n:
        raise UnsupportedOnnx(node, f"split sizes {sizes} do not add up to the axis's {n}")
    outs, start = [], 0
    for s in sizes:
        outs.append(ctx.builder.slice_axis(x, axis, start, start + s))
        start += s
    return outs


@converter("Slice")
def slice_(ctx: Context, node: OnnxNode) -> list:
    """ONNX Slice is NumPy's slicing: positions clamp, negative ones count from the end, a negative
    step walks backward (a gather, the IR's slices step forward only)."""
    x = ctx.tensor(node, 0)
    if ctx.opset >= 10:
        starts, ends = ints(ctx.static(node, 1, "the starts")), ints(ctx.static(node, 2, "the ends"))
        axes = ints(ctx.static(node, 3, "the axes")) if ctx.has(node, 3) else None
        steps = ints(ctx.static(node, 4, "the steps")) if ctx.has(node, 4) else None
    else:
        starts, ends, axes, steps = node.attr("starts"), node.attr("ends"), node.attr("axes"), None
    axes = axes_of(node, axes if axes is not None else range(len(starts)), x.rank)
    steps = steps or [1] * len(starts)
    starts_at, stops_at, steps_at = [0] * x.rank, list(x.shape), [1] * x.rank
    backward = []
    for axis, start, end, step in zip(axes, starts, ends, steps):
        if step == 0:
            raise UnsupportedOnnx(node, "a slice step of 0")
        positions = range(*slice(start, end, step).indices(x.shape[axis]))
        if step > 0:
            starts_at[axis], steps_at[axis] = positions.start, step
            stops_at[axis] = max(positions.stop, positions.start)
        else:
            backward.append((axis, positions))
    out = ctx.builder.slice(x, starts_at, stops_at, steps_at)
    for axis, positions in backward:
        out = take(ctx, out, axis, list(positions))
    return [out]


# ---- padding -------------------------------------------------------------------------------------------

@converter("Pad")
def pad(ctx: Context, node: OnnxNode) -> list:
    """Negative pads crop first; `constant` pads with the value, `edge`, `reflect` and `wrap` read
    positions of the input, which numpy.pad of an iota gives (ONNX defines the modes as NumPy's)."""
    b = ctx.builder
    x = ctx.tensor(node, 0)
    mode = node.attr("mode", "constant")
    if ctx.opset >= 11:
        pads = ints(ctx.static(node, 1, "the pads"))
        value = ctx.values[node.inputs[2]] if ctx.has(node, 2) else 0
        axes = ints(ctx.static(node, 3, "the axes")) if ctx.has(node, 3) else None
    else:
        pads, value, axes = node.attr("pads"), node.attr("value", 0.0), None
    axes = axes_of(node, axes if axes is not None else range(x.rank), x.rank)
    if len(pads) != 2 * len(axes):
        raise UnsupportedOnnx(node, f"{len(pads)} pads for {len(axes)} axes")
    widths = [(0, 0)] * x.rank
    for k, axis in enumerate(axes):
        widths[axis] = (int(pads[k]), int(pads[k + len(axes)]))
    # Negative widths crop.
    x = b.slice(x, [max(-lo, 0) for lo, _ in widths], [d - max(-hi, 0) for d, (_, hi) in zip(x.shape, widths)],
                [1] * x.rank)
    widths = [(max(lo, 0), max(hi, 0)) for lo, hi in widths]
    if mode == "constant":
        return [_pad_constant(ctx, x, widths, value)]
    if mode not in ("edge", "reflect", "wrap"):
        raise UnsupportedOnnx(node, f"Pad mode {mode!r}")
    for axis, (lo, hi) in enumerate(widths):
        if lo or hi:
            if x.shape[axis] == 0:
                raise UnsupportedOnnx(node, f"{mode} padding of an empty axis")
            x = take(ctx, x, axis, np.pad(np.arange(x.shape[axis]), (lo, hi), mode=mode))
    return [x]


def _pad_constant(ctx: Context, x: Tensor, widths: list[tuple[int, int]], value) -> Tensor:
    b = ctx.builder
    if isinstance(value, Tensor):
        # A value computed in the graph: pad with zeros, then put it where the padding is.
        inside = b.pad(b.const(True, DType.BOOL, x.shape), widths, False)
        return b.where(inside, b.pad(x, widths, 0), b.cast(b.reshape(value, ()), x.dtype))
    value = np.asarray(value).reshape(-1)
    fill = value[0].item() if value.size else 0
    fill = float(fill) if x.dtype.is_float else bool(fill) if x.dtype is DType.BOOL else int(fill)
    return b.pad(x, widths, fill)


# ---- indexing ------------------------------------------------------------------------------------------

@converter("Gather")
def gather(ctx: Context, node: OnnxNode) -> list:
    b = ctx.builder
    x = ctx.tensor(node, 0)
    axis = axis_of(node, node.attr("axis", 0), x.rank)
    n = x.shape[axis]
    known = ctx.static(node, 1)
    if known is not None and isinstance(n, int):
        positions = np.where(known < 0, known + n, known).astype(np.int64)
        if known.ndim == 0:   # one position: a slice, the axis dropped
            picked = b.slice_axis(x, axis, int(positions), int(positions) + 1)
            return [b.reshape(picked, x.shape[:axis] + x.shape[axis + 1:])]
        index = ctx.as_tensor(positions)
    else:
        index = wrap_index(b, ctx.tensor(node, 1), n)
    return [gather_along(b, x, axis, index)]


@converter("GatherElements")
def gather_elements(ctx: Context, node: OnnxNode) -> list:
    b = ctx.builder
    x, index = ctx.tensor(node, 0), ctx.tensor(node, 1)
    axis = axis_of(node, node.attr("axis", 0), x.rank)
    return [b.gather(x, axis, wrap_index(b, index, x.shape[axis]))]


@converter("OneHot")
def one_hot(ctx: Context, node: OnnxNode) -> list:
    b = ctx.builder
    indices, values = ctx.tensor(node, 0), ctx.tensor(node, 2)
    depth = ctx.static(node, 1, "the depth")
    depth = int(np.asarray(depth).reshape(-1)[0])
    rank = indices.rank + 1
    axis = axis_of(node, node.attr("axis", -1), rank)
    indices = wrap_index(b, b.cast(indices, DType.I64), depth)
    shape = indices.shape[:axis] + (depth,) + indices.shape[axis:]
    classes = b.reshape(b.iota(depth), tuple(depth if i == axis else 1 for i in range(rank)))
    hot = b.compare(Op.EQ, b.broadcast_to(b.unsqueeze(indices, axis), shape), b.broadcast_to(classes, shape))
    off, on = (b.reshape(b.slice_axis(b.reshape(values, (2,)), 0, k, k + 1), ()) for k in (0, 1))
    return [b.where(hot, on, off)]


@converter("Trilu")
def trilu(ctx: Context, node: OnnxNode) -> list:
    """The upper (lower) triangle of the last two axes: column - row >= k (<= k)."""
    b = ctx.builder
    x = ctx.tensor(node, 0)
    k = b.reshape(ctx.tensor(node, 1), ()) if ctx.has(node, 1) else b.const(0, DType.I64)
    rows, cols = x.shape[-2], x.shape[-1]
    offset = b.sub(b.reshape(b.iota(cols), (1, cols)), b.reshape(b.iota(rows), (rows, 1)))
    keep = b.compare(Op.GE if node.attr("upper", 1) else Op.LE, offset, b.cast(k, DType.I64))
    zero = b.const(0, x.dtype, ())
    return [b.where(b.broadcast_to(keep, x.shape), x, zero)]


@converter("CumSum")
def cumsum(ctx: Context, node: OnnxNode) -> list:
    """Running sums along an axis as a product with a triangle of ones ([..., n] @ [n, n])."""
    b = ctx.builder
    x = ctx.tensor(node, 0)
    axis = axis_of(node, ints(ctx.static(node, 1, "the axis"))[0], x.rank)
    n = x.shape[axis]
    order = np.arange(n)
    src, dst = order[:, None], order[None, :]
    if node.attr("reverse", 0):
        src, dst = dst, src
    ones = (src < dst) if node.attr("exclusive", 0) else (src <= dst)
    perm = [i for i in range(x.rank) if i != axis] + [axis]
    ones = ctx.as_tensor(ones.astype(np.float32 if x.dtype.is_float else np.int64))
    summed = b.cast(b.matmul(b.permute(x, perm), ones), x.dtype)
    return [b.permute(summed, [int(i) for i in np.argsort(perm)])]
