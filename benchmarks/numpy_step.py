"""The NumPy backend's training step against PyTorch eager, on the CPU.

MLP 784-256-128-10, batch 128, Adam: one step = forward, backward, update.
Both run in this process, interleaved round by round, from the same initial
weights; the result is the median over rounds of each side's mean step time.
The machine's load is reported, since other work skews both sides.

    .venv/bin/python benchmarks/numpy_step.py [--rounds 30] [--steps 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import paired  # noqa: E402


def dln_step(batch: int):
    import dln
    from dln.compiler import pipeline
    from dln.runtime.train import default_objective

    model = dln.compile(str(HERE / "mlp_784.dln"), backend="numpy")
    objective = default_objective(model)
    step = pipeline.train_step(model.train_spec, objective)
    states = {s.name: np.zeros(tuple(int(d) for d in s.type.shape), np.float32) for s in step.states}
    rng = {"rng.step": np.array(0, np.int64)}
    exe = model.backend.prepare(step.graph, {**model._params, **states, **rng}, step.donate)
    rng = np.random.default_rng(0)
    x = rng.random((batch, 784), dtype=np.float32)
    y = rng.integers(0, 10, batch)
    count = [0]

    def run() -> float:
        count[0] += 1
        out = exe.run({"x": x, "y": y, "lr": np.array(1e-3), "step": np.array(float(count[0]))}, {"B": batch})
        return float(out["loss"])

    return model, run


def torch_step(model, batch: int):
    import torch

    net = torch.nn.Sequential(torch.nn.Linear(784, 256), torch.nn.ReLU(), torch.nn.Linear(256, 128),
                              torch.nn.ReLU(), torch.nn.Linear(128, 10))
    names = ["logits.linear_0", "logits.linear_1", "logits.linear_2"]
    state = {}
    params = model.parameters()
    for k, name in zip((0, 2, 4), names):
        state[f"{k}.weight"] = torch.from_numpy(params[f"{name}.weight"])
        state[f"{k}.bias"] = torch.from_numpy(params[f"{name}.bias"])
    net.load_state_dict(state)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.random((batch, 784), dtype=np.float32))
    y = torch.from_numpy(rng.integers(0, 10, batch))
    return paired.torch_adam_step(net, x, y)


def measure(run, steps: int) -> float:
    began = time.perf_counter()
    for _ in range(steps):
        run()
    return (time.perf_counter() - began) / steps


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args(argv)
    import torch

    model, ours = dln_step(args.batch)
    theirs = torch_step(model, args.batch)
    first = (ours(), theirs())
    for _ in range(5):  # warm up: plans, allocator, BLAS threads
        ours(), theirs()
    load_before = os.getloadavg()
    dln_times, torch_times = [], []
    for _ in range(args.rounds):
        dln_times.append(measure(ours, args.steps))
        torch_times.append(measure(theirs, args.steps))
    load_after = os.getloadavg()
    d, t = statistics.median(dln_times), statistics.median(torch_times)
    result = {
        "dln_numpy_ms": round(d * 1e3, 3), "torch_eager_ms": round(t * 1e3, 3), "ratio": round(d / t, 3),
        "first_losses": [round(v, 5) for v in first], "rounds": args.rounds, "steps_per_round": args.steps,
        "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
        "load_avg_1min_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
    }
    print(f"MLP 784-256-128-10, batch {args.batch}, Adam; median over {args.rounds} rounds of {args.steps} steps")
    print(f"  dln (NumPy backend) {d * 1e3:8.3f} ms/step")
    print(f"  PyTorch eager       {t * 1e3:8.3f} ms/step   ({torch.get_num_threads()} threads)")
    print(f"  ratio dln / eager   {d / t:8.3f}   (target <= 1.0)")
    print(f"  load average 1 min: {load_before[0]:.2f} before, {load_after[0]:.2f} after, {os.cpu_count()} cpus")
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
