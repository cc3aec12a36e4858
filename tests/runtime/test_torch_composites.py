"""Every composite PyTorch runs with its own operators (runtime/torch_composites.py, what `dln bench`'s
eager and torch.compile baselines call) equals the composite's decomposition, run in torch too: float64,
odd sizes, every result, on the nodes real models make (attention self/cross/causal/masked, its
backward, smoothed cross-entropy, layer norm with and without affine, and their backwards)."""

from __future__ import annotations

import numpy as np
import pytest
import dln
from dln.compiler import pipeline
from dln.compiler.ir import Op
from dln.runtime.torch_composites import NATIVE
from dln.runtime.torch_graph import make_runner, random_inputs
from dln.runtime.train import default_objective

PROGRAMS = {
    "attention": """
        model m() {
            param x: f64[2, 5, 6] = zeros
            param mem: f64[2, 7, 6] = zeros
            input pad: bool[2, 7]
            input y: i64[2, 5]
            h = layernorm(x + attention(x, heads = 3, causal = true))
            h = h + attention(h, heads = 2, context = mem, mask = pad)
            output loss = cross_entropy(layernorm(h, affine = false), y, label_smoothing = 0.1)
        }""",
    "sdpa_float_mask": """
        model m() {
            param q: f64[3, 4, 5] = zeros
            param k: f64[3, 6, 5] = zeros
            param v: f64[3, 6, 2] = zeros
            param m: f64[4, 6] = zeros
            output loss = sum(scaled_dot_product_attention(q, k, v, mask = m) ** 2)
        }""",
}


def _step(source: str):
    model = dln.compile(source, backend="numpy")
    return pipeline.train_step(model.train_spec, default_objective(model)).graph


@pytest.mark.parametrize("program", list(PROGRAMS))
def test_native_equals_the_decomposition(program):
    """The training step run op by op in torch with PyTorch's operators for the composites equals the same
    step with every composite decomposed: the loss, every gradient-driven update, every output."""
    graph = _step(PROGRAMS[program])
    assert any(n.op is Op.COMPOSITE for n in graph.nodes)
    inputs = random_inputs(graph, {})
    inputs = {k: v.double() if v.is_floating_point() else v for k, v in inputs.items()}
    got = make_runner(graph, {})(inputs)
    want = make_runner(pipeline.lower(graph), {})(inputs)
    assert set(got) == set(want)
    for name in want:
        np.testing.assert_allclose(got[name].numpy(), want[name].numpy(), rtol=1e-9, atol=1e-12, err_msg=name)


def test_every_native_composite_is_reached():
    reached = {n.attrs["composite"] for src in PROGRAMS.values() for n in _step(src).nodes if n.op is Op.COMPOSITE}
    assert set(NATIVE) <= reached
