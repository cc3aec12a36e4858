"""The launcher's host cost per training step, measured without a GPU.

A small batch on a GPU is launch-bound: the step's time is the Python that
lays out buffers and launches a dozen kernels, not the kernels.  This script
times that Python on the CPU for the training steps of benchmarks/mlp_784.dln
and lenet.dln, with the kernels not run:

* `launcher`: the generated launcher with every Triton kernel replaced by a
  no-op (as dln.kernels.aot.record_launches does): dln's own cost.
* `dispatch`: the kernels are real `triton.jit` functions going through
  Triton's per-call dispatch (`JITFunction.run`: binding the arguments, the
  specialization key, the cache lookup, the grid), on a stand-in CUDA driver
  whose compiled kernel launches nothing: dln's cost plus Triton's, which is
  what a GPU step pays before the driver's own launch.
* `step`: `dispatch` through `TritonExecutable.run`, the runtime's entry
  (feeds copied into the binding's device buffers, the persistent buffers
  checked, the loss's class indices checked).

Each is timed with the lean path off (`Program.prebound = False`, the
readable launcher every step) and on (launches prebound per size binding).
A last line, `step` with `graph`, gives the host cost of a step replayed as
a CUDA graph (runtime/step_graphs.py) less the graph launch itself: a
stand-in graph whose replay does nothing.
Medians over rounds; run with OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1.

    .venv/bin/python benchmarks/launch_overhead.py [--rounds 15] [--steps 200]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from pathlib import Path
from typing import Any, Callable

os.environ["TRITON_INTERPRET"] = "0"   # kernels are `triton.jit` functions, never run here

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
MODELS = {"mlp_784": 128, "lenet": 64}


class _NoKernel:
    """A kernel that launches nothing: `kernel[grid](*args, **cfg)` returns at once."""

    def __getitem__(self, grid) -> Callable[..., None]:
        return lambda *args, **kwargs: None


class _NoGraph:
    """A CUDA graph whose replay launches nothing."""

    def replay(self) -> None:
        pass


class _FakeCompiled:
    """What Triton's cache holds after compiling a kernel; its launcher does nothing."""

    function = 0
    packed_metadata = ()

    def run(self, *args: Any) -> None:
        pass

    def launch_metadata(self, grid, stream, *args):
        return None


class _FakeDriver:
    """Enough of Triton's active driver for `JITFunction.run` on a machine without a GPU."""

    def __init__(self) -> None:
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", 90, 32)

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int) -> int:
        return 0

    def get_current_target(self):
        return self.target


def _fake_compile(fn) -> None:
    """Make `fn` (a JITFunction) cache a `_FakeCompiled` where it would compile."""
    def compile_(key, signature, device, constexprs, options, attrs, warmup):
        kernel = fn.device_caches[device][0][key] = _FakeCompiled()
        return kernel

    fn._do_compile = compile_


def training_step(name: str):
    """The step graph of a benchmark model, its persistent buffers (NumPy) and one batch of feeds."""
    import dln
    from dln.compiler import pipeline
    from dln.runtime.train import default_objective

    model = dln.compile(str(HERE / f"{name}.dln"), backend="numpy")
    step = pipeline.train_step(model.train_spec, default_objective(model))
    batch = MODELS[name]
    persistent = {k: np.asarray(v) for k, v in model.parameters().items()}
    persistent.update({s.name: np.zeros(tuple(int(d) for d in s.type.shape), np.float32) for s in step.states})
    persistent["rng.step"] = np.array(0, np.int64)
    rng = np.random.default_rng(0)
    feeds = {}
    for n in step.graph.inputs:
        key = n.attrs["name"]
        if key in persistent:
            continue
        shape = tuple(int(d if isinstance(d, int) else d.evaluate({"B": batch})) for d in n.shape)
        feeds[key] = (rng.standard_normal(shape).astype(np.float32) if n.dtype.is_float
                      else rng.integers(0, 10, shape).astype(np.int64))
    feeds["lr"], feeds["step"] = np.array(1e-3), np.array(1.0)
    return step, persistent, feeds, {"B": batch}


def per_step(run: Callable[[], Any], rounds: int, steps: int) -> tuple[float, float, float]:
    """Median, min and max over rounds of the mean µs per call."""
    for _ in range(5):
        run()
    samples = []
    for _ in range(rounds):
        began = time.perf_counter()
        for _ in range(steps):
            run()
        samples.append((time.perf_counter() - began) / steps * 1e6)
    return statistics.median(samples), min(samples), max(samples)


def measure(name: str, rounds: int, steps: int) -> list[tuple[str, str, tuple[float, float, float]]]:
    import torch
    import triton
    from triton.runtime.jit import JITFunction

    from dln.runtime.step_graphs import StepGraphs
    from dln.runtime.triton_backend import TritonBackend

    step, persistent, feeds, env = training_step(name)
    backend = TritonBackend()
    tensors = {k: backend.asarray(v) for k, v in persistent.items()}
    exe = backend.prepare(step.graph, tensors, step.donate)
    program, module = exe.program, exe.module
    kernels = dict(program.kernels)
    bufs = {**tensors, **{k: torch.from_numpy(np.ascontiguousarray(v)).to(exe.input_dtypes.get(k))
                          for k, v in feeds.items()}}
    rows = []
    driver = triton.runtime.driver
    for mode in ("launcher", "dispatch", "step"):
        if mode == "launcher":
            program.kernels = {k: (_NoKernel() if isinstance(f, JITFunction) else f) for k, f in kernels.items()}
        else:
            driver.set_active(_FakeDriver())
            for f in vars(module).values():
                if isinstance(f, JITFunction):
                    _fake_compile(f)
            program.kernels = dict(kernels)
        for prebound in (False, True):
            program.prebound = prebound
            program.forget()
            run = (lambda: exe.run(feeds, env)) if mode == "step" else (lambda: program(bufs, env))
            rows.append((mode, "prebound" if prebound else "readable", per_step(run, rounds, steps)))
    exe.graphs = StepGraphs(program, None, _NoGraph, lambda graph: contextlib.nullcontext())
    rows.append(("step", "graph", per_step(lambda: exe.run(feeds, env), rounds, steps)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    args = parser.parse_args()
    print(f"threads: OMP={os.environ.get('OMP_NUM_THREADS')} OPENBLAS={os.environ.get('OPENBLAS_NUM_THREADS')}; "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    for name in args.models:
        for mode, path, (median, low, high) in measure(name, args.rounds, args.steps):
            print(f"{name:8s} batch {MODELS[name]:4d}  {mode:8s} {path:9s} {median:8.1f} µs/step  "
                  f"[{low:.1f}, {high:.1f}]")
    print(f"load average after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
