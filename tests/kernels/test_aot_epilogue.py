"""A transformer MLP at GPT-block width ([B, T, 128] -> linear(512) -> gelu -> linear(128), plus the residual):
the matmul kernels that carry the bias, the GELU (its derivative, in the backward) and the residual add as
their epilogue compile for sm_80 and sm_90 without a GPU and spill nothing."""

import dln
from dln.compiler import pipeline
from dln.compiler.autodiff import grad
from dln.compiler.ir import GroupOp, Op
from dln.kernels.module import generate_module
from dln.kernels.report import computed_nodes

from .aot_build import compile_kernels

SOURCE = """
model m() {
    input x: f32[B, T, 128]
    input cot: f32[B, T, 128]
    y = x + (x -> linear(512) -> gelu -> linear(128))
    loss = sum(y * cot)
    output y
}
"""


def test_epilogue_kernels_compile_without_spills(tmp_path):
    spec = dln.compile(SOURCE, backend="numpy").train_spec
    full, grads, _ = grad(spec.graph, spec.values["loss"], [p.node for p in spec.params])
    graph = pipeline.optimize(full.with_outputs([("y", spec.values["y"])]
                                                + [(p.name, grads[p.node]) for p in spec.params]))
    generated = generate_module(graph)
    plan = generated.plan
    products = [(k, {n.op for n in computed_nodes(plan, group)})
                for k, group in zip(generated.kernels, plan.groups) if k.kind == "matmul"]
    fused = [k for k, ops in products if ops & GroupOp.Elementwise]
    # The GELU, its derivative (exp) kept for the backward, the bias and the residual add.
    assert set().union(*(ops for k, ops in products if k in fused)) >= {Op.ERF, Op.EXP, Op.ADD}
    results = compile_kernels(generated, fused, tmp_path)
    assert len(results) == 2 * len(fused)
    for r in results:
        assert r.spills == 0 and r.fits, r.describe()
