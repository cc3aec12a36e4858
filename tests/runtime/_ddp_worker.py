"""One rank of tests/runtime/test_distributed.py: trains FILE as `dln train` does (`train_file`), in the
process group the environment describes, and writes what it saw to OUT/rank<r>.npz — every step's loss
(as the trainer's step returned it: reduced across ranks), the per-epoch history, the final weights.

    RANK=.. WORLD_SIZE=.. MASTER_ADDR=.. MASTER_PORT=.. python _ddp_worker.py OUT FILE '{"batch": 24, ...}'
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from dln.runtime import distributed
from dln.runtime.train import Trainer, train_file


def record_steps(losses: list[float]):
    """Trainer._step wrapped to append each step's loss to `losses`."""
    step = Trainer._step

    def recording(self, *args, **kwargs):
        out = step(self, *args, **kwargs)
        losses.append(out[self.recipe.objectives[0].loss])
        return out

    return recording


def save(out: Path, losses: list[float], history) -> None:
    weights = {f"w:{k}": v for k, v in history.model.state_dict().items()}
    epochs = {f"h:{k}": np.array([e[k] for e in history.epochs]) for k in history.epochs[0] if k != "time"}
    np.savez(out, losses=np.array(losses), **weights, **epochs)


def main(out: str, file: str, settings: str) -> None:
    group = distributed.from_environment("cpu")
    losses: list[float] = []
    Trainer._step = record_steps(losses)
    settings = {"backend": "numpy", **json.loads(settings)}
    try:
        history = train_file(file, progress=False, logdir=False, group=group, **settings)
    finally:
        distributed.leave(group)
    save(Path(out) / f"rank{group.rank}.npz", losses, history)


if __name__ == "__main__":
    main(*sys.argv[1:])
