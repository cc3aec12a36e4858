"""Watching training (dln.runtime.monitor): the run directory's metrics.csv, TensorBoard events,
curves.png and images.png, `dln plot`, and where a run's files go — never into a directory that holds
another run's metrics."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import dln
from dln.runtime import cli, monitor

QUIET = {"progress": False, "log": lambda s: None}

# A digits classifier that also draws its input: losses, accuracies, a schedule, and a grid.
NET = """
model net() {
    input x: f32[B, 64]
    input y: i64[B]
    logits = x -> linear(16) -> relu -> linear(10)
    loss   = cross_entropy(logits, y)
    output logits
}

train net {
    data     = dataset("digits")
    validate = 0.2
    schedule = step(every = 1, gamma = 0.5)
    batch    = 256
    epochs   = 2
    images   = [x]
}
"""


@pytest.fixture
def project(tmp_path: Path, monkeypatch) -> Path:
    (tmp_path / "net.dln").write_text(NET)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def events(run: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the run's event files, by tag: (step, value), as TensorBoard reads them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    out: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(run.glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(path))
        acc.Reload()
        for tag in acc.Tags()["tensors"]:
            out.setdefault(tag, []).extend((e.step, float(tensor_util.make_ndarray(e.tensor_proto)))
                                           for e in acc.Tensors(tag))
    return out


def picture(path: Path) -> np.ndarray:
    from matplotlib import image

    pixels = image.imread(str(path))
    assert pixels.ndim == 3 and pixels.shape[2] in (3, 4), pixels.shape
    return pixels


def test_a_run_directory_holds_the_history(project: Path):
    run = project / "run"
    history = dln.train("net.dln", logdir=str(run), **QUIET)
    assert sorted(p.name for p in run.iterdir() if not monitor.EVENTS.fullmatch(p.name)) == \
        ["curves.png", "images.png", "metrics.csv"]

    rows = monitor.read_metrics(run / "metrics.csv")
    assert rows == history.epochs     # every number exactly, the time included
    header = (run / "metrics.csv").read_text().splitlines()[0]
    assert header == "epoch,loss,accuracy,val_loss,val_accuracy,lr,time"

    scalars = events(run)
    assert set(scalars) == {"loss/train", "loss/val", "accuracy/train", "accuracy/val", "lr", "time"}
    for key, tag in [("loss", "loss/train"), ("val_loss", "loss/val"), ("accuracy", "accuracy/train"),
                     ("val_accuracy", "accuracy/val"), ("lr", "lr")]:
        assert [s for s, _ in scalars[tag]] == [1, 2]
        np.testing.assert_allclose([v for _, v in scalars[tag]], [e[key] for e in history.epochs], rtol=1e-6)

    curves = picture(run / "curves.png")
    assert curves.shape[1] > curves.shape[0] >= 200     # three panels side by side: loss, accuracy, lr
    grid = picture(run / "images.png")
    assert grid.shape[1] > 4 * grid.shape[0] > 0          # one row of 16 digits


def test_dln_train_writes_runs_of_the_file_name_and_plot_draws_them(project: Path, capsys):
    assert cli.main(["train", "net.dln", "--no-progress", "--epochs", "1"]) == 0
    assert "run directory runs/net: metrics.csv, TensorBoard events, curves.png, images.png" in \
        capsys.readouterr().out
    # run again: the first run's metrics are kept, the second goes beside them
    assert cli.main(["train", "net.dln", "--no-progress", "--epochs", "2"]) == 0
    assert len(monitor.read_metrics(project / "runs" / "net" / "metrics.csv")) == 1
    assert len(monitor.read_metrics(project / "runs" / "net-2" / "metrics.csv")) == 2

    (project / "runs" / "net-2" / "curves.png").unlink()
    assert cli.main(["plot", "runs/net-2"]) == 0
    assert picture(project / "runs" / "net-2" / "curves.png").shape[0] >= 200
    assert cli.main(["plot", "runs/net", "-o", "net.png"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "wrote net.png"
    picture(project / "net.png")


def test_a_default_run_directory_that_cannot_be_made_is_a_note_not_a_failure(project: Path, capsys):
    """Nobody asked for runs/<stem>: where it cannot be written (here `runs` is a file; a read-only
    directory alike), `dln train` trains without it, as it did before run directories existed."""
    (project / "runs").write_text("not a directory")
    assert cli.main(["train", "net.dln", "--no-progress", "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert "note: cannot write the run directory runs/net: runs is a file, not a directory; training without " \
           "metrics files and pictures (--logdir DIR names another directory)" in out
    assert sorted(p.name for p in project.iterdir()) == ["net.dln", "runs"]
    assert cli.main(["train", "net.dln", "--no-progress", "--epochs", "1", "--logdir", "runs/x"]) == 1   # asked for


def test_logdir_none_writes_nothing(project: Path):
    assert cli.main(["train", "net.dln", "--no-progress", "--epochs", "1", "--logdir", "none"]) == 0
    assert [p.name for p in project.iterdir()] == ["net.dln"]


def test_python_writes_files_only_when_asked(project: Path):
    dln.train("net.dln", epochs=1, **QUIET)
    assert [p.name for p in project.iterdir()] == ["net.dln"]


def test_resuming_appends_to_the_metrics_of_the_checkpoint(project: Path):
    ckpt = project / "ckpt"
    dln.train("net.dln", epochs=2, checkpoint=str(ckpt), **QUIET)
    history = dln.train("net.dln", epochs=3, checkpoint=str(ckpt), **QUIET)
    assert len(history) == 3
    assert monitor.read_metrics(ckpt / "metrics.csv") == history.epochs
    assert [s for s, _ in events(ckpt)["loss/train"]] == [1, 2, 3]     # each epoch once, over two event files
    # nothing left to train, another run directory: it still gets the metrics the checkpoint trained
    history = dln.train("net.dln", epochs=3, checkpoint=str(ckpt), logdir="fresh", **QUIET)
    assert monitor.read_metrics(project / "fresh" / "metrics.csv") == history.epochs
    assert [s for s, _ in events(project / "fresh")["loss/train"]] == [1, 2, 3]


def test_another_runs_metrics_are_never_written_over(project: Path):
    run = project / "run"
    dln.train("net.dln", epochs=1, logdir=str(run), **QUIET)
    before = (run / "metrics.csv").read_text()
    with pytest.raises(dln.DlnError) as info:
        dln.train("net.dln", epochs=1, logdir=str(run), **QUIET)
    assert info.value.code == "E0708" and "holds the metrics of another run" in str(info.value)
    assert (run / "metrics.csv").read_text() == before


def test_without_tensorboard_the_csv_is_still_written(project: Path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard.summary", None)    # `from tensorboard.summary import` fails
    lines: list[str] = []
    dln.train("net.dln", epochs=1, logdir="run", progress=False, log=lines.append)
    assert "pip install 'dln[tensorboard]'" in lines[-1]
    assert len(monitor.read_metrics(project / "run" / "metrics.csv")) == 1
    assert not list((project / "run").glob("events.out.tfevents.*"))


def _assert_plot_refused(capsys, args: list[str], code: str, text: str) -> None:
    assert cli.main(["plot", *args]) == 1
    err = capsys.readouterr().err
    assert f"error[{code}]" in err and text in err and "Traceback" not in err, err


def test_plot_errors(project: Path, capsys, monkeypatch):
    _assert_plot_refused(capsys, ["absent"], "E0702", "no run directory absent")
    (project / "empty").mkdir()
    _assert_plot_refused(capsys, ["empty"], "E0702", "empty holds no metrics.csv")
    (project / "empty" / "metrics.csv").write_text("epoch,loss\n1,low\n")
    _assert_plot_refused(capsys, ["empty"], "E0702", "not a table of numbers")
    (project / "empty" / "metrics.csv").write_text("epoch,loss\n1,0.5,7\n")   # a row longer than the header
    _assert_plot_refused(capsys, ["empty"], "E0702", "not a table of numbers")
    (project / "empty" / "metrics.csv").write_text("epoch,loss\n1,0.5\n")
    _assert_plot_refused(capsys, ["empty", "-o", "empty"], "E0708", "it is a directory (name a .png file)")
    assert "nothing was drawn" in str(pytest.raises(dln.DlnError, monitor.plot, project / "empty", project).value)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    _assert_plot_refused(capsys, ["empty"], "E0714", "pip install 'dln[plot]'")


def test_plot_as_a_user_runs_it(project: Path):
    result = subprocess.run([sys.executable, "-m", "dln", "plot", "nowhere"], capture_output=True, text=True,
                            cwd=project, timeout=120)
    assert result.returncode == 1 and "error[E0702]" in result.stderr and "Traceback" not in result.stderr


def test_the_grid_is_drawn_in_evaluation_mode_from_a_fixed_seed(project: Path):
    """The model's own draws (randn_like) for the grid come from a fixed counter, put back after: a run
    that draws a grid continues as one that does not."""
    (project / "dae.dln").write_text(NET.replace("model net", "model dae").replace("train net", "train dae")
                                     .replace("input x: f32[B, 64]", "input x: f32[B, 64]\n    noisy = x + 0.2 * "
                                              "randn_like(x)").replace("x -> linear(16)", "noisy -> linear(16)")
                                     .replace("images   = [x]", "images   = [noisy, x]"))
    trained = dln.train("dae.dln", epochs=1, logdir="a", **QUIET)
    counter = trained.model._rng_step
    plain = dln.train("dae.dln", epochs=1, logdir=False, **QUIET).model
    assert plain._rng_step == counter
    # the grid's noise is the same whatever the model's counter stands at (were it drawn from the
    # counter, a resumed run's grid would differ from an uninterrupted one's)
    from dln.runtime.train import Trainer, recipe_for

    model = trained.model
    trainer = Trainer(model, recipe_for(model), project, progress=False, log=lambda s: None)
    _, val = trainer._data()
    first = trainer._images(val, trainer._sources(val))
    model._rng_step = counter + 1000
    second = trainer._images(val, trainer._sources(val))
    assert model._rng_step == counter + 1000
    np.testing.assert_array_equal(first["noisy"], second["noisy"])


def test_grid_layout():
    assert [monitor.image_size(s) for s in [(64,), (1, 8, 8), (8, 8), (3, 4), (10,)]] == \
        [(8, 8), (8, 8), (8, 8), (3, 4), None]
    png = monitor.grid_png({"a": np.linspace(0, 1, 5 * 16).reshape(5, 16), "b": 100 * np.ones((5, 4, 4))})
    assert png.startswith(b"\x89PNG")


def test_the_grid_draws_the_validation_data_through_validates_renames(project: Path, monkeypatch):
    """validate = { x = "x_val" }: the grid shows what validation feeds x, not the training array."""
    rng = np.random.default_rng(0)
    np.savez(project / "two.npz", x=rng.random((40, 64), np.float32), x_val=rng.random((40, 64), np.float32),
             y=rng.integers(0, 10, 40))
    (project / "two.dln").write_text(NET.replace('dataset("digits")', 'npz("two.npz")')
                                     .replace("validate = 0.2", 'validate = { x = "x_val" }'))
    drawn = {}
    real = monitor.grid_png
    monkeypatch.setattr(monitor, "grid_png", lambda rows: drawn.update(rows) or real(rows))
    dln.train("two.dln", epochs=1, logdir="run", **QUIET)
    np.testing.assert_array_equal(drawn["x"], np.load(project / "two.npz")["x_val"][:monitor.IMAGE_EXAMPLES])


def test_a_failing_write_of_the_run_directory_is_e0708_and_loses_no_trained_model(project: Path, monkeypatch,
                                                                                    capsys):
    """Metrics that cannot be written stop training with E0708 (no traceback); pictures that cannot be
    written at the end are reported, and `--save` still writes the trained weights."""
    from dln.runtime import checkpoint

    def full(path, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint, "write_bytes", full)
    assert cli.main(["train", "net.dln", "--no-progress", "--epochs", "1", "--logdir", "a",
                     "--save", "w.safetensors"]) == 0
    out = capsys.readouterr().out
    assert "cannot write the pictures: [Errno 28] No space left on device" in out, out
    assert (project / "w.safetensors").is_file() and (project / "a" / "metrics.csv").is_file()

    monkeypatch.setattr(checkpoint, "write_text", full)
    assert cli.main(["train", "net.dln", "--no-progress", "--epochs", "1", "--logdir", "b"]) == 1
    err = capsys.readouterr().err
    assert "error[E0708]: cannot write the metrics in b after epoch 1" in err and "internal error" not in err, err


def test_a_run_with_a_nan_metric_resumes_into_its_own_directory(project: Path):
    """A validation loss over an empty mask is NaN; the run's own metrics.csv still continues it."""
    (project / "masked.dln").write_text("""\
model m {
    input x: f32[B, 4]
    input y: i64[B]
    input mask: f32[B]
    loss = sum(cross_entropy(x -> linear(3), y, reduction = "none") * mask) / sum(mask)
    output loss
}
train m {
    data     = npz("d.npz")
    validate = { mask = "empty" }
}
""")
    rng = np.random.default_rng(0)
    np.savez(project / "d.npz", x=rng.standard_normal((20, 4)).astype(np.float32), y=rng.integers(0, 3, 20),
             mask=np.ones(20, np.float32), empty=np.zeros(20, np.float32))
    dln.train("masked.dln", epochs=1, checkpoint="ckpt", **QUIET)
    history = dln.train("masked.dln", epochs=2, checkpoint="ckpt", **QUIET)
    assert np.isnan(history[0]["val_loss"]) and len(monitor.read_metrics(project / "ckpt" / "metrics.csv")) == 2
