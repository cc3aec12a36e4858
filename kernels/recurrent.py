"""`scan` on the Triton backend: one persistent recurrent kernel per loop.

A body is *row-parallel* when axis 0 of every carry, x step and y is the
batch row, every other dimension is a static int, and every matrix product
is (a body value [rows, K]) @ (a view of a const [K, N]).  Rows then never
meet: a program owns BLOCK_B rows for the whole loop and nothing crosses
programs.  Such a scan becomes ONE kernel:

* the grid is over batch tiles of BLOCK_B rows;
* the carries live in registers across `for i in range(0, s_T)` (the length
  is a runtime argument: one compile serves every length; `reverse` runs t
  downward);
* each step loads the x tiles of step t, computes the body inline and stores
  the ys of step t; after the loop the final carries are stored.

Column slices of a product (an LSTM's four gates) are never cut out of
registers: a value is evaluated on a column range, and a slice, a pad or a
concat moves the range into its operand — a slice of x_t is a load at a
column offset, a slice of `h @ W^T` is `h @ (a column block of W^T)`, so the
four gates are four products.  A value made of pads (the backward body's
gate gradients) is split at the pads' edges: each block is computed, stored
and used on its own, and the zeros outside a pad are folded away.

Registers cannot be cut along K either, so a product's left operand is
staged each step through this program's rows of a small global scratch
([rows, K], L1-resident, between two `tl.debug_barrier()`s) and each block
of the product is a K loop of BLOCK_K-deep `tl.dot`s, accumulated in fp32
(f64 for f64 bodies) with the backend's `input_precision` — an exact
single dot over K = 128 in fp32 makes Triton's FMA lowering hold whole
weight columns per thread and spill tens of KiB.  The weights are read
from global memory (L2-resident after the first step) every step, in
[BLOCK_K, block] tiles; const vectors (biases) are loaded once before the
loop.

Anything else (a carry read in part, a reduction, a product of two body
values, half types, whose per-op rounding the persistent path does not
reproduce) runs in the step-by-step fallback (kernels/scan_steps.py): the
body's own kernels launched once per step from a host loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dln.compiler.fusion.planner import FusionPlan, Group
from dln.compiler.ir import DType, Graph, GroupOp, Node, Op
from dln.compiler.symbolic import Dim, dims_equal
from dln.kernels.configs import next_pow2
from dln.kernels.emitter import comment, dim_symbols, render_dim
from dln.kernels.emitter import _literal as literal
from dln.kernels.lowering import LOWER, TL_DTYPES
from dln.kernels.precision import PRECISIONS
from dln.kernels.templates import KernelSource, _pointers, _wrap

ZERO = "<zero>"   # a block known to be zeros (the outside of a pad): folded away, never computed


class NotRowParallel(Exception):
    """The body does not fit the persistent kernel; the message says why."""


def tile(width: int) -> int:
    """Register width of a block of `width` columns: a power of two, at least 16 (`tl.dot`'s minimum)."""
    return max(16, next_pow2(width))


@dataclass
class ConstView:
    """A const-derived matrix or vector: element (i, j) at pointer + base + i * strides[0] + j * strides[1]."""

    pointer: str
    base: int
    strides: tuple[int, ...]


@dataclass
class Recurrence:
    """The code of one persistent kernel as it is built: prologue, loop body, epilogue."""

    graph: Graph                       # the body
    rows: Dim                          # the batch
    dtype: DType
    precision: str
    carry_vars: dict[int, str]         # body input id -> register variable
    x_pointers: dict[int, tuple[str, int]]   # body input id -> (pointer, columns)
    const_pointers: dict[int, str]     # body input id -> pointer
    scratch_width: int = 0             # columns of the scratch: the product operands side by side
    staged: dict[int, int] = field(default_factory=dict)   # product operand -> its column offset in the scratch
    pending: dict[tuple[int, int, int], list[str]] = field(default_factory=dict)  # y blocks: their stores
    prologue: list[str] = field(default_factory=list)
    loop: list[str] = field(default_factory=list)
    memo: dict[tuple[int, int, int], str] = field(default_factory=dict)
    cuts_memo: dict[int, tuple[int, ...]] = field(default_factory=dict)
    columns: set[int] = field(default_factory=set)   # tile widths whose column ranges the prologue defines
    counter: int = 0

    # ---- where a value is split ------------------------------------------------------------------------
    def width(self, n: Node) -> int:
        """A body value's columns (a static int), checking it is [rows, N]."""
        if len(n.shape) != 2 or dims_equal(n.shape[0], self.rows) is not True or not isinstance(n.shape[1], int):
            raise NotRowParallel(f"%{n.id} {n.op.value} has shape {n.type}, not [rows, static columns]")
        return n.shape[1]

    def cuts(self, node_id: int) -> tuple[int, ...]:
        """The interior column edges where a value changes source (pads, concats), sorted."""
        if node_id in self.cuts_memo:
            return self.cuts_memo[node_id]
        g = self.graph
        n = g.node(node_id)
        width = self.width(n)
        found: set[int] = set()
        if n.op is Op.PAD:
            lo = n.attrs["pads"][1][0]
            inner = self.width(g.node(n.inputs[0]))
            found = {lo, lo + inner} | {lo + c for c in self.cuts(n.inputs[0])}
        elif n.op is Op.CONCAT and n.attrs["axis"] == 1:
            offset = 0
            for i in n.inputs:
                found |= {offset} | {offset + c for c in self.cuts(i)}
                offset += self.width(g.node(i))
        elif n.op is Op.SLICE:
            start = n.attrs["starts"][1]
            found = {c - start for c in self.cuts(n.inputs[0])}
        elif n.op in GroupOp.Elementwise:
            for i in n.inputs:
                if g.node(i).shape == n.shape and g.node(i).op is not Op.BROADCAST:
                    found |= set(self.cuts(i))
        out = tuple(sorted(c for c in found if 0 < c < width))
        self.cuts_memo[node_id] = out
        return out

    def blocks(self, node_id: int) -> list[tuple[int, int]]:
        edges = [0, *self.cuts(node_id), self.width(self.graph.node(node_id))]
        return list(zip(edges[:-1], edges[1:]))

    # ---- names ---------------------------------------------------------------------------------------------
    def fresh(self, hint: str) -> str:
        self.counter += 1
        return f"{hint}_{self.counter}"

    def cols(self, width: int) -> tuple[str, str]:
        """(column index row vector, its mask) of a block `width` wide."""
        t = tile(width)
        self.columns.add(t)
        return f"cols{t}", f"(cols{t} < {width})"

    def full(self, value: str, width: int) -> str:
        """A literal or ZERO as a [BLOCK_B, tile] register block."""
        v = "0.0" if value == ZERO else value
        return f"tl.full([BLOCK_B, {tile(width)}], {v}, {TL_DTYPES[self.dtype]})"

    # ---- const views ----------------------------------------------------------------------------------------
    def const_view(self, node_id: int) -> ConstView:
        """Address of a const-derived value: a const input through permutes and slices."""
        n = self.graph.node(node_id)
        if n.op is Op.INPUT:
            if node_id not in self.const_pointers:
                raise NotRowParallel(f"{n.attrs['name']} ({n.attrs.get('role')}) is used where a const is needed")
            strides, acc = [], 1
            for d in reversed(n.shape):
                if not isinstance(d, int):
                    raise NotRowParallel(f"const {n.attrs['name']} has a symbolic shape {n.type}")
                strides.insert(0, acc)
                acc *= d
            return ConstView(self.const_pointers[node_id], 0, tuple(strides))
        if n.op is Op.PERMUTE:
            src = self.const_view(n.inputs[0])
            return ConstView(src.pointer, src.base, tuple(src.strides[p] for p in n.attrs["perm"]))
        if n.op is Op.SLICE and all(isinstance(s, int) for s in n.attrs["starts"]):
            src = self.const_view(n.inputs[0])
            base = src.base + sum(s * st for s, st in zip(n.attrs["starts"], src.strides))
            return ConstView(src.pointer, base, tuple(st * k for st, k in zip(src.strides, n.attrs["steps"])))
        if n.op is Op.RESHAPE and len(n.shape) == 2 and n.shape[0] == 1:   # [N] -> [1, N]
            src = self.const_view(n.inputs[0])
            if len(src.strides) == 1:
                return ConstView(src.pointer, src.base, (0, src.strides[0]))
        raise NotRowParallel(f"%{n.id} {n.op.value} is not a view of a const")

    # ---- values on a column range --------------------------------------------------------------------------
    def value(self, node_id: int, lo: int, hi: int) -> str:
        """An expression (a variable, a literal or ZERO) of value `node_id` on columns lo..hi."""
        key = (node_id, lo, hi)
        if key not in self.memo:
            self.memo[key] = self._value(self.graph.node(node_id), lo, hi)
            stores = self.pending.pop(key, [])
            if stores:
                v = self.memo[key]
                block = self.full(v, hi - lo) if v == ZERO or _is_literal(v) else v
                self.loop += [line.format(block) for line in stores]
        return self.memo[key]

    def _value(self, n: Node, lo: int, hi: int) -> str:
        g = self.graph
        if n.op is Op.CONST:
            return literal(n.attrs["value"], n.dtype)
        width = self.width(n)
        if n.op is Op.INPUT:
            if n.id in self.carry_vars:
                if (lo, hi) != (0, width):
                    raise NotRowParallel(f"carry {n.attrs['name']} is read in part (columns {lo}:{hi})")
                return self.carry_vars[n.id]
            if n.id in self.x_pointers:
                pointer, columns = self.x_pointers[n.id]
                cols, mask = self.cols(hi - lo)
                name = self.fresh(f"x{n.id}")
                self.loop.append(f"{name} = tl.load({pointer} + step_{columns} + rows * {columns} + {lo} + {cols}, "
                                 f"mask=row_ok & {mask}, other=0.0)  # {comment(n.attrs['name'])}[t]")
                return name
            raise NotRowParallel(f"const {n.attrs['name']} is used as a row value")
        if n.op is Op.SLICE:
            starts, stops, steps = n.attrs["starts"], n.attrs["stops"], n.attrs["steps"]
            src = g.node(n.inputs[0])
            if starts[0] != 0 or dims_equal(stops[0], src.shape[0]) is not True or tuple(steps) != (1, 1):
                raise NotRowParallel(f"%{n.id} slices rows or strides")
            return self.value(src.id, lo + starts[1], hi + starts[1])
        if n.op is Op.PAD:
            pads = n.attrs["pads"]
            if tuple(pads[0]) != (0, 0):
                raise NotRowParallel(f"%{n.id} pads rows")
            inner = self.width(g.node(n.inputs[0]))
            start = pads[1][0]
            if start <= lo and hi <= start + inner:
                return self.value(n.inputs[0], lo - start, hi - start)
            if hi <= start or lo >= start + inner:
                return ZERO if n.attrs["value"] == 0 else literal(n.attrs["value"], n.dtype)
            raise NotRowParallel(f"%{n.id}: columns {lo}:{hi} straddle a pad's edge")
        if n.op is Op.CONCAT and n.attrs["axis"] == 1:
            offset = 0
            for i in n.inputs:
                w = self.width(g.node(i))
                if offset <= lo and hi <= offset + w:
                    return self.value(i, lo - offset, hi - offset)
                offset += w
            raise NotRowParallel(f"%{n.id}: columns {lo}:{hi} straddle a concat's edge")
        if n.op is Op.BROADCAST:
            return self._broadcast(n, lo, hi)
        if n.op is Op.MATMUL:
            return self._matmul(n, lo, hi)
        if n.op in GroupOp.Elementwise and n.op in LOWER and n.op is not Op.CHECK_INDEX:
            return self._elementwise(n, lo, hi)
        raise NotRowParallel(f"%{n.id} {n.op.value} has no row-parallel lowering")

    def _broadcast(self, n: Node, lo: int, hi: int) -> str:
        src = self.graph.node(n.inputs[0])
        if src.op is Op.CONST:
            return literal(src.attrs["value"], n.dtype)
        if len(src.shape) == 1 or (len(src.shape) == 2 and src.shape[0] == 1):
            view = self.const_view(src.id)
            stride = view.strides[-1]
            cols, mask = self.cols(hi - lo)
            name = self.fresh(f"c{src.id}")
            # Loop-invariant: loaded once, before the loop.
            self.prologue.append(f"{name} = tl.load({view.pointer} + {view.base + lo * stride} + {cols} * {stride}, "
                                 f"mask={mask}, other=0.0)  # %{src.id} columns {lo}:{hi}, every row")
            return name
        raise NotRowParallel(f"%{n.id} broadcasts {src.type} across columns or from a row value")

    def _matmul(self, n: Node, lo: int, hi: int) -> str:
        """Columns lo..hi of (body value) @ (const view): a K loop of BLOCK_K-deep `tl.dot`s."""
        a_id, b_id = n.inputs
        if len(self.graph.node(b_id).shape) != 2:
            raise NotRowParallel(f"%{n.id}: a batched product")
        view = self.const_view(b_id)   # the right operand must be a const view
        K = self.width(self.graph.node(a_id))
        offset = self.stage(a_id)
        cols, mask = self.cols(hi - lo)
        acc = self.fresh(f"mm{n.id}")
        prec = "" if self.dtype is DType.F64 else f", input_precision={self.precision!r}"
        acc_type = TL_DTYPES[self.dtype]
        self.loop += [
            f"{acc} = tl.zeros([BLOCK_B, {tile(hi - lo)}], {acc_type})  # %{n.id} columns {lo}:{hi}",
            f"for kk in tl.range(0, {K}, BLOCK_K, loop_unroll_factor=1):  # rolled: one chunk of weights live",
            f"    a = tl.load(scratch + rows * {self.scratch_width} + {offset} + kk + kcols, "
            f"mask=row_ok & (kk + kcols < {K}), other=0.0)",
            f"    w = tl.load({view.pointer} + ({view.base + lo * view.strides[1]} + kk * {view.strides[0]}) + "
            f"(krows * {view.strides[0]} + {cols} * {view.strides[1]}), mask=(kk + krows < {K}) & {mask}, other=0.0)",
            f"    {acc} = tl.dot(a, w, {acc}{prec})",
        ]
        return acc

    def stage(self, a_id: int) -> int:
        """Store a product's left operand to this program's rows of the scratch, once per step; its column
        offset there.  Registers cannot be cut along K, so the K loop reads the operand back (from L1)."""
        if a_id in self.staged:
            return self.staged[a_id]
        offset = self.staged[a_id] = sum(self.width(self.graph.node(i)) for i in self.staged)
        stores = []
        for k_lo, k_hi in self.blocks(a_id):
            v = self.block(a_id, k_lo, k_hi)
            cols, mask = self.cols(k_hi - k_lo)
            stores.append(f"tl.store(scratch + rows * {self.scratch_width} + {offset + k_lo} + {cols}, {v}, "
                          f"mask=row_ok & {mask})  # %{a_id} columns {k_lo}:{k_hi}")
        self.loop.append("tl.debug_barrier()  # every thread has read the scratch's last step")
        self.loop += stores
        self.loop.append(f"tl.debug_barrier()  # %{a_id} is in the scratch for every thread")
        return offset

    def _elementwise(self, n: Node, lo: int, hi: int) -> str:
        if n.dtype not in (DType.F32, DType.F64) and n.dtype is not DType.BOOL:
            raise NotRowParallel(f"%{n.id} computes {n.dtype}")
        args = [self.value(i, lo, hi) for i in n.inputs]
        if n.op is Op.ADD and ZERO in args:
            rest = [a for a in args if a != ZERO]
            return rest[0] if rest else ZERO
        if n.op is Op.SUB and args[1] == ZERO:
            return args[0]
        if n.op is Op.MUL and ZERO in args:
            return ZERO
        if n.op in (Op.CAST, Op.DETACH) and n.dtype is self.graph.node(n.inputs[0]).dtype:
            return args[0]
        inline_literals = n.op in (Op.ADD, Op.SUB, Op.MUL, Op.DIV)
        args = [("0.0" if a == ZERO else a) if inline_literals else
                (self.full(a, hi - lo) if a == ZERO or _is_literal(a) else a) for a in args]
        name = self.fresh(f"v{n.id}")
        self.loop.append(f"{name} = {LOWER[n.op](n, args)}  # %{n.id} {n.op.value}"
                         + (f" {comment(n.name)}" if n.name else ""))
        return name

    def block(self, node_id: int, lo: int, hi: int) -> str:
        """A value on lo..hi as a register block (literals filled)."""
        v = self.value(node_id, lo, hi)
        return self.full(v, hi - lo) if v == ZERO or _is_literal(v) else v


def _is_literal(text: str) -> bool:
    from dln.kernels.emitter import _is_literal as check

    return text != ZERO and check(text)


def check_dtypes(body: Graph) -> DType:
    floats = {n.dtype for n in body.nodes if n.dtype.is_float}
    if len(floats) != 1 or not floats <= {DType.F32, DType.F64}:
        raise NotRowParallel(f"the body computes in {', '.join(sorted(map(str, floats)))}, not f32 or f64 alone")
    return floats.pop()


def persistent(plan: FusionPlan, group: Group, k: int, precision: str) -> KernelSource:
    """The persistent kernel of a row-parallel scan; NotRowParallel when the body is not."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown matmul precision {precision!r}; precisions: {', '.join(PRECISIONS)}")
    g = plan.graph
    scan = g.node(group.members[0])
    body: Graph = scan.attrs["body"]
    n_carry, n_xs = scan.attrs["carries"], scan.attrs["xs"]
    params = body.inputs
    carries, xs, consts = params[:n_carry], params[n_carry:n_carry + n_xs], params[n_carry + n_xs:]
    dtype = check_dtypes(body)
    row_values = carries or xs
    if not row_values or not row_values[0].shape:
        raise NotRowParallel("no carry or x gives the batch rows")
    rows = row_values[0].shape[0]
    pointers = _pointers(plan, group, k)
    outer = list(scan.inputs)
    rec = Recurrence(body, rows, dtype, precision,
                     carry_vars={p.id: f"carry_{_ident(p.attrs['name'])}" for p in carries}, x_pointers={},
                     const_pointers={p.id: pointers[outer[n_carry + n_xs + j]].name for j, p in enumerate(consts)})
    for c in carries:
        rec.cols(rec.width(c))   # the initial loads and final stores use its column range
    for j, p in enumerate(xs):
        rec.x_pointers[p.id] = (pointers[outer[n_carry + j]].name, rec.width(p))
    rec.scratch_width = sum(rec.width(body.node(a)) for a in {body.node(i).inputs[0] for i in _products(body)})
    outputs = [body.node(i) for _, i in body.outputs]
    new_carries, ys = outputs[:n_carry], outputs[n_carry:]
    # result index -> pointers of the result nodes stored
    stores = {j: [pointers[m].name for m in ms] for j, ms in group.stored_results(g).items()}
    # The loop body: the new carries (whole: they stay in registers) and every stored y per block; a y
    # is stored as soon as its block is computed, so it need not stay live to the end of the step.
    for j, y in enumerate(ys):
        targets = stores.get(n_carry + j, [])
        columns = rec.width(y)
        for lo, hi in rec.blocks(y.id) if targets else []:
            cols, mask = rec.cols(hi - lo)
            rec.pending.setdefault((y.id, lo, hi), []).extend(
                f"tl.store({p} + step_{columns} + rows * {columns} + {lo} + {cols}, {{}}, mask=row_ok & {mask})"
                f"  # y {body.outputs[n_carry + j][0]}[t]" for p in targets)
    new_vars = []
    for c, new in zip(carries, new_carries):
        if rec.cuts(new.id):
            raise NotRowParallel(f"the new carry {c.attrs['name']} is assembled from column blocks")
        if rec.width(new) != rec.width(c):
            raise NotRowParallel("a carry changes shape")
        new_vars.append(rec.block(new.id, 0, rec.width(new)))
    for key in list(rec.pending):   # ys the carries do not need
        rec.value(*key)
    # Everything the loop stores is computed before the carries are replaced.
    temps = [rec.fresh("next") for _ in carries]
    rec.loop += [f"{t} = {v}" for t, v in zip(temps, new_vars)]
    rec.loop += [f"{rec.carry_vars[c.id]} = {t}" for c, t in zip(carries, temps)]
    # Step offsets: one per width of the per-step rows read or written.
    widths = sorted({w for _, w in rec.x_pointers.values()} |
                    {rec.width(y) for j, y in enumerate(ys) if stores.get(n_carry + j)})
    length = scan.attrs["length"]
    lines = ["pid = tl.program_id(0)",
             "rows = pid * BLOCK_B + tl.arange(0, BLOCK_B)[:, None]",
             f"row_ok = rows < {render_dim(rows)}"]
    lines += [f"cols{t} = tl.arange(0, {t})[None, :]" for t in sorted(rec.columns)]
    if rec.staged:
        lines += ["kcols = tl.arange(0, BLOCK_K)[None, :]  # a K chunk of a product's left operand",
                  "krows = tl.arange(0, BLOCK_K)[:, None]  # the same rows of its weight"]
    lines.append("# the carries: in registers for the whole loop")
    for c, j in zip(carries, range(n_carry)):
        w = rec.width(c)
        cols, mask = rec.cols(w)
        pointer = pointers[outer[j]].name
        lines.append(f"{rec.carry_vars[c.id]} = tl.load({pointer} + rows * {w} + {cols}, mask=row_ok & {mask}, "
                     f"other=0.0).to({TL_DTYPES[dtype]})")
    if rec.prologue:
        lines.append("# loop-invariant operands (biases), loaded once")
        lines += rec.prologue
    lines.append(f"for i in range(0, {render_dim(length)}):")
    loop = ["t = " + (f"{render_dim(length)} - 1 - i" if scan.attrs["reverse"] else "i")]
    loop += [f"step_{w} = t.to(tl.int64) * ({render_dim(rows)} * {w})  # row 0 of step t in a [T, rows, {w}]"
             for w in widths]
    lines += ["    " + line for line in loop + rec.loop]
    lines.append("# the final carries")
    for j, c in enumerate(carries):
        w = rec.width(c)
        cols, mask = rec.cols(w)
        for p in stores.get(j, []):
            lines.append(f"tl.store({p} + rows * {w} + {cols}, {rec.carry_vars[c.id]}, mask=row_ok & {mask})")
    symbols = sorted(dim_symbols(rows) | dim_symbols(length))
    ordered = [pointers[i] for i in sorted(pointers)]
    # The length is not specialized on (Triton would compile apart T = 1 and multiples of 16): one
    # compile serves every length.
    steps = [f"s_{s}" for s in sorted(dim_symbols(length))]
    head = [f"@triton.jit(do_not_specialize={steps})" if steps else "@triton.jit", f"def {group.name}("]
    head += [f"    {p.name}," for p in ordered] + ["    scratch,"] * bool(rec.staged) + [f"    s_{s}," for s in symbols]
    head += ["    BLOCK_B: tl.constexpr,", "    BLOCK_K: tl.constexpr,", "):", f'    """{_doc(scan, body, group)}"""']
    source = "\n".join(head + ["    " + line for line in lines]) + "\n"
    gates = max((rec.width(body.node(i)) for i in _products(body)), default=0)
    sizes = {"B": rows, "T": length, "H": max(rec.width(c) for c in (*carries, *xs)), "N": gates}
    grid = [f"triton.cdiv({render_dim(rows)}, meta['BLOCK_B'])"]
    workspace = (rows * rec.scratch_width, dtype) if rec.staged else None
    return KernelSource(group.name, "scan", source, ordered, symbols, ["BLOCK_B", "BLOCK_K"], grid, sizes,
                        workspace=workspace)


def _products(body: Graph) -> list[int]:
    return [n.id for n in body.nodes if n.op is Op.MATMUL]


def _ident(name: str) -> str:
    from dln.compiler.naming import safe_name

    return safe_name(name, 24) or "value"


def _doc(scan: Node, body: Graph, group: Group) -> str:
    nodes = [n for n in body.nodes if n.op is not Op.INPUT]
    places = sorted({(n.loc.path, n.loc.line) for n in (scan, *nodes) if n.loc is not None})
    where = ", ".join(f"{path.split('/')[-1]}:{line}" for path, line in places)
    text = (f"Runs scan %{scan.id} ({'reverse, ' if scan.attrs['reverse'] else ''}{scan.attrs['carries']} carries, "
            f"{scan.attrs['xs']} xs) as one persistent loop over BLOCK_B batch rows; stores "
            f"{', '.join(f'%{s}' for s in group.stores)}. Body {body.name}: "
            f"{', '.join(f'%{n.id} {n.op.value}' for n in nodes)}. Products read their left operand back from the "
            f"scratch and their weights from global memory (L2) each step. "
            f"From {where or 'generated code'}.")
    return "\n    ".join(comment(line) for line in _wrap(text, 100))


def scan(plan: FusionPlan, group: Group, k: int, precision: str = "ieee") -> KernelSource:
    """The kernel of a scan group: persistent when the body is row-parallel, else the host loop."""
    from dln.kernels.scan_steps import stepwise

    try:
        return persistent(plan, group, k, precision)
    except NotRowParallel as why:
        return stepwise(plan, group, k, precision, str(why))
