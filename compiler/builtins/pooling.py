"""Pooling: maxpool2d, avgpool2d and global_avgpool, as decompositions into primitives.

A 2-d pooling gathers every window of the (padded) input onto one new last
axis, `[..., OH, OW, kh * kw]` in row-major window order, and reduces it:

* the padded input is split by the stride, [..., H/sh, sh, W/sw, sw], so that
  position p of an axis is (p // stride, p % stride);
* where the windows tile the input (stride = kernel, no dilation, the common
  `maxpool2d(2)`) a permute then finishes the job, which autodiff undoes for
  free;
* otherwise each of the kh * kw window taps is a plain slice of that split
  (no step: its VJP is a pad), stacked with a concat; overlapping windows add
  up their gradients through the slices' VJPs.

maxpool2d picks each window's *first* maximum with `argmax` and selects it with
`where`, so its gradient reaches that one element as in torch (a MAX
reduction's VJP would share it between ties).  avgpool2d divides the window
sums by torch's divisor, a compile-time constant built from a few filled runs.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from dln.compiler.builtins import BOOL, INT, SIZES, TENSOR, builtin
from dln.compiler.emit import GraphBuilder, Tensor
from dln.compiler.ir import DType, Op

_INT_MIN = {DType.I32: -2 ** 31, DType.I64: -2 ** 63}


@dataclass(frozen=True)
class _Axis:
    """One spatial axis of a pooling: the input size, the window's geometry and the output size."""

    size: int
    kernel: int
    stride: int
    padding: int
    dilation: int
    out: int

    @property
    def span(self) -> int:
        """How far one window reaches: its kernel with the holes dilation puts between taps."""
        return self.dilation * (self.kernel - 1) + 1

    @property
    def extent(self) -> int:
        """The length of the padded input the windows read (the last window may hang past it in ceil mode)."""
        return (self.out - 1) * self.stride + self.span

    def counts(self, include_pad: bool) -> list[int]:
        """How many positions each window covers, as torch's avg_pool2d counts them: the padding
        (when `include_pad`) but never the ceil-mode overhang past the padding."""
        out = []
        for i in range(self.out):
            start = i * self.stride - self.padding
            stop = min(start + self.kernel, self.size + self.padding)
            if not include_pad:
                start, stop = max(start, 0), min(stop, self.size)
            out.append(stop - start)
        return out


def output_size(size: int, kernel: int, stride: int, padding: int, dilation: int, ceil_mode: bool) -> int:
    """torch's pooling_output_shape: in ceil mode the last window must start inside the input or its
    left padding, never in the right padding alone."""
    span = dilation * (kernel - 1) + 1
    out = (size + 2 * padding - span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


# ---- arguments -----------------------------------------------------------------------------------------


def _pair(cx, name: str, arg: str, value: int | tuple[int, ...]) -> tuple[int, int]:
    """An int or a pair of ints, as torch reads them (a 1-tuple counts as its int)."""
    if isinstance(value, int):
        return value, value
    if len(value) == 1:
        return value[0], value[0]
    if len(value) != 2:
        raise cx.fail_at(arg, "E0208", f"{name}'s {arg} must be an int or a pair of ints, got {value}")
    return value


def _geometry(cx, name: str, x: Tensor, kernel, stride, padding, dilation, ceil_mode: bool) -> tuple[_Axis, _Axis]:
    """The two spatial axes of a pooling of `x`, every argument checked as torch checks it."""
    if x.rank not in (3, 4):
        raise cx.fail("E0202", f"{name} needs [B, C, H, W] or [C, H, W], got {x.type}")
    h, w = x.shape[-2:]
    if not (isinstance(h, int) and isinstance(w, int)):
        raise cx.fail("E0202", f"{name} needs known spatial sizes H and W, got {x.type}")
    k = _pair(cx, name, "kernel", kernel)
    s = k if stride is None else _pair(cx, name, "stride", stride)
    p = _pair(cx, name, "padding", padding)
    d = _pair(cx, name, "dilation", dilation)
    for arg, v in (("kernel", k), ("stride", s), ("dilation", d)):
        if min(v) <= 0:
            raise cx.fail_at(arg, "E0208", f"{name}'s {arg} must be positive, got {_text(v)}")
    if min(p) < 0:
        raise cx.fail_at("padding", "E0208", f"{name}'s padding must not be negative, got {_text(p)}")
    if p[0] > k[0] // 2 or p[1] > k[1] // 2:
        raise cx.fail_at("padding", "E0208", f"{name}'s padding {_text(p)} is more than half of its kernel "
                                             f"{_text(k)}: a window could hold padding only")
    axes = tuple(_Axis(n, k[i], s[i], p[i], d[i], output_size(n, k[i], s[i], p[i], d[i], ceil_mode))
                 for i, n in enumerate((h, w)))
    if min(a.out for a in axes) < 1:
        ah, aw = axes
        spanning = "" if d == (1, 1) else f", spanning {ah.span}×{aw.span}"
        dilated = f" (dilation {_text(d)}{spanning})" if name == "maxpool2d" else ""
        raise cx.fail_at("kernel", "E0209", f"{name}: the {k[0]}×{k[1]} window{dilated} is larger than the "
                                            f"padded input {h + 2 * p[0]}×{w + 2 * p[1]} "
                                            f"(H={h}+{2 * p[0]}, W={w}+{2 * p[1]})")
    return axes


def _text(v: tuple[int, int]) -> str:
    return str(v[0]) if v[0] == v[1] else f"({v[0]}, {v[1]})"


# ---- windows -------------------------------------------------------------------------------------------------


def _windows(b: GraphBuilder, x: Tensor, axes: tuple[_Axis, _Axis], fill: float) -> Tensor:
    """Every window of `x` padded with `fill`: [..., H, W] -> [..., OH, OW, kh * kw], row-major in the window."""
    lead = x.rank - 2
    ah, aw = axes
    if all(a.stride == a.kernel and a.dilation == 1 for a in axes):
        # Windows that tile the input: [..., OH, kh, OW, kw] -> [..., OH, OW, kh, kw].
        x = _phases(b, x, axes, fill)
        x = b.permute(x, [*range(lead), lead, lead + 2, lead + 1, lead + 3])
        return b.reshape(x, x.shape[:lead] + (ah.out, aw.out, ah.kernel * aw.kernel))
    x = _phases(b, x, axes, fill)
    taps = []
    for i, j in itertools.product(range(ah.kernel), range(aw.kernel)):
        # Window tap (i, j) of every output position: block `row` of phase `dy` (and so for columns),
        # a plain slice whose VJP is one pad.
        (row, dy), (col, dx) = divmod(i * ah.dilation, ah.stride), divmod(j * aw.dilation, aw.stride)
        tap = b.slice(x, [0] * lead + [row, dy, col, dx],
                      list(x.shape[:lead]) + [row + ah.out, dy + 1, col + aw.out, dx + 1], [1] * x.rank)
        taps.append(b.reshape(tap, x.shape[:lead] + (ah.out, aw.out, 1)))
    return b.concat(taps, -1)


def _phases(b: GraphBuilder, x: Tensor, axes: tuple[_Axis, _Axis], fill: float) -> Tensor:
    """x padded (with `fill`) or cut to whole strides, and each axis split by its stride:
    [..., H, W] -> [..., blocks_h, stride_h, blocks_w, stride_w].  Position p of a padded axis is
    (p // stride, p % stride): the taps of a window are then slices with step 1."""
    lead = x.rank - 2
    blocks = [a.out + (a.dilation * (a.kernel - 1)) // a.stride for a in axes]
    lengths = [n * a.stride for n, a in zip(blocks, axes)]
    pads = [(0, 0)] * lead + [(a.padding, max(0, n - a.size - a.padding)) for n, a in zip(lengths, axes)]
    if any(lo or hi for lo, hi in pads):
        x = b.pad(x, pads, fill)
    x = b.slice(x, [0] * x.rank, x.shape[:lead] + tuple(lengths), [1] * x.rank)
    (bh, bw), (ah, aw) = blocks, axes
    return b.reshape(x, x.shape[:lead] + (bh, ah.stride, bw, aw.stride))


def _runs(b: GraphBuilder, values: list[int], dtype: DType) -> Tensor:
    """A short vector of integers as constants: one filled constant per run of equal values."""
    return b.concat([b.const(v, dtype, (len(list(run)),)) for v, run in itertools.groupby(values)], 0)


def _divisor(b: GraphBuilder, axes: tuple[_Axis, _Axis], include_pad: bool, dtype: DType) -> Tensor | int:
    """torch's avg_pool2d divisor of each output position: one number where all windows agree, else
    [OH, OW], the product of the two axes' counts (a window's count is the product of its sides)."""
    rows, cols = (a.counts(include_pad) for a in axes)
    if len(set(rows)) == 1 and len(set(cols)) == 1:
        return rows[0] * cols[0]
    ah, aw = axes
    return b.mul(b.reshape(_runs(b, rows, dtype), (ah.out, 1)), b.reshape(_runs(b, cols, dtype), (1, aw.out)))


# ---- the built-ins --------------------------------------------------------------------------------------------


@builtin()
def maxpool2d(cx, x: TENSOR, kernel: SIZES, stride: SIZES = None, padding: SIZES = 0, dilation: SIZES = 1,
              ceil_mode: BOOL = False):
    """the largest value of each window over the last two axes (torch.nn.MaxPool2d)"""
    if x.dtype is DType.BOOL:
        raise cx.fail("E0206", f"maxpool2d needs numbers, got {x.type}")
    b = cx.b
    axes = _geometry(cx, "maxpool2d", x, kernel, stride, padding, dilation, ceil_mode)
    fill = float("-inf") if x.dtype.is_float else _INT_MIN[x.dtype]
    windows = _windows(b, x, axes, fill)
    if not x.dtype.is_float:
        return b.max(windows, -1)
    # torch's CPU kernel keeps the first maximum in row-major order (`val > max || isnan(val)`) and
    # sends the whole gradient there; argmax has no gradient, the `where` routes it.
    first = b.argmax(windows, -1, keepdim=True)
    pick = b.compare(Op.EQ, b.iota(windows.shape[-1]), first)
    return b.sum(b.where(pick, windows, 0.0), -1)


@builtin()
def avgpool2d(cx, x: TENSOR, kernel: SIZES, stride: SIZES = None, padding: SIZES = 0, ceil_mode: BOOL = False,
              count_include_pad: BOOL = True, divisor_override: INT = None):
    """the mean of each window over the last two axes (torch.nn.AvgPool2d)"""
    if not x.dtype.is_float:
        raise cx.fail("E0206", f"avgpool2d needs a float tensor, got {x.type}")
    if divisor_override == 0:
        raise cx.fail_at("divisor_override", "E0208", "avgpool2d's divisor_override must not be zero")
    b = cx.b
    axes = _geometry(cx, "avgpool2d", x, kernel, stride, padding, 1, ceil_mode)
    total = b.sum(_windows(b, x, axes, 0.0), -1)
    if divisor_override is not None:
        return b.div(total, divisor_override)
    return b.div(total, _divisor(b, axes, count_include_pad, x.dtype))


@builtin()
def global_avgpool(cx, x: TENSOR):
    """the mean over every axis after the first two: [B, C, ...] -> [B, C]"""
    if x.rank < 3:
        raise cx.fail("E0202", f"global_avgpool needs [B, C, ...], got {x.type}")
    return cx.b.mean(x, tuple(range(2, x.rank)))
