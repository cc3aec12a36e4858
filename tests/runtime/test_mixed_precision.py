"""Mixed precision on the NumPy backend against PyTorch's: `bf16-mixed` against `torch.autocast("cpu",
torch.bfloat16)`, `16-mixed` against `torch.autocast("cpu", torch.float16)` with `torch.amp.GradScaler`.

Both sides start from dln's initial weights and take the same batches of the digits through Adam.  The
bounds are the measured agreement widened a little, and each test also checks that float32 training is
farther from the twin than the bound: a mode that cast nothing, or rounded differently, fails.

Measured (20 steps, lr 1e-2): the 64-37-10 MLP under bf16-mixed follows torch to 1e-7 in the loss and
6e-8 in the weights (the same roundings, in the same places; float32 training is 4e-3 / 6e-2 away); a
LeNet of two convolutions to 2e-4 / 7e-4 (float32: 1.4e-2 / 0.12); under 16-mixed the MLP to 7e-6 /
1.3e-5 (float32: 3e-5 / 4e-4).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.numpy import load_file

import dln
from dln.compiler.training import SCALER
from dln.runtime.numpy_ops import round_bf16
from conftest import run_dln

ROOT = Path(__file__).resolve().parents[2]
MLP = str(ROOT / "examples" / "mlp_digits.dln")
LENET = """
model lenet() {
    input images: f32[B, 1, 8, 8]
    input y: i64[B]
    h1     = conv2d(images, 6, 3, padding = 1) -> relu -> maxpool2d(2)
    h2     = conv2d(h1, 11, 3, padding = 1) -> relu -> maxpool2d(2)
    fc     = h2 -> flatten -> linear(37) -> relu
    logits = fc -> linear(10)
    loss   = cross_entropy(logits, y)
    output logits
}
"""
STEPS, BATCH, LR = 20, 50, 1e-2
LOW = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


class LeNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.h1, self.h2 = nn.Conv2d(1, 6, 3, padding=1), nn.Conv2d(6, 11, 3, padding=1)
        self.fc, self.logits = nn.Linear(44, 37), nn.Linear(37, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.h1(x)), 2)
        x = F.max_pool2d(F.relu(self.h2(x)), 2)
        return self.logits(F.relu(self.fc(x.flatten(1))))


@pytest.fixture(scope="module")
def digits(twins):
    d = twins.digits()
    return d["x"].astype(np.float32), d["y"]


def _twin(model, net: nn.Module) -> nn.Module:
    net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in model.state_dict().items()})
    return net


def _torch_steps(net, batches, precision, scaler=None, lr=LR):
    """`net` trained on `batches` under autocast (None: float32): the losses, and the scaler's scale
    and the optimizer's step count after each step where there is a scaler."""
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    losses, trace = [], []
    for inputs, y in batches:
        opt.zero_grad()
        with torch.autocast("cpu", LOW.get(precision, torch.bfloat16), enabled=precision is not None):
            loss = F.cross_entropy(net(torch.from_numpy(inputs)), torch.from_numpy(y))
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            state = opt.state[next(net.parameters())]
            trace.append((scaler.get_scale(), int(state["step"]) if state else 0))
        losses.append(loss.item())
    return np.array(losses), trace


def _batches(x, y, shape=(64,), steps=STEPS, batch=BATCH):
    return [(x[s * batch:(s + 1) * batch].reshape(-1, *shape), y[s * batch:(s + 1) * batch]) for s in range(steps)]


def _follow(source, net, batches, precision, key, hparams):
    model = dln.compile(source, backend="numpy", precision=precision, **hparams)
    twin, float32 = _twin(model, net()), _twin(model, net())
    opt = dln.optimizer(model, "adam", lr=LR)
    ours = np.array([opt.step(**{key: inputs, "y": y}) for inputs, y in batches])
    scaler = torch.amp.GradScaler("cpu") if precision == "16-mixed" else None
    theirs, _ = _torch_steps(twin, batches, precision, scaler)
    plain, _ = _torch_steps(float32, batches, None)
    weights = max(float(np.abs(v - twin.state_dict()[k].numpy()).max()) for k, v in model.parameters().items())
    away = max(float(np.abs(v.detach().numpy() - twin.state_dict()[k].numpy()).max())
               for k, v in float32.state_dict().items())
    return model, opt, ours, theirs, plain, weights, away


@pytest.mark.parametrize("case, loss_rtol, weight_atol", [
    ("mlp bf16-mixed", 1e-5, 1e-6), ("lenet bf16-mixed", 1e-3, 3e-3), ("mlp 16-mixed", 1.5e-5, 5e-5)])
def test_training_follows_torch_autocast(digits, twins, case, loss_rtol, weight_atol):
    name, precision = case.split()
    x, y = digits
    if name == "mlp":
        args = (MLP, lambda: twins.make_mlp(37, 10, 0.0), _batches(x, y), precision, "x", {"hidden": 37, "p": 0.0})
    else:
        args = (LENET, LeNet, _batches(x, y, (1, 8, 8), batch=25), precision, "images", {})
    model, opt, ours, theirs, plain, weights, away = _follow(*args)
    np.testing.assert_allclose(ours, theirs, rtol=loss_rtol, atol=0)
    assert weights <= weight_atol, f"weights {weights:.2g} from the twin's"
    # float32 training fails the bounds
    assert np.max(np.abs(plain - theirs) / theirs) > loss_rtol and away > 4 * weight_atol
    assert np.ptp(theirs) > 0.05, "training did not move"
    # master weights: parameters and optimizer state stay float32
    assert all(v.dtype == np.float32 for v in model.parameters().values())
    assert all(v.dtype == np.float32 for k, v in opt.state_dict().items() if not k.endswith(".step"))


def test_master_weights_take_updates_below_bf16_resolution(digits):
    """Updates far below a bf16 weight's last place still accumulate: the weights are float32 masters
    (a bf16 model, as before mixed precision, loses them).  And the bf16-mixed step reads and writes
    float32 parameters, state and optimizer state; its gradients are float32."""
    x, y = digits
    model = dln.compile("examples/cnn_digits.dln", backend="numpy", precision="bf16-mixed")
    before = model.state_dict()
    opt = dln.optimizer(model, "sgd", lr=1e-6)
    for s in range(3):
        opt.step(images=x[s * 9:(s + 1) * 9].reshape(-1, 1, 8, 8), y=y[s * 9:(s + 1) * 9])
    after = model.state_dict()
    for name in ("conv1.weight", "fc1.weight", "logits.weight"):
        moved = after[name] != before[name]
        assert moved.mean() > 0.5, f"{name}: updates of ~1e-7 lost"
        assert not np.array_equal(round_bf16(after[name].copy()), after[name]), f"{name} holds bf16 values only"
    step = opt.train.graph
    for n in step.inputs:
        if n.attrs["role"] in ("param", "state"):
            assert str(n.dtype) in ("f32", "i64"), f"{n.attrs['name']} is {n.type}"
    assert {str(step.output(o).dtype) for o in opt.train.donate} <= {"f32", "i64"}
    assert any(str(n.dtype) == "bf16" for n in step.nodes if n.op.value in ("matmul", "conv"))
    assert "bn1.running_mean" in model.buffers() and model.buffers()["bn1.running_mean"].dtype == np.float32
    _, grads = model.value_and_grad("loss", images=x[:9].reshape(-1, 1, 8, 8), y=y[:9])
    assert all(g.dtype == np.float32 for g in grads.values())


def test_bf16_values_are_rounded_to_bf16():
    """The NumPy backend held bf16 values in float32 without rounding them: a bf16 model's values were
    not bf16 numbers.  Now every computed bf16 value is, and equals torch's bfloat16 result."""
    source = """
model half() {
    input x: bf16[B, 13]
    param W: bf16[13, 7] = normal(0.0, 0.5)
    y = tanh(x @ W) * 3.0 + x[:, 0:7]
    output y
}
"""
    model = dln.compile(source, backend="numpy")
    x = np.random.default_rng(1).standard_normal((5, 13)).astype(np.float32)
    xb = torch.from_numpy(x).bfloat16()
    y = model(x=xb.float().numpy())["y"]
    assert np.array_equal(round_bf16(y.copy()), y), "bf16 values that bf16 cannot hold"
    w = torch.from_numpy(model.parameters()["W"]).bfloat16()
    want = (torch.tanh(xb @ w) * 3.0 + xb[:, :7]).float().numpy()
    np.testing.assert_array_equal(y, want)


def test_round_bf16_is_torchs_conversion():
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2 ** 32, 20000, dtype=np.uint64).astype(np.uint32)
    special = np.array([0x3F808000, 0x3F818000, 0x7F7FFFFF, 0x7F7F8000, 0x00000001, 0x807FFFFF, 0x7F800000,
                        0xFF800000, 0x7FC00000, 0x7F800001, 0xFFFFFFFF, 0x80000000], np.uint32)
    a = np.concatenate([bits, special]).view(np.float32)
    want = torch.from_numpy(a.copy()).bfloat16().float().numpy()
    got = round_bf16(a.copy())
    same = (got.view(np.uint32) == want.view(np.uint32)) | (np.isnan(got) & np.isnan(want))
    assert same.all(), a[~same][:5]


def _scaled_run(model, batches, load, steps):
    opt = dln.optimizer(model, "adam", lr=LR)
    opt.load_state_dict({**opt.state_dict(), **load})
    trace = []
    for inputs, y in batches[:steps]:
        opt.step(x=inputs, y=y)
        state = opt.state_dict()
        trace.append((float(state["optim.loss.amp.scale"]), opt.count, opt.metrics["amp_skipped"]))
    return opt, trace


def test_overflowing_steps_are_skipped_as_gradscaler_does(digits, twins):
    """From a scale of 2**24 the f16 backward overflows: GradScaler skips the step (parameters, Adam's
    moments and step count unchanged) and halves the scale, until the gradients fit."""
    x, y = digits
    model = dln.compile(MLP, backend="numpy", precision="16-mixed", hidden=37, p=0.0)
    twin = _twin(model, twins.make_mlp(37, 10, 0.0))
    before = model.parameters()
    batches = _batches(x, y)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 24)
    _, theirs = _torch_steps(twin, batches[:8], "16-mixed", scaler)
    opt, ours = _scaled_run(model, batches, {"optim.loss.amp.scale": np.float32(2.0 ** 24)}, 8)
    assert [(s, c) for s, c, _ in ours] == theirs
    skipped = [k for k, (_, _, flag) in enumerate(ours) if flag]
    assert skipped[:2] == [0, 1] and len(skipped) < 8, ours   # the first steps overflow, later ones fit
    # the first step skipped: nothing moved, the moments stayed zero
    first = dln.compile(MLP, backend="numpy", precision="16-mixed", hidden=37, p=0.0)
    one, _ = _scaled_run(first, batches, {"optim.loss.amp.scale": np.float32(2.0 ** 24)}, 1)
    assert all(np.array_equal(v, before[k]) for k, v in first.parameters().items())
    assert all(not v.any() for k, v in one.state_dict().items() if k.endswith(("exp_avg", "exp_avg_sq")))
    assert one.count == 0 and float(one.state_dict()["optim.loss.amp.scale"]) == 2.0 ** 23
    for k, v in model.parameters().items():
        np.testing.assert_allclose(v, twin.state_dict()[k].numpy(), atol=5e-5, rtol=0)


def test_an_input_that_overflows_in_f16_skips_the_step(digits):
    x, y = digits
    model = dln.compile(MLP, backend="numpy", precision="16-mixed", hidden=37, p=0.0)
    before = model.parameters()
    opt = dln.optimizer(model, "adam", lr=LR)
    opt.step(x=x[:9] * 1e5, y=y[:9])   # the products pass f16's 65504: the loss is inf, not an error
    assert opt.metrics["amp_skipped"] == 1.0 and opt.count == 0
    assert all(np.array_equal(v, before[k]) for k, v in model.parameters().items())
    assert float(opt.state_dict()["optim.loss.amp.scale"]) == SCALER["init_scale"] * SCALER["backoff_factor"]
    opt.step(x=x[:9], y=y[:9])
    assert opt.metrics["amp_skipped"] == 0.0 and opt.count == 1


def test_the_scale_grows_after_growth_interval_good_steps(digits, twins):
    """GradScaler's growth tracker counts good steps; at growth_interval (2000) the scale doubles and the
    count restarts.  The tracker is state: started at 1998 on both sides, the second step grows it."""
    x, y = digits
    model = dln.compile(MLP, backend="numpy", precision="16-mixed", hidden=37, p=0.0)
    twin = _twin(model, twins.make_mlp(37, 10, 0.0))
    interval = SCALER["growth_interval"]
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=interval)
    scaler.load_state_dict({**scaler.state_dict(), "scale": 1024.0, "_growth_tracker": interval - 2})
    batches = _batches(x, y)[:3]
    _, theirs = _torch_steps(twin, batches, "16-mixed", scaler)
    opt, ours = _scaled_run(model, batches, {"optim.loss.amp.scale": np.float32(1024.0),
                                             "optim.loss.amp.growth_tracker": np.float32(interval - 2)}, 3)
    assert [(s, c) for s, c, _ in ours] == theirs == [(1024.0, 1), (2048.0, 2), (2048.0, 3)]
    assert float(opt.state_dict()["optim.loss.amp.growth_tracker"]) == scaler.state_dict()["_growth_tracker"] == 1


def test_train_section_precision_checkpoint_and_override(tmp_path):
    """`precision = "16-mixed"` in the train section; the scaler's state is checkpointed with the optimizer
    state and restored on resume; `precision=` (as --precision) overrides the file's."""
    source = tmp_path / "mlp.dln"
    text = open(MLP).read().replace("epochs    = 30", 'epochs    = 1\n    precision = "16-mixed"')
    source.write_text(text)
    ckpt = tmp_path / "ckpt"
    history = dln.train(str(source), backend="numpy", hidden=19, checkpoint=str(ckpt), progress=False, log=lambda s: None)
    assert history.model.precision == "16-mixed" and "amp_skipped" in history[-1]
    saved = load_file(str(ckpt / "optimizer-1.safetensors"))
    assert float(saved["optim.loss.amp.scale"]) == SCALER["init_scale"]
    assert float(saved["optim.loss.amp.growth_tracker"]) > 0   # the good steps of the epoch
    logs = []
    resumed = dln.train(str(source), backend="numpy", hidden=19, checkpoint=str(ckpt), epochs=2, progress=False,
                        log=logs.append)
    assert any("resuming" in line for line in logs) and len(resumed) == 2
    again = load_file(str(ckpt / "optimizer-2.safetensors"))
    assert float(again["optim.loss.amp.growth_tracker"]) > float(saved["optim.loss.amp.growth_tracker"])
    other = dln.train(str(source), backend="numpy", hidden=19, precision="bf16-mixed", progress=False,
                      log=lambda s: None, logdir=False)
    assert other.model.precision == "bf16-mixed" and "amp_skipped" not in other[-1]


def test_cli_precision(tmp_path):
    out = run_dln("compile", MLP, "--precision", "bf16-mixed", "-o", str(tmp_path / "a"))
    assert out.returncode == 0, out.stderr
    step = (tmp_path / "a" / "backward.ir").read_text()
    assert "bf16" in step and "matmul" in step
    bad = run_dln("compile", MLP, "--precision", "bf16", "-o", str(tmp_path / "b"))
    assert bad.returncode == 2 and "bf16-mixed" in bad.stderr
