"""The half that the char-LM twin tests share: dln's initial weights put into a twin, both sides
stepped on the same batches of text windows, and the checks that the losses agree and that training
moved.  The twins themselves (examples/torch_twins.py) are tests/conftest.py's `twins` fixture."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]


def load_initial(net: torch.nn.Module, model) -> dict:
    """dln's initial weights, loaded into the twin by name; returned, to compare with the last."""
    initial = model.state_dict()
    assert set(initial) == set(net.state_dict()), "the twin's names differ from the example's"
    net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in initial.items()})
    return initial


def first_batches(twins: ModuleType, name: str, settings: dict, steps: int) -> tuple[dict, list]:
    """The trainer's training split of the text windows and the first `steps` batches of its first epoch."""
    train, val = twins.split(twins.text_windows(name), settings["validate"], settings["seed"])
    assert len(val["x"]) > 0 and train["x"].shape[1] == 64
    return train, twins.epoch_batches(len(train["x"]), settings["batch"], settings["seed"], 0)[:steps]


def step_both(trainer, schedules: list, net: torch.nn.Module, opt: torch.optim.Optimizer, train: dict,
              batches: list, clip: float, rates: Iterator[float] | None = None) -> tuple[list, list, int]:
    """Each batch through the trainer's step and through the twin (cross-entropy at every position,
    `clip_grad_norm_`, `opt` at the next of `rates` where given): both losses, and how many of the
    twin's steps clipped."""
    ours, theirs, clipped = [], [], 0
    for idx in batches:
        tokens, targets = train["x"][idx], train["y"][idx]
        ours.append(trainer._step({"tokens": tokens, "targets": targets}, schedules, 0)["loss"])
        if rates is not None:
            for group in opt.param_groups:
                group["lr"] = next(rates)
        opt.zero_grad()
        logits = net(torch.from_numpy(tokens))
        loss = F.cross_entropy(logits.flatten(0, 1), torch.from_numpy(targets).flatten())
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
        clipped += int(norm > clip)
        opt.step()
        theirs.append(loss.item())
    return ours, theirs, clipped


def assert_losses_agree(ours: list, theirs: list, clipped: int, rtol: float) -> None:
    np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=0)
    assert np.ptp(theirs) > 1000 * rtol * max(theirs), "training did not move"
    assert clipped >= 2, f"{clipped} steps clipped their gradients: the clip is hardly tested"


def gan_steps_both(trainer, schedules: list, twins: ModuleType, net: torch.nn.Module, steps: int,
                   seed: int, rows: int | None = None) -> tuple[list, list]:
    """The GAN's first `steps` batches (their first `rows` rows where given) through the trainer's
    step (D's objective, then G's) and through the twin under torch.optim.Adam: both sides' losses,
    `[d_loss, g_loss]` per step.  The noise is drawn once from `seed` and fed to both."""
    s = twins.SETTINGS["gan"]
    opt_d = torch.optim.Adam(net.D.parameters(), lr=s["lr"], betas=s["betas"])
    opt_g = torch.optim.Adam(net.G.parameters(), lr=s["lr"], betas=s["betas"])
    real_all = twins.digits()["x"]
    rng = np.random.default_rng(seed)
    ours, theirs = [], []
    for idx in twins.epoch_batches(len(real_all), s["batch"], s["seed"], 0)[:steps]:
        idx = idx[:rows]
        real = real_all[idx]
        noise = rng.standard_normal((len(idx), twins.Z)).astype(np.float32)
        got = trainer._step({"real": real, "noise": noise}, schedules, 0)
        ours.append([got["d_loss"], got["g_loss"]])
        t_real, t_noise = torch.from_numpy(real), torch.from_numpy(noise)
        ones, zeros = torch.ones(len(idx), 1), torch.zeros(len(idx), 1)
        d_loss = F.binary_cross_entropy_with_logits(net.D(t_real), ones) + \
            F.binary_cross_entropy_with_logits(net.D(net.G(t_noise).detach()), zeros)
        opt_d.zero_grad()
        d_loss.backward()
        opt_d.step()
        g_loss = F.binary_cross_entropy_with_logits(net.D(net.G(t_noise)), ones)
        opt_g.zero_grad()
        g_loss.backward()
        opt_g.step()
        theirs.append([d_loss.item(), g_loss.item()])
    return ours, theirs


def assert_weights_match(model, net: torch.nn.Module, atol: float) -> None:
    """dln's weights against the twin's, by name."""
    after = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    for k, value in model.state_dict().items():
        np.testing.assert_allclose(np.asarray(value), after[k], rtol=0, atol=atol, err_msg=k)
