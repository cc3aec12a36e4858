"""Layer norm on the Triton backend: the `layernorm` and `layernorm_vjp` composites as kernels of their own.

A row of N features (N static, at most MAX_N) is held whole in registers, a
tile of BLOCK_M rows per step, as in Triton's layer-norm tutorial:

* forward — one pass per tile: the row mean, the variance of the centred
  row, rstd = 1/sqrt(var + eps), y = (x - mean) * rstd [* w + b]; mean and
  rstd are stored beside y (two floats a row) when the backward reads them;
* backward — dx is row-local: xhat from the saved statistics, g = dy [* w],
  dx = rstd * (g - mean(g) - xhat * mean(g * xhat)).  The weight and bias
  gradients sum over every row, which no single program sees: each of a
  fixed number of programs walks rows with a grid stride, accumulates
  dy * xhat and dy for its rows in fp32 registers and stores them as one row
  of a [2, programs, N] scratch; a second kernel, parallel over columns,
  sums those rows (Apex's and Liger's two-stage design: no atomics, so the
  result does not depend on scheduling).  A host function launches the two.

Statistics and sums are taken in fp32 whatever the storage type (f32, f16,
bf16); the last axis is padded to a power of two and masked.
"""

from __future__ import annotations

import json

from dln.compiler.fusion.planner import FusionPlan, Group
from dln.compiler.ir import DType, Node, TensorType
from dln.compiler.symbolic import Dim, numel
from dln.kernels.configs import gpu_config, next_pow2
from dln.kernels.emitter import Pointer, comment, dim_symbols, render_dim
from dln.kernels.lowering import TL_DTYPES
from dln.kernels.templates import KernelSource, _int64, _pointers, _wrap

# A row lives in registers.  Measured with ptxas: 8192 features, one row a program on 16 warps, compile
# without spills on sm_80 and sm_90 (127 registers in the backward); wider rows take the decomposition,
# whose reductions loop over column blocks instead.
MAX_N = 8192
TYPES = (DType.F32, DType.F16, DType.BF16)
# At most this many programs (and partial rows) in the backward's first stage: four per streaming
# multiprocessor of an H100 (132), so the second stage sums at most 512 rows per column.
PARTIALS = 512


def serves(n: Node, inputs: list[TensorType]) -> bool:
    """A kernel for layer norm over a known number of features that fits in registers."""
    x = n.types[0]
    return x.dtype in TYPES and isinstance(x.shape[-1], int) and 0 < x.shape[-1] <= MAX_N


def _outputs(plan: FusionPlan, group: Group, pointers: dict[int, Pointer]) -> dict[int, list[str]]:
    """The pointers each result of the composite is stored through (none for a result nobody reads)."""
    g = plan.graph
    c = g.node(group.members[0])
    if len(c.types) == 1:
        return {0: [pointers[c.id].name]}
    return {j: [pointers[m].name for m in ms] for j, ms in group.stored_results(g).items()}


def _head(name: str, params: list[str], blocks: list[str], doc: str) -> list[str]:
    return (["@triton.jit", f"def {name}("] + [f"    {p}," for p in params]
            + [f"    {b}: tl.constexpr," for b in blocks] + ["):", f'    """{doc}"""'])


def _doc(c: Node, text: str) -> str:
    where = f" From {c.loc.path.split('/')[-1]}:{c.loc.line}." if c.loc is not None else ""
    return "\n    ".join(comment(line) for line in _wrap(f"{text} (composite %{c.id}).{where}", 100))


def _start(symbols: list[str], wide: bool) -> list[str]:
    """`pid`, and under WIDE (a tensor of 2**31 elements or more) 64-bit sizes and offsets."""
    lines = ["pid = tl.program_id(0)"]
    if wide:
        lines += ["if WIDE:", "    pid = pid.to(tl.int64)"] + [f"    s_{s} = tl.cast(s_{s}, tl.int64)" for s in symbols]
    return lines


def _tile(rows: str, n: int) -> list[str]:
    """The row indices [BLOCK_M, 1] of the tile starting at row `start`, and its mask (with `cols`)."""
    return ["rows = start + tl.arange(0, BLOCK_M)[:, None]",
            f"row_ok = rows < {rows}",
            f"mask = row_ok & (cols < {n})"]


def _operands(plan: FusionPlan, group: Group, k: int):
    """The composite node, its input x, x's features n and rows, the group's pointers and those of the
    composite's results (`_outputs`)."""
    c = plan.graph.node(group.members[0])
    x = plan.graph.node(c.inputs[0])
    pointers = _pointers(plan, group, k)
    return c, x, x.shape[-1], numel(x.shape[:-1]), pointers, _outputs(plan, group, pointers)


def forward(plan: FusionPlan, group: Group, k: int, precision: str) -> KernelSource:
    c, x, n, rows, pointers, out = _operands(plan, group, k)
    width = next_pow2(n)
    symbols = sorted(dim_symbols(rows))
    wide = _int64(numel(x.shape))
    r = render_dim(rows)
    dtype = TL_DTYPES[x.dtype]
    lines = _start(symbols, wide)
    lines += [f"cols = tl.arange(0, {width})[None, :]  # {n} features, padded to a power of two",
              "start = pid * BLOCK_M"]
    lines += _tile(r, n)
    lines += [f"x = tl.load({pointers[x.id].name} + rows * {n} + cols, mask=mask, other=0.0).to(tl.float32)",
              f"mean = tl.sum(x, axis=1)[:, None] / {n}",
              "centered = tl.where(mask, x - mean, 0.0)",
              f"rstd = 1.0 / tl.sqrt(tl.sum(centered * centered, axis=1)[:, None] / {n} + {c.attrs['eps']!r})",
              "y = centered * rstd"]
    if c.attrs["affine"]:
        w, b = (pointers[i].name for i in c.inputs[1:])
        lines += [f"y = y * tl.load({w} + cols, mask=cols < {n}, other=0.0).to(tl.float32)"
                  f" + tl.load({b} + cols, mask=cols < {n}, other=0.0).to(tl.float32)"]
    for p in out.get(0, []):
        lines.append(f"tl.store({p} + rows * {n} + cols, y.to({dtype}), mask=mask)")
    for index, value in ((1, "mean"), (2, "rstd")):
        for p in out.get(index, []):
            lines.append(f"tl.store({p} + rows, {value}.to({dtype}), mask=row_ok)")
    ordered = [pointers[i] for i in sorted(pointers)]
    blocks = ["BLOCK_M"] + ["WIDE"] * wide
    doc = _doc(c, f"Layer norm over {n} features, BLOCK_M rows a program, one pass; stores "
                  f"{', '.join(f'%{s}' for s in group.stores)}")
    source = "\n".join(_head(group.name, [p.name for p in ordered] + [f"s_{s}" for s in symbols], blocks, doc)
                       + ["    " + line for line in lines]) + "\n"
    return KernelSource(group.name, "layernorm", source, ordered, symbols, blocks,
                        [f"triton.cdiv({r}, meta['BLOCK_M'])"], {"rows": rows, "N": n}, wide=wide)


def _rows_vjp(c: Node, x: Node, pointers: dict[int, Pointer], out: dict[int, list[str]],
              stride: bool) -> tuple[list[str], list[str], bool]:
    """(params, body lines, wide) of the kernel computing dx; with `stride` (affine) a grid-stride loop that
    also stores each program's partial weight and bias gradients in `scratch`."""
    n, rows = x.shape[-1], numel(x.shape[:-1])
    width = next_pow2(n)
    affine = c.attrs["affine"]
    names = [pointers[i].name for i in c.inputs]
    px, (pmean, prstd, pdy) = names[0], names[-3:]
    symbols = sorted(dim_symbols(rows))
    wide = _int64(numel(x.shape))
    r = render_dim(rows)
    dtype = TL_DTYPES[x.dtype]
    lines = _start(symbols, wide)
    lines.append(f"cols = tl.arange(0, {width})[None, :]  # {n} features, padded to a power of two")
    if affine:
        lines.append(f"w = tl.load({names[1]} + cols, mask=cols < {n}, other=0.0).to(tl.float32)")
    if stride:
        lines += [f"dw = tl.zeros([{width}], tl.float32)  # this program's partial sums over its rows",
                  f"db = tl.zeros([{width}], tl.float32)",
                  f"for start in range(pid * BLOCK_M, {r}, s_programs * BLOCK_M):"]
    else:
        lines.append("start = pid * BLOCK_M")
    step = _tile(r, n) + [
        f"x = tl.load({px} + rows * {n} + cols, mask=mask, other=0.0).to(tl.float32)",
        f"dy = tl.load({pdy} + rows * {n} + cols, mask=mask, other=0.0).to(tl.float32)",
        f"mean = tl.load({pmean} + rows, mask=row_ok, other=0.0).to(tl.float32)",
        f"rstd = tl.load({prstd} + rows, mask=row_ok, other=0.0).to(tl.float32)",
        "xhat = tl.where(mask, (x - mean) * rstd, 0.0)",
        "g = dy * w" if affine else "g = dy",
        f"dx = rstd * (g - tl.sum(g, axis=1)[:, None] / {n} - xhat * (tl.sum(g * xhat, axis=1)[:, None] / {n}))"]
    step += [f"tl.store({p} + rows * {n} + cols, dx.to({dtype}), mask=mask)" for p in out.get(0, [])]
    if stride:
        step += ["dw += tl.sum(dy * xhat, axis=0)", "db += tl.sum(dy, axis=0)"]
        lines += ["    " + line for line in step]
        lines += ["cols = tl.arange(0, " + str(width) + ")",
                  f"tl.store(scratch + pid * {n} + cols, dw, mask=cols < {n})",
                  f"tl.store(scratch + (s_programs + pid) * {n} + cols, db, mask=cols < {n})"]
    else:
        lines += step
    params = names[:1 + affine] + names[-3:] + [p for p in out.get(0, [])]
    params = list(dict.fromkeys(params)) + ["scratch"] * stride + [f"s_{s}" for s in symbols]
    params += ["s_programs"] * stride
    return params, lines, wide


def _sum(name: str, c: Node, n: int, out: dict[int, list[str]], dtype: DType) -> str:
    """The second stage: column blocks of the [2, programs, N] partials summed over their rows."""
    lines = ["pid = tl.program_id(0)",
             "cols = pid * BLOCK_N + tl.arange(0, BLOCK_N)",
             f"col_ok = cols < {n}",
             "dw = tl.zeros([BLOCK_P, BLOCK_N], tl.float32)",
             "db = tl.zeros([BLOCK_P, BLOCK_N], tl.float32)",
             "for start in range(0, s_programs, BLOCK_P):",
             "    part = start + tl.arange(0, BLOCK_P)[:, None]",
             "    mask = (part < s_programs) & col_ok[None, :]",
             f"    dw += tl.load(scratch + part * {n} + cols[None, :], mask=mask, other=0.0)",
             f"    db += tl.load(scratch + (s_programs + part) * {n} + cols[None, :], mask=mask, other=0.0)"]
    for index, value in ((1, "dw"), (2, "db")):
        for p in out.get(index, []):
            lines.append(f"tl.store({p} + cols, tl.sum({value}, axis=0).to({TL_DTYPES[dtype]}), mask=col_ok)")
    params = list(dict.fromkeys(out.get(1, []) + out.get(2, []))) + ["scratch", "s_programs"]
    doc = _doc(c, f"Layer norm's weight and bias gradients: the per-program partial sums over rows, summed "
                  f"per column ({n} features)")
    return "\n".join(_head(name, params, ["BLOCK_P", "BLOCK_N"], doc) + ["    " + line for line in lines]) + "\n"


def backward(plan: FusionPlan, group: Group, k: int, precision: str) -> KernelSource:
    c, x, n, rows, pointers, out = _operands(plan, group, k)
    by_name = {p.name: p for p in pointers.values()}
    sizes: dict[str, Dim] = {"rows": rows, "N": n}
    if not c.attrs["affine"]:
        params, lines, wide = _rows_vjp(c, x, pointers, out, stride=False)
        symbols = sorted(dim_symbols(rows))
        blocks = ["BLOCK_M"] + ["WIDE"] * wide
        doc = _doc(c, f"Layer norm's backward over {n} features: dx, BLOCK_M rows a program")
        source = "\n".join(_head(group.name, params, blocks, doc) + ["    " + line for line in lines]) + "\n"
        return KernelSource(group.name, "layernorm_vjp", source, [by_name[p] for p in params if p in by_name],
                            symbols, blocks, [f"triton.cdiv({render_dim(rows)}, meta['BLOCK_M'])"], sizes, wide=wide)
    rows_name, sum_name = f"{group.name}_rows", f"{group.name}_sum"
    params, lines, wide = _rows_vjp(c, x, pointers, out, stride=True)
    symbols = sorted(dim_symbols(rows))
    blocks = ["BLOCK_M"] + ["WIDE"] * wide
    doc = _doc(c, f"Layer norm's backward over {n} features: dx, and each program's partial weight and bias "
                  f"gradients over the rows it walks")
    rows_source = "\n".join(_head(rows_name, params, blocks, doc) + ["    " + line for line in lines]) + "\n"
    rows_pointers = [by_name[p] for p in params if p in by_name]
    # `programs` is fixed at launch; the scratch holds 2 x PARTIALS x N at most.
    partial = (2 * PARTIALS * n, DType.F32)
    rows_kernel = KernelSource(rows_name, "layernorm_vjp", rows_source, rows_pointers, symbols + ["programs"],
                               blocks, [], sizes, wide=wide, workspace=partial)
    sum_params_pointers = [by_name[p] for p in dict.fromkeys(out.get(1, []) + out.get(2, []))]
    sum_kernel = KernelSource(sum_name, "layernorm_sum", _sum(sum_name, c, n, out, x.dtype), sum_params_pointers,
                              ["programs"], ["BLOCK_P", "BLOCK_N"], [], {"N": n}, workspace=partial)
    ordered = [pointers[i] for i in sorted(pointers)]
    r = render_dim(rows)
    args = ", ".join(params[:params.index("scratch")])
    wide_arg = (", WIDE=max(" + ", ".join(f"{p}.numel()" for p in params[:params.index('scratch')])
                + ") >= 2 ** 31") if wide else ""
    sum_args = ", ".join(p.name for p in sum_params_pointers)
    doc = _doc(c, f"Layer norm's backward over {n} features in two stages: dx and per-program partial sums, "
                  "then their column sums")
    host = [f"def {group.name}(program, sizes, {', '.join(p.name for p in ordered)}"
            + "".join(f", s_{s}" for s in symbols) + "):",
            f'    """{doc}"""',
            f"    cfg = program._cfg({json.dumps(rows_name)}, {{'rows': {r}, 'N': {n}}})",
            f"    programs = max(1, min(triton.cdiv({r}, cfg.get('BLOCK_M', 1)), {PARTIALS}))",
            f"    scratch = program._scratch({json.dumps(group.name)}, 2 * programs * {n}, torch.float32)",
            f"    program.kernels[{json.dumps(rows_name)}][(programs,)]({args}, scratch"
            + "".join(f", s_{s}" for s in symbols) + f", programs{wide_arg}, **cfg)",
            f"    cfg = program._cfg({json.dumps(sum_name)}, {{'N': {n}}})",
            f"    program.kernels[{json.dumps(sum_name)}][lambda meta: (triton.cdiv({n}, meta['BLOCK_N']),)]("
            f"{sum_args}, scratch, programs, **cfg)"]
    inner = [rows_kernel, sum_kernel]
    return KernelSource(group.name, "layernorm_host", "\n".join(host) + "\n", ordered, symbols, [], [], sizes,
                        host=True, inner=inner,
                        inner_configs={kernel.name: gpu_config(kernel.kind, kernel.sizes) for kernel in inner})


TEMPLATES = {"layernorm": forward, "layernorm_vjp": backward}
