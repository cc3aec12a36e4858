"""Learning-rate schedules: the rate of each optimizer step, computed on the host.

The rate is an input of the step graph, so a schedule never recompiles.
Step-based schedules (cosine, linear) count optimizer steps; epoch-based
ones (step, exponential, plateau) follow torch's per-epoch schedulers.
"""

from __future__ import annotations

import math

from dln.compiler.values import TrainValue


class Schedule:
    def __init__(self, spec: TrainValue | None, base_lr: float, total_steps: int) -> None:
        self.kind = spec.kind if spec else "constant"
        self.args = dict(spec.args) if spec else {}
        self.base = base_lr
        self.total = max(total_steps, 1)
        self.scale = 1.0          # epoch-based factor
        self.best = math.inf
        self.bad_epochs = 0

    def lr(self, step: int, epoch: int) -> float:
        """The rate for optimizer step `step` (from 0) in epoch `epoch` (from 0)."""
        a = self.args
        if self.kind in ("cosine", "linear"):
            warmup = a.get("warmup", 0)
            if step < warmup:
                return self.base * (step + 1) / warmup
            progress = (step - warmup) / max(1, self.total - warmup)
            if self.kind == "linear":
                return self.base * max(0.0, 1.0 - progress)
            low = a.get("min_lr", 0.0)
            return low + (self.base - low) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
        if self.kind == "step":
            return self.base * a["gamma"] ** (epoch // a["every"])
        if self.kind == "exponential":
            return self.base * a["gamma"] ** epoch
        return self.base * self.scale

    def end_epoch(self, val_loss: float | None) -> None:
        """ReduceLROnPlateau: scale down after `patience` epochs without improvement."""
        if self.kind != "plateau" or val_loss is None:
            return
        if val_loss < self.best:
            self.best, self.bad_epochs = val_loss, 0
        else:
            self.bad_epochs += 1
            if self.bad_epochs > self.args["patience"]:
                self.scale *= self.args["factor"]
                self.bad_epochs = 0

    def state(self) -> dict:
        return {"scale": self.scale, "best": self.best if math.isfinite(self.best) else None,
                "bad_epochs": self.bad_epochs}

    def restore(self, state: dict) -> None:
        self.scale = state.get("scale", 1.0)
        self.best = state["best"] if state.get("best") is not None else math.inf
        self.bad_epochs = state.get("bad_epochs", 0)
