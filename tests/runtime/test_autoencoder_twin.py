"""examples/autoencoder_digits.dln, the denoising autoencoder, against its PyTorch twin
(examples/torch_twins.py, `dae`): the same settings, parameter names and gradients.  The noise is
drawn inside the model, by each side's own generator, so gradients are compared without it
(`noise = 0`); what the noise does is checked on dln's side alone."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

import dln
from conftest import EXAMPLES

EXAMPLE = str(EXAMPLES / "autoencoder_digits.dln")
LOSS_RTOL = 2e-6
GRAD_ATOL = 1e-6


def test_the_twin_trains_as_the_example_says(twins):
    assert twins.settings_of("dae") == twins.SETTINGS["dae"]


def test_gradients_match_torch(twins):
    model = dln.compile(EXAMPLE, noise=0.0)
    net = twins.make_dense_autoencoder(noise=0.0)
    assert set(model.state_dict()) == set(net.state_dict()), "the twin's names differ from the example's"
    net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in model.state_dict().items()})
    x = twins.digits()["x"][:64]
    value, grads = model.value_and_grad("loss", x=x)
    t = torch.from_numpy(x)
    ref = F.binary_cross_entropy(net(t), t)
    ref.backward()
    assert abs(float(value) - ref.item()) <= LOSS_RTOL * ref.item()
    for k, p in net.named_parameters():
        np.testing.assert_allclose(np.asarray(grads[k]), p.grad.numpy(), rtol=0, atol=GRAD_ATOL, err_msg=k)


def test_the_noise_is_drawn_in_evaluation_mode_too(twins):
    """randn_like draws in both modes (only dropout switches off): validation measures denoising."""
    model = dln.compile(EXAMPLE)
    x = twins.digits()["x"][:256]
    first, second = (model.run("noisy", x=x)["noisy"] for _ in range(2))
    assert not np.array_equal(first, second)
    assert abs(float(np.std(first - x)) - 0.2) < 0.01
