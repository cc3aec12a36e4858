"""Merged products (dln.compiler.passes.horizontal) at run time: the GAN's and the VAE's merged steps
against their PyTorch twins (examples/torch_twins.py) on the NumPy backend, made to merge as the Triton
backend does; and the Triton backend's merged kernels, under Triton's interpreter, against the NumPy
backend's unmerged graph."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

import dln
from dln.compiler.ir import Op
from dln.runtime import api, optim
from dln.runtime.schedules import Schedule
from dln.runtime.train import Trainer, find_train, recipe_for
from _twins import assert_weights_match, gan_steps_both

ROOT = Path(__file__).resolve().parents[2]
STEPS = 4
LOSS_RTOL = 2e-6    # as tests/runtime/test_dense_twins.py: float32 on both sides
PARAM_ATOL = 5e-6


@pytest.fixture
def numpy_merges(monkeypatch):
    """The NumPy backend merging products, as the Triton backend does (it does not by default)."""
    merges = {"numpy": True, "triton": True}
    monkeypatch.setattr(optim, "MERGES_PRODUCTS", merges)
    monkeypatch.setattr(api, "MERGES_PRODUCTS", merges)


def _contractions(graph) -> int:
    return sum(n.op is Op.MATMUL for n in graph.nodes)


def test_merged_gan_steps_match_torch(tmp_path: Path, twins, numpy_merges):
    """D's objective (D(real) and D(detach(fake)) merged: one product per layer forward, one weight
    gradient each) then G's, on the trainer's batches and noise, against torch.optim."""
    model = dln.compile(str(ROOT / "examples" / twins.FILES["gan"]), seed=0)
    recipe = recipe_for(model, find_train(model.program))
    trainer = Trainer(model, recipe, tmp_path, log=lambda line: None, progress=False)
    d_step, g_step = trainer.steps
    # d_loss: G's 2 products, D's 2 merged (not 4); backward: D's 2 weight gradients and 1 input gradient
    # (the first layer's input is data): 7 instead of 12.  g_loss reads D once: nothing to merge.
    assert (_contractions(d_step.graph), _contractions(g_step.graph)) == (7, 9)
    assert any(n.op is Op.CONCAT and n.name.startswith("D.") for n in d_step.graph.nodes)
    net = twins.make_gan()
    initial = {k: np.array(v) for k, v in model.state_dict().items()}
    net.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in initial.items()})
    schedules = [Schedule(recipe.schedule, o.optimizer.lr, STEPS) for o in recipe.objectives]
    ours, theirs = gan_steps_both(trainer, schedules, twins, net, STEPS, seed=7, rows=53)  # not 64 rows
    np.testing.assert_allclose(ours, theirs, rtol=LOSS_RTOL, atol=0)
    assert_weights_match(model, net, PARAM_ATOL)
    for k, value in model.state_dict().items():
        assert not np.array_equal(np.asarray(value), initial[k]), f"{k} did not move"


def test_merged_vae_gradients_match_torch(twins, numpy_merges):
    """mu and logvar as one product of width 16: the loss and every gradient, with the noise fixed on both
    sides (`randn_like(mu)` made an input, as tests/runtime/test_dense_twins.py does)."""
    source = (ROOT / "examples" / "vae_digits.dln").read_text()
    assert source.count("randn_like(mu)") == 1
    source = source.replace("input x: f32[B, d]", "input x: f32[B, d]\n    input eps: f32[B, z]")
    model = dln.compile(source.replace("randn_like(mu)", "eps"), seed=0)
    net = twins.make_vae()
    net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in model.state_dict().items()})
    x = twins.digits()["x"][:59]
    eps = np.random.default_rng(5).standard_normal((59, 8)).astype(np.float32)
    value, grads = model.value_and_grad("loss", x=x, eps=eps)
    graph, _ = model._prepared[("grad", "loss")]
    assert any(n.op is Op.MATMUL and n.name == "mu+logvar" for n in graph.nodes)
    t = torch.from_numpy(x)
    loss = twins.vae_loss(t, *net(t, noise=torch.from_numpy(eps)))
    loss.backward()
    assert float(value) == pytest.approx(loss.item(), rel=LOSS_RTOL)
    for k, p in net.named_parameters():
        np.testing.assert_allclose(np.asarray(grads[k]), p.grad.numpy(), rtol=1e-5, atol=1e-6, err_msg=k)


SMALL = """
model enc(d: int = 7) {
    input x: f32[B, d]
    input y: f32[B, d]
    E      = shared(d = d)
    h      = x -> linear(12) -> relu
    mu     = linear(h, 3)
    logvar = linear(h, 5)
    loss   = mean(mu ** 2) + mean(exp(0.5 * logvar)) + mean(E(x) * E(y))
    output mu
}

model shared(d: int = 7) {
    input image: f32[B, d]
    output score = image -> linear(10) -> tanh
}
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton")
def test_triton_merged_kernels_match_numpy():
    """The Triton backend merges (mu with logvar; E(x) with E(y)); NumPy does not: values and gradients
    agree, so the merged kernels compute what the unmerged graph does."""
    rng = np.random.default_rng(11)
    x, y = (rng.standard_normal((9, 7)).astype(np.float32) for _ in range(2))
    ours = dln.compile(SMALL, model="enc", backend="triton", seed=0)
    reference = dln.compile(SMALL, model="enc", backend="numpy", seed=0)
    value, grads = ours.value_and_grad("loss", x=x, y=y)
    want, want_grads = reference.value_and_grad("loss", x=x, y=y)
    merged, _ = ours._prepared[("grad", "loss")]
    plain, _ = reference._prepared[("grad", "loss")]
    assert _contractions(merged) < _contractions(plain)
    assert {n.name for n in merged.nodes if n.op is Op.MATMUL} >= {"mu+logvar", "E.score"}
    assert float(value) == pytest.approx(float(want), rel=1e-5)
    assert set(grads) == set(want_grads)
    for k in want_grads:
        np.testing.assert_allclose(np.asarray(grads[k]), np.asarray(want_grads[k]), rtol=1e-4, atol=1e-6,
                                   err_msg=k)


def test_merged_kernels_are_named_after_both_products():
    """The VAE's step as the Triton backend plans it: the merged product's kernel and its weight gradient say
    `mu_logvar`, the update kernel names both parameters; unmerged, no kernel does."""
    from dln.compiler import pipeline
    from dln.kernels.module import generate_module
    from dln.kernels.report import kernel_costs
    from dln.runtime.train import default_objective

    model = dln.compile(str(ROOT / "examples" / "vae_digits.dln"), seed=0)
    names = {}
    for merge in (False, True):
        step = pipeline.train_step(model.train_spec, default_objective(model), merge=merge)
        names[merge] = [c.name for c in kernel_costs(generate_module(step.graph, step.donate).plan, {"B": 32})]
    assert not any("mu_logvar" in n for n in names[False])
    assert any(n.endswith("_mu_logvar_matmul") and "grad" not in n for n in names[True]), names[True]
    assert any(n.endswith("_grad_mu_logvar_matmul") for n in names[True]), names[True]
    assert any(n.endswith("_update_mu_weight_and_logvar_weight") for n in names[True]), names[True]
