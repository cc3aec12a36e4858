"""Common-subexpression elimination: equal op, inputs, attributes and type -> one node.

The node kept is named by the scope the equal nodes share (`optimizer`, for the bias corrections every
parameter's update computes alike), so no kernel says it computes another parameter's update."""

from __future__ import annotations

from dln.compiler.ir import Graph, Op, map_bodies
from dln.compiler.naming import shared_scope
from dln.compiler.passes.rewrite import rewrite


def cse(graph: Graph) -> Graph:
    graph = map_bodies(graph, cse)   # loop bodies first
    seen: dict[tuple, int] = {}

    def rule(b, n):
        if n.op is Op.INPUT:
            return None
        key = (n.op, n.inputs, n.attrs, n.type, n.results)
        first = seen.get(key)
        if first is not None:
            kept = b.node(first).name
            if kept != n.name:
                b.rename(b.tensor(first), shared_scope(kept, n.name))
            return first
        seen[key] = n.id
        return None

    return rewrite(graph, rule)
