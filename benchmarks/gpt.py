"""A GPT block's training step: the transformer benchmark.

`benchmarks/gpt.dln`: token embedding (vocab 65) and learned positions, one pre-LN decoder layer of
examples/transformer_charlm.dln (causal 4-head attention, 4x GELU MLP, D = 128), final layer norm,
LM head; cross-entropy over every position, Adam; B = 16, T = 64.

* CPU step time: the NumPy backend's training step (forward, backward,
  update) against PyTorch eager's (`nn.MultiheadAttention`, the twin
  `make_gpt` of examples/torch_twins.py, from the same initial weights),
  each side in its own process, taking turns (benchmarks/paired.py).
* Kernels per training step: the Triton backend's fusion plan (forward,
  backward, Adam) beside torch.compile's 37 (15 forward + 22 backward, the
  figure measured for this block in the issue that asked for this
  benchmark; not measured here).
* Modeled HBM bytes per step: the Triton plan's (kernels/report.py: every
  value a kernel reads from memory once, every value it stores once)
  against eager PyTorch's, modeled the same way with one kernel per aten
  operator: each operator that moves data (views and metadata excluded)
  reads all its input tensors and writes all its outputs once
  (benchmarks/fusion.py's `op_counter`, a TorchDispatchMode).  Eager
  runs its attention core as one fused CPU operator
  (`_scaled_dot_product_flash_attention_for_cpu` and its backward), so the
  [B, heads, T, T] scores never count as traffic on its side.

    .venv/bin/python benchmarks/gpt.py [--rounds 15] [--steps 5] [--no-kernels] [--record]

With --record, writes the figures to the "GPT" section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import datetime
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "examples"))
import paired  # noqa: E402

BATCH, T, VOCAB, DIM, HEADS = 16, 64, 65, 128, 4
TORCH_COMPILE = {"forward": 15, "backward": 22}   # the measured figure, cited


def _data():
    rng = np.random.default_rng(0)
    return rng.integers(0, VOCAB, (BATCH, T)), rng.integers(0, VOCAB, (BATCH, T))


def _model():
    import dln

    return dln.compile(str(HERE / "gpt.dln"), backend="numpy", seed=0)


def dln_step():
    tokens, targets = _data()
    return paired.dln_adam_step(_model(), {"tokens": tokens, "targets": targets}, {"B": BATCH, "T": T})


def torch_net():
    """The twin of examples/transformer_charlm.dln at the benchmark's sizes, logits flattened to
    [B * T, vocab] for cross_entropy (classes on axis 1), from dln's initial weights."""
    import torch
    from torch_twins import make_gpt

    class Flat(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gpt = make_gpt(vocab=VOCAB, dim=DIM, layers=1, heads=HEADS, ctx=T)

        def forward(self, tokens):
            return self.gpt(tokens).flatten(0, 1)

    net = Flat()
    net.gpt.load_state_dict({k: torch.from_numpy(v) for k, v in _model().parameters().items()})
    return net


def _torch_data():
    import torch

    tokens, targets = _data()
    return torch.from_numpy(tokens), torch.from_numpy(targets).flatten()


def torch_step():
    return paired.torch_adam_step(torch_net(), *_torch_data())


def kernel_counts() -> dict:
    """The Triton plan's kernels and modeled bytes per training step; eager's operators and bytes."""
    from dln.compiler import pipeline
    from dln.kernels.module import generate_module, jit_kernels
    from dln.kernels.report import kernel_costs
    from dln.runtime.train import default_objective

    from fusion import op_totals, step_ops, warm_adam  # noqa: E402

    model = _model()
    step = pipeline.train_step(model.train_spec, default_objective(model))
    generated = generate_module(step.graph, step.donate)
    costs = kernel_costs(generated.plan, {"B": BATCH, "T": T})
    kinds: dict[str, int] = {}
    for c in costs:
        kinds[c.kind] = kinds.get(c.kind, 0) + 1
    # The gradient alone (forward + backward, no optimizer), as torch.compile's 37 was counted.
    gradient = generate_module(pipeline.gradient_graph(model.train_spec, "loss"))
    ours = {"kernels": len(costs), "bytes": sum(c.bytes for c in costs), "kinds": kinds,
            "names": [c.name for c in costs],
            # a host function (attention's and layer norm's backward) launches two Triton kernels
            "launches": len(jit_kernels(generated.kernels)),
            "gradient_groups": len(gradient.plan.groups), "gradient_launches": len(jit_kernels(gradient.kernels))}

    net = torch_net()
    x, y = _torch_data()
    opt = warm_adam(net, x, y)
    opt.zero_grad(set_to_none=True)   # backward stores fresh gradients rather than adding into old ones
    ops = step_ops(net, opt, x, y)
    eager = {**op_totals(ops),
             "attention_ops": sorted({n for n, _ in ops["forward"] + ops["backward"] if "attention" in n})}
    return {"dln": ours, "eager": eager}


TITLE = ("## GPT block training step (issue: NumPy <= 1.5x eager nn.MultiheadAttention; kernels beside "
         "torch.compile's 37; modeled bytes beside eager's)")


def gpt_section(results: str) -> str:
    """The GPT section of a RESULTS.md text ("" when it has none)."""
    return paired.find_section(results, "GPT")


def _section(result: dict) -> str:
    s = result["step"]
    text = (f"{TITLE}\n\nRecorded {datetime.date.today().isoformat()}; `benchmarks/gpt.py` (`benchmarks/gpt.dln`): "
            f"token embedding (vocab {VOCAB}) + learned positions, one pre-LN decoder layer (D = {DIM}, {HEADS} "
            f"heads, causal, MLP 4x GELU), final layer norm, LM head without bias; cross-entropy at every "
            f"position; Adam; B = {BATCH}, T = {T}. Each side runs in its own process with the given number of threads in every pool (OpenBLAS, OpenMP, MKL), the two taking turns; "
            f"median of {s['rounds']} rounds of {s['steps_per_round']} steps, with the fastest and slowest "
            f"round.\n\n"
            + paired.step_table(s, "PyTorch eager, `nn.MultiheadAttention`") +
            f"First losses (same initial weights): {s['first_losses']}. On {s['cpus']} CPUs."
            + (" **Provisional**: other work kept the load above the number of CPUs, which slows both sides "
               "unevenly; rerun on a quiet machine." if max(max(o['load_avg_1min_before_after'])
                                                          for o in s['by_threads'].values()) > s['cpus'] else "")
            + "\n")
    k = result.get("kernels")
    if k:
        d, e = k["dln"], k["eager"]
        p = e["phases"]
        c = TORCH_COMPILE
        kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(d["kinds"].items()))
        attention = ("attention as kernels of its own (composite)" if d["kinds"].get("composite") else
                     "attention decomposed into matmul, softmax and mask kernels (no attention kernel in this plan)")
        text += (f"\n| | kernels per training step | modeled HBM bytes |\n| --- | --- | --- |\n"
                 f"| dln, Triton plan (forward + backward + Adam) | **{d['kernels']}** groups ({kinds}); "
                 f"{d['launches']} Triton launches | **{d['bytes']:,}** |\n"
                 f"| dln, Triton plan, forward + backward only (no optimizer, as torch.compile's count) "
                 f"| **{d['gradient_groups']}** groups; **{d['gradient_launches']}** Triton launches | - |\n"
                 f"| PyTorch eager, one kernel per operator (Adam foreach) | {e['ops']} ({p['forward']['ops']} + "
                 f"{p['backward']['ops']} + {p['optimizer']['ops']}) | {e['bytes']:,} |\n"
                 f"| torch.compile, forward + backward (the issue's measured figure, not rerun here) "
                 f"| {c['forward'] + c['backward']} ({c['forward']} + {c['backward']}) | - |\n\n"
                 f"dln / eager bytes: **{d['bytes'] / e['bytes']:.3f}**. The bytes are a model, not a "
                 f"measurement: a kernel reads each value it loads from memory once and writes each value it "
                 f"stores once (kernels/report.py); eager is modeled as one kernel per aten operator that moves "
                 f"data (views excluded), reading all its inputs and writing all its outputs "
                 f"(benchmarks/fusion.py's `op_counter`). Eager's attention core is one fused operator each way "
                 f"({', '.join(e['attention_ops'])}), which never stores the scores.\n\n"
                 f"dln's plan has {attention}; a group of attention's or layer norm's backward is a host "
                 f"function launching two kernels (dQ then dK/dV; rows then the weight sums). dln's kernels: "
                 f"{', '.join(d['names'])}.\n")
    return text


def record(result: dict) -> None:
    paired.record("GPT", _section(result))


def main(argv: list[str] | None = None) -> dict:
    args = paired.arguments(__doc__, argv)
    s = paired.measure(__file__, args, dln_step, torch_step)
    if s is None:   # this process was one side of the pair
        return {}
    result = {"step": s}
    print(f"GPT block: vocab {VOCAB}, D = {DIM}, {HEADS} heads, 1 layer, B = {BATCH}, T = {T}, Adam; each side in "
          f"its own process, taking turns; median over {s['rounds']} rounds of {s['steps_per_round']} steps")
    paired.print_steps(s, "PyTorch eager (nn.MHA)", 1.5, 28)
    print(f"  first losses {s['first_losses']}; load average 1 min: {s['load_avg_1min_before_after']} "
          f"on {s['cpus']} cpus")
    if not args.no_kernels:
        k = result["kernels"] = kernel_counts()
        d, e = k["dln"], k["eager"]
        print(f"  Triton plan: {d['kernels']} kernels per training step (Adam included) {d['kinds']}, "
              f"{d['launches']} launches, {d['bytes'] / 1e6:.3f} MB modeled; forward + backward alone "
              f"{d['gradient_groups']} kernels, {d['gradient_launches']} launches")
        print(f"  torch.compile: {sum(TORCH_COMPILE.values())} kernels forward + backward (the issue's figure)")
        print(f"  PyTorch eager: {e['ops']} operators, {e['bytes'] / 1e6:.3f} MB modeled; "
              f"bytes dln / eager = {d['bytes'] / e['bytes']:.3f}")
    if args.record:
        record(result)
    return result


if __name__ == "__main__":
    main()
