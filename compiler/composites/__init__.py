"""Composite ops: operations defined by a decomposition into primitives (ARCHITECTURE.md, decision 3).

A composite is one `composite` node in the IR (attrs: `composite`, its name,
and its own attributes).  Each has

* `infer` — its shape rule: the operand types and attributes to its result
  type (a tuple for several results, read by `result` nodes);
* `decompose` — the same computation in primitives, emitted into a builder.
  The `decompose` pass (dln.compiler.passes.decompose) replaces every
  composite a backend has no kernel for by it, and the tests hold it as a
  second opinion on every kernel;
* optionally `vjp` — its own gradient, a rule like autodiff's, usually
  another composite (attention's backward is `sdpa_vjp`, which recomputes the
  probabilities instead of saving them).  Where `vjp` is None (or `has_vjp`
  says no for a node's attributes) autodiff differentiates the decomposition.

The backends say which composites they keep whole: the Triton target has
flash-attention kernels (dln.kernels); the NumPy interpreter runs every
composite's decomposition, which is already batched over heads.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Callable, Sequence

from dln.compiler.ir import Attrs, Graph, Node, Op, TensorType
from dln.compiler.shapes import ShapeContext

if TYPE_CHECKING:
    from dln.compiler.emit import GraphBuilder, Tensor


@dataclass(frozen=True)
class Composite:
    name: str
    doc: str
    infer: Callable[[Any, list[TensorType], Attrs], "TensorType | tuple[TensorType, ...]"]
    decompose: Callable[["GraphBuilder", list["Tensor"], Attrs], list["Tensor"]]
    vjp: Callable | None = None                       # (b, node, g, xs, out) -> cotangents, as autodiff's
    vjp_when: Callable[[Attrs], bool] | None = None   # for which attributes `vjp` applies (else: all)
    strided: bool = False   # a kernel of it reads its operands through views, with strides (attention's heads)

    def has_vjp(self, attrs: Attrs) -> bool:
        return self.vjp is not None and (self.vjp_when is None or self.vjp_when(attrs))


COMPOSITES: dict[str, Composite] = {}


def composite(name: str, doc: str, infer, vjp=None, vjp_when=None, strided: bool = False):
    """Register the decorated function as the decomposition of composite `name`."""
    def register(decompose):
        COMPOSITES[name] = Composite(name, doc, infer, decompose, vjp, vjp_when, strided)
        return decompose
    return register


def of(n: Node) -> Composite:
    return COMPOSITES[n.attrs["composite"]]


def emit(b: "GraphBuilder", name: str, inputs: Sequence["Tensor"], **attrs: Any) -> list["Tensor"]:
    """A composite node over `inputs`: its results (one `result` node each when it has several)."""
    node = b.emit(Op.COMPOSITE, inputs, {"composite": name, **attrs})
    return b.results(node) if len(b.node(node).types) > 1 else [node]


def expand(b: "GraphBuilder", n: Node, inputs: Sequence["Tensor"]) -> list["Tensor"]:
    """`n`'s decomposition over `inputs` (already in `b`), one tensor per result, each of the type `n`'s shape
    rule gives for the inputs' types (`n`'s own when they are its operands' types; concrete ones for the
    torch table's concrete operands)."""
    types = of(n).infer(ShapeContext(), [t.type for t in inputs], n.attrs)   # (its constraints are the graph's)
    outs = of(n).decompose(b, list(inputs), n.attrs)
    for t, want in zip(outs, types if isinstance(types, tuple) else (types,)):
        if t.type != want:
            raise AssertionError(f"composite {n.attrs['composite']}: decomposition gives {t.type}, not {want}")
    return outs


@lru_cache(maxsize=256)
def expanded(n: Node, types: tuple[TensorType, ...]) -> Graph:
    """`n` alone, decomposed over inputs of `types`, as a graph: its FLOPs, the torch table, the tests."""
    from dln.compiler.emit import GraphBuilder

    b = GraphBuilder(f"{n.attrs['composite']}.decomposed")
    with b.at(loc=n.loc, label=n.name):
        xs = [b.input(f"x{k}", t) for k, t in enumerate(types)]
        outs = expand(b, n, xs)
    return b.finish([(f"y{k}", t) for k, t in enumerate(outs)])


# Register the composites.
from dln.compiler.composites import attention, cross_entropy, layernorm  # noqa: E402,F401
