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
