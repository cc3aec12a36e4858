"""decompose: replace composites by their decompositions into primitives.

`keep(node)` says which composites stay whole — those the target has a
kernel for (the Triton backend's flash attention), or, before autodiff, those
with a VJP of their own.  Loop bodies are decomposed too.  Nodes keep their
ids; a decomposition's nodes take new ones, and the composite's source
location and name.
"""

from __future__ import annotations

from typing import Callable

from dln.compiler.composites import expand
from dln.compiler.ir import Graph, GroupOp, Node, Op, map_bodies, subgraphs
from dln.compiler.passes.rewrite import rewrite

Keep = Callable[[Node], bool]


def keep_none(n: Node) -> bool:
    return False


def has_composites(graph: Graph) -> bool:
    return any(n.op is Op.COMPOSITE or any(has_composites(g) for g in subgraphs(n)) for n in graph.nodes)


def decompose(graph: Graph, keep: Keep = keep_none) -> Graph:
    if not has_composites(graph):
        return graph
    graph = map_bodies(graph, lambda body: decompose(body, keep))

    def rule(b, n: Node):
        if n.op not in GroupOp.Composite or keep(n):
            return None
        outs = expand(b, n, [b.tensor(i) for i in n.inputs])
        return [t.id for t in outs] if n.results else outs[0].id

    return rewrite(graph, rule)
