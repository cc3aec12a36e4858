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
from dln.kernels.module import generate_module
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


BLOCK = """
block mlp_block(x, dim: int) {
    return x -> linear(4 * dim) -> gelu -> linear(dim)
}
model gpt_block(vocab: int = 11, dim: int = 12, heads: int = 2, ctx: int = 8) {
    input tokens:  i64[B, T]
    input targets: i64[B, T]
    h = embedding(tokens, vocab, dim) + embedding(arange(T), ctx, dim, name = "pos")
    h = h + attention(layernorm(h), heads = heads, causal = true)
    h = h + mlp_block(layernorm(h), dim)
    logits = h -> layernorm -> linear(vocab, bias = false)
    loss   = cross_entropy(logits, targets)
    output logits
}
"""


def test_gpt_block_forward_plan_and_gradients(rng):
    """A GPT block's forward: each linear ends with its bias, GELU and residual add; the layer norms are
    kernels of their own; the only pointwise kernels left are the embeddings' sum and attention's head
    merge.  The whole block's gradients match the NumPy backend."""
    numpy_model = dln.compile(BLOCK, backend="numpy")
    kernels = generate_module(pipeline.forward_graph(numpy_model.train_spec, ["logits"])).kernels
    names = [k.name for k in kernels]
    assert [k.kind for k in kernels].count("layernorm") == 3
    assert [k.kind for k in kernels].count("pointwise") == 2
    assert any(name.endswith("out_linear_0_matmul_bias_erf") for name in names), names
    triton_model = dln.compile(BLOCK, backend="triton")
    triton_model.load_state_dict(numpy_model.parameters())
    tokens, targets = rng.integers(0, 11, (3, 7)), rng.integers(0, 11, (3, 7))
    l1, g1 = numpy_model.value_and_grad("loss", tokens=tokens, targets=targets)
    l2, g2 = triton_model.value_and_grad("loss", tokens=tokens, targets=targets)
    np.testing.assert_allclose(l2, l1, rtol=1e-5)
    for name, want in g1.items():
        np.testing.assert_allclose(g2[name], want, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(want).max()),
                                   err_msg=name)
