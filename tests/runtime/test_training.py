"""`dln.train` as a user meets it (LANGUAGE.md §8): data, schedules, early stopping, checkpoints.

NumPy backend only.  Two kinds of programs:

- small classifiers on the built-in data sets, for "it learns";
- a one-parameter probe, `loss = mean(x * w)`, trained with plain SGD on data
  of ones: its gradient is exactly the mean of x, so after training
  `w = -sum(lr used at each step * mean(x of that batch))`.  That turns the
  final weight into an exact record of the learning rates the optimizer
  really applied, which torch's schedulers (or the schedule's formula) give
  independently.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

import dln
from dln.runtime import checkpoint

from conftest import EXAMPLES

QUIET = {"progress": False, "log": lambda s: None}

CLASSIFIER = """\
model cls(features: int = 4, classes: int = 3, hidden: int = 16, p: float = 0.1) {
    input x: f32[B, features]
    input y: i64[B]
    logits = x -> linear(hidden) -> relu -> dropout(p) -> linear(classes)
    loss   = cross_entropy(logits, y)
    output logits
}

train cls {
    data      = dataset("iris")
    validate  = 0.25
    optimizer = adam(lr = 0.01)
    batch     = 16
    epochs    = 3
}
"""

GAN = """\
model generator(z: int = 16, d: int = 64) {
    input noise: f32[B, z]
    output image = noise -> linear(128) -> leaky_relu(0.2) -> linear(d) -> sigmoid
}

model discriminator(d: int = 64) {
    input image: f32[B, d]
    output score = image -> linear(128) -> leaky_relu(0.2) -> linear(1)
}

model gan(z: int = 16, d: int = 64) {
    input noise: f32[B, z]
    input real:  f32[B, d]
    G = generator(z = z, d = d)          # instance: parameters G.*
    D = discriminator(d = d)             # instance: parameters D.*
    fake   = G(noise)
    d_loss = bce_with_logits(D(real), 1.0) + bce_with_logits(D(detach(fake)), 0.0)
    g_loss = bce_with_logits(D(fake), 1.0)       # targets broadcast to the input
    output fake
}

train gan {
    data   = dataset("digits")
    inputs = { real = "x", noise = randn }     # rename an array; fill an input with N(0,1) each step
    minimize d_loss over D with adam(lr = 2e-4, betas = (0.5, 0.999))
    minimize g_loss over G with adam(lr = 2e-4, betas = (0.5, 0.999))
    epochs = 50
}
"""


def write(dir: Path, name: str, text: str) -> Path:
    dir.mkdir(parents=True, exist_ok=True)
    path = dir / name
    path.write_text(text)
    return path


def without_time(history) -> list[dict]:
    return [{k: v for k, v in e.items() if k != "time"} for e in history.epochs]


def assert_same_params(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# ---- it learns ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, features, classes, at_least", [
    ("iris", 4, 3, 0.80),            # chance: 1/3
    ("wine", 13, 3, 0.85),           # chance: 0.40 (the largest class)
    ("breast_cancer", 30, 2, 0.90),  # chance: 0.63 (the largest class)
])
def test_small_data_sets_learn(name, features, classes, at_least):
    source = CLASSIFIER.replace('"iris"', f'"{name}"')
    history = dln.train(source, epochs=10, features=features, classes=classes, **QUIET)
    assert len(history) == 10
    assert history[-1]["val_accuracy"] >= at_least
    assert history[-1]["loss"] < history[0]["loss"]


def test_digits_example_reaches_96_percent():
    """The README's main claim, with the example's own settings."""
    history = dln.train(EXAMPLES / "mlp_digits.dln", **QUIET)
    assert len(history) == 30
    assert history[-1]["val_accuracy"] >= 0.96
    assert set(history[-1]) >= {"epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "time"}


def test_hyperparameter_overrides_and_unknown_names():
    history = dln.train(CLASSIFIER, epochs=1, hidden=5, **QUIET)
    assert history.model.parameters()["logits.linear_0.weight"].shape == (5, 4)
    with pytest.raises(dln.DlnError) as info:
        dln.train(CLASSIFIER, epochs=1, hiden=5, **QUIET)
    assert info.value.code == "E0402" and "hiden" in str(info.value)


@pytest.mark.parametrize("override", [
    {"batch": 0}, {"epochs": -1}, {"epochs": "3"}, {"seed": -1}, {"validate": 1.5}, {"clip_grad": -1.0},
], ids=lambda o: "-".join(f"{k}={v!r}" for k, v in o.items()))
def test_bad_setting_overrides_are_user_errors(override):
    """Settings given to dln.train obey the rules the train section's own settings do."""
    with pytest.raises(dln.DlnError) as info:
        dln.train(CLASSIFIER, **override, **QUIET)
    assert info.value.code == "E0601"
    assert next(iter(override)) in str(info.value)


def test_same_seed_same_history_other_seed_differs():
    a = dln.train(CLASSIFIER, seed=5, **QUIET)
    b = dln.train(CLASSIFIER, seed=5, **QUIET)
    c = dln.train(CLASSIFIER, seed=6, **QUIET)
    assert without_time(a) == without_time(b)
    assert_same_params(a.model.parameters(), b.model.parameters())
    assert without_time(a) != without_time(c)
    assert not np.array_equal(a.model.parameters()["logits.linear_0.weight"],
                              c.model.parameters()["logits.linear_0.weight"])


# ---- data --------------------------------------------------------------------------------------------------------
def test_npz_and_csv_are_read_relative_to_the_dln_file(tmp_path: Path, monkeypatch):
    rng = np.random.default_rng(0)
    project = tmp_path / "project"
    x = rng.standard_normal((200, 2)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    project.mkdir()
    np.savez(project / "train.npz", x=x[:150], y=y[:150])
    np.savez(project / "val.npz", x=x[150:], y=y[150:])
    rows = "\n".join(f"{a!r},{b!r},{int(c)}" for (a, b), c in zip(x[:150].tolist(), y[:150]))
    (project / "table.csv").write_text("a,b,label\n" + rows + "\n")
    base = CLASSIFIER.replace("validate  = 0.25", 'validate  = npz("val.npz")')
    npz_file = write(project, "npz.dln", base.replace('dataset("iris")', 'npz("train.npz")'))
    csv_file = write(project, "csv.dln", base.replace('dataset("iris")', 'csv("table.csv", target = "label")'))

    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")   # not the files' directory
    for path in (npz_file, csv_file):
        history = dln.train(path, epochs=5, features=2, classes=2, **QUIET)
        assert history[-1]["val_accuracy"] >= 0.9, path.name   # chance: about 0.5

    missing = write(project, "missing.dln", base.replace('dataset("iris")', 'npz("nowhere.npz")'))
    with pytest.raises(dln.DlnError) as info:
        dln.train(missing, features=2, classes=2, **QUIET)
    assert info.value.code == "E0603" and "nowhere.npz" in str(info.value)


@pytest.mark.parametrize("name,content,says", [
    ("table.csv", "a,b,label\n", "has a header but no rows"),
    ("table.csv", "a,b,label\n1,2,0\n3,4\n", "row 2 has 2 values"),
    ("train.npz", b"PK\x03\x04garbage", "cannot read"),
    ("train.npz", b"", "cannot read"),
])
def test_unreadable_data_files_are_diagnostics(tmp_path: Path, name: str, content, says: str):
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    reader = 'csv("table.csv")' if name.endswith(".csv") else 'npz("train.npz")'
    source = write(tmp_path, "m.dln", CLASSIFIER.replace('dataset("iris")', reader))
    with pytest.raises(dln.DlnError) as info:
        dln.train(source, **QUIET)
    assert info.value.code == "E0603" and says in str(info.value), str(info.value)
    assert info.value.diagnostics[0].span is not None


@pytest.mark.parametrize("arrays,says", [({}, "holds no arrays"), ({"x": np.float32(1.0)}, "a single number")])
def test_npz_files_without_arrays_of_examples_are_diagnostics(tmp_path: Path, arrays, says: str):
    np.savez(tmp_path / "train.npz", **arrays)
    source = write(tmp_path, "m.dln", CLASSIFIER.replace('dataset("iris")', 'npz("train.npz")'))
    with pytest.raises(dln.DlnError) as info:
        dln.train(source, **QUIET)
    assert info.value.code == "E0603" and says in str(info.value), str(info.value)


def test_an_npy_file_named_npz_is_a_diagnostic(tmp_path: Path):
    with open(tmp_path / "train.npz", "wb") as f:
        np.save(f, np.zeros((4, 4), np.float32))
    source = write(tmp_path, "m.dln", CLASSIFIER.replace('dataset("iris")', 'npz("train.npz")'))
    with pytest.raises(dln.DlnError) as info:
        dln.train(source, **QUIET)
    assert info.value.code == "E0603" and "not named arrays" in str(info.value)


def test_an_input_without_data_is_reported():
    source = CLASSIFIER.replace("input x:", "input feats:").replace("logits = x", "logits = feats")
    with pytest.raises(dln.DlnError) as info:
        dln.train(source, epochs=1, **QUIET)
    assert info.value.code == "E0603"
    assert "'feats'" in str(info.value) and "inputs = {" in str(info.value)
    # and a rename fixes it
    renamed = source.replace("train cls {", 'train cls {\n    inputs = { feats = "x" }')
    assert len(dln.train(renamed, epochs=1, **QUIET)) == 1


PROBE = """\
model probe() {
    input x: f64[B, @K@]
    param w: f64[@K@] = zeros
    loss = sum(mean(x * w, axis = 0))
    output loss
}

train probe {
    data      = npz("train.npz")
    optimizer = sgd(lr = @LR@)
    batch     = @BATCH@
    epochs    = @EPOCHS@
    @SETTINGS@
}
"""


def probe(dir: Path, x: np.ndarray, lr: float = 0.5, batch: int = 4, epochs: int = 5, settings: str = "",
          val: np.ndarray | None = None) -> Path:
    """The probe program over `x` (rows of examples), with `settings` added to its train section."""
    dir.mkdir(parents=True, exist_ok=True)
    np.savez(dir / "train.npz", x=x)
    if val is not None:
        np.savez(dir / "val.npz", x=val)
    fills = {"K": x.shape[1], "LR": repr(lr), "BATCH": batch, "EPOCHS": epochs, "SETTINGS": settings}
    text = PROBE
    for key, value in fills.items():
        text = text.replace(f"@{key}@", str(value))
    return write(dir, "probe.dln", text)


def test_validate_fraction_holds_out_a_disjoint_part(tmp_path: Path):
    n = 50
    ids = np.arange(1, n + 1, dtype=np.float64)
    x = np.stack([np.ones(n), ids], axis=1)          # column 0 counts steps, column 1 sums ids
    path = probe(tmp_path, x, lr=1.0, batch=1, epochs=1, settings="validate = 0.2")
    for fraction in (None, 0.5):
        overrides = {} if fraction is None else {"validate": fraction}
        history = dln.train(path, **overrides, **QUIET)
        held = round(n * (fraction or 0.2))
        w0, w1 = history.model.parameters()["w"]
        # one step per training example, each moving w by -x
        assert -w0 == n - held
        train_ids = -w1
        # validation: the mean of w . x over the held-out examples
        val_mean_id = (history[-1]["val_loss"] - w0) / w1
        assert math.isclose(train_ids + val_mean_id * held, ids.sum(), rel_tol=1e-9)
    # no validation, no validation metrics
    history = dln.train(path, validate=0.0, **QUIET)
    assert "val_loss" not in history[-1] and -history.model.parameters()["w"][0] == n


# ---- schedules ---------------------------------------------------------------------------------------------------
N, BATCH, EPOCHS, LR = 10, 4, 6, 0.5
STEPS_PER_EPOCH = math.ceil(N / BATCH)


def step_rates(formula) -> list[list[float]]:
    """The rate of every step, epoch by epoch, from a per-step formula."""
    total = STEPS_PER_EPOCH * EPOCHS
    rates = [formula(s, total) for s in range(total)]
    return [rates[e * STEPS_PER_EPOCH:(e + 1) * STEPS_PER_EPOCH] for e in range(EPOCHS)]


def torch_epoch_rates(make_scheduler, val_losses=None) -> list[list[float]]:
    """The rate of every step, epoch by epoch, from a torch scheduler stepped once an epoch."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=LR)
    sched = make_scheduler(opt)
    out = []
    for e in range(EPOCHS):
        out.append([opt.param_groups[0]["lr"]] * STEPS_PER_EPOCH)
        opt.step()
        sched.step(val_losses[e]) if val_losses is not None else sched.step()
    return out


def cosine_warmup(warmup):
    def rate(s, total):
        if s < warmup:
            return LR * (s + 1) / warmup
        return LR * 0.5 * (1 + math.cos(math.pi * (s - warmup) / (total - warmup)))
    return rate


def linear_warmup(warmup):
    def rate(s, total):
        if s < warmup:
            return LR * (s + 1) / warmup
        return LR * max(0.0, 1 - (s - warmup) / (total - warmup))
    return rate


SCHEDULES = {
    "cosine": ("cosine(warmup = 4)", lambda h: step_rates(cosine_warmup(4))),
    "linear": ("linear(warmup = 2)", lambda h: step_rates(linear_warmup(2))),
    "step": ("step(every = 2, gamma = 0.5)",
             lambda h: torch_epoch_rates(lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.5))),
    "exponential": ("exponential(gamma = 0.7)",
                    lambda h: torch_epoch_rates(lambda o: torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.7))),
    "plateau": ("plateau(patience = 1, factor = 0.5)",
                lambda h: torch_epoch_rates(
                    lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(o, patience=1, factor=0.5),
                    [e["val_loss"] for e in h.epochs])),
}


@pytest.mark.parametrize("kind", list(SCHEDULES))
def test_schedule_rates_applied_and_reported(tmp_path: Path, kind: str):
    text, expected = SCHEDULES[kind]
    # validation data on which the loss only gets worse: the plateau schedule reacts to it
    path = probe(tmp_path, np.ones((N, 1)), lr=LR, batch=BATCH, epochs=EPOCHS,
                 settings=f"schedule = {text}\n    validate = npz(\"val.npz\")", val=-np.ones((N, 1)))
    history = dln.train(path, **QUIET)
    rates = expected(history)
    assert len(history) == EPOCHS
    # the rates the optimizer applied: each step moves w by -rate (the gradient is exactly 1)
    w = history.model.parameters()["w"][0]
    assert math.isclose(-w, sum(map(sum, rates)), rel_tol=1e-12), (w, rates)
    # the rate reported for an epoch is one that epoch's steps used
    for e, (record, used) in enumerate(zip(history.epochs, rates)):
        assert min(used) - 1e-12 <= record["lr"] <= max(used) + 1e-12, \
            f"epoch {e + 1}: reported lr {record['lr']}, its steps used {used}"


def test_schedule_actually_changes_the_rate(tmp_path: Path):
    """The probe above would pass for a constant rate only if the formulas were constant: make sure not."""
    path = probe(tmp_path, np.ones((N, 1)), lr=LR, batch=BATCH, epochs=EPOCHS)
    constant = -dln.train(path, **QUIET).model.parameters()["w"][0]
    assert math.isclose(constant, LR * STEPS_PER_EPOCH * EPOCHS, rel_tol=1e-12)
    for _, expected in list(SCHEDULES.values())[:4]:
        assert not math.isclose(sum(map(sum, expected(None))), constant)


# ---- early stopping ----------------------------------------------------------------------------------------------
def test_early_stop_stops_and_keeps_the_best_weights(tmp_path: Path):
    # training moves w down; on the validation data that only makes the loss worse, from epoch 1 on
    path = probe(tmp_path, np.ones((N, 1)), settings='early_stop = patience(2)\n    validate = npz("val.npz")',
                 epochs=20, val=-np.ones((N, 1)))
    lines: list[str] = []
    history = dln.train(path, progress=False, log=lines.append)
    assert [e["epoch"] for e in history.epochs] == [1, 2, 3]
    assert history.best("val_loss")["epoch"] == 1
    assert any("early stop" in line for line in lines)
    best = dln.train(path, epochs=1, **QUIET).model.parameters()
    assert_same_params(history.model.parameters(), best)


def test_early_stop_waits_while_improving(tmp_path: Path):
    path = probe(tmp_path, np.ones((N, 1)), settings='early_stop = patience(1)\n    validate = npz("val.npz")',
                 epochs=4, val=np.ones((N, 1)))
    assert len(dln.train(path, **QUIET)) == 4


# ---- clip_grad ---------------------------------------------------------------------------------------------------
def test_clip_grad_matches_torch(tmp_path: Path):
    """Full-batch SGD with clip_grad through `dln.train`, against torch's loop with clip_grad_norm_."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((12, 4))
    y = rng.integers(0, 3, 12)
    source = CLASSIFIER.replace("f32[", "f64[").replace('dataset("iris")', 'npz("d.npz")') \
        .replace("validate  = 0.25", "").replace("adam(lr = 0.01)", "sgd(lr = 0.5, momentum = 0.9)") \
        .replace("batch     = 16", "batch = 12")
    np.savez(tmp_path / "d.npz", x=x, y=y)
    path = write(tmp_path, "clip.dln", source)

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)).double()
    names = {f"{i}.{leaf}": f"logits.linear_{k}.{leaf}" for k, i in enumerate((0, 2)) for leaf in ("weight", "bias")}
    start = {names[name]: p.detach().numpy().copy() for name, p in net.named_parameters()}
    weights = tmp_path / "start.safetensors"
    checkpoint.save_arrays(weights, start)
    history = dln.train(path, p=0.0, clip_grad=0.05, epochs=4, weights=str(weights), **QUIET)

    opt = torch.optim.SGD(net.parameters(), lr=0.5, momentum=0.9)
    norms = []
    for _ in range(4):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(net.parameters(), 0.05)))
        opt.step()
    assert min(norms) > 0.05 * 2   # clipping really acted on every step
    ours = history.model.parameters()
    for name, p in net.named_parameters():
        np.testing.assert_allclose(ours[names[name]], p.detach().numpy(), rtol=0, atol=1e-12, err_msg=name)


# ---- several objectives, renamed and filled inputs ---------------------------------------------------------------
def test_gan_trains_both_objectives(tmp_path: Path):
    path = write(tmp_path, "gan.dln", GAN)
    start = dln.compile(path, model="gan").parameters()
    history = dln.train(path, epochs=2, **QUIET)
    assert len(history) == 2
    for record in history.epochs:
        assert {"d_loss", "g_loss"} <= record.keys()
        assert math.isfinite(record["d_loss"]) and math.isfinite(record["g_loss"])
        assert record["d_loss"] > 0 and record["g_loss"] > 0
    after = history.model.parameters()
    assert after.keys() == start.keys()
    assert any(k.startswith("G.") for k in after) and any(k.startswith("D.") for k in after)
    for k in after:
        assert not np.array_equal(after[k], start[k]), f"{k} was not trained"


def test_minimize_over_an_instance_trains_only_its_parameters(tmp_path: Path):
    only_d = GAN.replace("    minimize g_loss over G with adam(lr = 2e-4, betas = (0.5, 0.999))\n", "")
    path = write(tmp_path, "gan_d.dln", only_d)
    start = dln.compile(path, model="gan").parameters()
    after = dln.train(path, epochs=1, **QUIET).model.parameters()
    for k in after:
        if k.startswith("G."):
            np.testing.assert_array_equal(after[k], start[k], err_msg=k)
        else:
            assert not np.array_equal(after[k], start[k]), k


# ---- checkpoints -------------------------------------------------------------------------------------------------
def checkpoint_files(ckpt: Path) -> list[str]:
    """The files of a checkpoint directory but the run's metrics and pictures (dln.runtime.monitor)."""
    from dln.runtime import monitor

    return sorted(p.name for p in ckpt.iterdir()
                  if p.name not in (monitor.METRICS, monitor.CURVES) and not monitor.EVENTS.fullmatch(p.name))


def test_checkpoint_files_are_safetensors_and_json(tmp_path: Path):
    ckpt = tmp_path / "run"
    history = dln.train(CLASSIFIER, epochs=2, checkpoint=str(ckpt), **QUIET)
    # state.json commits a checkpoint by naming its files; weights.safetensors is the latest for people.
    # The previous checkpoint (epoch 1) is kept until the next one is committed: a fallback.
    assert checkpoint_files(ckpt) == ["optimizer-1.safetensors", "optimizer-2.safetensors", "state.json",
                                      "weights-1.safetensors", "weights-2.safetensors", "weights.safetensors"]
    for p in ckpt.iterdir():
        assert not p.read_bytes().startswith(b"\x80"), f"{p.name} looks like a pickle"
    weights = load_file(str(ckpt / "weights.safetensors"))
    assert_same_params(weights, history.model.parameters())
    assert_same_params(load_file(str(ckpt / "weights-2.safetensors")), history.model.parameters())
    optimizer = load_file(str(ckpt / "optimizer-2.safetensors"))
    for name, value in weights.items():   # adam: two moments per parameter, shaped like it
        moments = [v for k, v in optimizer.items() if name in k]
        assert len(moments) == 2 and all(m.shape == value.shape for m in moments), name
    state = json.loads((ckpt / "state.json").read_text())
    assert state["epochs_done"] == 2
    assert [e["epoch"] for e in state["history"]] == [1, 2]
    assert state["previous"]["epochs_done"] == 1 and "previous" not in state["previous"]
    assert state["previous"]["files"] == {"weights": "weights-1.safetensors", "optimizer": "optimizer-1.safetensors"}


def test_resume_continues_like_an_uninterrupted_run(tmp_path: Path, capsys):
    ckpt = tmp_path / "run"
    first = dln.train(CLASSIFIER, epochs=2, checkpoint=str(ckpt), **QUIET)
    capsys.readouterr()
    resumed = dln.train(CLASSIFIER, epochs=4, checkpoint=str(ckpt), progress=False)
    lines = capsys.readouterr().out.splitlines()
    assert any("resuming" in line for line in lines)
    assert sum(line.startswith("epoch") for line in lines) == 2      # epochs 3 and 4 only
    assert [e["epoch"] for e in resumed.epochs] == [1, 2, 3, 4]
    assert without_time(resumed)[:2] == without_time(first)

    straight = dln.train(CLASSIFIER, epochs=4, **QUIET)
    assert without_time(resumed) == without_time(straight)
    assert_same_params(resumed.model.parameters(), straight.model.parameters())

    # once done, running again trains no further
    lines = []
    again = dln.train(CLASSIFIER, epochs=4, checkpoint=str(ckpt), progress=False, log=lines.append)
    assert not any(line.startswith("epoch") for line in lines)
    assert_same_params(again.model.parameters(), straight.model.parameters())


def test_resume_with_filled_inputs_is_uninterrupted(tmp_path: Path):
    """`noise = randn` draws fresh values each step: a resumed run must draw what the uninterrupted one did."""
    source = CLASSIFIER.replace("input y: i64[B]", "input y: i64[B]\n    input noise: f32[B, features]") \
        .replace("logits = x ->", "logits = (x + 0.5 * noise) ->") \
        .replace("train cls {", "train cls {\n    inputs = { noise = randn }")
    ckpt = tmp_path / "run"
    dln.train(source, epochs=1, checkpoint=str(ckpt), **QUIET)
    resumed = dln.train(source, epochs=2, checkpoint=str(ckpt), **QUIET)
    straight = dln.train(source, epochs=2, **QUIET)
    assert_same_params(resumed.model.parameters(), straight.model.parameters())


def test_resume_keeps_the_early_stopping_state(tmp_path: Path):
    path = probe(tmp_path, np.ones((N, 1)), settings='early_stop = patience(3)\n    validate = npz("val.npz")',
                 epochs=10, val=-np.ones((N, 1)))
    straight = dln.train(path, **QUIET)
    assert len(straight) == 4    # best at epoch 1, then three worse
    dln.train(path, epochs=2, checkpoint=str(tmp_path / "run"), **QUIET)
    resumed = dln.train(path, checkpoint=str(tmp_path / "run"), **QUIET)
    assert [e["epoch"] for e in resumed.epochs] == [e["epoch"] for e in straight.epochs]
    assert_same_params(resumed.model.parameters(), straight.model.parameters())


# ---- crash safety ------------------------------------------------------------------------------------------------
class Crash(OSError):
    pass


def crashing_save_file(real, when=lambda path: True):
    """A safetensors writer that writes half a file and fails, for the paths `when` picks."""
    def save_file(tensors, filename, metadata=None):
        if not when(Path(filename)):
            return real(tensors, filename, metadata=metadata)
        real(tensors, filename, metadata=metadata)
        data = Path(filename).read_bytes()
        Path(filename).write_bytes(data[: len(data) // 2])
        raise Crash("disk full")
    return save_file


def test_atomic_write_never_leaves_a_partial_file(tmp_path: Path, monkeypatch):
    path = tmp_path / "w.safetensors"
    old = {"a": np.arange(1000, dtype=np.float32)}
    checkpoint.save_arrays(path, old)
    monkeypatch.setattr(checkpoint, "save_file", crashing_save_file(checkpoint.save_file))
    with pytest.raises(Crash):
        checkpoint.save_arrays(path, {"a": np.zeros(1000, np.float32)})
    assert_same_params(load_file(str(path)), old)
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]   # no temporary file left

    state = tmp_path / "state.json"
    checkpoint.save_json(state, {"epochs_done": 1})

    def failing_fsync(fd):
        raise Crash("power cut")
    monkeypatch.setattr(checkpoint.os, "fsync", failing_fsync)
    with pytest.raises(Crash):
        checkpoint.save_json(state, {"epochs_done": 2})
    assert json.loads(state.read_text()) == {"epochs_done": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json", "w.safetensors"]


def test_a_crash_while_checkpointing_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch):
    """A failure while writing epoch 3's checkpoint: the directory must still hold epoch 2's, whole."""
    ckpt = tmp_path / "run"
    after_two = dln.train(CLASSIFIER, epochs=2, checkpoint=str(ckpt), **QUIET).model.parameters()
    monkeypatch.setattr(checkpoint, "save_file", crashing_save_file(
        checkpoint.save_file, when=lambda p: p.name.startswith("optimizer-3.safetensors")))
    with pytest.raises(dln.DlnError) as info:
        dln.train(CLASSIFIER, epochs=3, checkpoint=str(ckpt), **QUIET)
    assert info.value.code == "E0708" and "disk full" in str(info.value)
    monkeypatch.undo()
    state = json.loads((ckpt / "state.json").read_text())
    assert state["epochs_done"] == 2
    # the committed files describe epoch 2, whole
    assert_same_params(load_file(str(ckpt / state["files"]["weights"])), after_two)
    assert_same_params(load_file(str(ckpt / "weights.safetensors")), after_two)
    resumed = dln.train(CLASSIFIER, epochs=3, checkpoint=str(ckpt), **QUIET)
    straight = dln.train(CLASSIFIER, epochs=3, **QUIET)
    assert_same_params(resumed.model.parameters(), straight.model.parameters())


# ---- a state.json is data from disk: it names files, and nothing else ------------------------------------------
def _tamper(ckpt: Path, change) -> None:
    state = json.loads((ckpt / "state.json").read_text())
    change(state)
    (ckpt / "state.json").write_text(json.dumps(state))


@pytest.mark.parametrize("change", [
    lambda s: s["files"].update(optimizer="../victim.safetensors"),
    lambda s: s["files"].update(weights=str(Path("..") / "run" / "weights-1.safetensors")),
    lambda s: s["files"].update(weights="/etc/passwd"),
    lambda s: s["files"].update(weights="optimizer-1.safetensors"),   # a file of ours, under the wrong kind
    lambda s: s["files"].update(best="state.json"),
    lambda s: s["files"].update(weights=3),
    lambda s: s.update(files=["weights-1.safetensors"]),
    lambda s: s["files"].pop("weights"),
    lambda s: s.pop("step_counts"),
    lambda s: s.update(epochs_done="many"),
], ids=["parent", "dotdot", "absolute", "wrong_kind", "not_a_weights_file", "not_a_name", "not_a_table",
        "no_weights", "incomplete", "not_a_number"])
def test_resuming_from_a_damaged_checkpoint_is_a_diagnostic(tmp_path: Path, change):
    ckpt = tmp_path / "run"
    dln.train(CLASSIFIER, epochs=1, checkpoint=str(ckpt), **QUIET)
    victim = tmp_path / "victim.safetensors"
    victim.write_bytes(b"not ours")
    _tamper(ckpt, change)
    with pytest.raises(dln.DlnError) as info:
        dln.train(CLASSIFIER, epochs=2, checkpoint=str(ckpt), **QUIET)
    assert info.value.code == "E0707" and "damaged checkpoint" in str(info.value), str(info.value)
    assert victim.read_bytes() == b"not ours"
    assert checkpoint_files(ckpt) == ["optimizer-1.safetensors", "state.json", "weights-1.safetensors",
                                      "weights.safetensors"]


def test_a_state_json_changed_during_training_deletes_nothing_outside_the_directory(tmp_path: Path):
    """Saving epoch 3 deletes epoch 1's files: the names the trainer committed itself, never what a
    state.json changed on disk meanwhile names."""
    ckpt = tmp_path / "run"
    victim = tmp_path / "victim.safetensors"
    victim.write_bytes(b"not ours")

    def log(line: str) -> None:   # called for each epoch before its checkpoint is written
        if line.startswith(("epoch 2", "epoch 3")):
            _tamper(ckpt, lambda s: s["files"].update(optimizer="../victim.safetensors"))

    history = dln.train(CLASSIFIER, epochs=3, checkpoint=str(ckpt), progress=False, log=log)
    assert victim.read_bytes() == b"not ours"
    assert json.loads((ckpt / "state.json").read_text())["files"]["optimizer"] == "optimizer-3.safetensors"
    assert_same_params(dln.train(CLASSIFIER, epochs=3, checkpoint=str(ckpt), **QUIET).model.parameters(),
                       history.model.parameters())
