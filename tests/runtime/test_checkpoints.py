"""Checkpoint directories survive what happens to files: tampered or damaged `state.json` fields are
diagnostics naming the field (E0707), a killed run's leftovers are cleaned up, and an unreadable latest
checkpoint falls back to the previous one, which is kept until the next is committed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import dln

from test_training import CLASSIFIER, QUIET, assert_same_params, without_time


def _tamper(ckpt: Path, change) -> None:
    state = json.loads((ckpt / "state.json").read_text())
    change(state)
    (ckpt / "state.json").write_text(json.dumps(state))


def _set(path: str, value):
    """A change of state.json: the field at `path` (`a.b[0].c`) set to `value`."""
    def change(state):
        keys = [int(k) if k.isdigit() else k for k in path.replace("[", ".").replace("]", "").split(".")]
        target = state
        for k in keys[:-1]:
            target = target[k]
        target[keys[-1]] = value
    return change


@pytest.mark.parametrize("field, value", [
    ("rng_step", "x"),
    ("rng_step", 2 ** 70),                       # beyond an i64 counter
    ("fill_rng.has_uint32", 7),
    ("eval_rng_step", -3),
    ("step_counts", [4, 4]),                     # one objective, two counts
    ("schedules[0].scale", "big"),
    ("schedules[0].bad_epochs", 1.5),
    ("early_stop.stopped", "yes"),
    ("early_stop.best_val", [1]),
    ("fill_rng.state.inc", -1),
    ("fill_rng.bit_generator", "MT19937"),
    ("history[0].loss", "low"),
    ("history", []),                             # epochs_done says 2
    ("previous.files.weights", "../elsewhere.safetensors"),
    ("previous.rng_step", None),
    ("model_name", "m"),                         # not a field
])
def test_a_tampered_state_json_field_is_named(tmp_path: Path, field: str, value):
    ckpt = tmp_path / "run"
    dln.train(CLASSIFIER, epochs=2, checkpoint=str(ckpt), **QUIET)
    before = sorted(p.name for p in ckpt.iterdir())
    _tamper(ckpt, _set(field, value))
    with pytest.raises(dln.DlnError) as info:
        dln.train(CLASSIFIER, epochs=3, checkpoint=str(ckpt), **QUIET)
    message = str(info.value)
    assert info.value.code == "E0707", message
    assert f"state.json field '{field}'" in message and str(ckpt) in message, message
    assert sorted(p.name for p in ckpt.iterdir()) == before    # nothing restored, written or deleted


def test_a_killed_runs_leftovers_are_removed_and_nothing_else(tmp_path: Path):
    ckpt = tmp_path / "run"
    dln.train(CLASSIFIER, epochs=2, checkpoint=str(ckpt), **QUIET)
    # what a kill leaves: the atomic writer's temporary files; arrays of an epoch never committed
    leftovers = ["weights-3.safetensors.k2j4x_a1.tmp", "state.json.0q9w8e7r.tmp", "weights.safetensors.zz.tmp",
                 "optimizer-3.safetensors", "weights-3.safetensors", "metrics.csv.a1b2.tmp", "curves.png.c3d4.tmp"]
    for name in leftovers:
        (ckpt / name).write_bytes(b"half")
    others = ["notes.txt", "mine.tmp", "weights-3.safetensors.bak"]    # not ours: kept
    for name in others:
        (ckpt / name).write_bytes(b"keep")
    dln.train(CLASSIFIER, epochs=2, checkpoint=str(ckpt), **QUIET)    # resumes (nothing left to train)
    names = {p.name for p in ckpt.iterdir()}
    assert not names & set(leftovers)
    assert set(others) <= names
    assert all((ckpt / name).read_bytes() == b"keep" for name in others)


def test_an_unreadable_latest_checkpoint_falls_back_to_the_previous(tmp_path: Path, capfd):
    ckpt = tmp_path / "run"
    dln.train(CLASSIFIER, epochs=3, checkpoint=str(ckpt), **QUIET)
    latest = ckpt / "weights-3.safetensors"
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])    # truncated
    capfd.readouterr()
    resumed = dln.train(CLASSIFIER, epochs=4, checkpoint=str(ckpt), **QUIET)
    err = capfd.readouterr().err
    assert "weights-3.safetensors" in err and "previous checkpoint (after epoch 2)" in err, err
    straight = dln.train(CLASSIFIER, epochs=4, **QUIET)
    assert without_time(resumed) == without_time(straight)
    assert_same_params(resumed.model.parameters(), straight.model.parameters())
    state = json.loads((ckpt / "state.json").read_text())
    assert state["epochs_done"] == 4 and state["previous"]["epochs_done"] == 3


def test_when_both_checkpoints_are_unreadable_it_is_a_diagnostic(tmp_path: Path):
    ckpt = tmp_path / "run"
    dln.train(CLASSIFIER, epochs=2, checkpoint=str(ckpt), **QUIET)
    (ckpt / "optimizer-2.safetensors").write_bytes(b"\x00" * 5)
    (ckpt / "weights-1.safetensors").unlink()
    with pytest.raises(dln.DlnError) as info:
        dln.train(CLASSIFIER, epochs=3, checkpoint=str(ckpt), **QUIET)
    assert info.value.code == "E0702" and "weights-1.safetensors" in str(info.value)


def test_a_checkpoint_without_a_previous_one_still_resumes(tmp_path: Path):
    """A state.json of one epoch names no previous checkpoint; an older one (before `previous`, without
    `eval_rng_step`) resumes too."""
    ckpt = tmp_path / "run"
    dln.train(CLASSIFIER, epochs=1, checkpoint=str(ckpt), **QUIET)
    _tamper(ckpt, lambda s: s.pop("eval_rng_step"))
    resumed = dln.train(CLASSIFIER, epochs=2, checkpoint=str(ckpt), **QUIET)
    assert [e["epoch"] for e in resumed.epochs] == [1, 2]
    assert np.isfinite(resumed[-1]["loss"])


def test_files_written_atomically_get_the_permissions_open_would_give(tmp_path: Path):
    """Not mkstemp's 0600: a run directory's metrics.csv and weights must be readable by a TensorBoard
    (or a colleague) running as another user, as any file the user writes is; a replaced file keeps
    the permissions it had."""
    import os

    from dln.runtime import checkpoint

    umask = os.umask(0o022)
    try:
        checkpoint.save_json(tmp_path / "state.json", {"a": 1})
        checkpoint.save_arrays(tmp_path / "w.safetensors", {"w": np.zeros(3, np.float32)})
        assert (tmp_path / "state.json").stat().st_mode & 0o777 == 0o644
        assert (tmp_path / "w.safetensors").stat().st_mode & 0o777 == 0o644
        os.chmod(tmp_path / "state.json", 0o600)
        checkpoint.save_json(tmp_path / "state.json", {"a": 2})
        assert (tmp_path / "state.json").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(umask)
