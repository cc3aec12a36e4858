"""Convolution layers: `conv1d`, `conv2d`, `conv_transpose2d`, with PyTorch's arguments, weight
layouts (`[out, in/groups, *kernel]`, transposed: `[in, out/groups, *kernel]`) and default
initialization, so a `state_dict` of `nn.Conv2d` or `nn.ConvTranspose2d` loads by name.

Each is one `conv` or `conv_transpose` primitive and a broadcast bias; the arguments are checked
here, where every mistake can point at the argument that made it.
"""

from __future__ import annotations

import math

from dln.compiler.builtins import BOOL, INIT, INT, SIZES, TENSOR, Kind, builtin
from dln.compiler.builtins.nn import _features, _positive, _uniform
from dln.compiler.emit import Tensor
from dln.compiler.ir import Op
from dln.compiler.shapes import conv_transpose_size
from dln.compiler.values import InitSpec

class _PaddingKind(Kind):
    text = 'an int, a tuple of ints, "same" or "valid"'

    def convert(self, v):
        if v in ("same", "valid"):
            return v
        return SIZES.convert(v)


PADDING = _PaddingKind()


def _per_axis(cx, arg: str, v: int | tuple[int, ...], rank: int, layer: str, least: int) -> tuple[int, ...]:
    values = (v,) * rank if isinstance(v, int) else tuple(v)
    if len(values) != rank:
        raise cx.fail_at(arg, "E0208", f"{layer}'s {arg} needs 1 or {rank} values, got {len(values)}")
    if any(n < least for n in values):
        bound = "positive" if least == 1 else "at least 0"
        raise cx.fail_at(arg, "E0208", f"{layer}'s {arg} must be {bound}, got {v}")
    return values


def _padding(cx, padding, kernel, stride, dilation, layer: str) -> tuple[tuple[int, int], ...]:
    """(lo, hi) per axis; "same" splits the total as torch does (the extra one after)."""
    rank = len(kernel)
    if padding == "valid":
        return ((0, 0),) * rank
    if padding == "same":
        if any(s != 1 for s in stride):
            raise cx.fail_at("padding", "E0208", f'{layer}: padding = "same" needs stride 1 (as in torch), '
                                                 f"got stride {stride}")
        total = [d * (k - 1) for k, d in zip(kernel, dilation)]
        return tuple((t // 2, t - t // 2) for t in total)
    return tuple((p, p) for p in _per_axis(cx, "padding", padding, rank, layer, 0))


def _spatial(cx, x: Tensor, rank: int, layer: str) -> tuple[Tensor, bool]:
    """x as [B, C, *S]; an unbatched [C, *S] gets a batch of one (and loses it again after)."""
    if x.rank == rank + 1:
        return cx.b.unsqueeze(x, 0), True
    if x.rank != rank + 2:
        spatial = ("L",) if rank == 1 else ("H", "W")
        raise cx.fail("E0202", f"{layer} needs [B, C, {', '.join(spatial)}] (or [C, {', '.join(spatial)}]), "
                               f"got {x.type}")
    return x, False


def _axis_names(rank: int) -> tuple[str, ...]:
    return ("L",) if rank == 1 else ("H", "W")


def _fits(cx, x: Tensor, kernel, dilation, pads, layer: str) -> None:
    """A kernel larger than the padded input is an error here, naming the dimensions."""
    names = _axis_names(len(kernel))
    for a, (k, d, (lo, hi)) in enumerate(zip(kernel, dilation, pads)):
        n = x.shape[2 + a]
        reach = d * (k - 1) + 1
        if isinstance(n, int) and n + lo + hi < reach:
            spans = "×".join(str(d_ * (k_ - 1) + 1) for k_, d_ in zip(kernel, dilation))
            sizes = ", ".join(f"{nm} {x.shape[2 + i]} + {p[0]} + {p[1]}" for i, (nm, p) in enumerate(zip(names, pads)))
            raise cx.fail("E0209", f"{layer}: the kernel {'×'.join(map(str, kernel))} (dilation "
                                   f"{'×'.join(map(str, dilation))}) spans {spans}, more than the padded input "
                                   f"({sizes})")


def _strided_symbolic(cx, x: Tensor, stride, layer: str) -> None:
    for a, s in enumerate(stride):
        if s != 1 and not isinstance(x.shape[2 + a], int):
            raise cx.fail("E0207", f"{layer} with stride {s} needs a known size on axis {2 + a}, got {x.type}")


def _groups(cx, groups: int, layer: str, **channels: int) -> None:
    if groups < 1:
        raise cx.fail_at("groups", "E0208", f"{layer}'s groups must be positive, got {groups}")
    for what, n in channels.items():
        if n % groups:
            raise cx.fail_at("groups", "E0208", f"{layer}: {n} {what} channels do not split into {groups} groups")


def _default_init(fan_in: int) -> InitSpec:
    """torch's kaiming_uniform(a=sqrt(5)) for the weight, uniform(±1/sqrt(fan_in)) for the bias: one bound."""
    return _uniform(1.0 / math.sqrt(fan_in)) if fan_in else InitSpec("zeros")


def _arguments(cx, x: Tensor, rank: int, layer: str, out: int, kernel, stride, dilation, groups: int):
    """What every convolution layer checks first: x as [B, C, *S] (and whether it had no batch), its
    channel count, and kernel, stride and dilation as one int per spatial axis."""
    x, unbatched = _spatial(cx, cx.b.to_float(x), rank, layer)
    c_in = _features(cx, x, layer, axis=1)
    _positive(cx, layer, out=out)
    _groups(cx, groups, layer, input=c_in, output=out)
    kernel = _per_axis(cx, "kernel", kernel, rank, layer, 1)
    stride = _per_axis(cx, "stride", stride, rank, layer, 1)
    dilation = _per_axis(cx, "dilation", dilation, rank, layer, 1)
    return x, unbatched, c_in, kernel, stride, dilation


def _conv(cx, x: Tensor, rank: int, layer: str, out: int, kernel, stride, padding, dilation, groups: int,
          bias: bool, init: InitSpec | None) -> Tensor:
    b = cx.b
    x, unbatched, c_in, kernel, stride, dilation = _arguments(cx, x, rank, layer, out, kernel, stride, dilation,
                                                              groups)
    pads = _padding(cx, padding, kernel, stride, dilation, layer)
    _fits(cx, x, kernel, dilation, pads, layer)
    _strided_symbolic(cx, x, stride, layer)
    fan_in = c_in // groups * math.prod(kernel)
    default = _default_init(fan_in)
    weight = cx.param("weight", (out, c_in // groups, *kernel), init or default, x.dtype)
    y = b.emit(Op.CONV, (x, weight), {"stride": stride, "padding": pads, "dilation": dilation, "groups": groups})
    return _finish(cx, y, out, bias, default, unbatched)


def _finish(cx, y: Tensor, out: int, bias: bool, default: InitSpec, unbatched: bool) -> Tensor:
    b = cx.b
    if bias:
        column = (out,) + (1,) * (y.rank - 2)
        y = b.add(y, b.reshape(cx.param("bias", (out,), default, y.dtype), column))
    return b.reshape(y, y.shape[1:]) if unbatched else y


@builtin(category="layer", owns_params=True)
def conv1d(cx, x: TENSOR, out: INT, kernel: SIZES, stride: SIZES = 1, padding: PADDING = 0, dilation: SIZES = 1,
           groups: INT = 1, bias: BOOL = True, init: INIT = None):
    """1-d convolution over [B, C, L]; weight [out, C/groups, kernel] (torch.nn.Conv1d)"""
    return _conv(cx, x, 1, "conv1d", out, kernel, stride, padding, dilation, groups, bias, init)


@builtin(category="layer", owns_params=True)
def conv2d(cx, x: TENSOR, out: INT, kernel: SIZES, stride: SIZES = 1, padding: PADDING = 0, dilation: SIZES = 1,
           groups: INT = 1, bias: BOOL = True, init: INIT = None):
    """2-d convolution over [B, C, H, W]; weight [out, C/groups, kh, kw] (torch.nn.Conv2d)"""
    return _conv(cx, x, 2, "conv2d", out, kernel, stride, padding, dilation, groups, bias, init)


@builtin(category="layer", owns_params=True)
def conv_transpose2d(cx, x: TENSOR, out: INT, kernel: SIZES, stride: SIZES = 1, padding: SIZES = 0,
                     output_padding: SIZES = 0, groups: INT = 1, dilation: SIZES = 1, bias: BOOL = True,
                     init: INIT = None):
    """transposed 2-d convolution (the gradient of conv2d as a layer); weight [C, out/groups, kh, kw]
    (torch.nn.ConvTranspose2d)"""
    layer, rank = "conv_transpose2d", 2
    b = cx.b
    x, unbatched, c_in, kernel, stride, dilation = _arguments(cx, x, rank, layer, out, kernel, stride, dilation,
                                                              groups)
    pads = tuple((p, p) for p in _per_axis(cx, "padding", padding, rank, layer, 0))
    extra = _per_axis(cx, "output_padding", output_padding, rank, layer, 0)
    if any(e >= max(s, d) for e, s, d in zip(extra, stride, dilation)):
        raise cx.fail_at("output_padding", "E0208", f"{layer}'s output_padding must be smaller than its stride "
                                                    f"or its dilation (as in torch), got {output_padding} with "
                                                    f"stride {stride} and dilation {dilation}")
    _strided_symbolic(cx, x, stride, layer)
    for a, n in enumerate(x.shape[2:]):
        size = conv_transpose_size(n, kernel[a], stride[a], pads[a], dilation[a], extra[a])
        if isinstance(size, int) and size < 1:
            raise cx.fail("E0209", f"{layer}: padding {padding} removes more than the {_axis_names(rank)[a]} "
                                   f"axis of the output has ({size + 2 * pads[a][0]} before padding)")
    fan_in = out // groups * math.prod(kernel)       # torch computes it on the weight [in, out/groups, *K]
    default = _default_init(fan_in)
    weight = cx.param("weight", (c_in, out // groups, *kernel), init or default, x.dtype)
    y = b.emit(Op.CONV_TRANSPOSE, (x, weight), {"stride": stride, "padding": pads, "dilation": dilation,
                                                "groups": groups, "output_padding": extra})
    return _finish(cx, y, out, bias, default, unbatched)

