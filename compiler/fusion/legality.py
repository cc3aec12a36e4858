"""May a node join a kernel?  Legality only: whether it is worth it is cost.py's question.

A node may join a group when

1. it has a place in the group's domain (`Domain.canonical`), and a
   reduction joins only a reduction group over the same shape and axes (or
   turns a pointwise group over its input shape into one);
2. every value of the group it uses is used at that value's own index in the
   domain — a kernel holds each value at one index, in registers; nothing
   can be read back transposed or shifted without a trip through memory and
   a barrier the grid does not have;
3. a contraction group's (matmul, convolution) output tile is final only
   after the whole K loop: epilogue nodes may use it, reductions across its
   rows may not;
4. no cycle appears among kernels: the node does not use, through memory, a
   kernel that itself depends on the group.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dln.compiler.fusion import index as ix
from dln.compiler.fusion.domain import KINDS, POINTWISE, REDUCE, Domain, same_shape
from dln.compiler.ir import Graph, Node, Op

if TYPE_CHECKING:
    from dln.compiler.fusion.planner import Group, Planner


# Domains whose kernels compute elementwise nodes at their own elements (a scatter's does not: it
# iterates over its source, writing elsewhere; a scan's loop computes only its body, a composite's
# kernel only itself; a collective is no kernel, but the host's exchange between kernels).
EPILOGUE_HOSTS = KINDS - {"scatter", "scan", "composite", "collective"}


def joined_domain(graph: Graph, group: "Group", n: Node) -> Domain | None:
    """The group's domain once `n` joins, or None when `n` has no place in it."""
    d = group.domain
    if n.op in POINTWISE or n.op in ix.VIEWS:
        if d.kind in EPILOGUE_HOSTS and d.canonical(n.shape) is not None:
            return d
        return None
    if n.op in REDUCE:
        src = graph.node(n.inputs[0])
        axes = tuple(n.attrs["axes"])
        if d.kind == "reduction" and same_shape(d.shape, src.shape) and d.axes == axes:
            return d
        if d.kind == "pointwise" and same_shape(d.shape, src.shape) and n.op is not Op.ARGMAX:
            return Domain("reduction", src.shape, axes)
    return None


def may_join(planner: "Planner", group: "Group", n: Node) -> Domain | None:
    """The domain the group would have with `n` in it, if `n` may join; else None."""
    graph = planner.graph
    domain = joined_domain(graph, group, n)
    if domain is None:
        return None
    # A pointwise group turning into a reduction keeps every member in place only if
    # each has the full shape.
    if domain != group.domain and any(domain.canonical(graph.node(m).shape) != domain.vars()
                                      for m in group.members):
        return None
    at = domain.canonical(n.shape)
    if at is None:
        return None
    found = planner.reads_at(n.id, at)
    for node_id, indices in found.memory.items():
        if node_id in group.members:
            own = domain.canonical(graph.node(node_id).shape)
            if own is None or indices != {own}:
                return None
    # No cycles: the kernels `n` reads from must not depend on this group.
    sources = {planner.group_of[m] for m in found.memory if m in planner.group_of} - {group.id}
    if planner.depends_on(sources, group.id):
        return None
    return domain
