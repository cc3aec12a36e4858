"""On an NVIDIA GPU: the reference models' training steps, dln's Triton backend against PyTorch.

Models: benchmarks/mlp_784.dln (batch 128 and 4096), lenet.dln (64),
lstm.dln (32, T = 50) and gpt.dln (16, T = 64), each trained with Adam
(lr 1e-3) from the same initial weights on every side:

* dln, Triton backend, whole steps replayed as CUDA graphs (runtime/step_graphs.py);
* dln, Triton backend, graphs off: the lean launcher (kernels/prebound.py);
* PyTorch eager (the twins of benchmarks/lenet.py, lstm.py, gpt.py);
* torch.compile of the forward + loss and of `optimizer.step`.

Method: every side is built and warmed up (compilation, autotuning, graph
capture), then the sides take turns, one round of `--steps` steps each, for
`--rounds` rounds; a round is timed with CUDA events around its steps (so
host launch cost counts, as it does in training) and divided by the steps.
The table gives the median over rounds with the fastest and slowest round.
A dln step ends with the class-index check of its loss, which reads one
value back to the host (a synchronization PyTorch's steps do not make).
Peak memory: `torch.cuda.max_memory_allocated` over 3 steps after warm-up,
less what was allocated before the side was built (parameters, optimizer
state, workspace and activations included).

    .venv/bin/python benchmarks/gpu_step.py [--rounds 15] [--steps 20] [--record]

With --record, writes benchmarks/RESULTS-gpu.md.  Run through benchmarks/gpu.sh.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import platform
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "examples"))
RESULTS = HERE / "RESULTS-gpu.md"
SIDES = ("dln, CUDA graphs", "dln, lean launcher", "PyTorch eager", "torch.compile")
EAGER = "PyTorch eager"


@dataclass
class Reference:
    """A reference model at one batch: its .dln file, sizes, one batch of data and its PyTorch twin."""

    name: str
    dln: str
    env: dict[str, int]
    feeds: dict[str, np.ndarray]          # by input name, as dln takes them
    torch_net: Callable[[], Any]          # the twin, on the CPU, from dln's initial weights
    torch_data: Callable[[], tuple]       # (input, target) as the twin takes them, on the CPU


def references() -> list[Reference]:
    import torch

    import gpt
    import lenet
    import lstm

    out = []
    for batch in (128, 4096):
        rng = np.random.default_rng(0)
        x, y = rng.random((batch, 784), dtype=np.float32), rng.integers(0, 10, batch)

        out.append(Reference(f"MLP 784-256-128-10, batch {batch}", "mlp_784.dln", {"B": batch}, {"x": x, "y": y},
                             _mlp_twin, lambda x=x, y=y: (torch.from_numpy(x), torch.from_numpy(y))))
    images, labels = lenet._data()
    out.append(Reference(f"LeNet, batch {lenet.BATCH}", "lenet.dln", {"B": lenet.BATCH},
                         {"images": images, "y": labels}, lenet.torch_net,
                         lambda: (torch.from_numpy(images), torch.from_numpy(labels))))
    xs, ys = lstm._data()
    out.append(Reference(f"LSTM {lstm.FEATURES}->{lstm.HIDDEN}, T {lstm.STEPS}, batch {lstm.BATCH}", "lstm.dln",
                         {"B": lstm.BATCH, "T": lstm.STEPS}, {"x": xs, "y": ys}, lstm.torch_net,
                         lambda: (torch.from_numpy(xs), torch.from_numpy(ys))))
    tokens, targets = gpt._data()
    out.append(Reference(f"GPT block, batch {gpt.BATCH}, T {gpt.T}", "gpt.dln", {"B": gpt.BATCH, "T": gpt.T},
                         {"tokens": tokens, "targets": targets}, gpt.torch_net, gpt._torch_data))
    return out


def _mlp_twin():
    import torch

    import dln

    net = torch.nn.Sequential(torch.nn.Linear(784, 256), torch.nn.ReLU(), torch.nn.Linear(256, 128),
                              torch.nn.ReLU(), torch.nn.Linear(128, 10))
    params = dln.compile(str(HERE / "mlp_784.dln"), backend="numpy", seed=0).parameters()
    state = {}
    for k, name in zip((0, 2, 4), ("logits.linear_0", "logits.linear_1", "logits.linear_2")):
        for leaf in ("weight", "bias"):
            state[f"{k}.{leaf}"] = torch.from_numpy(params[f"{name}.{leaf}"])
    net.load_state_dict(state)
    return net


def dln_side(ref: Reference, graphs: bool) -> Callable[[], None]:
    """dln's training step of `ref` on the GPU, the batch already on the device."""
    import torch

    import dln

    model = dln.compile(str(HERE / ref.dln), backend="triton", seed=0)
    model.backend.cuda_graphs = graphs
    opt = dln.optimizer(model, "adam", lr=1e-3)
    exe = opt.prepared
    feeds = {k: torch.from_numpy(v).cuda() for k, v in ref.feeds.items()}
    count = [0]

    def run() -> None:
        count[0] += 1
        exe.run({**feeds, "lr": np.array(1e-3), "step": np.array(float(count[0]))}, ref.env)
    return run


def torch_side(ref: Reference, compiled: bool) -> Callable[[], None]:
    import torch

    net = ref.torch_net().cuda()
    x, y = (t.cuda() for t in ref.torch_data())
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)

    def loss():
        return torch.nn.functional.cross_entropy(net(x), y)

    forward, update = (torch.compile(loss), torch.compile(opt.step)) if compiled else (loss, opt.step)

    def run() -> None:
        opt.zero_grad(set_to_none=True)
        forward().backward()
        update()
    return run


def build(ref: Reference, side: str) -> tuple[Callable[[], None], int]:
    """A side's step, warmed up, and its peak memory in bytes (see the module's docstring)."""
    import torch

    gc.collect()
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    if side.startswith("dln"):
        run = dln_side(ref, graphs=side == SIDES[0])
    else:
        run = torch_side(ref, compiled=side == "torch.compile")
    for _ in range(5):
        run()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    for _ in range(3):
        run()
    torch.cuda.synchronize()
    return run, torch.cuda.max_memory_allocated() - before


def round_ms(run: Callable[[], None], steps: int) -> float:
    import torch

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(steps):
        run()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / steps


def measure(ref: Reference, rounds: int, steps: int) -> list[dict]:
    """Every side's median, fastest and slowest round (ms per step) and peak memory for `ref`."""
    built = {side: build(ref, side) for side in SIDES}
    times: dict[str, list[float]] = {side: [] for side in SIDES}
    for _ in range(rounds):
        for side, (run, _) in built.items():   # the sides take turns
            times[side].append(round_ms(run, steps))
    return [{"model": ref.name, "side": side, "median_ms": statistics.median(t), "min_ms": min(t),
             "max_ms": max(t), "peak_bytes": built[side][1]} for side, t in times.items()]


def results_markdown(rows: list[dict], machine: dict[str, str], rounds: int, steps: int) -> str:
    """RESULTS-gpu.md: the method, the machine and one table per model (each side's time against eager's)."""
    method = __doc__.split("Method: ", 1)[1].split("\n\n", 1)[0]
    out = ["# GPU benchmark results\n",
           f"Recorded {machine['date']} by `benchmarks/gpu.sh` (`benchmarks/gpu_step.py`) on "
           f"**{machine['device']}**; {machine['versions']}.\n",
           "Method: " + " ".join(method.split()) + f" Here {rounds} rounds of {steps} steps.\n"]
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        eager = next(r["median_ms"] for r in mine if r["side"] == EAGER)
        out.append(f"## {model}\n")
        out.append("| | ms per step (median) | fastest - slowest round | / eager | peak memory (MiB) |")
        out.append("| --- | --- | --- | --- | --- |")
        for r in mine:
            out.append(f"| {r['side']} | {r['median_ms']:.3f} | {r['min_ms']:.3f} - {r['max_ms']:.3f} | "
                       f"{r['median_ms'] / eager:.2f}x | {r['peak_bytes'] / 2 ** 20:.1f} |")
        out.append("")
    return "\n".join(out)


def machine() -> dict[str, str]:
    import torch
    import triton

    return {"date": datetime.date.today().isoformat(), "device": torch.cuda.get_device_name(),
            "versions": (f"Python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
                         f"Triton {triton.__version__}")}


def main(argv: list[str] | None = None) -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--record", action="store_true", help=f"write {RESULTS.name}")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("benchmarks/gpu_step.py needs an NVIDIA GPU that torch can see; nothing was measured")
    rows = []
    for ref in references():
        found = measure(ref, args.rounds, args.steps)
        for r in found:
            print(f"{r['model']:40s} {r['side']:20s} {r['median_ms']:8.3f} ms/step "
                  f"[{r['min_ms']:.3f}, {r['max_ms']:.3f}]  peak {r['peak_bytes'] / 2 ** 20:.1f} MiB", flush=True)
        rows += found
    if args.record:
        RESULTS.write_text(results_markdown(rows, machine(), args.rounds, args.steps))
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
