"""Common-subexpression elimination: equal op, inputs, attributes and type -> one node."""

from __future__ import annotations

from dln.compiler.ir import Graph, Op, map_bodies
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
            return first
        seen[key] = n.id
        return None

    return rewrite(graph, rule)
