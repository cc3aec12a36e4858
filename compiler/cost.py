"""Counting work: FLOPs and bytes of a node, for `dln check`, plans and the cost model.

Symbolic dimensions are evaluated in `env` (all 1 for "per example").
"""

from __future__ import annotations

from typing import Mapping

from dln.compiler.ir import Graph, GroupOp, Node, Op
from dln.compiler.symbolic import evaluate, numel


def size(shape, env: Mapping[str, int]) -> int:
    """Elements of `shape` in `env`; none where the sizes make it negative (`B - 5` with B = 1 is a
    binding the inputs are not allowed, not a negative cost)."""
    return max(0, int(evaluate(numel(shape), env)))


def flops(graph: Graph, n: Node, env: Mapping[str, int]) -> int:
    """Floating-point operations of one node (a multiply-add counts 2)."""
    if n.op is Op.MATMUL:
        a = graph.node(n.inputs[0])
        return 2 * size(n.shape, env) * int(evaluate(a.shape[-1], env))
    if n.op in GroupOp.Convolution:
        # every element of the conv's output is a dot product over one group's window: in/groups * prod(K)
        out, weight = {Op.CONV: (n, n.inputs[1]), Op.CONV_TRANSPOSE: (n.inputs[0], n.inputs[1]),
                       Op.CONV_WEIGHT: (n.inputs[1], n)}[n.op]
        out, weight = (graph.node(v) if isinstance(v, int) else v for v in (out, weight))
        return 2 * size(out.shape, env) * size(weight.shape[1:], env)
    if n.op in GroupOp.Elementwise and n.op not in (Op.CAST, Op.DETACH):
        return size(n.shape, env)
    if n.op in GroupOp.Reduce:
        return size(graph.node(n.inputs[0]).shape, env)
    if n.op is Op.SCAN:
        return max(0, int(evaluate(n.attrs["length"], env))) * total_flops(n.attrs["body"], env)
    if n.op is Op.COMPOSITE:   # the work of its decomposition (attention's backward recomputes, so does its kernel)
        from dln.compiler.composites import expanded

        return total_flops(expanded(n, tuple(graph.node(i).type for i in n.inputs)), env)
    return 0


def total_flops(graph: Graph, env: Mapping[str, int]) -> int:
    return sum(flops(graph, n, env) for n in graph.nodes)


def nbytes(n: Node, env: Mapping[str, int]) -> int:
    return sum(size(t.shape, env) * t.dtype.itemsize for t in n.types)
