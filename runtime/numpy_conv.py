"""Convolution on NumPy: each of the three convolution ops is one batched GEMM over a window view.

The input (zero-padded into a buffer kept from step to step) is seen through a
strided view `[B, C, *O, *K]` whose element (o, k) is input[o * stride + k *
dilation]; one copy turns it into the column matrix (im2col) of every group,
and `np.matmul` does the rest.  The transposed convolution multiplies first
and then adds the columns back into place (col2im), one strided add per kernel
position.  No Python loop runs over pixels, channels or the batch.

Each op is *prepared* once per plan (`PREPARED`): its scratch buffers (the
padded input, the columns, the product) are allocated then and reused by
every step; `IMPLS` runs the same preparation once for the plain interpreter.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from dln.compiler.ir import Node, Op
from dln.runtime.numpy_ops import IMPLS, concrete_shape, np_dtype

Step = Callable[[], np.ndarray]
PREPARED: dict[Op, Callable[[Node, list[np.ndarray], np.ndarray, dict[str, Any]], Step]] = {}


@dataclass(frozen=True)
class _Geometry:
    stride: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]
    dilation: tuple[int, ...]
    groups: int

    @staticmethod
    def of(node: Node) -> "_Geometry":
        a = node.attrs
        return _Geometry(tuple(a["stride"]), tuple(tuple(p) for p in a["padding"]), tuple(a["dilation"]), a["groups"])

    @property
    def padded(self) -> bool:
        return any(lo or hi for lo, hi in self.padding)

    def padded_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return shape[:2] + tuple(n + lo + hi for n, (lo, hi) in zip(shape[2:], self.padding))

    def interior(self, shape: tuple[int, ...]) -> tuple[slice, ...]:
        return (slice(None), slice(None)) + tuple(slice(lo, lo + n) for n, (lo, _) in zip(shape[2:], self.padding))


def _padded(x: np.ndarray, geo: _Geometry) -> tuple[np.ndarray, Callable[[], None]]:
    """A zero-bordered copy of x kept across steps, and the step that refreshes its interior."""
    if not geo.padded:
        return x, lambda: None
    xp = np.zeros(geo.padded_shape(x.shape), x.dtype)
    inner = xp[geo.interior(x.shape)]
    return xp, lambda: np.copyto(inner, x)


def _windows(xp: np.ndarray, out: tuple[int, ...], kernel: tuple[int, ...], geo: _Geometry) -> np.ndarray:
    """xp [B, C, *P] seen as [B, C, *O, *K]: element (o, k) is xp[..., o * stride + k * dilation]."""
    s = xp.strides
    r = len(kernel)
    strides = s[:2] + tuple(s[2 + a] * geo.stride[a] for a in range(r)) \
        + tuple(s[2 + a] * geo.dilation[a] for a in range(r))
    return np.lib.stride_tricks.as_strided(xp, xp.shape[:2] + out + kernel, strides, writeable=False)


def _columns(x: np.ndarray, out: tuple[int, ...], kernel: tuple[int, ...], geo: _Geometry):
    """The column matrix of every group, [g, B * prod(O), C/g * prod(K)], and the step that fills it."""
    xp, refresh = _padded(x, geo)
    b, c = x.shape[:2]
    g, r = geo.groups, len(kernel)
    cg = c // g
    win = _windows(xp, out, kernel, geo).reshape((b, g, cg) + out + kernel)
    # [B, g, cg, *O, *K] -> [g, B, *O, cg, *K]
    order = (1, 0) + tuple(range(3, 3 + r)) + (2,) + tuple(range(3 + r, 3 + 2 * r))
    source = win.transpose(order)
    cols = np.empty(source.shape, x.dtype)

    def fill() -> None:
        refresh()
        np.copyto(cols, source)
    return cols.reshape(g, b * math.prod(out), cg * math.prod(kernel)), fill


def _split(a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """`a` reshaped, read each step: a view when `a`'s strides allow, else a fresh copy — never a copy
    made once at plan time and left stale (the arguments may be views of buffers that change)."""
    return a.reshape(shape)


def _into(out: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    view = out.reshape(shape)
    assert np.shares_memory(view, out), "the interpreter's buffers are contiguous"
    return view


def _prepare_conv(node: Node, args: list[np.ndarray], out: np.ndarray, env) -> Step:
    x, w = args
    geo = _Geometry.of(node)
    b, co = out.shape[:2]
    sizes, kernel = out.shape[2:], w.shape[2:]
    g = geo.groups
    cols, fill = _columns(x, sizes, kernel, geo)
    product = np.empty((g, cols.shape[1], co // g), out.dtype)
    # [g, B, P, co/g] -> [B, g, co/g, P], the layout of out
    result = product.reshape(g, b, -1, co // g).transpose(1, 0, 3, 2)
    target = _into(out, (b, g, co // g, -1))

    def step() -> np.ndarray:
        fill()
        np.matmul(cols, _split(w, (g, co // g, -1)).transpose(0, 2, 1), out=product)
        np.copyto(target, result)
        return out
    return step


def _prepare_conv_weight(node: Node, args: list[np.ndarray], out: np.ndarray, env) -> Step:
    x, dy = args
    geo = _Geometry.of(node)
    b, co = dy.shape[:2]
    g = geo.groups
    cols, fill = _columns(x, dy.shape[2:], tuple(node.attrs["kernel"]), geo)
    grads = np.empty((g, co // g, b, math.prod(dy.shape[2:])), dy.dtype)
    flat = grads.reshape(g, co // g, -1)
    target = _into(out, (g, co // g, -1))

    def step() -> np.ndarray:
        fill()
        np.copyto(grads, _split(dy, (b, g, co // g, -1)).transpose(1, 2, 0, 3))   # [g, co/g, B, P]
        np.matmul(flat, cols, out=target)
        return out
    return step


def _prepare_conv_transpose(node: Node, args: list[np.ndarray], out: np.ndarray, env) -> Step:
    y, w = args
    geo = _Geometry.of(node)
    b, co = y.shape[:2]
    sizes, kernel = y.shape[2:], w.shape[2:]
    g, r = geo.groups, len(kernel)
    cg = out.shape[1] // g
    rows = np.empty((g, b, math.prod(sizes), co // g), y.dtype)
    cols = np.empty((g, b * math.prod(sizes), cg * math.prod(kernel)), y.dtype)
    # the columns [g, B, *O, cg, *K] -> at each kernel position, [B, g, cg, *O]
    spread = cols.reshape((g, b) + sizes + (cg,) + kernel)
    order = (1, 0, 2 + r) + tuple(range(2, 2 + r))
    zp = np.zeros(geo.padded_shape(out.shape), out.dtype) if geo.padded else out
    grouped = _into(zp, (b, g, cg) + zp.shape[2:])
    adds = []
    for k in itertools.product(*(range(n) for n in kernel)):
        at = (slice(None),) * 3 + tuple(
            slice(k[a] * geo.dilation[a], k[a] * geo.dilation[a] + (sizes[a] - 1) * geo.stride[a] + 1,
                  geo.stride[a]) for a in range(r))
        adds.append((grouped[at], spread[(Ellipsis,) + k].transpose(order)))
    inner = zp[geo.interior(out.shape)]

    def step() -> np.ndarray:
        np.copyto(rows, _split(y, (b, g, co // g, -1)).transpose(1, 0, 3, 2))   # [g, B, P, co/g]
        np.matmul(rows.reshape(g, -1, co // g), _split(w, (g, co // g, -1)), out=cols)
        zp.fill(0)
        for into, part in adds:
            np.add(into, part, out=into)
        if zp is not out:
            np.copyto(out, inner)
        return out
    return step


PREPARED[Op.CONV] = _prepare_conv
PREPARED[Op.CONV_WEIGHT] = _prepare_conv_weight
PREPARED[Op.CONV_TRANSPOSE] = _prepare_conv_transpose


def _run_once(prepare) -> Callable:
    def run(node, args, out, env):
        if out is None:
            out = np.empty(concrete_shape(node, env), np_dtype(node.dtype))
        return prepare(node, args, out, env)()
    return run


for _op, _prepare in PREPARED.items():
    IMPLS[_op] = _run_once(_prepare)
