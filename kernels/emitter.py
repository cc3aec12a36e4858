"""Writing a kernel body: values computed at indices, loads, stores.

`Emitter.value(node, index)` returns the Triton expression of a node's value
at an index of the kernel's domain, emitting the lines that compute it:
views rewrite the index, elementwise ops lower through `LOWER`, values in
memory are loaded with the kernel's mask.  Each (node, index) is computed
once per scope (a loop body opens a scope), so shared subexpressions stay
shared.  Everything the user wrote that reaches the source — names, file
lines — goes through `dln.compiler.naming` or `comment`.
"""

from __future__ import annotations

import dataclasses
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

from dln.compiler.fusion import index as ix
from dln.compiler.ir import DType, Graph, Node, Op, TensorType
from dln.compiler.naming import random_kind
from dln.compiler.symbolic import Dim, Sym
from dln.kernels.lowering import HALF_TYPES, LOWER, TL_DTYPES


_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")


def comment(text: str) -> str:
    """User text for a comment or docstring: printable ASCII only, no quotes that end a docstring."""
    cleaned = _UNPRINTABLE.sub("?", text)
    return cleaned.replace('"""', "'''").replace("\\", "/")


def render_dim(d: Dim) -> str:
    """A size as launcher/kernel code: symbols are the `s_<name>` arguments."""
    if isinstance(d, int):
        return str(d)
    parts = []
    for mono, coeff in d.terms:
        factors = [f"s_{s}" for s in mono]
        if coeff != 1 or not factors:
            factors.insert(0, str(coeff))
        parts.append(" * ".join(factors))
    return "(" + " + ".join(parts).replace("+ -", "- ") + ")"


def dim_symbols(d: Dim) -> set[str]:
    return set(d.symbols) if isinstance(d, Sym) else set()


@dataclass
class Pointer:
    """A kernel argument pointing at a tensor in memory."""

    name: str        # the parameter name in the kernel
    node: int        # the value it holds
    shape: tuple     # the shape its offsets are computed in
    offset: Dim = 0  # where the value starts (arenas)


@dataclass
class Scope:
    values: dict[tuple[int, ix.Index], str] = field(default_factory=dict)


class Emitter:
    def __init__(self, graph: Graph, pointers: dict[int, Pointer], vars: dict[str, str]) -> None:
        self.graph = graph
        self.pointers = pointers
        self.vars = vars                 # index variable name -> Triton expression
        self.lines: list[str] = []
        self.depth = 1
        self.scopes: list[Scope] = [Scope()]
        self.counter = 0
        self.mask = "mask"
        self.symbols: set[str] = set()
        self.uses_rng = False
        self.fixed: dict[int, tuple[ix.Index, str]] = {}  # node -> (index, expression) set by the template
        self.block_shape = "[BLOCK]"
        self.program_vars: set[str] = set()        # index variables one per program, not per lane (a batch)
        self.members: set[int] = set()              # values this kernel computes (never loaded)
        self.scalar_offset = ""                     # how a block-shaped scalar result is stored
        self.wide = False                           # the kernel has a 64-bit (WIDE) variant
        self.loops: list[dict] = []                 # open loops, for hoisting what does not vary in them
        self._insert: dict | None = None
        self._nesting = 0                           # nodes being computed, one inside another

    # ---- text ------------------------------------------------------------------------------------------------
    def line(self, text: str) -> None:
        if self._insert is not None:  # hoisting: write above the loop
            self.lines.insert(self._insert["at"], "    " * self.depth + text)
            self._insert["at"] += 1
        else:
            self.lines.append("    " * self.depth + text)

    @contextmanager
    def loop(self, header: str, variables: set[str]) -> Iterator[None]:
        """A loop over `variables`; values that do not depend on them are computed before it."""
        entry = {"at": len(self.lines), "depth": self.depth, "vars": set(variables), "mask": self.mask,
                 "scopes": len(self.scopes)}
        self.loops.append(entry)
        try:
            with self.block(header):
                yield
        finally:
            self.loops.pop()

    @contextmanager
    def block(self, header: str) -> Iterator[None]:
        self.line(header)
        self.depth += 1
        self.scopes.append(Scope())
        try:
            yield
        finally:
            self.depth -= 1
            self.scopes.pop()

    @contextmanager
    def narrowed(self, condition: str) -> Iterator[None]:
        """Compute under a narrower mask (a pad's inside, a concat's part).  What is loaded there is
        valid only where the condition holds, so it is remembered in a scope of its own and never
        reused outside it — a value outside may share the (node, index) but not the mask."""
        saved = self.mask
        self.mask = f"{saved} & {condition}"
        self.scopes.append(Scope())
        try:
            yield
        finally:
            self.scopes.pop()
            self.mask = saved

    def fresh(self, hint: str) -> str:
        self.counter += 1
        return f"{hint}{self.counter}"

    def _lookup(self, key) -> str | None:
        for scope in reversed(self.scopes):
            if key in scope.values:
                return scope.values[key]
        return None

    def _remember(self, key, name: str) -> None:
        self.scopes[-1].values[key] = name

    # ---- indices -----------------------------------------------------------------------------------------------
    def dim(self, d: Dim) -> str:
        self.symbols |= dim_symbols(d)
        return render_dim(d)

    def render(self, e: ix.Ix) -> str:
        if isinstance(e, ix.Var):
            return self.vars[e.name]
        if isinstance(e, ix.Lit):
            return self.dim(e.value)
        if isinstance(e, ix.Add):
            return "(" + " + ".join(self.render(t) for t in e.terms) + ")"
        if isinstance(e, ix.Mul):
            return f"{self.render(e.x)} * {self.dim(e.k)}"
        if isinstance(e, ix.Div):
            return f"({self.render(e.x)} // {self.dim(e.k)})"
        if isinstance(e, ix.Mod):
            return f"({self.render(e.x)} % {self.dim(e.k)})"
        if isinstance(e, ix.Load):
            return self.value(e.node, e.index)
        raise TypeError(e)

    def offset(self, pointer: Pointer, index: ix.Index) -> str:
        flat = ix.linear(index, pointer.shape)
        if pointer.offset:
            flat = ix.add(flat, ix.lit(pointer.offset))
        return self.render(flat)

    # ---- values ---------------------------------------------------------------------------------------------------
    def value(self, node_id: int, index: ix.Index) -> str:
        """The expression of node `node_id` at `index`, emitting what it needs."""
        fixed = self.fixed.get(node_id)
        if fixed is not None and index == fixed[0]:
            return fixed[1]
        key = (node_id, index)
        known = self._lookup(key)
        if known is not None:
            return known
        loop = self.loops[-1] if self.loops else None
        if loop is not None and self._insert is None and self.mask == loop.get("inner") \
                and not _mentions(index, loop["vars"]):
            # Loop-invariant, and not under a narrower mask (pad, concat) that must guard it.
            return self._hoisted(loop, node_id, index)
        n = self.graph.node(node_id)
        if node_id in self.pointers and node_id not in self.members:
            name = self.load(node_id, index)
        else:
            self._nesting += 1
            try:
                if self._nesting > _DEEP:
                    self._operands_first(n, index)
                name = self._compute(n, index)
            finally:
                self._nesting -= 1
        self._remember(key, name)
        return name

    def _operands_first(self, root: Node, index: ix.Index) -> None:
        """Compute the chain of elementwise ops and views below `root` bottom-up with a worklist, so
        that evaluating `root` recursively finds every operand computed (a sum of thousands of terms
        is one kernel's body, not a Python stack that deep).  The lines come out in the order the
        recursion would write them."""
        stack: list[tuple[int, ix.Index, bool]] = [(i, at, False) for i, at in reversed(self._operands(root, index))]
        while stack:
            node_id, at, ready = stack.pop()
            if self._lookup((node_id, at)) is not None or self.fixed.get(node_id, (None,))[0] == at:
                continue
            n = self.graph.node(node_id)
            operands = self._operands(n, at) if node_id not in self.pointers or node_id in self.members else []
            if ready or not operands:
                self.value(node_id, at)
            else:
                stack.append((node_id, at, True))
                stack.extend((i, where, False) for i, where in reversed(operands))

    def _operands(self, n: Node, index: ix.Index) -> list[tuple[int, ix.Index]]:
        """The inputs of an elementwise op or a view, at the indices they are read (others: none)."""
        if n.op in ix.VIEWS:
            src = self.graph.node(n.inputs[0])
            return [(src.id, ix.view_index(n, index, src.shape))]
        if n.op in LOWER:
            return [(i, index) for i in n.inputs]
        return []

    def _hoisted(self, loop: dict, node_id: int, index: ix.Index) -> str:
        """Compute a value that does not vary in `loop` once, above it."""
        saved = (self.depth, self.mask, self.scopes)
        self.depth, self.mask, self.scopes = loop["depth"], loop["mask"], self.scopes[:loop["scopes"]]
        self._insert = loop
        try:
            return self.value(node_id, index)
        finally:
            self.depth, self.mask, self.scopes = saved
            self._insert = None

    def fix(self, node_id: int, index: ix.Index, expression: str) -> None:
        """Declare the value of a node at its canonical index (an accumulator, a reduction)."""
        self.fixed[node_id] = (index, expression)

    def load(self, node_id: int, index: ix.Index, mask: str | None = None, other: str | None = None) -> str:
        p = self.pointers[node_id]
        n = self.graph.node(node_id)
        name = self.fresh("x")
        flat = (ix.linear(index, p.shape),)  # size-1 axes drop out: their index is 0 wherever it is read
        bounds = self.in_bounds(index, n.shape)
        if n.shape == () and not p.offset:
            self.line(f"{name} = tl.load({p.name})  # %{node_id}")
        elif not _varies(flat) and not bounds:  # one element for every lane: a scalar load
            self.line(f"{name} = tl.load({p.name} + {self.offset(p, index)})  # %{node_id}")
        else:
            m = (mask or self.mask) + bounds
            extra = f", other={other}" if other is not None else ""
            self.line(f"{name} = tl.load({self.address(p, index)}, mask={m}{extra})  # %{node_id}")
        return name

    def address(self, p: Pointer, index: ix.Index) -> str:
        """Where `index` of `p` lies, for a masked access: lane-wide when every lane reaches the same
        element (a gathered one), since a lane-wide mask cannot guard a scalar address."""
        address = f"{p.name} + {self.offset(p, index)}"
        if not _varies((ix.linear(index, p.shape),), through_loads=True, fixed=self.program_vars):
            address = f"tl.broadcast_to({address}, {self.block_shape})"
        return address

    def in_bounds(self, index: ix.Index, shape) -> str:
        """For indices read from a tensor (gather): ` & (i >= 0) & (i < n)`, so a bad index loads
        nothing instead of reading out of bounds (the NumPy backend reports it)."""
        conditions = ""
        for e, d in zip(index, shape):
            if isinstance(e, ix.Load):
                i = self.render(e)
                if not _varies(e.index):  # one index for every lane: compared lane-wide, as the mask is
                    i = f"tl.broadcast_to({i}, {self.block_shape})"
                conditions += f" & ({i} >= 0) & ({i} < {self.dim(d)})"
        return conditions

    def store(self, node_id: int, index: ix.Index, value: str, mask: str | None = None) -> None:
        p = self.pointers[node_id]
        n = self.graph.node(node_id)
        value = self.as_tensor(value, n)
        if n.shape == () and not p.offset and not self.scalar_offset:
            self.line(f"tl.store({p.name}, {value})  # %{node_id}")
            return
        offset = self.scalar_offset if n.shape == () else self.offset(p, index)
        pointer = f"{p.name} + {offset}"
        if self.block_shape != "[BLOCK]" or not _varies(index):
            # a tile, or one element for every lane: the address covers every lane, as the mask does
            pointer = f"tl.broadcast_to({pointer}, {self.block_shape})"
        self.line(f"tl.store({pointer}, {value}, mask={mask or self.mask})  # %{node_id}")

    def as_tensor(self, value: str, n: Node) -> str:
        """Stores need a tensor: a constant is widened to the value's block shape."""
        if _is_literal(value):
            return f"tl.full({self.block_shape}, {value}, {TL_DTYPES[n.dtype]})"
        return value

    def _compute(self, n: Node, index: ix.Index) -> str:
        g = self.graph
        if n.op is Op.CONST:
            return _literal(n.attrs["value"], n.dtype)
        if n.op is Op.IOTA:
            return f"tl.cast({self.render(index[0])}, {TL_DTYPES[n.dtype]})"
        if n.op is Op.SYMSIZE:
            return self.dim(n.attrs["dim"])
        if n.op in ix.VIEWS:
            src = g.node(n.inputs[0])
            return self.value(src.id, ix.view_index(n, index, src.shape))
        if n.op is Op.RAND:
            self.uses_rng = True
            seed, step, *row = (self.value(i, ()) for i in n.inputs)
            flat = self.render(ix.linear(index, n.shape))
            if row:   # counted from a global row (dln.compiler.passes.global_rows): the elements of the rows before
                inner = " * ".join(self.dim(d) for d in n.shape[1:]) or "1"
                flat = f"({flat} + {row[0]} * ({inner}))"
            name = self.fresh("u")
            draw = comment(f"%{n.id} {random_kind(n)} draw" + (f" ({n.name})" if n.name else ""))
            self.line(f"{name} = _uniform({seed}, {flat}, {n.attrs['stream']}, {step})  # {draw}")
            if n.dtype is not DType.F32:
                self.line(f"{name} = {name}.to({TL_DTYPES[n.dtype]})")
            return name
        if n.op is Op.PAD:
            return self._pad(n, index)
        if n.op is Op.CONCAT:
            return self._concat(n, index)
        if n.op is Op.GATHER:
            x, idx = n.inputs
            where = list(index)
            where[n.attrs["axis"]] = ix.Load(idx, index)
            return self.value(x, tuple(where))
        if n.op in LOWER:
            args = [self.value(i, index) for i in n.inputs]
            halves = [g.node(i).dtype in HALF_TYPES for i in n.inputs]
            if n.op is not Op.DETACH and (any(halves) or n.dtype in HALF_TYPES):
                # As Triton's tutorials do: half-precision values are computed in fp32 and the result
                # rounded back once, as torch computes them ("opmath").  Triton's transcendentals take
                # fp32 only, and its interpreter does no arithmetic on bf16 at all.
                wide = [f"{a}.to(tl.float32)" if half and not _is_literal(a) else a for a, half in zip(args, halves)]
                as_fp32 = dataclasses.replace(n, type=TensorType(DType.F32, n.shape)) \
                    if n.dtype in HALF_TYPES else n
                expression = LOWER[n.op](as_fp32, wide)
                if n.dtype in HALF_TYPES:
                    expression = f"({expression}).to({TL_DTYPES[n.dtype]})"
            else:
                expression = LOWER[n.op](n, args)
            name = self.fresh("v")
            self.line(f"{name} = {expression}  # %{n.id} {n.op.value}")
            return name
        raise NotImplementedError(f"{n.op.value} cannot be computed inline")

    def _pad(self, n: Node, index: ix.Index) -> str:
        src = self.graph.node(n.inputs[0])
        inner = tuple(ix.add(i, ix.lit(-lo)) for i, (lo, _) in zip(index, n.attrs["pads"]))
        conditions = []
        for e, d in zip(inner, src.shape):
            r = self.render(e)
            conditions.append(f"({r} >= 0) & ({r} < {self.dim(d)})")
        inside = self.fresh("inside")
        self.line(f"{inside} = " + " & ".join(conditions) if conditions else f"{inside} = True")
        # Read inside the bounds only (the mask keeps loads in range); pad outside.
        with self.narrowed(inside):
            v = self.value(src.id, inner)
        name = self.fresh("v")
        self.line(f"{name} = tl.where({inside}, {v}, {_literal(n.attrs['value'], n.dtype)})  # %{n.id} pad")
        return name

    def _concat(self, n: Node, index: ix.Index) -> str:
        axis = n.attrs["axis"]
        pieces = []
        start: Dim = 0
        for i in n.inputs:
            src = self.graph.node(i)
            stop = start + src.shape[axis]
            shifted = list(index)
            shifted[axis] = ix.add(index[axis], ix.lit(-start) if start != 0 else ix.ZERO)
            r = self.render(index[axis])
            inside = self.fresh("part")
            self.line(f"{inside} = ({r} >= {self.dim(start)}) & ({r} < {self.dim(stop)})")
            with self.narrowed(inside):
                pieces.append((inside, self.value(i, tuple(shifted))))
            start = stop
        expression = pieces[-1][1]
        for inside, v in reversed(pieces[:-1]):
            expression = f"tl.where({inside}, {v}, {expression})"
        name = self.fresh("v")
        self.line(f"{name} = {expression}  # %{n.id} concat")
        return name


# Past this many nested computations, operands are computed bottom-up first (`_operands_first`).
_DEEP = 64


def _mentions(index: ix.Index, names: set[str]) -> bool:
    """Does any expression of the index use one of the variables `names`?"""
    stack: list = list(index)
    while stack:
        e = stack.pop()
        if isinstance(e, ix.Var):
            if e.name in names:
                return True
        elif isinstance(e, ix.Add):
            stack.extend(e.terms)
        elif isinstance(e, (ix.Mul, ix.Div, ix.Mod)):
            stack.append(e.x)
        elif isinstance(e, ix.Load):
            stack.extend(e.index)
    return False


def _varies(index: ix.Index, through_loads: bool = False, fixed: set[str] = frozenset()) -> bool:
    """Does the index depend on any loop variable or loaded value?  With `through_loads`, a loaded
    value varies only when the index it is loaded at does; variables in `fixed` do not vary."""
    stack: list = list(index)
    while stack:
        e = stack.pop()
        if isinstance(e, ix.Load) and through_loads:
            stack.extend(e.index)
        elif isinstance(e, ix.Var) and e.name in fixed:
            continue
        elif isinstance(e, (ix.Var, ix.Load)):
            return True
        elif isinstance(e, ix.Add):
            stack.extend(e.terms)
        elif isinstance(e, (ix.Mul, ix.Div, ix.Mod)):
            stack.append(e.x)
    return False


def _literal(value, dtype: DType) -> str:
    if dtype is DType.BOOL:
        return "True" if value else "False"
    if dtype.is_float:
        v = float(value)
        if v != v:
            return 'float("nan")'
        if v in (float("inf"), float("-inf")):
            return f'float("{"-" if v < 0 else ""}inf")'
        return repr(v)
    return str(int(value))


def _is_literal(text: str) -> bool:
    return bool(re.fullmatch(r"-?[0-9.e+\-]+|True|False|float\(\"-?(inf|nan)\"\)", text))


def identity_of(op: Op, dtype: DType) -> str:
    """The neutral element of a reduction, for masked-off lanes."""
    if op is Op.SUM:
        return "0.0" if dtype.is_float else "0"
    if op in (Op.MAX, Op.ARGMAX):
        return 'float("-inf")' if dtype.is_float else str(-(2 ** 63) if dtype is DType.I64 else -(2 ** 31))
    if op is Op.MIN:
        return 'float("inf")' if dtype.is_float else str(2 ** 63 - 1 if dtype is DType.I64 else 2 ** 31 - 1)
    raise ValueError(op)


def accumulator_dtype(dtype: DType) -> DType:
    """fp32 accumulation for half types; others keep their type."""
    return DType.F32 if dtype in (DType.F16, DType.BF16) else dtype

