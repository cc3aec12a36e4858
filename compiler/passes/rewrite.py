"""The one loop every rewriting pass shares: walk the nodes in order, let the
pass replace each (by an existing node or new ones), renumber nothing."""

from __future__ import annotations

from typing import Callable

from dln.compiler.emit import GraphBuilder
from dln.compiler.ir import Graph, Node, Op

# A rule gets the builder and the node with its inputs already remapped; it
# returns the id that stands for the node from now on, or None to keep it.  A
# node with several results may be replaced by a list of ids, one per result:
# the `result` nodes reading it become those.
Rule = Callable[[GraphBuilder, Node], "int | list[int] | None"]


def rewrite(graph: Graph, rule: Rule) -> Graph:
    b = GraphBuilder(graph.name)
    b.shapes.constraints.extend(graph.constraints)
    b.next_id = max((n.id for n in graph.nodes), default=-1) + 1
    alias: dict[int, int] = {}
    results: dict[int, list[int]] = {}   # a replaced node with several results -> one id per result
    for n in graph.nodes:
        if n.op is Op.RESULT and n.inputs[0] in results:
            alias[n.id] = results[n.inputs[0]][n.attrs["index"]]
            continue
        inputs = tuple(alias.get(i, i) for i in n.inputs)
        node = n if inputs == n.inputs else Node(n.id, n.op, inputs, n.type, n.attrs, n.loc, n.name, n.phase, n.results)
        # What the rule emits takes the node's place, name and phase (set, not `b.at`: no context
        # manager for each of thousands of nodes).
        b.loc, b.label, b.phase = n.loc, n.name, n.phase
        replacement = rule(b, node)
        if isinstance(replacement, list):
            results[n.id] = replacement
        elif replacement is None or replacement == n.id:
            b.nodes.append(node)
            b.index[node.id] = node
        else:
            alias[n.id] = replacement
    outputs = [(name, alias.get(i, i)) for name, i in graph.outputs]
    return b.finish(outputs)
