"""`model.as_torch()`: a torch.nn.Module whose forward and backward run dln's graphs."""

import numpy as np
import torch

import dln

SOURCE = """
model mlp() {
    input x: f64[B, 6]
    h = x -> linear(5) -> tanh
    output y = h -> linear(3)
}
"""


def test_forward_and_backward_match_torch_autograd(rng):
    model = dln.compile(SOURCE)
    module = model.as_torch()
    ref = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)).double()
    params = model.parameters()
    ref.load_state_dict({"0.weight": torch.from_numpy(params["h.weight"]), "0.bias": torch.from_numpy(params["h.bias"]),
                         "2.weight": torch.from_numpy(params["y.weight"]), "2.bias": torch.from_numpy(params["y.bias"])})
    x = torch.from_numpy(rng.standard_normal((7, 6))).requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    w = torch.from_numpy(rng.standard_normal((7, 3)))
    (module(x) * w).sum().backward()
    (ref(x_ref) * w).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), x_ref.grad.numpy(), rtol=1e-10)
    np.testing.assert_allclose(module.h__weight.grad.numpy(), ref[0].weight.grad.numpy(), rtol=1e-10)
    np.testing.assert_allclose(module.y__bias.grad.numpy(), ref[2].bias.grad.numpy(), rtol=1e-10)


def test_trains_with_a_torch_optimizer(rng):
    module = dln.compile(SOURCE).as_torch()
    opt = torch.optim.SGD(module.parameters(), lr=0.1)
    x = torch.from_numpy(rng.standard_normal((32, 6)))
    target = torch.from_numpy(rng.standard_normal((32, 3)))
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(module(x), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]
