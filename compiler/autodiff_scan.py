"""The VJP of `scan`: a scan in the other direction over the body's VJP.

`linearize` differentiates a loop body once, with a cotangent input for each
of its outputs, and splits the joint graph in two:

* the **forward body**: the body, returning as extra ys the per-step values
  the backward reads (the residuals: the carry at step t, an LSTM's gates).
  `save_residuals` swaps it into the forward scan before autodiff runs, so
  the forward loop stores them as it goes;
* the **backward body**, run from the last step to the first: it carries the
  cotangents of the carries, takes at step t the cotangents of the ys, the
  residuals and the xs it reads, and returns the cotangents of the carries
  and of the xs at step t.

What the backward reads but no carry or x changes (a transposed weight) is
recomputed inside it, never saved.  The gradient of a const (a recurrent
weight) is a sum over the steps; rather than carry an accumulator through the
loop (one small matrix product per step), the backward body returns the
operands of each product, and one product outside the loop sums them all:
sum_t a_tᵀ b_t = Aᵀ B with the steps stacked along the contracted axis.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from dln.compiler.autodiff import active_nodes, backprop, vjp
from dln.compiler.cost import size
from dln.compiler.emit import GraphBuilder, Tensor
from dln.compiler.ir import Graph, Node, Op, Phase, TensorType
from dln.compiler.passes.dce import dce
from dln.compiler.symbolic import Dim

# What the backward scan reads at step t, and where the pieces of a const's gradient come from: ("dy", j)
# the cotangent of the forward's j-th ys, ("saved", r) the forward's r-th residual, ("y", j) the forward's
# j-th ys, ("x", j) the forward's j-th xs, ("out", k) the backward's k-th ys.
Source = tuple[str, int]
# How a const's gradient is put together outside the loop from stacked per-step values (see `assemble`).
Plan = tuple

_VIEWS = frozenset({Op.SLICE, Op.RESHAPE, Op.PERMUTE, Op.BROADCAST})


@dataclass(frozen=True)
class Linearized:
    forward: Graph                      # the body with the residuals as extra ys
    backward: Graph
    residuals: int
    carries: tuple[int, ...]            # the float carries: the backward's carries, in order
    reads: tuple[Source, ...]           # the backward's xs, in order
    consts_read: tuple[int, ...]        # the forward consts the backward takes
    dx: tuple[Source | None, ...]       # per forward x: where its stacked cotangent comes from
    dconst: tuple[Plan | None, ...]     # per forward const: how its gradient is assembled


def original_body(n: Node) -> Graph:
    """The body a scan had before `save_residuals` added outputs to it."""
    body, saved = n.attrs["body"], n.attrs.get("residuals", 0)
    if not saved:
        return body
    return Graph(body.name, body.nodes, body.outputs[:len(body.outputs) - saved], body.constraints)


@functools.lru_cache(maxsize=64)
def linearize(body: Graph, n_carry: int, n_xs: int, remat: bool = False) -> Linearized:
    """The forward and backward bodies of `body`'s VJP.  `remat`: the forward saves only its carries and
    the backward recomputes the step from them (less memory, one more forward step's work)."""
    params = body.inputs
    carry_in, x_in, k_in = params[:n_carry], params[n_carry:n_carry + n_xs], params[n_carry + n_xs:]
    outs = [i for _, i in body.outputs]
    active = active_nodes(body, outs, [p.id for p in params if p.dtype.is_float])
    body = save_residuals(body, active)   # a loop in the body saves what its own reverse loop reads

    jb = GraphBuilder(body.name, base=body)
    first_new = jb.next_id
    seed_of: dict[int, Tensor] = {}       # output position -> its cotangent input
    seeds: dict[int, Tensor] = {}
    with jb.at(phase=Phase.BACKWARD):
        for pos, (name, i) in enumerate(body.outputs):
            node = body.node(i)
            if not node.dtype.is_float:
                continue
            seed_of[pos] = t = jb.input(f"d_{name}", node.type, role="carry" if pos < n_carry else "x")
            seeds[i] = t if i not in seeds else jb.add(seeds[i], t)
    cot = backprop(jb, body, seeds, active)
    joint = {n.id: n for n in jb.nodes}
    wanted = {cot[p.id].id for p in params if p.id in cot}
    live = _ancestors(jb.finish(()), wanted)
    # The `result` nodes the VJP of a loop in the body made to read the loop's results are forward
    # values: the forward body computes them too (and saves them when they vary).
    late = [n for n in jb.nodes if n.id >= first_new and n.op is Op.RESULT and n.inputs[0] < first_new]
    body = Graph(body.name, body.nodes + tuple(late), body.outputs, body.constraints)
    forward_ids = {n.id for n in body.nodes}

    varying = {p.id for p in carry_in + x_in}
    for n in body.nodes:
        if any(i in varying for i in n.inputs):
            varying.add(n.id)
    # The forward values the backward reads: per-step ones are scanned (an x, a y the forward returns
    # anyway, or a residual it saves for this), the others recomputed.
    needed = {i for n in jb.nodes if n.id not in forward_ids and n.id in live for i in n.inputs if i in forward_ids}
    needed |= {i for i in wanted if i in forward_ids}
    # A view of a per-step value (a gate's slice) is made again from what it views, not saved apart.
    views = set()
    for n in reversed(body.nodes):
        if n.id in needed and n.id in varying and n.op in _VIEWS and n.op is not Op.INPUT:
            needed.discard(n.id)
            views.add(n.id)
            needed.add(n.inputs[0])
    recompute = _ancestors(body, {i for i in needed if i not in varying}) | views
    if remat:
        recompute = _ancestors(body, needed | views)
        needed = {i for i in recompute if body.node(i).op is Op.INPUT and i in varying}
    x_ids, k_ids = [p.id for p in x_in], [p.id for p in k_in]
    y_ids = outs[n_carry:]
    float_carries = [k for k in range(n_carry) if k in seed_of]
    reads: list[Source] = [("dy", pos - n_carry) for pos in sorted(seed_of) if pos >= n_carry]
    read_node = [seed_of[n_carry + j].id for _, j in reads]
    residuals = []
    for i in sorted(needed & varying):
        if i in x_ids:
            reads.append(("x", x_ids.index(i)))
        elif i in y_ids:
            reads.append(("y", y_ids.index(i)))
        else:
            reads.append(("saved", len(residuals)))
            residuals.append(i)
        read_node.append(i)
    consts_read = [j for j, i in enumerate(k_ids) if i in recompute]

    bb = GraphBuilder(body.name + ".vjp")
    m: dict[int, Tensor] = {}
    with bb.at(phase=Phase.BACKWARD):
        for k in float_carries:
            m[seed_of[k].id] = bb.input(f"d_carry{k}", seed_of[k].type, role="carry")
        for (kind, j), i in zip(reads, read_node):
            m[i] = bb.input(f"{kind}{j}", joint[i].type, role="x")
        for j in consts_read:
            m[k_ids[j]] = bb.input(f"const{j}", k_in[j].type, role="const")
        for n in jb.nodes:
            if n.id not in m and (n.id in recompute or n.id not in forward_ids and n.id in live):
                with bb.at(loc=n.loc, label=n.name):
                    m[n.id] = bb.copy(n, [m[i] for i in n.inputs])

        outputs: list[tuple[str, Tensor]] = []
        for k in float_carries:
            c = cot.get(carry_in[k].id)
            outputs.append((f"d_carry{k}", m[c.id] if c is not None else _zeros(bb, carry_in[k])))
        ys: list[tuple[str, Tensor]] = []
        sources: dict[int, Source] = dict(zip(read_node, reads))

        def piece(i: int) -> Source:
            if i not in sources:
                sources[i] = ("out", len(ys))
                ys.append((f"piece{len(ys)}", m[i]))
            return sources[i]

        dx = []
        for p in x_in:
            dx.append(piece(cot[p.id].id) if p.id in cot else None)   # a read when it is one (dx = dy)

        def plan(i: int) -> Plan:
            n = joint[i]
            if n.op is Op.ADD and all(joint[a].type == n.type for a in n.inputs):
                return ("add", plan(n.inputs[0]), plan(n.inputs[1]))
            if n.op in (Op.PERMUTE, Op.RESHAPE, Op.NEG, Op.BROADCAST) or n.op is Op.CAST and n.dtype.is_float:
                return ("unary", n, plan(n.inputs[0]))
            if n.op is Op.SUM:
                return ("sum", n, piece(n.inputs[0]))
            if n.op is Op.MATMUL and n.type.rank == 2:
                a, b = (joint[k] for k in n.inputs)
                if a.op is Op.PERMUTE and a.attrs["perm"] == (1, 0):
                    return ("matmul_t", piece(a.inputs[0]), piece(b.id))
                return ("matmul", piece(a.id), piece(b.id))
            return ("stack", piece(i))

        dconst = [plan(cot[p.id].id) if p.id in cot else None for p in k_in]
        backward = bb.finish(outputs + ys)
    backward = dce(backward, keep_inputs=True)
    forward = Graph(body.name, body.nodes,
                    body.outputs + tuple((f"saved{r}", i) for r, i in enumerate(residuals)), body.constraints)
    return Linearized(forward, backward, len(residuals), tuple(float_carries), tuple(reads), tuple(consts_read),
                      tuple(dx), tuple(dconst))


def _ancestors(graph: Graph, roots: set[int]) -> set[int]:
    out = set(roots)
    for n in reversed(graph.nodes):
        if n.id in out:
            out.update(n.inputs)
    return out


def _zeros(b: GraphBuilder, like: Node | Tensor) -> Tensor:
    return b.const(0.0, like.type.dtype, like.type.shape)


# Save what the backward reads unless that is more than this many times the carries (per step): then
# save the carries alone and recompute the step in the backward (a body with a large intermediate).
REMAT_RATIO = 8


class _PerRow(dict):
    """Every symbolic dimension taken as 1: sizes per batch row."""

    def __missing__(self, key: str) -> int:
        return 1


_PER_ROW = _PerRow()


def save_residuals(graph: Graph, active: set[int]) -> Graph:
    """`graph` with each scan that autodiff will cross saving its residuals as extra results."""
    nodes = []
    for n in graph.nodes:
        if n.op is Op.SCAN and n.id in active and "residuals" not in n.attrs:
            lin = linearize(n.attrs["body"], n.attrs["carries"], n.attrs["xs"])
            remat = _step_bytes(_saved(lin)) > REMAT_RATIO * _step_bytes(n.results[:n.attrs["carries"]])
            if remat:
                lin = linearize(n.attrs["body"], n.attrs["carries"], n.attrs["xs"], remat=True)
            if lin.residuals:
                saved = _saved(lin)
                attrs = n.attrs.replace(body=lin.forward, residuals=lin.residuals, **({"remat": True} if remat else {}))
                n = Node(n.id, n.op, n.inputs, n.type, attrs, n.loc, n.name, n.phase,
                         n.results + tuple(_stacked(t, n.attrs["length"]) for t in saved))
        nodes.append(n)
    return Graph(graph.name, tuple(nodes), graph.outputs, graph.constraints)


def _saved(lin: Linearized) -> list[TensorType]:
    body = lin.forward
    return [body.node(i).type for _, i in body.outputs[len(body.outputs) - lin.residuals:]]


def _step_bytes(types) -> int:
    return sum(size(t.shape, _PER_ROW) * t.dtype.itemsize for t in types)


def _stacked(t: TensorType, length: Dim) -> TensorType:
    return TensorType(t.dtype, (length,) + t.shape)


@vjp(Op.SCAN)
def _scan(b: GraphBuilder, n: Node, gs: list[Tensor | None], operands: list[Tensor], out: Tensor) -> list:
    n_carry, n_xs, length = n.attrs["carries"], n.attrs["xs"], n.attrs["length"]
    lin = linearize(original_body(n), n_carry, n_xs, n.attrs.get("remat", False))
    results = b.results(out)
    n_ys = len(n.results) - n_carry - n.attrs.get("residuals", 0)
    forward = {"y": results[n_carry:n_carry + n_ys], "saved": results[n_carry + n_ys:],
               "x": operands[n_carry:n_carry + n_xs],
               "dy": [g if g is not None else _zeros(b, y) for g, y in zip(gs[n_carry:], results[n_carry:])]}
    carries = [gs[k] if gs[k] is not None else _zeros(b, results[k]) for k in lin.carries]
    xs = [forward[kind][j] for kind, j in lin.reads]
    consts = [operands[n_carry + n_xs + j] for j in lin.consts_read]
    dcarries, forward["out"] = b.scan(lin.backward, carries, xs, consts, reverse=not n.attrs["reverse"],
                                      length=length)

    def assemble(p: Plan) -> Tensor:
        kind = p[0]
        if kind == "add":
            return b.add(assemble(p[1]), assemble(p[2]))
        if kind == "unary":
            return b.emit(p[1].op, (assemble(p[2]),), p[1].attrs)
        stacked = [forward[s[0]][s[1]] for s in p[1:] if isinstance(s, tuple)]
        if kind == "sum":
            axes = (0,) + tuple(a + 1 for a in p[1].attrs["axes"])
            return b.reshape(b.sum(stacked[0], axes), p[1].shape)
        if kind == "stack":
            return b.sum(stacked[0], 0)
        a, c = stacked                                 # [T, M, K] (matmul_t: [T, K, M]) and [T, K, N]
        if kind == "matmul_t":
            a = b.transpose(b.reshape(a, (length * a.shape[1], a.shape[2])))
        else:
            a = b.reshape(b.permute(a, (1, 0, 2)), (a.shape[1], length * a.shape[2]))
        return b.matmul(a, b.reshape(c, (length * c.shape[1], c.shape[2])))

    grads: list[Any] = [None] * len(operands)
    for pos, k in enumerate(lin.carries):
        grads[k] = dcarries[pos]
    for j, source in enumerate(lin.dx):
        grads[n_carry + j] = forward[source[0]][source[1]] if source is not None else None
    for j, p in enumerate(lin.dconst):
        grads[n_carry + n_xs + j] = assemble(p) if p is not None else None
    return grads
