"""The template of each kind of fusion group (a domain's kind, or a multi-tensor kernel)."""

from __future__ import annotations

from typing import Callable

from dln.compiler.fusion.planner import FusionPlan, Group
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
}


def generate(plan: FusionPlan, group: Group, k: int, precision: str = "ieee") -> KernelSource:
    if group.kind in CONTRACTIONS:
        return CONTRACTIONS[group.kind](plan, group, k, precision)
    return TEMPLATES[group.kind](plan, group, k)
