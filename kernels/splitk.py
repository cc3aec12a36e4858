"""Split-K matrix products: a product whose output tiles cannot fill the GPU (a weight gradient dW = X^T @ dY,
whose K is the batch) splits its K into S chunks (the planner's choice, compiler/fusion/fill.py).

A host function launches two kernels:

* `<name>_partial` — grid (output tiles, S): program (tile, s) accumulates
  its tile over the s-th chunk of K in fp32 and stores it in a scratch
  `partials[S, M, N]`;
* `<name>_sum` — one program per output tile sums the S partial tiles in
  order s = 0, 1, ..., S-1 and runs the kernel's epilogue (bias, activation,
  whatever fused after the product) and stores, as the plain matmul
  template does.

No atomics: the sum's order is fixed, so a step's result does not depend on
scheduling (training stays deterministic).  S is a constant of the plan,
made for the planned batch; at launch the chunk is rounded to BLOCK_K and S
shrinks where K is short, so any batch runs correctly.
"""

from __future__ import annotations

import json
from typing import Mapping

from dln.compiler.fusion import index as ix
from dln.compiler.fusion.planner import FusionPlan, Group
from dln.compiler.ir import DType
from dln.compiler.symbolic import Dim
from dln.kernels.configs import _size, gpu_config, next_pow2
from dln.kernels.emitter import Emitter, comment, render_dim
from dln.kernels.lowering import TL_DTYPES
from dln.kernels.precision import PRECISIONS
from dln.kernels.templates import (KernelSource, _docstring, _operand_offset, _pointers, _sizes, _start, _store_members,
                                   widened_in_interpreter)


def kernel_text(name: str, params: list[str], symbols: list[str], blocks: list[str], em: Emitter,
                doc: str) -> tuple[str, list[str]]:
    """A `@triton.jit` function: `params` (pointers and runtime scalars), the sizes' symbols, the
    constexpr `blocks` (WIDE added, with the sizes cast to 64 bits, where the body needs it)."""
    body = em.lines
    if em.wide:
        casts = [f"        s_{s} = tl.cast(s_{s}, tl.int64)" for s in symbols]
        body = (["    if WIDE:", *casts] if casts else []) + body
        blocks = blocks + ["WIDE"]
    head = ["@triton.jit", f"def {name}("] + [f"    {p}," for p in params + [f"s_{s}" for s in symbols]]
    head += [f"    {b}: tl.constexpr," for b in blocks] + ["):", f'    """{doc}"""']
    return "\n".join(head + body) + "\n", blocks


def two_stage_host(name: str, doc: str, params: list[str], symbols: list[str], chunked: str, splits: int,
                   block: tuple[str, int], scratch: str, partial: tuple, total: tuple, wide_arg: str) -> list[str]:
    """The host function of a two-stage kernel: the chunk of the `chunked` extent (S planned chunks,
    rounded up to the first stage's `block` = (name, default)) and the number of chunks, fixed at
    launch; a scratch of `scratch` values per chunk (text: size, torch dtype); then both stages.
    `partial` and `total` are (kernel name, sizes text for `program._cfg`, grid text, pointer names,
    symbols): the first stage takes the scratch and the chunk after its pointers, the second the
    scratch and the number of chunks."""
    size, dtype = scratch
    (p_name, p_sizes, p_grid, p_args, p_symbols), (t_name, t_sizes, t_grid, t_args, t_symbols) = partial, total
    return [
        f"def {name}(program, sizes, {', '.join(params)}" + "".join(f", s_{s}" for s in symbols) + "):",
        f'    """{comment(doc)}"""',
        f"    cfg = program._cfg({json.dumps(p_name)}, {p_sizes})",
        f"    block = cfg.get({block[0]!r}, {block[1]})",
        f"    chunk = triton.cdiv(triton.cdiv({chunked}, {splits}), block) * block",
        f"    splits = max(1, triton.cdiv({chunked}, chunk))",
        f"    partials = program._scratch({json.dumps(name)}, splits * {size}, {dtype})",
        f"    program.kernels[{json.dumps(p_name)}][lambda meta: ({p_grid}, splits)]("
        f"{', '.join(p_args)}, partials, chunk" + "".join(f", s_{s}" for s in p_symbols) + f"{wide_arg}, **cfg)",
        f"    cfg = program._cfg({json.dumps(t_name)}, {t_sizes})",
        f"    program.kernels[{json.dumps(t_name)}][lambda meta: ({t_grid},)]("
        f"{', '.join(t_args)}, partials, splits" + "".join(f", s_{s}" for s in t_symbols) + f"{wide_arg}, **cfg)",
    ]


def sum_config(sizes: Mapping[str, Dim]) -> dict[str, int]:
    """The second stage's tiles: an elementwise pass over [M, N] reading S slices, so small tiles (256
    values, two a thread) that spread even a small weight's gradient over several SMs."""
    block_n = max(16, min(64, next_pow2(_size(sizes["cols"]))))
    return {"BLOCK_M": max(1, min(next_pow2(_size(sizes["rows"])), 256 // block_n)), "BLOCK_N": block_n,
            "num_warps": 4}


def _tile(em: Emitter, m_text: str, n_text: str) -> None:
    em.line(f"num_n = tl.cdiv({n_text}, BLOCK_N)")
    em.line("pid_m = pid // num_n")
    em.line("pid_n = pid % num_n")
    em.line("m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)[:, None]")
    em.line("n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]")
    em.line(f"mask = (m < {m_text}) & (n < {n_text})")


def splitk(plan: FusionPlan, group: Group, k: int, precision: str = "ieee") -> KernelSource:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown matmul precision {precision!r}; precisions: {', '.join(PRECISIONS)}")
    g = plan.graph
    mm = g.node(group.members[0])
    a_node, b_node = g.node(mm.inputs[0]), g.node(mm.inputs[1])
    M, N, K = mm.shape[-2], mm.shape[-1], a_node.shape[-1]
    pointers = _pointers(plan, group, k)
    ordered = [pointers[i] for i in sorted(pointers)]
    partial_name, sum_name = f"{group.name}_partial", f"{group.name}_sum"

    # Stage 1: a tile's product over one chunk of K.
    em = Emitter(g, pointers, {"m": "m", "n": "n"})
    em.members = set(group.members)
    m_text, n_text, k_text = em.dim(M), em.dim(N), em.dim(K)
    _start(em, _sizes(plan, pointers))
    _tile(em, m_text, n_text)
    em.line("split = tl.program_id(1)")
    em.line("k_begin = split * k_chunk")
    em.line(f"k_end = tl.minimum(k_begin + k_chunk, {k_text})")
    at = group.domain.vars()
    a_ptr, a_off = _operand_offset(em, g, a_node.id, (at[0], ix.Var("k", K)), {"k": "ka"})
    b_ptr, b_off = _operand_offset(em, g, b_node.id, (ix.Var("k", K), at[1]), {"k": "kb"})
    em.line("acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)")
    with em.block("for k0 in range(k_begin, k_end, BLOCK_K):"):
        em.line("ka = k0 + tl.arange(0, BLOCK_K)[None, :]")
        em.line("kb = k0 + tl.arange(0, BLOCK_K)[:, None]")
        em.line(f"a = tl.load(tl.broadcast_to({a_ptr} + {a_off}, [BLOCK_M, BLOCK_K]), "
                f"mask=(m < {m_text}) & (ka < k_end), other=0.0)")
        em.line(f"b = tl.load(tl.broadcast_to({b_ptr} + {b_off}, [BLOCK_K, BLOCK_N]), "
                f"mask=(kb < k_end) & (n < {n_text}), other=0.0)")
        widened_in_interpreter(em, a_node.dtype, "a", "b")
        em.line(f"acc = tl.dot(a, b, acc, input_precision={precision!r})")
    em.line(f"part = split.to(tl.int64) * ({m_text} * {n_text})  # this chunk's [M, N] slice")
    em.line(f"tl.store(partials + part + m * {n_text} + n, acc, mask=mask)")
    operands = list(dict.fromkeys([a_ptr, b_ptr]))
    symbols = sorted(em.symbols)
    doc = comment(f"%{mm.id} matmul [{render_dim(M)}, {render_dim(K)}] @ [{render_dim(K)}, {render_dim(N)}] "
                  f"split along K: one chunk of K per program on axis 1, fp32 partial tiles to partials[S, M, N]")
    source, blocks = kernel_text(partial_name, operands + ["partials", "k_chunk"], symbols,
                                 ["BLOCK_M", "BLOCK_N", "BLOCK_K"], em, doc)
    by_name = {p.name: p for p in ordered}
    matmul_sizes: dict[str, Dim] = {"M": M, "N": N, "K": K, "batch": 1}
    partial = KernelSource(partial_name, "matmul", source, [by_name[p] for p in operands], symbols,
                           blocks, [f"triton.cdiv({render_dim(M)}, meta['BLOCK_M']) * "
                                    f"triton.cdiv({render_dim(N)}, meta['BLOCK_N'])", "splits"], matmul_sizes)
    wide = em.wide

    # Stage 2: the chunks' sum, in order, then the epilogue.
    em = Emitter(g, pointers, {"m": "m", "n": "n"})
    em.members = set(group.members)
    em.block_shape = "[BLOCK_M, BLOCK_N]"
    m_text, n_text = em.dim(M), em.dim(N)
    _start(em, _sizes(plan, pointers))
    _tile(em, m_text, n_text)
    em.line("acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)")
    em.line(f"part = partials + m * {n_text} + n")
    with em.block("for split in range(0, splits):  # in order: the same sum on every run"):
        em.line("acc += tl.load(part, mask=mask, other=0.0)")
        em.line(f"part += {m_text} * {n_text}  # the next chunk's [M, N] slice")
    value = "acc" if mm.dtype in (DType.F32, DType.F64) else f"acc.to({TL_DTYPES[mm.dtype]})"
    em.fix(mm.id, at, value)
    _store_members(em, plan, group, lambda m: group.domain.canonical(g.node(m).shape))
    sum_symbols = sorted(em.symbols)
    doc = comment(f"The sum of %{mm.id}'s partial products over its K chunks, then its epilogue. ") + \
        _docstring(plan, group)
    # It takes what the epilogue reads (the product itself is in registers) and what it stores.
    read = set(group.stores).union(*(plan.reads_at(m, group.domain.canonical(g.node(m).shape)).memory
                                     for m in group.members[1:]))
    second = [p for p in ordered if p.node in read - (set(group.members) - set(group.stores))]
    sum_params = [p.name for p in second]
    source, sum_blocks = kernel_text(sum_name, sum_params + ["partials", "splits"], sum_symbols,
                                     ["BLOCK_M", "BLOCK_N"], em, doc)
    sum_sizes: dict[str, Dim] = {"rows": M, "cols": N}
    total = KernelSource(sum_name, "reduction", source, second, sum_symbols, sum_blocks,
                         [f"triton.cdiv({render_dim(M)}, meta['BLOCK_M']) * "
                          f"triton.cdiv({render_dim(N)}, meta['BLOCK_N'])"], sum_sizes)
    wide = wide or em.wide

    # The host function: chunk K at launch, run both.
    all_symbols = sorted(set(symbols) | set(sum_symbols))
    sizes_text = "{" + ", ".join(f"{json.dumps(key)}: {render_dim(v)}" for key, v in matmul_sizes.items()) + "}"
    wide_arg = (", WIDE=max(" + ", ".join(f"{p.name}.numel()" for p in ordered) + ") >= 2 ** 31") if wide else ""
    m_r, n_r, k_r = render_dim(M), render_dim(N), render_dim(K)
    host_doc = f"%{mm.id} matmul with K split {group.splits} ways (planned), then the ordered sum of the parts and the epilogue"
    host = two_stage_host(
        group.name, host_doc, [p.name for p in ordered], all_symbols, k_r, group.splits, ("BLOCK_K", 16),
        (f"{m_r} * {n_r}", "torch.float32"),
        (partial_name, sizes_text, partial.grid[0], operands, symbols),
        (sum_name, f"{{'rows': {m_r}, 'cols': {n_r}}}", total.grid[0], sum_params, sum_symbols), wide_arg)
    inner = [partial, total]
    return KernelSource(group.name, "splitk", "\n".join(host) + "\n", ordered, all_symbols, [], [],
                        {"M": M, "N": N, "K": K, "splits": group.splits}, host=True, inner=inner,
                        inner_configs={partial.name: gpu_config("matmul", partial.sizes),
                                       total.name: sum_config(total.sizes)})

