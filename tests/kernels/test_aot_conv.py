"""The convolution kernels of a small CNN's training step (conv2d -> relu -> conv2d -> relu -> flatten ->
linear) compile for sm_80 and sm_90 without a GPU, spill nothing, and run their products on the tensor
cores: HMMA on sm_80; on sm_90 HGMMA (wgmma) where a tile has 64 rows or more, HMMA (mma.sync) below."""

import re
from pathlib import Path

import pytest

import dln
from dln.compiler import pipeline
from dln.compiler.ir import GroupOp
from dln.kernels.aot import disassemble
from dln.kernels.module import generate_module
from dln.runtime.train import recipe_for

from .aot_build import TARGETS, compile_kernels

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "tests" / "programs" / "cnn_small.dln"
OPS = ("conv", "conv_transpose", "conv_weight")


@pytest.fixture(scope="module", params=["ieee", "tf32"])
def compiled(request, tmp_path_factory):
    """(generated module, compiled convolution kernels, cubin directory) at one precision."""
    model = dln.compile(str(MODEL), backend="numpy")
    objective = recipe_for(model).objectives[0]
    step = pipeline.train_step(model.train_spec, objective)
    generated = generate_module(step.graph, step.donate, precision=request.param)
    convolutions = [k for k in generated.kernels if k.kind == "convolution"]
    out = tmp_path_factory.mktemp(f"aot_conv_{request.param}")
    results = compile_kernels(generated, convolutions, out)
    return request.param, generated, results, out


def test_every_convolution_op_has_its_kernel(compiled):
    _, generated, results, _ = compiled
    g = generated.plan.graph
    ops = {g.node(group.members[0]).op.value for group in generated.plan.groups if group.kind == "convolution"}
    assert ops == set(OPS)
    assert all(g.node(group.members[0]).op in GroupOp.Convolution
               for group in generated.plan.groups if group.kind == "convolution")
    names = {k.name for k in generated.kernels if k.kind == "convolution"}
    for target in TARGETS:
        assert {r.name for r in results if r.target == target} == names


def test_no_spills(compiled):
    _, _, results, _ = compiled
    for r in results:
        assert r.spills == 0, f"{r.name} spills {r.spills} bytes on {r.target}"
        assert r.shared_bytes <= r.shared_limit
        assert 0 < r.registers <= 255


def test_tensor_cores_follow_the_precision(compiled):
    """tf32 products run on tensor cores (HMMA, HGMMA where a tile has 64 rows); exact fp32 products
    (ieee, the default) on the FMA units, with no tensor-core instruction."""
    precision, generated, results, out = compiled
    for r in results:
        sass = disassemble(out / r.cubin)
        hmma, hgmma = len(re.findall(r"\bHMMA\b", sass)), len(re.findall(r"\bHGMMA\b", sass))
        if precision == "ieee":
            assert hmma + hgmma == 0 and re.search(r"\bFFMA\b", sass), f"{r.name}: ieee off the FMA units"
        elif r.target == "sm_80":
            assert hmma > 0, f"{r.name}: no HMMA on sm_80"
        elif generated.configs[r.name]["BLOCK_M"] >= 64:
            assert hgmma > 0, f"{r.name}: no HGMMA on sm_90"
        else:
            assert hmma + hgmma > 0, f"{r.name}: no tensor-core instruction on sm_90"
