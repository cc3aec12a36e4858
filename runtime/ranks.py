"""A rank's part of each global batch, in training and in validation (data parallelism).

The trainer (dln.runtime.train) walks the global batches one process at
batch N·b would; this module says what this rank takes of each, so that N
ranks compute one process's figures (dln.runtime.distributed states the
contract):

- **Rows.** Rank r takes a contiguous run of each global batch: rows
  [r·p, (r+1)·p) of it, p = b in training (`distributed.shard`) and
  ceil(G / N) in validation, where the global batch is G = max(N·b, 256) rows
  as one process's.  A short last batch leaves some ranks fewer rows, or none.
- **Draws.** Numbers drawn on the host (augmentation, filled inputs) are
  drawn for the whole global batch on every rank, which keeps its rows: the
  same numbers, and the same generator state after.  Draws inside the model
  are counted from the rank's first row in the global batch (`rng.row`,
  dln.compiler.passes.global_rows); in validation the model's own draw
  counter advances once per global batch on every rank, rows or none.
- **Reduction.** Means over a rank's rows, weighted by its rows, summed
  across ranks (`distributed.reduce_means`): training's per step (in the
  step itself), validation's once, at the end.
- **Whole examples** (a graph every step takes whole) are every rank's
  whole, in training and in validation alike.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from dln.runtime import data, distributed

if TYPE_CHECKING:
    from dln.runtime.train import Trainer

FILLS = ("randn", "rand")


def eval_batch(batch: int, ranks: int = 1) -> int:
    """The rows of a validation batch: at least 256, else the global training batch (ranks · `batch`)."""
    return max(ranks * batch, 256)


def first_row(group: distributed.Group, idx: np.ndarray, per_rank: int) -> int:
    """This rank's first row in the global batch `idx` (its length when the rank has none)."""
    return min(group.rank * per_rank, len(idx))


def feeds(trainer: Trainer, arrays: data.Arrays, sources: dict[str, str], idx: np.ndarray, per_rank: int,
          draws: bool, augment: bool = False) -> dict[str, Any] | None:
    """This rank's feeds of the global batch `idx` (None without rows): when making them `draws` random
    numbers, made for the whole global batch and cut to the rank's rows, so every rank draws alike."""
    mine = distributed.shard(idx, trainer.group.rank, per_rank)
    if draws:
        lo = first_row(trainer.group, idx, per_rank)
        made = trainer._batch(arrays, sources, idx, augment=augment)
        return {name: v[lo:lo + len(mine)] for name, v in made.items()} if len(mine) else None
    return trainer._batch(arrays, sources, mine, augment=augment) if len(mine) else None


def evaluate(trainer: Trainer, arrays: data.Arrays, sources: dict[str, str], names: list[str]) -> dict[str, float]:
    """The means of `names` over `arrays` in evaluation mode, among ranks: the global batches one process
    evaluates, this rank's rows of each (see the module docstring), the sums reduced once at the end."""
    group, model = trainer.group, trainer.model
    n = len(next(iter(arrays.values())))
    batch = eval_batch(trainer.recipe.batch, group.size)
    per_rank = math.ceil(batch / group.size)
    draws = any(s in FILLS for s in sources.values())
    sums, rows = dict.fromkeys(names, 0.0), 0
    for start in range(0, n, batch):
        idx = np.arange(start, min(start + batch, n))
        count = len(distributed.shard(idx, group.rank, per_rank))
        results = model._run_rows(names, first_row(group, idx, per_rank),
                                  feeds(trainer, arrays, sources, idx, per_rank, draws))
        for k in names if count else ():
            sums[k] += float(np.asarray(results[k])) * count
        rows += count
    return distributed.reduce_means(group, {k: v / max(rows, 1) for k, v in sums.items()}, rows, n,
                                    "the all_reduce of the validation metrics")
