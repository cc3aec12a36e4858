"""Kernel templates, one per kind of fusion group, in the Triton tutorials' style.

* pointwise — a 1-D grid over the elements of the domain;
* reduction — rows in blocks of BLOCK_M, columns looped in BLOCK_N chunks:
  one loop per level of dependent reductions, then one loop storing the
  full-size results (softmax, cross-entropy with its gradient);
* matmul — a BLOCK_M x BLOCK_N output tile accumulated over K in fp32 with
  `tl.dot`, then the fused epilogue on the tile;
* convolution — an implicit matrix product with the matmul epilogue
  (kernels/convolution.py);
* scatter — a scatter-add with atomics;
* multi_tensor — one flat pass over parameters, gradients and state laid out
  back to back (the optimizer step for every parameter at once).

Each returns a `KernelSource`: the `@triton.jit` function and what the
launcher needs to call it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

from dln.compiler.fusion import index as ix
from dln.compiler.fusion.domain import REDUCE
from dln.compiler.fusion.planner import FusionPlan, Group, update_operands
from dln.compiler.ir import DType, Graph, Op
from dln.compiler.naming import buffer_name
from dln.compiler.symbolic import Dim, numel
from dln.dsl.diagnostics import Diagnostic, DlnError, Note
from dln.kernels.emitter import (
    Emitter,
    Pointer,
    accumulator_dtype,
    comment,
    identity_of,
    render_dim,
)
from dln.kernels.lowering import HALF_TYPES, TL_DTYPES
from dln.kernels.precision import PRECISIONS


@dataclass
class KernelSource:
    name: str
    kind: str
    source: str
    pointers: list[Pointer]
    symbols: list[str]
    blocks: list[str]                          # constexpr parameter names
    grid: list[str]                            # launcher expressions, may use `meta["BLOCK..."]` (the launch's constexprs)
    sizes: dict[str, Dim] = field(default_factory=dict)   # named problem sizes for the cost model
    zero_outputs: list[int] = field(default_factory=list)  # outputs the launcher zeroes first (scatter)
    wide: bool = False                         # takes WIDE: 64-bit offsets when a tensor is that large
    workspace: tuple[Dim, DType] | None = None  # (elements, type) of a scratch buffer passed after the pointers
    host: bool = False                         # a Python function launching `inner` kernels (a scan step by step)
    inner: list["KernelSource"] = field(default_factory=list)   # kernels it launches, with their configs
    inner_configs: dict[str, dict[str, int]] = field(default_factory=dict)
    graph: Graph | None = None                 # the graph its pointers index, when not the plan's (a loop body's)


def _start(em: Emitter, sizes: list[Dim], axis: int = 0, name: str = "pid") -> bool:
    """`pid = tl.program_id(axis)`, in 64 bits when the kernel runs WIDE.  Kernels whose
    tensors may hold 2**31 elements or more (symbolic or huge sizes) take a WIDE constexpr,
    chosen at launch from the actual sizes, so the usual case keeps 32-bit index math."""
    em.line(f"{name} = tl.program_id({axis})")
    if not any(_int64(s) for s in sizes):
        return False
    em.wide = True
    with em.block("if WIDE:  # some tensor has 2**31 elements or more: 64-bit offsets"):
        em.line(f"{name} = {name}.to(tl.int64)")
    return True


def _sizes(plan: FusionPlan, pointers: dict[int, Pointer]) -> list[Dim]:
    return [numel(plan.graph.node(p.node).shape) for p in pointers.values()]


def _int64(total: Dim) -> bool:
    """Offsets need 64 bits unless the size is known to fit in 31."""
    return not (isinstance(total, int) and total < 2 ** 31)


def _pointers(plan: FusionPlan, group: Group, k: int) -> dict[int, Pointer]:
    g = plan.graph
    out: dict[int, Pointer] = {}
    output_names = {i: name for name, i in g.outputs}
    for node_id in sorted(set(plan.reads[k]) | set(group.stores)):
        out[node_id] = Pointer(buffer_name(g, node_id, output_names), node_id, g.node(node_id).shape)
    return out


def _docstring(plan: FusionPlan, group: Group) -> str:
    """Every IR node the kernel computes, the values it stores, and the .dln lines they come from."""
    from dln.kernels.report import computed_nodes

    nodes = [n for n in computed_nodes(plan, group) if n.op is not Op.INPUT]
    places = sorted({(n.loc.path, n.loc.line) for n in nodes if n.loc is not None})
    where = ", ".join(f"{path.split('/')[-1]}:{line}" for path, line in places)
    names = sorted({n.name for n in nodes if n.name})
    text = (f"Fuses {', '.join(f'%{n.id} {n.op.value}' for n in nodes)}; stores "
            f"{', '.join(f'%{s}' for s in group.stores)}. Computes {', '.join(names) or 'generated values'} "
            f"from {where or 'generated code'}.")
    return "\n    ".join(comment(line) for line in _wrap(text, 100))


def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split(" "):
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return lines + [line]


def _header(name: str, pointers: list[Pointer], symbols: list[str], blocks: list[str], doc: str) -> list[str]:
    params = [p.name for p in pointers] + [f"s_{s}" for s in symbols] + [f"{b}: tl.constexpr" for b in blocks]
    lines = ["@triton.jit", f"def {name}("]
    lines += [f"    {p}," for p in params]
    lines += ["):", f'    """{doc}"""']
    return lines


def _finish(name: str, kind: str, em: Emitter, pointers: dict[int, Pointer], blocks: list[str],
            grid: list[str], doc: str, sizes: dict[str, Dim], extra_symbols: set[str] = frozenset(),
            zero: list[int] | None = None) -> KernelSource:
    symbols = sorted(em.symbols | set(extra_symbols))
    ordered = [pointers[i] for i in sorted(pointers)]
    body = em.lines
    if em.wide:  # sizes in 64 bits too, so their products cannot wrap
        casts = [f"        s_{s} = tl.cast(s_{s}, tl.int64)" for s in symbols]
        body = (["    if WIDE:", *casts] if casts else []) + body
        blocks = blocks + ["WIDE"]
    head = _header(name, ordered, symbols, blocks, doc)
    return KernelSource(name, kind, "\n".join(head + body) + "\n", ordered, symbols, blocks, grid, sizes,
                        zero or [], em.wide)


def product_value(g: Graph, group: Group, node) -> str:
    """The epilogue's value of a matmul or convolution: the fp32 accumulator, rounded to the product's
    type, except where its one reader is an add of that type (a bias; the product is not stored, so the
    add is in this kernel's epilogue): torch's linear
    and convolutions add the bias to the fp32 accumulator and round once (dln.runtime.numpy_ops.
    bias_products), and so does this epilogue.  (Where the plan stores the product and adds the bias in
    another kernel, it is rounded twice: a unit in the last place from the NumPy backend's value.)"""
    if node.dtype in (DType.F32, DType.F64):
        return "acc"
    readers = g.users()[node.id]
    if node.id not in group.stores and len(readers) == 1 \
            and g.node(readers[0]).op is Op.ADD and g.node(readers[0]).dtype is node.dtype \
            and node.id not in {i for _, i in g.outputs}:
        return "acc"
    return f"acc.to({TL_DTYPES[node.dtype]})"


def _store_members(em: Emitter, plan: FusionPlan, group: Group, at_of) -> None:
    for m in group.members:
        if m in group.stores:
            at = at_of(m)
            em.store(m, at, em.value(m, at))


# ---- pointwise -------------------------------------------------------------------------------------------------

def pointwise(plan: FusionPlan, group: Group, k: int) -> KernelSource:
    g = plan.graph
    shape = group.domain.shape
    total = numel(shape)
    pointers = _pointers(plan, group, k)
    em = Emitter(g, pointers, {})
    em.members = set(group.members)
    n_text = em.dim(total)
    _start(em, _sizes(plan, pointers))
    em.line("offs = pid * BLOCK + tl.arange(0, BLOCK)")
    em.line(f"mask = offs < {n_text}")
    offs = ix.Var("offs", total)
    em.vars["offs"] = "offs"
    at = ix.delinearize(offs, shape)
    _store_members(em, plan, group, lambda m: at)
    grid = [f"triton.cdiv({render_dim(total)}, meta['BLOCK'])"]
    return _finish(group.name, "pointwise", em, pointers, ["BLOCK"], grid, _docstring(plan, group),
                   {"n": total})


# ---- multi-tensor: every parameter's update in one flat pass ---------------------------------------------------

def multi_tensor(plan: FusionPlan, group: Group, k: int) -> KernelSource:
    g = plan.graph
    per_param = update_operands(g, group, lambda i: i in plan.realized)
    arenas = {tuple(a.nodes): a for a in plan.memory.arenas}
    total = sum(int(numel(g.node(p[0]).shape)) for p in per_param)
    first_members = group.multi[0]
    pointers: dict[int, Pointer] = {}
    output_names = {i: name for name, i in g.outputs}
    # Operand position j of parameter 0 reads arena j (`k13.arena1_grads` reads as `arena1_grads`); scalars
    # are read as themselves.
    for j, node_id in enumerate(per_param[0]):
        arena = arenas[tuple(p[j] for p in per_param)]   # the memory plan lays out every operand position
        pointers[node_id] = Pointer(arena.name.split(".", 1)[1], node_id, (total,))
    for node_id in plan.reads[k]:
        if g.node(node_id).shape == ():
            pointers[node_id] = Pointer(buffer_name(g, node_id, output_names), node_id, ())
    # The body is parameter 0's update, evaluated at its own index: views inline (a gradient reshaped, cast,
    # reshaped back) compose there as planning composed them, back to that index (`_update_signature` lets
    # in no other).  Element `at` of each operand is element `offs` of its arena, loaded once up front: the
    # flat offset serves every parameter, whatever its size.  The emitter knows no arena pointer and no
    # index variable, so a read anywhere else fails here instead of reading another parameter's values.
    at = ix.domain_vars(g.node(first_members[0]).shape, "i")
    scalars = {i: p for i, p in pointers.items() if g.node(i).shape == ()}
    em = Emitter(g, scalars, {})
    em.members = set(first_members)
    em.line("pid = tl.program_id(0)")
    em.line("offs = pid * BLOCK + tl.arange(0, BLOCK)")
    em.line(f"mask = offs < {total}")
    for node_id in per_param[0]:
        if node_id not in em.members:
            name = em.fresh("x")
            em.line(f"{name} = tl.load({pointers[node_id].name} + offs, mask=mask)  # %{node_id}")
            em.fix(node_id, at, name)
    outputs: list[tuple[int, Pointer]] = []
    for m in first_members:
        target = plan.memory.donated[m]
        outputs.append((m, pointers[target]))
    values = [(m, em.value(m, at)) for m in first_members]
    for (m, v), (_, p) in zip(values, outputs):
        em.line(f"tl.store({p.name} + offs, {v}, mask=mask)  # %{m} -> {p.name}")
    doc = "\n    ".join(comment(line) for line in _wrap(
        f"One step of the optimizer for {len(per_param)} parameters ({total} values), laid out back to back: "
        f"{', '.join(group.updates)}. Per parameter: "
        f"{', '.join(f'%{m} {g.node(m).op.value}' for m in first_members)}.", 100))
    grid = [f"triton.cdiv({total}, meta['BLOCK'])"]
    return _finish(group.name, "multi_tensor", em, pointers, ["BLOCK"], grid, doc, {"n": total})


# ---- reductions over rows ----------------------------------------------------------------------------------------

def reduction(plan: FusionPlan, group: Group, k: int) -> KernelSource:
    g = plan.graph
    d = group.domain
    kept, cols, n_rows, n_cols = rows_and_columns(d)
    pointers = _pointers(plan, group, k)
    em = Emitter(g, pointers, {})
    em.members = set(group.members)
    em.block_shape = "[BLOCK_M, 1]"
    em.scalar_offset = "rows * 0"
    rows_text, cols_text = em.dim(n_rows), em.dim(n_cols)
    _start(em, _sizes(plan, pointers))
    em.line("rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)[:, None]")
    em.line(f"row_mask = rows < {rows_text}")
    em.mask = "row_mask"
    # Row variables: one per kept axis, from the flat row number.
    kept_axes = [a for a in range(len(d.shape)) if a not in d.axes]
    row_vars = _split(em, ix.Var("rows", n_rows), kept, [f"r{a}" for a in kept_axes])
    em.vars["rows"] = "rows"
    full = d.vars()

    levels = _levels(plan, group)
    members = [g.node(m) for m in group.members]
    reductions = [n for n in members if n.op in REDUCE]
    row_members = [n for n in members if n.op not in REDUCE and d.is_row(n.shape)]
    full_members = [n for n in members if n.op not in REDUCE and not d.is_row(n.shape)]
    done_level = 0
    for level in sorted({levels[n.id] for n in reductions}):
        batch = [n for n in reductions if levels[n.id] == level]
        _reduction_loop(em, plan, batch, full, cols, cols_text, row_vars, d)
        done_level = level
        for n in row_members:  # row values ready after this level
            if levels[n.id] <= done_level and n.id in group.stores:
                at = d.canonical(n.shape)
                em.store(n.id, at, em.value(n.id, at), "row_mask")
    for n in row_members:
        if levels[n.id] > done_level and n.id in group.stores:
            at = d.canonical(n.shape)
            em.store(n.id, at, em.value(n.id, at), "row_mask")
    for n in reductions:
        if n.id in group.stores:
            at = d.canonical(n.shape)
            em.store(n.id, at, em.value(n.id, at), "row_mask")
    stored_full = [n for n in full_members if n.id in group.stores]
    if stored_full:
        with _column_loop(em, cols, cols_text, d):
            for n in stored_full:
                em.store(n.id, full, em.value(n.id, full))
    grid = [f"triton.cdiv({render_dim(n_rows)}, meta['BLOCK_M'])"]
    return _finish(group.name, "reduction", em, pointers, ["BLOCK_M", "BLOCK_N"], grid, _docstring(plan, group),
                   {"rows": n_rows, "cols": n_cols})


def _split(em: Emitter, flat: ix.Var, shape: tuple, names: list[str]) -> dict[str, str]:
    """Emit one variable per axis of `shape` from the flat index `flat`."""
    parts = ix.delinearize(flat, shape)
    em.vars[flat.name] = flat.name
    out = {}
    for name, e, dim in zip(names, parts, shape):
        if dim == 1:
            continue
        em.line(f"{name} = {em.render(e)}")
        em.vars[name] = name
        out[name] = name
    return out


class _column_loop:
    """`for start in range(0, n_cols, BLOCK_N):` with column variables and the tile mask."""

    def __init__(self, em: Emitter, cols: tuple, cols_text: str, d) -> None:
        self.em, self.cols, self.cols_text, self.d = em, cols, cols_text, d

    def __enter__(self):
        em = self.em
        reduced_axes = [a for a in range(len(self.d.shape)) if a in self.d.axes]
        names = [f"c{a}" for a in reduced_axes]
        self.block = em.loop(f"for start in range(0, {self.cols_text}, BLOCK_N):", {"cols", *names})
        self.block.__enter__()
        em.line("cols = start + tl.arange(0, BLOCK_N)[None, :]")
        em.line(f"mask = row_mask & (cols < {self.cols_text})")
        self.saved = (em.mask, em.block_shape)
        em.mask, em.block_shape = "mask", "[BLOCK_M, BLOCK_N]"
        em.loops[-1]["inner"] = "mask"  # values computed under this mask alone may be hoisted
        _split(em, ix.Var("cols", numel(self.cols)), self.cols, names)
        return self

    def __exit__(self, *exc):
        self.em.mask, self.em.block_shape = self.saved
        return self.block.__exit__(*exc)


# How a reduction folds a block of columns into its accumulator, and the accumulator into a row value.
_ACCUMULATE = {
    Op.SUM: "{acc} += {x}",
    Op.MAX: "{acc} = tl.maximum({acc}, {x}, propagate_nan=tl.PropagateNan.ALL)",
    Op.MIN: "{acc} = tl.minimum({acc}, {x}, propagate_nan=tl.PropagateNan.ALL)",
}
_FINISH = {Op.SUM: "tl.sum", Op.MAX: "tl.max", Op.MIN: "tl.min"}


def _reduction_loop(em: Emitter, plan: FusionPlan, batch, full, cols, cols_text, row_vars, d) -> None:
    g = plan.graph
    accs = {}
    for n in batch:
        dtype = accumulator_dtype(g.node(n.inputs[0]).dtype)
        acc = f"acc{n.id}"
        ident = identity_of(n.op, dtype)
        em.line(f"{acc} = tl.full([BLOCK_M, BLOCK_N], {ident}, {TL_DTYPES[dtype]})  # %{n.id} {n.op.value}")
        if n.op is Op.ARGMAX:
            em.line(f"arg{n.id} = tl.zeros([BLOCK_M, BLOCK_N], tl.int64)")
        accs[n.id] = (acc, ident, dtype)
    with _column_loop(em, cols, cols_text, d):
        for n in batch:
            acc, ident, dtype = accs[n.id]
            src = g.node(n.inputs[0])
            x = em.value(src.id, full)  # a reduction's input has the domain's full shape
            if accumulator_dtype(src.dtype) is not src.dtype:
                x = f"{x}.to({TL_DTYPES[dtype]})"
            masked = f"tl.where(mask, {x}, {ident})"
            if n.op is Op.ARGMAX:  # keep the first largest value's column (strictly greater replaces)
                # NaN counts as the largest value, as in torch (and its first occurrence wins)
                em.line(f"take{n.id} = ({masked} > {acc}) | (({masked} != {masked}) & ({acc} == {acc}))")
                em.line(f"arg{n.id} = tl.where(take{n.id}, cols, arg{n.id})")
                em.line(f"{acc} = tl.where(take{n.id}, {masked}, {acc})")
            else:
                em.line(_ACCUMULATE[n.op].format(acc=acc, x=masked))
    for n in batch:
        acc, ident, dtype = accs[n.id]
        name = f"red{n.id}"
        if n.op is Op.ARGMAX:
            # each lane holds its first largest value (or its first NaN); the row takes the lowest
            # column among the lanes holding the row's largest, NaN outranking every number
            em.line(f"nan{n.id} = {acc} != {acc}")
            em.line(f"any_nan{n.id} = tl.max(nan{n.id}.to(tl.int32), axis=1)[:, None] > 0")
            em.line(f"best{n.id} = tl.max(tl.where(nan{n.id}, float('-inf'), {acc}), axis=1)[:, None]")
            em.line(f"pick{n.id} = tl.where(any_nan{n.id}, nan{n.id}, {acc} == best{n.id})")
            em.line(f"{name} = tl.min(tl.where(pick{n.id}, arg{n.id}, {2 ** 62}), axis=1)[:, None]")
        else:
            em.line(f"{name} = {_FINISH[n.op]}({acc}, axis=1)[:, None]")
        if g.node(n.id).dtype is not dtype and n.op is not Op.ARGMAX:
            em.line(f"{name} = {name}.to({TL_DTYPES[g.node(n.id).dtype]})")
        em.fix(n.id, d.canonical(n.shape), name)


def _levels(plan: FusionPlan, group: Group) -> dict[int, int]:
    """Level of each member: 1 + the highest level of the group's reductions it depends on
    (a reduction adds one itself).  Reductions of one level share a loop."""
    g = plan.graph
    members = set(group.members)
    level: dict[int, int] = {}
    for m in group.members:
        n = g.node(m)
        found = plan.reads_at(m, group.domain.canonical(n.shape) or group.domain.vars())
        deps = [level[x] for x in found.memory if x in members and x in level]
        base = max(deps, default=0)
        level[m] = base + 1 if n.op in REDUCE else base
    return level


# ---- matrix products with epilogues --------------------------------------------------------------------------

# Output tiles per group of rows in the launch order (Triton's matmul tutorial uses 8).
GROUP_M = 8


def widened_in_interpreter(em: Emitter, dtype: DType, *names: str) -> None:
    """Half-precision operand tiles as fp32 under Triton's interpreter (it has no bf16 arithmetic): exact
    fp32 products there, the same tiles on a GPU."""
    if dtype in HALF_TYPES:
        with em.block("if INTERPRETED:  # no bf16 arithmetic there: exact fp32 products instead"):
            for name in names:
                em.line(f"{name} = {name}.to(tl.float32)")


def rows_and_columns(d) -> tuple[tuple[Dim, ...], tuple[Dim, ...], Dim, Dim]:
    """A reduction domain's kept axes (rows) and reduced axes (columns), and how many of each."""
    kept = tuple(dim for a, dim in enumerate(d.shape) if a not in d.axes)
    cols = tuple(dim for a, dim in enumerate(d.shape) if a in d.axes)
    return kept, cols, numel(kept), numel(cols)


def grouped_tile_order(em: Emitter, m_text: str, n_text: str) -> None:
    """`pid_m`, `pid_n` of program `pid` in grouped order (Triton's matmul tutorial): programs launched
    together take GROUP_M row tiles and sweep the columns, so the rows' and columns' operand tiles they
    share stay in L2, instead of one row of tiles streaming every column of the right operand."""
    em.line(f"num_m = tl.cdiv({m_text}, BLOCK_M)")
    em.line(f"num_n = tl.cdiv({n_text}, BLOCK_N)")
    em.line(f"in_group = {GROUP_M} * num_n  # programs in a group of {GROUP_M} row tiles")
    em.line(f"first_m = pid // in_group * {GROUP_M}")
    em.line(f"group_m = tl.minimum(num_m - first_m, {GROUP_M})  # the last group may have fewer rows")
    em.line("pid_m = first_m + (pid % in_group) % group_m")
    em.line("pid_n = (pid % in_group) // group_m")


@contextlib.contextmanager
def reduction_tiles(em: Emitter, dtype: DType, k_text: str, wide: bool):
    """A product's accumulator and its loop over BLOCK_K slices of the reduction: inside, `ka` indexes k
    along the left operand's columns and `kb` along the right operand's rows (64-bit when WIDE)."""
    acc_type = "tl.float64" if dtype is DType.F64 else "tl.float32"
    em.line(f"acc = tl.zeros([BLOCK_M, BLOCK_N], dtype={acc_type})")
    with em.block(f"for k0 in range(0, {k_text}, BLOCK_K):"):
        em.line("ka = k0 + tl.arange(0, BLOCK_K)[None, :]")
        em.line("kb = k0 + tl.arange(0, BLOCK_K)[:, None]")
        if wide:
            with em.block("if WIDE:"):
                em.line("ka = ka.to(tl.int64)")
                em.line("kb = kb.to(tl.int64)")
        yield


def matmul(plan: FusionPlan, group: Group, k: int, precision: str = "ieee") -> KernelSource:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown matmul precision {precision!r}; precisions: {', '.join(PRECISIONS)}")
    product = plan.graph.node(group.members[0])
    if not product.dtype.is_float:
        raise DlnError(Diagnostic("E0303", f"integer matrix products ({product.type}) are not available on the "
                                           "Triton backend yet", product.loc,
                                  (Note("the numpy backend computes them"),)))
    g = plan.graph
    mm = g.node(group.members[0])
    a_node, b_node = g.node(mm.inputs[0]), g.node(mm.inputs[1])
    shape = mm.shape
    M, N, K = shape[-2], shape[-1], a_node.shape[-1]
    batch = shape[:-2]
    pointers = _pointers(plan, group, k)
    em = Emitter(g, pointers, {"m": "m", "n": "n"})
    em.members = set(group.members)
    em.block_shape = "[BLOCK_M, BLOCK_N]"
    m_text, n_text, k_text = em.dim(M), em.dim(N), em.dim(K)
    wide = _start(em, _sizes(plan, pointers))
    grouped_tile_order(em, m_text, n_text)
    em.line("m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)[:, None]")
    em.line("n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]")
    if batch:
        _start(em, [2 ** 31] if wide else [], axis=1, name="pid_b")
        em.program_vars |= {"pid_b", *_split(em, ix.Var("pid_b", numel(batch)), batch,
                                             [f"b{a}" for a in range(len(batch))])}
    at = d_vars = group.domain.vars()
    a_off = _operand_offset(em, g, a_node.id, d_vars[:-2] + (d_vars[-2], ix.Var("k", K)), {"k": "ka"})
    b_off = _operand_offset(em, g, b_node.id, d_vars[:-2] + (ix.Var("k", K), d_vars[-1]), {"k": "kb"})
    with reduction_tiles(em, mm.dtype, k_text, wide):
        # Addresses cover the whole tile even where an operand repeats along an axis (a broadcast).
        em.line(f"a = tl.load(tl.broadcast_to({a_off[0]} + {a_off[1]}, [BLOCK_M, BLOCK_K]), "
                f"mask=(m < {m_text}) & (ka < {k_text}), other=0.0)")
        em.line(f"b = tl.load(tl.broadcast_to({b_off[0]} + {b_off[1]}, [BLOCK_K, BLOCK_N]), "
                f"mask=(kb < {k_text}) & (n < {n_text}), other=0.0)")
        widened_in_interpreter(em, a_node.dtype, "a", "b")
        prec = "" if mm.dtype is DType.F64 else f", input_precision={precision!r}"
        em.line(f"acc = tl.dot(a, b, acc{prec})")
    em.line(f"mask = (m < {m_text}) & (n < {n_text})")
    em.fix(mm.id, at, product_value(g, group, mm))
    _store_members(em, plan, group, lambda m: group.domain.canonical(g.node(m).shape))
    grid = [f"triton.cdiv({render_dim(M)}, meta['BLOCK_M']) * triton.cdiv({render_dim(N)}, meta['BLOCK_N'])"]
    if batch:
        grid.append(render_dim(numel(batch)))
    return _finish(group.name, "matmul", em, pointers, ["BLOCK_M", "BLOCK_N", "BLOCK_K"], grid,
                   _docstring(plan, group), {"M": M, "N": N, "K": K, "batch": numel(batch)})


def _operand_offset(em: Emitter, g: Graph, node_id: int, index: ix.Index, rename: dict[str, str]) -> tuple[str, str]:
    """(pointer, offset) of a matmul operand read through its views from the stored value under them."""
    n = g.node(node_id)
    while node_id not in em.pointers and n.op in ix.VIEWS:
        src = g.node(n.inputs[0])
        index = ix.view_index(n, index, src.shape)
        node_id, n = src.id, src
    p = em.pointers[node_id]
    saved = dict(em.vars)
    em.vars.update(rename)
    text = em.offset(p, index)
    em.vars = saved
    return p.name, text


# ---- scatter-add ---------------------------------------------------------------------------------------------------

def scatter(plan: FusionPlan, group: Group, k: int) -> KernelSource:
    g = plan.graph
    node = g.node(group.members[0])
    index_node, src_node = node.inputs
    shape = g.node(src_node).shape
    total = numel(shape)
    pointers = _pointers(plan, group, k)
    em = Emitter(g, pointers, {})
    em.members = set()
    _start(em, _sizes(plan, pointers))
    em.line("offs = pid * BLOCK + tl.arange(0, BLOCK)")
    em.line(f"mask = offs < {em.dim(total)}")
    em.vars["offs"] = "offs"
    at = ix.delinearize(ix.Var("offs", total), shape)
    v = em.value(src_node, at)
    target = list(at)
    target[node.attrs["axis"]] = ix.Load(index_node, at)
    out = pointers[node.id]
    bounds = em.in_bounds(tuple(target), g.node(node.id).shape)
    em.line(f"tl.atomic_add({em.address(out, tuple(target))}, {v}, mask=mask{bounds})  # %{node.id} "
            "scatter_add")
    grid = [f"triton.cdiv({render_dim(total)}, meta['BLOCK'])"]
    return _finish(group.name, "scatter", em, pointers, ["BLOCK"], grid, _docstring(plan, group), {"n": total},
                   zero=[node.id])

