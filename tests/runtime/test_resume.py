"""Resuming is exact: a run killed (SIGKILL) at random moments and resumed, again and again, ends with
the history and weights of a run never interrupted.

The model draws random numbers in training (dropout, randn_like) and in evaluation (randn_like), and
the recipe keeps state across epochs (plateau's rate, early stopping's best): everything that shapes
the future must be in the checkpoint.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

EPOCHS = 16

NOISY = """\
model noisy() {
    input x: f32[B, 5]
    input t: f32[B, 1]
    h    = x -> linear(7) -> relu -> dropout(0.3)
    mu   = h -> linear(2)
    z    = mu + 0.5 * randn_like(mu)     # draws in evaluation too
    pred = z -> linear(1)
    loss = mse(pred, t)
    output pred
}

train noisy {
    data       = npz("data.npz")
    validate   = 0.3
    batch      = 6
    optimizer  = adam(lr = 0.05)
    schedule   = plateau(patience = 1, factor = 0.5)
    early_stop = patience(3)
}
"""


def _project(tmp_path: Path) -> Path:
    rng = np.random.default_rng(7)
    x = rng.standard_normal((61, 5)).astype(np.float32)
    t = (x @ rng.standard_normal((5, 1)) + 0.1 * rng.standard_normal((61, 1))).astype(np.float32)
    np.savez(tmp_path / "data.npz", x=x, t=t)
    (tmp_path / "noisy.dln").write_text(NOISY)
    return tmp_path / "noisy.dln"


def _command(path: Path, ckpt: Path) -> list[str]:
    return [sys.executable, "-m", "dln", "train", str(path), "--no-progress", "--epochs", str(EPOCHS),
            "--checkpoint", str(ckpt)]


def _final(ckpt: Path) -> tuple[list[dict], dict[str, np.ndarray]]:
    state = json.loads((ckpt / "state.json").read_text())
    history = [{k: v for k, v in e.items() if k != "time"} for e in state["history"]]
    return history, load_file(str(ckpt / state["files"]["weights"]))


def _run_until_killed(command: list[str], rng: np.random.Generator) -> tuple[int, str]:
    """Run `dln train`; SIGKILL it a random moment (0 to 10 ms) after its 1st to 3rd epoch line: while it
    trains the next epoch or writes this epoch's checkpoint.  Its exit status and stderr."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
    target, seen = int(rng.integers(1, 4)), 0
    for line in proc.stdout:
        seen += line.startswith("epoch")
        if seen == target:
            time.sleep(float(rng.uniform(0.0, 0.01)))
            proc.send_signal(signal.SIGKILL)
            break
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def test_killed_and_resumed_runs_match_an_uninterrupted_one(tmp_path: Path):
    path = _project(tmp_path)
    straight = subprocess.run(_command(path, tmp_path / "straight"), capture_output=True, text=True, timeout=120)
    assert straight.returncode == 0, straight.stderr
    want_history, want_weights = _final(tmp_path / "straight")
    # what the test is about happens: the rate is lowered, training stops early
    assert any(e["lr"] < 0.05 for e in want_history) and len(want_history) < EPOCHS, want_history

    rng = np.random.default_rng(2024)
    ckpt = tmp_path / "killed"
    kills = 0
    for attempt in range(3 * EPOCHS):   # a kill before a commit makes no progress
        status, err = _run_until_killed(_command(path, ckpt), rng)
        if status == 0:
            break
        assert status == -signal.SIGKILL, err
        kills += 1
    else:
        raise AssertionError("the resumed runs never finished")
    assert kills >= 3, f"only {kills} kills"
    history, weights = _final(ckpt)
    assert history == want_history
    assert weights.keys() == want_weights.keys()
    for name in weights:
        np.testing.assert_array_equal(weights[name], want_weights[name], err_msg=name)
    # nothing half-written is left behind
    assert not [p.name for p in ckpt.iterdir() if p.name.endswith(".tmp")]
