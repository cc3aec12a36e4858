"""`dln.optimizer` and `Model.copy_from`: the training step driven from Python, against torch.optim.

A 7 -> 13 -> 5 classifier made of two instances (E, the encoder, and H, the head) takes a few
steps of `opt.step` and the same steps of torch.optim on a twin holding the same weights; the
parameters must agree after every step, with clipping, a schedule, `over`, two optimizers on one
model, and the optimizer state saved and loaded.
"""

from __future__ import annotations

import importlib.util
import math
import sys

import numpy as np
import pytest
import torch

import dln
from conftest import EXAMPLES

SOURCE = """
model encoder() {
    input x: f32[B, 7]
    output h = x -> linear(13) -> tanh
}

model head() {
    input h: f32[B, 13]
    output logits = h -> linear(5)
}

model net() {
    input x: f32[B, 7]
    input y: i64[B]
    E = encoder()
    H = head()
    logits = H(E(x))
    loss = cross_entropy(logits, y)
    output logits
}
"""
STEPS = 8
TOL = 1e-6
O = torch.optim


def batch(seed: int = 0, n: int = 9):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 7)).astype(np.float32), rng.integers(0, 5, n)


def compiled(seed: int = 3):
    return dln.compile(SOURCE, backend="numpy", model="net", seed=seed)


class Twin:
    """The same network in torch, from the dln model's weights."""

    def __init__(self, model) -> None:
        self.w = {k: torch.tensor(v, requires_grad=True) for k, v in model.parameters().items()}

    def loss(self, x, y):
        w = self.w
        h = torch.tanh(torch.from_numpy(x) @ w["E.h.weight"].T + w["E.h.bias"])
        logits = h @ w["H.logits.weight"].T + w["H.logits.bias"]
        return torch.nn.functional.cross_entropy(logits, torch.from_numpy(y))

    def params(self, prefix: str = ""):
        return [p for k, p in self.w.items() if k.startswith(prefix)]

    def step(self, opts, x, y, clip: float | None = None, prefix: str = "") -> float:
        for o in opts:
            o.zero_grad()
        loss = self.loss(x, y)
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(self.params(prefix), clip)
        for o in opts:
            o.step()
        return loss.item()

    def check(self, model, when: str) -> None:
        for name, value in model.parameters().items():
            np.testing.assert_allclose(value, self.w[name].detach().numpy(), rtol=0, atol=TOL,
                                       err_msg=f"{name} {when}")


CASES = [
    ("adam", dict(lr=0.01), lambda p: O.Adam(p, lr=0.01)),
    ("adamw", dict(lr=0.01, weight_decay=0.1, amsgrad=True), lambda p: O.AdamW(p, lr=0.01, weight_decay=0.1,
                                                                               amsgrad=True)),
    ("sgd", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
     lambda p: O.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("rmsprop", dict(lr=0.01, centered=True), lambda p: O.RMSprop(p, lr=0.01, centered=True)),
    ("adagrad", dict(lr=0.1), lambda p: O.Adagrad(p, lr=0.1)),
    ("adadelta", dict(lr=0.5), lambda p: O.Adadelta(p, lr=0.5)),
]


@pytest.mark.parametrize("clip", [None, 0.3])
@pytest.mark.parametrize("name,hyper,make_torch", CASES, ids=[c[0] for c in CASES])
def test_steps_match_torch_optim(name, hyper, make_torch, clip):
    model = compiled()
    twin = Twin(model)
    opt = dln.optimizer(model, name, clip_grad=clip, **hyper)
    ref = make_torch(twin.params())
    for k in range(STEPS):
        x, y = batch(k)
        loss = opt.step(x=x, y=y)
        assert isinstance(loss, float)
        assert abs(loss - twin.step([ref], x, y, clip)) < 1e-5
        twin.check(model, f"after step {k + 1}")
    assert opt.count == STEPS
    assert set(opt.metrics) == {"accuracy"}   # cross_entropy's
    # evaluation mode between steps sees the new weights
    x, _ = batch(99)
    with torch.no_grad():
        h = torch.tanh(torch.from_numpy(x) @ twin.w["E.h.weight"].T + twin.w["E.h.bias"])
        logits = h @ twin.w["H.logits.weight"].T + twin.w["H.logits.bias"]
    np.testing.assert_allclose(model(x=x)["logits"], logits.numpy(), atol=1e-5)


def cosine_with_warmup(total: int, warmup: int):
    """dln's cosine(warmup) as a LambdaLR factor of step k."""
    def factor(k: int) -> float:
        if k < warmup:
            return (k + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min((k - warmup) / (total - warmup), 1.0)))
    return factor


def test_a_cosine_schedule_and_the_rate_property():
    model = compiled()
    twin = Twin(model)
    opt = dln.optimizer(model, "adam", lr=0.02, schedule=("cosine", {"warmup": 3}), total_steps=STEPS)
    ref = O.Adam(twin.params(), lr=0.02)
    sched = O.lr_scheduler.LambdaLR(ref, cosine_with_warmup(STEPS, 3))
    for k in range(STEPS):
        assert opt.lr == pytest.approx(ref.param_groups[0]["lr"], rel=1e-12)
        x, y = batch(k)
        opt.step(x=x, y=y)
        twin.step([ref], x, y)
        sched.step()
        twin.check(model, f"after step {k + 1}")


def test_an_epoch_schedule_and_setting_the_rate():
    model = compiled()
    twin = Twin(model)
    opt = dln.optimizer(model, "sgd", lr=0.1, schedule=("exponential", {"gamma": 0.5}))
    ref = O.SGD(twin.params(), lr=0.1)
    sched = O.lr_scheduler.ExponentialLR(ref, gamma=0.5)
    for k in range(6):
        x, y = batch(k)
        opt.step(x=x, y=y)
        twin.step([ref], x, y)
        if k % 2 == 1:
            opt.end_epoch()
            sched.step()
        twin.check(model, f"after step {k + 1}")
    assert opt.lr == pytest.approx(0.1 * 0.5 ** 3)
    opt.lr = 0.2                       # the base rate the schedule scales
    assert opt.lr == pytest.approx(0.2 * 0.5 ** 3)


@pytest.mark.parametrize("over", ["H", "H.*", ["H.logits.weight", "H.logits.b*"]])
def test_over_updates_its_instance_only(over):
    """`over` as a train section writes it: an instance, a parameter-name pattern, a list of them."""
    model = compiled()
    before = model.parameters()
    twin = Twin(model)
    opt = dln.optimizer(model, "adam", lr=0.01, over=over, clip_grad=0.2)
    ref = O.Adam(twin.params("H."), lr=0.01)
    for k in range(STEPS):
        x, y = batch(k)
        opt.step(x=x, y=y)
        twin.step([ref], x, y, clip=0.2, prefix="H.")
        twin.check(model, f"after step {k + 1}")
    after = model.parameters()
    for name in ("E.h.weight", "E.h.bias"):
        np.testing.assert_array_equal(after[name], before[name])
    assert not np.array_equal(after["H.logits.weight"], before["H.logits.weight"])


def test_two_optimizers_on_one_model():
    """GAN-style: each instance its own optimizer, stepped in turn."""
    model = compiled()
    twin = Twin(model)
    opt_e = dln.optimizer(model, "sgd", lr=0.1, momentum=0.5, over="E")
    opt_h = dln.optimizer(model, "rmsprop", lr=0.01, over="H")
    ref_e, ref_h = O.SGD(twin.params("E."), lr=0.1, momentum=0.5), O.RMSprop(twin.params("H."), lr=0.01)
    for k in range(STEPS):
        x, y = batch(k)
        opt, ref = (opt_e, ref_e) if k % 2 == 0 else (opt_h, ref_h)
        opt.step(x=x, y=y)
        twin.step([ref], x, y)
        twin.check(model, f"after step {k + 1}")
    assert opt_e.count_key != opt_h.count_key
    assert opt_e.count == opt_h.count == STEPS // 2


def test_the_optimizer_state_saves_and_loads():
    """Four steps, the state saved; a fresh model and optimizer loaded with both take the same
    next steps as the original."""
    model = compiled()
    opt = dln.optimizer(model, "adam", lr=0.01, amsgrad=True)
    for k in range(4):
        opt.step(**dict(zip("xy", batch(k))))
    weights, state = model.state_dict(), opt.state_dict()
    assert int(state["optim.loss.step"]) == 4
    again = compiled(seed=11)
    again.load_state_dict(weights)
    opt2 = dln.optimizer(again, "adam", lr=0.01, amsgrad=True)
    opt2.load_state_dict(state)
    assert opt2.count == 4
    for k in range(4, 7):
        x, y = batch(k)
        assert opt.step(x=x, y=y) == opt2.step(x=x, y=y)
    for name, value in model.parameters().items():
        np.testing.assert_array_equal(again.parameters()[name], value)
    with pytest.raises(dln.DlnError) as e:
        dln.optimizer(again, "sgd", momentum=0.9).load_state_dict(state)
    assert e.value.code == "E0703"


def test_copy_from_copies_and_averages_exactly():
    online, target = compiled(seed=1), compiled(seed=2)
    dln.optimizer(online, "adam", lr=0.05).step(**dict(zip("xy", batch())))
    before = target.parameters()
    target.copy_from(online, tau=0.25)
    for name, value in online.parameters().items():
        np.testing.assert_array_equal(target.parameters()[name], 0.25 * value + (1 - 0.25) * before[name])
    target.copy_from(online)
    for name, value in online.parameters().items():
        np.testing.assert_array_equal(target.parameters()[name], value)
    x, _ = batch(5)
    np.testing.assert_array_equal(target(x=x)["logits"], online(x=x)["logits"])
    # the two keep their own buffers
    dln.optimizer(online, "sgd", lr=0.5).step(**dict(zip("xy", batch())))
    assert not np.array_equal(target.parameters()["H.logits.bias"], online.parameters()["H.logits.bias"])


def test_copy_from_a_different_program_is_refused():
    other = dln.compile(SOURCE.replace("linear(13)", "linear(12)").replace("f32[B, 13]", "f32[B, 12]"),
                        backend="numpy", model="net")
    with pytest.raises(dln.DlnError) as e:
        compiled().copy_from(other)
    assert e.value.code == "E0703" and "E.h.weight" in str(e.value)
    for tau in (1.5, -0.1, "half", True):
        with pytest.raises(dln.DlnError) as e:
            compiled().copy_from(compiled(), tau=tau)
        assert e.value.code == "E0710"


@pytest.mark.parametrize("call,code,words", [
    (lambda m: dln.optimizer(m, "adamax"), "E0710", "unknown optimizer"),
    (lambda m: dln.optimizer("net.dln", "adam"), "E0710", "argument model"),
    (lambda m: dln.optimizer(m, "adam", lr=-1.0), "E0710", "argument lr"),
    (lambda m: dln.optimizer(m, "adam", lr="fast"), "E0710", "argument lr"),
    (lambda m: dln.optimizer(m, "adam", betas=(0.9, 1.5)), "E0710", "betas"),
    (lambda m: dln.optimizer(m, "adam", momentum=0.9), "E0710", "momentum"),
    (lambda m: dln.optimizer(m, "sgd", nesterov=True), "E0710", "nesterov"),
    (lambda m: dln.optimizer(m, "adam", over=3), "E0710", "argument over"),
    (lambda m: dln.optimizer(m, "adam", over="G"), "E0602", "no parameter matches \"G\""),
    (lambda m: dln.optimizer(m, "adam", loss="logits"), "E0710", "scalar"),
    (lambda m: dln.optimizer(m, "adam", loss="nope"), "E0602", "no value 'nope'"),
    (lambda m: dln.optimizer(m, "adam", clip_grad=0), "E0710", "clip_grad"),
    (lambda m: dln.optimizer(m, "adam", schedule="cosine"), "E0710", "total_steps"),
    (lambda m: dln.optimizer(m, "adam", schedule="warm"), "E0710", "schedules: constant"),
    (lambda m: dln.optimizer(m, "adam", schedule=("step", {"every": 0})), "E0710", "every"),
    (lambda m: dln.optimizer(m, "adam", total_steps=0), "E0710", "total_steps"),
    (lambda m: dln.optimizer(m, "adam", schedule=("step", {1: 3})), "E0710", "argument schedule"),
    (lambda m: dln.optimizer(m, "adam", weight_decay=float("nan")), "E0710", "weight_decay must be >= 0"),
    (lambda m: dln.optimizer(m, "sgd", momentum=float("inf")), "E0710", "momentum must be >= 0"),
    (lambda m: dln.optimizer(m).step(*batch()), "E0701", "by name"),
    (lambda m: dln.optimizer(m).step(x=batch()[0]), "E0701", "missing input 'y'"),
    (lambda m: setattr(dln.optimizer(m), "lr", -0.1), "E0710", "argument lr"),
    (lambda m: dln.optimizer(m).load_state_dict([1, 2]), "E0703", "mapping"),
])
def test_mistakes_are_diagnostics(call, code, words):
    with pytest.raises(dln.DlnError) as e:
        call(compiled())
    assert e.value.code == code
    assert words in str(e.value)


@pytest.mark.parametrize("bad", [
    lambda sd, k, count: {**sd, k: np.full(sd[k].shape, "a")},             # strings: not numbers
    lambda sd, k, count: {**sd, k: sd[k].astype(np.complex64)},            # complex: not real
    lambda sd, k, count: {**sd, count: np.array(np.nan)},
    lambda sd, k, count: {**sd, count: np.array(-3)},
    lambda sd, k, count: {**sd, count: np.array(2.5)},
])
def test_a_bad_optimizer_state_is_refused_whole(bad):
    model = compiled()
    opt = dln.optimizer(model, "adam")
    opt.step(**dict(zip("xy", batch())))
    sd = opt.state_dict()
    slot = next(k for k in sd if k != opt.count_key)
    with pytest.raises(dln.DlnError) as e:
        opt.load_state_dict(bad(sd, slot, opt.count_key))
    assert e.value.code == "E0703"
    assert opt.count == 1 and np.array_equal(opt.state_dict()[slot], sd[slot])


@pytest.mark.parametrize("val_loss,words", [("low", "argument val_loss"), ([1.0, 2.0], "argument val_loss"),
                                             (None, "needs the validation loss")])
def test_end_epoch_checks_the_validation_loss(val_loss, words):
    opt = dln.optimizer(compiled(), "sgd", lr=0.1, schedule=("plateau", {"patience": 0}))
    with pytest.raises(dln.DlnError) as e:
        opt.end_epoch(val_loss)
    assert e.value.code == "E0710" and words in str(e.value)
    opt.end_epoch(torch.tensor(1.0))
    opt.end_epoch(np.float32(2.0))     # no better: the rate drops
    assert opt.lr == pytest.approx(0.01)


def test_a_step_that_fails_on_its_batch_is_not_counted():
    """An index out of range stops the step before the update: the count stays, and the next step is
    the first (Adam's bias correction), as torch's would be after a forward that raised."""
    src = """
model net {
    input x: f32[B, 4]
    input a: i64[B]
    input t: f32[B]
    q = x -> linear(2)
    loss = mse(squeeze(gather(q, 1, unsqueeze(a, 1)), 1), t)
    output q
}
"""
    x, t = np.ones((3, 4), np.float32), np.zeros(3, np.float32)
    models = [dln.compile(src, backend="numpy", seed=4) for _ in range(2)]
    opts = [dln.optimizer(m, "adam", lr=0.1) for m in models]
    with pytest.raises(dln.DlnError) as e:
        opts[0].step(x=x, a=np.array([0, 1, 7]), t=t)
    assert e.value.code == "E0704" and opts[0].count == 0
    for opt in opts:
        opt.step(x=x, a=np.array([0, 1, 1]), t=t)
    for name, value in models[1].parameters().items():
        np.testing.assert_array_equal(models[0].parameters()[name], value)


def test_a_loss_that_becomes_nan_is_located():
    model = compiled()
    opt = dln.optimizer(model, "sgd", lr=1e38)
    with pytest.raises(dln.DlnError) as e:
        for k in range(20):
            opt.step(**dict(zip("xy", batch(k))))
    assert e.value.code == "E0704" and "at step" in str(e.value)


# ---- the DQN example, briefly ------------------------------------------------------------------------------

def test_the_dqn_example_runs_a_few_episodes():
    pytest.importorskip("gymnasium")
    spec = importlib.util.spec_from_file_location("dqn_cartpole", EXAMPLES / "dqn_cartpole.py")
    dqn = importlib.util.module_from_spec(spec)
    sys.modules["dqn_cartpole"] = dqn    # its dataclasses look their module up
    spec.loader.exec_module(dqn)
    settings = dqn.Settings(episodes=3, warmup=16, batch=16)
    results = [dqn.run(side, settings, log=lambda s: None) for side in ("dln", "torch")]
    for r in results:
        assert len(r.returns) == 3 and r.steps == sum(r.returns) and r.steps > settings.warmup
    # the same seeds: the same first episode, played before learning begins
    assert results[0].returns[0] == results[1].returns[0]


def test_the_dqn_agents_learn_alike():
    """The DQN example's two sides, on the same batches: dln's AdamW (amsgrad), clipping, Huber loss and
    Polyak-averaged target network take torch's steps (no environment needed)."""
    spec = importlib.util.spec_from_file_location("dqn_cartpole", EXAMPLES / "dqn_cartpole.py")
    dqn = importlib.util.module_from_spec(spec)
    sys.modules["dqn_cartpole"] = dqn
    spec.loader.exec_module(dqn)
    settings = dqn.Settings(lr=1e-2, clip_grad=0.5, tau=0.3)     # large enough that a difference shows
    ours, theirs = dqn.DlnAgent(settings), dqn.TorchAgent(settings)
    rng = np.random.default_rng(0)
    for k in range(5):
        s = rng.standard_normal((16, 4)).astype(np.float32)
        s2 = rng.standard_normal((16, 4)).astype(np.float32)
        a = rng.integers(0, 2, 16)
        y = (1.0 + 0.99 * ours.q_target(s2).max(axis=1)).astype(np.float32)
        np.testing.assert_allclose(y, 1.0 + 0.99 * theirs.q_target(s2).max(axis=1), rtol=1e-4, atol=1e-5)
        assert ours.learn(s, a, y) == pytest.approx(theirs.learn(s, a, y), rel=1e-4, abs=1e-6)
        ours.sync()
        theirs.sync()
        np.testing.assert_allclose(ours.q(s), theirs.q(s), rtol=1e-4, atol=1e-5, err_msg=f"after step {k + 1}")


def test_two_optimizers_draw_different_dropout_masks():
    """One random state for the optimizers of a model: the second objective's step draws after the
    first's, not the first's masks again; each step draws anew."""
    src = """
model net {
    input x: f32[B, 4]
    h = x -> linear(32) -> dropout(0.5)
    a = mean(h * h)
    b = mean(h * h)
    output h
}
"""
    x = np.ones((8, 4), np.float32)

    def losses(first: bool) -> list[float]:
        model = dln.compile(src, backend="numpy", seed=2)
        opt_a, opt_b = dln.optimizer(model, "sgd", lr=0.0, loss="a"), dln.optimizer(model, "sgd", lr=0.0, loss="b")
        return ([opt_a.step(x=x)] if first else []) + [opt_b.step(x=x), opt_b.step(x=x)]

    alone, after = losses(False), losses(True)
    assert alone[0] != alone[1]                 # a new mask each step
    assert after[1] != alone[0] and after[1] == alone[1]   # b's step after a's draws as a second step would


def test_copy_from_with_tau_copies_the_running_statistics():
    """Polyak averaging is for parameters: the running statistics and the integer batch count are
    copied as they are (a target network's batch norm normalizes as the online one's does)."""
    src = """
model net {
    input x: f32[B, 4]
    input y: f32[B, 3]
    out = x -> linear(8) -> batchnorm -> linear(3)
    loss = mse(out, y)
    output out
}
"""
    online, target = (dln.compile(src, backend="numpy", seed=s) for s in (1, 2))
    opt = dln.optimizer(online, "sgd", lr=0.1)
    x = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)
    for _ in range(3):
        opt.step(x=x, y=np.zeros((6, 3), np.float32))
    before = target.parameters()
    target.copy_from(online, tau=0.5)
    for name, value in online.buffers().items():
        assert target.buffers()[name].dtype == value.dtype
        np.testing.assert_array_equal(target.buffers()[name], value)
    np.testing.assert_array_equal(target.parameters()["out.linear_0.weight"],
                                  0.5 * online.parameters()["out.linear_0.weight"] + 0.5 * before["out.linear_0.weight"])
    target.copy_from(target, tau=0.5)          # itself: nothing changes
    np.testing.assert_array_equal(target.parameters()["out.linear_0.weight"],
                                  0.5 * online.parameters()["out.linear_0.weight"] + 0.5 * before["out.linear_0.weight"])
