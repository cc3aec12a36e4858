"""`model.as_torch()` shares the model's parameters: one set of weights, two ways to run them.

A torch optimizer stepping the module changes what `model(...)` computes, and
`model.load_state_dict(...)` or training through dln changes what the module
computes, on both backends.  PyTorch (`torch.nn.Linear` with the same weights)
is the oracle for the values.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import dln
from dln.runtime.train import Trainer, recipe_for

SOURCE = """
model reg() {
    input x: f32[B, 5]
    input t: f32[B, 3]
    y = x -> linear(3)
    loss = mean((y - t) * (y - t))
    output y
}

train reg {
    data = dataset("iris")
    inputs = { x = "randn", t = "randn" }
    batch = 10
    epochs = 1
    optimizer = sgd(lr = 0.1)
    minimize loss
}
"""

BACKENDS = ["numpy", "triton"]


def reference(model: dln.Model) -> torch.nn.Linear:
    """torch.nn.Linear holding a copy of the model's current weights."""
    params = model.parameters()
    layer = torch.nn.Linear(5, 3)
    layer.load_state_dict({"weight": torch.from_numpy(params["y.weight"]), "bias": torch.from_numpy(params["y.bias"])})
    return layer


def forward(model: dln.Model, x: np.ndarray) -> np.ndarray:
    return np.asarray(model(x=x)["y"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_torch_optimizer_step_changes_the_models_weights(backend, rng):
    model = dln.compile(SOURCE, backend=backend)
    module = model.as_torch()
    x = rng.standard_normal((7, 5)).astype(np.float32)
    t = torch.from_numpy(rng.standard_normal((7, 3)).astype(np.float32))
    before = model.parameters()
    opt = torch.optim.SGD(module.parameters(), lr=0.5)
    loss = torch.nn.functional.mse_loss(module(torch.from_numpy(x)), t)
    loss.backward()
    opt.step()
    after = model.parameters()
    assert not np.allclose(after["y.weight"], before["y.weight"])
    np.testing.assert_array_equal(after["y.weight"], module.y__weight.detach().numpy())
    np.testing.assert_array_equal(after["y.bias"], module.y__bias.detach().numpy())
    expected = reference(model)(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(forward(model, x), expected, rtol=1e-5, atol=1e-6)
    # and the module computes with the same weights as the model
    np.testing.assert_allclose(module(torch.from_numpy(x)).detach().numpy(), forward(model, x), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
def test_load_state_dict_on_the_model_reaches_the_module(backend, rng):
    model = dln.compile(SOURCE, backend=backend)
    module = model.as_torch()
    torch.manual_seed(5)
    layer = torch.nn.Linear(5, 3)
    model.load_state_dict({"y.weight": layer.weight, "y.bias": layer.bias})
    x = torch.from_numpy(rng.standard_normal((4, 5)).astype(np.float32))
    np.testing.assert_array_equal(module.y__weight.detach().numpy(), layer.weight.detach().numpy())
    np.testing.assert_allclose(module(x).detach().numpy(), layer(x).detach().numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_training_through_dln_reaches_the_module(backend, rng, tmp_path: Path):
    model = dln.compile(SOURCE, backend=backend)
    module = model.as_torch()
    before = module.y__weight.detach().clone()
    trainer = Trainer(model, recipe_for(model), tmp_path, log=lambda s: None, progress=False)
    trainer.fit()
    trained = model.parameters()
    assert not np.allclose(trained["y.weight"], before.numpy())
    np.testing.assert_array_equal(module.y__weight.detach().numpy(), trained["y.weight"])
    np.testing.assert_array_equal(module.y__bias.detach().numpy(), trained["y.bias"])
    x = torch.from_numpy(rng.standard_normal((4, 5)).astype(np.float32))
    np.testing.assert_allclose(module(x).detach().numpy(), reference(model)(x).detach().numpy(), rtol=1e-5, atol=1e-6)


def test_the_module_and_the_model_share_memory_on_numpy():
    model = dln.compile(SOURCE, backend="numpy")
    module = model.as_torch()
    for name, value in model._params.items():
        param = module.get_parameter(name.replace(".", "__"))
        assert np.shares_memory(param.detach().numpy(), value)
    # two modules of one model share the weights too
    other = model.as_torch()
    with torch.no_grad():
        other.y__bias.fill_(2.5)
    np.testing.assert_array_equal(module.y__bias.detach().numpy(), np.full(3, 2.5, np.float32))
