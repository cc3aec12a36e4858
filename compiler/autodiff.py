"""Reverse-mode autodiff on the IR: a VJP rule per primitive, a backward graph out.

`VJP[op](b, node, g, xs, out)` receives the graph builder, the forward node,
the cotangent `g` of its output, its inputs `xs` and its output `out` (all as
`Tensor` handles into the same graph) and returns one cotangent per input
(None for "no gradient").  Rules emit ordinary nodes, so the backward pass is
a graph like any other: printable, optimizable, fusable, runnable by every
backend.  Gradients match torch's, including its choices at kinks (relu at 0
is 0, ties of maximum split the gradient).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

from dln.compiler.emit import GraphBuilder, Tensor
from dln.compiler.ir import Graph, GroupOp, Node, Op, Phase
from dln.compiler.naming import gradient_name
from dln.compiler.shapes import conv_transpose_size
from dln.compiler.symbolic import Dim, Shape
from dln.dsl.diagnostics import Diagnostic, DlnError

Cotangents = Sequence["Tensor | None"]
VjpRule = Callable[[GraphBuilder, Node, Tensor, list[Tensor], Tensor], Cotangents]
VJP: dict[Op, VjpRule] = {}

# Ops with no inputs, or whose outputs carry no gradient (integers, booleans, randomness).
NO_GRADIENT = frozenset({Op.INPUT, Op.CONST, Op.IOTA, Op.SYMSIZE, Op.RAND, Op.ARGMAX, Op.SIGN, Op.FLOOR, Op.NOT,
                         Op.DETACH, Op.CHECK_INDEX}) \
    | GroupOp.Compare | {Op.AND, Op.OR}


def vjp(*ops: Op):
    def register(fn: VjpRule) -> VjpRule:
        for op in ops:
            VJP[op] = fn
        return fn
    return register


# ---- elementwise ------------------------------------------------------------------------------------------

@vjp(Op.NEG)
def _neg(b, n, g, xs, out):
    return [b.neg(g)]


@vjp(Op.ALL_REDUCE)
def _all_reduce(b, n, g, xs, out):
    # Every rank's statistic is the sum of all ranks' contributions, so each contribution's cotangent is the
    # sum of every rank's cotangent of the statistic: an all_reduce again.  Weighted, as each rank's loss is
    # a mean over its own rows (dln.runtime.distributed.Communicator).
    return [b.emit(Op.ALL_REDUCE, (g,), {"weighted": True})]


@vjp(Op.EXP)
def _exp(b, n, g, xs, out):
    return [b.mul(g, out)]


@vjp(Op.LOG)
def _log(b, n, g, xs, out):
    return [b.div(g, xs[0])]


@vjp(Op.LOG1P)
def _log1p(b, n, g, xs, out):
    return [b.div(g, b.add(xs[0], 1.0))]


@vjp(Op.SQRT)
def _sqrt(b, n, g, xs, out):
    return [b.div(g, b.mul(out, 2.0))]


@vjp(Op.RSQRT)
def _rsqrt(b, n, g, xs, out):
    return [b.mul(b.mul(g, -0.5), b.mul(b.mul(out, out), out))]


@vjp(Op.ABS)
def _abs(b, n, g, xs, out):
    return [b.mul(g, b.unary(Op.SIGN, xs[0]))]


@vjp(Op.SIN)
def _sin(b, n, g, xs, out):
    return [b.mul(g, b.unary(Op.COS, xs[0]))]


@vjp(Op.COS)
def _cos(b, n, g, xs, out):
    return [b.neg(b.mul(g, b.unary(Op.SIN, xs[0])))]


@vjp(Op.TANH)
def _tanh(b, n, g, xs, out):
    return [b.mul(g, b.sub(1.0, b.mul(out, out)))]


@vjp(Op.SIGMOID)
def _sigmoid(b, n, g, xs, out):
    return [b.mul(g, b.mul(out, b.sub(1.0, out)))]


@vjp(Op.RELU)
def _relu(b, n, g, xs, out):
    # torch's threshold_backward: 0 where the output is <= 0, else the gradient (a NaN output passes it)
    return [b.where(b.compare(Op.LE, out, 0.0), 0.0, g)]


@vjp(Op.ERF)
def _erf(b, n, g, xs, out):
    x = xs[0]
    return [b.mul(g, b.mul(b.exp(b.neg(b.mul(x, x))), 2.0 / math.sqrt(math.pi)))]


@vjp(Op.ATAN)
def _atan(b, n, g, xs, out):
    x = xs[0]
    return [b.div(g, b.add(b.mul(x, x), 1.0))]


@vjp(Op.CAST)
def _cast(b, n, g, xs, out):
    return [b.cast(g, xs[0].dtype) if xs[0].dtype.is_float else None]


@vjp(Op.ADD)
def _add(b, n, g, xs, out):
    return [g, g]


@vjp(Op.SUB)
def _sub(b, n, g, xs, out):
    return [g, b.neg(g)]


@vjp(Op.MUL)
def _mul(b, n, g, xs, out):
    x, y = xs
    return [b.mul(g, y), b.mul(g, x)]


@vjp(Op.DIV)
def _div(b, n, g, xs, out):
    x, y = xs
    return [b.div(g, y), b.neg(b.div(b.mul(g, x), b.mul(y, y)))]


@vjp(Op.POW)
def _pow(b, n, g, xs, out):
    x, y = xs
    # d/dx: y * x^(y-1), zero where y == 0 (torch's pow_backward_self)
    dx = b.mul(g, b.mul(y, b.pow(x, b.sub(y, 1.0))))
    dx = b.where(b.compare(Op.EQ, y, 0.0), 0.0, dx)
    # d/dy: x^y * log(x), zero where x == 0 and y >= 0 (torch's pow_backward_exponent)
    zero_base = b.logical(Op.AND, b.compare(Op.EQ, x, 0.0), b.compare(Op.GE, y, 0.0))
    safe_x = b.where(zero_base, 1.0, x)
    dy = b.where(zero_base, 0.0, b.mul(g, b.mul(out, b.log(safe_x))))
    return [dx, dy]


@vjp(Op.MOD)
def _mod(b, n, g, xs, out):
    x, y = xs
    # remainder(x, y) = x - floor(x / y) * y, and floor(x / y) = (x - out) / y
    return [g, b.neg(b.mul(g, b.div(b.sub(x, out), y)))]


def _extremum(b, n, g, xs, out, win: Op):
    x, y = xs
    half = b.mul(g, 0.5)
    tie = b.compare(Op.EQ, x, y)
    gx = b.where(b.compare(win, x, y), g, b.where(tie, half, 0.0))
    gy = b.where(b.compare(win, y, x), g, b.where(tie, half, 0.0))
    return [gx, gy]


@vjp(Op.MAXIMUM)
def _maximum(b, n, g, xs, out):
    return _extremum(b, n, g, xs, out, Op.GT)


@vjp(Op.MINIMUM)
def _minimum(b, n, g, xs, out):
    return _extremum(b, n, g, xs, out, Op.LT)


@vjp(Op.WHERE)
def _where(b, n, g, xs, out):
    c = xs[0]
    return [None, b.where(c, g, 0.0), b.where(c, 0.0, g)]


# ---- reductions ---------------------------------------------------------------------------------------------

def _to_input_shape(b: GraphBuilder, n: Node, g: Tensor, x: Tensor) -> Tensor:
    """The reduction's cotangent broadcast back over the reduced axes."""
    axes = n.attrs["axes"]
    return b.broadcast_to(b.reshape(g, b.keepdim_shape(x, axes)), x.shape)


@vjp(Op.SUM)
def _sum(b, n, g, xs, out):
    return [_to_input_shape(b, n, g, xs[0])]


def _max_min(b, n, g, xs, out):
    # Ties share the gradient evenly (torch.amax / torch.max over all elements).
    x = xs[0]
    axes = n.attrs["axes"]
    hit = b.compare(Op.EQ, x, _to_input_shape(b, n, out, x))
    count = b.sum(b.cast(hit, x.dtype), axes, keepdim=True)
    share = b.div(b.reshape(g, b.keepdim_shape(x, axes)), count)
    return [b.where(hit, b.broadcast_to(share, x.shape), 0.0)]


VJP[Op.MAX] = VJP[Op.MIN] = _max_min


# ---- movement -------------------------------------------------------------------------------------------------

@vjp(Op.RESHAPE)
def _reshape(b, n, g, xs, out):
    return [b.reshape(g, xs[0].shape)]


@vjp(Op.BROADCAST)
def _broadcast(b, n, g, xs, out):
    x = xs[0]
    lead = g.rank - x.rank
    axes = list(range(lead)) + [lead + i for i, d in enumerate(x.shape) if d == 1 and g.shape[lead + i] != 1]
    if not axes:
        return [b.reshape(g, x.shape)]
    return [b.reshape(b.sum(g, axes, keepdim=False), x.shape)]


@vjp(Op.PERMUTE)
def _permute(b, n, g, xs, out):
    perm = n.attrs["perm"]
    inverse = [0] * len(perm)
    for i, p in enumerate(perm):
        inverse[p] = i
    return [b.permute(g, inverse)]


@vjp(Op.SLICE)
def _slice(b, n, g, xs, out):
    x = xs[0]
    pads = []
    for axis, (start, stop, step) in enumerate(zip(n.attrs["starts"], n.attrs["stops"], n.attrs["steps"])):
        if step > 1:
            g = _unstride(b, g, axis, step)
        size: Dim = g.shape[axis]
        after = x.shape[axis] - start - size
        if isinstance(after, int) and after < 0:
            g = b.slice_axis(g, axis, 0, size + after)
            after = 0
        pads.append((start, after))
    # one pad for every axis (a window tap of a pooling is sliced on four axes at once)
    return [b.pad(g, pads, 0.0) if any(lo != 0 or hi != 0 for lo, hi in pads) else g]


def _unstride(b: GraphBuilder, g: Tensor, axis: int, step: int) -> Tensor:
    """[..., n, ...] -> [..., n * step, ...] with the values at multiples of step, zeros between."""
    shape = g.shape
    g = b.reshape(g, shape[:axis + 1] + (1,) + shape[axis + 1:])
    pads = [(0, 0)] * g.rank
    pads[axis + 1] = (0, step - 1)
    g = b.pad(g, pads, 0.0)
    return b.reshape(g, shape[:axis] + (shape[axis] * step,) + shape[axis + 1:])


@vjp(Op.PAD)
def _pad(b, n, g, xs, out):
    x = xs[0]
    starts = [lo for lo, _ in n.attrs["pads"]]
    stops = [lo + d for (lo, _), d in zip(n.attrs["pads"], x.shape)]
    return [b.slice(g, starts, stops, [1] * x.rank)]


@vjp(Op.CONCAT)
def _concat(b, n, g, xs, out):
    axis = n.attrs["axis"]
    grads = []
    start: Dim = 0
    for x in xs:
        stop = start + x.shape[axis]
        grads.append(b.slice_axis(g, axis, start, stop))
        start = stop
    return grads


# ---- indexing and contraction ------------------------------------------------------------------------------

@vjp(Op.GATHER)
def _gather(b, n, g, xs, out):
    x, index = xs
    return [b.scatter_add(x.shape, n.attrs["axis"], index, g), None]


@vjp(Op.SCATTER_ADD)
def _scatter_add(b, n, g, xs, out):
    index, _ = xs
    return [None, b.gather(g, n.attrs["axis"], index)]


@vjp(Op.MATMUL)
def _matmul(b, n, g, xs, out):
    x, y = xs
    return [b.matmul(g, b.transpose(y)), b.matmul(b.transpose(x), g)]


# Each convolution op is bilinear and its two adjoints are the other two ops, so the set closes under
# differentiation (a gradient of a gradient is again a convolution).

def _conv_geometry(n: Node) -> dict:
    return {k: n.attrs[k] for k in ("stride", "padding", "dilation", "groups")}


def _output_padding(n: Node, size: Shape, out: Shape, kernel: Shape) -> tuple[int, ...]:
    """What conv_transpose must add to turn `out` back into `size`: the rows past the last window."""
    extra = []
    for a, (s, o, k) in enumerate(zip(size, out, kernel)):
        e = s - conv_transpose_size(o, k, n.attrs["stride"][a], n.attrs["padding"][a], n.attrs["dilation"][a], 0)
        assert isinstance(e, int), f"a symbolic output padding {e}"
        extra.append(e)
    return tuple(extra)


@vjp(Op.CONV)
def _conv(b, n, g, xs, out):
    x, w = xs
    geometry = _conv_geometry(n)
    pad = _output_padding(n, x.shape[2:], g.shape[2:], w.shape[2:])
    return [b.emit(Op.CONV_TRANSPOSE, (g, w), {**geometry, "output_padding": pad}),
            b.emit(Op.CONV_WEIGHT, (x, g), {**geometry, "kernel": tuple(w.shape[2:])})]


@vjp(Op.CONV_TRANSPOSE)
def _conv_transpose(b, n, g, xs, out):
    y, w = xs
    geometry = _conv_geometry(n)
    dy = b.emit(Op.CONV, (g, w), geometry)
    # An output_padding of a stride or more (torch allows it below the dilation) leaves whole windows
    # past y's last position: their gradient is dropped, and y reads as zeros there.
    extra = [(0, full - size) for full, size in zip(dy.shape[2:], y.shape[2:])]
    if any(hi for _, hi in extra):
        dy = b.slice(dy, [0] * dy.rank, y.shape, [1] * dy.rank)
        y = b.pad(y, [(0, 0), (0, 0)] + extra, 0.0)
    return [dy, b.emit(Op.CONV_WEIGHT, (g, y), {**geometry, "kernel": tuple(w.shape[2:])})]


@vjp(Op.CONV_WEIGHT)
def _conv_weight(b, n, g, xs, out):
    x, dy = xs
    geometry = _conv_geometry(n)
    pad = _output_padding(n, x.shape[2:], dy.shape[2:], g.shape[2:])
    return [b.emit(Op.CONV_TRANSPOSE, (dy, g), {**geometry, "output_padding": pad}),
            b.emit(Op.CONV, (x, g), geometry)]


@dataclass(frozen=True)
class Part:
    """The cotangent of one result of a node with several results: `backprop` gathers them into a list."""
    index: int
    value: Tensor


@vjp(Op.RESULT)
def _result(b, n, g, xs, out):
    return [Part(n.attrs["index"], g)]


@vjp(Op.COMPOSITE)
def _composite(b, n, g, xs, out):
    """The composite's own VJP: `grad` has decomposed every composite without one."""
    from dln.compiler.composites import of

    return of(n).vjp(b, n, g, xs, out)


def missing_rules() -> list[Op]:
    return [op for op in Op if op not in VJP and op not in NO_GRADIENT]


# ---- the transformation ---------------------------------------------------------------------------------------

def carries_gradient(n: Node) -> bool:
    return n.op not in NO_GRADIENT and any(t.dtype.is_float for t in n.types)


def active_nodes(graph: Graph, outputs: Sequence[int], wrt: Sequence[int]) -> set[int]:
    """Nodes on a float path from some `wrt` to some of `outputs` (DETACH cuts paths)."""
    forward = set(wrt)
    for n in graph.nodes:
        if carries_gradient(n) and any(i in forward for i in n.inputs):
            forward.add(n.id)
    backward = set(outputs)
    for n in reversed(graph.nodes):
        if n.id in backward and n.op not in NO_GRADIENT:
            backward.update(n.inputs)
    return forward & backward


def backprop(b: GraphBuilder, graph: Graph, seeds: dict[int, Tensor], active: set[int]) -> dict[int, Tensor]:
    """Reverse mode over `graph`'s nodes (already in `b`) from the cotangents `seeds`: every active node's
    cotangent.  A node with several results gets the list of its results' cotangents (None where a result
    has none)."""
    cotangent: dict[int, Tensor] = dict(seeds)
    parts: dict[int, list[Tensor | None]] = {}
    for n in reversed(graph.nodes):
        if n.id not in active or n.op is Op.INPUT:
            continue
        g = parts.get(n.id) if n.results else cotangent.get(n.id)
        if g is None:
            continue
        xs = [b.tensor(i) for i in n.inputs]
        first = b.next_id
        with b.at(loc=n.loc, label=gradient_name(n.name), phase=Phase.BACKWARD):
            contributions = VJP[n.op](b, n, g, xs, b.tensor(n.id))
            for i, c in zip(n.inputs, contributions):
                if c is None or i not in active:
                    continue
                if isinstance(c, Part):
                    got = parts.setdefault(i, [None] * len(graph.node(i).types))
                    got[c.index] = c.value if got[c.index] is None else b.add(got[c.index], c.value)
                    continue
                if c.dtype is not graph.node(i).dtype:
                    c = b.cast(c, graph.node(i).dtype)
                cotangent[i] = c if i not in cotangent else accumulate(b, cotangent[i], c)
                _name_gradient(b, graph, i, cotangent[i], first)
    return cotangent


def _name_gradient(b: GraphBuilder, graph: Graph, x: int, cotangent: Tensor, first: int) -> None:
    """Name a cotangent this VJP made after the value it is the gradient of (`grad:logits`, where the
    loss's VJP made it); nodes it passes on unchanged (an add's) keep their name.  A transposed or
    reshaped value holds its source's elements: its gradient is named after the source (`grad:h.weight`
    for the matrix product with `h.weight` transposed)."""
    node = graph.node(x)
    while node.op in (Op.PERMUTE, Op.RESHAPE):
        node = graph.node(node.inputs[0])
    name = node.attrs["name"] if node.op is Op.INPUT else node.name
    if cotangent.id >= first and name:
        b.rename(cotangent, gradient_name(name))


def accumulate(b: GraphBuilder, x: Tensor, y: Tensor) -> Tensor:
    """x + y, two cotangents of one value.  The cotangents of slices of disjoint columns (an LSTM's four
    gates) are zero-padded pieces: they are put side by side (one concat) rather than padded and added."""
    pieces = _padded_pieces(b, x), _padded_pieces(b, y)
    if None in pieces or x.type != y.type or pieces[0][0] != pieces[1][0]:
        return b.add(x, y)
    axis, size = pieces[0][0], x.shape[pieces[0][0]]
    spans = sorted(pieces[0][1] + pieces[1][1], key=lambda p: p[0])
    if any(a[0] + a[1].shape[axis] > z[0] for a, z in zip(spans, spans[1:])):
        return b.add(x, y)   # overlapping
    parts, at = [], spans[0][0]
    for start, t in spans:
        if start > at:
            parts.append(b.const(0.0, x.dtype, tuple(start - at if k == axis else d for k, d in enumerate(x.shape))))
        parts.append(t)
        at = start + t.shape[axis]
    joined = b.concat(parts, axis)
    if spans[0][0] == 0 and at == size:
        return joined
    pads = [(0, 0)] * x.rank
    pads[axis] = (spans[0][0], size - at)
    return b.pad(joined, pads, 0.0)


def _padded_pieces(b: GraphBuilder, t: Tensor) -> tuple[int, list[tuple[int, Tensor]]] | None:
    """(axis, [(start, piece), ...]) when `t` is pieces of one axis padded with zeros, else None."""
    n = b.node(t)
    if n.op is not Op.PAD or n.attrs["value"] != 0.0:
        return None
    padded = [k for k, p in enumerate(n.attrs["pads"]) if p != (0, 0)]
    if len(padded) != 1 or not all(isinstance(v, int) for v in n.attrs["pads"][padded[0]] + (t.shape[padded[0]],)):
        return None
    axis, lo = padded[0], n.attrs["pads"][padded[0]][0]
    inner = b.node(n.inputs[0])
    if inner.op is Op.CONCAT and inner.attrs["axis"] == axis:
        pieces, at = [], lo
        for i in inner.inputs:
            piece = b.tensor(i)
            if b.node(piece).op is not Op.CONST:   # the zero gaps of an earlier merge
                pieces.append((at, piece))
            at += piece.shape[axis]
        return axis, pieces
    return axis, [(lo, b.tensor(n.inputs[0]))]


def grad(graph: Graph, loss: int, wrt: Sequence[int]) -> tuple[Graph, dict[int, int | None], GraphBuilder]:
    """Append the backward pass of scalar `loss` with respect to `wrt` to `graph`.

    Returns the builder holding forward + backward nodes and, per `wrt` node,
    its gradient node (None where the loss does not depend on it: torch's
    `grad is None`).
    """
    loss_node = graph.node(loss)
    if loss_node.shape != ():
        raise DlnError(Diagnostic("E0602", f"the objective must be a scalar, got {loss_node.type}", loss_node.loc))
    if not loss_node.dtype.is_float:
        raise DlnError(Diagnostic("E0602", f"the objective must be a float, got {loss_node.type}", loss_node.loc))
    # Composites without a VJP of their own are differentiated through their decomposition (which may
    # replace nodes: the loss is found again by name; the caller's outputs are renamed the same way).
    graph = decompose(graph.with_outputs(graph.outputs + (("\0loss", loss),)), lambda n: of(n).has_vjp(n.attrs))
    loss = graph.outputs[-1][1]
    graph = graph.with_outputs(graph.outputs[:-1])
    active = active_nodes(graph, [loss], wrt)
    # A loop saves, as extra results, what its reverse loop will read.
    graph = save_residuals(graph, active)
    b = GraphBuilder(graph.name, base=graph)
    with b.at(loc=loss_node.loc, label=gradient_name(loss_node.name), phase=Phase.BACKWARD):
        seed = b.const(1.0, loss_node.dtype)
    cotangent = backprop(b, graph, {loss: seed}, active)
    grads = {w: (cotangent[w].id if w in cotangent else None) for w in wrt}
    return b.finish(graph.outputs), grads, b


from dln.compiler.autodiff_scan import save_residuals  # noqa: E402  (registers the scan's VJP)
from dln.compiler.composites import of  # noqa: E402
from dln.compiler.passes.decompose import decompose  # noqa: E402
