"""Layer norm's own kernels (kernels/layernorm.py) under Triton's interpreter, against the NumPy backend (the
composite's decomposition): odd feature counts (37: padded to 64; 129: padded to 256), row counts that are
not a multiple of the block (the GPU's blocks, so the backward's first stage has several programs and the
second sums their partial rows), with and without the affine weight and bias; the output and the gradients
of x, the weight and the bias."""

from __future__ import annotations

import numpy as np
import pytest

import dln
from dln.compiler import pipeline
from dln.compiler.autodiff import grad
from dln.kernels.module import generate_module

from .conftest import graph_inputs, run_both

SOURCE = """
model m() {{
    param x: {t}[5, 29, {n}] = zeros
    input cot: {t}[5, 29, {n}]
    y = layernorm(x, eps = 1e-3, affine = {affine})
    loss = sum(y * cot)
    output y
}}
"""


def _models(n: int, affine: bool, rng: np.random.Generator, t: str = "f32"):
    source = SOURCE.format(n=n, affine=str(affine).lower(), t=t)
    numpy_model = dln.compile(source, backend="numpy")
    triton_model = dln.compile(source, backend="triton")
    params = {k: (rng.standard_normal(v.shape) * 2 + 0.5).astype(np.float32)
              for k, v in numpy_model.parameters().items()}
    numpy_model.load_state_dict(params)
    triton_model.load_state_dict(params)
    return numpy_model, triton_model


@pytest.mark.parametrize("n,affine", [(37, True), (129, True), (37, False)])
def test_forward_and_gradients_match_numpy(n, affine, rng, close):
    numpy_model, triton_model = _models(n, affine, rng)
    cot = rng.standard_normal((5, 29, n)).astype(np.float32)
    close(numpy_model.run(["y"])["y"], triton_model.run(["y"])["y"], rtol=1e-5, atol=1e-5)
    l1, g1 = numpy_model.value_and_grad("loss", cot=cot)
    l2, g2 = triton_model.value_and_grad("loss", cot=cot)
    close(l1, l2, rtol=1e-5, atol=1e-4)
    assert set(g1) == set(g2) == ({"x", "y.weight", "y.bias"} if affine else {"x"})
    for name in g1:
        close(g1[name], g2[name], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("t,tol", [("bf16", 4 * 1.6e-2), ("f16", 4 * 1e-3)])
def test_half_types_are_normalized_in_fp32(t, tol, rng):
    """Loaded, normalized in fp32, rounded once when stored: within the type's precision of the NumPy
    backend (which computes half types in float32 and rounds after each op)."""
    numpy_model, triton_model = _models(129, True, rng, t)
    cot = rng.standard_normal((5, 29, 129)).astype(np.float32)
    l1, g1 = numpy_model.value_and_grad("loss", cot=cot)
    l2, g2 = triton_model.value_and_grad("loss", cot=cot)
    for name in ("x", "y.weight", "y.bias"):
        want = np.asarray(g1[name], np.float64)
        np.testing.assert_allclose(np.asarray(g2[name], np.float64), want, rtol=tol,
                                   atol=tol * max(1.0, np.abs(want).max()), err_msg=name)


def _grad_graph(n: int, affine: bool):
    """y, and the gradients of sum(y * cot) with respect to x and the layer's parameters."""
    spec = dln.compile(SOURCE.format(n=n, affine=str(affine).lower(), t="f32"), backend="numpy").train_spec
    params = [p.node for p in spec.params]
    full, grads, _ = grad(spec.graph, spec.values["loss"], params)
    outs = [("y", spec.values["y"])] + [(f"grad:{p.name}", grads[p.node]) for p in spec.params]
    return pipeline.optimize(full.with_outputs(outs))


@pytest.mark.parametrize("n,affine", [(37, True), (129, True), (37, False)])
def test_gpu_blocks_with_several_programs_match_numpy(n, affine, rng):
    """The GPU's configuration: 145 rows in tiles of 64 (N = 37) or 16 (N = 129), so the backward's first
    stage runs 3 or 10 programs and the second stage sums as many partial rows."""
    graph = _grad_graph(n, affine)
    expected, got, generated = run_both(graph, graph_inputs(graph, {}, rng), {})
    assert any(k.kind == "layernorm" for k in generated.kernels)
    for name, want in expected.items():
        want = np.asarray(want, np.float64)
        np.testing.assert_allclose(got[name], want, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(want).max()),
                                   err_msg=name)


def test_the_kernels_are_used():
    """In training the forward is one kernel storing y and the row statistics; the backward a host function
    running dx with partial sums, then the column sums."""
    from dln.compiler import pipeline
    from dln.runtime.train import default_objective

    model = dln.compile(SOURCE.format(n=129, affine="true", t="f32"), backend="triton")
    step = pipeline.train_step(model.train_spec, default_objective(model))
    kernels = {k.kind: k for k in generate_module(step.graph).kernels}
    forward, host = kernels["layernorm"], kernels["layernorm_host"]
    assert "tl.arange(0, 256)" in forward.source and forward.source.count("tl.store(") == 3
    assert [k.kind for k in host.inner] == ["layernorm_vjp", "layernorm_sum"]
    assert "for start in range(pid * BLOCK_M" in host.inner[0].source
    assert not any(k.kind == "reduction" and "layernorm" in k.name for k in kernels.values())
    # Without a backward nothing reads the statistics: y alone is stored.
    (inference,) = generate_module(pipeline.forward_graph(model.train_spec, ["y"])).kernels
    assert inference.kind == "layernorm" and inference.source.count("tl.store(") == 1


def test_kept_even_when_its_operand_was_a_composite_decomposed_before_it():
    """The decompose pass renames the inputs of a node whose operand it replaced (here a cross-entropy,
    which the Triton target decomposes): the layer norm after it keeps its kernel all the same."""
    from dln.compiler.ir import Op
    from dln.kernels.kinds import kept_in

    model = dln.compile("""
        model m() {
            input x: f32[B, 5, 7]
            input y: i64[B, 5]
            output z = layernorm(cross_entropy(x, y, reduction = "none"))
        }""", backend="numpy")
    graph = pipeline.forward_graph(model.spec)
    lowered = pipeline.lower(graph, kept_in(graph))
    assert [n.attrs["composite"] for n in lowered.nodes if n.op is Op.COMPOSITE] == ["layernorm"]
