"""Training data: the built-in data sets (offline) and files (npz, csv).

Every data set is a dict of named arrays sharing their first axis; arrays
are matched to model inputs by name (a train section's `inputs = {...}`
renames).  The first axis holds the examples, which training shuffles and
batches, unless an input holds the data axis on several axes (a graph's
`adj: f32[N, N]`): then the whole data set is one example (`whole_example`).
The built-in sets come from scikit-learn's bundled copies (text: from Python's own help
texts; karate: from networkx, the optional extra `dln[graph]`), so nothing is downloaded.

| name | arrays |
| --- | --- |
| digits | x f32[N, 64] and images f32[N, 1, 8, 8] in [0, 1]; y i64[N] (10 classes) |
| iris | x f32[N, 4] standardized; y i64[N] (3 classes); target f32[N, 1] (y as a float) |
| wine | x f32[N, 13] standardized; y i64[N] (3 classes); target f32[N, 1] |
| breast_cancer | x f32[N, 30] standardized; y i64[N] (2 classes); target f32[N, 1] (for binary losses) |
| text | x i64[N, window] character ids of Python's help texts, y shifted by one; also tokens, targets (runtime/text.py) |
| karate | Zachary's karate club, one graph of N = 34 nodes: x f32[N, N] the identity (featureless nodes); adj f32[N, N] D^-1/2 (A + I) D^-1/2; y i64[N] the club (0 Mr. Hi, 1 Officer); mask f32[N] the labelled nodes, val_mask f32[N] the others (`_karate`) |

`dataset("digits", classes = (5, 6, 7, 8, 9))` keeps the examples of those labels (in the data
set's order) and renumbers them 0..k-1 in the order given, as a task of k classes needs (transfer
learning: pretrain on some digits, fine-tune on the others).
"""

from __future__ import annotations

import csv as csv_module
import importlib.util
import zipfile
import zlib
from pathlib import Path
from typing import Callable

import numpy as np

from dln.compiler.build import InputInfo
from dln.compiler.values import TrainValue
from dln.dsl.diagnostics import Diagnostic, DlnError, Note
from dln.runtime import text

Arrays = dict[str, np.ndarray]


def _standardize(x: np.ndarray) -> np.ndarray:
    std = x.std(axis=0)
    return ((x - x.mean(axis=0)) / np.where(std > 0, std, 1.0)).astype(np.float32)


def _digits() -> Arrays:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    return {"x": x, "images": x.reshape(-1, 1, 8, 8), "y": d.target.astype(np.int64)}


def _tabular(loader: Callable) -> Callable[[], Arrays]:
    def load() -> Arrays:
        d = loader()
        y = d.target.astype(np.int64)
        return {"x": _standardize(d.data), "y": y, "target": y.astype(np.float32)[:, None]}
    return load


def _sk(name: str) -> Callable:
    def loader():
        import sklearn.datasets as ds

        return getattr(ds, f"load_{name}")()
    return loader


LABELLED_PER_CLASS = 4   # karate's training nodes per club


def _karate() -> Arrays:
    """Zachary's karate club as Kipf & Welling's semi-supervised node classification: one graph, its
    nodes featureless (x is the identity), the adjacency normalized with self-loops (unweighted: an edge
    is a friendship, whatever the count of contexts networkx's weights record), a few labelled nodes.
    The labelled nodes are the LABELLED_PER_CLASS best connected of each club (by degree; on ties, the
    lower node): the two leaders, nodes 0 and 33, and their best connected allies, so 0, 1, 2, 3 and
    23, 31, 32, 33.  Every other node (26) is held out in val_mask."""
    import networkx as nx

    graph = nx.karate_club_graph()
    nodes = sorted(graph.nodes)
    a = nx.to_numpy_array(graph, nodelist=nodes, weight=None)
    degree = a.sum(axis=1)
    d = degree + 1                                   # the degree in A + I
    adj = (a + np.eye(len(nodes))) / np.sqrt(d)[:, None] / np.sqrt(d)[None, :]
    y = np.array([0 if graph.nodes[i]["club"] == "Mr. Hi" else 1 for i in nodes], np.int64)
    mask = np.zeros(len(nodes), np.float32)
    for club in (0, 1):
        members = [i for i in nodes if y[i] == club]
        mask[sorted(members, key=lambda i: (-degree[i], i))[:LABELLED_PER_CLASS]] = 1.0
    return {"x": np.eye(len(nodes), dtype=np.float32), "adj": adj.astype(np.float32), "y": y,
            "mask": mask, "val_mask": 1.0 - mask}


DATASETS: dict[str, Callable[[], Arrays]] = {
    "digits": _digits,
    "iris": _tabular(_sk("iris")),
    "wine": _tabular(_sk("wine")),
    "breast_cancer": _tabular(_sk("breast_cancer")),
    "karate": _karate,
}
# Data sets that need an optional package: its module and the extra that installs it.
NEEDS = {"karate": ("networkx", "graph")}


def load(spec: TrainValue, base: Path) -> Arrays:
    """The arrays a `data = ...` setting names; file paths are relative to the .dln file."""
    if spec.kind == "dataset":
        name = spec.arg("name")
        if name == "text":
            return text.load(spec)
        if name not in DATASETS:
            raise DlnError(Diagnostic("E0603", f"unknown data set \"{name}\"", spec.span,
                                      (Note("data sets: " + ", ".join([*DATASETS, "text"])),)))
        if name in NEEDS and importlib.util.find_spec(NEEDS[name][0]) is None:
            module, extra = NEEDS[name]
            raise DlnError(Diagnostic("E0603", f"data set \"{name}\" needs the package {module}, which is not "
                                               "installed", spec.span, (Note(f"pip install dln[{extra}]"),)))
        arrays = DATASETS[name]()
        return arrays if spec.arg("classes") is None else _classes(arrays, spec.arg("classes"), spec)
    path = (base / spec.arg("path")) if not Path(spec.arg("path")).is_absolute() else Path(spec.arg("path"))
    if not path.is_file():
        raise DlnError(Diagnostic("E0603", f"no such data file: {path}", spec.span))
    if spec.kind == "npz":
        return _npz(path, spec)
    return _csv(path, spec.arg("target"), spec)


# The data sets whose rows are labelled examples `y`, which `classes = (...)` may pick from.
LABELLED = ("digits", "iris", "wine", "breast_cancer")


def _classes(arrays: Arrays, classes: tuple[int, ...], spec: TrainValue) -> Arrays:
    """The examples whose label `y` is one of `classes`, labels renumbered to their place in `classes`
    (`target`, the labels as floats, follows)."""
    if spec.arg("name") not in LABELLED:
        raise DlnError(Diagnostic("E0603", f"dataset(\"{spec.arg('name')}\") takes no classes: its rows are not "
                                           "labelled examples to pick from", spec.span,
                                  (Note("data sets with classes: " + ", ".join(LABELLED)),)))
    y = arrays["y"]
    have = np.unique(y)
    absent = [c for c in classes if c not in have]
    if absent:
        raise DlnError(Diagnostic("E0603", f"dataset(\"{spec.arg('name')}\") has no class "
                                           f"{', '.join(map(str, absent))}", spec.span,
                                  (Note(f"its classes: {', '.join(map(str, have))}"),)))
    rows = np.isin(y, classes)
    relabel = np.zeros(int(have.max()) + 1, np.int64)
    relabel[list(classes)] = np.arange(len(classes))
    out = {k: v[rows] for k, v in arrays.items()}
    out["y"] = relabel[y[rows]]
    if "target" in out:
        out["target"] = out["y"].astype(np.float32)[:, None]
    return out


def _npz(path: Path, spec: TrainValue) -> Arrays:
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            raise DlnError(Diagnostic("E0603", f"{path} holds one array, not named arrays (save with np.savez)",
                                      spec.span))
        with loaded as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:  # what a damaged file raises
        raise DlnError(Diagnostic("E0603", f"cannot read {path}: {e}", spec.span)) from None
    return _check_lengths(arrays, path, spec)


def _csv(path: Path, target: str, spec: TrainValue) -> Arrays:
    try:
        with open(path, newline="") as f:
            rows = list(csv_module.reader(f))
    except (OSError, UnicodeDecodeError) as e:
        raise DlnError(Diagnostic("E0603", f"cannot read {path}: {e}", spec.span)) from None
    if not rows or target not in rows[0]:
        raise DlnError(Diagnostic("E0603", f"{path} has no column \"{target}\"", spec.span))
    header, body = rows[0], [row for row in rows[1:] if row]
    if not body:
        raise DlnError(Diagnostic("E0603", f"{path} has a header but no rows of data", spec.span))
    for k, row in enumerate(body):
        if len(row) != len(header):
            raise DlnError(Diagnostic("E0603", f"{path}: row {k + 1} has {len(row)} values, the header "
                                               f"{len(header)} columns", spec.span))
    t = header.index(target)
    try:
        table = np.array([[float(v) for v in row] for row in body], dtype=np.float64)
    except ValueError as e:
        raise DlnError(Diagnostic("E0603", f"{path}: every value must be a number ({e})", spec.span)) from None
    y = table[:, t]
    x = np.delete(table, t, axis=1).astype(np.float32)
    arrays = {"x": x, "y": y.astype(np.int64) if np.all(y == np.round(y)) else y.astype(np.float32)}
    return _check_lengths(arrays, path, spec)


def _check_lengths(arrays: Arrays, path: Path, spec: TrainValue) -> Arrays:
    if not arrays:
        raise DlnError(Diagnostic("E0603", f"{path} holds no arrays", spec.span))
    for k, v in arrays.items():
        if np.ndim(v) == 0:
            raise DlnError(Diagnostic("E0603", f"array '{k}' in {path} is a single number: data arrays need a "
                                               "first axis of examples", spec.span))
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) > 1:
        listing = ", ".join(f"{k}: {n}" for k, n in lengths.items())
        raise DlnError(Diagnostic("E0603", f"arrays in {path} differ in length ({listing})", spec.span))
    return arrays


def whole_example(inputs: list[InputInfo]) -> tuple[InputInfo, str] | None:
    """Is the data set one whole example?  The data axis is the leading symbol of the inputs fed from
    data (N of `x: f32[N, F]`); an input holding it on more than one axis (`adj: f32[N, N]`, a graph's
    adjacency) relates examples to each other, so rows cannot be shuffled, batched or held out without
    scrambling it.  Such an input and the repeated symbol, else None."""
    leading = {str(i.type.shape[0]) for i in inputs if i.type.shape and not isinstance(i.type.shape[0], int)}
    for info in inputs:
        dims = [str(d) for d in info.type.shape if not isinstance(d, int)]
        for symbol in sorted(leading):
            if dims.count(symbol) > 1:
                return info, symbol
    return None


def split(arrays: Arrays, fraction: float, seed: int) -> tuple[Arrays, Arrays]:
    """A shuffled split: the last `fraction` of a seeded permutation is held out; text windows hold
    out the end of the text instead (dln.runtime.text.split)."""
    if isinstance(arrays, text.TextData):
        return text.split(arrays, fraction)
    n = len(next(iter(arrays.values())))
    order = np.random.default_rng(seed).permutation(n)
    held = int(round(n * fraction))
    train_idx, val_idx = order[: n - held], order[n - held:]
    return {k: v[train_idx] for k, v in arrays.items()}, {k: v[val_idx] for k, v in arrays.items()}


def augment(batch: Arrays, specs, rng: np.random.Generator) -> Arrays:
    """Training-batch augmentation (`augment = [...]`) of the float arrays of `batch` with a batch axis:
    gaussian_noise(std) on every such array; hflip(p) and random_crop(size, padding) on images
    ([B, C, H, W] or [B, H, W]: the last two axes).  The trainer passes the model's inputs only, not
    the targets of its losses."""
    out = dict(batch)
    for name, x in batch.items():
        if not np.issubdtype(x.dtype, np.floating) or x.ndim < 2:
            continue
        for spec in specs:
            if spec.kind == "gaussian_noise":
                x = x + rng.normal(0.0, spec.arg("std"), x.shape).astype(x.dtype)
            elif spec.kind == "hflip" and x.ndim >= 3:
                flip = rng.random(len(x)) < spec.arg("p")
                x = x.copy()
                x[flip] = x[flip][..., ::-1]
            elif spec.kind == "random_crop" and x.ndim >= 3:
                x = _random_crop(x, spec.arg("size"), spec.arg("padding"), rng)
        out[name] = x
    return out


def _random_crop(x: np.ndarray, size: int, padding: int, rng: np.random.Generator) -> np.ndarray:
    pads = [(0, 0)] * (x.ndim - 2) + [(padding, padding), (padding, padding)]
    padded = np.pad(x, pads)
    height, width = padded.shape[-2], padded.shape[-1]
    if size > height or size > width:
        raise DlnError(Diagnostic("E0601", f"random_crop({size}) is larger than the padded images "
                                           f"({height} x {width})"))
    out = np.empty(x.shape[:-2] + (size, size), x.dtype)
    tops = rng.integers(0, height - size + 1, len(x))
    lefts = rng.integers(0, width - size + 1, len(x))
    for k, (top, left) in enumerate(zip(tops, lefts)):
        out[k] = padded[k, ..., top:top + size, left:left + size]
    return out
