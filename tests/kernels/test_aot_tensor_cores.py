"""Under the tensor-core precisions every matrix product and convolution of the example models runs on the
tensor cores, at every tile configuration its launcher can pick: compiled for sm_90 its SASS has HGMMA
(wgmma), for sm_80 HMMA (mma.sync), with no register spills and shared memory within the target's limit.

`tf32` rounds the fp32 operands; `bf16-mixed` casts every product's operands to bf16 (fp32 accumulation).
The tiles follow the batch (`SIZE_RANGES`), so each module's launches are recorded at the first batch of
every range, and every build distinct in source, specialization and target is compiled once (the same
discriminator in both steps of a GAN, the same layer in two models).
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

import dln
from dln.compiler import pipeline
from dln.compiler.ir import DType, Op
from dln.kernels import aot
from dln.kernels.configs import BATCH_LADDER, gpu_config
from dln.kernels.module import config_inputs, generate_module, jit_kernels
from dln.compiler.passes.autocast import MIXED
from dln.kernels.precision import dot_precision
from dln.runtime.backends import MERGES_PRODUCTS
from dln.runtime.train import recipe_for

from .aot_build import TARGETS, build_key, build_one
from .test_aot import MODELS, ROOT

CONTRACTIONS = ("matmul", "convolution")
TENSOR_CORE_OP = {"sm_80": "HMMA", "sm_90": "HGMMA"}


def _modules(out: Path):
    """(label, generated module, its file) for every training step of every example at each precision."""
    for path in MODELS:
        trains = pipeline.load(str(ROOT / path)).root.trains   # none: a model trained from Python (dqn.dln)
        model = dln.compile(str(ROOT / path), model=trains[0].model.name if trains else None, backend="numpy")
        for j, objective in enumerate(recipe_for(model).objectives):
            for precision in ("tf32", "bf16-mixed"):
                # the graphs the Triton backend runs: products merged, under bf16-mixed autocast's
                step = pipeline.train_step(model.train_spec, objective, mixed=MIXED.get(precision),
                                           merge=MERGES_PRODUCTS["triton"])
                generated = generate_module(step.graph, step.donate, dot_precision(precision))
                file = out / f"{Path(path).stem}_{j}_{precision.replace('-', '_')}.py"
                file.write_text(generated.source)
                yield f"{path}[{j}] {precision}", generated, file, dot_precision(precision)


def _batches(generated, precision: str) -> list[int]:
    """The first batch of each range over which some product's configuration holds."""
    plan = generated.plan
    groups = {k.name: g for k, g in zip(generated.kernels, plan.groups)}
    kernels = [k for k in generated.kernels if k.kind in CONTRACTIONS]
    out, previous = [], None
    for batch in BATCH_LADDER:
        configs = [gpu_config(k.kind, k.sizes, **config_inputs(plan, groups[k.name], precision), batch=batch)
                   for k in kernels]
        if configs != previous:
            out.append(batch)
        previous = configs
    return out if plan.graph.symbols() else [BATCH_LADDER[0]]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """[(where, compiled kernel, its tensor-core instructions)] for every distinct build."""
    out = tmp_path_factory.mktemp("aot_tensor_cores")
    spawn = multiprocessing.get_context("spawn")
    jobs: dict[tuple, tuple[str, aot.Job]] = {}
    with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as recorder:   # one process records them all
        for label, generated, file, precision in _modules(out):
            contractions = {k.name: k for k in jit_kernels(generated.kernels) if k.kind in CONTRACTIONS}
            for batch in _batches(generated, precision):
                sizes = {s: batch for s in generated.plan.graph.symbols()}
                launches = recorder.submit(aot._record, str(file), *aot._launch_inputs(generated, sizes),
                                           sizes).result()
                cubins = out / f"{file.stem}_b{batch}"
                cubins.mkdir()
                for name, kernel in contractions.items():
                    for spec, warps, stages in launches[name]:
                        for target in TARGETS:
                            job = aot.Job(str(file), name, spec, warps, target, str(cubins), stages)
                            jobs.setdefault(build_key(kernel, job), (f"{label} at batch {batch}", job))
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1, mp_context=spawn) as pool:
        results = list(pool.map(build_one, [job for _, job in jobs.values()], chunksize=4))
    return [(where, r, mma) for (where, _), (r, mma) in zip(jobs.values(), results)]


def test_every_product_runs_on_the_tensor_cores(built):
    assert built
    missing = [f"{where}: {r.name} has no {TENSOR_CORE_OP[r.target]} on {r.target}"
               for where, r, mma in built if TENSOR_CORE_OP[r.target] not in mma]
    assert not missing, "\n".join(missing)


def test_no_spills_and_shared_memory_fits(built):
    bad = [f"{where}: {r.name} on {r.target}: {r.describe()}" for where, r, _ in built
           if r.spills or r.shared_bytes > r.shared_limit or not 0 < r.registers <= 255]
    assert not bad, "\n".join(bad)


def _step(path: str, precision: str):
    model = dln.compile(str(ROOT / path), backend="numpy")
    step = pipeline.train_step(model.train_spec, recipe_for(model).objectives[0])
    return generate_module(step.graph, step.donate, precision)


def test_the_launcher_picks_the_tiles_of_the_batch():
    """A product over the batch takes 64-row tiles (one warp group) up to a batch of 64, 128-row tiles
    (two) above; CONFIGS holds the tiles of a batch of 128."""
    from dln.runtime.triton_backend import load_module

    generated = _step("benchmarks/mlp_784.dln", "tf32")
    module = load_module(generated.source, {"test": "size ranges"})
    first = generated.kernels[0]   # x @ W1 + b1, relu: M is the batch
    assert first.kind == "matmul" and str(first.sizes["M"]) == "B"
    at = lambda batch: module._sized_config(first.name, {"M": batch, "N": 256, "K": 784, "batch": 1})  # noqa: E731
    assert at(37)["BLOCK_M"] == 64 and at(37)["num_warps"] == 4
    assert at(65)["BLOCK_M"] == 128 and at(5000)["BLOCK_M"] == 128 and at(5000)["num_warps"] == 8
    assert at(128) == generated.configs[first.name]
    assert generated.configs[first.name] != _step("benchmarks/mlp_784.dln", "ieee").configs[first.name]


@pytest.mark.parametrize("precision", ["ieee", "tf32"])
def test_grouped_tile_order_computes_every_tile(precision, rng, close):
    """Small tiles over many row and column tiles (two groups of rows, the second short): every output
    tile is computed once, the product and its epilogue as the NumPy interpreter computes them."""
    import numpy as np
    import torch

    from dln.compiler.emit import GraphBuilder
    from dln.compiler.ir import TensorType
    from dln.runtime.interpreter import evaluate
    from dln.runtime.triton_backend import load_module

    b = GraphBuilder("t")
    x = b.input("x", TensorType(DType.F32, (150, 37)))
    w = b.input("w", TensorType(DType.F32, (37, 90)))
    graph = b.finish([("y", b.unary(Op.RELU, b.matmul(x, w)))])
    generated = generate_module(graph, precision=precision)
    module = load_module(generated.source, {"test": "grouped tile order"})
    configs = {k.name: {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16} for k in generated.kernels}
    inputs = {"x": rng.standard_normal((150, 37)).astype(np.float32),
              "w": rng.standard_normal((37, 90)).astype(np.float32)}
    got = module.Program("cpu", interpret=True, configs=configs)({k: torch.from_numpy(v) for k, v in inputs.items()}, {})
    close(evaluate(graph, inputs, {})["y"], got["y"].numpy(), rtol=1e-5, atol=1e-5)
