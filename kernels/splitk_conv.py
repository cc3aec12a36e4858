"""Split-K convolutions: an implicit matrix product (kernels/convolution.py) whose output tiles cannot fill the
GPU — a convolution's weight gradient, whose K is the batch times the output positions — splits its K into S
chunks (the planner's choice, compiler/fusion/fill.py), as kernels/splitk.py does for a matrix product.

* `<name>_partial` — grid (output tiles, channel groups, S): program (tile,
  group, s) forms and multiplies its operand tiles over the s-th chunk of K,
  as the convolution template does over all of it, and stores the fp32 tile
  in a scratch `partials[S, groups, M, N]`;
* `<name>_sum` — one program per output tile and group sums the S partial
  tiles in order and runs the kernel's epilogue and stores, as the
  convolution template does after its loop.

No atomics: the sum's order is fixed (deterministic training).
"""

from __future__ import annotations

import json

from dln.compiler.fusion import index as ix
from dln.compiler.fusion.planner import FusionPlan, Group
from dln.compiler.ir import DType
from dln.compiler.symbolic import Dim, numel
from dln.kernels.configs import gpu_config
from dln.kernels.convolution import GEMMS, operand_tiles, tile_start
from dln.kernels.emitter import Emitter, _mentions, comment, render_dim
from dln.kernels.lowering import TL_DTYPES
from dln.kernels.precision import PRECISIONS
from dln.kernels.splitk import kernel_text, sum_config, two_stage_host
from dln.kernels.templates import KernelSource, _docstring, _pointers, _sizes, _start, _store_members


def _tile_start(em: Emitter, gemm, M: Dim, N: Dim) -> tuple[str, str]:
    """The convolution template's prologue: the output tile's rows and columns, split into their axes."""
    m_text, n_text = em.dim(M), em.dim(N)
    tile_start(em, gemm, M, N, m_text, n_text, grouped=False)
    em.line(f"mask = (m < {m_text}) & (n < {n_text})")
    return m_text, n_text


def splitk_convolution(plan: FusionPlan, group: Group, k: int, precision: str = "ieee") -> KernelSource:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown matmul precision {precision!r}; precisions: {', '.join(PRECISIONS)}")
    g = plan.graph
    node = g.node(group.members[0])
    gemm = GEMMS[node.op](g, node)
    M, N, K = (numel(tuple(d for _, d in axes)) for axes in (gemm.rows, gemm.cols, gemm.depth))
    pointers = _pointers(plan, group, k)
    ordered = [pointers[i] for i in sorted(pointers)]
    partial_name, sum_name = f"{group.name}_partial", f"{group.name}_sum"
    slice_ = f"{gemm.groups} * {render_dim(M)} * {render_dim(N)}"   # one chunk's [groups, M, N]

    # Stage 1: a tile's product over one chunk of K.
    em = Emitter(g, pointers, {})
    em.members = set(group.members)
    em.block_shape = "[BLOCK_M, BLOCK_N]"
    _start(em, _sizes(plan, pointers))
    m_text, n_text = _tile_start(em, gemm, M, N)
    k_text = em.dim(K)
    em.line("split = tl.program_id(2)")
    em.line("k_begin = split * k_chunk")
    em.line(f"k_end = tl.minimum(k_begin + k_chunk, {k_text})")
    em.line("acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)")
    with em.block("for k0 in range(k_begin, k_end, BLOCK_K):"):
        em.line("ka = k0 + tl.arange(0, BLOCK_K)[None, :]")
        em.line("kb = k0 + tl.arange(0, BLOCK_K)[:, None]")
        lhs, rhs = operand_tiles(em, g, gemm, K, "k_end", m_text, n_text)
        em.line(f"acc = tl.dot({lhs}, {rhs}, acc, input_precision={precision!r})  # %{node.id} {node.op.value}")
    em.line(f"part = split.to(tl.int64) * ({slice_}) + grp * ({render_dim(M)} * {n_text})")
    em.line(f"tl.store(partials + part + m * {n_text} + n, acc, mask=mask)")
    operands = sorted({gemm.lhs.node, gemm.rhs.node} & set(pointers))
    first = [pointers[i] for i in operands]
    symbols = sorted(em.symbols)
    doc = comment(f"%{node.id} {node.op.value} as an implicit product [{render_dim(M)}, {render_dim(K)}] @ "
                  f"[{render_dim(K)}, {render_dim(N)}] per group, split along K: one chunk of K per program on "
                  "axis 2, fp32 partial tiles to partials[S, groups, M, N]")
    source, blocks = kernel_text(partial_name, [p.name for p in first] + ["partials", "k_chunk"], symbols,
                                 ["BLOCK_M", "BLOCK_N", "BLOCK_K"], em, doc)
    tiles = f"triton.cdiv({render_dim(M)}, meta['BLOCK_M']) * triton.cdiv({render_dim(N)}, meta['BLOCK_N'])"
    conv_sizes: dict[str, Dim] = {"M": M, "N": N, "K": K, "groups": gemm.groups}
    partial = KernelSource(partial_name, "convolution", source, first, symbols, blocks,
                           [tiles, str(gemm.groups), "splits"], conv_sizes)
    wide = em.wide

    # Stage 2: the chunks' sum, in order, then the epilogue on the output's axes.
    em = Emitter(g, pointers, {})
    em.members = set(group.members)
    em.block_shape = "[BLOCK_M, BLOCK_N]"
    _start(em, _sizes(plan, pointers))
    m_text, n_text = _tile_start(em, gemm, M, N)
    em.line("acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)")
    em.line(f"part = partials + grp * ({render_dim(M)} * {n_text}) + m * {n_text} + n")
    with em.block("for split in range(0, splits):  # in order: the same sum on every run"):
        em.line("acc += tl.load(part, mask=mask, other=0.0)")
        em.line(f"part += {slice_}  # the next chunk's [groups, M, N] slice")
    at = group.domain.vars()
    tile = {name for name, _ in gemm.rows + gemm.cols}
    for var, e in zip(at, gemm.output):   # the output's axes, as the epilogue indexes them
        if isinstance(var, ix.Var):
            text = em.render(e)
            if not _mentions((e,), tile):
                text = f"tl.broadcast_to({text}, [BLOCK_M, BLOCK_N])"
            em.line(f"{var.name} = {text}")
            em.vars[var.name] = var.name
    em.fix(node.id, at, "acc" if node.dtype in (DType.F32, DType.F64) else f"acc.to({TL_DTYPES[node.dtype]})")
    _store_members(em, plan, group, lambda m: group.domain.canonical(g.node(m).shape))
    read = set(group.stores).union(*(plan.reads_at(m, group.domain.canonical(g.node(m).shape)).memory
                                     for m in group.members[1:]))
    second = [p for p in ordered if p.node in read - (set(group.members) - set(group.stores))]
    sum_symbols = sorted(em.symbols)
    doc = comment(f"The sum of %{node.id}'s partial products over its K chunks, then its epilogue. ") + \
        _docstring(plan, group)
    source, sum_blocks = kernel_text(sum_name, [p.name for p in second] + ["partials", "splits"], sum_symbols,
                                     ["BLOCK_M", "BLOCK_N"], em, doc)
    total = KernelSource(sum_name, "reduction", source, second, sum_symbols, sum_blocks,
                         [tiles, str(gemm.groups)], {"rows": M, "cols": N})
    wide = wide or em.wide

    all_symbols = sorted(set(symbols) | set(sum_symbols))
    sizes_text = "{" + ", ".join(f"{json.dumps(key)}: {render_dim(v)}" for key, v in conv_sizes.items()) + "}"
    wide_arg = (", WIDE=max(" + ", ".join(f"{p.name}.numel()" for p in ordered) + ") >= 2 ** 31") if wide else ""
    k_r = render_dim(K)
    host_doc = (f"%{node.id} {node.op.value} with K split {group.splits} ways (planned), then the ordered sum of "
                "the parts and the epilogue")
    host = two_stage_host(
        group.name, host_doc, [p.name for p in ordered], all_symbols, k_r, group.splits, ("BLOCK_K", 16),
        (slice_, "torch.float32"),
        (partial_name, sizes_text, f"{tiles}, {gemm.groups}", [p.name for p in first], symbols),
        (sum_name, f"{{'rows': {render_dim(M)}, 'cols': {render_dim(N)}}}", f"{tiles}, {gemm.groups}",
         [p.name for p in second], sum_symbols), wide_arg)
    return KernelSource(group.name, "splitk_convolution", "\n".join(host) + "\n", ordered, all_symbols, [], [],
                        {"M": M, "N": N, "K": K, "splits": group.splits}, host=True, inner=[partial, total],
                        inner_configs={partial.name: gpu_config("convolution", partial.sizes),
                                       total.name: sum_config(total.sizes)})
