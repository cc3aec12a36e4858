"""Training-batch augmentation, and choosing among several train sections."""

import numpy as np
import pytest

import dln
from dln.compiler.values import TrainValue
from dln.runtime import data
from dln.runtime.batches import target_inputs
from dln.runtime.train import Trainer


def _spec(kind, **args):
    return TrainValue(kind, tuple(args.items()))


def test_gaussian_noise_changes_float_inputs_only(rng):
    batch = {"x": np.zeros((64, 5), np.float32), "y": np.arange(64)}
    out = data.augment(batch, [_spec("gaussian_noise", std=0.5)], rng)
    assert abs(out["x"].std() - 0.5) < 0.05
    np.testing.assert_array_equal(out["y"], batch["y"])


def test_hflip_and_random_crop_keep_image_shapes(rng):
    images = rng.random((40, 1, 8, 8)).astype(np.float32)
    flipped = data.augment({"images": images}, [_spec("hflip", p=1.0)], rng)["images"]
    np.testing.assert_array_equal(flipped, images[..., ::-1])
    cropped = data.augment({"images": images}, [_spec("random_crop", size=8, padding=1)], rng)["images"]
    assert cropped.shape == images.shape
    moved = ~np.all(cropped == images, axis=(1, 2, 3))
    assert 0 < moved.mean() <= 1  # most crops shift the image


def test_augmentation_reaches_training(tmp_path):
    base = """
model m() {{
    input x: f32[B, 4]
    input y: i64[B]
    loss = cross_entropy(x -> linear(3), y)
    output loss
}}
train m {{ data = dataset("iris")  epochs = 2  seed = 3 {extra} minimize loss }}
"""
    plain = dln.train(base.format(extra=""), progress=False, log=lambda s: None)
    noisy = dln.train(base.format(extra="augment = [gaussian_noise(0.5)]"), progress=False, log=lambda s: None)
    assert plain[-1]["loss"] != noisy[-1]["loss"]


def test_train_picks_the_section_of_the_named_model(tmp_path):
    two = """
model a() { input x: f32[B, 4]  input y: i64[B]  loss = cross_entropy(x -> linear(3), y)  output loss }
model b() { input x: f32[B, 4]  input y: i64[B]  loss = cross_entropy(x -> linear(7) -> relu -> linear(3), y)
            output loss }
train a { data = dataset("iris")  epochs = 1  minimize loss }
train b { data = dataset("iris")  epochs = 2  minimize loss }
"""
    assert len(dln.train(two, model="b", progress=False, log=lambda s: None)) == 2
    assert dln.train(two, model="b", progress=False, log=lambda s: None).model.name == "b"
    with pytest.raises(dln.DlnError):
        dln.train(two, model="c", progress=False, log=lambda s: None)


# ---- what augmentation applies to: model inputs, never the targets of losses -----------------------------------
REGRESSION = """
model reg() {
    input x: f32[B, 3]
    input t: f32[B, 1]
    input clean: f32[B, 3]
    pred  = x -> linear(1)
    recon = x -> linear(3)
    loss  = mse(pred, t * 2.0) + mse(recon, clean)    # t through computation; clean: x without noise
    output pred
}
train reg {
    data    = npz("data.npz")
    inputs  = { clean = "x" }
    augment = [gaussian_noise(0.5)]
    batch   = 7
    epochs  = 2
    minimize loss
}
"""


def test_augmentation_leaves_loss_targets_exact(tmp_path, monkeypatch):
    """Was: gaussian_noise was added to the float target t too (mean(t²) of a constant 1 became 1.80)."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((23, 3)).astype(np.float32)
    np.savez(tmp_path / "data.npz", x=x, t=np.ones((23, 1), np.float32))
    (tmp_path / "reg.dln").write_text(REGRESSION)
    seen = []
    real_step = Trainer._step

    def recording_step(self, feeds, schedules, epoch, *rows):
        seen.append({k: np.array(v) for k, v in feeds.items()})
        return real_step(self, feeds, schedules, epoch, *rows)

    monkeypatch.setattr(Trainer, "_step", recording_step)
    dln.train(tmp_path / "reg.dln", progress=False, log=lambda s: None)
    assert len(seen) == 2 * 4
    noise = []
    for feeds in seen:
        np.testing.assert_array_equal(feeds["t"], 1.0)                          # exact: mean(t²) is 1
        rows = [np.flatnonzero((x == row).all(axis=1)) for row in feeds["clean"]]
        assert all(len(r) == 1 for r in rows), "clean must be rows of x, untouched"
        noise.append(feeds["x"] - x[np.concatenate(rows)])                    # the same rows, plus noise
        assert np.all(noise[-1] != 0)
    assert 0.4 < np.concatenate(noise).std() < 0.6


def test_the_targets_of_a_model_are_found_in_its_graph():
    source = """
model m() {
    input x: f32[B, 4]
    input y: i64[B]
    input w: f32[B, 4]
    input s: f32[B, 1]
    logits = (x * w) -> linear(3)
    loss = cross_entropy(logits, y) + bce_with_logits(logits -> linear(1), sigmoid(s)) + mse(x, 0.0)
    output logits
}
"""
    model = dln.compile(source)
    assert target_inputs(model.train_spec) == {"y", "s"}
