"""The dense and recurrent examples against their PyTorch twins (examples/torch_twins.py), which
examples/README.md trains for its comparison: mlp_digits, rnn_digits, iris, gan_digits, vae_digits.

dln's initial weights go into the twin by name; both then take the trainer's own first batches of
the real data (its split, its first epoch's order) through the trainer's step (`Trainer._step`, as
`fit` calls it) and through torch.optim.  Losses must agree at every step and the weights after
the last, in float32.  iris runs AdamW under `cosine(warmup = 10)` with label smoothing, so the
rate schedule and the smoothing are checked too; the MLP runs without dropout (`p = 0`), whose
masks the two sides draw differently; the VAE's noise is drawn differently too, so its gradients
are checked on a fixed code instead (`randn_like` replaced by the same noise on both sides).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

import dln
from dln.runtime.schedules import Schedule
from dln.runtime.train import Trainer, find_train, recipe_for
from _twins import assert_weights_match, gan_steps_both

ROOT = Path(__file__).resolve().parents[2]
STEPS = 6
LOSS_RTOL = 2e-6    # measured: within 2e-7 relative
PARAM_ATOL = 5e-6   # measured: within 8e-8 (rates of 1e-3 to 1e-2 move weights far more in 6 steps)


def _arrays(twins, name: str) -> dict:
    return twins.iris() if name == "iris" else twins.digits()


@pytest.mark.parametrize("name", ["mlp", "rnn", "iris", "gan", "vae"])
def test_twins_train_as_the_examples_say(twins, name):
    assert twins.settings_of(name) == twins.SETTINGS[name]


@pytest.mark.parametrize("name", ["mlp", "rnn", "iris"])
def test_classifier_steps_match_torch(tmp_path: Path, twins, name):
    hparams = {"p": 0.0} if name == "mlp" else {}
    model = dln.compile(str(ROOT / "examples" / twins.FILES[name]), seed=0, **hparams)
    recipe = recipe_for(model, find_train(model.program))
    s = twins.SETTINGS[name]
    net = twins.MAKERS[name](**hparams)
    initial = model.state_dict()
    assert set(initial) == set(net.state_dict()), "the twin's names differ from the example's"
    net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in initial.items()})
    net.train()
    opt = twins.make_optimizer(net, s)

    train, _ = twins.split(_arrays(twins, name), s["validate"], s["seed"])
    n = len(train["y"])
    total = math.ceil(n / s["batch"]) * s["epochs"]   # what the cosine schedule decays over
    trainer = Trainer(model, recipe, tmp_path, log=lambda line: None, progress=False)
    schedules = [Schedule(recipe.schedule, o.optimizer.lr, total) for o in recipe.objectives]
    rates = twins.step_rates(s, total)
    ours, theirs = [], []
    for idx in twins.epoch_batches(n, s["batch"], s["seed"], 0)[:STEPS]:
        x, y = train["x"][idx], train["y"][idx]
        ours.append(trainer._step({"x": x, "y": y}, schedules, 0)["loss"])
        for group in opt.param_groups:
            group["lr"] = next(rates)
        opt.zero_grad()
        loss = twins._losses(name, net, torch.from_numpy(x), torch.from_numpy(y))["loss"]
        loss.backward()
        opt.step()
        theirs.append(loss.item())

    np.testing.assert_allclose(ours, theirs, rtol=LOSS_RTOL, atol=0)
    assert np.ptp(theirs) > 1000 * LOSS_RTOL * max(theirs), "training did not move"
    after = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    for k, value in model.state_dict().items():
        np.testing.assert_allclose(np.asarray(value), after[k], rtol=0, atol=PARAM_ATOL, err_msg=k)
        assert not np.array_equal(after[k], initial[k]), f"{k} did not move"


def test_gan_steps_match_torch(tmp_path: Path, twins):
    """D's objective then G's on each batch, with the noise the trainer draws for `noise = randn`."""
    model = dln.compile(str(ROOT / "examples" / twins.FILES["gan"]), seed=0)
    recipe = recipe_for(model, find_train(model.program))
    net = twins.make_gan()
    net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in model.state_dict().items()})
    trainer = Trainer(model, recipe, tmp_path, log=lambda line: None, progress=False)
    schedules = [Schedule(recipe.schedule, o.optimizer.lr, STEPS) for o in recipe.objectives]
    ours, theirs = gan_steps_both(trainer, schedules, twins, net, STEPS, seed=3)
    np.testing.assert_allclose(ours, theirs, rtol=LOSS_RTOL, atol=0)
    assert_weights_match(model, net, PARAM_ATOL)


def test_vae_gradients_match_torch(twins):
    """The VAE's loss and every gradient, with the reparameterization noise fixed on both sides: the
    example's `randn_like(mu)` becomes an input here (the same source otherwise)."""
    source = (ROOT / "examples" / "vae_digits.dln").read_text()
    assert source.count("randn_like(mu)") == 1
    source = source.replace("input x: f32[B, d]", "input x: f32[B, d]\n    input eps: f32[B, z]")
    model = dln.compile(source.replace("randn_like(mu)", "eps"), seed=0)
    net = twins.make_vae()
    net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in model.state_dict().items()})
    x = twins.digits()["x"][:61]
    eps = np.random.default_rng(5).standard_normal((61, 8)).astype(np.float32)
    value, grads = model.value_and_grad("loss", x=x, eps=eps)
    t = torch.from_numpy(x)
    loss = twins.vae_loss(t, *net(t, noise=torch.from_numpy(eps)))
    loss.backward()
    assert float(value) == pytest.approx(loss.item(), rel=LOSS_RTOL)
    for k, p in net.named_parameters():
        np.testing.assert_allclose(np.asarray(grads[k]), p.grad.numpy(), rtol=1e-5, atol=1e-6, err_msg=k)
