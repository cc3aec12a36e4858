"""`dln train`'s outputs (--save, the checkpoint directory) are checked before training starts, and a
trained result is never lost: when the final write fails anyway, the weights go somewhere safe."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from dln.runtime import cli

TINY = """\
model m() {
    input x: f32[B, 4]
    input y: i64[B]
    loss = cross_entropy(x -> linear(5) -> relu -> linear(3), y)
    output loss
}
train m { data = dataset("iris")  epochs = 2  minimize loss }
"""


def _train(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    (tmp_path / "m.dln").write_text(TINY)
    return subprocess.run([sys.executable, "-m", "dln", "train", "m.dln", "--no-progress", *args],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)


def _refused_before_training(result: subprocess.CompletedProcess, path: str) -> None:
    assert result.returncode == 1, result.stderr
    assert "error[E0708]" in result.stderr and path in result.stderr, result.stderr
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr
    assert not any(line.startswith("epoch") for line in result.stdout.splitlines()), result.stdout


def test_save_to_a_directory_is_refused_before_training(tmp_path: Path):
    """Was: trained to the end, then lost the weights with an internal error (IsADirectoryError)."""
    (tmp_path / "out").mkdir()
    result = _train(tmp_path, "--save", "out")
    _refused_before_training(result, "out")
    assert "directory" in result.stderr
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("args, path", [
    (["--save", "blocker/w.safetensors"], "blocker/w.safetensors"),      # under a file
    (["--checkpoint", "blocker"], "blocker"),                            # a file, not a directory
    (["--checkpoint", "blocker/run"], "blocker/run"),
])
def test_unwritable_output_paths_are_refused_before_training(tmp_path: Path, args, path):
    (tmp_path / "blocker").write_text("a file")
    _refused_before_training(_train(tmp_path, *args), path)
    assert (tmp_path / "blocker").read_text() == "a file"


def test_save_into_new_directories_works(tmp_path: Path):
    result = _train(tmp_path, "--save", "new/dir/w.safetensors", "--checkpoint", "runs/a")
    assert result.returncode == 0, result.stderr
    saved = load_file(str(tmp_path / "new/dir/w.safetensors"))
    latest = load_file(str(tmp_path / "runs/a/weights.safetensors"))
    assert saved.keys() == latest.keys()
    for name in saved:
        np.testing.assert_array_equal(saved[name], latest[name], err_msg=name)


def test_when_the_final_write_fails_the_weights_are_rescued(tmp_path: Path, monkeypatch, capsys):
    (tmp_path / "m.dln").write_text(TINY)
    monkeypatch.chdir(tmp_path)

    def failing_save(self, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("dln.runtime.api.Model.save", failing_save)
    status = cli.main(["train", "m.dln", "--no-progress", "--save", "w.safetensors", "--checkpoint", "run"])
    err = capsys.readouterr().err
    assert status == 1 and "error[E0708]" in err and "No space left on device" in err, err
    rescued = [p for p in tmp_path.iterdir() if "rescued" in p.name]
    assert len(rescued) == 1 and str(rescued[0].name) in err, err
    trained = load_file(str(tmp_path / "run" / "weights.safetensors"))    # the same weights, checkpointed
    got = load_file(str(rescued[0]))
    assert got.keys() == trained.keys()
    for name in got:
        np.testing.assert_array_equal(got[name], trained[name], err_msg=name)
