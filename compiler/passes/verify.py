"""The IR checker: run between passes in debug mode (`dln --debug`, or `debug=True` in the API).

It re-derives every node's type from its inputs with the shape rules and
checks SSA order; on a failure it prints the IR around the bad node.
"""

from __future__ import annotations

from dln.compiler.ir import Graph, GroupOp, Op, subgraphs
from dln.compiler.printer import format_node
from dln.compiler.shapes import SHAPE_RULES, ShapeContext, ShapeError, operand_types


class IRError(AssertionError):
    pass


def verify(graph: Graph, after: str = "") -> Graph:
    seen: set[int] = set()
    for k, n in enumerate(graph.nodes):
        problem = None
        if n.id in seen:
            problem = f"node id %{n.id} defined twice"
        missing = [i for i in n.inputs if i not in seen]
        if missing:
            problem = f"uses %{missing[0]} before it is defined"
        for body in subgraphs(n) if problem is None else ():
            try:
                verify(body, after)
            except IRError as e:
                problem = f"has a bad body: {e}"
        if problem is None and n.op is Op.RESULT and not graph.node(n.inputs[0]).results:
            problem = "reads a result of a node with one result"
        if problem is None and n.op not in GroupOp.Leaf:
            try:
                expected = SHAPE_RULES[n.op](ShapeContext(), operand_types(n.op, [graph.node(i) for i in n.inputs]),
                                             n.attrs)
                expected = expected if isinstance(expected, tuple) else (expected,)
                if expected != n.types:
                    shown = expected[0] if len(expected) == 1 else expected
                    problem = f"type {n.type if len(n.types) == 1 else n.types} but its inputs give {shown}"
            except ShapeError as e:
                problem = f"ill-typed: {e.message}"
        if problem:
            lo, hi = max(0, k - 5), min(len(graph.nodes), k + 3)
            context = "\n".join(("> " if j == k else "  ") + format_node(graph.nodes[j]) for j in range(lo, hi))
            raise IRError(f"IR check failed{' after ' + after if after else ''}: %{n.id} {problem}\n{context}")
        seen.add(n.id)
    for name, i in graph.outputs:
        if i not in seen:
            raise IRError(f"output {name} refers to missing node %{i}")
    return graph
