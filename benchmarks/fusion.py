"""Kernels per training step and modeled memory traffic: dln against PyTorch.

MLP 784-256-128-10, batch 128, Adam; one step = forward, backward, update.

* dln: the kernels of its fusion plan (the optimizer included) and their
  modeled HBM bytes (each kernel reads what it loads once, writes what it
  stores once: dln.kernels.report).
* PyTorch eager: every aten operator the step dispatches (views and
  metadata-only ops excluded), with the bytes of its tensor inputs and
  outputs, counted with a TorchDispatchMode.  Adam runs with foreach=True, as
  it does by default on a GPU.
* torch.compile: the kernels Inductor's generated code calls for the
  forward and backward (fused kernels and library matmuls), and for the
  compiled optimizer step.

    .venv/bin/python benchmarks/fusion.py
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
BATCH = 128


def dln_counts() -> dict:
    import dln
    from dln.compiler import pipeline
    from dln.kernels.module import generate_module
    from dln.kernels.report import kernel_costs
    from dln.runtime.train import default_objective

    model = dln.compile(str(HERE / "mlp_784.dln"))
    step = pipeline.train_step(model.train_spec, default_objective(model))
    generated = generate_module(step.graph, step.donate)
    costs = kernel_costs(generated.plan, {"B": BATCH})
    optimizer = [c for c in costs if "update" in c.name]
    return {"kernels": len(costs), "kernels_with_optimizer_work": len(optimizer),
            "bytes": sum(c.bytes for c in costs), "names": [c.name for c in costs],
            "peak_activation_bytes": generated.plan.memory.peak_bytes({"B": BATCH})}


def _net():
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(784, 256), torch.nn.ReLU(), torch.nn.Linear(256, 128),
                               torch.nn.ReLU(), torch.nn.Linear(128, 10))


def _data():
    import torch

    rng = np.random.default_rng(0)
    return (torch.from_numpy(rng.random((BATCH, 784), dtype=np.float32)),
            torch.from_numpy(rng.integers(0, 10, BATCH)))


# Operators that move no data: views and metadata.
_NO_DATA = {"view", "_unsafe_view", "t", "transpose", "permute", "expand", "detach", "alias", "as_strided",
            "reshape", "squeeze", "unsqueeze", "select", "slice", "empty", "empty_like", "empty_strided",
            "lift_fresh"}


def op_counter():
    """A TorchDispatchMode recording each aten operator that moves data, with the bytes of its tensors
    (inputs and outputs): `with op_counter() as c: ...` then `c.ops`."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops: list[tuple[str, int]] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            name = func.overloadpacket.__name__
            if name not in _NO_DATA:
                tensors = [t for t in tree_flatten((args, kwargs, out))[0] if isinstance(t, torch.Tensor)]
                self.ops.append((name, sum(t.numel() * t.element_size() for t in tensors)))
            return out

    return Count()


def warm_adam(net, x, y):
    """Adam (foreach) on `net`'s parameters after two cross-entropy steps on (x, y): the first creates
    the optimizer's state, which the step to count should not."""
    import torch

    opt = torch.optim.Adam(net.parameters(), lr=1e-3, foreach=True)
    for _ in range(2):
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return opt


def step_ops(net, opt, x, y) -> dict[str, list[tuple[str, int]]]:
    """The aten operators (name, modeled bytes: `op_counter`) of one cross-entropy training step, by phase."""
    import torch

    with op_counter() as forward:
        loss = torch.nn.functional.cross_entropy(net(x), y)
    with op_counter() as backward:
        loss.backward()
    with op_counter() as update:
        opt.step()
    return {"forward": forward.ops, "backward": backward.ops, "optimizer": update.ops}


def op_totals(ops: dict[str, list[tuple[str, int]]]) -> dict:
    """`step_ops`' operators and bytes, in all and by phase."""
    phases = {name: {"ops": len(o), "bytes": sum(b for _, b in o)} for name, o in ops.items()}
    return {"ops": sum(p["ops"] for p in phases.values()), "bytes": sum(p["bytes"] for p in phases.values()),
            "phases": phases}


def eager_counts() -> dict:
    net = _net()
    x, y = _data()
    # The gradients of the warm-up stay: backward adds into them, as in a loop without zero_grad.
    return op_totals(step_ops(net, warm_adam(net, x, y), x, y))


def compiled_counts() -> dict:
    import torch
    from torch._inductor.utils import run_and_get_code

    net = _net()
    x, y = _data()

    def step(x, y):
        loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        return loss

    _, codes = run_and_get_code(torch.compile(step), x, y)
    per_graph = [_kernel_calls(code) for code in codes]
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    _, opt_codes = run_and_get_code(torch.compile(opt.step))
    return {"forward_backward_kernels": sum(len(k) for k in per_graph), "per_graph": [len(k) for k in per_graph],
            "optimizer_kernels": sum(len(_kernel_calls(c)) for c in opt_codes)}


def _kernel_calls(code: str) -> list[str]:
    call = code[code.index("def call("):] if "def call(" in code else code
    return re.findall(r"^\s+(extern_kernels\.\w+|cpp_fused_\w+|triton_\w+)\(", call, re.M)


def main() -> dict:
    ours, eager, compiled = dln_counts(), eager_counts(), compiled_counts()
    print(f"MLP 784-256-128-10, batch {BATCH}, Adam: one training step (forward + backward + update)")
    print(f"  dln            {ours['kernels']:3d} kernels (optimizer included)  {ours['bytes'] / 1e6:8.3f} MB modeled")
    p = eager["phases"]
    print(f"  PyTorch eager  {eager['ops']:3d} operators ({p['forward']['ops']} fwd + {p['backward']['ops']} bwd + "
          f"{p['optimizer']['ops']} optimizer)  {eager['bytes'] / 1e6:8.3f} MB")
    print(f"  torch.compile  {compiled['forward_backward_kernels']:3d} kernels forward+backward "
          f"({' + '.join(map(str, compiled['per_graph']))}), +{compiled['optimizer_kernels']} for the compiled "
          "optimizer step")
    print(f"  kernels: dln {ours['kernels']} <= torch.compile {compiled['forward_backward_kernels']} (without its "
          f"optimizer): {ours['kernels'] <= compiled['forward_backward_kernels']}")
    print(f"  bytes: dln / eager = {ours['bytes'] / eager['bytes']:.3f} (target <= 0.5)")
    return {"dln": ours, "eager": eager, "torch_compile": compiled}


if __name__ == "__main__":
    main()
    sys.exit(0)
