"""`dln bench FILE`: a training step's kernels and memory traffic, against PyTorch.

* dln: the kernels of the fusion plan for forward + backward + optimizer,
  with modeled HBM bytes (dln.kernels.report) and, on a GPU, measured times.
* PyTorch eager running the same step graph op by op: the operators it
  dispatches and the bytes they read and write (a TorchDispatchMode).
* torch.compile of that same function: the kernels Inductor generates and
  calls (fused kernels and library matmuls).
* On this machine's CPU, the NumPy backend's step time against PyTorch
  eager's.
"""

from __future__ import annotations

import re
import statistics
import time

import numpy as np

from dln.compiler import pipeline
from dln.kernels.module import generate_module
from dln.kernels.report import kernel_costs
from dln.runtime.backends import MERGES_PRODUCTS
from dln.runtime.torch_graph import make_runner, random_inputs


def _median_time(fn, rounds: int = 7, repeat: int = 5) -> float:
    fn()
    samples = []
    for _ in range(rounds):
        began = time.perf_counter()
        for _ in range(repeat):
            fn()
        samples.append((time.perf_counter() - began) / repeat)
    return statistics.median(samples)


def eager_ops(run, inputs) -> tuple[int, int]:
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    no_data = {"view", "_unsafe_view", "t", "transpose", "permute", "expand", "detach", "alias", "as_strided",
               "reshape", "squeeze", "unsqueeze", "select", "slice", "lift_fresh"}

    class Count(TorchDispatchMode):
        ops = 0
        nbytes = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func.overloadpacket.__name__ not in no_data:
                Count.ops += 1
                Count.nbytes += sum(t.numel() * t.element_size() for t in tree_flatten((args, kwargs, out))[0]
                                    if isinstance(t, torch.Tensor))
            return out

    with Count():
        run(inputs)
    return Count.ops, Count.nbytes


def compiled_kernels(run, inputs) -> int | None:
    try:
        import torch
        from torch._inductor.utils import run_and_get_code
    except ImportError:
        return None
    _, codes = run_and_get_code(torch.compile(run), inputs)
    calls = 0
    for code in codes:
        body = code[code.index("def call("):] if "def call(" in code else code
        calls += len(re.findall(r"^\s+(extern_kernels\.\w+|cpp_fused_\w+|triton_\w+)\(", body, re.M))
    return calls


def bench_report(model, batch: int = 128, compile_torch: bool = True) -> str:
    from dln.runtime.train import default_objective

    objective = default_objective(model)
    step = pipeline.train_step(model.train_spec, objective, merge=MERGES_PRODUCTS["triton"])   # as the kernels run
    graph = step.graph
    env = {s: batch for s in graph.symbols()}
    generated = generate_module(graph, step.donate)
    costs = kernel_costs(generated.plan, env)
    lines = [f"{model.name}: one training step (forward + backward + {objective.optimizer.kind}), "
             f"{', '.join(f'{k} = {v}' for k, v in env.items()) or 'no symbolic sizes'}", ""]
    lines.append(f"{'kernel':<48} {'kind':<12} {'FLOPs':>12} {'bytes':>12}")
    for c in costs:
        lines.append(f"{c.name:<48} {c.kind:<12} {c.flops:>12,} {c.bytes:>12,}")
    ours_bytes = sum(c.bytes for c in costs)
    lines += ["", f"dln            {len(costs):4d} kernels   {ours_bytes:>14,} bytes modeled"]
    # Time first: torch.compile leaves worker processes busy for a while.
    numpy_time = _numpy_step_time(model, step, env)
    inputs = random_inputs(graph, env)
    run = make_runner(graph, env)
    eager_time = _median_time(lambda: run(inputs))
    ops, eager_bytes = eager_ops(run, inputs)
    lines.append(f"PyTorch eager  {ops:4d} operators {eager_bytes:>14,} bytes (the same graph, op by op)")
    if compile_torch:
        kernels = compiled_kernels(run, inputs)
        if kernels is not None:
            lines.append(f"torch.compile  {kernels:4d} kernels   (Inductor, the same graph)")
    lines.append(f"bytes: dln / eager = {ours_bytes / max(eager_bytes, 1):.3f}")
    lines.append(f"CPU step time: dln NumPy backend {numpy_time * 1e3:.3f} ms, PyTorch eager {eager_time * 1e3:.3f} ms")
    return "\n".join(lines)


def _numpy_step_time(model, step, env) -> float:
    from dln.runtime.interpreter import Executable

    states = {s.name: np.zeros(tuple(int(d) for d in s.type.shape), np.float32) for s in step.states}
    params = {k: v.copy() for k, v in model.state_dict().items()}
    exe = Executable(step.graph, {**params, **states}, step.donate)
    inputs = {k: v.numpy() for k, v in random_inputs(step.graph, env).items() if k not in params and k not in states}
    return _median_time(lambda: exe.run(inputs, env))


def gpu_model_report(model, gpu: str, batch: int = 128, precision: str = "ieee") -> str:
    """`dln bench --gpu h100`: the training step's kernels planned for that GPU and modeled on it, against
    PyTorch eager's modeled kernels (dln.kernels.gpu_model) — no GPU needed, and no measurement."""
    from dln.compiler.fusion.target import MACHINES
    from dln.kernels.gpu_model import eager_model, format_model, model_module
    from dln.runtime.train import default_objective

    machine = MACHINES[gpu]
    step = pipeline.train_step(model.train_spec, default_objective(model))
    env = {s: batch for s in step.graph.symbols()}
    generated = generate_module(step.graph, step.donate, precision, machine=machine, sizes=env)
    ours = model_module(generated, machine, env, precision)
    eager = eager_model(step.graph, machine, env, precision)
    return "\n".join([f"{model.name}: one training step (forward + backward + optimizer)", ""]
                     + format_model(ours, eager, machine, env))
