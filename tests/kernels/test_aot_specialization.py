"""Ahead-of-time builds are specialized as Triton's JIT specializes the model's launches: pointers and sizes
divisible by 16 carry `tt.divisibility = 16`, a size equal to 1 is a constant.  Checked against the JIT's
own binder (`create_function_from_signature`, `_pack_args`), which runs without a GPU."""

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

import dln
from dln.compiler import pipeline
from dln.kernels import aot
from dln.kernels.module import generate_module, jit_kernels
from dln.runtime.train import recipe_for

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "benchmarks" / "mlp_784.dln"


@pytest.fixture
def mlp(tmp_path):
    """The MLP's training step, its module written under tmp_path."""
    model = dln.compile(str(MODEL))
    step = pipeline.train_step(model.train_spec, recipe_for(model).objectives[0])
    generated = generate_module(step.graph, step.donate)
    path = tmp_path / "kernels.py"
    path.write_text(generated.source)
    return generated, str(path)


# Run in a fresh process: the module's kernels must be Triton's JIT functions (whose binder is compared),
# and JIT and interpreter functions do not mix in one process.
COMPARE = """
import sys
import dln
from dln.compiler import pipeline
from dln.kernels import aot
from dln.kernels.module import generate_module
from dln.runtime.train import recipe_for
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import CUDABackend
from triton.compiler import ASTSource
from triton.runtime.jit import create_function_from_signature

model = dln.compile(sys.argv[1])
step = pipeline.train_step(model.train_spec, recipe_for(model).objectives[0])
generated = generate_module(step.graph, step.donate)
open(sys.argv[2], "w").write(generated.source)
backend = CUDABackend(GPUTarget("cuda", 90, 32))
specialization = aot.specialization
launched = set()

def both(fn, args, kwargs):
    ours = specialization(fn, args, kwargs)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, spec, options = binder(*args, **kwargs)
    _, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, spec, options)
    assert (ours.signature, ours.constexprs, ours.attrs) == (signature, constexprs, attrs), fn.__name__
    # The same compile-cache key: the JIT would build exactly this IR.
    assert (ASTSource(fn, ours.signature, ours.constexprs, ours.attrs).hash()
            == ASTSource(fn, signature, constexprs, attrs).hash())
    assert ours.ones == (("s_B",) if sys.argv[3] == "1" else ()), ours.ones
    launched.add(fn.__name__)
    return ours

aot.specialization = both
sizes = {"B": int(sys.argv[3])}
aot._record(sys.argv[2], *aot._launch_inputs(generated, sizes), sizes)
print(" ".join(sorted(launched)))
"""


@pytest.mark.parametrize("batch", [128, 1])
def test_specialization_is_the_jits(mlp, tmp_path, batch):
    """Every launch of the MLP's step: ours equals what Triton's binder makes of the same arguments."""
    generated, _ = mlp
    run = subprocess.run([sys.executable, "-c", COMPARE, str(MODEL), str(tmp_path / "jit.py"), str(batch)],
                         capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, TRITON_INTERPRET="0"))
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == sorted(k.name for k in jit_kernels(generated.kernels))


@pytest.mark.parametrize("batch", [128, 1])
def test_aot_ir_carries_the_hints(mlp, tmp_path, batch):
    """The first layer's matmul ([B, 784] @ [784, 256]), built for sm_90: every pointer (torch allocations,
    16-byte aligned) and a batch of 128 marked divisible by 16 in the TTGIR it was lowered from; a batch of
    1 compiled in."""
    generated, path = mlp
    kernel = jit_kernels(generated.kernels)[0]
    results = aot.compile_all(dataclasses.replace(generated, kernels=[kernel]), path, ["sm_90"], str(tmp_path),
                              sizes={"B": batch})
    assert [r.name for r in results] == [kernel.name] and results[0].spills == 0
    ttgir = (tmp_path / results[0].cubin).with_suffix(".ttgir").read_text()
    header = next(line for line in ttgir.splitlines() if "tt.func public" in line)
    for p in kernel.pointers:
        assert f"%{p.name}: !tt.ptr<f32> {{tt.divisibility = 16 : i32}}" in header, p.name
    if batch == 1:
        assert "%s_B" not in header and results[0].specialization.endswith("equal to 1: s_B")
    else:
        assert "%s_B: i32 {tt.divisibility = 16 : i32}" in header
