"""LSTM (input 32, hidden 128, T = 50, batch 32) with a linear head to 10 classes, Adam: the recurrence
benchmark.

* CPU step time: the NumPy backend's training step (forward, backward,
  update) against PyTorch eager's with `nn.LSTM`, each side in its own
  process, taking turns (benchmarks/paired.py).
* Kernels per training step: the Triton backend's plan (the recurrence is
  one persistent kernel per direction and pass, whatever T) beside what
  torch.compile makes of the same module: dynamo does not trace `nn.LSTM`
  (RNN modules run eagerly unless `allow_rnn`), so only the loss compiles.

    .venv/bin/python benchmarks/lstm.py [--rounds 15] [--steps 5] [--no-kernels] [--record]

With --record, writes the figures to the "LSTM" section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import datetime
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import paired  # noqa: E402

BATCH, STEPS, FEATURES, HIDDEN, CLASSES = 32, 50, 32, 128, 10


def _data():
    rng = np.random.default_rng(0)
    return rng.standard_normal((BATCH, STEPS, FEATURES), dtype=np.float32), rng.integers(0, CLASSES, BATCH)


def _model():
    import dln

    return dln.compile(str(HERE / "lstm.dln"), backend="numpy", seed=0)


def dln_step():
    x, y = _data()
    return paired.dln_adam_step(_model(), {"x": x, "y": y}, {"B": BATCH, "T": STEPS})


def torch_net():
    import torch

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.h = torch.nn.LSTM(FEATURES, HIDDEN, batch_first=True)
            self.logits = torch.nn.Linear(HIDDEN, CLASSES)

        def forward(self, x):
            return self.logits(self.h(x)[0][:, -1])

    net = Net()
    weights = _model().parameters()
    net.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
    return net


def torch_step():
    import torch

    return paired.torch_adam_step(torch_net(), *(torch.from_numpy(a) for a in _data()))


def kernel_counts() -> dict:
    """The Triton plan's kernels per training step; torch.compile's kernels and ATen fallbacks."""
    import torch
    from torch._inductor.utils import run_and_get_code

    from dln.compiler import pipeline
    from dln.kernels.module import generate_module
    from dln.runtime.train import default_objective

    from fusion import _kernel_calls  # noqa: E402

    model = _model()
    step = pipeline.train_step(model.train_spec, default_objective(model))
    generated = generate_module(step.graph, step.donate)
    names = [g.name for g in generated.plan.groups]
    ours = {"kernels": len(names), "names": names}

    net = torch_net()
    x, y = (torch.from_numpy(a) for a in _data())

    def forward_loss(x, y):
        return torch.nn.functional.cross_entropy(net(x), y)

    # What dynamo captures of the forward (backward() is a graph break of its own): the ops in its graphs.
    explained = torch._dynamo.explain(forward_loss)(x, y)
    traced = [str(getattr(n.target, "__name__", n.target)) for g in explained.graphs for n in g.graph.nodes
              if n.op in ("call_function", "call_method", "call_module")]
    _, codes = run_and_get_code(torch.compile(forward_loss), x, y)
    calls = [c for code in codes for c in _kernel_calls(code)]
    return {"dln": ours, "torch_compile": {"kernels": len(calls), "traced_ops": traced,
                                           "allow_rnn": bool(torch._dynamo.config.allow_rnn)}}


TITLE = "## LSTM training step (issue: NumPy <= 1.0x eager nn.LSTM; kernels per Triton step beside torch.compile)"


def lstm_section(results: str) -> str:
    """The LSTM section of a RESULTS.md text ("" when it has none)."""
    return paired.find_section(results, "LSTM")


def _section(result: dict) -> str:
    s = result["step"]
    text = (f"{TITLE}\n\nRecorded {datetime.date.today().isoformat()}; `benchmarks/lstm.py` (`benchmarks/lstm.dln`): "
            f"input {FEATURES}, hidden {HIDDEN}, T = {STEPS}, batch {BATCH}, the last step into a linear head to "
            f"{CLASSES} classes, cross-entropy, Adam. Each side runs in its own process with the given number of threads in every pool (OpenBLAS, OpenMP, MKL), the two taking turns; "
            f"median of {s['rounds']} rounds of {s['steps_per_round']} steps, with the fastest and slowest round.\n\n"
            + paired.step_table(s, "PyTorch eager, `nn.LSTM`") +
            f"First losses (same initial weights): {s['first_losses']}. On {s['cpus']} CPUs.\n")
    k = result.get("kernels")
    if k:
        d, c = k["dln"], k["torch_compile"]
        text += (f"\n| | kernels per training step |\n| --- | --- |\n"
                 f"| dln, Triton plan (forward + backward + Adam), any T | **{d['kernels']}** |\n"
                 f"| torch.compile, forward (CPU inductor) | {c['kernels']} for the ops dynamo traced "
                 f"({', '.join(c['traced_ops'])}); `nn.LSTM` is not traced (`allow_rnn` is {c['allow_rnn']}): "
                 f"the whole recurrence, forward and backward, runs eagerly |\n\n"
                 f"dln's kernels: {', '.join(d['names'])}.\n")
    return text


def record(result: dict) -> None:
    paired.record("LSTM", _section(result))


def main(argv: list[str] | None = None) -> dict:
    args = paired.arguments(__doc__, argv)
    s = paired.measure(__file__, args, dln_step, torch_step)
    if s is None:   # this process was one side of the pair
        return {}
    result = {"step": s}
    print(f"LSTM {FEATURES}->{HIDDEN}, T={STEPS}, batch {BATCH}, head to {CLASSES}, Adam; each side in its own "
          f"process, taking turns; median over {s['rounds']} rounds of {s['steps_per_round']} steps")
    paired.print_steps(s, "PyTorch eager nn.LSTM", 1.0, 25)
    print(f"  first losses {s['first_losses']}; load average 1 min: {s['load_avg_1min_before_after']} "
          f"on {s['cpus']} cpus")
    if not args.no_kernels:
        k = result["kernels"] = kernel_counts()
        print(f"  Triton plan: {k['dln']['kernels']} kernels per training step (Adam included)")
        c = k["torch_compile"]
        print(f"  torch.compile: {c['kernels']} kernels for the ops dynamo traced {c['traced_ops']}; nn.LSTM is not "
              f"traced (allow_rnn={c['allow_rnn']}), it runs eagerly")
    if args.record:
        record(result)
    return result


if __name__ == "__main__":
    main()
