"""The template of each kind of fusion group (a domain's kind, or a multi-tensor kernel)."""

from __future__ import annotations

from typing import Callable

from dln.compiler.fusion.planner import FusionPlan, Group
from dln.compiler.ir import Node
from dln.kernels import layernorm
from dln.kernels.convolution import convolution
from dln.kernels.recurrent import scan
from dln.kernels.templates import KernelSource, matmul, multi_tensor, pointwise, reduction, scatter

Template = Callable[[FusionPlan, Group, int], KernelSource]

TEMPLATES: dict[str, Template] = {
    "pointwise": pointwise,
    "reduction": reduction,
    "scatter": scatter,
    "multi_tensor": multi_tensor,
}

# Contractions take the precision of their products (`input_precision` of `tl.dot`).
CONTRACTIONS: dict[str, Callable[[FusionPlan, Group, int, str], KernelSource]] = {
    "matmul": matmul,
    "convolution": convolution,
    "scan": scan,   # a persistent recurrent kernel (or the step-by-step fallback)
    "composite": lambda plan, group, k, precision: COMPOSITE_TEMPLATES[
        plan.graph.node(group.members[0]).attrs["composite"]](plan, group, k, precision),
}


# Composites with a kernel of their own, and for which of their nodes it serves (dln.compiler.composites);
# every other composite reaches the planner decomposed (`pipeline.lower`).  Each has its template.
COMPOSITE_KERNELS: dict[str, Callable[[Node], bool]] = {
    "layernorm": layernorm.serves, "layernorm_vjp": layernorm.serves}
COMPOSITE_TEMPLATES: dict[str, Callable[[FusionPlan, Group, int, str], KernelSource]] = {**layernorm.TEMPLATES}


def has_kernel(n: Node) -> bool:
    serves = COMPOSITE_KERNELS.get(n.attrs["composite"])
    return serves is not None and serves(n)


def generate(plan: FusionPlan, group: Group, k: int, precision: str = "ieee") -> KernelSource:
    if group.kind in CONTRACTIONS:
        return CONTRACTIONS[group.kind](plan, group, k, precision)
    return TEMPLATES[group.kind](plan, group, k)
