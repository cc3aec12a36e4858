"""The spine end to end: a small model's loss and gradients against torch."""

import numpy as np
import torch

import dln

SOURCE = """
model m() {
    input x: f64[B, 5]
    input y: i64[B]
    h = x -> linear(7) -> tanh
    logits = h -> linear(3)
    loss = cross_entropy(logits, y)
    output logits
}
"""


def test_loss_and_gradients_match_torch(rng):
    model = dln.compile(SOURCE)
    params = model.parameters()
    x, y = rng.standard_normal((6, 5)), rng.integers(0, 3, 6)
    loss, grads = model.value_and_grad("loss", x=x, y=y)

    t = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    h = torch.tanh(torch.tensor(x) @ t["h.weight"].T + t["h.bias"])
    logits = h @ t["logits.weight"].T + t["logits.bias"]
    ref = torch.nn.functional.cross_entropy(logits, torch.tensor(y))
    ref.backward()

    assert abs(float(loss) - ref.item()) < 1e-12
    for name in params:
        np.testing.assert_allclose(grads[name], t[name].grad.numpy(), rtol=1e-10, atol=1e-12)
    out = model(x=x)
    np.testing.assert_allclose(out["logits"], logits.detach().numpy(), rtol=1e-12)
