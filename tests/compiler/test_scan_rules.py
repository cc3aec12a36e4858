"""The `scan` primitive on its own: both NumPy implementations (the reference and the planned loop)
against a Python loop, forward and reverse over a symbolic length; its VJP (a reverse scan, const
gradients summed after the loop) against torch in float64; the printer's nested body; the shape
rule and the IR checker refusing bodies that do not fit."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from dln.compiler import autodiff
from dln.compiler.emit import GraphBuilder
from dln.compiler.ir import DType, Graph, Op, TensorType
from dln.compiler.passes.verify import IRError, verify
from dln.compiler.printer import format_graph
from dln.compiler.symbolic import Sym
from dln.dsl.diagnostics import DlnError
from dln.runtime.interpreter import Executable, evaluate

R = np.random.default_rng(5)
N, M = 3, 4
F64 = DType.F64
T = Sym.var("T")


def _body() -> Graph:
    """h' = tanh(h @ W + x * a); y = h' * h (two carries' worth of reads, a matmul and an elementwise const)."""
    b = GraphBuilder("step.body")
    h = b.input("h", TensorType(F64, (N, M)), role="carry")
    x = b.input("x", TensorType(F64, (N, M)), role="x")
    w = b.input("w", TensorType(F64, (M, M)), role="const")
    a = b.input("a", TensorType(F64, (M,)), role="const")
    new = b.tanh(b.add(b.matmul(h, w), b.mul(x, a)))
    return b.finish([("h", new), ("y", b.mul(new, h))])


def _graph(reverse: bool) -> tuple[Graph, dict[str, int]]:
    b = GraphBuilder("outer")
    t = {"h0": b.input("h0", TensorType(F64, (N, M))), "xs": b.input("xs", TensorType(F64, (T, N, M))),
         "w": b.input("w", TensorType(F64, (M, M))), "a": b.input("a", TensorType(F64, (M,))),
         "dy": b.input("dy", TensorType(F64, (T, N, M))), "dh": b.input("dh", TensorType(F64, (N, M)))}
    (final,), (ys,) = b.scan(_body(), [t["h0"]], [t["xs"]], [t["w"], t["a"]], reverse=reverse)
    loss = b.add(b.sum(b.mul(ys, t["dy"])), b.sum(b.mul(final, t["dh"])))
    return b.finish([("final", final), ("ys", ys), ("loss", loss)]), {k: v.id for k, v in t.items()}


def _feeds(steps: int) -> dict[str, np.ndarray]:
    return {"h0": R.standard_normal((N, M)), "xs": R.standard_normal((steps, N, M)),
            "w": R.standard_normal((M, M)) * 0.5, "a": R.standard_normal(M),
            "dy": R.standard_normal((steps, N, M)), "dh": R.standard_normal((N, M))}


def _loop(f, reverse: bool, lib=np):
    h, ys = f["h0"], [None] * len(f["xs"])
    for t in (reversed(range(len(ys))) if reverse else range(len(ys))):
        new = lib.tanh(h @ f["w"] + f["xs"][t] * f["a"])
        ys[t], h = new * h, new
    return h, lib.stack(ys)


@pytest.mark.parametrize("reverse", [False, True])
def test_both_implementations_match_a_loop(reverse):
    graph, _ = _graph(reverse)
    exe = Executable(graph)
    for steps in (5, 1, 0):           # one graph, one plan per length; an empty loop returns the initial carry
        f = _feeds(steps)
        want_h, want_ys = _loop(f, reverse) if steps else (f["h0"], np.zeros((0, N, M)))
        for got in (evaluate(graph, f, {"T": steps}), exe.run(f, {"T": steps})):
            np.testing.assert_allclose(got["final"], want_h, rtol=1e-13, atol=1e-14)
            np.testing.assert_allclose(got["ys"], want_ys, rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("reverse", [False, True])
def test_vjp_matches_torch(reverse):
    graph, ids = _graph(reverse)
    wrt = ["h0", "xs", "w", "a"]
    full, grads, _ = autodiff.grad(graph, graph.output("loss").id, [ids[k] for k in wrt])
    full = full.with_outputs([(k, grads[ids[k]]) for k in wrt])
    backward = [n for n in full.nodes if n.op is Op.SCAN and n.attrs["body"].name.endswith(".vjp")]
    assert len(backward) == 1 and backward[0].attrs["reverse"] is not reverse
    assert sum(n.op is Op.MATMUL for n in backward[0].attrs["body"].nodes) == 1   # dh @ Wᵀ; dW after the loop
    f = _feeds(6)
    tf = {k: torch.tensor(v, requires_grad=k in wrt) for k, v in f.items()}
    h, ys = _loop(tf, reverse, torch)
    loss = (ys * tf["dy"]).sum() + (h * tf["dh"]).sum()
    want = dict(zip(wrt, torch.autograd.grad(loss, [tf[k] for k in wrt])))
    for got in (evaluate(full, f, {"T": 6}), Executable(full).run(f, {"T": 6})):
        for k in wrt:
            np.testing.assert_allclose(got[k], want[k].numpy(), rtol=1e-11, atol=1e-12, err_msg=k)


def test_printer_shows_the_body_inside_the_node():
    graph, _ = _graph(True)
    text = format_graph(graph)
    head = next(line for line in text.splitlines() if "= scan(" in line)
    assert head.startswith("  %") and "carries=1" in head and "reverse=true" in head and "length=T" in head
    assert head.rstrip().endswith("{")
    body = text[text.index("graph step.body {"):]
    assert '= input(name="h", role="carry")' in body and "= matmul(" in body and "return h=%" in body


def test_shape_rule_refuses_a_body_that_does_not_fit():
    b = GraphBuilder("outer")
    h0 = b.input("h0", TensorType(F64, (N, M + 1)))       # the body carries [N, M]
    xs = b.input("xs", TensorType(F64, (T, N, M)))
    w, a = b.input("w", TensorType(F64, (M, M))), b.input("a", TensorType(F64, (M,)))
    with pytest.raises(DlnError) as e:
        b.scan(_body(), [h0], [xs], [w, a])
    assert e.value.code == "E0201" and "operand 0" in str(e.value)
    with pytest.raises(DlnError) as e:
        b.scan(_body(), [b.input("h", TensorType(F64, (N, M)))], [xs], [w])   # a const missing
    assert e.value.code == "E0201"


def test_verify_catches_a_bad_body():
    graph, _ = _graph(False)
    verify(graph)
    scan = next(n for n in graph.nodes if n.op is Op.SCAN)
    body = scan.attrs["body"]
    inner = next(n for n in body.nodes if n.op is Op.MUL)      # x * a: not an output, so the scan still types
    broken = Graph(body.name, tuple(dataclasses.replace(n, type=TensorType(DType.F32, n.type.shape))
                                    if n.id == inner.id else n for n in body.nodes), body.outputs, body.constraints)
    nodes = tuple(dataclasses.replace(n, attrs=n.attrs.replace(body=broken)) if n.id == scan.id else n
                  for n in graph.nodes)
    with pytest.raises(IRError, match="has a bad body"):
        verify(Graph(graph.name, nodes, graph.outputs, graph.constraints))
