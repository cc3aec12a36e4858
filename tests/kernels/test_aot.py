"""Every kernel generated for the example models compiles for sm_80 and sm_90 without a GPU,
with no register spills and shared memory within the target's limit."""

import pytest

import dln
from dln.compiler import pipeline
from dln.kernels.aot import compile_all
from dln.kernels.module import generate_module
from dln.runtime.train import default_objective

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

MODELS = ["examples/mlp_digits.dln", "benchmarks/mlp_784.dln"]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    results = {}
    for path in MODELS:
        model = dln.compile(str(ROOT / path))
        step = pipeline.train_step(model.train_spec, default_objective(model))
        generated = generate_module(step.graph, step.donate)
        out = tmp_path_factory.mktemp("aot")
        module = out / "kernels.py"
        module.write_text(generated.source)
        results[path] = (generated, compile_all(generated, str(module), ["sm_80", "sm_90"], str(out)))
    return results


@pytest.mark.parametrize("path", MODELS)
def test_every_kernel_compiles_for_both_targets(compiled, path):
    generated, results = compiled[path]
    names = {k.name for k in generated.kernels}
    for target in ("sm_80", "sm_90"):
        assert {r.name for r in results if r.target == target} == names


@pytest.mark.parametrize("path", MODELS)
def test_no_spills_and_shared_memory_fits(compiled, path):
    _, results = compiled[path]
    for r in results:
        assert r.spills == 0, f"{r.name} spills {r.spills} bytes on {r.target}"
        assert r.shared_bytes <= r.shared_limit, f"{r.name} needs {r.shared_bytes} B of shared memory on {r.target}"
        assert 0 < r.registers <= 255
