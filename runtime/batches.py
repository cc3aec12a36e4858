"""The batches of training and validation: their feeds from the examples' indices, and among ranks this
rank's part of each.

One process feeds each batch whole: the examples picked, augmented
(training only), filled inputs drawn from the run's fill generator;
validation takes batches of max(b, 256) rows.  Among N ranks (data
parallelism) the trainer walks the same global batches, and this module
says what a rank takes of each, so that the ranks compute one process's
figures (dln.runtime.distributed states the contract):

- **Rows.** Rank r takes a contiguous run of each global batch: rows
  [r·p, (r+1)·p) of it (`distributed.shard`), p = b in training and
  ceil(G / N) in validation, whose global batch is G = max(N·b, 256) rows, as
  one process's at batch N·b.  A short last batch leaves some ranks fewer
  rows, or none.
- **Draws.** Numbers drawn on the host (augmentation, filled inputs) are
  drawn for the whole global batch on every rank, which keeps its rows: the
  same numbers, and the same generator state after.  Draws inside the model
  are counted from the rank's first row in the global batch (`rng.row`,
  dln.compiler.passes.global_rows); in validation the model's own draw
  counter advances once per global batch on every rank, rows or none.
- **Reduction.** Means over a rank's rows, weighted by its rows, summed
  across ranks (`distributed.reduce_means`): training's in each step
  (dln.runtime.gradient_sync.GradientSync), validation's once, at the end.
- **Whole examples** (a graph every step takes whole) are every rank's
  whole, in training and in validation alike.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from dln.compiler.build import BuiltModel, InputInfo
from dln.compiler.ir import Op
from dln.compiler.recipe import Recipe
from dln.dsl.diagnostics import Diagnostic, DlnError
from dln.runtime import binding, data, distributed
from dln.runtime.api import Model

FILLS = ("randn", "rand", "zeros")
DRAWN = ("randn", "rand")   # the fills that draw from the generator

# (this rank's rows, all ranks' rows, its first row in the global batch) of one step: GradientSync's shares.
Rows = tuple[int, int, int]


def eval_batch(batch: int, ranks: int = 1) -> int:
    """The rows of a validation batch: the global training batch (ranks · `batch`), 256 at least."""
    return max(ranks * batch, 256)


class Batches:
    """The feeds of a run's batches: `model`'s inputs from the data's arrays or fills (`sources`, as
    Trainer._sources gives them), with the run's fill generator `fills`; `group`: this rank's place."""

    def __init__(self, model: Model, recipe: Recipe, group: distributed.Group | None, fills: np.random.Generator):
        self.model = model
        self.recipe = recipe
        self.group = group
        self.fills = fills   # augmentation and filled inputs draw from it; checkpoints save its state
        # Augmentation changes what the model sees, never what a loss compares it with.
        self.targets = target_inputs(model.train_spec)

    def whole_example(self, sources: dict[str, str]) -> tuple[InputInfo, str] | None:
        """The input that makes the data one whole example (data.whole_example), among those fed data."""
        fed = [i for i in self.model.train_spec.inputs if sources.get(i.name) not in (None, *FILLS)]
        return data.whole_example(fed)

    def make(self, arrays: data.Arrays, sources: dict[str, str], idx: np.ndarray, augment: bool = False,
             fills: np.random.Generator | None = None) -> dict[str, Any]:
        """The feeds of the examples `idx`; filled inputs drawn from `fills` (the run's by default)."""
        fills = self.fills if fills is None else fills
        spec = self.model.train_spec
        picked = {info.name: arrays[src][idx] for info in spec.inputs
                  if (src := sources.get(info.name)) is not None and src not in FILLS}
        if augment and self.recipe.augment:
            whole = self.whole_example(sources)
            structure = {whole[0].name} if whole is not None else set()   # an adjacency is not noised
            inputs = {name: x for name, x in picked.items() if name not in self.targets | structure}
            picked = {**picked, **data.augment(inputs, self.recipe.augment, self.fills)}
        feeds: dict[str, Any] = {}
        for info in spec.inputs:
            if info.name in picked:
                feeds[info.name] = binding.convert(info, picked[info.name])
        env = binding.bind([i for i in spec.inputs if i.name in feeds], feeds)
        for info in spec.inputs:
            src = sources.get(info.name)
            if src in FILLS:
                shape = _fill_shape(info, env, len(idx))
                if src == "randn":
                    fill = fills.standard_normal(shape)
                elif src == "rand":
                    fill = fills.random(shape)
                else:
                    fill = np.zeros(shape)
                feeds[info.name] = fill.astype(np.float32)
        return feeds

    def step(self, arrays: data.Arrays, sources: dict[str, str], idx: np.ndarray,
             whole: bool) -> tuple[dict[str, Any] | None, Rows]:
        """A training step's feeds of the global batch `idx` (None without rows of it) and its `Rows`: the
        batch itself in one process; among ranks, rows [rank·b, (rank+1)·b) of it (every rank the whole of
        a whole example, which then counts once per rank)."""
        group = self.group
        if group is None or whole:
            feeds = self.make(arrays, sources, idx, augment=True) if len(idx) else None
            return feeds, (len(idx), len(idx) * (group.size if group is not None else 1), 0)
        b = self.recipe.batch
        draws = bool(self.recipe.augment) or any(s in DRAWN for s in sources.values())
        feeds = self._share(arrays, sources, idx, b, draws, augment=True)
        return feeds, (len(distributed.shard(idx, group.rank, b)), len(idx), _first_row(group, idx, b))

    def _share(self, arrays: data.Arrays, sources: dict[str, str], idx: np.ndarray, per_rank: int, draws: bool,
               augment: bool = False) -> dict[str, Any] | None:
        """This rank's feeds of the global batch `idx` (None without rows): when making them `draws` random
        numbers, made for the whole global batch and cut to the rank's rows, so every rank draws alike."""
        mine = distributed.shard(idx, self.group.rank, per_rank)
        if not draws:
            return self.make(arrays, sources, mine, augment=augment) if len(mine) else None
        lo = _first_row(self.group, idx, per_rank)
        made = self.make(arrays, sources, idx, augment=augment)
        return {name: v[lo:lo + len(mine)] for name, v in made.items()} if len(mine) else None

    def evaluate(self, arrays: data.Arrays, sources: dict[str, str], names: list[str]) -> dict[str, float]:
        """The means of `names` over `arrays` in evaluation mode, in batches of `eval_batch` rows (a whole
        example whole); among ranks, the global batches one process evaluates, this rank's rows of each (see
        the module docstring), the sums reduced once at the end."""
        group = self.group
        n = len(next(iter(arrays.values())))
        whole = self.whole_example(sources) is not None
        sums = dict.fromkeys(names, 0.0)
        if group is None or whole:   # every rank the whole of a whole example, which it then counts whole
            batch = n if whole else eval_batch(self.recipe.batch)
            for start in range(0, n, batch):
                idx = np.arange(start, min(start + batch, n))
                results = self.model.run(names, **self.make(arrays, sources, idx))
                for k in names:
                    sums[k] += float(np.asarray(results[k])) * len(idx)
            return {k: v / max(n, 1) for k, v in sums.items()}
        batch = eval_batch(self.recipe.batch, group.size)
        per_rank = math.ceil(batch / group.size)
        draws = any(s in DRAWN for s in sources.values())
        rows = 0
        for start in range(0, n, batch):
            idx = np.arange(start, min(start + batch, n))
            count = len(distributed.shard(idx, group.rank, per_rank))
            results = self.model._run_rows(names, _first_row(group, idx, per_rank),
                                           self._share(arrays, sources, idx, per_rank, draws))
            for k in names if count else ():
                sums[k] += float(np.asarray(results[k])) * count
            rows += count
        return distributed.reduce_means(group, {k: v / max(rows, 1) for k, v in sums.items()}, rows, n,
                                        "the all_reduce of the validation metrics")


def _first_row(group: distributed.Group, idx: np.ndarray, per_rank: int) -> int:
    """This rank's first row in the global batch `idx` (its length when the rank has none)."""
    return min(group.rank * per_rank, len(idx))


def target_inputs(spec: BuiltModel) -> set[str]:
    """The model inputs a loss takes as its target, directly or through computation (`mse(pred, t)`,
    `cross_entropy(logits, y)`, `bce(recon, x)`): data to compare with, which augmentation leaves alone."""
    graph, names = spec.graph, set()
    stack, seen = list(spec.loss_targets), set()
    while stack:
        node_id = stack.pop()
        if node_id in seen:
            continue
        seen.add(node_id)
        node = graph.node(node_id)
        if node.op is Op.INPUT:
            if node.attrs["role"] == "input":
                names.add(node.attrs["name"])
        else:
            stack.extend(node.inputs)
    return names


def _fill_shape(info: InputInfo, env: dict[str, int], batch: int) -> tuple[int, ...]:
    """The shape of a filled input: its declared dims, a free leading symbol taking the batch size."""
    shape = []
    for axis, d in enumerate(info.type.shape):
        if isinstance(d, int):
            shape.append(d)
        elif d.symbols <= env.keys():
            shape.append(d.evaluate(env))
        elif axis == 0:
            shape.append(batch)
        else:
            raise DlnError(Diagnostic("E0601", f"cannot size the filled input '{info.name}': {d} is unknown",
                                      info.span))
    return tuple(shape)
