"""Two-stage reductions: a reduction over few rows and many columns (a bias gradient sums a [B, N] gradient
over the batch, a norm or a loss mean sums everything into one row) splits its columns into S chunks (the
planner's choice, compiler/fusion/fill.py) so that more than a handful of programs read them.

A host function launches two kernels:

* `<name>_partial` — grid (row blocks, S): program (block, s) reduces its
  rows over the s-th chunk of columns, as the reduction template does over
  all of them, and stores one partial result per row and reduction in a
  scratch `partials[S, reductions, rows]` (and the full-size values other
  kernels read, such as the gradient a bias gradient sums, element by
  element of its chunk);
* `<name>_sum` — one program per row block combines the S partial results
  (sum, max or min, over the splits in a fixed order) and computes and
  stores the kernel's row values (Adam's update of a bias, a mean's
  division) as the reduction template does.

No atomics: the result does not depend on scheduling.  S is a constant of
the plan; at launch the chunk is rounded to BLOCK_N and S shrinks where the
columns are few.
"""

from __future__ import annotations


from dln.compiler.fusion import index as ix
from dln.compiler.fusion.domain import REDUCE
from dln.compiler.fusion.planner import FusionPlan, Group
from dln.compiler.ir import DType
from dln.compiler.symbolic import Dim
from dln.kernels.configs import gpu_config
from dln.kernels.emitter import Emitter, accumulator_dtype, comment, identity_of, render_dim
from dln.kernels.lowering import TL_DTYPES
from dln.kernels.splitk import kernel_text, two_stage_host
from dln.kernels.templates import (_ACCUMULATE, _FINISH, KernelSource, _docstring, _pointers, _sizes, _split, _start,
                                   rows_and_columns)

TORCH_SCRATCH = {DType.F32: "torch.float32", DType.F64: "torch.float64"}


def _rows(em: Emitter, plan: FusionPlan, pointers, d, kept, n_rows) -> str:
    """The reduction template's prologue: a block of rows and its index variables."""
    em.members = set()
    em.block_shape = "[BLOCK_M, 1]"
    em.scalar_offset = "rows * 0"
    rows_text = em.dim(n_rows)
    _start(em, _sizes(plan, pointers))
    em.line("rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)[:, None]")
    em.line(f"row_mask = rows < {rows_text}")
    em.mask = "row_mask"
    kept_axes = [a for a in range(len(d.shape)) if a not in d.axes]
    _split(em, ix.Var("rows", n_rows), kept, [f"r{a}" for a in kept_axes])
    em.vars["rows"] = "rows"
    return rows_text


def split_reduction(plan: FusionPlan, group: Group, k: int) -> KernelSource:
    g = plan.graph
    d = group.domain
    kept, cols, n_rows, n_cols = rows_and_columns(d)
    pointers = _pointers(plan, group, k)
    ordered = [pointers[i] for i in sorted(pointers)]
    params = [p.name for p in ordered]
    reductions = [g.node(m) for m in group.members if g.node(m).op in REDUCE]
    # Each stage takes the pointers it uses: the first what the reductions read, the second what the row
    # values read and what the kernel stores.
    full_members = [m for m in group.members if g.node(m).op not in REDUCE and not d.is_row(g.node(m).shape)]
    row_members = [m for m in group.members if m not in full_members]
    first_nodes = set(full_members).union(*(plan.reads_at(m, d.vars()).memory
                                            for m in full_members + [n.id for n in reductions]))
    second_nodes = set(row_members).union(*(plan.reads_at(m, d.canonical(g.node(m).shape)).memory
                                            for m in row_members if g.node(m).op not in REDUCE))
    in_registers = set(group.members) - set(group.stores)
    first = [p for p in ordered if p.node in first_nodes - in_registers]
    second = [p for p in ordered if p.node in second_nodes - in_registers]
    n_red = len(reductions)
    acc_types = {n.id: accumulator_dtype(g.node(n.inputs[0]).dtype) for n in reductions}
    scratch = DType.F64 if DType.F64 in acc_types.values() else DType.F32
    partial_name, sum_name = f"{group.name}_partial", f"{group.name}_sum"

    # Stage 1: each row block's partial results over one chunk of columns.
    em = Emitter(g, pointers, {})
    rows_text = _rows(em, plan, pointers, d, kept, n_rows)
    em.members = set(group.members)
    cols_text = em.dim(n_cols)
    em.line("split = tl.program_id(1)")
    em.line("col_begin = split * col_chunk")
    em.line(f"col_end = tl.minimum(col_begin + col_chunk, {cols_text})")
    full = d.vars()
    for n in reductions:
        em.line(f"acc{n.id} = tl.full([BLOCK_M, BLOCK_N], {identity_of(n.op, acc_types[n.id])}, "
                f"{TL_DTYPES[acc_types[n.id]]})  # %{n.id} {n.op.value}")
    with em.loop("for start in range(col_begin, col_end, BLOCK_N):", {"cols", *(f"c{a}" for a in d.axes)}):
        em.line("cols = start + tl.arange(0, BLOCK_N)[None, :]")
        em.line("mask = row_mask & (cols < col_end)")
        saved = (em.mask, em.block_shape)
        em.mask, em.block_shape = "mask", "[BLOCK_M, BLOCK_N]"
        em.loops[-1]["inner"] = "mask"
        _split(em, ix.Var("cols", n_cols), cols, [f"c{a}" for a in d.axes])
        for n in reductions:
            x = em.value(n.inputs[0], full)
            if acc_types[n.id] is not g.node(n.inputs[0]).dtype:
                x = f"{x}.to({TL_DTYPES[acc_types[n.id]]})"
            masked = f"tl.where(mask, {x}, {identity_of(n.op, acc_types[n.id])})"
            em.line(_ACCUMULATE[n.op].format(acc=f"acc{n.id}", x=masked))
        for m in full_members:   # each element lies in one chunk: stored once, by its chunk's program
            if m in group.stores:
                em.store(m, full, em.value(m, full))
        em.mask, em.block_shape = saved
    em.line(f"out = partials + split.to(tl.int64) * ({n_red} * {rows_text}) + rows")
    for j, n in enumerate(reductions):
        value = f"{_FINISH[n.op]}(acc{n.id}, axis=1)[:, None]"
        em.line(f"tl.store(out + {j} * {rows_text}, {value}.to({TL_DTYPES[scratch]}), mask=row_mask)  # %{n.id}")
    symbols = sorted(em.symbols)
    doc = comment(f"Partial results of {', '.join(f'%{n.id} {n.op.value}' for n in reductions)} over one chunk of "
                  f"{render_dim(n_cols)} columns per program on axis 1, {render_dim(n_rows)} rows in blocks")
    source, blocks = kernel_text(partial_name, [p.name for p in first] + ["partials", "col_chunk"], symbols,
                                 ["BLOCK_M", "BLOCK_N"], em, doc)
    sizes: dict[str, Dim] = {"rows": n_rows, "cols": n_cols}
    grid = f"triton.cdiv({render_dim(n_rows)}, meta['BLOCK_M'])"
    partial = KernelSource(partial_name, "reduction", source, first, symbols, blocks, [grid, "splits"], sizes)
    wide = em.wide

    # Stage 2: the partial results combined in order, then the row values.
    em = Emitter(g, pointers, {})
    rows_text = _rows(em, plan, pointers, d, kept, n_rows)
    em.members = set(group.members)
    for n in reductions:
        em.line(f"acc{n.id} = tl.full([BLOCK_M, BLOCK_N], {identity_of(n.op, acc_types[n.id])}, "
                f"{TL_DTYPES[acc_types[n.id]]})  # %{n.id} {n.op.value}")
    with em.block("for start in range(0, splits, BLOCK_N):"):
        em.line("part = start + tl.arange(0, BLOCK_N)[None, :]")
        em.line("mask = row_mask & (part < splits)")
        for j, n in enumerate(reductions):
            ident = identity_of(n.op, acc_types[n.id])
            em.line(f"x = tl.load(partials + (part * {n_red} + {j}) * {rows_text} + rows, mask=mask, other={ident})")
            em.line(_ACCUMULATE[n.op].format(acc=f"acc{n.id}", x=f"x.to({TL_DTYPES[acc_types[n.id]]})"))
    for n in reductions:
        name = f"red{n.id}"
        em.line(f"{name} = {_FINISH[n.op]}(acc{n.id}, axis=1)[:, None]")
        if n.dtype is not acc_types[n.id]:
            em.line(f"{name} = {name}.to({TL_DTYPES[n.dtype]})")
        em.fix(n.id, d.canonical(n.shape), name)
    for m in row_members:
        if m in group.stores:
            at = d.canonical(g.node(m).shape)
            em.store(m, at, em.value(m, at), "row_mask")
    sum_symbols = sorted(em.symbols)
    doc = comment("The partial results combined over the splits in order, then the row values. ") + \
        _docstring(plan, group)
    source, sum_blocks = kernel_text(sum_name, [p.name for p in second] + ["partials", "splits"], sum_symbols,
                                     ["BLOCK_M", "BLOCK_N"], em, doc)
    total = KernelSource(sum_name, "reduction", source, second, sum_symbols, sum_blocks, [grid],
                         {"rows": n_rows, "cols": group.splits})
    wide = wide or em.wide

    all_symbols = sorted(set(symbols) | set(sum_symbols))
    r, c = render_dim(n_rows), render_dim(n_cols)
    wide_arg = (", WIDE=max(" + ", ".join(f"{p}.numel()" for p in params) + ") >= 2 ** 31") if wide else ""
    text = (f"{', '.join(f'%{n.id} {n.op.value}' for n in reductions)} with the columns split {group.splits} "
            "ways (planned), then the ordered combination of the parts and the row values")
    host = two_stage_host(
        group.name, text, params, all_symbols, c, group.splits, ("BLOCK_N", 128),
        (f"{n_red} * {r}", TORCH_SCRATCH[scratch]),
        (partial_name, f"{{'rows': {r}, 'cols': {c}}}", grid, [p.name for p in first], symbols),
        (sum_name, f"{{'rows': {r}, 'cols': splits}}", grid, [p.name for p in second], sum_symbols), wide_arg)
    inner = [partial, total]
    return KernelSource(group.name, "split_reduction", "\n".join(host) + "\n", ordered, all_symbols, [], [],
                        {"rows": n_rows, "cols": n_cols, "splits": group.splits}, host=True, inner=inner,
                        inner_configs={kernel.name: gpu_config(kernel.kind, kernel.sizes) for kernel in inner})

