"""Iteration domains of kernels, and how nodes are read inside them.

A kernel iterates over a domain:

* pointwise — the elements of one shape;
* reduction — a shape X split into kept axes (rows) and reduced axes
  (columns); nodes of shape X live at a (row, column) index, nodes of the
  reduced shape (with or without keepdim) at a row index;
* matmul — the output tile (batch..., m, n) of a matrix product; a node
  whose leading axes split the rows m (the [B, T, N] view of a [B*T, N]
  product) lives there too, at m's digits, so a linear layer's bias,
  activation and residual add on a [B, T, D] input are its epilogue;
* convolution — the output of a convolution (any of `GroupOp.Convolution`),
  computed as an implicit matrix product whose tile rows and columns are
  split into the output's axes (kernels/convolution.py);
* scatter — the elements of the source of a scatter-add;
* scan — a `scan` node alone: its loop runs inside one kernel (or a loop of
  launches), its results are the kernel's stored values, one buffer each,
  and the `result` nodes that read them are those buffers (no copy);
* composite — a composite node a target keeps whole (attention), alone, run
  by its own kernel (dln.kernels); its results are buffers as a scan's;
* collective — an `all_reduce` alone: no kernel but a step on the host
  between kernels (the sum across ranks, dln.kernels.collective), which
  reads its operand from memory and stores its result there.

`canonical` gives the index a node of a given shape has in the domain, or
None when the node cannot live there.  `reads` walks the part of the graph a
kernel computes inline from one node and lists what it must read from
memory, at which index.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from dln.compiler.fusion import index as ix
from dln.compiler.ir import Graph, GroupOp, Node, Op
from dln.compiler.shapes import reduced_shape
from dln.compiler.symbolic import Shape, dims_equal, numel

# How each op takes part in fusion.
LEAVES = frozenset({Op.CONST, Op.IOTA, Op.SYMSIZE})
POINTWISE = GroupOp.Elementwise | {Op.RAND, Op.PAD, Op.CONCAT, Op.GATHER}
REDUCE = GroupOp.Reduce
# Ops whose value depends on where an element lies, beyond the values they read.
POSITIONAL = frozenset({Op.IOTA, Op.RAND, Op.PAD, Op.CONCAT, Op.GATHER})

# The kinds of domain (each has a kernel template: dln.kernels.kinds).
KINDS = frozenset({"pointwise", "reduction", "matmul", "convolution", "scatter", "scan", "composite",
                   "collective"})


def same_shape(a: Shape, b: Shape) -> bool:
    return len(a) == len(b) and all(dims_equal(x, y) is True for x, y in zip(a, b))


@dataclass(frozen=True)
class Domain:
    kind: str                      # pointwise | reduction | matmul | convolution | scatter | scan | composite
    #                                | collective
    shape: Shape
    axes: tuple[int, ...] = ()     # reduction: the reduced axes of `shape`
    contraction: object = None     # matmul: the size K
    # canonical's answers by shape: grouping asks every kernel's domain about every node it might take.
    _places: dict[Shape, ix.Index | None] = field(default_factory=dict, init=False, repr=False, compare=False)

    def vars(self) -> ix.Index:
        if self.kind == "reduction":
            return tuple(ix.ZERO if d == 1 else ix.Var(("c" if k in self.axes else "r") + str(k), d)
                         for k, d in enumerate(self.shape))
        if self.kind == "matmul":
            rank = len(self.shape)
            names = [f"b{k}" for k in range(rank - 2)] + ["m", "n"]
            return tuple(ix.Var(n, d) if d != 1 or n in ("m", "n") else ix.ZERO
                         for n, d in zip(names, self.shape))
        return ix.domain_vars(self.shape, "i")

    def row_shape(self, keepdim: bool) -> Shape:
        return reduced_shape(self.shape, self.axes, keepdim)

    def canonical(self, shape: Shape) -> ix.Index | None:
        """The index of a node of `shape` in this domain, or None if it has no place here."""
        if shape not in self._places:
            self._places[shape] = self._place(shape)
        return self._places[shape]

    def _place(self, shape: Shape) -> ix.Index | None:
        if same_shape(shape, self.shape):
            return self.vars()
        if self.kind == "reduction":
            if same_shape(shape, self.row_shape(True)):
                return tuple(ix.ZERO if k in self.axes else v for k, v in enumerate(self.vars()))
            if same_shape(shape, self.row_shape(False)):
                return tuple(v for k, v in enumerate(self.vars()) if k not in self.axes)
        if self.kind == "matmul" and self.splits_rows(shape):
            # A view of the product with its rows split ([B*T, N] seen as [B, T, N], as `linear` on a
            # [B, T, D] input reshapes back): row m is element (m // T, m % T) of the leading axes.
            batch = len(self.shape) - 2
            full = self.vars()
            return full[:batch] + ix.delinearize(full[-2], shape[batch:-1]) + full[-1:]
        return None

    def splits_rows(self, shape: Shape) -> bool:
        """In a matmul domain [*batch, M, N]: is `shape` [*batch, *rows, N] with rows holding M elements?"""
        batch = len(self.shape) - 2
        return (len(shape) > len(self.shape) and same_shape(shape[:batch], self.shape[:batch])
                and dims_equal(shape[-1], self.shape[-1]) is True
                and dims_equal(numel(shape[batch:-1]), self.shape[-2]) is True)

    def is_row(self, shape: Shape) -> bool:
        """In a reduction domain: does a node of `shape` hold one value per row?"""
        return self.kind == "reduction" and not same_shape(shape, self.shape) and self.canonical(shape) is not None


@dataclass
class Reads:
    """What evaluating a node inline needs: nodes read from memory, each at its indices."""

    memory: dict[int, set[ix.Index]] = field(default_factory=dict)
    inline: set[int] = field(default_factory=set)   # nodes computed inline (not the root)

    def add(self, node: int, index: ix.Index) -> None:
        self.memory.setdefault(node, set()).add(index)


def reads(graph: Graph, root: Node, index: ix.Index, stops: Callable[[int], bool], most: int | None = None) -> Reads:
    """Walk the inputs of `root` evaluated at `index`, inlining every node for which
    `stops` is false; nodes where it is true (inputs, realized values) are read.  With `most`,
    the walk ends once that many nodes are inlined (a caller that only asks "more than this?")."""
    out = Reads()
    seen: set[tuple[int, ix.Index]] = set()

    def children(n: Node, at: ix.Index) -> list[tuple[int, ix.Index]]:
        found: list[tuple[int, ix.Index]] = []
        inputs_at(graph, n, at, lambda i, where: found.append((i, where)))
        return found[::-1]   # popped in input order: the walk is the depth-first one, without recursion

    stack = children(root, index)
    while stack:   # a worklist, not recursion: a chain of thousands of ops is one kernel's body
        key = stack.pop()
        if key in seen:
            continue
        seen.add(key)
        node_id, at = key
        n = graph.node(node_id)
        if n.op is Op.INPUT or stops(node_id):
            out.add(node_id, at)
            continue
        out.inline.add(node_id)
        if most is not None and len(out.inline) >= most:
            break
        stack.extend(children(n, at))
    return out


def inputs_at(graph: Graph, n: Node, at: ix.Index, visit: Callable[[int, ix.Index], None]) -> None:
    """Call `visit(input, index)` for every input of `n` evaluated at `at`."""
    if n.op in LEAVES:
        return
    if n.op in ix.VIEWS:
        src = graph.node(n.inputs[0])
        visit(src.id, ix.view_index(n, at, src.shape))
    elif n.op is Op.RAND:
        for i in n.inputs:
            visit(i, ())
    elif n.op is Op.PAD:
        visit(n.inputs[0], tuple(ix.add(i, ix.lit(-lo)) for i, (lo, _) in zip(at, n.attrs["pads"])))
    elif n.op is Op.CONCAT:
        axis, offset = n.attrs["axis"], 0
        for i in n.inputs:
            shifted = list(at)
            shifted[axis] = ix.add(at[axis], ix.lit(-offset))
            visit(i, tuple(shifted))
            offset = offset + graph.node(i).shape[axis]
    elif n.op is Op.GATHER:
        x, index = n.inputs
        visit(index, at)
        where = list(at)
        where[n.attrs["axis"]] = ix.Load(index, at)
        visit(x, tuple(where))
    elif n.op in REDUCE:
        src = graph.node(n.inputs[0])
        visit(src.id, reduction_input_index(n, at, src.shape))
    elif n.op is Op.MATMUL:
        a, b = (graph.node(i) for i in n.inputs)
        k = ix.Var("k", a.shape[-1])
        visit(a.id, at[:-2] + (at[-2], k))
        visit(b.id, at[:-2] + (k, at[-1]))
    elif n.op in GroupOp.Convolution:
        # Every element of an output reads a window of each operand: indices of their own, which no
        # value of the kernel shares (an operand is never read back where the kernel writes).
        for position, i in enumerate(n.inputs):
            visit(i, ix.domain_vars(graph.node(i).shape, f"window{position}_"))
    elif n.op in GroupOp.MultiResult:
        # The loop (the composite's kernel) reads every input whole: indices of their own.
        for position, i in enumerate(n.inputs):
            visit(i, ix.domain_vars(graph.node(i).shape, f"scan{position}_"))
    elif n.op is Op.SCATTER_ADD:
        # Evaluated over its source's elements (`at` indexes the source), written with atomics.
        for i in n.inputs:
            visit(i, at)
    else:
        for i in n.inputs:
            visit(i, at)


def reduction_input_index(n: Node, at: ix.Index, input_shape: Shape) -> ix.Index:
    """The index of the reduction's input at row `at`: kept axes from `at`, reduced axes as columns."""
    axes = n.attrs["axes"]
    keep = n.attrs["keepdim"]
    out: list[ix.Ix] = []
    k = 0
    for axis, d in enumerate(input_shape):
        if axis in axes:
            out.append(ix.ZERO if d == 1 else ix.Var(f"c{axis}", d))
            if keep:
                k += 1
        else:
            out.append(at[k])
            k += 1
    return tuple(out)


def node_domain(graph: Graph, n: Node) -> Domain:
    """The domain of a kernel that starts at node `n`."""
    if n.op in REDUCE:
        src = graph.node(n.inputs[0])
        return Domain("reduction", src.shape, tuple(n.attrs["axes"]))
    if n.op is Op.MATMUL:
        return Domain("matmul", n.shape, (), graph.node(n.inputs[0]).shape[-1])
    if n.op in GroupOp.Convolution:
        return Domain("convolution", n.shape)
    if n.op in GroupOp.Region:
        return Domain("scan", n.shape)
    if n.op in GroupOp.Composite:
        return Domain("composite", n.shape)
    if n.op in GroupOp.Collective:
        return Domain("collective", n.shape)
    if n.op is Op.SCATTER_ADD:
        return Domain("scatter", graph.node(n.inputs[1]).shape)
    return Domain("pointwise", n.shape)
