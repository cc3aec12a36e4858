"""examples/transformer_charlm.dln against its PyTorch twin (examples/torch_twins.py), step by step.

The example with small sizes (overrides: dim 16, 2 heads, 2 layers; the position table keeps its
64 rows, the data set's window): dln's initial weights are loaded into the twin by name
(`nn.MultiheadAttention`'s `in_proj_weight`, `out_proj.weight`, ... under `layer.<k>.block.attn`);
both then take the same batches of real text windows (the trainer's split and the first batches of
its first epoch's order) through the trainer's step and through `torch.optim.AdamW` with
`clip_grad_norm_`, at the learning rates of a cosine schedule with a short warm-up, so that both
halves of the schedule act within the few steps.  The losses must agree at every step, and the
weights after the last.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

import dln
from dln.compiler.values import TrainValue
from dln.runtime.schedules import Schedule
from dln.runtime.train import Trainer, find_train, recipe_for
from _twins import ROOT, assert_losses_agree, first_batches, load_initial, step_both

STEPS = 5
WARMUP = 2
SMALL = {"dim": 16, "heads": 2, "layers": 2}
# float32 over two decoder layers of 64 positions.  Measured: losses within 1e-7 relative, weights
# within 2.4e-7 but layer.0's MLP weight, 2.3e-6 (where Adam divides a small gradient by its small
# root mean square, the rounding of both grows).  Each AdamW step moves a weight by about lr (1e-3 and more here), so a wrong mask,
# a head split the other way, a missing scale or a clip or decay not applied shows orders of
# magnitude above these bounds.
LOSS_RTOL = 2e-6
PARAM_ATOL = 5e-6
CLIP = 0.2


def test_twin_trains_as_the_example_says(twins):
    assert twins.settings_of("gpt") == twins.SETTINGS["gpt"]
    model = dln.compile(str(ROOT / "examples" / "transformer_charlm.dln"))
    assert {k: model.hparams[k] for k in twins.GPT} == twins.GPT


def test_twin_schedule_is_the_trainers(twins):
    """torch_twins.step_rates against dln's Schedule, warm-up and cosine."""
    ours = Schedule(TrainValue("cosine", (("warmup", 10),)), 3e-3, 50)
    rates = twins.step_rates({"lr": 3e-3, "warmup": 10}, 50)
    np.testing.assert_allclose([next(rates) for _ in range(60)], [ours.lr(k, 0) for k in range(60)], rtol=1e-15)


def test_transformer_steps_match_torch(tmp_path: Path, twins):
    torch.manual_seed(0)
    model = dln.compile(str(ROOT / "examples" / "transformer_charlm.dln"), seed=0, **SMALL)
    recipe = recipe_for(model, find_train(model.program))
    settings = dict(twins.SETTINGS["gpt"])
    assert recipe.clip_grad == settings["clip_grad"] and recipe.objectives[0].optimizer.kind == "adamw"
    # A smaller bound than the file's 1.0, so that the clip surely acts on the small model.
    recipe = recipe.with_overrides(clip_grad=CLIP)
    settings.update(clip_grad=CLIP, warmup=WARMUP)

    net = twins.make_gpt(**SMALL)
    initial = load_initial(net, model)
    opt = twins.make_optimizer(net, settings)
    rates = twins.step_rates(settings, STEPS)

    trainer = Trainer(model, recipe, tmp_path, log=lambda s: None, progress=False)
    schedules = [Schedule(TrainValue("cosine", (("warmup", WARMUP),)), settings["lr"], STEPS)]
    train, batches = first_batches(twins, "gpt", settings, STEPS)

    ours, theirs, clipped = step_both(trainer, schedules, net, opt, train, batches, settings["clip_grad"], rates)
    assert_losses_agree(ours, theirs, clipped, LOSS_RTOL)
    after = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    for k, value in model.state_dict().items():
        ours_k, theirs_k, first = np.asarray(value), after[k], initial[k]
        if k.endswith("attn.in_proj_bias"):
            # The key bias adds q . b_k to every score of a query alike, which softmax ignores: its
            # gradient is rounding noise on both sides (measured: below 3e-10), which Adam scales up to steps of
            # about lr in arbitrary directions.  Compared: the query and value biases.
            d = SMALL["dim"]
            ours_k, theirs_k, first = (np.delete(a, np.s_[d:2 * d]) for a in (ours_k, theirs_k, first))
        np.testing.assert_allclose(ours_k, theirs_k, rtol=0, atol=PARAM_ATOL, err_msg=k)
        assert not np.allclose(theirs_k, first), k
