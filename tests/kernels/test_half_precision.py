"""Models in bf16 and f16 on the Triton backend: math on half types is computed in fp32 and rounded
back (Triton's transcendentals take fp32 only, and its interpreter does no bf16 arithmetic at all),
so they run, match the NumPy backend within the type's precision, and compile ahead of time."""

import numpy as np
import pytest

import dln
from dln.compiler import pipeline
from dln.kernels.aot import compile_all
from dln.kernels.module import generate_module
from dln.runtime.train import default_objective

# Every kind of kernel: a matrix product with an epilogue, row reductions (softmax, log-softmax,
# cross-entropy), transcendentals and division, a gradient through all of them.
SOURCE = """
model half() {{
    input x: {t}[B, 7]
    input y: i64[B]
    param W: {t}[7, 5] = normal(0.0, 0.4)
    param b: {t}[5] = normal(0.0, 0.1)
    h = tanh(x @ W + b) * 2.0
    z = exp(h) / (sigmoid(h) + 1.0) + log1p(h * h) + sqrt(abs(h)) - h ** 3.0
    output loss = cross_entropy(h, y) + mean(z) + mean(softmax(h, -1) * h) - mean(log_softmax(h, -1))
}}
train half {{
    optimizer = sgd(lr = 0.1)
    minimize loss
}}
"""

# Relative precision of each type (torch.testing's defaults for bf16 and f16), widened by the few
# roundings the Triton kernels make that the NumPy backend (which computes bf16 in float32) does not.
TOLERANCE = {"bf16": 4 * 1.6e-2, "f16": 4 * 1e-3}


def _data(rows: int = 11):
    rng = np.random.default_rng(3)
    return rng.standard_normal((rows, 7)).astype(np.float32), rng.integers(0, 5, rows)


def _close(got, want, tol):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    scale = max(float(np.abs(want).max()), 1.0)
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale)


@pytest.mark.parametrize("t", ["bf16", "f16"])
def test_forward_and_gradient_match_the_numpy_backend(t):
    x, y = _data()
    source = SOURCE.format(t=t)
    reference = dln.compile(source, backend="numpy")
    triton = dln.compile(source, backend="triton")
    triton.load_state_dict(reference.parameters())
    _close(triton(x=x, y=y)["loss"], reference(x=x, y=y)["loss"], TOLERANCE[t])
    want_loss, want = reference.value_and_grad("loss", x=x, y=y)
    got_loss, got = triton.value_and_grad("loss", x=x, y=y)
    _close(got_loss, want_loss, TOLERANCE[t])
    for name in want:
        assert np.isfinite(got[name]).all()
        _close(got[name], want[name], TOLERANCE[t])


def test_bf16_values_are_rounded_to_bf16():
    """The kernels store bf16, not float32 in disguise: every value read back is a bf16 number."""
    x, y = _data()
    model = dln.compile(SOURCE.format(t="bf16"), backend="triton")
    _, grads = model.value_and_grad("loss", x=x, y=y)
    bits = grads["W"].astype(np.float32).view(np.uint32)
    assert (bits & 0xFFFF == 0).all()


@pytest.mark.parametrize("t", ["bf16", "f16"])
def test_the_training_step_compiles_ahead_of_time(t, tmp_path):
    model = dln.compile(SOURCE.format(t=t), backend="numpy")
    step = pipeline.train_step(model.train_spec, default_objective(model))
    generated = generate_module(step.graph, step.donate)
    module = tmp_path / "kernels.py"
    module.write_text(generated.source)
    results = compile_all(generated, str(module), ["sm_80", "sm_90"], str(tmp_path))
    names = {k.name for k in generated.kernels}
    for target in ("sm_80", "sm_90"):
        assert {r.name for r in results if r.target == target} == names
    assert all(r.spills == 0 and 0 < r.registers <= 255 for r in results)
