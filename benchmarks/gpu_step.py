"""On a GPU: dln's fused training step against PyTorch eager and torch.compile.

MLP 784-256-128-10 with Adam, at batch 128 and 4096.  Times are CUDA-event
medians; per-kernel times come from the torch profiler.  Run through
benchmarks/gpu.sh.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def cuda_time(fn, rounds: int = 20, repeat: int = 10) -> float:
    import torch

    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(rounds):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeat):
            fn()
        end.record()
        torch.cuda.synchronize()
        samples.append(start.elapsed_time(end) / repeat)
    return statistics.median(samples)


def main() -> None:
    import torch

    import dln
    from dln.compiler import pipeline
    from dln.runtime.train import default_objective

    assert torch.cuda.is_available(), "benchmarks/gpu_step.py needs a CUDA GPU"
    for batch in (128, 4096):
        model = dln.compile(str(HERE / "mlp_784.dln"), backend="triton")
        step = pipeline.train_step(model.train_spec, default_objective(model))
        be = model.backend
        states = {s.name: be.asarray(np.zeros(tuple(int(d) for d in s.type.shape), np.float32)) for s in step.states}
        rng = {"rng.step": be.asarray(np.array(0, np.int64))}
        exe = be.prepare(step.graph, {**model._params, **states, **rng}, step.donate)
        x = torch.rand(batch, 784, device="cuda")
        y = torch.randint(0, 10, (batch,), device="cuda")
        feeds = {"x": x, "y": y, "lr": torch.tensor(1e-3, dtype=torch.float64, device="cuda"),
                 "step": torch.tensor(1.0, dtype=torch.float64, device="cuda")}
        ours = cuda_time(lambda: exe.run(feeds, {"B": batch}))

        net = torch.nn.Sequential(torch.nn.Linear(784, 256), torch.nn.ReLU(), torch.nn.Linear(256, 128),
                                  torch.nn.ReLU(), torch.nn.Linear(128, 10)).cuda()
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)

        def eager():
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(net(x), y).backward()
            opt.step()

        compiled_forward = torch.compile(lambda: torch.nn.functional.cross_entropy(net(x), y))
        compiled_step = torch.compile(opt.step)

        def compiled():
            opt.zero_grad(set_to_none=True)
            compiled_forward().backward()
            compiled_step()

        theirs, theirs_compiled = cuda_time(eager), cuda_time(compiled)
        print(f"batch {batch}: dln {ours:.3f} ms, PyTorch eager {theirs:.3f} ms, torch.compile "
              f"{theirs_compiled:.3f} ms per step")
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            exe.run(feeds, {"B": batch})
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=20))


if __name__ == "__main__":
    main()
    sys.exit(0)
