"""Convolution on NumPy: each of the three convolution ops is one batched GEMM over a window view.

The input (zero-padded into a buffer kept from step to step) is seen through a
strided view `[B, C, *O, *K]` whose element (o, k) is input[o * stride + k *
dilation]; one copy turns it into the column matrix (im2col) of every group,
and `np.matmul` does the rest.  The transposed convolution multiplies first
and then adds the columns back into place (col2im), one strided add per kernel
position.  No Python loop runs over pixels, channels or the batch.

Each op is *prepared* once per plan (`PREPARED`): its scratch buffers (the
padded input, the columns) are allocated then and reused by every step, and a
convolution's weight gradient reuses the columns its forward step filled;
`IMPLS` runs the same preparation once for the plain interpreter.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from dln.compiler.ir import Node, Op
from dln.dsl.diagnostics import Diagnostic, DlnError
from dln.runtime.checks import human_bytes
from dln.runtime.numpy_ops import IMPLS, concrete_shape, np_dtype

Step = Callable[[], np.ndarray]
# prepare(node, args, out, env, shared) -> step; `shared` is one dict per plan (scratch that steps share)
PREPARED: dict[Op, Callable[[Node, list[np.ndarray], np.ndarray, dict[str, Any], dict], Step]] = {}


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


def _scratch(node: Node, what: str, shape: tuple[int, ...], dtype, zeros: bool = False) -> np.ndarray:
    """A buffer of the op's own (the columns, a padded copy), checked against the machine's memory
    first, as the interpreter checks every value: a located E0706, not NumPy failing nameless."""
    from dln.runtime.init import physical_memory  # (init imports the op tables, this module among them)

    need = math.prod(shape) * np.dtype(dtype).itemsize
    available = physical_memory()
    if available is not None and need > available:
        raise DlnError(Diagnostic("E0706", f"{node.op.value} ('{node.name}') needs {human_bytes(need)} for its "
                                           f"{what} {list(shape)}, more than this machine's memory "
                                           f"({human_bytes(available)})", node.loc))
    return np.zeros(shape, dtype) if zeros else np.empty(shape, dtype)


def _padded(node: Node, x: np.ndarray, geo: _Geometry) -> tuple[np.ndarray, Callable[[], None]]:
    """A zero-bordered copy of x kept across steps, and the step that refreshes its interior."""
    if not geo.padded:
        return x, lambda: None
    xp = _scratch(node, "padded input", geo.padded_shape(x.shape), x.dtype, zeros=True)
    inner = xp[geo.interior(x.shape)]
    return xp, lambda: np.copyto(inner, x)


def _windows(xp: np.ndarray, out: tuple[int, ...], kernel: tuple[int, ...], geo: _Geometry) -> np.ndarray:
    """xp [B, C, *P] seen as [B, C, *O, *K]: element (o, k) is xp[..., o * stride + k * dilation]."""
    s = xp.strides
    r = len(kernel)
    strides = s[:2] + tuple(s[2 + a] * geo.stride[a] for a in range(r)) \
        + tuple(s[2 + a] * geo.dilation[a] for a in range(r))
    return np.lib.stride_tricks.as_strided(xp, xp.shape[:2] + out + kernel, strides, writeable=False)


def _columns(node: Node, x: np.ndarray, value: int, out: tuple[int, ...], kernel: tuple[int, ...], geo: _Geometry,
             shared: dict):
    """The column matrices [B, g, C/g * prod(K), prod(O)] and the step that fills them.

    This layout keeps each row's output positions contiguous: the fill copies runs of them, and the
    product with the weight [g, out/g, C/g * prod(K)] lands in the output's own layout [B, out, *O].
    A convolution and the weight gradient that follows it share one matrix (`shared`, one per plan):
    the gradient finds it filled by the forward step and does not fill it again.  They share it when
    they read the same *node* (`value`): the same value within a step.  Not the same buffer: the
    plan hands a buffer on once its value is dead, and its columns would then be stale.
    """
    key = (value, geo, out, kernel)
    if key in shared:
        return shared[key], lambda: None
    xp, refresh = _padded(node, x, geo)
    b, c = x.shape[:2]
    g, r = geo.groups, len(kernel)
    win = _windows(xp, out, kernel, geo).reshape((b, g, c // g) + out + kernel)
    # [B, g, cg, *O, *K] -> [B, g, cg, *K, *O]
    source = win.transpose((0, 1, 2) + tuple(range(3 + r, 3 + 2 * r)) + tuple(range(3, 3 + r)))
    cols = _scratch(node, "column matrix", source.shape, x.dtype)

    def fill() -> None:
        refresh()
        np.copyto(cols, source)
    shared[key] = matrix = cols.reshape(b, g, c // g * math.prod(kernel), math.prod(out))
    return matrix, fill


def _into(out: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    view = out.reshape(shape)
    assert np.shares_memory(view, out), "the interpreter's buffers are contiguous"
    return view


# The arguments may be views of buffers that change between steps, so they are reshaped in each
# step (a view where their strides allow, else a fresh copy), never once at plan time.

def _prepare_conv(node: Node, args: list[np.ndarray], out: np.ndarray, env, shared: dict) -> Step:
    x, w = args
    geo = _Geometry.of(node)
    b, co = out.shape[:2]
    g = geo.groups
    cols, fill = _columns(node, x, node.inputs[0], out.shape[2:], w.shape[2:], geo, shared)
    target = _into(out, (b, g, co // g, -1))
    wide = np.float32 if w.dtype == np.float16 else None   # f16 products summed in f32, as torch's

    def step() -> np.ndarray:
        fill()
        np.matmul(w.reshape(1, g, co // g, -1), cols, out=target, dtype=wide)     # [B, g, out/g, P]
        return out
    return step


def _prepare_conv_weight(node: Node, args: list[np.ndarray], out: np.ndarray, env, shared: dict) -> Step:
    x, dy = args
    geo = _Geometry.of(node)
    b, co = dy.shape[:2]
    g = geo.groups
    cols, fill = _columns(node, x, node.inputs[0], dy.shape[2:], tuple(node.attrs["kernel"]), geo, shared)
    # f16 products are summed over the batch in f32, as torch accumulates them
    wide = np.float32 if dy.dtype == np.float16 else dy.dtype
    per_example = _scratch(node, "products per example", (b, g, co // g, cols.shape[2]), wide)
    target = _into(out, (g, co // g, -1))

    def step() -> np.ndarray:
        fill()
        # one small product per example, then their sum: [B, g, out/g, P] @ [B, g, P, cg * prod(K)]
        np.matmul(dy.reshape(b, g, co // g, -1), cols.transpose(0, 1, 3, 2), out=per_example, dtype=wide)
        np.sum(per_example, axis=0, out=target)
        return out
    return step


def _prepare_conv_transpose(node: Node, args: list[np.ndarray], out: np.ndarray, env, shared: dict) -> Step:
    geo = _Geometry.of(node)
    if len(geo.stride) >= 2 and all(s == 1 for s in geo.stride):
        return _prepare_conv_transpose_rows(node, args, out, geo)
    y, w = args
    b, co = y.shape[:2]
    sizes, kernel = y.shape[2:], w.shape[2:]
    g, r = geo.groups, len(kernel)
    cg = out.shape[1] // g
    cols = _scratch(node, "column matrix", (b, g, cg * math.prod(kernel), math.prod(sizes)), y.dtype)
    # the columns [B, g, cg, *K, *O]: at each kernel position, a [B, g, cg, *O] slab to add into place
    spread = cols.reshape((b, g, cg) + kernel + sizes)
    zp = _scratch(node, "padded output", geo.padded_shape(out.shape), out.dtype, zeros=True) if geo.padded else out
    grouped = _into(zp, (b, g, cg) + zp.shape[2:])
    adds = []
    for k in itertools.product(*(range(n) for n in kernel)):
        at = (slice(None),) * 3 + tuple(
            slice(k[a] * geo.dilation[a], k[a] * geo.dilation[a] + (sizes[a] - 1) * geo.stride[a] + 1,
                  geo.stride[a]) for a in range(r))
        adds.append((grouped[at], spread[(slice(None),) * 3 + k]))
    inner = zp[geo.interior(out.shape)]

    def step() -> np.ndarray:
        # [g, cg * prod(K), out/g] @ [B, g, out/g, P]
        np.matmul(w.reshape(1, g, co // g, -1).transpose(0, 1, 3, 2), y.reshape(b, g, co // g, -1), out=cols,
                  dtype=np.float32 if w.dtype == np.float16 else None)
        zp.fill(0)
        for into, part in adds:
            np.add(into, part, out=into)
        if zp is not out:
            np.copyto(out, inner)
        return out
    return step


def _prepare_conv_transpose_rows(node: Node, args: list[np.ndarray], out: np.ndarray, geo: _Geometry) -> Step:
    """Stride 1 (a convolution's input gradient): col2im with long rows.  Each kernel position's slab
    [B, C, *O] added into its place is, as above, a strided add whose innermost run is one output row
    (8 values for LeNet's second layer: 2.3 ms for its 25 adds).  Here the gradient's rows are first
    widened with zeros to the padded output's width, so in the flattened output plane every slab is one
    contiguous run starting at its kernel position's offset: the zero columns land on the positions
    the row wraps onto and add nothing.  25 adds of runs of O0 * P1 values instead."""
    y, w = args
    b, co = y.shape[:2]
    sizes, kernel = y.shape[2:], w.shape[2:]
    g, r = geo.groups, len(kernel)
    cg = out.shape[1] // g
    padded = geo.padded_shape(out.shape)[2:]
    wide = (sizes[0],) + padded[1:]
    flat = [math.prod(padded[a + 1:]) for a in range(r)]   # a padded plane's element strides
    length = math.prod(wide)
    margin = sum((kernel[a] - 1) * geo.dilation[a] * flat[a] for a in range(1, r))
    ywide = _scratch(node, "widened gradient", (b, co) + wide, y.dtype, zeros=True)
    y_in = ywide[(slice(None), slice(None)) + tuple(slice(0, n) for n in sizes)]
    cols = _scratch(node, "column matrix", (b, g, cg * math.prod(kernel), length), y.dtype)
    spread = cols.reshape((b, g, cg) + kernel + (length,))
    plane = _scratch(node, "output planes", (b, g, cg, math.prod(padded) + margin), out.dtype)
    adds = []
    for k in itertools.product(*(range(n) for n in kernel)):
        at = sum(k[a] * geo.dilation[a] * flat[a] for a in range(r))
        adds.append((plane[..., at:at + length], spread[(slice(None),) * 3 + k]))
    inner = plane[..., :math.prod(padded)].reshape((b, g * cg) + padded)
    assert np.shares_memory(inner, plane)
    inner = inner[geo.interior(out.shape)]

    def step() -> np.ndarray:
        np.copyto(y_in, y)
        np.matmul(w.reshape(1, g, co // g, -1).transpose(0, 1, 3, 2), ywide.reshape(b, g, co // g, -1), out=cols)
        plane.fill(0)
        for into, part in adds:
            np.add(into, part, out=into)
        np.copyto(out, inner)
        return out
    return step


def _unless_empty(prepare):
    """An empty operand (a batch of 0, no channels) makes every sum empty: the result is zeros."""
    def prepared(node: Node, args: list[np.ndarray], out: np.ndarray, env, shared: dict) -> Step:
        if out.size == 0 or any(a.size == 0 for a in args):
            return lambda: (out.fill(0), out)[1]
        return prepare(node, args, out, env, shared)
    return prepared


PREPARED[Op.CONV] = _unless_empty(_prepare_conv)
PREPARED[Op.CONV_WEIGHT] = _unless_empty(_prepare_conv_weight)
PREPARED[Op.CONV_TRANSPOSE] = _unless_empty(_prepare_conv_transpose)


def _run_once(prepare) -> Callable:
    def run(node, args, out, env):
        if out is None:
            out = np.empty(concrete_shape(node, env), np_dtype(node.dtype))
        return prepare(node, args, out, env, {})()
    return run


for _op, _prepare in PREPARED.items():
    IMPLS[_op] = _run_once(_prepare)
