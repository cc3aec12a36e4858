"""Run-time checks of values the compiler cannot see: class indices within their range.

A `check_index` node (a loss's class indices, `one_hot`'s input) is the identity on its
indices; a run fails when one lies outside 0 .. size - 1, as torch raises — a wrong class
would otherwise only mask every class out, and the loss and its gradient would quietly be 0.
The NumPy interpreter checks as it computes the node; the Triton backend reads the indices
back after the step, on the device, and reports the same error.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dln.compiler.ir import Node
from dln.compiler.symbolic import evaluate
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
