"""LeNet on 1x28x28, batch 64, Adam: the convolution benchmark.

* CPU step time: the NumPy backend's training step (forward, backward,
  update) against PyTorch eager's, **each in its own process**: two thread
  pools in one process (OpenBLAS's and PyTorch's OpenMP) spin against each
  other on a small machine and distort both sides.  The two processes take
  turns (one round of steps each, the other waiting on a pipe); the result
  is the median of the per-round means, with the spread and the load.
* Kernels and memory traffic per step: the Triton backend's fusion plan
  (kernel count, modeled HBM bytes) against PyTorch eager's operators and
  bytes, and torch.compile's kernels for forward + backward.

    .venv/bin/python benchmarks/lenet.py [--rounds 15] [--steps 10] [--no-kernels] [--record]

With --record, writes the figures to the "LeNet" section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import datetime
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import paired  # noqa: E402
BATCH = 64
NAMES = ("h.conv2d_0", "h.conv2d_1", "logits.linear_0", "logits.linear_1", "logits.linear_2")


def _data():
    rng = np.random.default_rng(0)
    return rng.random((BATCH, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, BATCH)


def _initial_weights() -> dict[str, np.ndarray]:
    import dln

    return dln.compile(str(HERE / "lenet.dln"), backend="numpy", seed=0).parameters()


def dln_step():
    import dln

    images, y = _data()
    model = dln.compile(str(HERE / "lenet.dln"), backend="numpy", seed=0)
    return paired.dln_adam_step(model, {"images": images, "y": y}, {"B": BATCH})


def torch_net():
    import torch

    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 6, 5), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(6, 16, 5), torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Flatten(),
        torch.nn.Linear(256, 120), torch.nn.ReLU(), torch.nn.Linear(120, 84), torch.nn.ReLU(), torch.nn.Linear(84, 10))
    weights = _initial_weights()
    state = {}
    for k, name in zip((0, 3, 7, 9, 11), NAMES):
        for leaf in ("weight", "bias"):
            state[f"{k}.{leaf}"] = torch.from_numpy(weights[f"{name}.{leaf}"])
    net.load_state_dict(state)
    return net


def torch_step():
    import torch

    return paired.torch_adam_step(torch_net(), *(torch.from_numpy(a) for a in _data()))


def kernel_counts() -> dict:
    """The Triton plan's kernels and modeled bytes; eager's operators and bytes; torch.compile's kernels."""
    import torch
    from torch._inductor.utils import run_and_get_code

    import dln
    from dln.compiler import pipeline
    from dln.kernels.module import generate_module
    from dln.kernels.report import kernel_costs
    from dln.runtime.train import default_objective

    from fusion import _kernel_calls, op_counter  # noqa: E402

    model = dln.compile(str(HERE / "lenet.dln"), backend="numpy", seed=0)
    step = pipeline.train_step(model.train_spec, default_objective(model))
    generated = generate_module(step.graph, step.donate)
    costs = kernel_costs(generated.plan, {"B": BATCH})
    ours = {"kernels": len(costs), "bytes": sum(c.bytes for c in costs), "names": [c.name for c in costs]}

    net = torch_net()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, foreach=True)
    x, y = (torch.from_numpy(a) for a in _data())
    for _ in range(2):
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    with op_counter() as eager:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    eager_counts = {"ops": len(eager.ops), "bytes": sum(b for _, b in eager.ops)}

    compiled_net = torch_net()

    def fwd_bwd(x, y):
        loss = torch.nn.functional.cross_entropy(compiled_net(x), y)
        loss.backward()
        return loss

    _, codes = run_and_get_code(torch.compile(fwd_bwd), x, y)
    compiled = {"forward_backward_kernels": sum(len(_kernel_calls(c)) for c in codes),
                "per_graph": [len(_kernel_calls(c)) for c in codes]}
    return {"dln": ours, "eager": eager_counts, "torch_compile": compiled}


TITLE = "## LeNet training step (issue: NumPy <= 1.5x eager; kernels <= torch.compile's 26; bytes <= 0.5x eager)"


def lenet_section(results: str) -> str:
    """The LeNet section of a RESULTS.md text ("" when it has none)."""
    return paired.find_section(results, "LeNet")


def _section(result: dict) -> str:
    s = result["step"]
    text = (f"{TITLE}\n\nRecorded {datetime.date.today().isoformat()}; `benchmarks/lenet.py` "
            f"(`benchmarks/lenet.dln`): 1x28x28, batch {BATCH}, Adam. Each side runs in its own process, the two "
            f"taking turns; median of {s['rounds']} rounds of {s['steps_per_round']} steps, with the fastest "
            f"and slowest round.\n\n"
            + paired.step_table(s, "PyTorch eager") +
            f"On {s['cpus']} CPUs.\n")
    k = result.get("kernels")
    if k:
        d, e, c = k["dln"], k["eager"], k["torch_compile"]
        text += (f"\n| | kernels per step | modeled HBM bytes |\n| --- | --- | --- |\n"
                 f"| dln, Triton plan (forward + backward + Adam) | **{d['kernels']}** | **{d['bytes']:,}** |\n"
                 f"| PyTorch eager (operators, Adam foreach) | {e['ops']} | {e['bytes']:,} |\n"
                 f"| torch.compile, forward + backward only | {c['forward_backward_kernels']} "
                 f"({' + '.join(map(str, c['per_graph']))}) | - |\n\n"
                 f"dln / eager bytes: **{d['bytes'] / e['bytes']:.3f}**. dln's kernels: {', '.join(d['names'])}.\n")
    return text


def record(result: dict) -> None:
    paired.record("LeNet", _section(result))


def main(argv: list[str] | None = None) -> dict:
    args = paired.arguments(__doc__, argv, steps=10)
    s = paired.measure(__file__, args, dln_step, torch_step)
    if s is None:   # this process was one side of the pair
        return {}
    result = {"step": s}
    print(f"LeNet 1x28x28, batch {BATCH}, Adam; each side in its own process, taking turns; median over "
          f"{s['rounds']} rounds of {s['steps_per_round']} steps")
    paired.print_steps(s, "PyTorch eager", 1.5, 20)
    print(f"  load average 1 min: {s['load_avg_1min_before_after']} on {s['cpus']} cpus")
    if not args.no_kernels:
        k = result["kernels"] = kernel_counts()
        print(f"  Triton plan: {k['dln']['kernels']} kernels per step (Adam included), "
              f"{k['dln']['bytes'] / 1e6:.3f} MB modeled")
        print(f"  PyTorch eager: {k['eager']['ops']} operators, {k['eager']['bytes'] / 1e6:.3f} MB; "
              f"bytes dln / eager = {k['dln']['bytes'] / k['eager']['bytes']:.3f} (goal <= 0.5)")
        print(f"  torch.compile: {k['torch_compile']['forward_backward_kernels']} kernels forward + backward "
              f"{k['torch_compile']['per_graph']} (goal: dln <= it)")
    if args.record:
        record(result)
    return result


if __name__ == "__main__":
    main()
