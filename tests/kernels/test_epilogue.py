"""A linear layer on a [B, T, D] input is a [B*T, D] product viewed back as [B, T, N]: its bias, activation
and residual add are that product's epilogue (compiler/fusion/domain.py, `Domain.splits_rows`), one matmul
kernel, under Triton's interpreter against the NumPy backend.  B and T are symbolic; B*T = 87 rows run in
three row blocks of 32, the last one masked."""

from __future__ import annotations

import numpy as np

import dln
from dln.compiler import pipeline
from dln.compiler.autodiff import grad
from dln.compiler.fusion import index as ix
from dln.compiler.fusion.domain import Domain
from dln.compiler.ir import Op
from dln.compiler.symbolic import Sym
from dln.kernels.report import computed_nodes

from .conftest import graph_inputs, run_both

SOURCE = """
model m() {
    input x: f32[B, T, 13]
    input cot: f32[B, T, 13]
    y = x + (x -> linear(13) -> gelu)
    loss = sum(y * cot)
    output y
}
"""
ENV = {"B": 3, "T": 29}


def _spec():
    return dln.compile(SOURCE, backend="numpy").train_spec


def _compare(graph, rng):
    expected, got, generated = run_both(graph, graph_inputs(graph, ENV, rng), ENV)
    for name, want in expected.items():
        np.testing.assert_allclose(got[name], want, rtol=1e-5, atol=1e-5, err_msg=name)
    return generated


def test_bias_gelu_and_residual_are_the_matmul_epilogue(rng):
    generated = _compare(pipeline.forward_graph(_spec(), ["y"]), rng)
    assert [k.kind for k in generated.kernels] == ["matmul"]
    (group,) = generated.plan.groups
    ops = {n.op for n in computed_nodes(generated.plan, group)}
    assert {Op.MATMUL, Op.ERF, Op.ADD} <= ops
    # y [B, T, 13] is stored from the tile at row m: offset m * 13 + n, no division left.
    assert "tl.store(" in generated.kernels[0].source and "// s_T" not in generated.kernels[0].source


def test_training_step_gradients_match(rng):
    """The backward's products take the GELU derivative and the residual's gradient as epilogues too."""
    spec = _spec()
    params = [p.node for p in spec.params]
    full, grads, _ = grad(spec.graph, spec.values["loss"], params)
    graph = pipeline.optimize(full.with_outputs([("y", spec.values["y"])]
                                                + [(p.name, grads[p.node]) for p in spec.params]))
    generated = _compare(graph, rng)
    assert all(k.kind != "pointwise" for k in generated.kernels)


def test_split_rows_index():
    """Rows of a [B*T, N] product domain, seen as [B, T, N], are m // T and m % T; other shapes have no
    place there."""
    b, t = Sym.var("B"), Sym.var("T")
    domain = Domain("matmul", (b * t, 5), (), 4)
    m, n = domain.vars()
    assert domain.canonical((b, t, 5)) == (ix.div(m, t), ix.mod(m, t), n)
    assert set(ix.linear(domain.canonical((b, t, 5)), (b, t, 5)).terms) == {ix.mul(m, 5), n}   # no division
    assert domain.canonical((b, t, 6)) is None
    assert domain.canonical((t, 5)) is None
    assert Domain("matmul", (2, b * t, 5), (), 4).canonical((2, b, t, 5)) is not None
    assert Domain("matmul", (2, b * t, 5), (), 4).canonical((3, b, t, 5)) is None
