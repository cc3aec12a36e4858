"""Convolutions as implicit matrix products, with the fused epilogue of the matmul template.

Each op of `GroupOp.Convolution` is, per group of channels, a product
`out[m, n] = sum_k lhs[m, k] * rhs[k, n]` whose rows, columns and reduction
are the output's and operands' axes flattened:

| op             | rows m           | columns n             | reduction k          |
| -------------- | ---------------- | --------------------- | -------------------- |
| conv           | (batch, *out)    | out channel           | (in channel, *taps)  |
| conv_transpose | (batch, *in)     | in channel            | (out channel, *taps) |
| conv_weight    | out channel      | (in channel, *taps)   | (batch, *out)        |

No column matrix (im2col) is ever written: each program forms its tiles of
`lhs` and `rhs` in registers from computed addresses, the zero padding and
the window's edges being masks.  conv_transpose is the gather form: input
position s takes output position o = (s + lo - tap * dilation) / stride
where that divides exactly.  The group of channels is the grid's second axis.
`tl.dot` accumulates in fp32 (fp64 for f64) on the tensor cores; then the
output tile's epilogue (bias, activation, what else joined the group) runs
on the accumulator and the members are stored, as in the matmul template.
"""

from __future__ import annotations

from dataclasses import dataclass

from dln.compiler.fusion import index as ix
from dln.compiler.fusion.planner import FusionPlan, Group
from dln.compiler.ir import DType, Graph, Node, Op
from dln.compiler.symbolic import Dim, numel
from dln.dsl.diagnostics import Diagnostic, DlnError, Note
from dln.kernels.configs import tensor_cores
from dln.kernels.emitter import Emitter, _mentions, render_dim
from dln.kernels.lowering import TL_DTYPES
from dln.kernels.precision import PRECISIONS
from dln.kernels.templates import (
    KernelSource,
    _docstring,
    _finish,
    _operand_offset,
    _pointers,
    _sizes,
    _split,
    _start,
    _store_members,
    grouped_tile_order,
    product_value,
    reduction_tiles,
    widened_in_interpreter,
)

Axes = tuple[tuple[str, Dim], ...]   # (variable name, extent), flattened row-major


@dataclass(frozen=True)
class Window:
    """A coordinate of an operand computed from the kernel's variables (the sum of `terms` and
    `offset`), valid where it is a multiple of `divisor` whose quotient lies in [0, extent):
    outside lies the zero padding (conv) or a tap that reaches no output (conv_transpose)."""

    name: str
    terms: tuple[tuple[str, int], ...]   # (variable, coefficient)
    offset: int
    divisor: int
    extent: Dim

    @property
    def expression(self) -> str:
        """`pos0 * 2 - tap0_a + 1`: the terms, then the offset."""
        text = ""
        for v, k in self.terms:
            term = v if abs(k) == 1 else f"{v} * {abs(k)}"
            text = (f"-{term}" if k < 0 else term) if not text else f"{text} {'-' if k < 0 else '+'} {term}"
        if not text:
            return str(self.offset)
        return f"{text} {'-' if self.offset < 0 else '+'} {abs(self.offset)}" if self.offset else text


@dataclass(frozen=True)
class Operand:
    node: int
    index: ix.Index              # in the kernel's variables and the windows' names
    windows: tuple[Window, ...] = ()


@dataclass(frozen=True)
class Gemm:
    """One convolution as a product per group: how its axes fold into rows, columns, reduction."""

    rows: Axes
    cols: Axes
    depth: Axes                  # the reduction; its variables carry `_a` in lhs, `_b` in rhs
    groups: int
    output: ix.Index             # the output's element at (row, column) of group `grp`
    lhs: Operand                 # [BLOCK_M, BLOCK_K] tiles
    rhs: Operand                 # [BLOCK_K, BLOCK_N] tiles


def _var(name: str, extent: Dim) -> ix.Ix:
    """An index variable; an axis of extent 1 is the constant 0 (no variable is emitted for it)."""
    return ix.ZERO if extent == 1 else ix.Var(name, extent)


def _channel(groups: int, per_group: Dim, local: ix.Ix) -> ix.Ix:
    """Channel `local` of group `grp`."""
    return ix.add(ix.mul(_var("grp", groups), per_group), local)


def _geometry(n: Node) -> tuple[tuple[int, ...], tuple[tuple[int, int], ...], tuple[int, ...], int]:
    a = n.attrs
    return tuple(a["stride"]), tuple(tuple(p) for p in a["padding"]), tuple(a["dilation"]), a["groups"]


def _taps(kernel, side: str) -> tuple[ix.Ix, ...]:
    return tuple(_var(f"tap{a}_{side}", k) for a, k in enumerate(kernel))


def _input_windows(positions, taps, stride, pads, dilation, spatial, side: str) -> tuple[Window, ...]:
    """Where conv's output position meets its input: o * stride + tap * dilation - lo, per axis
    (`positions`, `taps`: the variables, None for an axis of extent 1)."""
    out = []
    for a, (o, t, (lo, _)) in enumerate(zip(positions, taps, pads)):
        terms = ((o, stride[a]),) if o else ()
        terms += ((t, dilation[a]),) if t else ()
        out.append(Window(f"in{a}{side}", terms, -lo, 1, spatial[a]))
    return tuple(out)


def _names(prefix: str, extents, suffix: str = "") -> list[str | None]:
    return [f"{prefix}{a}{suffix}" if d != 1 else None for a, d in enumerate(extents)]


def _conv(g: Graph, n: Node) -> Gemm:
    """conv: out[b, co, o] = sum over (ci, tap) of x[b, ci, o * stride + tap * dilation - lo] * w[co, ci, tap]."""
    x, w = (g.node(i) for i in n.inputs)
    stride, pads, dilation, groups = _geometry(n)
    spatial, kernel, out = x.shape[2:], w.shape[2:], n.shape[2:]
    c_in, c_out = x.shape[1] // groups, w.shape[0] // groups
    r = len(spatial)
    rows = (("batch", n.shape[0]),) + tuple((f"pos{a}", out[a]) for a in range(r))
    depth = (("cin", c_in),) + tuple((f"tap{a}", kernel[a]) for a in range(r))
    co = _channel(groups, c_out, _var("chan", c_out))
    windows = _input_windows(_names("pos", out), _names("tap", kernel, "_a"), stride, pads, dilation, spatial, "_a")
    lhs = Operand(x.id, (_var("batch", x.shape[0]), _channel(groups, c_in, _var("cin_a", c_in)))
                  + tuple(ix.Var(wd.name, wd.extent) for wd in windows), windows)
    rhs = Operand(w.id, (co, _var("cin_b", c_in)) + _taps(kernel, "b"))
    output = (_var("batch", n.shape[0]), co) + tuple(_var(f"pos{a}", out[a]) for a in range(r))
    return Gemm(rows, (("chan", c_out),), depth, groups, output, lhs, rhs)


def _conv_transpose(g: Graph, n: Node) -> Gemm:
    """conv_transpose: out[b, ci, s] = sum over (co, tap) of y[b, co, (s + lo - tap * dilation) / stride] *
    w[co, ci, tap], over the taps where the division is exact and lands inside y."""
    y, w = (g.node(i) for i in n.inputs)
    stride, pads, dilation, groups = _geometry(n)
    spatial, kernel, out = n.shape[2:], w.shape[2:], y.shape[2:]
    c_in, c_out = n.shape[1] // groups, y.shape[1] // groups
    r = len(spatial)
    rows = (("batch", n.shape[0]),) + tuple((f"pos{a}", spatial[a]) for a in range(r))
    depth = (("cout", c_out),) + tuple((f"tap{a}", kernel[a]) for a in range(r))
    windows = []
    for a, (lo, _) in enumerate(pads):
        terms = ((f"pos{a}", 1),) if spatial[a] != 1 else ()
        terms += ((f"tap{a}_a", -dilation[a]),) if kernel[a] != 1 else ()
        windows.append(Window(f"src{a}_a", terms, lo, stride[a], out[a]))
    lhs = Operand(y.id, (_var("batch", y.shape[0]), _channel(groups, c_out, _var("cout_a", c_out)))
                  + tuple(ix.Var(wd.name, wd.extent) for wd in windows), tuple(windows))
    rhs = Operand(w.id, (_channel(groups, c_out, _var("cout_b", c_out)), _var("chan", c_in)) + _taps(kernel, "b"))
    output = (_var("batch", n.shape[0]), _channel(groups, c_in, _var("chan", c_in))) \
        + tuple(_var(f"pos{a}", spatial[a]) for a in range(r))
    return Gemm(rows, (("chan", c_in),), depth, groups, output, lhs, rhs)


def _conv_weight(g: Graph, n: Node) -> Gemm:
    """conv_weight: dw[co, ci, tap] = sum over (b, o) of dy[b, co, o] * x[b, ci, o * stride + tap * dilation - lo]."""
    x, dy = (g.node(i) for i in n.inputs)
    stride, pads, dilation, groups = _geometry(n)
    spatial, kernel, out = x.shape[2:], n.shape[2:], dy.shape[2:]
    c_in, c_out = x.shape[1] // groups, dy.shape[1] // groups
    r = len(spatial)
    cols = (("cin", c_in),) + tuple((f"tap{a}", kernel[a]) for a in range(r))
    depth = (("batch", x.shape[0]),) + tuple((f"pos{a}", out[a]) for a in range(r))
    co = _channel(groups, c_out, _var("chan", c_out))
    lhs = Operand(dy.id, (_var("batch_a", x.shape[0]), co) + tuple(_var(f"pos{a}_a", out[a]) for a in range(r)))
    windows = _input_windows(_names("pos", out, "_b"), _names("tap", kernel), stride, pads, dilation, spatial,
                             "_b")   # the taps are columns here
    rhs = Operand(x.id, (_var("batch_b", x.shape[0]), _channel(groups, c_in, _var("cin", c_in)))
                  + tuple(ix.Var(wd.name, wd.extent) for wd in windows), windows)
    output = (co, _var("cin", c_in)) + tuple(_var(f"tap{a}", kernel[a]) for a in range(r))
    return Gemm((("chan", c_out),), cols, depth, groups, output, lhs, rhs)


GEMMS = {Op.CONV: _conv, Op.CONV_TRANSPOSE: _conv_transpose, Op.CONV_WEIGHT: _conv_weight}


def convolution(plan: FusionPlan, group: Group, k: int, precision: str = "ieee") -> KernelSource:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown matmul precision {precision!r}; precisions: {', '.join(PRECISIONS)}")
    g = plan.graph
    node = g.node(group.members[0])
    if not node.dtype.is_float:
        raise DlnError(Diagnostic("E0303", f"integer convolutions ({node.type}) are not available on the Triton "
                                           "backend yet", node.loc, (Note("the numpy backend computes them"),)))
    gemm = GEMMS[node.op](g, node)
    M, N, K = (numel(tuple(d for _, d in axes)) for axes in (gemm.rows, gemm.cols, gemm.depth))
    pointers = _pointers(plan, group, k)
    em = Emitter(g, pointers, {})
    em.members = set(group.members)
    em.block_shape = "[BLOCK_M, BLOCK_N]"
    m_text, n_text, k_text = em.dim(M), em.dim(N), em.dim(K)
    wide = _start(em, _sizes(plan, pointers))
    # Measured with ptxas: the grouped order's index math makes two exact-fp32 (FMA) input gradients spill
    # 16 B on sm_90 (conv_autoencoder's and dcgan's seed gradients); FMA tiles are small and many per wave,
    # so they keep the row-major order.
    tile_start(em, gemm, M, N, m_text, n_text, grouped=tensor_cores(precision, g.node(gemm.lhs.node).dtype))
    with reduction_tiles(em, node.dtype, k_text, wide):
        lhs, rhs = operand_tiles(em, g, gemm, K, k_text, m_text, n_text)
        prec = "" if node.dtype is DType.F64 else f", input_precision={precision!r}"
        em.line(f"acc = tl.dot({lhs}, {rhs}, acc{prec})  # %{node.id} {node.op.value}")
    em.line(f"mask = (m < {m_text}) & (n < {n_text})")
    at = group.domain.vars()
    tile = {name for name, _ in gemm.rows + gemm.cols}
    for var, e in zip(at, gemm.output):  # the output's axes, as the epilogue indexes them
        if isinstance(var, ix.Var):
            text = em.render(e)
            if not _mentions((e,), tile):  # the same for the whole tile (the group's only channel): a tile still
                text = f"tl.broadcast_to({text}, [BLOCK_M, BLOCK_N])"
            em.line(f"{var.name} = {text}")
            em.vars[var.name] = var.name
    em.fix(node.id, at, product_value(g, group, node))
    _store_members(em, plan, group, lambda m: group.domain.canonical(g.node(m).shape))
    grid = [f"triton.cdiv({render_dim(M)}, meta['BLOCK_M']) * triton.cdiv({render_dim(N)}, meta['BLOCK_N'])",
            str(gemm.groups)]
    return _finish(group.name, "convolution", em, pointers, ["BLOCK_M", "BLOCK_N", "BLOCK_K"], grid,
                   _docstring(plan, group), {"M": M, "N": N, "K": K, "groups": gemm.groups})


def tile_start(em: Emitter, gemm: Gemm, M: Dim, N: Dim, m_text: str, n_text: str, grouped: bool) -> None:
    """The prologue of a convolution's tile: its group of channels (program axis 1), the tile's place
    (grouped order or row-major), its rows `m` and columns `n`, split into their axes."""
    em.line("grp = tl.program_id(1)  # the group of channels")
    em.vars["grp"] = "grp"
    if grouped:
        grouped_tile_order(em, m_text, n_text)
    else:
        em.line(f"num_n = tl.cdiv({n_text}, BLOCK_N)")
        em.line("pid_m = pid // num_n")
        em.line("pid_n = pid % num_n")
    em.line("m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)[:, None]")
    em.line("n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]")
    _axes(em, "m", M, gemm.rows, "")
    _axes(em, "n", N, gemm.cols, "")


def operand_tiles(em: Emitter, g: Graph, gemm: Gemm, K: Dim, k_end: str, m_text: str,
                  n_text: str) -> tuple[str, str]:
    """The two operand tiles of one step of the reduction loop over K (`ka`, `kb` from the loop's `k0`,
    masked at `k_end`), widened to fp32 under Triton's interpreter for half inputs: their names."""
    _axes(em, "ka", K, gemm.depth, "_a")
    lhs = _tile(em, g, gemm.lhs, "lhs", f"(m < {m_text}) & (ka < {k_end})", "[BLOCK_M, BLOCK_K]")
    _axes(em, "kb", K, gemm.depth, "_b")
    rhs = _tile(em, g, gemm.rhs, "rhs", f"(kb < {k_end}) & (n < {n_text})", "[BLOCK_K, BLOCK_N]")
    widened_in_interpreter(em, g.node(gemm.lhs.node).dtype, lhs, rhs)
    return lhs, rhs


def _axes(em: Emitter, flat: str, total: Dim, axes: Axes, suffix: str) -> None:
    """One variable per axis from the flat tile index `flat` (size-1 axes have none)."""
    _split(em, ix.Var(flat, total), tuple(d for _, d in axes), [name + suffix for name, _ in axes])


def _tile(em: Emitter, g: Graph, operand: Operand, name: str, mask: str, shape: str) -> str:
    """Load one operand tile from computed addresses: the window's edges and the padding are masks."""
    for w in operand.windows:
        em.vars[w.name] = w.name
        if not w.terms:  # an axis of one output position and one tap: decided here
            constant = w.offset
            if constant % w.divisor or not 0 <= constant // w.divisor < w.extent:
                em.line(f"{name} = tl.zeros({shape}, dtype={TL_DTYPES[g.node(operand.node).dtype]})  # all padding")
                return name
            em.vars[w.name] = str(constant // w.divisor)
        elif w.divisor == 1:
            em.line(f"{w.name} = {w.expression}")
            mask += f" & ({w.name} >= 0) & ({w.name} < {em.dim(w.extent)})"
        else:  # conv_transpose: only taps whose source position is a whole multiple of the stride
            em.line(f"{w.name}_t = {w.expression}")
            em.line(f"{w.name} = {w.name}_t // {w.divisor}")
            mask += (f" & ({w.name}_t >= 0) & ({w.name}_t % {w.divisor} == 0)"
                     f" & ({w.name} < {em.dim(w.extent)})")
    pointer, offset = _operand_offset(em, g, operand.node, operand.index, {})
    em.line(f"{name} = tl.load(tl.broadcast_to({pointer} + {offset}, {shape}), mask={mask}, other=0.0)")
    return name

