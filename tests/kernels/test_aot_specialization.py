"""Ahead-of-time builds are specialized as Triton's JIT specializes the model's launches: pointers and sizes
divisible by 16 carry `tt.divisibility = 16`, a size equal to 1 is a constant.  Checked against the JIT's
own binder (`create_function_from_signature`, `_pack_args`), which runs without a GPU."""

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
def mlp(tmp_path, monkeypatch):
    """The MLP's training step, its module written under tmp_path; Triton's JIT (not its interpreter)
    loads the module, as on a GPU."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    model = dln.compile(str(MODEL))
    step = pipeline.train_step(model.train_spec, recipe_for(model).objectives[0])
    generated = generate_module(step.graph, step.donate)
    path = tmp_path / "kernels.py"
    path.write_text(generated.source)
    return generated, str(path)


def jit_specialization(fn, args, kwargs):
    """What `JITFunction.run` passes to `ASTSource` for this launch, from Triton's own binder."""
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import CUDABackend
    from triton.runtime.jit import create_function_from_signature

    backend = CUDABackend(GPUTarget("cuda", 90, 32))
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    _, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
    return signature, constexprs, attrs


def recorded(generated, path, sizes, monkeypatch):
    """(ours, the JIT's) for every launch of one step at `sizes`."""
    pairs = []

    def both(fn, args, kwargs):
        ours = specialization(fn, args, kwargs)
        pairs.append((fn, ours, jit_specialization(fn, args, kwargs)))
        return ours

    specialization = aot.specialization
    monkeypatch.setattr(aot, "specialization", both)
    aot._record(path, *aot._launch_inputs(generated, sizes), sizes)
    return pairs


@pytest.mark.parametrize("batch", [128, 1])
def test_specialization_is_the_jits(mlp, monkeypatch, batch):
    from triton.compiler import ASTSource

    generated, path = mlp
    pairs = recorded(generated, path, {"B": batch}, monkeypatch)
    assert {fn.__name__ for fn, _, _ in pairs} == {k.name for k in jit_kernels(generated.kernels)}
    for fn, ours, (signature, constexprs, attrs) in pairs:
        assert (ours.signature, ours.constexprs, ours.attrs) == (signature, constexprs, attrs), fn.__name__
        # The same compile-cache key: the JIT would build exactly this IR.
        assert (ASTSource(fn, ours.signature, ours.constexprs, ours.attrs).hash()
                == ASTSource(fn, signature, constexprs, attrs).hash())
        assert ours.ones == (("s_B",) if batch == 1 else ())


@pytest.mark.parametrize("batch", [128, 1])
def test_aot_ir_carries_the_hints(mlp, monkeypatch, batch):
    """The first layer's matmul ([B, 784] @ [784, 128]): every pointer (torch allocations, 16-byte aligned)
    and a batch of 128 marked divisible by 16 in the built TTIR and TTGIR; a batch of 1 compiled in."""
    generated, path = mlp
    kernel = jit_kernels(generated.kernels)[0]
    launches = aot.record_launches(generated, path, {"B": batch})[kernel.name]
    assert len(launches) == 1
    spec, num_warps, num_stages = launches[0]
    compiled = aot.build(aot.Job(path, kernel.name, spec, num_warps, "sm_90", None, num_stages))
    for ir in ("ttir", "ttgir"):
        header = next(line for line in compiled.asm[ir].splitlines() if "tt.func public" in line)
        for p in kernel.pointers:
            assert f"%{p.name}: !tt.ptr<f32> {{tt.divisibility = 16 : i32}}" in header, (ir, p.name)
        if batch == 1:
            assert "%s_B" not in header
        else:
            assert "%s_B: i32 {tt.divisibility = 16 : i32}" in header
