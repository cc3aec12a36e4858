"""Layer norm's kernels (forward; backward rows with partial sums; the column sums) compile for sm_80 and
sm_90 without a GPU and spill nothing at the cost model's configuration, for an odd width (129: a 256-wide
padded row, 16 rows a program) and a wide one (2304 = 3 x 768: a 4096-wide padded row, one row a program
on 8 warps), with the affine weight and bias and without (dx alone: no second stage)."""

import pytest

from dln.kernels.module import generate_module

from .aot_build import compile_kernels
from .test_layernorm import _grad_graph


def _jit(kernels):
    out = []
    for k in kernels:
        out += _jit(k.inner) if k.host else ([k] if k.kind.startswith("layernorm") else [])
    return out


@pytest.mark.parametrize("n,affine", [(129, True), (2304, True), (129, False)])
def test_layernorm_kernels_compile_without_spills(n, affine, tmp_path):
    generated = generate_module(_grad_graph(n, affine))
    kernels = _jit(generated.kernels)
    second_stage = ["layernorm_sum"] if affine else []
    assert sorted(k.kind for k in kernels) == ["layernorm", *second_stage, "layernorm_vjp"]
    results = compile_kernels(generated, kernels, tmp_path)
    assert len(results) == 2 * len(kernels)
    for r in results:
        assert r.spills == 0 and r.fits, r.describe()
