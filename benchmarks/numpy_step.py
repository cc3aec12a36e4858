"""The NumPy backend's MLP training step against PyTorch eager, on the CPU.

MLP 784-256-128-10, batch 128, cross-entropy, Adam, from the same initial
weights.  Two measurements: the whole step (forward, backward, update) and
forward + backward alone (the loss and every parameter's gradient).

Each side runs in its own process (`paired.step_times`): two thread pools in
one process — OpenBLAS's and PyTorch's OpenMP — spin against each other on a
small machine and distort both sides (interleaved in one process this step
once measured 0.40x eager; apart, about 1.0x).  The two processes take turns,
one round of steps each while the other waits on a pipe; the figures are
medians over rounds with the fastest and slowest round, at 1 and at 2 threads
a side (every pool of a process limited through OMP_NUM_THREADS,
OPENBLAS_NUM_THREADS and MKL_NUM_THREADS), with the load average before and
after.

    .venv/bin/python benchmarks/numpy_step.py [--rounds 15] [--steps 20] [--record]
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path
from typing import Callable

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import paired  # noqa: E402

BATCH = 128
MODES = {"step": "forward + backward + Adam update", "fwd_bwd": "forward + backward (loss and gradients)"}
THREADS = (1, 2)


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.random((BATCH, 784), dtype=np.float32), rng.integers(0, 10, BATCH)


def _model():
    import dln

    return dln.compile(str(HERE / "mlp_784.dln"), backend="numpy", seed=0)


def dln_side(mode: str) -> Callable[[], float]:
    x, y = _data()
    model = _model()
    if mode == "step":
        return paired.dln_adam_step(model, {"x": x, "y": y}, {"B": BATCH})
    from dln.compiler import pipeline

    graph = pipeline.gradient_graph(model.train_spec, "loss")
    exe = model.backend.prepare(graph, {**model._params, "rng.step": np.array(0, np.int64)}, {})

    def run() -> float:
        return float(exe.run({"x": x, "y": y}, {"B": BATCH})["loss"])
    return run


def torch_net(params: dict[str, np.ndarray]):
    import torch

    net = torch.nn.Sequential(torch.nn.Linear(784, 256), torch.nn.ReLU(), torch.nn.Linear(256, 128),
                              torch.nn.ReLU(), torch.nn.Linear(128, 10))
    state = {}
    for k, name in zip((0, 2, 4), ("logits.linear_0", "logits.linear_1", "logits.linear_2")):
        state[f"{k}.weight"] = torch.from_numpy(params[f"{name}.weight"])
        state[f"{k}.bias"] = torch.from_numpy(params[f"{name}.bias"])
    net.load_state_dict(state)
    return net


def torch_side(mode: str) -> Callable[[], float]:
    import torch

    net = torch_net(_model().parameters())
    x, y = (torch.from_numpy(a) for a in _data())
    if mode == "step":
        return paired.torch_adam_step(net, x, y)

    def run() -> float:
        for p in net.parameters():
            p.grad = None
        loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        return float(loss.detach())
    return run


def measure_all(rounds: int, steps: int) -> dict:
    """Every (mode, threads) pair, each a paired measurement of its own."""
    out = {}
    for mode in MODES:
        for threads in THREADS:
            s = paired.step_times(__file__, rounds, steps, threads, ("--mode", mode))
            out[f"{mode}/{threads}"] = s
            print(f"MLP 784-256-128-10, batch {BATCH}, {MODES[mode]}, {threads} thread(s) a side; "
                  f"median over {rounds} rounds of {steps} steps")
            paired.print_steps(s, "PyTorch eager", 1.0, 20)
            print(f"  load average 1 min: {s['load_avg_1min_before_after']} on {s['cpus']} cpus")
    return out


TITLE = "## Training step on the NumPy backend (issue: <= 1.0x PyTorch eager)"


def section(result: dict) -> str:
    first = next(iter(result.values()))
    rows = []
    for mode, label in MODES.items():
        for threads in THREADS:
            s = result[f"{mode}/{threads}"]
            rows.append(f"| {label} | {threads} | {s['dln_numpy_ms']} ({s['dln_spread_ms'][0]} - "
                        f"{s['dln_spread_ms'][1]}) | {s['torch_eager_ms']} ({s['torch_spread_ms'][0]} - "
                        f"{s['torch_spread_ms'][1]}) | **{s['ratio']}** | {s['load_avg_1min_before_after']} |")
    return (f"{TITLE}\n\nRecorded {datetime.date.today().isoformat()}; `benchmarks/numpy_step.py` "
            f"(`benchmarks/mlp_784.dln`): MLP 784-256-128-10, batch {BATCH}, cross-entropy, Adam, the same initial "
            f"weights (first losses {first['first_losses']}).  Each side runs in its own process with the given "
            f"number of threads in every pool, the two taking turns (a 0.3 s pause before each turn, so that the pool "
            f"threads of the side that just ran have stopped spinning); medians of {first['rounds']} rounds of "
            f"{first['steps_per_round']} steps, with the fastest and slowest round.  The figure this section used "
            f"to report (0.40x) came from both sides in one process, where their thread pools spin against each "
            f"other on two cores.\n\n"
            "| measured | threads a side | dln, NumPy backend, ms (spread) | PyTorch eager, ms (spread) | ratio "
            "| load avg. (1 min) before, after |\n| --- | --- | --- | --- | --- | --- |\n"
            + "\n".join(rows) + f"\n\nOn {first['cpus']} CPUs.\n")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--mode", choices=tuple(MODES), default="step", help=argparse.SUPPRESS)
    parser.add_argument("--record", action="store_true", help="write the figures to benchmarks/RESULTS.md")
    parser.add_argument("--child", choices=("dln", "torch"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        paired.child(dln_side(args.mode) if args.child == "dln" else torch_side(args.mode))
        return {}
    result = measure_all(args.rounds, args.steps)
    if args.record:
        paired.record("Training step on the NumPy backend", section(result))
    return result


if __name__ == "__main__":
    main()
