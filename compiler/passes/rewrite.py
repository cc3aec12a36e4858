"""The one loop every rewriting pass shares: walk the nodes in order, let the
pass replace each (by an existing node or new ones), renumber nothing."""

from __future__ import annotations

from typing import Callable

from dln.compiler.emit import GraphBuilder
from dln.compiler.ir import Graph, Node

# A rule gets the builder and the node with its inputs already remapped; it
# returns the id that stands for the node from now on, or None to keep it.
Rule = Callable[[GraphBuilder, Node], "int | None"]


def rewrite(graph: Graph, rule: Rule) -> Graph:
    b = GraphBuilder(graph.name)
    b.shapes.constraints.extend(graph.constraints)
    b.next_id = max((n.id for n in graph.nodes), default=-1) + 1
    alias: dict[int, int] = {}
    for n in graph.nodes:
        inputs = tuple(alias.get(i, i) for i in n.inputs)
        node = n if inputs == n.inputs else Node(n.id, n.op, inputs, n.type, n.attrs, n.loc, n.name, n.phase, n.results)
        with b.at(loc=n.loc, label=n.name, phase=n.phase):
            replacement = rule(b, node)
        if replacement is None or replacement == n.id:
            b.nodes.append(node)
            b.index[node.id] = node
        else:
            alias[n.id] = replacement
    outputs = [(name, alias.get(i, i)) for name, i in graph.outputs]
    return b.finish(outputs)
