"""Folding a per-channel affine map into the convolution or matrix product before it.

In evaluation mode batch norm is `(z - mean) * rsqrt(var + eps) * weight + bias`
with every vector a parameter or model state: an affine map `a * z + c` per
output channel of `z`.  When `z = conv(x, W)` (or `x @ M`) and nothing else
reads the steps between, the map moves into the weights:

    a * conv(x, W) + c  =  conv(x, W * a[:, None, ...]) + c

so the activations are read once, by the convolution, whose epilogue adds `c`;
the normalization pass over them disappears.  The new weight is a small
computation on parameters alone (its size is the weight's, not the batch's).
Only chains that scale by such a vector are rewritten: a bias add alone is left
as it is.  Training graphs are never folded (batch norm uses batch statistics
there).
"""

from __future__ import annotations

from dataclasses import dataclass

from dln.compiler.emit import GraphBuilder, Tensor
from dln.compiler.ir import Graph, Node, Op
from dln.compiler.passes.rewrite import rewrite

# Division is not folded: `W * (1 / v)` with a zero in v puts infinities of both signs in one weight
# column, which the product sums to NaN where the unfolded graph had -inf.  (Batch norm multiplies.)
_STEPS = (Op.ADD, Op.SUB, Op.MUL)


@dataclass(frozen=True)
class _Affine:
    """`a * (x ⊛ w) + c`, `a` and `c` per output channel ([C]; None: 1 and 0)."""
    product: Node          # the original conv or matmul
    x: int
    w: int
    a: Tensor | None
    c: Tensor | None


def fold_affine(graph: Graph) -> Graph:
    """The graph with every foldable chain folded; `graph` itself when there is none (the caller then
    need not optimize again)."""
    users = graph.users()
    fixed = _weight_only(graph)
    chains: dict[int, _Affine] = {}     # node id (after rewriting) -> the map it computes
    origin: dict[int, int] = {}         # a product made here -> the node it stands for

    def start(b: GraphBuilder, t: Node) -> _Affine | None:
        if t.id in chains:
            return chains[t.id]
        if t.op is Op.CONV and t.inputs[1] in fixed or t.op is Op.MATMUL and t.inputs[1] in fixed \
                and len(b.index[t.inputs[1]].shape) == 2:
            return _Affine(t, t.inputs[0], t.inputs[1], None, None)
        return None

    def rule(b: GraphBuilder, n: Node) -> int | None:
        if n.op not in _STEPS or not n.dtype.is_float:
            return None
        for side in (0, 1):
            t, v = b.index[n.inputs[side]], b.index[n.inputs[1 - side]]
            chain = start(b, t)
            if chain is None or len(users.get(origin.get(t.id, t.id), ())) != 1:
                continue
            axis = 1 if chain.product.op is Op.CONV else len(t.shape) - 1
            vec = _channel_vector(b, v, t.shape, axis, fixed)
            if vec is None:
                continue
            a, c = _step(b, n.op, side, chain.a, chain.c, vec)
            folded = _Affine(chain.product, chain.x, chain.w, a, c)
            if a is None:                   # an add alone: keep the node, remember the map
                chains[n.id] = folded
                return None
            out = _materialize(b, folded)
            chains[out.id] = folded
            origin[out.id] = n.id
            return out.id
        return None

    folded = rewrite(graph, rule)
    return folded if origin else graph


def _weight_only(graph: Graph) -> set[int]:
    """Nodes computed from parameters, model state and constants alone: never from data."""
    out: set[int] = set()
    for n in graph.nodes:
        if n.op is Op.INPUT:
            if n.attrs.get("role", "input") != "input":
                out.add(n.id)
        elif n.op in (Op.CONST, Op.IOTA) or n.inputs and all(i in out for i in n.inputs) and n.op is not Op.RAND:
            out.add(n.id)
    return out


def _channel_vector(b: GraphBuilder, v: Node, shape, axis: int, fixed: set[int]) -> Tensor | None:
    """v as a [C] vector when it is constant over every axis but `axis` and computed from weights alone."""
    while v.op is Op.BROADCAST:
        v = b.index[v.inputs[0]]
    if v.id not in fixed:
        return None
    channels = shape[axis]
    if not isinstance(channels, int):
        return None
    if v.op is Op.CONST:                # a fill of any shape is one number
        return b.const(v.attrs["value"], v.dtype, (channels,))
    dims = (1,) * (len(shape) - len(v.shape)) + tuple(v.shape)
    if len(dims) != len(shape) or any(d != 1 for i, d in enumerate(dims) if i != axis):
        return None
    vec = b.reshape(b.tensor(v.id), (dims[axis],))
    return vec if dims[axis] == channels else b.broadcast_to(vec, (channels,))


def _step(b: GraphBuilder, op: Op, side: int, a: Tensor | None, c: Tensor | None, v: Tensor):
    """(a, c) after one more step `z op v` (side 0) or `v op z` (side 1), op one of add, sub, mul."""
    if op is Op.ADD:
        return a, v if c is None else b.add(c, v)
    if op is Op.SUB and side == 0:
        return a, b.neg(v) if c is None else b.sub(c, v)
    if op is Op.SUB:                    # v - (a z + c) = (-a) z + (v - c)
        minus_one = b.broadcast_to(b.const(-1.0, v.dtype), v.shape)
        return minus_one if a is None else b.neg(a), v if c is None else b.sub(v, c)
    return (v if a is None else b.mul(a, v)), (None if c is None else b.mul(c, v))


def _materialize(b: GraphBuilder, f: _Affine) -> Tensor:
    x, w = b.tensor(f.x), b.tensor(f.w)
    p = f.product
    if p.op is Op.CONV:
        scaled = b.mul(w, b.reshape(f.a, (w.shape[0],) + (1,) * (w.rank - 1)))
        with b.at(loc=p.loc, label=p.name, phase=p.phase):     # still the layer's convolution
            out = b.emit(Op.CONV, (x, scaled), p.attrs)
        if f.c is not None:
            out = b.add(out, b.reshape(f.c, (1, out.shape[1]) + (1,) * (out.rank - 2)))
        return out
    scaled = b.mul(w, f.a)
    with b.at(loc=p.loc, label=p.name, phase=p.phase):
        out = b.emit(Op.MATMUL, (x, scaled))
    return out if f.c is None else b.add(out, f.c)
