"""`scan` on the NumPy backend.

`reference` is the definition: evaluate the body once per step.  `prepare`
is what the planned interpreter runs: the body planned once (its buffers
allocated once, its consts bound by reference, its views made once), then
per step one copy of each x into the body's input buffer, the body's
prebound calls, and one copy of each y into its row of the stacked result.
For an LSTM that is one matrix product per step, with all four gates in it.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from dln.compiler.ir import Node
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
            executable: Callable) -> Callable[[], None]:
    """One prebound step running the whole loop into `outs` (final carries, stacked ys)."""
    body = n.attrs["body"]
    carries, xs, consts = _parts(n, args)
    n_carry = len(carries)
    params = [p.attrs["name"] for p in body.inputs]
    const_names = params[len(carries) + len(xs):]
    plan = executable(body, dict(zip(const_names, consts)), env)
    feed = dict(plan.feed_buffers)
    carry_in = [feed[name] for name in params[:n_carry]]
    x_in = [feed[name] for name in params[n_carry:n_carry + len(xs)]]
    produced = [a for _, a in plan.outputs]
    carry_out, y_out = produced[:n_carry], produced[n_carry:]
    # A new carry that is another carry's buffer (a swap) must not be overwritten before it is read.
    staged = any(np.shares_memory(o, c) for o in carry_out for c in carry_in if o is not c)
    body_steps = plan.steps
    final, stacked = outs[:n_carry], outs[n_carry:]
    order = _steps(n, env)

    def run() -> None:
        for buf, c in zip(carry_in, carries):
            np.copyto(buf, c)
        for t in order:
            for buf, x in zip(x_in, xs):
                np.copyto(buf, x[t])
            for step in body_steps:
                step()
            for y, o in zip(stacked, y_out):
                np.copyto(y[t], o)
            new = [o.copy() for o in carry_out] if staged else carry_out
            for buf, o in zip(carry_in, new):
                if buf is not o:
                    np.copyto(buf, o)
        for f, buf in zip(final, carry_in):
            np.copyto(f, buf)

    return run
