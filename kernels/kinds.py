"""The template of each kind of fusion group (a domain's kind, or a multi-tensor kernel)."""

from __future__ import annotations

from typing import Callable

from dln.compiler.fusion.planner import FusionPlan, Group
from dln.compiler.ir import Graph, Node, TensorType
from dln.kernels import attention, layernorm
from dln.kernels.collective import collective
from dln.kernels.convolution import convolution
from dln.kernels.recurrent import scan
from dln.kernels.split_reduction import split_reduction
from dln.kernels.splitk import splitk
from dln.kernels.splitk_conv import splitk_convolution
from dln.kernels.templates import KernelSource, matmul, multi_tensor, pointwise, reduction, scatter

Template = Callable[[FusionPlan, Group, int], KernelSource]

TEMPLATES: dict[str, Template] = {
    "pointwise": pointwise,
    "reduction": reduction,
    "scatter": scatter,
    "multi_tensor": multi_tensor,
    "split_reduction": split_reduction,   # partial results over column chunks, then their combination
    "collective": collective,   # no kernel: the host's sum across ranks between kernels (sync_batchnorm)
}

# Contractions take the precision of their products (`input_precision` of `tl.dot`).
CONTRACTIONS: dict[str, Callable[[FusionPlan, Group, int, str], KernelSource]] = {
    "matmul": matmul,
    "splitk": splitk,   # K in chunks on many programs, then the ordered sum and the epilogue
    "convolution": convolution,
    "splitk_convolution": splitk_convolution,   # a weight gradient's K in chunks, then the ordered sum
    "scan": scan,   # a persistent recurrent kernel (or the step-by-step fallback)
    "composite": lambda plan, group, k, precision: COMPOSITE_TEMPLATES[
        plan.graph.node(group.members[0]).attrs["composite"]](plan, group, k, precision),
}


# Composites with a kernel of their own, and for which of their nodes (given its operands' types) it serves
# (dln.compiler.composites); every other composite reaches the planner decomposed (`pipeline.lower`).  Each
# has its template.
COMPOSITE_KERNELS: dict[str, Callable[[Node, list[TensorType]], bool]] = {
    "sdpa": attention.serves,       # flash attention (kernels/attention.py)
    "sdpa_vjp": attention.serves,
    "layernorm": layernorm.serves,  # one pass per row block; the backward's weight sums in a second stage
    "layernorm_vjp": layernorm.serves,
}
COMPOSITE_TEMPLATES: dict[str, Callable[[FusionPlan, Group, int, str], KernelSource]] = {
    "sdpa": attention.forward,
    "sdpa_vjp": attention.backward,
    **layernorm.TEMPLATES,
}


def kept_in(graph: Graph) -> Callable[[Node], bool]:
    """Which composites of `graph` keep their kernel (`pipeline.lower`'s `keep`).  One inside a loop body
    (not a node of `graph` itself) is decomposed: a body's kernels are the persistent loop's or its own.
    The pass hands over a node whose inputs it may have renamed (an operand decomposed before it): the
    node of `graph` it stands for is the one with its id and its very attributes, and has its operands'
    types."""
    def has_kernel(n: Node) -> bool:
        serves = COMPOSITE_KERNELS.get(n.attrs["composite"])
        own = graph.node(n.id) if n.id in graph else None
        if serves is None or own is None or own.attrs is not n.attrs:
            return False
        return serves(own, [graph.node(i).type for i in own.inputs])
    return has_kernel


def generate(plan: FusionPlan, group: Group, k: int, precision: str = "ieee") -> KernelSource:
    if group.kind in CONTRACTIONS:
        return CONTRACTIONS[group.kind](plan, group, k, precision)
    return TEMPLATES[group.kind](plan, group, k)
