"""Mixed precision on the Triton backend (under the interpreter, TRITON_INTERPRET=1) against the NumPy
backend: the same autocast graphs, so the same values up to where the kernels round differently (a
product stored before its bias add is rounded once more than the NumPy backend's, which adds the bias
to the float32 product as torch does; fused into the product's epilogue, the add rounds once).

Each model takes a few SGD steps with momentum on both backends (SGD, not Adam: Adam divides by the
gradient's own size, so a gradient near 0 whose last bit differs moves its weight by the full rate).
Measured (updates of up to 0.05 a step): gradients within 0.75% of the largest under bf16 (two units in
its last place) and 0.14% under f16; losses within 2.4e-4 and 9e-6 relative; weights within 1.5e-4 and
4e-6 after three steps.  The 16-mixed conv net found two bugs on the way: the interpreter's truncation
(below) and a multi-tensor update that read a second parameter's gradient through the first one's
reshapes (`offs % 5`), which the autocast pass now avoids by casting parameters before their views.
Before the interpreter was made
to round float32 to bf16 to nearest (it truncates; dln.runtime.triton_interpreter), the MLP's bf16
gradients were 16% off.
"""

from __future__ import annotations

import numpy as np
import pytest

import dln

MLP = """
model mlp() {
    input x: f32[B, 64]
    input y: i64[B]
    logits = x -> linear(37) -> relu -> linear(10)
    loss = cross_entropy(logits, y)
    output logits
}
"""
CONV = """
model conv() {
    input images: f32[B, 1, 8, 8]
    input y: i64[B]
    h = conv2d(images, 5, 3, padding = 1) -> relu -> conv2d(7, 3, stride = 2) -> relu
    logits = h -> flatten -> linear(10)
    loss = cross_entropy(logits, y)
    output logits
}
"""
# Relative to the largest gradient; bf16 has 8 bits of precision, f16 11.  No max pooling in CONV: the
# Triton plan stores a convolution whose bias add (and pooling) it fuses into the next kernel, rounding it
# before the add, one unit in the last place from the NumPy backend's value; where bf16 makes two values
# of a window tie, that unit sends the window's gradient to another pixel.
GRAD_TOL = {"bf16-mixed": 4 * 2 ** -8, "16-mixed": 4 * 2 ** -11}
LOSS_RTOL = {"bf16-mixed": 1e-3, "16-mixed": 5e-5}
WEIGHT_ATOL = {"bf16-mixed": 5e-4, "16-mixed": 2e-5}


def _data(shape):
    rng = np.random.default_rng(5)
    x = rng.uniform(0, 1, (7, *shape)).astype(np.float32)
    return x, rng.integers(0, 10, 7)


def _run(source, backend, precision, key, x, y, steps=3):
    model = dln.compile(source, backend=backend, precision=precision, seed=3)
    _, grads = model.value_and_grad("loss", **{key: x, "y": y})
    opt = dln.optimizer(model, "sgd", lr=0.05, momentum=0.9)
    losses = [opt.step(**{key: x, "y": y}) for _ in range(steps)]
    return grads, losses, model.parameters(), opt.state_dict()


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
@pytest.mark.parametrize("source, key, shape", [(MLP, "x", (64,)), (CONV, "images", (1, 8, 8))], ids=["mlp", "conv"])
def test_triton_matches_numpy_under_mixed_precision(source, key, shape, precision):
    x, y = _data(shape)
    want = _run(source, "numpy", precision, key, x, y)
    got = _run(source, "triton", precision, key, x, y)
    for name, g in want[0].items():
        scale = float(np.abs(g).max())
        np.testing.assert_allclose(got[0][name], g, rtol=0, atol=GRAD_TOL[precision] * scale, err_msg=name)
    np.testing.assert_allclose(got[1], want[1], rtol=LOSS_RTOL[precision])
    assert want[1][-1] < want[1][0], "training did not move"
    for name, p in want[2].items():
        assert got[2][name].dtype == np.float32
        np.testing.assert_allclose(got[2][name], p, rtol=0, atol=WEIGHT_ATOL[precision], err_msg=name)
    assert set(got[3]) == set(want[3])
    if precision == "16-mixed":   # the scaler's state, on the device, as the NumPy backend's
        for k in ("optim.loss.amp.scale", "optim.loss.amp.growth_tracker"):
            assert float(got[3][k]) == float(want[3][k]), k
