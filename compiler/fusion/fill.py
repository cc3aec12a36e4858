"""Step 3 of planning for a target: kernels shaped to fill its GPU at its sizes (planner.py).

Per kernel, from the time model (target.py) and the backend's tile choice:

* a matrix product with an optimizer update in its epilogue keeps it only if
  the grid, tiled for that heavier epilogue, gives every SM a program
  (cost.fuse_update); otherwise the update becomes a pointwise kernel of its
  own, which step 4 batches with the others into the multi-tensor update;
* a 2-D product whose output tiles cannot fill the SMs splits its K in S
  parts (a weight gradient dW = X^T @ dY over a large batch), S chosen by
  the model (cost.best_split): partial products to a scratch [S, M, N],
  then a second kernel sums them in a fixed order and runs the epilogue;
  so does a convolution's weight gradient (K: batch x output positions);
* a reduction over few rows and many columns (a bias gradient, a norm, a
  loss mean) splits its columns likewise: partial results per chunk, then
  their combination with the row epilogue.

No float atomics: both stages are deterministic.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

from dln.compiler.cost import nbytes
from dln.compiler.fusion import cost
from dln.compiler.fusion.domain import REDUCE, node_domain
from dln.compiler.fusion.target import PRECISION_UNITS, Target
from dln.compiler.ir import DType, GroupOp, Node, Op, Phase
from dln.compiler.symbolic import Dim, evaluate, numel

if TYPE_CHECKING:
    from dln.compiler.fusion.planner import Group, Planner

PARTIAL_BYTES = 4   # partial sums are kept in fp32
SPLIT_OPS = (Op.SUM, Op.MAX, Op.MIN)   # reductions whose partial results combine with the same op


def cdiv(a: int, b: int) -> int:
    return -(-int(a) // int(b))


def fill_gpu(planner: "Planner", target: Target) -> None:
    for group in list(planner.groups):
        if group.domain.kind == "matmul":
            _shape_product(planner, group, target)
        elif group.domain.kind == "convolution" and planner.graph.node(group.members[0]).op is Op.CONV_WEIGHT:
            _shape_conv_weight(planner, group, target)
        elif group.domain.kind == "reduction" and splittable(planner, group):
            _shape_reduction(planner, group, target)


def epilogue(planner: "Planner", group: "Group") -> tuple[int, int, int]:
    """(operations, random draws, stored values) of a kernel's members and what they inline: what the
    backend's tile choice weighs (dln.kernels.configs.epilogue_weight)."""
    g = planner.graph
    members = set(group.members)
    computed: set[int] = set(members)
    for m in group.members:
        computed |= planner.reads_at(m, group.domain.canonical(g.node(m).shape) or group.domain.vars()).inline
    nodes = [g.node(i) for i in computed]
    users = g.users()
    outputs = {i for _, i in g.outputs}
    stores = sum(1 for m in members if m in outputs or any(u not in computed for u in users[m]))
    return (sum(n.op not in GroupOp.Contraction and n.op is not Op.INPUT for n in nodes),
            sum(n.op is Op.RAND for n in nodes), stores)


def product_sizes(planner: "Planner", product: Node) -> tuple[dict[str, Dim], dict[str, int]]:
    """A product's sizes as its kernel is generated for (symbolic: the tile choice sees what the kernel
    sees) and at the planned binding."""
    a = planner.graph.node(product.inputs[0])
    dims = {"M": product.shape[-2], "N": product.shape[-1], "K": a.shape[-1], "batch": numel(product.shape[:-2])}
    return dims, {k: int(evaluate(v, planner.env)) for k, v in dims.items()}


def _shape_product(planner: "Planner", group: "Group", target: Target) -> None:
    g = planner.graph
    product = g.node(group.members[0])
    if product.op is not Op.MATMUL:
        return
    dims, sizes = product_sizes(planner, product)

    def programs(weight) -> tuple[int, Mapping[str, int]]:
        cfg = target.tiles("matmul", dims, *weight)
        return cdiv(sizes["M"], cfg["BLOCK_M"]) * cdiv(sizes["N"], cfg["BLOCK_N"]) * sizes["batch"], cfg

    if _keeps_update(planner, group, target, programs) or len(product.shape) != 2:
        return
    operands = (sizes["M"] + sizes["N"]) * sizes["K"] * product.dtype.itemsize
    _split_k(planner, group, target, programs, dims, sizes, 1, operands)


def conv_weight_sizes(planner: "Planner", n: Node) -> tuple[dict[str, Dim], dict[str, int], int]:
    """A convolution weight gradient as the implicit product its kernel computes per group of channels:
    [c_out, (c_in, taps)] = [c_out, (batch, positions)] @ [(batch, positions), (c_in, taps)]."""
    dy = planner.graph.node(n.inputs[1])
    groups = n.attrs.get("groups", 1)
    dims = {"M": n.shape[0] // groups, "N": numel(n.shape[1:]), "K": numel((dy.shape[0],) + tuple(dy.shape[2:]))}
    return dims, {k: int(evaluate(v, planner.env)) for k, v in dims.items()}, groups


def _shape_conv_weight(planner: "Planner", group: "Group", target: Target) -> None:
    """A convolution's weight gradient: as a product's (`_shape_product`), its K the batch and positions."""
    g = planner.graph
    node = g.node(group.members[0])
    dims, sizes, groups = conv_weight_sizes(planner, node)

    def programs(weight) -> tuple[int, Mapping[str, int]]:
        cfg = target.tiles("convolution", dims, *weight)
        return cdiv(sizes["M"], cfg["BLOCK_M"]) * cdiv(sizes["N"], cfg["BLOCK_N"]) * groups, cfg

    if _keeps_update(planner, group, target, programs):
        return
    operands = sum(nbytes(g.node(i), planner.env) for i in node.inputs)
    _split_k(planner, group, target, programs, dims, sizes, groups, operands)


def _keeps_update(planner: "Planner", group: "Group", target: Target, programs) -> bool:
    """Does a product keep the optimizer update in its epilogue?  If not, the update leaves it."""
    g = planner.graph
    update = [m for m in group.members if g.node(m).phase is Phase.OPTIMIZER]
    if not update:
        return False
    if cost.fuse_update(programs(epilogue(planner, group))[0], target.machine):
        return True
    _eject(planner, group, update)
    return False


def _split_k(planner: "Planner", group: "Group", target: Target, programs, dims: dict[str, Dim],
             sizes: dict[str, int], groups: int, operands: int) -> None:
    """Choose a product's split of K (`group.splits`): the partial products of [M, N] tiles per group of
    channels over S chunks of K, written to a scratch, then summed in order with the epilogue."""
    node = planner.graph.node(group.members[0])
    if node.dtype not in (DType.F32, DType.F16, DType.BF16):
        return
    tiles, cfg = programs(epilogue(planner, group))
    M, N, K = sizes["M"] * groups, sizes["N"], sizes["K"]
    size = node.dtype.itemsize
    unit = PRECISION_UNITS.get(target.precision, "fp32") if node.dtype is DType.F32 else \
        PRECISION_UNITS[{DType.F16: "f16", DType.BF16: "bf16"}[node.dtype]]
    sum_cfg = target.tiles("splitk_sum", {"rows": dims["M"], "cols": dims["N"]}, 0, 0, 0)
    sum_programs = cdiv(sizes["M"], sum_cfg["BLOCK_M"]) * cdiv(N, sum_cfg["BLOCK_N"]) * groups

    def stage1(s: int):
        written = s * M * N * PARTIAL_BYTES if s > 1 else M * N * size
        return tiles * s, 2 * M * N * K, operands + written, unit, cfg["num_warps"]

    def stage2(s: int):
        return sum_programs, M * N * s, s * M * N * PARTIAL_BYTES + M * N * size, "fp32", sum_cfg["num_warps"]

    group.splits = cost.best_split(target.machine, tiles, K, stage1, stage2)


def _eject(planner: "Planner", group: "Group", update: list[int]) -> None:
    """Move the optimizer's members of a product's kernel into a pointwise kernel of their own."""
    g = planner.graph
    group.members = [m for m in group.members if m not in update]
    moved = planner.new_group(node_domain(g, g.node(update[0])), [g.node(m) for m in update])
    ejected = set(update)
    for other in planner.groups:   # kernels that read an update's results now read them from its new kernel
        if other is moved:
            continue
        read = set()
        for m in other.members:
            read |= set(planner.reads_at(m, other.domain.canonical(g.node(m).shape) or other.domain.vars()).memory)
        if read & ejected:
            planner.add_edge(other.id, moved.id)


def splittable(planner: "Planner", group: "Group") -> bool:
    """Can a reduction kernel run as partial results over column chunks, then their combination?  Its
    reductions must combine (sum, max, min of floats: partial results kept in floating point) and read no
    reduction or row value of the kernel (one level); its full-size members (a gradient the reduction sums
    and other kernels read) must read no reduction either (the first stage computes and stores them chunk
    by chunk); its row values are the second stage's."""
    g, d = planner.graph, group.domain
    full = d.vars()
    after = {m for m in group.members if g.node(m).op in REDUCE or d.is_row(g.node(m).shape)}
    for m in group.members:
        n = g.node(m)
        if n.op in REDUCE:
            if n.op not in SPLIT_OPS or not d.is_row(n.shape) or not g.node(n.inputs[0]).dtype.is_float:
                return False
        elif d.is_row(n.shape):
            continue
        elif d.canonical(n.shape) != full:
            return False
        if set(planner.reads_at(m, full).memory) & after:
            return False
    return any(g.node(m).op in REDUCE for m in group.members)


def _shape_reduction(planner: "Planner", group: "Group", target: Target) -> None:
    g, d, env = planner.graph, group.domain, planner.env
    dims = {"rows": numel(d.row_shape(False)), "cols": numel(tuple(x for a, x in enumerate(d.shape) if a in d.axes))}
    rows, cols = (int(evaluate(dims[k], env)) for k in ("rows", "cols"))
    cfg = target.tiles("reduction", dims, *epilogue(planner, group))
    programs = cdiv(rows, cfg["BLOCK_M"])
    reductions = [m for m in group.members if g.node(m).op in REDUCE]
    read: set[int] = set()
    for m in reductions:
        read |= set(planner.reads_at(m, d.vars()).memory)
    read_bytes = sum(nbytes(g.node(r), env) for r in read)
    # Full-size members are written by the first stage (chunk by chunk), row values by the second.
    full_out = sum(nbytes(g.node(m), env) for m in group.members if not d.is_row(g.node(m).shape))
    row_out = sum(nbytes(g.node(m), env) for m in group.members if d.is_row(g.node(m).shape))
    partials = rows * len(reductions) * PARTIAL_BYTES
    sum_cfg = target.tiles("reduction", {"rows": dims["rows"], "cols": 1}, 0, 0, 0)

    def stage1(s: int):
        written = full_out + (s * partials if s > 1 else row_out)
        return programs * s, rows * cols * len(reductions), read_bytes + written, "fp32", cfg["num_warps"]

    def stage2(s: int):
        return cdiv(rows, sum_cfg["BLOCK_M"]), s * rows * len(reductions), s * partials + row_out, "fp32", \
            sum_cfg["num_warps"]

    group.splits = cost.best_split(target.machine, programs, cols, stage1, stage2)
