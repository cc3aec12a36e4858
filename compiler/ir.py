"""The graph IR: element types, tensor types, primitive ops, nodes and graphs.

A `Graph` is an SSA list of `Node`s in topological order.  Every node has one
primitive `Op`, the ids of its inputs, frozen attributes, a `TensorType`
(element type and a shape that may hold symbolic dimensions), the `.dln`
span it came from, the source name it computes (for printing and kernel
names) and the phase it belongs to (forward, backward, optimizer).

A node may have several results (`results`, a tuple of types; `.type` stays
the single-result view and is the first of them) and may carry body graphs in
its attributes (a `scan`'s loop body).  Other nodes read result k of such a
node through a `result(index=k)` node, so every input is still one node id.
`subgraphs` yields a node's bodies and `map_bodies` rebuilds a graph with its
bodies transformed: the passes, the verifier and the printer use them.

Everything is immutable: passes build new graphs; a node's users are computed
when needed (`Graph.users`), never stored.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping

from dln.compiler.symbolic import Dim, Shape, Sym, format_shape
from dln.dsl.diagnostics import Span


class DType(enum.Enum):
    F16 = "f16"
    BF16 = "bf16"
    F32 = "f32"
    F64 = "f64"
    I32 = "i32"
    I64 = "i64"
    BOOL = "bool"

    @property
    def is_float(self) -> bool:
        return self in (DType.F16, DType.BF16, DType.F32, DType.F64)

    @property
    def is_int(self) -> bool:
        return self in (DType.I32, DType.I64)

    @property
    def itemsize(self) -> int:
        return {"f16": 2, "bf16": 2, "f32": 4, "f64": 8, "i32": 4, "i64": 8, "bool": 1}[self.value]

    def __str__(self) -> str:
        return self.value

    __hash__ = object.__hash__   # as Op's: types are dictionary keys (CSE) in every pass


DTYPES = {d.value: d for d in DType}


@dataclass(frozen=True, slots=True)
class TensorType:
    dtype: DType
    shape: Shape

    @property
    def rank(self) -> int:
        return len(self.shape)

    def __str__(self) -> str:
        return f"{self.dtype}{format_shape(self.shape)}"


class Op(enum.Enum):
    """The primitives.  Layers, losses and optimizers decompose into these."""

    # -- leaves: graph inputs and values made from nothing
    INPUT = "input"          # attrs: name, role (input|param|state|rng|hyper), init (params)
    CONST = "const"          # attrs: value (a scalar, filled into the node's shape)
    IOTA = "iota"            # 0, 1, ..., n-1 along the single axis
    SYMSIZE = "symsize"      # attrs: dim — the runtime value of a symbolic dimension
    RAND = "rand"            # inputs: seed, step[, row]; attrs: stream, kind (dropout, randn_like, ...) — U[0, 1), Philox

    # -- unary elementwise
    NEG = "neg"
    EXP = "exp"
    LOG = "log"
    LOG1P = "log1p"
    SQRT = "sqrt"
    RSQRT = "rsqrt"
    ABS = "abs"
    SIGN = "sign"
    SIN = "sin"
    COS = "cos"
    TANH = "tanh"
    SIGMOID = "sigmoid"
    RELU = "relu"
    ERF = "erf"
    ATAN = "atan"
    FLOOR = "floor"          # the largest integer <= x (ceil and round-half-to-even are built from it)
    NOT = "not"
    CAST = "cast"            # attrs: dtype (the node's type says it too)
    DETACH = "detach"        # identity; its gradient is zero
    CHECK_INDEX = "check_index"  # identity on integer indices; attrs: size, what — a run fails (E0705)
    #                              when an element lies outside 0 .. size - 1 (class indices of a loss)

    # -- binary elementwise (operands of equal shape; the builder broadcasts)
    ADD = "add"
    SUB = "sub"
    MUL = "mul"
    DIV = "div"
    POW = "pow"
    MOD = "mod"
    MAXIMUM = "maximum"
    MINIMUM = "minimum"
    LT = "lt"
    LE = "le"
    GT = "gt"
    GE = "ge"
    EQ = "eq"
    NE = "ne"
    AND = "and"
    OR = "or"

    # -- ternary elementwise
    WHERE = "where"          # where(cond, a, b)

    # -- collectives: data-parallel training (dln.runtime.distributed) hands the executable a communicator
    ALL_REDUCE = "all_reduce"  # the sum of the operand across the ranks (identity on one process);
    #                            attrs: weighted — the backward's: each rank's cotangent is weighted by its
    #                            share of the global batch before the sum, and the sum divided by it after

    # -- reductions: attrs axes (sorted tuple), keepdim
    SUM = "sum"
    MAX = "max"
    MIN = "min"
    ARGMAX = "argmax"        # attrs: axes (one axis), keepdim; result i64

    # -- movement
    RESHAPE = "reshape"      # attrs: shape
    BROADCAST = "broadcast"  # attrs: shape — numpy broadcasting of the operand to `shape`
    PERMUTE = "permute"      # attrs: perm
    SLICE = "slice"          # attrs: starts, stops, steps (one per axis)
    PAD = "pad"              # attrs: pads ((lo, hi) per axis), value
    CONCAT = "concat"        # attrs: axis

    # -- indexing
    GATHER = "gather"        # gather(x, index) along attrs.axis (torch.gather)
    SCATTER_ADD = "scatter_add"  # scatter_add(zeros(shape), index, src) along attrs.axis

    # -- contraction
    MATMUL = "matmul"        # [..., M, K] @ [..., K, N], equal batch dims
    # Convolution over the axes after the first two; attrs: stride, dilation (one int per spatial axis),
    # padding ((lo, hi) zeros per spatial axis), groups.  The three ops close under differentiation.
    CONV = "conv"            # conv(x [B, Ci, *S], w [Co, Ci/groups, *K]) -> [B, Co, *O]: torch's convolution
    #                          (a cross-correlation), O = (S + lo + hi - dilation*(K - 1) - 1) // stride + 1
    CONV_TRANSPOSE = "conv_transpose"  # the adjoint of conv in x: (y [B, Co, *O], w) -> [B, Ci, *S];
    #                          attrs also output_padding: the rows of S past the last window
    CONV_WEIGHT = "conv_weight"  # the adjoint of conv in w: (x [B, Ci, *S], dy [B, Co, *O]) -> w's shape;
    #                          attrs also kernel (K)

    # -- regions: a body graph in the attributes, several results
    # scan(carries..., xs..., consts...): attrs body (a Graph), carries, xs (how many of each), reverse, length.
    # The body's inputs are the carries, one step of each xs (axis 0 removed) and the consts, in that order;
    # its outputs are the new carries, then one step of each ys.  Results: the final carries, then the ys
    # stacked on a new axis 0 of `length` steps (as jax.lax.scan; `reverse` runs t = length-1 .. 0).
    SCAN = "scan"
    RESULT = "result"        # attrs: index — result `index` of a node with several results

    # -- composites: an op defined by its decomposition into primitives (dln.compiler.composites), kept
    # whole for a backend with a kernel for it; attrs: composite (its name) and the composite's own
    COMPOSITE = "composite"

    def __str__(self) -> str:
        return self.value

    # Every pass looks ops up in sets and tables: hash by identity, in C, rather than Enum's by name in Python.
    __hash__ = object.__hash__


class GroupOp:
    """Ops grouped by kind, as the fusion planner and the tables see them."""

    Leaf = frozenset({Op.INPUT, Op.CONST, Op.IOTA, Op.SYMSIZE, Op.RAND})
    Unary = frozenset({Op.NEG, Op.EXP, Op.LOG, Op.LOG1P, Op.SQRT, Op.RSQRT, Op.ABS, Op.SIGN, Op.SIN,
                       Op.COS, Op.TANH, Op.SIGMOID, Op.RELU, Op.ERF, Op.ATAN, Op.FLOOR, Op.NOT, Op.CAST,
                       Op.DETACH, Op.CHECK_INDEX})
    Binary = frozenset({Op.ADD, Op.SUB, Op.MUL, Op.DIV, Op.POW, Op.MOD, Op.MAXIMUM, Op.MINIMUM,
                        Op.LT, Op.LE, Op.GT, Op.GE, Op.EQ, Op.NE, Op.AND, Op.OR})
    Compare = frozenset({Op.LT, Op.LE, Op.GT, Op.GE, Op.EQ, Op.NE})
    Ternary = frozenset({Op.WHERE})
    Elementwise = Unary | Binary | Ternary
    Reduce = frozenset({Op.SUM, Op.MAX, Op.MIN, Op.ARGMAX})
    Movement = frozenset({Op.RESHAPE, Op.BROADCAST, Op.PERMUTE, Op.SLICE, Op.PAD, Op.CONCAT})
    Indexing = frozenset({Op.GATHER, Op.SCATTER_ADD})
    Convolution = frozenset({Op.CONV, Op.CONV_TRANSPOSE, Op.CONV_WEIGHT})
    Contraction = frozenset({Op.MATMUL}) | Convolution
    Random = frozenset({Op.RAND})
    Collective = frozenset({Op.ALL_REDUCE})  # run on the host between kernels, in the same order on every rank
    Region = frozenset({Op.SCAN})            # ops that carry body graphs (and have several results)
    Composite = frozenset({Op.COMPOSITE})    # ops defined by a decomposition (attention, cross-entropy)
    MultiResult = Region | Composite         # ops whose results `result` nodes read
    Commutative = frozenset({Op.ADD, Op.MUL, Op.MAXIMUM, Op.MINIMUM, Op.EQ, Op.NE, Op.AND, Op.OR})


class Phase(enum.Enum):
    FORWARD = "forward"
    BACKWARD = "backward"
    OPTIMIZER = "optimizer"


class Attrs(Mapping[str, Any]):
    """An immutable, hashable mapping of node attributes."""

    __slots__ = ("_items", "_hash")

    def __init__(self, items: Mapping[str, Any] | Iterable[tuple[str, Any]] = ()) -> None:
        pairs = items.items() if isinstance(items, Mapping) else items
        self._items = dict(sorted(pairs))
        self._hash = hash(tuple((k, _hashable(v)) for k, v in self._items.items()))

    def __getitem__(self, key: str) -> Any:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Attrs) and self._items == other._items

    def replace(self, **changes: Any) -> "Attrs":
        return Attrs({**self._items, **changes})

    def __repr__(self) -> str:
        return f"Attrs({self._items!r})"


def _hashable(v: Any) -> Any:
    if isinstance(v, list):
        return tuple(_hashable(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((k, _hashable(x)) for k, x in v.items()))
    if isinstance(v, float) and v != v:  # NaN constants must still hash equal to themselves
        return "nan"
    return v


NO_ATTRS = Attrs()


@dataclass(frozen=True, slots=True)
class Node:
    id: int
    op: Op
    inputs: tuple[int, ...]
    type: TensorType
    attrs: Attrs = NO_ATTRS
    loc: Span | None = field(default=None, compare=False)
    name: str = field(default="", compare=False)
    phase: Phase = field(default=Phase.FORWARD, compare=False)
    results: tuple[TensorType, ...] = ()    # the types of a node with several results (else empty)

    @property
    def types(self) -> tuple[TensorType, ...]:
        """Every result's type: one for most nodes."""
        return self.results or (self.type,)

    @property
    def shape(self) -> Shape:
        return self.type.shape

    @property
    def dtype(self) -> DType:
        return self.type.dtype


@dataclass(frozen=True, slots=True)
class Constraint:
    """Two dimensions that must agree (`==`) or be ordered (`<=`: an index within its axis) once
    the inputs bind the symbols in them."""

    lhs: Dim
    rhs: Dim
    message: str
    loc: Span | None = field(default=None, compare=False)
    relation: str = "=="
    code: str = field(default="", compare=False)   # the error when it fails (else by relation)

    def holds(self, lhs: int, rhs: int) -> bool:
        return lhs == rhs if self.relation == "==" else lhs <= rhs


@dataclass(frozen=True, slots=True)
class Graph:
    name: str
    nodes: tuple[Node, ...]
    outputs: tuple[tuple[str, int], ...]
    constraints: tuple[Constraint, ...] = ()
    _index: dict[int, Node] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._index.update((n.id, n) for n in self.nodes)

    def node(self, node_id: int) -> Node:
        return self._index[node_id]

    def __contains__(self, node_id: int) -> bool:
        return node_id in self._index

    @property
    def inputs(self) -> list[Node]:
        return [n for n in self.nodes if n.op is Op.INPUT]

    def input_named(self, name: str) -> Node | None:
        for n in self.nodes:
            if n.op is Op.INPUT and n.attrs["name"] == name:
                return n
        return None

    def output(self, name: str) -> Node:
        for out_name, node_id in self.outputs:
            if out_name == name:
                return self.node(node_id)
        raise KeyError(name)

    @property
    def output_names(self) -> list[str]:
        return [name for name, _ in self.outputs]

    def users(self) -> dict[int, list[int]]:
        """node id -> ids of the nodes that read it, in order."""
        out: dict[int, list[int]] = {n.id: [] for n in self.nodes}
        for n in self.nodes:
            for i in n.inputs:
                out[i].append(n.id)
        return out

    def symbols(self) -> frozenset[str]:
        """The dimension names the graph needs: in its shapes, and in attributes (a `symsize`'s
        dimension, a slice's bounds) that no shape may mention."""
        syms: set[str] = set()

        def add(v: Any) -> None:
            if isinstance(v, Sym):
                syms.update(v.symbols)
            elif isinstance(v, tuple):
                for x in v:
                    add(x)

        for n in self.nodes:
            for t in n.types:
                add(t.shape)
            for v in n.attrs.values():
                add(v)
            for body in subgraphs(n):
                syms.update(body.symbols())
        return frozenset(syms)

    def with_outputs(self, outputs: Iterable[tuple[str, int]]) -> "Graph":
        return Graph(self.name, self.nodes, tuple(outputs), self.constraints)


def subgraphs(node: Node) -> Iterator[Graph]:
    """The body graphs a node carries (a scan's loop body), in attribute order."""
    for v in node.attrs.values():
        if isinstance(v, Graph):
            yield v


def map_bodies(graph: Graph, fn: Callable[[Graph], Graph]) -> Graph:
    """`graph` with every body of every node replaced by `fn(body)` (one level: `fn` recurses if it
    should).  The same graph when nothing changed."""
    changed = False
    nodes = []
    for n in graph.nodes:
        if n.op in GroupOp.Region:
            new = {k: fn(v) for k, v in n.attrs.items() if isinstance(v, Graph)}
            if any(new[k] is not n.attrs[k] for k in new):
                n = Node(n.id, n.op, n.inputs, n.type, n.attrs.replace(**new), n.loc, n.name, n.phase, n.results)
                changed = True
        nodes.append(n)
    return Graph(graph.name, tuple(nodes), graph.outputs, graph.constraints) if changed else graph
