"""The char-LM examples against their PyTorch twins (examples/torch_twins.py), step by step.

examples/lstm_charlm.dln and gru_charlm.dln with small sizes (overrides): dln's initial weights
are loaded into `nn.LSTM` / `nn.GRU` by torch's own names (`lstm.weight_ih_l0`, ...); both then
take the same batches of real text windows (the trainer's split, which holds out the end of the
text, and the first batches of its first epoch's order) through the trainer's step and through
`torch.optim.Adam` with `clip_grad_norm_`, as the file says (the clip bound lowered so that it
acts on the small model).  The losses must agree at every
step, and the weights after the last.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import dln
from dln.runtime.schedules import Schedule
from dln.runtime.train import Trainer, find_train, recipe_for
from _twins import ROOT, assert_losses_agree, first_batches, load_initial, step_both

STEPS = 5
SMALL = {"dim": 8, "hidden": 16}
# float32 over 64 time steps.  Measured: losses within 1.1e-7 relative, weights within 4e-7 (the
# embedding), the rest within 6e-8.  Each Adam step moves a weight by up to lr = 3e-3, so a wrong
# gate order, a missing bias or a clip not applied shows orders of magnitude above these bounds.
LOSS_RTOL = 2e-6
PARAM_ATOL = 5e-6
CLIP = 0.1


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_twins_train_as_the_examples_say(twins, name):
    assert twins.settings_of(name) == twins.SETTINGS[name]


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_charlm_steps_match_torch(tmp_path: Path, twins, name):
    torch.manual_seed(0)
    model = dln.compile(str(ROOT / "examples" / twins.FILES[name]), seed=0, **SMALL)
    recipe = recipe_for(model, find_train(model.program))
    settings = dict(twins.SETTINGS[name])
    assert recipe.clip_grad == settings["clip_grad"]
    # The small model's gradient norms stay under the file's 1.0: a smaller bound makes the clip act.
    recipe = recipe.with_overrides(clip_grad=CLIP)
    settings["clip_grad"] = CLIP

    net = twins.make_charlm(name, dim=SMALL["dim"], hidden=SMALL["hidden"])
    initial = load_initial(net, model)
    opt = torch.optim.Adam(net.parameters(), lr=settings["lr"], betas=settings["betas"])

    trainer = Trainer(model, recipe, tmp_path, log=lambda s: None, progress=False)
    schedules = [Schedule(recipe.schedule, o.optimizer.lr, STEPS) for o in recipe.objectives]
    train, batches = first_batches(twins, name, settings, STEPS)

    ours, theirs, clipped = step_both(trainer, schedules, net, opt, train, batches, settings["clip_grad"])
    assert_losses_agree(ours, theirs, clipped, LOSS_RTOL)
    after = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    for k, value in model.state_dict().items():
        np.testing.assert_allclose(np.asarray(value), after[k], rtol=0, atol=PARAM_ATOL, err_msg=k)
        assert not np.allclose(after[k], initial[k]), k
