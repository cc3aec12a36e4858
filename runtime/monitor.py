"""Watching training: a run directory of metrics, TensorBoard events and pictures.

    RUN_DIR/
      metrics.csv               one row an epoch: epoch, every metric, lr, time
      events.out.tfevents.*     the same numbers for TensorBoard (when the `tensorboard` package is there)
      curves.png                loss and accuracy curves, train beside validation (as `dln plot` draws them)
      images.png                the train section's `images`, a row of 16 examples a value

The run directory is the checkpoint directory when there is one, so that
resuming appends to the metrics of the run it continues.  metrics.csv is
rewritten whole from the history each epoch, atomically: a crash leaves the
file of the epoch before, never a torn one.  A directory that holds the
metrics of another run is never written over (`open_run`).
"""

from __future__ import annotations

import csv
import importlib.util
import io
import math
import re
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from dln.compiler.recipe import image_size
from dln.dsl.diagnostics import Diagnostic, DlnError, Note
from dln.runtime import checkpoint

METRICS = "metrics.csv"
CURVES = "curves.png"
IMAGES = "images.png"
EVENTS = re.compile(r"events\.out\.tfevents\..*")
IMAGE_EXAMPLES = 16    # the examples drawn for each value of `images`
IMAGE_SEED = 0         # fills (`noise = randn`) and the model's draws (`randn_like`) for the grid


def default_dir(stem: str, base: Path) -> Path:
    """`dln train`'s run directory when none is named: base/runs/<stem>, or, when that holds an earlier
    run, the first of base/runs/<stem>-2, -3, ... that does not (as Lightning numbers its versions)."""
    path = base / "runs" / stem
    version = 1
    while _holds_a_run(path):
        version += 1
        path = base / "runs" / f"{stem}-{version}"
    return path


def _holds_a_run(path: Path) -> bool:
    return (path / METRICS).exists() or path.is_dir() and any(EVENTS.fullmatch(p.name) for p in path.iterdir())


class Run:
    """The files of one run directory, written as the epochs end."""

    def __init__(self, path: Path, logged: int, log: Callable[[str], None]) -> None:
        self.path = path
        self.logged = logged      # epochs already in the event files (a resumed run's)
        self.log = log
        self.missing: list[str] = []   # optional packages that are not installed: what was not written
        self.writer: Any = None        # tensorboard's Writer, when installed
        self.events: Any = None        # its event file, opened by the first epoch's end (a run failing sooner has none)
        try:
            from tensorboard.summary import Writer
            self.writer = Writer
        except ImportError:
            self.missing.append("TensorBoard events (pip install 'dln[tensorboard]')")

    def epoch(self, history: Sequence[Mapping[str, float]]) -> None:
        """After each epoch's checkpoint: the event files get the epochs they lack, then metrics.csv
        the whole history (so it never runs ahead of the checkpoint it belongs to)."""
        try:
            if self.events is None and self.writer is not None:
                self.path.mkdir(parents=True, exist_ok=True)
                self.events = self.writer(str(self.path))
            if self.events is not None:
                for record in history[self.logged:]:
                    for key, value in record.items():
                        if key != "epoch":
                            self.events.add_scalar(scalar_tag(key), value, int(record["epoch"]))
                self.events.flush()
            self.logged = len(history)
            write_metrics(self.path / METRICS, history)
        except OSError as e:   # a full disk, a directory made read-only meanwhile
            raise DlnError(Diagnostic("E0708", f"cannot write the metrics in {self.path} after epoch "
                                               f"{len(history)}: {e}", None,
                                      (Note("the checkpoint, if any, is whole: run again to resume from it"),))) \
                from None

    def finish(self, history: Sequence[Mapping[str, float]], images: Mapping[str, np.ndarray] | None) -> None:
        """At the end of training: the pictures, and one line saying what is where."""
        if self.logged < len(history):   # no epoch ran here (a checkpoint already trained): what it trained
            self.epoch(history)
        if self.events is not None:
            self.events.close()
        written = [METRICS] + (["TensorBoard events"] if self.events is not None else [])
        failed = ""
        if importlib.util.find_spec("matplotlib") is None:
            self.missing.append("pictures (pip install 'dln[plot]')")
        else:
            # Training is over: a picture that cannot be written must not lose the trained model
            # (`dln train --save` writes it after this), so it is reported, not raised.
            try:
                checkpoint.write_bytes(self.path / CURVES, curves_png(history))
                written.append(CURVES)
                if images:
                    checkpoint.write_bytes(self.path / IMAGES, grid_png(images))
                    written.append(IMAGES)
            except OSError as e:
                failed = f"; cannot write the pictures: {e}"
        missing = f"; not written, for want of a package: {', '.join(self.missing)}" if self.missing else ""
        self.log(f"run directory {self.path}: {', '.join(written)}{missing}{failed}")


def open_run(path: Path, history: Sequence[Mapping[str, float]], log: Callable[[str], None]) -> Run:
    """The run in `path`, continuing `history` (a resumed run's epochs; empty for a fresh one).  When
    `path` holds the metrics of another run — rows that `history` does not begin with — nothing is
    trained: writing would lose them (E0708)."""
    checkpoint.check_output(path, "directory", "the metrics to the run directory")
    rows = read_metrics(path / METRICS) if (path / METRICS).exists() else []
    if rows and not _continues(rows, history):
        raise DlnError(Diagnostic("E0708", f"{path} holds the metrics of another run ({len(rows)} epochs in "
                                           f"{path / METRICS}); writing this run there would lose them", None,
                                  (Note("nothing was trained; name another run directory (--logdir DIR), or move "
                                        "that one away"),)))
    return Run(path, min(len(rows), len(history)), log)


def _continues(rows: list[dict[str, float]], history: Sequence[Mapping[str, float]]) -> bool:
    """Are `rows` (metrics.csv) epochs of the run `history` resumes?  They agree on their common epochs,
    and the history has some: a fresh run continues nothing."""
    if not history:
        return False
    return all(row.keys() <= record.keys() and all(_same(row[k], float(record[k])) for k in row)
               for row, record in zip(rows, history))


def _same(a: float, b: float) -> bool:
    """One number, written and read back; a NaN (a validation loss over an empty mask) is itself."""
    return math.isclose(a, b, rel_tol=1e-12) or math.isnan(a) and math.isnan(b)


def scalar_tag(key: str) -> str:
    """The TensorBoard tag of a history key: `val_loss` -> `loss/val`, `accuracy` -> `accuracy/train`,
    `lr` and `time` as they are."""
    if key in ("lr", "time"):
        return key
    return f"{key[4:]}/val" if key.startswith("val_") else f"{key}/train"


# ---- metrics.csv ------------------------------------------------------------------------------------------------
def columns(history: Sequence[Mapping[str, float]]) -> list[str]:
    """epoch, the metrics in the order they first appear, lr, time."""
    keys = list(dict.fromkeys(k for record in history for k in record))
    last = [k for k in ("lr", "time") if k in keys]
    return ["epoch"] + [k for k in keys if k not in ("epoch", "lr", "time")] + last


def write_metrics(path: Path, history: Sequence[Mapping[str, float]]) -> None:
    out = io.StringIO()
    writer = csv.DictWriter(out, columns(history), lineterminator="\n")
    writer.writeheader()
    for record in history:
        writer.writerow({k: int(v) if k == "epoch" else repr(float(v)) for k, v in record.items()})
    checkpoint.write_text(path, out.getvalue())


def read_metrics(path: Path) -> list[dict[str, float]]:
    """metrics.csv's rows as numbers, a cell left empty (a metric some epochs lack) left out."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DlnError(Diagnostic("E0702", f"cannot read {path}: {e}")) from None
    try:
        if any(None in row for row in rows):   # csv files a row's cells beyond the header under None
            raise ValueError("a row longer than the header")
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in rows]
    except (ValueError, AttributeError):
        raise DlnError(Diagnostic("E0702", f"cannot read {path}: not a table of numbers with one header row")) \
            from None


# ---- pictures ---------------------------------------------------------------------------------------------------
def curves_png(history: Sequence[Mapping[str, float]]) -> bytes:
    """One panel a metric (`loss`, `accuracy`, a GAN's `d_loss` and `g_loss`): training and validation
    against the epoch; a panel for the learning rate when a schedule changes it."""
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()

    metrics = [k for k in columns(history) if k not in ("epoch", "lr", "time") and not k.startswith("val_")]
    metrics += [k[4:] for k in columns(history) if k.startswith("val_") and k[4:] not in metrics]
    rates = [r["lr"] for r in history if "lr" in r]
    panels = metrics + (["lr"] if len(set(rates)) > 1 else [])
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(4.5 * max(len(panels), 1), 3.4), squeeze=False)
    for ax, name in zip(axes[0], panels):
        for key, label, style in ((name, "train", "-"), (f"val_{name}", "validation", "--")):
            points = [(r["epoch"], r[key]) for r in history if key in r]
            if name == "lr" and label == "validation" or not points:
                continue
            ax.plot(*zip(*points), style, marker="." if len(points) < 30 else None,
                    label=label if name != "lr" else "learning rate")
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return _png(fig)


def grid_png(rows: Mapping[str, np.ndarray]) -> bytes:
    """A row of pictures for each value (examples first), each example laid out by `image_size`, in gray:
    0 black, 1 white, values outside clipped (a noisy input's); a row whose values spread well past
    [0, 1] (its 5th or 95th percentile beyond [-0.5, 1.5]) is drawn from its own minimum to its maximum."""
    plt = _pyplot()
    count = max(min(len(v), IMAGE_EXAMPLES) for v in rows.values())
    fig, axes = plt.subplots(len(rows), count, figsize=(0.8 * count + 0.9, 0.85 * len(rows) + 0.1),
                             squeeze=False)
    for k, (name, values) in enumerate(rows.items()):
        values = np.asarray(values, np.float64)[:IMAGE_EXAMPLES]
        low, high = np.percentile(values, [5, 95])
        lo, hi = (0.0, 1.0) if low >= -0.5 and high <= 1.5 else (float(values.min()), float(values.max()))
        size = image_size(values.shape[1:])
        for j, ax in enumerate(axes[k]):
            ax.set_xticks([])
            ax.set_yticks([])
            for side in ax.spines.values():
                side.set_visible(False)
            if j < len(values):
                ax.imshow(values[j].reshape(size), cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1,
                          interpolation="nearest")
        axes[k][0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=10)
    fig.subplots_adjust(left=0.9 / (0.8 * count + 0.9), right=0.99, top=0.98, bottom=0.02, wspace=0.08,
                        hspace=0.08)
    return _png(fig)


def _pyplot():
    """matplotlib's pyplot, drawing off screen (no display on a training machine)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    return pyplot


def _png(fig) -> bytes:
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=100)
    _pyplot().close(fig)
    return out.getvalue()


# ---- `dln plot` -------------------------------------------------------------------------------------------------
def plot(run_dir: Path, output: Path | None = None) -> Path:
    """`dln plot RUN_DIR [-o out.png]`: the curves of RUN_DIR/metrics.csv as a PNG (RUN_DIR/curves.png by
    default).  A missing directory or metrics file is E0702; matplotlib missing, E0714."""
    if not run_dir.is_dir():
        raise DlnError(Diagnostic("E0702", f"no run directory {run_dir}", None,
                                  (Note("dln train writes one: the checkpoint directory, --logdir DIR, or "
                                        "runs/<file name>"),)))
    metrics = run_dir / METRICS
    if not metrics.is_file():
        raise DlnError(Diagnostic("E0702", f"{run_dir} holds no {METRICS}", None,
                                  (Note("it is written in the run directory of dln train, after each epoch"),)))
    history = read_metrics(metrics)
    if not history or any("epoch" not in r for r in history):
        raise DlnError(Diagnostic("E0702", f"{metrics} holds no epochs"))
    if importlib.util.find_spec("matplotlib") is None:
        raise DlnError(Diagnostic("E0714", "dln plot draws with matplotlib, which is not installed", None,
                                  (Note("pip install 'dln[plot]'"),)))
    output = output or run_dir / CURVES
    checkpoint.check_output(output, "file", "the picture", ".png", "nothing was drawn")
    checkpoint.write_bytes(output, curves_png(history))
    return output
