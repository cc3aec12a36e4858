"""Flash attention's kernels (forward, dQ, dK/dV) of a GPT block's training step compile for sm_80 and sm_90
without a GPU and spill nothing at the cost model's tiles: heads of 32 with exact fp32 products (FFMA,
no tensor cores) and heads of 128 (the largest served) with tf32 products, which run on the tensor cores
(HMMA, mma.sync) on both targets."""

from pathlib import Path

import pytest

import dln
from dln.compiler import pipeline
from dln.kernels.module import generate_module
from dln.runtime.train import default_objective

from .aot_build import TARGETS, check_products, compile_kernels

GPT_BLOCK = Path(__file__).resolve().parents[1] / "programs" / "gpt_block.dln"


@pytest.fixture(scope="module", params=[(4, "ieee"), (1, "tf32")], ids=["head32-ieee", "head128-tf32"])
def compiled(request, tmp_path_factory):
    """(precision, the attention kernels, their compiled forms, cubin directory)."""
    heads, precision = request.param
    model = dln.compile(str(GPT_BLOCK), backend="numpy", vocab=65, dim=128, heads=heads, ctx=64)
    step = pipeline.train_step(model.train_spec, default_objective(model))
    generated = generate_module(step.graph, step.donate, precision=precision)
    kernels = [k for kernel in generated.kernels if kernel.kind.startswith("attention")
               for k in (kernel.inner if kernel.host else [kernel])]
    out = tmp_path_factory.mktemp(f"aot_attention_{precision}")
    results = compile_kernels(generated, kernels, out)
    return precision, kernels, results, out


def test_forward_dq_and_dkdv_compile(compiled):
    _, kernels, results, _ = compiled
    assert sorted(k.kind for k in kernels) == ["attention", "attention_dkdv", "attention_dq"]
    for target in TARGETS:
        assert sorted(r.name for r in results if r.target == target) == sorted(k.name for k in kernels)


def test_no_spills(compiled):
    for r in compiled[2]:
        assert r.spills == 0 and r.fits, f"{r.name} on {r.target}: {r.describe()}"


def test_products_on_the_tensor_cores_under_tf32(compiled):
    precision, _, results, out = compiled
    check_products(results, out, precision)
