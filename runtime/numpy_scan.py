"""`scan` on the NumPy backend.

`reference` is the definition: evaluate the body once per step.  `prepare`
is what the planned interpreter runs: the loop unrolled into prebound NumPy
calls when it is planned (one plan per sequence length), reading and writing
the stacked arrays in place.  For an LSTM that is one matrix product per
step, with all four gates in it, and no copies but of the saved carries.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import numpy as np

from dln.compiler.ir import Node, Op
from dln.compiler.symbolic import evaluate as size_of


def _parts(n: Node, args: list[np.ndarray]):
    n_carry, n_xs = n.attrs["carries"], n.attrs["xs"]
    return args[:n_carry], args[n_carry:n_carry + n_xs], args[n_carry + n_xs:]


def _steps(n: Node, env: dict[str, Any]) -> range:
    length = size_of(n.attrs["length"], env)
    return range(length - 1, -1, -1) if n.attrs["reverse"] else range(length)


def reference(n: Node, args: list[np.ndarray], env: dict[str, Any], run_graph: Callable) -> tuple[np.ndarray, ...]:
    """The scan, step by step: `run_graph(body, feeds, env)` evaluates the body."""
    from dln.runtime.numpy_ops import np_dtype

    body = n.attrs["body"]
    carries, xs, consts = _parts(n, args)
    names = [p.attrs["name"] for p in body.inputs]
    n_carry = len(carries)
    ys = [np.empty(tuple(size_of(d, env) for d in t.shape), np_dtype(t.dtype)) for t in n.results[n_carry:]]
    carries = [np.array(c) for c in carries]
    for t in _steps(n, env):
        out = run_graph(body, dict(zip(names, [*carries, *(x[t] for x in xs), *consts])), env)
        values = [out[name] for name, _ in body.outputs]
        carries = [np.array(v) for v in values[:n_carry]]
        for y, v in zip(ys, values[n_carry:]):
            y[t] = v
    return (*carries, *ys)


def prepare(n: Node, args: list[np.ndarray], outs: tuple[np.ndarray, ...], env: dict[str, Any],
            bind: Callable) -> Callable[[], None]:
    """The whole loop as one prebound step writing into `outs` (final carries, stacked ys).

    The body is bound once per step t (`bind(node, inputs, out, env, shared)`, the interpreter's), so that
    nothing moves that need not: step t reads its x straight from row t of the stacked xs and writes each
    y it computes straight into row t of the stacked ys; a carry is written into one of two buffers in
    turn and read from the other at the next step (or, when it is also a y, read from row t - 1).  Only a
    carry or y the body does not compute itself (an input passed on, a view) is copied.  Values used
    within a step have one buffer for every step; those that depend on no input are computed once."""
    from dln.runtime.numpy_ops import IMPLS, VIEW_OPS, np_dtype

    body = n.attrs["body"]
    carries, xs, consts = _parts(n, args)
    n_carry = len(carries)
    params = body.inputs
    produced = [i for _, i in body.outputs]
    carry_out, y_out = produced[:n_carry], produced[n_carry:]
    final, stacked = outs[:n_carry], outs[n_carry:]
    static: dict[int, Any] = {}
    for m in body.nodes:
        if m.op is not Op.INPUT and m.op is not Op.RAND and all(i in static for i in m.inputs):
            static[m.id] = IMPLS[m.op](m, [static[i] for i in m.inputs], None, env)
    computes = {m.id for m in body.nodes if m.op not in VIEW_OPS and m.op is not Op.RESULT}
    y_row = {}                              # node -> the ys it writes straight into (none computed once)
    for k, i in enumerate(y_out):
        if i in computes and i not in static and i not in y_row and not body.node(i).results:
            y_row[i] = k

    def buffer(m: Node) -> Any:
        arrays = tuple(np.empty(tuple(size_of(d, env) for d in t.shape), np_dtype(t.dtype)) for t in m.types)
        return arrays if m.results else arrays[0]
    scratch = {m.id: buffer(m) for m in body.nodes
               if m.id in computes and m.id not in static and m.id not in y_row and m.id not in carry_out}
    turns = {k: (buffer(body.node(i)), buffer(body.node(i))) for k, i in enumerate(carry_out) if i not in y_row}
    copied: dict[int, np.ndarray] = {}      # reshapes that copy: one buffer each, for every step
    shared: dict = {}
    calls: list[Callable[[], Any]] = []
    state = list(carries)
    for turn, t in enumerate(_steps(n, env)):
        values: dict[int, Any] = dict(static)
        values.update(zip((p.id for p in params), [*state, *(x[t] for x in xs), *consts]))
        for m in body.nodes:
            if m.id in values:
                continue
            inputs = [values[i] for i in m.inputs]
            if m.id not in computes:
                view = IMPLS[m.op](m, inputs, None, env)               # a view, made once per step
                if m.op is Op.RESHAPE and not np.shares_memory(view, inputs[0]):
                    # A reshape that must copy (of a transposed value): a copy each step, not once now.
                    if m.id not in copied:
                        copied[m.id] = buffer(m)
                    view = copied[m.id]
                    calls.append(functools.partial(np.copyto, view.reshape(inputs[0].shape), inputs[0]))
                values[m.id] = view
                continue
            if m.id in y_row:
                out = stacked[y_row[m.id]][t]
            elif m.id in carry_out and not m.results:
                out = turns[carry_out.index(m.id)][turn % 2]
            else:
                out = scratch[m.id]
            calls.append(prepare(m, inputs, out, env, bind) if m.op is Op.SCAN else bind(m, inputs, out, env, shared))
            values[m.id] = out
        for k, i in enumerate(y_out):
            if y_row.get(i) != k:
                calls.append(functools.partial(np.copyto, stacked[k][t], values[i]))
        state = []
        for k, i in enumerate(carry_out):
            if i in y_row or i in computes:
                state.append(values[i])
            else:
                calls.append(functools.partial(np.copyto, turns[k][turn % 2], values[i]))
                state.append(turns[k][turn % 2])
    calls += [functools.partial(np.copyto, f, v) for f, v in zip(final, state)]

    def run() -> None:
        for call in calls:
            call()

    return run
