"""How `tl.dot` treats fp32 inputs: "ieee" is exact (the default; parity tests rely on it);
"tf32", "tf32x3" and "bf16x3" use tensor cores at some cost in precision.

`MODES` adds Lightning's mixed modes ("bf16-mixed", "16-mixed"), which change the graph rather
than `tl.dot` (dln.compiler.passes.autocast): its products take bf16 or f16 operands, and their
float32 products, if any, stay "ieee"."""

from dln.compiler.passes.autocast import MIXED

PRECISIONS = ("ieee", "tf32", "tf32x3", "bf16x3")
MODES = PRECISIONS + tuple(MIXED)


def dot_precision(mode: str | None) -> str:
    """The `tl.dot` input precision of a mode: a mixed mode's float32 products are exact."""
    return "ieee" if mode is None or mode in MIXED else mode
