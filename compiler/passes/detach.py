"""After autodiff, `detach` has done its work: it is the identity."""

from __future__ import annotations

from dln.compiler.ir import Graph, Op, map_bodies
from dln.compiler.passes.rewrite import rewrite


def strip_detach(graph: Graph) -> Graph:
    graph = map_bodies(graph, strip_detach)   # loop bodies first
    if not any(n.op is Op.DETACH for n in graph.nodes):
        return graph   # nothing to strip, the common case: no pass over every node
    return rewrite(graph, lambda b, n: n.inputs[0] if n.op is Op.DETACH else None)
