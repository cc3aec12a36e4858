"""Which op made a NaN or an infinity: the training step re-run on the NumPy interpreter, node by node.

`dln train --check-numerics` (`dln.train(..., check_numerics=True)`) keeps each step's inputs —
the batch, the parameters, the optimizer state, the random step — until the step has run.  When
an output is not finite, `first_non_finite` runs the same graph on the same inputs, keeping every
value, and finds the node to blame: non-finite while its inputs are finite, and on a path of
non-finite values to a non-finite output.  The second condition passes over values that are
non-finite by design and repaired later (`bce` clamps a log of 0, `-inf`, at -100).  The error
points at that node's `.dln` line, with the range of each of its inputs.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from dln.compiler.ir import Graph, Node, Op
from dln.compiler.pipeline import lower
from dln.dsl.diagnostics import Diagnostic, DlnError, Note, Span
from dln.runtime.numpy_ops import IMPLS, concrete_shape, np_dtype


def non_finite(value: Any) -> bool:
    a = np.asarray(value)
    return a.dtype.kind == "f" and not np.isfinite(a).all()


def first_non_finite(graph: Graph, inputs: Mapping[str, np.ndarray], env: dict[str, Any], what: str,
                     where: Span | None) -> Diagnostic | None:
    """E0704 at the first op whose result is not finite, or None when the NumPy interpreter computes
    every output finitely (a difference of the other backend)."""
    graph = lower(graph)   # blame a primitive of a composite's decomposition, at the composite's line
    values: dict[int, np.ndarray] = {}
    bad: set[int] = set()
    with np.errstate(all="ignore"):
        for n in graph.nodes:
            if n.op is Op.INPUT:
                # as the graph declares it (a backend may hold a scalar as one element)
                values[n.id] = np.asarray(inputs[n.attrs["name"]], np_dtype(n.dtype)).reshape(concrete_shape(n, env))
            else:
                values[n.id] = IMPLS[n.op](n, [values[i] for i in n.inputs], None, env)
            if non_finite(values[n.id]):
                bad.add(n.id)
    # Walk back from the non-finite outputs through non-finite values to where they began.
    sources: set[int] = set()
    todo = [i for _, i in graph.outputs if i in bad]
    seen: set[int] = set()
    while todo:
        i = todo.pop()
        if i in seen:
            continue
        seen.add(i)
        upstream = [j for j in graph.node(i).inputs if j in bad]
        if upstream:
            todo += upstream
        else:
            sources.add(i)
    if not sources:
        return None
    order = {n.id: k for k, n in enumerate(graph.nodes)}
    culprit = graph.node(min(sources, key=order.__getitem__))
    notes = [Note(f"{what}; the first non-finite value was made here")]
    if where is not None:
        notes.append(Note("trained here", where))
    notes += [Note(_describe_input(k, graph.node(i), values[i])) for k, i in enumerate(culprit.inputs)]
    result = values[culprit.id]
    count = int(np.size(result) - np.isfinite(result).sum())
    return Diagnostic("E0704", f"{_name(culprit)} made {count} non-finite value{'s' if count != 1 else ''} "
                               f"({_kinds(result)}) from finite inputs", culprit.loc, tuple(notes))


def _name(n: Node) -> str:
    if n.op is Op.INPUT:
        return f"input '{n.attrs['name']}'"
    return n.op.value + (f" ('{n.name}')" if n.name else "")


def _kinds(a: np.ndarray) -> str:
    a = np.asarray(a)
    kinds = [k for k, present in (("nan", np.isnan(a).any()), ("inf", np.isposinf(a).any()),
                                  ("-inf", np.isneginf(a).any())) if present]
    return ", ".join(kinds)


def _describe_input(k: int, n: Node, value: np.ndarray) -> str:
    a = np.asarray(value)
    head = f"operand {k + 1}, {_name(n)} {n.type}"
    if a.size == 0:
        return f"{head}: empty"
    if a.dtype.kind not in "fiub":
        return head
    finite = a[np.isfinite(a)] if a.dtype.kind == "f" else a
    bad = int(a.size - finite.size)
    span = f"min {finite.min():.6g}, max {finite.max():.6g}" if finite.size else "no finite value"
    return f"{head}: {span}, {bad} non-finite of {a.size}"


def keep(graph: Graph, feeds: Mapping[str, Any], persistent: Mapping[str, Any], to_numpy) -> dict[str, np.ndarray]:
    """Copies of everything a step reads, taken before it runs (it updates parameters in place)."""
    kept = {}
    for n in graph.inputs:
        name = n.attrs["name"]
        value = feeds[name] if name in feeds else persistent[name]
        kept[name] = np.array(to_numpy(value), copy=True)
    return kept


def check_step(graph: Graph, outputs: Mapping[str, Any], kept: Mapping[str, np.ndarray], env: dict[str, Any],
               to_numpy, when: str, where: Span | None) -> None:
    """Raise E0704 at the op that began it when an output of the step is not finite."""
    bad = [name for name, value in outputs.items() if non_finite(to_numpy(value))]
    if not bad:
        return
    shown = [name.removeprefix("new:") for name in bad[:3]]   # `new:fc.weight`: the updated parameter
    what = f"{', '.join(shown)}{' ...' if len(bad) > 3 else ''} became non-finite {when}"
    found = first_non_finite(graph.with_outputs([o for o in graph.outputs if o[0] in bad]), kept, env, what, where)
    if found is None:
        found = Diagnostic("E0704", f"{what}, but the NumPy interpreter computes the step finitely", where,
                           (Note("the backend's kernels differ from the NumPy reference here: please report it"),))
    raise DlnError(found)
