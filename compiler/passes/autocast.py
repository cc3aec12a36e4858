"""Mixed precision: the forward graph as `torch.autocast` would run it.

Run on the model's forward graph *before* autodiff, so the backward pass
follows the casts it inserts (the VJP of a cast casts back: a float32
parameter cast to bf16 for a matmul gets a float32 gradient).  Parameters,
model state and optimizer state stay float32 — the master weights; only the
values computed from them change type.

The op table, after torch's autocast lists (`autocast_mode.cpp`; CUDA's
"lower precision" and "fp32" lists — the CPU list keeps exp, log, sum and
softmax in the input type, CUDA keeps them in fp32: dln follows CUDA, the
target its kernels are for, so a bf16 CPU twin differs from it by bf16 rounding
in those ops only):

=======================================  =========================================================
ops                                      run in
=======================================  =========================================================
matmul, conv, conv_transpose,            the low type (bf16 or f16): float32 inputs cast down; the
conv_weight, attention (`sdpa`)          kernels accumulate in float32 and round the result
add of such a product and a parameter    the low type (the bias of F.linear / F.conv2d under autocast)
exp, log, log1p, rsqrt, pow,             float32: narrower inputs cast up (torch's fp32 list: exp,
sum (and so mean, softmax, log-softmax,  log, log1p, rsqrt, pow, sum, softmax, log_softmax,
norms' statistics), a number divided     cross_entropy, layer_norm, group_norm, __rdiv__; softmax and
by a tensor, cross_entropy, layernorm    the norms decompose into exp, sum and division)
scan (a loop body)                       its body autocast the same way, its carries in their types
every other op                           the widest type of its operands, as torch promotes: a
                                         constant or a 0-d value takes the tensors' type
=======================================  =========================================================

Max and min reductions keep their input type (comparisons lose nothing).
Every output of the graph (and of a loop body) is cast back to the type it
had, so what a caller reads — the loss, the new running statistics, the
logits — keeps its declared type (the logits' values carry bf16 rounding, as
`.float()` of torch's would).
"""

from __future__ import annotations

from dln.compiler.emit import GraphBuilder, Tensor, promote
from dln.compiler.ir import DType, Graph, GroupOp, Node, Op, map_bodies
from dln.compiler.passes.rewrite import rewrite

# Lightning's names of the mixed modes and the type of their products.
MIXED = {"bf16-mixed": DType.BF16, "16-mixed": DType.F16}

LOWER = GroupOp.Contraction
LOWER_COMPOSITES = frozenset({"sdpa"})
FP32 = frozenset({Op.EXP, Op.LOG, Op.LOG1P, Op.RSQRT, Op.POW, Op.SUM})
FP32_COMPOSITES = frozenset({"cross_entropy", "layernorm"})
# The types autocast casts (float64 never, as in torch); leaves (inputs, constants) keep their types.
_LEAVES = GroupOp.Leaf
_AUTOCASTABLE = frozenset({DType.F16, DType.BF16, DType.F32})


def autocast(graph: Graph, dtype: DType) -> Graph:
    """`graph` with products in `dtype` (bf16 or f16), the fp32 ops in float32 and every other op in the
    widest type of its operands; its outputs keep their types (see the module docstring)."""
    graph = map_bodies(graph, lambda body: autocast(body, dtype))
    original = {n.id: n for n in graph.nodes}

    def rule(b: GraphBuilder, n: Node) -> int | None:
        if n.op in _LEAVES:
            return None
        ins = [b.tensor(i) for i in n.inputs]
        targets = _targets(b, n, ins, original, dtype)
        cast = [x if t is None else _cast(b, x, t) for x, t in zip(ins, targets)]
        if tuple(c.id for c in cast) == n.inputs == original[n.id].inputs:
            return None
        return b.emit(n.op, cast, n.attrs).id

    cast = rewrite(graph, rule)
    # Outputs keep the types they had.
    b = GraphBuilder(cast.name, base=cast)
    outputs = []
    for (name, new), (_, old) in zip(cast.outputs, graph.outputs):
        want = graph.node(old)
        if cast.node(new).type != want.type:
            with b.at(loc=want.loc, label=want.name, phase=want.phase):
                new = b.cast(b.tensor(new), want.dtype).id
        outputs.append((name, new))
    return b.finish(outputs) if len(b.nodes) > len(cast.nodes) else cast


def _cast(b: GraphBuilder, x: Tensor, dtype: DType) -> Tensor:
    """x as `dtype`, the cast moved under its reshapes and broadcasts (a bias: its row is cast, not its
    batch; and the parameter's gradient comes out of one cast of the gradient, not a cast between
    reshapes of it)."""
    node, views = b.index[x.id], []
    while node.op in (Op.BROADCAST, Op.RESHAPE) and x.dtype is not dtype:
        views.append(node)
        node = b.index[node.inputs[0]]
    t = b.cast(b.tensor(node.id), dtype)
    for v in reversed(views):
        t = b.emit(v.op, (t,), v.attrs)
    return t


def _targets(b: GraphBuilder, n: Node, ins: list[Tensor], original: dict[int, Node],
             low: DType) -> list[DType | None]:
    """The type each operand of `n` is cast to (None: as it is)."""
    floats = [x.dtype for x in ins if x.dtype.is_float]
    if not floats:
        return [None] * len(ins)
    name = n.attrs.get("composite") if n.op is Op.COMPOSITE else None
    # Regions and composites outside the table take their operands in the types they were built for.
    if n.op is Op.SCAN or (n.op is Op.COMPOSITE and name not in LOWER_COMPOSITES | FP32_COMPOSITES):
        return [original[o].dtype for o in original[n.id].inputs]
    if n.op is Op.RESULT:
        return [None]
    eligible = all(d in _AUTOCASTABLE for d in floats)    # f64 is never autocast, as in torch
    if eligible and (n.op in LOWER or name in LOWER_COMPOSITES or _bias_add(b, n, ins, low)):
        return [low if x.dtype.is_float else None for x in ins]
    if eligible and (n.op in FP32 or name in FP32_COMPOSITES or _reciprocal(b, n, ins)):
        return [DType.F32 if x.dtype.is_float else None for x in ins]
    if len(floats) == 1:
        return [None] * len(ins)
    strong = [x.dtype for x in ins if x.dtype.is_float and not _weak(b, x, n)]
    target = promote(*(strong or floats))
    return [target if x.dtype.is_float else None for x in ins]


def _weak(b: GraphBuilder, x: Tensor, n: Node) -> bool:
    """A constant, or a 0-d value broadcast to the operand's shape: torch's result_type lets the
    dimensioned tensors decide the type."""
    node = b.index[x.id]
    while node.op in (Op.BROADCAST, Op.RESHAPE):
        node = b.index[node.inputs[0]]
    return node.op is Op.CONST or (node.type.rank == 0 and n.type.rank > 0)


def _bias_add(b: GraphBuilder, n: Node, ins: list[Tensor], low: DType) -> bool:
    """An add of a product in the low type and a parameter (broadcast, reshaped): F.linear's and the
    convolutions' bias, which torch adds inside the low-precision op."""
    if n.op is not Op.ADD:
        return False
    nodes = [b.index[x.id] for x in ins]
    for product, other in ((nodes[0], nodes[1]), (nodes[1], nodes[0])):
        if product.op in LOWER and product.dtype is low:
            while other.op in (Op.BROADCAST, Op.RESHAPE, Op.CAST):
                other = b.index[other.inputs[0]]
            if other.op is Op.INPUT and other.attrs["role"] == "param":
                return True
    return False


def _reciprocal(b: GraphBuilder, n: Node, ins: list[Tensor]) -> bool:
    """A number divided by a tensor: torch's `__rdiv__`, on autocast's fp32 list."""
    return n.op is Op.DIV and _weak(b, ins[0], n) and not _weak(b, ins[1], n)
