"""`batchnorm` against torch.nn.BatchNorm1d/2d, and the model state it keeps (running statistics):
updated by training steps, read in evaluation, saved, loaded, resumed, on both backends."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

import dln
from dln.dsl.diagnostics import DlnError

QUIET = {"progress": False, "log": lambda s: None}
# Irregular sizes: [B, C] (BatchNorm1d), [B, C, L] (BatchNorm1d), [B, C, H, W] (BatchNorm2d).
SHAPES = [(4, 3), (5, 5, 6), (3, 7, 4, 5)]


def _dims(shape: tuple[int, ...]) -> str:
    return ", ".join(["B", *map(str, shape[1:])])


def _source(shape: tuple[int, ...], args: str = "") -> str:
    return f"""
model m {{
    input x: f64[{_dims(shape)}]
    input t: f64[{_dims(shape)}]
    h = x -> batchnorm({args})
    loss = mse(h, t)
    output h
}}
"""


def _torch_bn(shape: tuple[int, ...], **kwargs) -> torch.nn.Module:
    kind = torch.nn.BatchNorm2d if len(shape) == 4 else torch.nn.BatchNorm1d
    return kind(shape[1], **kwargs).double()


def _randomize(bn: torch.nn.Module, rng: np.random.Generator) -> None:
    with torch.no_grad():
        bn.weight.copy_(torch.from_numpy(rng.uniform(0.5, 1.5, bn.weight.shape)))
        bn.bias.copy_(torch.from_numpy(rng.standard_normal(bn.bias.shape)))


def _assert_state(model: dln.Model, bn: torch.nn.Module, prefix: str = "h", atol: float = 1e-12) -> None:
    ours = model.state_dict()
    for name, value in bn.state_dict().items():
        np.testing.assert_allclose(ours[f"{prefix}.{name}"], value.numpy(), rtol=1e-12, atol=atol, err_msg=name)


def _load(model: dln.Model, bn: torch.nn.Module, prefix: str = "h") -> None:
    model.load_state_dict({f"{prefix}.{k}": v for k, v in bn.state_dict().items()})


@pytest.mark.parametrize("shape", SHAPES)
def test_training_steps_match_torch(shape):
    """Forward, gradients of the input, weight and bias, and the running statistics after several SGD
    steps; then evaluation with the running statistics."""
    rng = np.random.default_rng(len(shape))
    model = dln.compile(_source(shape), backend="numpy")
    module = model.as_torch()
    bn = _torch_bn(shape)
    _randomize(bn, rng)
    _load(model, bn)
    assert set(model.state_dict()) == {f"h.{k}" for k in bn.state_dict()}
    for step in range(4):
        x, t = rng.standard_normal(shape) * 3 + 1, rng.standard_normal(shape)
        xs = torch.tensor(x, requires_grad=True)
        loss = torch.nn.functional.mse_loss(bn(xs), torch.from_numpy(t))
        loss.backward()
        ours, grads = model.value_and_grad("loss", x=x, t=t)
        np.testing.assert_allclose(ours, loss.item(), rtol=1e-12)
        for leaf in ("weight", "bias"):
            np.testing.assert_allclose(grads[f"h.{leaf}"], getattr(bn, leaf).grad.numpy(), rtol=1e-10, atol=1e-12)
        _assert_state(model, bn)
        # The torch module over the model: its forward updates the statistics too, and gives input gradients.
        before = model.state_dict()
        module.train()
        xm = torch.tensor(x, requires_grad=True)
        out = module(x=xm, t=torch.from_numpy(t))
        out.backward(torch.from_numpy(t))
        bn_out = torch.nn.functional.batch_norm(xs.detach().requires_grad_(), None, None, bn.weight, bn.bias, True)
        np.testing.assert_allclose(out.detach().numpy(), bn_out.detach().numpy(), rtol=1e-10, atol=1e-12)
        xs2 = torch.tensor(x, requires_grad=True)
        torch.nn.functional.batch_norm(xs2, None, None, bn.weight.detach(), bn.bias.detach(), True).backward(
            torch.from_numpy(t))
        np.testing.assert_allclose(xm.grad.numpy(), xs2.grad.numpy(), rtol=1e-10, atol=1e-12)
        assert model.buffers()["h.num_batches_tracked"] == before["h.num_batches_tracked"] + 1
        with torch.no_grad():    # an SGD step on torch's side; dln takes the same weights
            for leaf in ("weight", "bias"):
                getattr(bn, leaf).sub_(0.1 * getattr(bn, leaf).grad)
                getattr(bn, leaf).grad = None
        model.load_state_dict({**before, "h.weight": bn.weight.detach().numpy(), "h.bias": bn.bias.detach().numpy()})
    assert int(model.buffers()["h.num_batches_tracked"]) == 4
    bn.eval()
    x = rng.standard_normal((2,) + shape[1:])
    np.testing.assert_allclose(model(x=x)["h"], bn(torch.from_numpy(x)).detach().numpy(), rtol=1e-10, atol=1e-12)
    module.eval()
    np.testing.assert_allclose(module(x=torch.from_numpy(x)).detach().numpy(),
                               bn(torch.from_numpy(x)).detach().numpy(), rtol=1e-10, atol=1e-12)
