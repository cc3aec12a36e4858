"""The GPU time model (compiler/fusion/target.py, kernels/gpu_model.py) and issue 11's done-when for the MLP."""

from __future__ import annotations

import math
from pathlib import Path

import dln
from dln.compiler import pipeline
from dln.compiler.fusion.target import H100, kernel_time
from dln.kernels.gpu_model import model_module
from dln.kernels.module import generate_module
from dln.runtime.train import default_objective

MLP = Path(__file__).parents[2] / "benchmarks" / "mlp_784.dln"

# The MLP's second forward product, [4096, 256] @ [256, 128], is 128 tiles of 64 x 64 (kernels/configs.py):
# 4 SMs short of a wave, compute-bound; splitting its 256-long K is modeled 1.45x slower, so the planner keeps
# it whole.  Narrower tiles (the tile choice by batch range, branch `tensorcores`) would fill the GPU.  Listed
# so that this test fails when it starts to fill (then drop it) as when any other kernel stops.
SHORT_OF_A_WAVE = {"k1_logits_linear_1_matmul_bias_relu"}


def test_wave_quantization():
    """One program more than there are SMs takes a second round; one SM's share of the bandwidth each."""
    one = kernel_time(H100, H100.sms, 0, H100.sms * 10**6)
    two = kernel_time(H100, H100.sms + 1, 0, (H100.sms + 1) * 10**6)
    assert math.isclose(two.memory_s, 2 * one.memory_s)
    assert math.isclose(one.memory_s, H100.sms * 10**6 / H100.hbm_bandwidth)
    few = kernel_time(H100, 4, 0, H100.sms * 10**6)
    assert math.isclose(few.memory_s, one.memory_s * H100.sms / 4)


def test_mlp_at_batch_4096_fills_the_h100():
    """Issue 11: every kernel's grid gives each of the 132 SMs a program, or the model shows it memory-bound
    under 2 us (kernel time, launch apart)."""
    model = dln.compile(str(MLP), backend="numpy")
    step = pipeline.train_step(model.train_spec, default_objective(model))
    env = {"B": 4096}
    generated = generate_module(step.graph, step.donate, machine=H100, sizes=env)
    kernels = model_module(generated, H100, env)
    failing = {k.name for k in kernels if not k.ok}
    assert failing == SHORT_OF_A_WAVE, [(k.name, k.grid, k.time.bound, k.time.run_s) for k in kernels if not k.ok]
    # The planner's decisions are what makes it so: the small weight gradients split K, bias gradients split
    # their batch, and their Adam updates run as one multi-tensor kernel.
    kinds = [g.kind for g in generated.plan.groups]
    assert kinds.count("splitk") >= 2 and kinds.count("split_reduction") >= 3 and kinds.count("multi_tensor") == 1


def test_bench_gpu_prints_the_modeled_step(capsys):
    """`dln bench --gpu a100` needs no GPU: both sides' modeled totals, dln's with fewer launches than eager's."""
    from dln.runtime import cli

    assert cli.main(["bench", str(MLP), "--gpu", "a100", "--batch", "1000"]) == 0
    out = capsys.readouterr().out
    assert "A100" in out and "B = 1000" in out and "a model, not a measurement" in out
    total = next(line for line in out.splitlines() if "modeled step" in line)
    ours, eager = (int(part.split(" kernels")[0].split()[-1]) for part in total.split(";"))
    assert 0 < ours < eager


def test_compile_writes_the_model_into_the_plan(tmp_path, monkeypatch):
    """`dln compile --target sm_90 --batch N`: plan.txt gets the per-kernel model, planned for that batch (the
    cubins are not built here: test_aot_split does)."""
    from dln.runtime import cli

    monkeypatch.setattr("dln.kernels.aot.compile_all", lambda *a, **k: [])

    assert cli.main(["compile", str(MLP), "-o", str(tmp_path), "--target", "sm_90", "--batch", "4096"]) == 0
    plan = (tmp_path / "plan.txt").read_text()
    assert "H100" in plan and "B = 4096" in plan and "splits   K" in plan and "PyTorch eager" in plan


def test_a_gpu_backend_plans_for_the_machine_it_runs_on(monkeypatch):
    """The Triton runtime plans for the GPU it finds (A100: sm_80, H100: sm_90) and for none on the CPU or
    on a GPU the model does not describe."""
    import torch

    from dln.compiler.fusion.target import A100, H100
    from dln.runtime.triton_backend import machine_of

    assert machine_of(torch.device("cpu")) is None
    for capability, machine in [((8, 0), A100), ((9, 0), H100), ((8, 9), None)]:
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, c=capability: c)
        assert machine_of(torch.device("cuda")) is machine
