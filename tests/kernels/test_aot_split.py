"""The split-K (products and convolutions) and two-stage reduction kernels of the MLP and LeNet steps planned
for an H100 compile for sm_80 and sm_90 without a GPU, specialized as the JIT would launch them, and spill
nothing."""

from pathlib import Path

import pytest

import dln
from dln.compiler import pipeline
from dln.compiler.fusion.target import H100
from dln.kernels.module import generate_module
from dln.runtime.train import default_objective

from .aot_build import compile_kernels

BENCHMARKS = Path(__file__).parents[2] / "benchmarks"
SPLIT = ("splitk", "splitk_convolution", "split_reduction")


@pytest.mark.parametrize("file, batch, kinds", [
    ("mlp_784.dln", 4096, {"splitk", "split_reduction"}),
    ("lenet.dln", 512, {"splitk_convolution", "split_reduction"}),
])
def test_split_kernels_compile_without_spills(tmp_path, file, batch, kinds):
    model = dln.compile(str(BENCHMARKS / file), backend="numpy")
    step = pipeline.train_step(model.train_spec, default_objective(model))
    generated = generate_module(step.graph, step.donate, machine=H100, sizes={"B": batch})
    split = [k for k in generated.kernels if k.kind in SPLIT]
    assert {k.kind for k in split} >= kinds
    results = compile_kernels(generated, split, tmp_path)
    assert len(results) == 2 * sum(len(k.inner) for k in split)   # both stages, both targets
    for r in results:
        assert r.spills == 0 and r.fits, (r.name, r.target, r.describe())
