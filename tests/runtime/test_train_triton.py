"""Training on the Triton backend (generated kernels through Triton's CPU interpreter): the trainer's
host-side state — checkpoints, the random counter — works with torch tensors as with NumPy arrays."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

import dln

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton")

QUIET = {"progress": False, "log": lambda s: None}

# Dropout draws from the step graph's random counter (rng.step), a 0-d tensor the checkpoint saves.
TINY = """\
model m() {
    input x: f32[B, 4]
    input y: i64[B]
    loss = cross_entropy(x -> linear(5) -> dropout(0.2) -> linear(3), y)
    output loss
}
train m { data = dataset("iris")  batch = 50  optimizer = adam(lr = 0.01)  minimize loss }
"""


def test_checkpointed_training_resumes_on_triton(tmp_path: Path):
    """Was: `TypeError: only 0-dimensional arrays can be converted to Python scalars` after epoch 1 (the
    backend stored the scalar rng.step as a 1-element tensor)."""
    ckpt = tmp_path / "run"
    first = dln.train(TINY, backend="triton", epochs=2, checkpoint=str(ckpt), **QUIET)
    assert [e["epoch"] for e in first.epochs] == [1, 2]
    resumed = dln.train(TINY, backend="triton", epochs=3, checkpoint=str(ckpt), **QUIET)
    straight = dln.train(TINY, backend="triton", epochs=3, **QUIET)
    assert [e["epoch"] for e in resumed.epochs] == [1, 2, 3]
    for name, value in straight.model.parameters().items():
        np.testing.assert_array_equal(resumed.model.parameters()[name], value, err_msg=name)
    # the same training on the NumPy backend: the same random draws, the same weights up to rounding
    reference = dln.train(TINY, backend="numpy", epochs=3, **QUIET)
    for name, value in reference.model.parameters().items():
        np.testing.assert_allclose(resumed.model.parameters()[name], value, rtol=1e-4, atol=1e-5, err_msg=name)
