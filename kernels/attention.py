"""Flash attention: `sdpa` and `sdpa_vjp` (dln.compiler.composites.attention) as kernels that never
store the T x T scores.

Forward (FlashAttention-2): one program per (query block, batch*head).  It
keeps its BLOCK_M queries in registers and walks the keys BLOCK_N at a time
with the online softmax: a running row maximum m, a running sum l of
exp(s - m) and an output accumulator rescaled by exp(m_old - m_new) whenever
the maximum grows.  Only `out` and the log-sum-exp per row (m + log l) are
stored.  With `causal` a query block stops at its last query's diagonal
(keys j <= i, top-left aligned as torch's is_causal), so the key blocks
wholly above the diagonal are never loaded.  A row that sees no key keeps
m = -inf: its exponentials are taken against 0 instead (exp(-inf) = 0, not
nan), its output is 0 and its lse -inf, as the decomposition gives.

Backward: two kernels, both recomputing P = exp(s - lse) block by block.
The dQ kernel runs first, one program per query block: it computes
delta = rowsum(dout * out) for its rows (a row it owns: no extra pass), stores
it to a scratch [N, Tq] for the other kernel, and walks the key blocks for
dq.  The dK/dV kernel, one program per key block, walks the query blocks
(from its diagonal on when causal) for dk and dv.  Two kernels instead of
one with atomics on dq: deterministic sums, no zeroed fp32 buffer.

Operands are read through their views: q, k and v of the attention layer
are permutes of slices of one projection, and each tile load uses their
strides (the planner realizes the base under the views, not a copy; see
`_strided_base`).  The bias (a key-padding mask) is read with stride 0 on
its size-1 axes.  Head sizes are padded to a power of two (at least 16,
`tl.dot`'s minimum) and masked.  Products accumulate in fp32; f16/bf16
operands go to `tl.dot` as they are (and P is cast to v's type for P @ V).
Offsets within one (batch, head) slice are 32-bit, the batch offsets 64-bit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from dln.compiler.fusion import index as ix
from dln.compiler.fusion.planner import FusionPlan, Group
from dln.compiler.ir import DType, Graph, Node, TensorType
from dln.compiler.symbolic import Dim, numel
from dln.kernels.emitter import Emitter, comment, dim_symbols, render_dim
from dln.kernels.lowering import HALF_TYPES, TL_DTYPES
from dln.kernels.precision import PRECISIONS
from dln.kernels.recurrent import tile
from dln.kernels.templates import KernelSource, _pointers, _wrap

HEAD_LIMIT = 128   # the largest head (E, Ev) the configurations are measured for (kernels/configs.py)
DTYPES = (DType.F32, DType.F16, DType.BF16)


def serves(n: Node, inputs: list[TensorType]) -> bool:
    """Does the Triton target run this sdpa / sdpa_vjp node as flash attention?  Without dropout and a
    bias gradient, for static heads up to HEAD_LIMIT, in f32 or a half type (f64 stays decomposed)."""
    q, k, v = inputs[:3]
    heads = (q.shape[-1], v.shape[-1])
    return (not n.attrs.get("dropout") and not n.attrs.get("bias_grad") and q.dtype in DTYPES
            and all(isinstance(d, int) and 1 <= d <= HEAD_LIMIT for d in heads))


@dataclass
class Access:
    """Element (batch..., row, col) of an operand at pointer + base + row * row_stride + col * col_stride,
    `base` an expression of the batch indices b0, b1, ..."""

    pointer: str
    base: str
    row: str
    col: str


def _access(em: Emitter, g: Graph, node_id: int, tail: tuple[str, ...] = ("row", "col")) -> Access:
    """Where an operand's elements lie: through its views down to the buffer the kernel reads.  `tail`
    names its last axes (a row of lse has no column); the others are the batch axes b0, b1, ..."""
    n = g.node(node_id)
    names = [f"b{a}" for a in range(len(n.shape) - len(tail))] + list(tail)
    index = tuple(ix.ZERO if d == 1 else ix.Var(name, d) for name, d in zip(names, n.shape))
    while node_id not in em.pointers and n.op in ix.VIEWS:
        src = g.node(n.inputs[0])
        index = ix.view_index(n, index, src.shape)
        node_id, n = src.id, src
    p = em.pointers[node_id]
    flat = ix.linear(index, p.shape)
    strides: dict[str, Dim] = {"row": 0, "col": 0}
    rest = []
    for term in flat.terms if isinstance(flat, ix.Add) else (flat,):
        x, k = (term.x, term.k) if isinstance(term, ix.Mul) else (term, 1)
        if isinstance(x, ix.Var) and x.name in strides:
            strides[x.name] = strides[x.name] + k
        else:
            rest.append(term)
    base = ix.add(*rest)
    if _mentions(base, {"row", "col"}):
        raise AssertionError(f"operand %{node_id} is not a strided view (the planner stores such views)")
    return Access(p.name, em.render(base), em.dim(strides["row"]), em.dim(strides["col"]))


def _offset(base: str, *terms: tuple[str, str]) -> str:
    """base + index * stride for each (index, stride); a stride of 0 (a broadcast axis, or an axis of 1) is
    kept: its term gives the tile its shape."""
    parts = [] if base == "0" else [base]
    return " + ".join(parts + [index if stride == "1" else f"{index} * {stride}" for index, stride in terms])


def _mentions(e: ix.Ix, names: set[str]) -> bool:
    if isinstance(e, ix.Var):
        return e.name in names
    if isinstance(e, ix.Add):
        return any(_mentions(t, names) for t in e.terms)
    if isinstance(e, (ix.Mul, ix.Div, ix.Mod)):
        return _mentions(e.x, names)
    return False


@dataclass
class Attention:
    """What every attention kernel of one composite node shares: its operands, sizes and emitter."""

    node: Node
    em: Emitter
    q: Access
    k: Access
    v: Access
    bias: Access | None
    batch: tuple[Dim, ...]
    tq: str
    tk: str
    E: int
    Ev: int
    dtype: DType
    precision: str

    def dot(self, a: str, b: str) -> str:
        return f"tl.dot({a}, {b}, input_precision={self.precision!r})"

    def start(self, block: str, what: str) -> None:
        """The program's block and batch index, the batch split into one index per batch axis."""
        em = self.em
        em.line(f"start = tl.program_id(0) * {block}  # the first of this program's {what}")
        em.line("pid_b = tl.program_id(1).to(tl.int64)  # (batch, head), flat: 64-bit batch offsets")
        batch = ix.delinearize(ix.Var("pid_b", numel(self.batch)), self.batch)
        em.vars["pid_b"] = "pid_b"
        for a, e in enumerate(batch):
            if not ix.is_zero(e):
                em.line(f"b{a} = {em.render(e)}")
        em.line(f"offs_e = tl.arange(0, {tile(self.E)})  # the head, padded to a power of two")
        em.line(f"offs_ev = tl.arange(0, {tile(self.Ev)})")

    def tile_ptrs(self, name: str, a: Access, rows: str, cols: str, transposed: bool = False) -> str:
        """`name_ptrs`: pointers to a tile of `a` (rows x cols; cols x rows when transposed)."""
        r, c = (f"{rows}[:, None]", f"{cols}[None, :]") if not transposed else (f"{rows}[None, :]",
                                                                                f"{cols}[:, None]")
        self.em.line(f"{name}_ptrs = {a.pointer} + ({_offset(a.base, (r, a.row), (c, a.col))})")
        return f"{name}_ptrs"

    def load(self, name: str, ptrs: str, mask: str) -> None:
        self.em.line(f"{name} = tl.load({ptrs}, mask={mask}, other=0.0)")
        if self.dtype in HALF_TYPES:
            with self.em.block("if INTERPRETED:  # no half arithmetic there: exact fp32 products instead"):
                self.em.line(f"{name} = {name}.to(tl.float32)")

    def scores(self, rows: str, keys: str, transposed: bool, a: str, b: str) -> None:
        """`s`: the scaled, masked scores of a tile (keys x rows when transposed), -inf where no key."""
        em = self.em
        em.line(f"s = {self.dot(a, b)} * {self.node.attrs['scale']!r}")
        r, c = (f"{rows}[:, None]", f"{keys}[None, :]") if not transposed else (f"{rows}[None, :]",
                                                                                f"{keys}[:, None]")
        if self.bias is not None:
            em.line(f"s += tl.load(bias_ptrs, mask=({r} < {self.tq}) & ({c} < {self.tk}), other=0.0)"
                    ".to(tl.float32)  # the mask, stride 0 on its size-1 axes")
        if self.node.attrs["causal"]:
            em.line(f"s = tl.where(({c} < {self.tk}) & ({c} <= {r}), s, float('-inf'))  # causal: key j for "
                    "query i when j <= i")
        else:
            em.line(f"s = tl.where({c} < {self.tk}, s, float('-inf'))")

    def lse(self, rows: str, lse: Access) -> None:
        """`lse` of the rows, 0 where it is -inf (a row with no key: every p is then exp(-inf) = 0)."""
        em = self.em
        em.line(f"lse = tl.load({lse.pointer} + ({_offset(lse.base, (rows, lse.row))}), mask={rows} < {self.tq}, "
                "other=0.0).to(tl.float32)")
        em.line("lse = tl.where(lse == float('-inf'), 0.0, lse)")

    def store(self, targets: list[Access], value: str, rows: str, cols: str | None, mask: str) -> None:
        for t in targets:
            at = ((f"{rows}[:, None]", t.row), (f"{cols}[None, :]", t.col)) if cols else ((rows, t.row),)
            cast = "" if self.dtype is DType.F32 else f".to({TL_DTYPES[self.dtype]})"
            self.em.line(f"tl.store({t.pointer} + ({_offset(t.base, *at)}), ({value}){cast}, mask={mask})")


def _setup(plan: FusionPlan, group: Group, k: int, precision: str):
    """(the shared state, pointers, the stored results: index -> their accesses)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown matmul precision {precision!r}; precisions: {', '.join(PRECISIONS)}")
    g = plan.graph
    node = g.node(group.members[0])
    pointers = _pointers(plan, group, k)
    q, kk, v = (g.node(i) for i in node.inputs[:3])
    em = Emitter(g, pointers, {f"b{a}": f"b{a}" for a in range(len(q.shape) - 2)})   # `start` defines them
    bias = _access(em, g, node.inputs[3]) if node.attrs["masked"] else None
    state = Attention(node, em, _access(em, g, q.id), _access(em, g, kk.id), _access(em, g, v.id), bias,
                      q.shape[:-2], em.dim(q.shape[-2]), em.dim(kk.shape[-2]), q.shape[-1], v.shape[-1], q.dtype,
                      precision)
    results = {j: [_access(em, g, m, ("row", "col") if len(g.node(m).shape) == len(q.shape) else ("row",))
                   for m in ms]   # lse: no column
               for j, ms in group.stored_results(g).items()}
    return state, pointers, results


_TAILS = (("row", "col"), ("row",), ("row", "col"))   # sdpa_vjp's out, lse, dout


def _doc(node: Node, what: str) -> str:
    a = node.attrs
    flags = ", ".join(f for f, on in (("causal", a["causal"]), ("masked", a["masked"])) if on)
    where = f"{node.loc.path.split('/')[-1]}:{node.loc.line}" if node.loc is not None else "generated code"
    text = f"{what} of %{node.id} {a['composite']} ({flags or 'no mask'}, scale {a['scale']:.6g}) from {where}."
    return "\n    ".join(comment(line) for line in _wrap(text, 100))


def _kernel(name: str, kind: str, st: Attention, pointers, doc: str, grid: list[str], sizes: dict,
            scratch: bool = False) -> KernelSource:
    body = "\n".join(st.em.lines)
    ordered = [pointers[i] for i in sorted(pointers) if re.search(rf"\b{pointers[i].name}\b", body)]
    symbols = sorted(st.em.symbols)
    params = [p.name for p in ordered] + ["scratch"] * scratch + [f"s_{s}" for s in symbols]
    head = ["@triton.jit", f"def {name}(", *(f"    {p}," for p in params),
            "    BLOCK_M: tl.constexpr,", "    BLOCK_N: tl.constexpr,", "):", f'    """{doc}"""']
    workspace = (numel(st.batch) * sizes["Tq"], DType.F32) if scratch else None
    return KernelSource(name, kind, "\n".join(head) + "\n" + body + "\n", ordered, symbols,
                        ["BLOCK_M", "BLOCK_N"], grid, sizes, workspace=workspace)


def _sizes(plan: FusionPlan, group: Group) -> dict[str, Dim]:
    g = plan.graph
    q, k, v = (g.node(i) for i in g.node(group.members[0]).inputs[:3])
    return {"batch": numel(q.shape[:-2]), "Tq": q.shape[-2], "Tk": k.shape[-2], "E": q.shape[-1],
            "Ev": v.shape[-1]}


def _grid(sizes: dict[str, Dim], rows: str, block: str) -> list[str]:
    return [f"triton.cdiv({render_dim(sizes[rows])}, meta[{block!r}])", render_dim(sizes["batch"])]


# ---- forward -------------------------------------------------------------------------------------------------

def forward(plan: FusionPlan, group: Group, k: int, precision: str = "ieee") -> KernelSource:
    st, pointers, results = _setup(plan, group, k, precision)
    em, E, Ev = st.em, st.E, st.Ev
    st.start("BLOCK_M", "queries")
    em.line("rows = start + tl.arange(0, BLOCK_M)")
    em.line("offs_n = tl.arange(0, BLOCK_N)")
    q_ptrs = st.tile_ptrs("q", st.q, "rows", "offs_e")
    st.load("q", q_ptrs, f"(rows[:, None] < {st.tq}) & (offs_e[None, :] < {E})")
    kt = st.tile_ptrs("kt", st.k, "offs_n", "offs_e", transposed=True)
    v_ptrs = st.tile_ptrs("v", st.v, "offs_n", "offs_ev")
    if st.bias is not None:
        st.tile_ptrs("bias", st.bias, "rows", "offs_n")
    em.line("m = tl.full([BLOCK_M], float('-inf'), tl.float32)  # running row maximum")
    em.line("l = tl.zeros([BLOCK_M], tl.float32)  # running sum of exp(s - m)")
    em.line(f"acc = tl.zeros([BLOCK_M, {tile(Ev)}], tl.float32)")
    if st.node.attrs["causal"]:
        em.line(f"end = tl.minimum({st.tk}, start + BLOCK_M)  # key blocks above the diagonal: skipped")
    else:
        em.line(f"end = {st.tk}")
    with em.block("for start_n in range(0, end, BLOCK_N):"):
        em.line("keys = start_n + offs_n")
        st.load("kt", kt, f"(offs_e[:, None] < {E}) & (keys[None, :] < {st.tk})")
        st.scores("rows", "keys", False, "q", "kt")
        em.line("m_new = tl.maximum(m, tl.max(s, 1))")
        em.line("m_safe = tl.where(m_new == float('-inf'), 0.0, m_new)  # no key yet: exp(-inf - 0) = 0, not nan")
        em.line("p = tl.exp(s - m_safe[:, None])")
        em.line("alpha = tl.exp(m - m_safe)  # rescales what was summed under the old maximum")
        em.line("l = l * alpha + tl.sum(p, 1)")
        st.load("v", v_ptrs, f"(keys[:, None] < {st.tk}) & (offs_ev[None, :] < {Ev})")
        em.line(f"acc = acc * alpha[:, None] + {st.dot('p.to(v.dtype)', 'v')}")
        em.line("m = m_new")
        em.line(f"kt_ptrs += BLOCK_N * {st.k.row}")
        em.line(f"v_ptrs += BLOCK_N * {st.v.row}")
        if st.bias is not None:
            em.line(f"bias_ptrs += BLOCK_N * {st.bias.col}")
    em.line("row_ok = rows < " + st.tq)
    st.store(results.get(0, []), "acc / tl.where(l == 0.0, 1.0, l)[:, None]", "rows", "offs_ev",
             f"row_ok[:, None] & (offs_ev[None, :] < {Ev})")
    if results.get(1):
        em.line("lse = tl.where(m == float('-inf'), 0.0, m) + tl.log(l)  # -inf where a row has no key")
        st.store(results[1], "lse", "rows", None, "row_ok")
    sizes = _sizes(plan, group)
    return _kernel(group.name, "attention", st, pointers, _doc(st.node, "Flash attention forward"),
                   _grid(sizes, "Tq", "BLOCK_M"), sizes)


# ---- backward ------------------------------------------------------------------------------------------------

def _dq(plan: FusionPlan, group: Group, k: int, precision: str, name: str) -> KernelSource:
    st, pointers, results = _setup(plan, group, k, precision)
    em, E, Ev = st.em, st.E, st.Ev
    g = plan.graph
    out, lse, dout = (_access(em, g, i, tail) for i, tail in zip(st.node.inputs[-3:], _TAILS))
    st.start("BLOCK_M", "queries")
    em.line("rows = start + tl.arange(0, BLOCK_M)")
    em.line(f"row_ok = rows < {st.tq}")
    em.line("offs_n = tl.arange(0, BLOCK_N)")
    st.load("q", st.tile_ptrs("q", st.q, "rows", "offs_e"), f"row_ok[:, None] & (offs_e[None, :] < {E})")
    ev_mask = f"row_ok[:, None] & (offs_ev[None, :] < {Ev})"
    st.load("do", st.tile_ptrs("do", dout, "rows", "offs_ev"), ev_mask)
    st.load("o", st.tile_ptrs("o", out, "rows", "offs_ev"), ev_mask)
    em.line("delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)  # rowsum(dout * out)")
    em.line(f"tl.store(scratch + pid_b * {st.tq} + rows, delta, mask=row_ok)  # for the dK/dV kernel")
    st.lse("rows", lse)
    kt = st.tile_ptrs("kt", st.k, "offs_n", "offs_e", transposed=True)
    vt = st.tile_ptrs("vt", st.v, "offs_n", "offs_ev", transposed=True)
    if st.bias is not None:
        st.tile_ptrs("bias", st.bias, "rows", "offs_n")
    em.line(f"dq = tl.zeros([BLOCK_M, {tile(E)}], tl.float32)")
    em.line(f"end = tl.minimum({st.tk}, start + BLOCK_M)  # causal: no key past the diagonal"
            if st.node.attrs["causal"] else f"end = {st.tk}")
    with em.block("for start_n in range(0, end, BLOCK_N):"):
        em.line("keys = start_n + offs_n")
        st.load("kt", kt, f"(offs_e[:, None] < {E}) & (keys[None, :] < {st.tk})")
        st.scores("rows", "keys", False, "q", "kt")
        em.line("p = tl.exp(s - lse[:, None])  # P, recomputed")
        st.load("vt", vt, f"(offs_ev[:, None] < {Ev}) & (keys[None, :] < {st.tk})")
        em.line(f"dp = {st.dot('do', 'vt')}")
        em.line("ds = p * (dp - delta[:, None])")
        em.line(f"dq += {st.dot('ds.to(kt.dtype)', 'tl.trans(kt)')}")
        em.line(f"kt_ptrs += BLOCK_N * {st.k.row}")
        em.line(f"vt_ptrs += BLOCK_N * {st.v.row}")
        if st.bias is not None:
            em.line(f"bias_ptrs += BLOCK_N * {st.bias.col}")
    st.store(results.get(0, []), f"dq * {st.node.attrs['scale']!r}", "rows", "offs_e",
             f"row_ok[:, None] & (offs_e[None, :] < {E})")
    sizes = _sizes(plan, group)
    return _kernel(name, "attention_dq", st, pointers, _doc(st.node, "dQ (and delta = rowsum(dout * out))"),
                   _grid(sizes, "Tq", "BLOCK_M"), sizes, scratch=True)


def _dkdv(plan: FusionPlan, group: Group, k: int, precision: str, name: str) -> KernelSource:
    st, pointers, results = _setup(plan, group, k, precision)
    em, E, Ev = st.em, st.E, st.Ev
    g = plan.graph
    _, lse, dout = (_access(em, g, i, tail) for i, tail in zip(st.node.inputs[-3:], _TAILS))
    st.start("BLOCK_N", "keys")
    em.line("keys = start + tl.arange(0, BLOCK_N)")
    em.line(f"key_ok = keys < {st.tk}")
    st.load("k", st.tile_ptrs("k", st.k, "keys", "offs_e"), f"key_ok[:, None] & (offs_e[None, :] < {E})")
    st.load("v", st.tile_ptrs("v", st.v, "keys", "offs_ev"), f"key_ok[:, None] & (offs_ev[None, :] < {Ev})")
    if st.node.attrs["causal"]:
        em.line("first = (start // BLOCK_M) * BLOCK_M  # causal: no query before the diagonal")
    else:
        em.line("first = 0")
    em.line("offs_m = first + tl.arange(0, BLOCK_M)")
    qt = st.tile_ptrs("qt", st.q, "offs_m", "offs_e", transposed=True)
    do = st.tile_ptrs("do", dout, "offs_m", "offs_ev")
    if st.bias is not None:
        st.tile_ptrs("bias", st.bias, "offs_m", "keys", transposed=True)
    em.line(f"dk = tl.zeros([BLOCK_N, {tile(E)}], tl.float32)")
    em.line(f"dv = tl.zeros([BLOCK_N, {tile(Ev)}], tl.float32)")
    with em.block(f"for start_m in range(first, {st.tq}, BLOCK_M):"):
        em.line("rows = start_m + tl.arange(0, BLOCK_M)")
        em.line(f"row_ok = rows < {st.tq}")
        st.load("qt", qt, f"(offs_e[:, None] < {E}) & row_ok[None, :]")
        st.scores("rows", "keys", True, "k", "qt")
        st.lse("rows", lse)
        em.line("pt = tl.where(row_ok[None, :], tl.exp(s - lse[None, :]), 0.0)  # P^T, recomputed")
        st.load("do", do, f"row_ok[:, None] & (offs_ev[None, :] < {Ev})")
        em.line(f"dv += {st.dot('pt.to(do.dtype)', 'do')}")
        em.line(f"dpt = {st.dot('v', 'tl.trans(do)')}")
        em.line(f"delta = tl.load(scratch + pid_b * {st.tq} + rows, mask=row_ok, other=0.0)")
        em.line("dst = pt * (dpt - delta[None, :])")
        em.line(f"dk += {st.dot('dst.to(qt.dtype)', 'tl.trans(qt)')}")
        em.line(f"qt_ptrs += BLOCK_M * {st.q.row}")
        em.line(f"do_ptrs += BLOCK_M * {dout.row}")
        if st.bias is not None:
            em.line(f"bias_ptrs += BLOCK_M * {st.bias.row}")
    mask_e = f"key_ok[:, None] & (offs_e[None, :] < {E})"
    st.store(results.get(1, []), f"dk * {st.node.attrs['scale']!r}", "keys", "offs_e", mask_e)
    st.store(results.get(2, []), "dv", "keys", "offs_ev", f"key_ok[:, None] & (offs_ev[None, :] < {Ev})")
    sizes = _sizes(plan, group)
    return _kernel(name, "attention_dkdv", st, pointers, _doc(st.node, "dK and dV"),
                   _grid(sizes, "Tk", "BLOCK_N"), sizes, scratch=True)


def backward(plan: FusionPlan, group: Group, k: int, precision: str = "ieee") -> KernelSource:
    """A host function launching the dQ kernel (which also stores delta) and then the dK/dV kernel."""
    from dln.kernels.configs import gpu_config

    inner = [_dq(plan, group, k, precision, f"{group.name}_dq"),
             _dkdv(plan, group, k, precision, f"{group.name}_dkdv")]
    pointers = _pointers(plan, group, k)
    ordered = [pointers[i] for i in sorted(pointers)]
    sizes = inner[0].sizes
    symbols = sorted(set().union(*(kernel.symbols for kernel in inner), *map(dim_symbols, sizes.values())))
    numel_, _ = inner[0].workspace
    lines = [f"def {group.name}(program, sizes, {', '.join([p.name for p in ordered] + [f's_{s}' for s in symbols])}):",
             f'    """{_doc(plan.graph.node(group.members[0]), "Flash attention backward")}"""',
             f"    delta = program._scratch({group.name + '_delta'!r}, {render_dim(numel_)}, torch.float32)"]
    shape = "{" + ", ".join(f"{key!r}: {render_dim(v)}" for key, v in sizes.items()) + "}"
    for kernel in inner:
        args = [p.name for p in kernel.pointers] + ["delta"] + [f"s_{s}" for s in kernel.symbols]
        lines += [f"    cfg = program._cfg({kernel.name!r}, {shape})",
                  f"    program.kernels[{kernel.name!r}][lambda meta: ({', '.join(kernel.grid)},)](",
                  f"        {', '.join(args)}, **cfg)"]
    return KernelSource(group.name, "attention_vjp", "\n".join(lines) + "\n", ordered, symbols, [], [], sizes,
                        host=True, inner=inner,
                        inner_configs={kernel.name: gpu_config(kernel.kind, kernel.sizes) for kernel in inner})
