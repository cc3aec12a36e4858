"""Training-batch augmentation, and choosing among several train sections."""

import numpy as np
import pytest

import dln
from dln.compiler.values import TrainValue
from dln.runtime import data


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
