"""The persistent recurrent kernels of an LSTM layer's training step at a realistic size (H = 128, gates
4H = 512, D = 64) compile for sm_80 and sm_90 without a GPU, spill nothing at the cost model's
configuration (16 batch rows per program, 16-deep product chunks, 8 warps), and run their products on
the tensor cores when the precision allows: HMMA (mma.sync) for tf32 on both targets — with 16-row
tiles; Hopper's wgmma (HGMMA) takes 64-row tiles, which the four [BLOCK_B, H] gate blocks in registers
do not leave room for — and plain FFMA for exact fp32 ("ieee")."""

import pytest

from dln.kernels.module import generate_module

from .aot_build import TARGETS, check_products, compile_kernels
from .scan_graphs import layer


@pytest.fixture(scope="module", params=["ieee", "tf32"])
def compiled(request, tmp_path_factory):
    """(precision, generated module, compiled scan kernels, cubin directory)."""
    generated = generate_module(layer("lstm", 64, 128, train=True), precision=request.param)
    scans = [k for k in generated.kernels if k.kind == "scan"]
    out = tmp_path_factory.mktemp(f"aot_scan_{request.param}")
    results = compile_kernels(generated, scans, out)
    return request.param, generated, results, out


def test_forward_and_backward_scans_compile(compiled):
    _, generated, results, _ = compiled
    names = [k.name for k in generated.kernels if k.kind == "scan"]
    assert len(names) == 2 and "vjp" in names[1]
    for target in TARGETS:
        assert sorted(r.name for r in results if r.target == target) == sorted(names)


def test_no_spills(compiled):
    _, _, results, _ = compiled
    for r in results:
        assert r.spills == 0, r.describe()
        assert r.fits, r.describe()
        assert r.registers <= 255


def test_tensor_cores(compiled):
    precision, _, results, out = compiled
    check_products(results, out, precision, tensor_cores=("HMMA",))
