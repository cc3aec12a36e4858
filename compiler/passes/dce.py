"""Dead-code elimination."""

from __future__ import annotations

from dln.compiler.ir import Graph, Op, map_bodies


def dce(graph: Graph, keep_inputs: bool = False) -> Graph:
    """The nodes the outputs depend on, in their order.  Unused inputs go too,
    unless `keep_inputs` (a step function keeps its whole signature, and so does a loop body)."""
    graph = map_bodies(graph, lambda body: dce(body, keep_inputs=True))
    live = {i for _, i in graph.outputs}
    for n in reversed(graph.nodes):
        if n.id in live:
            live.update(n.inputs)
    nodes = tuple(n for n in graph.nodes
                  if n.id in live or (keep_inputs and n.op is Op.INPUT))
    return Graph(graph.name, nodes, graph.outputs, graph.constraints)
