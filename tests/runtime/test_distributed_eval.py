"""Validation among ranks (dln.runtime.batches, Batches.evaluate): N ranks of batch b report one process's
validation figures at batch N·b, also for a model that draws in evaluation mode (a VAE's reparameterisation)
or whose validation feeds filled inputs.

The ranks evaluate the global batches one process does (max(N·b, 256) rows), each rank its contiguous rows
of each; a rank's draws are counted from its first row there (`rng.row`), its filled inputs cut from the
global batch's, and its draw counter advances once per global batch, with rows or without.

Digits' 359 held-out rows in global batches of 256 and 103: 2 ranks of 24 take 128 + 128, then 103 + 0
rows; 3 ranks of 100 (global batches of 300) take 100 + 100 + 100, then 59 + 0 + 0.

Measured (float32): the validation loss equal to one process's on 2 ranks, within 7.3e-8 relative on 3;
every step's loss within 1.7e-7 relative, the final weights within 2.6e-7 absolute.  Before the ranks
evaluated one process's batches, 2 ranks' validation loss was 34.8560 against one process's 34.7515 (3e-3
relative), and on 3 ranks the fill generator drifted, so the second epoch's training lost the trajectory
(3.3e-4 absolute).  The asserts allow 5e-6.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import dln
from dln.compiler import pipeline
from dln.compiler.ir import Op
from tests.runtime.test_distributed import assert_same_trajectory, run_ranks, single

pytest.importorskip("torch.distributed")

VALIDATION = 359   # digits' held-out rows after validate = 0.2
RTOL = 5e-6

# A small VAE on the digits: randn_like draws the latent code's noise in evaluation mode too.
VAE = """
model vae(d: int = 64, z: int = 4) {
    input x: f32[B, d]
    h      = x -> linear(24) -> relu
    mu     = linear(h, z)
    logvar = linear(h, z)
    code   = mu + exp(0.5 * logvar) * randn_like(mu)
    recon  = code -> linear(24) -> relu -> linear(d) -> sigmoid
    kl     = -0.5 * sum(1 + logvar - mu ** 2 - exp(logvar), axis = 1)
    loss   = bce(recon, x, reduction = "sum") / B + mean(kl)
    output recon
}

train vae {
    data      = dataset("digits")
    validate  = 0.2
    optimizer = adam(lr = 3e-3)
    batch     = 24
    epochs    = 1
    seed      = 5
    minimize loss
}
"""

# The same VAE whose validation also feeds a filled input (drawn from the run's fill generator).
VAE_FILLED = VAE.replace("    input x: f32[B, d]\n", "    input x: f32[B, d]\n    input jitter: f32[B, d]\n") \
                .replace("h      = x -> linear(24)", "h      = (x + 0.05 * jitter) -> linear(24)") \
                .replace("    minimize loss", '    inputs    = { jitter = randn }\n    minimize loss')


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_vae_validates_as_one_process_on_two_ranks(tmp_path: Path, monkeypatch):
    path = write(tmp_path, "vae.dln", VAE)
    model = dln.compile(str(path), backend="numpy")
    assert any(n.op is Op.RAND for n in pipeline.forward_graph(model.spec, ["loss"]).nodes), \
        "the model should draw in evaluation mode"
    b, n = 24, 2
    ranks = run_ranks(tmp_path, path, n, {"batch": b})
    one = single(path, {"batch": n * b}, monkeypatch)
    assert "h:val_loss" in one
    assert_same_trajectory(ranks, one, loss_rtol=RTOL, weight_atol=RTOL)


def test_three_ranks_validate_as_one_process_with_ranks_without_rows(tmp_path: Path, monkeypatch):
    """Global batches of 300 (3 ranks of 100): the last, of 59 rows, is rank 0's alone; ranks 1 and 2 run
    nothing but still advance their draw counters and fill generators, so the next epoch's validation (and
    training's filled inputs) draw as one process does.  Two epochs, a filled input."""
    b, n = 100, 3
    assert 0 < VALIDATION % (n * b) <= b
    path = write(tmp_path, "vae_filled.dln", VAE_FILLED)
    settings = {"batch": b, "epochs": 2}
    ranks = run_ranks(tmp_path, path, n, settings)
    one = single(path, {**settings, "batch": n * b}, monkeypatch)
    assert len(one["h:val_loss"]) == 2
    assert_same_trajectory(ranks, one, loss_rtol=RTOL, weight_atol=RTOL)



@pytest.mark.parametrize("backend", ["numpy", "triton"])
def test_a_ranks_evaluation_draws_one_process_s_numbers_for_its_rows(tmp_path: Path, backend: str):
    """Model._run_rows: the VAE's latent code over rows [lo, hi) of a batch, drawn from row lo (`rng.row`),
    is rows [lo, hi) of one process's draw over the whole batch at the same count; a rank without rows
    advances the count as a run does.  On the NumPy backend and the Triton backend's kernels."""
    path = write(tmp_path, "vae.dln", VAE)
    x = np.random.default_rng(0).random((13, 64), np.float32)
    one = dln.compile(str(path), backend=backend)
    whole = one.run(["code"], x=x)["code"]
    for lo, hi in ((0, 5), (5, 13), (13, 13)):
        rank = dln.compile(str(path), backend=backend)
        got = rank._run_rows(["code"], lo, {"x": x[lo:hi]} if hi > lo else None)
        assert rank._rng_step == one._rng_step == 1
        if hi > lo:
            np.testing.assert_allclose(got["code"], whole[lo:hi], rtol=1e-5, atol=1e-6, err_msg=f"rows {lo}:{hi}")
        else:
            assert got == {}
    from_row_0 = dln.compile(str(path), backend=backend).run(["code"], x=x[5:])["code"]
    assert np.abs(from_row_0 - whole[5:]).max() > 1e-2   # drawn as a batch of its own: other numbers
