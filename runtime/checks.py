"""Run-time checks of what the compiler cannot see: class indices within their range, and
values that fit in memory once the inputs have given the symbolic sizes.

A `check_index` node (a loss's class indices, `one_hot`'s input) is the identity on its
indices; a run fails when one lies outside 0 .. size - 1, as torch raises — a wrong class
would otherwise only mask every class out, and the loss and its gradient would quietly be 0.
The NumPy interpreter checks as it computes the node; the Triton backend reads the indices
back after the step, on the device, and reports the same error.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from dln.compiler.ir import Graph, Node, Op
from dln.compiler.symbolic import Sym, evaluate
from dln.dsl.diagnostics import Diagnostic, DlnError, Note


def index_size(node: Node, env: dict[str, Any]) -> int:
    return int(evaluate(node.attrs["size"], env))


def out_of_range(node: Node, value: int, size: int) -> DlnError:
    """E0705 at the call that made the check: which value, which input, how many classes."""
    notes = [Note(f"class indices run from 0 to {size - 1}, as in torch")]
    if value == size:
        notes.append(Note("labels counted from 1 must be shifted down: class c is index c - 1"))
    return DlnError(Diagnostic("E0705", f"{node.attrs['what']} holds class index {value}, out of range for "
                                        f"{size} classes", node.loc, tuple(notes)))


def check_indices(node: Node, indices: np.ndarray, env: dict[str, Any]) -> None:
    size = index_size(node, env)
    bad = (indices < 0) | (indices >= size)
    if bad.any():
        raise out_of_range(node, int(indices[bad].flat[0]), size)


# ---- the same checks after a step, for a backend whose kernels only mask bad indices out ---------------------

# Views that show the same set of values as their operand (a slice may not): indices are read back
# from where they are stored, not from a broadcast that would have to be written out.
_SAME_VALUES = frozenset({Op.BROADCAST, Op.RESHAPE, Op.PERMUTE, Op.DETACH, Op.CHECK_INDEX})


def index_checks(graph: Graph) -> list[tuple[Node, int]]:
    """(the node an error is about, the node holding its indices) for every class-index check
    and every gather of the graph."""
    checks = []
    for n in graph.nodes:
        if n.op in (Op.CHECK_INDEX, Op.GATHER):
            source = graph.node(n.inputs[0] if n.op is Op.CHECK_INDEX else n.inputs[1])
            while source.op in _SAME_VALUES:
                source = graph.node(source.inputs[0])
            checks.append((n, source.id))
    return checks


def index_bound(graph: Graph, node: Node, env: dict[str, Any]) -> int:
    if node.op is Op.GATHER:
        return int(evaluate(graph.node(node.inputs[0]).shape[node.attrs["axis"]], env))
    return index_size(node, env)


def index_error(node: Node, value: int, size: int) -> DlnError:
    if node.op is Op.GATHER:   # as the NumPy interpreter reports it
        return DlnError(Diagnostic("E0704", f"gather failed at run time: index {value} is out of bounds for axis "
                                            f"{node.attrs['axis']} with size {size}", node.loc))
    return out_of_range(node, value, size)


# ---- memory ------------------------------------------------------------------------------------------------------

def value_bytes(node: Node, env: dict[str, Any]) -> int:
    count = 1
    for d in node.shape:
        count *= int(evaluate(d, env))
    return count * node.dtype.itemsize


def check_sizes(nodes: Iterable[Node], env: dict[str, Any], available: int | None, where: str) -> None:
    """Each value a run is about to allocate, sized from the bound symbols before any is: one larger
    than the memory `where` would fail inside NumPy or torch, without saying which value it was."""
    if available is None:
        return
    for n in nodes:
        if value_bytes(n, env) > available:
            raise too_large(n, env, available, where)


def too_large(node: Node, env: dict[str, Any], available: int, where: str) -> DlnError:
    """E0706 at the value's line: which value, its type, and the sizes its dimensions took."""
    what = f"input '{node.attrs['name']}'" if node.op is Op.INPUT else \
        f"the result of {node.op.value}" + (f" ('{node.name}')" if node.name else "")
    sizes = [int(evaluate(d, env)) for d in node.shape]
    bound = sorted({s for d in node.shape if isinstance(d, Sym) for s in d.symbols})
    notes = [Note("with " + ", ".join(f"{s} = {env[s]}" for s in bound))] if bound else []
    return DlnError(Diagnostic("E0706", f"{what} needs {human_bytes(value_bytes(node, env))} for {node.type} = "
                                        f"{node.dtype}{sizes}, more than {where} ({human_bytes(available)})",
                               node.loc, tuple(notes)))


def human_bytes(n: int) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"
