"""Emitting typed nodes: the one way anything (front end, autodiff, optimizers,
passes) adds a node to a graph.

`GraphBuilder.emit` runs the op's shape rule, so every node is typed when it
is made.  Above it sit conveniences with PyTorch's semantics: binary ops
broadcast their operands (NumPy rules) and promote element types
(`torch.result_type`), Python numbers become constants, reductions take
`axes`/`keepdim`.  The primitives themselves stay strict (equal shapes, equal
element types); the conveniences insert the `broadcast` and `cast` nodes.
"""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence, Union

from dln.compiler.ir import NO_ATTRS, Attrs, Constraint, DType, Graph, GroupOp, Node, Op, Phase, TensorType
from dln.compiler.limits import exceeded
from dln.compiler.numbers import const_problem
from dln.compiler.shapes import SHAPE_RULES, ShapeContext, ShapeError, operand_types
from dln.compiler.symbolic import Dim, Shape, format_shape, numel
from dln.dsl.diagnostics import Diagnostic, DlnError, Note, Span


@dataclass(frozen=True, slots=True)
class Tensor:
    """A handle on a node being built: its id and type."""

    id: int
    type: TensorType

    @property
    def shape(self) -> Shape:
        return self.type.shape

    @property
    def dtype(self) -> DType:
        return self.type.dtype

    @property
    def rank(self) -> int:
        return len(self.type.shape)


Operand = Union[Tensor, int, float, bool]

_FLOAT_ORDER = [DType.F16, DType.BF16, DType.F32, DType.F64]
_INT_ORDER = [DType.I32, DType.I64]
DEFAULT_FLOAT = DType.F32


def _category(dtype: DType) -> int:
    return 2 if dtype.is_float else 1 if dtype.is_int else 0


def _scalar_category(v: Any) -> int:
    return 0 if isinstance(v, bool) else 1 if isinstance(v, int) else 2


def promote(*dtypes: DType) -> DType:
    """torch.result_type for tensors of equal standing."""
    cat = max(_category(d) for d in dtypes)
    same = [d for d in dtypes if _category(d) == cat]
    if cat == 2:
        if DType.F16 in same and DType.BF16 in same:
            return max([DType.F32, *same], key=_FLOAT_ORDER.index)
        return max(same, key=_FLOAT_ORDER.index)
    if cat == 1:
        return max(same, key=_INT_ORDER.index)
    return DType.BOOL


def result_dtype(*operands: Operand) -> DType:
    """torch.result_type: the highest category wins; within it, dimensioned tensors
    decide before 0-d tensors, and those before Python numbers."""
    tiers = [
        [o.dtype for o in operands if isinstance(o, Tensor) and o.rank > 0],
        [o.dtype for o in operands if isinstance(o, Tensor) and o.rank == 0],
        [[DType.BOOL, DType.I64, DEFAULT_FLOAT][_scalar_category(o)] for o in operands if not isinstance(o, Tensor)],
    ]
    category = max(_category(d) for tier in tiers for d in tier)
    for tier in tiers:
        same = [d for d in tier if _category(d) == category]
        if same:
            return promote(*same)
    raise AssertionError("result_dtype of no operands")


class GraphBuilder:
    """Accumulates typed nodes; `finish` freezes them into a `Graph`."""

    def __init__(self, name: str, base: Graph | None = None, max_nodes: int | None = None) -> None:
        self.name = name
        self.max_nodes = max_nodes  # dln.compiler.limits: the model builder's bound on the graph's size
        self.nodes: list[Node] = list(base.nodes) if base else []
        self.index: dict[int, Node] = {n.id: n for n in self.nodes}
        self._positions: dict[int, int] = {}   # node id -> its place in `nodes` (append-only), for `rename`
        self.next_id = max(self.index, default=-1) + 1
        self.shapes = ShapeContext()
        if base:
            self.shapes.constraints.extend(base.constraints)
        self.loc: Span | None = None
        self.label = ""
        self.phase = Phase.FORWARD
        self.notes: tuple[Note, ...] = ()

    # ---- context ---------------------------------------------------------------------------
    @contextmanager
    def at(self, loc: Span | None = None, label: str | None = None, phase: Phase | None = None,
           notes: tuple[Note, ...] | None = None) -> Iterator[None]:
        """Nodes emitted inside take this source location, name and phase."""
        saved = (self.loc, self.label, self.phase, self.notes)
        if loc is not None:
            self.loc = loc
        if label is not None:
            self.label = label
        if phase is not None:
            self.phase = phase
        if notes is not None:
            self.notes = notes
        try:
            yield
        finally:
            self.loc, self.label, self.phase, self.notes = saved

    def fail(self, code: str, message: str, *notes: Note) -> DlnError:
        return DlnError(Diagnostic(code, message, self.loc, tuple(notes) + self.notes))

    # ---- the primitive -------------------------------------------------------------------
    def emit(self, op: Op, inputs: Sequence[Tensor] = (), attrs: dict[str, Any] | Attrs | None = None) -> Tensor:
        attrs = attrs if isinstance(attrs, Attrs) else (Attrs(attrs) if attrs else NO_ATTRS)
        if self.max_nodes is not None and len(self.nodes) >= self.max_nodes:
            raise exceeded("max_nodes", self.max_nodes, f"the graph grows past {self.max_nodes:,} nodes here",
                           self.loc)
        self.shapes.loc = self.loc
        try:
            type_ = SHAPE_RULES[op](self.shapes, operand_types(op, [self.index[t.id] for t in inputs]), attrs)
        except ShapeError as e:
            raise self.fail(e.code, e.message) from None
        if op in GroupOp.Leaf:
            attrs = Attrs({k: v for k, v in attrs.items() if k != "type"})
        results: tuple[TensorType, ...] = ()
        if isinstance(type_, tuple):   # several results: `.type` is the first
            results, type_ = type_, type_[0]
        node = Node(self.next_id, op, tuple(t.id for t in inputs), type_, attrs, self.loc, self.label, self.phase,
                    results)
        self.next_id += 1
        self.nodes.append(node)
        self.index[node.id] = node
        return Tensor(node.id, type_)

    def copy(self, node: Node, inputs: Sequence[Tensor]) -> Tensor:
        """`node` made again in this graph over `inputs` (a leaf keeps its type)."""
        attrs = node.attrs.replace(type=node.type) if node.op in GroupOp.Leaf else node.attrs
        return self.emit(node.op, inputs, attrs)

    def rename(self, t: Tensor, name: str) -> None:
        """Give node `t` another name: autodiff knows which value a cotangent is the gradient of only once
        the VJP has built it."""
        node = dataclasses.replace(self.index[t.id], name=name)
        self.index[t.id] = node
        for k in range(len(self._positions), len(self.nodes)):
            self._positions[self.nodes[k].id] = k
        self.nodes[self._positions[t.id]] = node

    def tensor(self, node_id: int) -> Tensor:
        return Tensor(node_id, self.index[node_id].type)

    def node(self, t: Tensor | int) -> Node:
        return self.index[t.id if isinstance(t, Tensor) else t]

    def finish(self, outputs: Iterable[tuple[str, Tensor | int]]) -> Graph:
        outs = tuple((name, t.id if isinstance(t, Tensor) else t) for name, t in outputs)
        return Graph(self.name, tuple(self.nodes), outs, tuple(_dedupe(self.shapes.constraints)))

    # ---- leaves -----------------------------------------------------------------------------
    def input(self, name: str, type_: TensorType, role: str = "input", **attrs: Any) -> Tensor:
        return self.emit(Op.INPUT, (), {"type": type_, "name": name, "role": role, **attrs})

    def const(self, value: Any, dtype: DType, shape: Shape = ()) -> Tensor:
        problem = const_problem(value, dtype)
        if problem is not None:
            raise self.fail("E0208", problem)
        if dtype.is_float:
            value = float(value)
        elif dtype is DType.BOOL:
            value = bool(value)
        else:
            value = int(value)
        return self.emit(Op.CONST, (), {"type": TensorType(dtype, tuple(shape)), "value": value})

    def iota(self, n: Dim, dtype: DType = DType.I64) -> Tensor:
        return self.emit(Op.IOTA, (), {"type": TensorType(dtype, (n,))})

    def symsize(self, dim: Dim) -> Tensor:
        return self.emit(Op.SYMSIZE, (), {"type": TensorType(DType.I64, ()), "dim": dim})

    def dim_value(self, dim: Dim, dtype: DType) -> Tensor:
        """A dimension as a scalar tensor: a constant when known, else read at run time."""
        if isinstance(dim, int):
            return self.const(dim, dtype)
        return self.cast(self.symsize(dim), dtype)

    def rand(self, shape: Shape, seed: Tensor, step: Tensor, stream: int, dtype: DType, kind: str) -> Tensor:
        """U[0, 1) from stream `stream`; `kind` is what draws it (`dropout`, `randn_like`), for names."""
        return self.emit(Op.RAND, (seed, step), {"type": TensorType(dtype, tuple(shape)), "stream": stream,
                                                 "kind": kind})

    # ---- elementwise with broadcasting and promotion ----------------------------------------------
    def broadcast_shapes(self, *shapes: Shape, message: str | None = None) -> Shape:
        """NumPy's broadcast of `shapes`; `message` says what failed to broadcast (else the shapes)."""
        rank = max((len(s) for s in shapes), default=0)
        out: list[Dim] = [1] * rank
        for s in shapes:
            padded = (1,) * (rank - len(s)) + tuple(s)
            for i, d in enumerate(padded):
                if d == 1 or d == out[i]:   # nothing to unify (and no message to build: thousands of calls)
                    continue
                if out[i] == 1:
                    out[i] = d
                else:
                    listed = " and ".join(format_shape(s) for s in shapes)
                    out[i] = self.unify(out[i], d, "E0201", message or f"shapes {listed} do not broadcast")
        return tuple(out)

    def unify(self, a: Dim, b: Dim, code: str, message: str) -> Dim:
        """Two dimensions that must be equal: proven, refuted here (`code`), or required of the inputs."""
        self.shapes.loc = self.loc
        try:
            return self.shapes.unify(a, b, code, message)
        except ShapeError as e:
            raise self.fail(e.code, e.message) from None

    def at_most(self, a: Dim, b: Dim, code: str, message: str) -> None:
        """a <= b (an index within its axis): proven, refuted here (`code`), or required of the inputs."""
        self.shapes.loc = self.loc
        try:
            self.shapes.at_most(a, b, code, message)
        except ShapeError as e:
            raise self.fail(e.code, e.message) from None

    def lift(self, v: Operand, dtype: DType, shape: Shape = ()) -> Tensor:
        """A Python number as a constant of `dtype`; a tensor cast to `dtype`."""
        if isinstance(v, Tensor):
            return self.cast(v, dtype)
        return self.const(v, dtype, shape)

    def _elementwise(self, op: Op, operands: Sequence[Operand], dtype: DType) -> Tensor:
        shape = self.broadcast_shapes(*(o.shape for o in operands if isinstance(o, Tensor)))
        args = [self.broadcast_to(self.lift(o, dtype), shape) if isinstance(o, Tensor) else self.const(o, dtype, shape)
                for o in operands]
        return self.emit(op, args)

    def binary(self, op: Op, a: Operand, b: Operand) -> Tensor:
        dtype = result_dtype(a, b)
        if op is Op.DIV and not dtype.is_float:
            dtype = DEFAULT_FLOAT  # true division, as in torch
        return self._elementwise(op, (a, b), dtype)

    def add(self, a: Operand, b: Operand) -> Tensor: return self.binary(Op.ADD, a, b)
    def sub(self, a: Operand, b: Operand) -> Tensor: return self.binary(Op.SUB, a, b)
    def mul(self, a: Operand, b: Operand) -> Tensor: return self.binary(Op.MUL, a, b)
    def div(self, a: Operand, b: Operand) -> Tensor: return self.binary(Op.DIV, a, b)
    def mod(self, a: Operand, b: Operand) -> Tensor: return self.binary(Op.MOD, a, b)
    def maximum(self, a: Operand, b: Operand) -> Tensor: return self.binary(Op.MAXIMUM, a, b)
    def minimum(self, a: Operand, b: Operand) -> Tensor: return self.binary(Op.MINIMUM, a, b)

    def pow(self, a: Operand, b: Operand) -> Tensor:
        dtype = result_dtype(a, b)
        return self._elementwise(Op.POW, (a, b), dtype)

    def compare(self, op: Op, a: Operand, b: Operand) -> Tensor:
        return self._elementwise(op, (a, b), result_dtype(a, b))

    def logical(self, op: Op, a: Operand, b: Operand) -> Tensor:
        return self._elementwise(op, (a, b), DType.BOOL)

    def where(self, cond: Tensor, a: Operand, b: Operand) -> Tensor:
        dtype = result_dtype(a, b)
        shape = self.broadcast_shapes(cond.shape, *(o.shape for o in (a, b) if isinstance(o, Tensor)))
        c = self.broadcast_to(self.cast(cond, DType.BOOL), shape)
        x = self.broadcast_to(self.lift(a, dtype), shape) if isinstance(a, Tensor) else self.const(a, dtype, shape)
        y = self.broadcast_to(self.lift(b, dtype), shape) if isinstance(b, Tensor) else self.const(b, dtype, shape)
        return self.emit(Op.WHERE, (c, x, y))

    def unary(self, op: Op, x: Tensor) -> Tensor:
        return self.emit(op, (x,))

    def to_float(self, x: Tensor) -> Tensor:
        """x as a float tensor: integers and bools become the default float, as torch's math functions do."""
        return x if x.dtype.is_float else self.cast(x, DEFAULT_FLOAT)

    def float_unary(self, op: Op, x: Tensor) -> Tensor:
        """A math function: integer inputs become floats first, as in torch."""
        return self.emit(op, (self.to_float(x),))

    def neg(self, x: Tensor) -> Tensor: return self.emit(Op.NEG, (x,))
    def exp(self, x: Tensor) -> Tensor: return self.float_unary(Op.EXP, x)
    def log(self, x: Tensor) -> Tensor: return self.float_unary(Op.LOG, x)
    def sqrt(self, x: Tensor) -> Tensor: return self.float_unary(Op.SQRT, x)
    def tanh(self, x: Tensor) -> Tensor: return self.float_unary(Op.TANH, x)
    def sigmoid(self, x: Tensor) -> Tensor: return self.float_unary(Op.SIGMOID, x)

    def cast(self, x: Tensor, dtype: DType) -> Tensor:
        if x.dtype is dtype:
            return x
        return self.emit(Op.CAST, (x,), {"dtype": dtype})

    def detach(self, x: Tensor) -> Tensor:
        return self.emit(Op.DETACH, (x,))

    def check_index(self, x: Tensor, size: Dim, what: str) -> Tensor:
        """x, once a run has checked that every element lies in 0 .. size - 1 (E0705 otherwise)."""
        return self.emit(Op.CHECK_INDEX, (x,), {"size": size, "what": what})

    # ---- reductions ----------------------------------------------------------------------------
    def axes(self, x: Tensor, axis: int | Sequence[int] | None) -> tuple[int, ...]:
        if axis is None:
            return tuple(range(x.rank))
        items = [axis] if isinstance(axis, int) else list(axis)
        out = []
        for a in items:
            if not -x.rank <= a < max(x.rank, 1):
                raise self.fail("E0202", f"axis {a} is out of range for {x.type}")
            out.append(a % x.rank if x.rank else 0)
        if len(set(out)) != len(out):
            raise self.fail("E0202", f"axis {tuple(items)} names an axis twice")
        return tuple(sorted(out))

    def reduced_count(self, x: Tensor, axes: Sequence[int]) -> Dim:
        """How many values a reduction over `axes` combines.  A scalar's axis 0 (which `axes`
        accepts, as torch does) holds its one value."""
        count: Dim = 1
        for a in axes if x.rank else ():
            count = count * x.shape[a]
        return count

    def reduce(self, op: Op, x: Tensor, axis: int | Sequence[int] | None = None, keepdim: bool = False) -> Tensor:
        axes = self.axes(x, axis)
        if x.rank == 0:
            return x
        return self.emit(op, (x,), {"axes": axes, "keepdim": keepdim})

    def sum(self, x: Tensor, axis: int | Sequence[int] | None = None, keepdim: bool = False) -> Tensor:
        if not x.dtype.is_float:
            x = self.cast(x, DType.I64)  # torch sums bool and integer tensors in int64
        return self.reduce(Op.SUM, x, axis, keepdim)

    def mean(self, x: Tensor, axis: int | Sequence[int] | None = None, keepdim: bool = False) -> Tensor:
        if not x.dtype.is_float:
            x = self.cast(x, DEFAULT_FLOAT)
        axes = self.axes(x, axis)
        count = self.reduced_count(x, axes)
        total = self.sum(x, axes, keepdim)
        if isinstance(count, int) and const_problem(count, x.dtype) is not None:
            # More elements than the type can count (f16 past 65504): divide in f32.
            return self.cast(self.div(self.cast(total, DType.F32), self.dim_value(count, DType.F32)), x.dtype)
        return self.div(total, self.dim_value(count, x.dtype))

    def max(self, x: Tensor, axis: int | Sequence[int] | None = None, keepdim: bool = False) -> Tensor:
        return self.reduce(Op.MAX, x, axis, keepdim)

    def min(self, x: Tensor, axis: int | Sequence[int] | None = None, keepdim: bool = False) -> Tensor:
        return self.reduce(Op.MIN, x, axis, keepdim)

    def argmax(self, x: Tensor, axis: int | None = None, keepdim: bool = False) -> Tensor:
        if axis is None:
            x = self.reshape(x, (numel(x.shape),))
            axis = 0
        return self.emit(Op.ARGMAX, (x,), {"axes": self.axes(x, axis), "keepdim": keepdim})

    # ---- movement ------------------------------------------------------------------------------
    def reshape(self, x: Tensor, shape: Sequence[Dim]) -> Tensor:
        shape = tuple(shape)
        if shape == x.shape:
            return x
        return self.emit(Op.RESHAPE, (x,), {"shape": shape})

    def broadcast_to(self, x: Tensor, shape: Sequence[Dim]) -> Tensor:
        shape = tuple(shape)
        if shape == x.shape:
            return x
        return self.emit(Op.BROADCAST, (x,), {"shape": shape})

    def permute(self, x: Tensor, perm: Sequence[int]) -> Tensor:
        perm = tuple(perm)
        if perm == tuple(range(x.rank)):
            return x
        return self.emit(Op.PERMUTE, (x,), {"perm": perm})

    def transpose(self, x: Tensor, a: int = -2, b: int = -1) -> Tensor:
        a, b = self.axes(x, a)[0], self.axes(x, b)[0]
        perm = list(range(x.rank))
        perm[a], perm[b] = perm[b], perm[a]
        return self.permute(x, perm)

    def slice(self, x: Tensor, starts: Sequence[Dim], stops: Sequence[Dim], steps: Sequence[int]) -> Tensor:
        if tuple(starts) == (0,) * x.rank and tuple(stops) == x.shape and tuple(steps) == (1,) * x.rank:
            return x
        return self.emit(Op.SLICE, (x,), {"starts": tuple(starts), "stops": tuple(stops), "steps": tuple(steps)})

    def slice_axis(self, x: Tensor, axis: int, start: Dim, stop: Dim, step: int = 1) -> Tensor:
        starts = [0] * x.rank
        stops = list(x.shape)
        steps = [1] * x.rank
        starts[axis], stops[axis], steps[axis] = start, stop, step
        return self.slice(x, starts, stops, steps)

    def pad(self, x: Tensor, pads: Sequence[tuple[Dim, Dim]], value: float = 0.0) -> Tensor:
        return self.emit(Op.PAD, (x,), {"pads": tuple(tuple(p) for p in pads), "value": value})

    def concat(self, xs: Sequence[Tensor], axis: int) -> Tensor:
        if len(xs) == 1:
            return xs[0]
        dtype = result_dtype(*xs)
        xs = [self.cast(x, dtype) for x in xs]
        return self.emit(Op.CONCAT, xs, {"axis": self.axes(xs[0], axis)[0]})

    def unsqueeze(self, x: Tensor, axis: int) -> Tensor:
        axis = axis % (x.rank + 1)
        return self.reshape(x, x.shape[:axis] + (1,) + x.shape[axis:])

    def keepdim_shape(self, x: Tensor, axes: Sequence[int]) -> Shape:
        return tuple(1 if i in axes else d for i, d in enumerate(x.shape))

    # ---- indexing and contraction -----------------------------------------------------------------
    def gather(self, x: Tensor, axis: int, index: Tensor) -> Tensor:
        return self.emit(Op.GATHER, (x, index), {"axis": self.axes(x, axis)[0]})

    def scatter_add(self, shape: Shape, axis: int, index: Tensor, src: Tensor) -> Tensor:
        return self.emit(Op.SCATTER_ADD, (index, src), {"axis": axis, "shape": tuple(shape)})

    def matmul(self, a: Tensor, b: Tensor) -> Tensor:
        """torch.matmul: 1-d operands, broadcast batch dimensions."""
        dtype = result_dtype(a, b)
        a, b = self.cast(a, dtype), self.cast(b, dtype)
        if a.rank == 0 or b.rank == 0:
            raise self.fail("E0203", f"matrix product needs tensors of rank >= 1, got {a.type} @ {b.type}")
        squeeze_a, squeeze_b = a.rank == 1, b.rank == 1
        if squeeze_a:
            a = self.reshape(a, (1,) + a.shape)
        if squeeze_b:
            b = self.reshape(b, b.shape + (1,))
        if a.shape[-1] != b.shape[-2]:
            # Report in the user's shapes before any batching reshapes.
            self.unify(a.shape[-1], b.shape[-2], "E0203", f"matrix product needs matching inner dimensions: "
                                                          f"{format_shape(a.shape)} @ {format_shape(b.shape)}")
        batch = self.broadcast_shapes(a.shape[:-2], b.shape[:-2])
        if b.rank == 2 and not squeeze_b and a.rank > 2:
            # [..., M, K] @ [K, N]: fold the batch into the rows, one plain product.
            rows = numel(a.shape[:-1])
            out = self.emit(Op.MATMUL, (self.reshape(a, (rows, a.shape[-1])), b))
            out = self.reshape(out, a.shape[:-1] + (b.shape[-1],))
        else:
            a = self.broadcast_to(a, batch + a.shape[-2:])
            b = self.broadcast_to(b, batch + b.shape[-2:])
            out = self.emit(Op.MATMUL, (a, b))
        if squeeze_a:
            out = self.reshape(out, out.shape[:-2] + out.shape[-1:])
        if squeeze_b:
            out = self.reshape(out, out.shape[:-1])
        return out

    # ---- regions ----------------------------------------------------------------------------------
    def results(self, t: Tensor) -> list[Tensor]:
        """Each result of a node with several results, as a `result` node."""
        return [self.emit(Op.RESULT, (t,), {"index": k}) for k in range(len(self.node(t).types))]

    def scan(self, body: Graph, carries: Sequence[Tensor], xs: Sequence[Tensor], consts: Sequence[Tensor] = (),
             reverse: bool = False, length: Dim | None = None) -> tuple[list[Tensor], list[Tensor]]:
        """jax.lax.scan over axis 0 of `xs`: (final carries, stacked ys).  `body`'s inputs are the carries,
        one step of each xs and the consts, in that order; its outputs the new carries, then the ys."""
        if length is None:
            length = xs[0].shape[0]
        node = self.emit(Op.SCAN, (*carries, *xs, *consts),
                         {"body": body, "carries": len(carries), "xs": len(xs), "reverse": reverse, "length": length})
        out = self.results(node)
        return out[:len(carries)], out[len(carries):]


def _dedupe(constraints: list[Constraint]) -> list[Constraint]:
    seen: set[tuple] = set()
    out = []
    for c in constraints:
        key = (c.lhs, c.rhs, c.relation)
        if key not in seen:
            seen.add(key)
            out.append(c)
    return out
