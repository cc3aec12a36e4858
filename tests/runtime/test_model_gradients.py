"""A whole small model's gradients against central finite differences (float64)."""

from __future__ import annotations

import numpy as np

import dln

SOURCE = """
model mlp() {
    input x: f64[B, 5]
    input y: i64[B]
    input r: f64[B, 3]
    h = x -> linear(7) -> tanh -> linear(4) -> tanh
    logits = h -> linear(3)
    loss = cross_entropy(logits, y) + 0.5 * mse(tanh(logits), r)
    output logits
}
"""

EPS = 1e-6


def test_mlp_gradients_match_finite_differences():
    rng = np.random.default_rng(7)
    model = dln.compile(SOURCE, seed=3)
    feeds = {"x": rng.standard_normal((6, 5)), "y": rng.integers(0, 3, 6), "r": rng.standard_normal((6, 3))}
    params = model.parameters()
    assert set(params) == {"h.linear_0.weight", "h.linear_0.bias", "h.linear_1.weight", "h.linear_1.bias",
                           "logits.weight", "logits.bias"}
    assert all(p.dtype == np.float64 for p in params.values())
    loss, grads = model.value_and_grad("loss", **feeds)

    def loss_at(changed: dict[str, np.ndarray]) -> float:
        model.load_state_dict({**params, **changed})
        return float(model.run(["loss"], **feeds)["loss"])

    assert abs(loss_at({}) - float(loss)) < 1e-14
    for name, value in params.items():
        fd = np.zeros_like(value)
        for i in np.ndindex(value.shape):
            hi, lo = value.copy(), value.copy()
            hi[i] += EPS
            lo[i] -= EPS
            fd[i] = (loss_at({name: hi}) - loss_at({name: lo})) / (2 * EPS)
        assert np.abs(grads[name]).max() > 1e-3, name  # a gradient worth checking
        np.testing.assert_allclose(grads[name], fd, rtol=1e-6, atol=1e-8, err_msg=name)
