"""dln's training step against torch.optim, step by step.

The same small float32 MLP, the same initial weights and the same fixed batch;
20 optimizer steps of dln's compiled training step (forward, backward and
update as one graph, run by the planned NumPy `Executable` with the
parameters and optimizer state updated in place) against torch.optim.
Parameters must agree within 1e-6 after every step.

In float32 that bound is a few units in the last place of the weights, about
the distance between torch's own float32 and float64 trajectories, so the
weights are kept small and the rates moderate (the noise grows with both).
Each case also runs in float64, where the two must agree to 1e-12: that
checks the update formulas themselves, operation by operation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import dln
from dln.compiler import pipeline
from dln.compiler.recipe import Objective, OptimizerSpec, read_recipe
from dln.compiler.optimizers import OPTIMIZERS
from dln.runtime.interpreter import Executable
from dln.runtime.schedules import Schedule
from dln.runtime.train import Trainer, find_train

STEPS = 20
TOL = {"f32": 1e-6, "f64": 1e-12}
STATE_TOL = {"f32": (1e-4, 1e-6), "f64": (1e-9, 1e-12)}   # rtol, atol
NP = {"f32": np.float32, "f64": np.float64}
TORCH = {"f32": torch.float32, "f64": torch.float64}
B, D, H, C = 6, 5, 7, 3

MODEL = """
model mlp() {
    input x: DTYPE[B, 5]
    input y: i64[B]
    h = x -> linear(7) -> tanh
    logits = h -> linear(3)
    loss = cross_entropy(logits, y)
    output logits
}
"""


def source(optimizer: str, extra: str = "", dtype: str = "f32") -> str:
    return MODEL.replace("DTYPE", dtype) + f"""
train mlp {{
    optimizer = {optimizer}
    {extra}
    minimize loss
}}
"""


def data(seed: int = 3, dtype: str = "f32"):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((B, D)).astype(NP[dtype]), rng.integers(0, C, B)


def initial_weights(seed: int = 4, dtype: str = "f32") -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    shapes = {"h.weight": (H, D), "h.bias": (H,), "logits.weight": (C, H), "logits.bias": (C,)}
    return {k: (rng.standard_normal(s) * 0.4).astype(NP[dtype]) for k, s in shapes.items()}


def read_objective(model) -> tuple[Objective, float | None]:
    spec = model.train_spec
    recipe = read_recipe(find_train(model.program), model.name, set(spec.values), set(spec.instances))
    return recipe.objectives[0], recipe.clip_grad


class DlnRun:
    """dln's training step, fed as `Trainer._step` feeds it."""

    def __init__(self, src: str, objective: Objective | None = None, clip_grad: float | None = None,
                 dtype: str = "f32") -> None:
        self.model = dln.compile(src)
        self.model.load_state_dict(initial_weights(dtype=dtype))
        parsed, parsed_clip = read_objective(self.model)
        self.objective = objective or parsed
        self.step = pipeline.train_step(self.model.train_spec, self.objective,
                                        clip_grad if clip_grad is not None else parsed_clip)
        self.params = {k: v.copy() for k, v in self.model.parameters().items()}
        self.states = {s.name: np.full(tuple(int(d) for d in s.type.shape), s.init, NP[dtype])
                       for s in self.step.states}
        self.persistent = {**self.params, **self.states, "rng.step": np.array(0, np.int64)}
        self.exe = Executable(self.step.graph, self.persistent, self.step.donate)
        self.count = 0

    def __call__(self, x: np.ndarray, y: np.ndarray, lr: float | None = None) -> float:
        self.count += 1
        feeds = {"x": x, "y": y, "lr": np.array(lr if lr is not None else self.objective.optimizer.lr, np.float64),
                 "step": np.array(self.count, np.float64)}
        out = self.exe.run(feeds, {"B": len(x)})
        for name in self.step.params:  # the donated outputs are the persistent buffers themselves
            np.testing.assert_array_equal(out[f"new:{name}"], self.persistent[name])
        return float(out["loss"])


def torch_model(dtype: str = "f32"):
    w = {k: torch.tensor(v, requires_grad=True) for k, v in initial_weights(dtype=dtype).items()}

    def loss(x, y):
        h = torch.tanh(x @ w["h.weight"].T + w["h.bias"])
        logits = h @ w["logits.weight"].T + w["logits.bias"]
        return torch.nn.functional.cross_entropy(logits, y)
    return w, loss


def compare(dln_optimizer: str, make_torch, clip: float | None = None, extra: str = "",
            steps: int = STEPS, dtype: str = "f32") -> None:
    tol = TOL[dtype]
    x, y = data(dtype=dtype)
    ours = DlnRun(source(dln_optimizer, extra, dtype), clip_grad=clip, dtype=dtype)
    assert ours.persistent["h.weight"].dtype == NP[dtype]
    w, loss_fn = torch_model(dtype)
    opt = make_torch(list(w.values()))
    tx, ty = torch.tensor(x), torch.tensor(y)
    moved = 0.0
    for k in range(1, steps + 1):
        loss = ours(x, y)
        opt.zero_grad()
        ref = loss_fn(tx, ty)
        ref.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(list(w.values()), clip)
        opt.step()
        assert abs(loss - ref.item()) <= 100 * tol * max(1.0, abs(ref.item())), f"loss at step {k}"
        for name, p in w.items():
            np.testing.assert_allclose(ours.persistent[name], p.detach().numpy(), rtol=0, atol=tol,
                                       err_msg=f"{name} after step {k}")
        moved = max(moved, max(float(np.abs(ours.persistent[n] - initial_weights(dtype=dtype)[n]).max())
                               for n in w))
    assert moved > 1e-3, "the parameters barely moved: the comparison proves little"
    for s in ours.step.states:  # optimizer state matches torch's too
        torch_state = opt.state[w[s.param]]
        if s.slot in torch_state:
            rtol, atol = STATE_TOL[dtype]
            np.testing.assert_allclose(ours.persistent[s.name], torch_state[s.slot].numpy(), rtol=rtol,
                                       atol=atol, err_msg=s.name)


O = torch.optim

CASES = [
    ("sgd", "sgd(lr = 0.1)", lambda p: O.SGD(p, lr=0.1)),
    ("sgd_momentum", "sgd(lr = 0.1, momentum = 0.9)", lambda p: O.SGD(p, lr=0.1, momentum=0.9)),
    ("sgd_dampening", "sgd(lr = 0.1, momentum = 0.8, dampening = 0.3)",
     lambda p: O.SGD(p, lr=0.1, momentum=0.8, dampening=0.3)),
    ("sgd_nesterov", "sgd(lr = 0.1, momentum = 0.9, nesterov = true)",
     lambda p: O.SGD(p, lr=0.1, momentum=0.9, nesterov=True)),
    ("sgd_weight_decay", "sgd(lr = 0.1, weight_decay = 0.05)", lambda p: O.SGD(p, lr=0.1, weight_decay=0.05)),
    ("sgd_everything", "sgd(lr = 0.05, momentum = 0.7, weight_decay = 0.02, nesterov = true)",
     lambda p: O.SGD(p, lr=0.05, momentum=0.7, weight_decay=0.02, nesterov=True)),
    ("sgd_momentum_dampening_decay", "sgd(lr = 0.05, momentum = 0.7, dampening = 0.5, weight_decay = 0.02)",
     lambda p: O.SGD(p, lr=0.05, momentum=0.7, dampening=0.5, weight_decay=0.02)),
    ("adam", "adam(lr = 0.01)", lambda p: O.Adam(p, lr=0.01)),
    ("adam_betas_eps", "adam(lr = 0.02, betas = (0.8, 0.95), eps = 1e-6)",
     lambda p: O.Adam(p, lr=0.02, betas=(0.8, 0.95), eps=1e-6)),
    ("adam_weight_decay", "adam(lr = 0.01, weight_decay = 0.1)", lambda p: O.Adam(p, lr=0.01, weight_decay=0.1)),
    ("adam_amsgrad", "adam(lr = 0.01, amsgrad = true)", lambda p: O.Adam(p, lr=0.01, amsgrad=True)),
    ("adam_amsgrad_decay", "adam(lr = 0.01, amsgrad = true, weight_decay = 0.05, betas = (0.5, 0.9))",
     lambda p: O.Adam(p, lr=0.01, amsgrad=True, weight_decay=0.05, betas=(0.5, 0.9))),
    ("adamw", "adamw(lr = 0.01)", lambda p: O.AdamW(p, lr=0.01)),
    ("adamw_decay", "adamw(lr = 0.01, weight_decay = 0.3)", lambda p: O.AdamW(p, lr=0.01, weight_decay=0.3)),
    ("adamw_amsgrad", "adamw(lr = 0.01, weight_decay = 0.1, amsgrad = true)",
     lambda p: O.AdamW(p, lr=0.01, weight_decay=0.1, amsgrad=True)),
    ("rmsprop", "rmsprop(lr = 0.01)", lambda p: O.RMSprop(p, lr=0.01)),
    ("rmsprop_centered", "rmsprop(lr = 0.01, centered = true)", lambda p: O.RMSprop(p, lr=0.01, centered=True)),
    ("rmsprop_momentum", "rmsprop(lr = 0.001, momentum = 0.9)", lambda p: O.RMSprop(p, lr=0.001, momentum=0.9)),
    ("rmsprop_centered_momentum_decay",
     "rmsprop(lr = 0.005, alpha = 0.9, centered = true, momentum = 0.5, weight_decay = 0.01, eps = 1e-6)",
     lambda p: O.RMSprop(p, lr=0.005, alpha=0.9, centered=True, momentum=0.5, weight_decay=0.01, eps=1e-6)),
    ("adagrad", "adagrad(lr = 0.1)", lambda p: O.Adagrad(p, lr=0.1)),
    ("adagrad_lr_decay", "adagrad(lr = 0.1, lr_decay = 0.05)", lambda p: O.Adagrad(p, lr=0.1, lr_decay=0.05)),
    ("adagrad_initial_accumulator", "adagrad(lr = 0.1, initial_accumulator_value = 0.3)",
     lambda p: O.Adagrad(p, lr=0.1, initial_accumulator_value=0.3)),
    ("adagrad_everything", "adagrad(lr = 0.1, lr_decay = 0.01, initial_accumulator_value = 0.1, "
                           "weight_decay = 0.02, eps = 1e-8)",
     lambda p: O.Adagrad(p, lr=0.1, lr_decay=0.01, initial_accumulator_value=0.1, weight_decay=0.02, eps=1e-8)),
    ("adadelta", "adadelta()", lambda p: O.Adadelta(p)),
    ("adadelta_options", "adadelta(lr = 0.5, rho = 0.8, eps = 1e-5, weight_decay = 0.01)",
     lambda p: O.Adadelta(p, lr=0.5, rho=0.8, eps=1e-5, weight_decay=0.01)),
]


@pytest.mark.parametrize("dtype", ["f32", "f64"])
@pytest.mark.parametrize("dln_optimizer,make_torch", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_optimizer_matches_torch(dln_optimizer, make_torch, dtype):
    compare(dln_optimizer, make_torch, dtype=dtype)


# torch's defaults, as dln spells them with no arguments
DEFAULTS = [
    ("sgd", lambda p: O.SGD(p, lr=1e-3)),
    ("adam", lambda p: O.Adam(p)),
    ("adamw", lambda p: O.AdamW(p)),
    ("rmsprop", lambda p: O.RMSprop(p)),
    ("adagrad", lambda p: O.Adagrad(p)),
]


@pytest.mark.parametrize("name,make_torch", DEFAULTS, ids=[d[0] for d in DEFAULTS])
def test_defaults_match_torch(name, make_torch):
    params = [torch.zeros(1, requires_grad=True)]
    torch_defaults = make_torch(params).defaults
    for key, value in OPTIMIZERS[name].defaults.items():
        want = torch_defaults[key]
        assert (tuple(want) if isinstance(want, tuple) else want) == value, (name, key)


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "rmsprop", "adagrad"])
def test_default_arguments_train_like_torch(name):
    compare(f"{name}()", {"sgd": lambda p: O.SGD(p, lr=1e-3), "adam": O.Adam, "adamw": O.AdamW,
                          "rmsprop": O.RMSprop, "adagrad": O.Adagrad}[name], steps=10)


# ---- gradient clipping ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["f32", "f64"])
@pytest.mark.parametrize("clip", [0.05, 0.5, 100.0], ids=["tight", "medium", "inactive"])
def test_clip_grad_matches_clip_grad_norm(clip, dtype):
    compare("sgd(lr = 0.1, momentum = 0.9)", lambda p: O.SGD(p, lr=0.1, momentum=0.9), clip=clip, dtype=dtype)


def test_clip_grad_setting_with_adam():
    # clip_grad from the train section itself
    x, y = data()
    ours = DlnRun(source("adam(lr = 0.01)", "clip_grad = 0.1"))
    w, loss_fn = torch_model()
    opt = O.Adam(list(w.values()), lr=0.01)
    for k in range(STEPS):
        ours(x, y)
        opt.zero_grad()
        loss_fn(torch.tensor(x), torch.tensor(y)).backward()
        torch.nn.utils.clip_grad_norm_(list(w.values()), 0.1)
        opt.step()
        for name, p in w.items():
            np.testing.assert_allclose(ours.persistent[name], p.detach().numpy(), rtol=0, atol=TOL["f32"],
                                       err_msg=f"{name} after step {k + 1}")


# ---- the objective built by hand, and a changing learning rate --------------------------------------------------
def test_objective_built_directly_and_lr_per_step():
    x, y = data()
    hyper = {**OPTIMIZERS["adam"].defaults, "lr": 0.02}
    objective = Objective("loss", None, OptimizerSpec("adam", hyper), None)
    ours = DlnRun(source("sgd()"), objective=objective)   # the text's optimizer is overridden
    w, loss_fn = torch_model()
    opt = O.Adam(list(w.values()), lr=0.02)
    sched = O.lr_scheduler.LambdaLR(opt, lambda k: 1.0 / (1 + 0.3 * k))
    for k in range(STEPS):
        ours(x, y, lr=opt.param_groups[0]["lr"])
        opt.zero_grad()
        loss_fn(torch.tensor(x), torch.tensor(y)).backward()
        opt.step()
        sched.step()
        for name, p in w.items():
            np.testing.assert_allclose(ours.persistent[name], p.detach().numpy(), rtol=0, atol=TOL["f32"],
                                       err_msg=f"{name} after step {k + 1}")


# ---- the trainer itself -----------------------------------------------------------------------------------------
def test_trainer_steps_match_torch(tmp_path: Path):
    """`Trainer._step`, as `fit` calls it, with the learning rate from its schedule."""
    x, y = data()
    model = dln.compile(source("rmsprop(lr = 0.01, momentum = 0.5, centered = true)"))
    model.load_state_dict(initial_weights())
    spec = model.train_spec
    recipe = read_recipe(find_train(model.program), model.name, set(spec.values), set(spec.instances))
    trainer = Trainer(model, recipe, tmp_path, log=lambda s: None, progress=False)
    schedules = [Schedule(recipe.schedule, o.optimizer.lr, STEPS) for o in recipe.objectives]
    w, loss_fn = torch_model()
    opt = O.RMSprop(list(w.values()), lr=0.01, momentum=0.5, centered=True)
    for k in range(STEPS):
        result = trainer._step({"x": x, "y": y}, schedules, 0)
        opt.zero_grad()
        ref = loss_fn(torch.tensor(x), torch.tensor(y))
        ref.backward()
        opt.step()
        assert abs(result["loss"] - ref.item()) < 1e-5
        params = model.parameters()
        for name, p in w.items():
            np.testing.assert_allclose(params[name], p.detach().numpy(), rtol=0, atol=TOL["f32"],
                                       err_msg=f"{name} after step {k + 1}")


def test_trainer_fit_full_batch_matches_torch(tmp_path: Path):
    """`fit` over an npz file, one full batch per epoch, 20 epochs: 20 adam steps."""
    x, y = data()
    np.savez(tmp_path / "data.npz", x=x, y=y)
    src = MODEL.replace("DTYPE", "f32") + """
train mlp {
    data = npz("data.npz")
    optimizer = adam(lr = 0.01, weight_decay = 0.01)
    batch = 6
    epochs = 20
    clip_grad = 0.5
}
"""
    model = dln.compile(src)
    model.load_state_dict(initial_weights())
    spec = model.train_spec
    recipe = read_recipe(find_train(model.program), model.name, set(spec.values), set(spec.instances))
    history = Trainer(model, recipe, tmp_path, log=lambda s: None, progress=False).fit()
    assert len(history) == STEPS

    w, loss_fn = torch_model()
    opt = O.Adam(list(w.values()), lr=0.01, weight_decay=0.01)
    for _ in range(STEPS):
        opt.zero_grad()
        loss_fn(torch.tensor(x), torch.tensor(y)).backward()
        torch.nn.utils.clip_grad_norm_(list(w.values()), 0.5)
        opt.step()
    params = model.parameters()
    for name, p in w.items():
        # the batch is the data shuffled each epoch: sums in another order, so a little looser
        np.testing.assert_allclose(params[name], p.detach().numpy(), rtol=0, atol=1e-5, err_msg=name)
