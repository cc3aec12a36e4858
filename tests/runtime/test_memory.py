"""A value too large for memory, once the inputs give the symbolic sizes, is an error (E0706) at the line
that makes it, naming the value, its type and the sizes its dimensions took, found before anything is
allocated — not a MemoryError from NumPy or torch (or the system stopping the process)."""

import numpy as np
import pytest

import dln
from tests.conftest import run_dln

BACKENDS = ["numpy", "triton"]
HUGE = 10 ** 11   # far beyond any machine's memory, in elements


def _fails(source: str, backend: str, **inputs) -> dln.DlnError:
    model = dln.compile(source, backend=backend)
    with pytest.raises(dln.DlnError) as e:
        model(**inputs)
    assert e.value.code == "E0706", str(e.value)
    return e.value


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_huge_expand(backend):
    source = f"model m() {{\n    input x: f32[B, 4]\n    h = expand(reshape(x, (B, 4, 1)), (B, 4, {HUGE}))\n" \
             "    output y = h * 2.0\n}\n"
    error = _fails(source, backend, x=np.ones((3, 4), np.float32))
    d = error.diagnostics[0]
    assert d.span.line == 4 and f"f32[B, 4, {HUGE}] = f32[3, 4, {HUGE}]" in d.message
    assert "more than this machine's memory" in d.message and "B = 3" in str(error)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_huge_broadcast_of_two_inputs(backend):
    source = "model m() {\n    input x: f32[N, 1]\n    input z: f32[M]\n    output y = x * z\n}\n"
    z = np.broadcast_to(np.ones(1, np.float32), (HUGE // 1000,))   # a view: the array costs nothing
    error = _fails(source, backend, x=np.ones((100000, 1), np.float32), z=z)
    assert error.diagnostics[0].span.line == 4
    assert f"the result of mul ('y') needs 40.0 TB for f32[N, M] = f32[100000, {HUGE // 1000}]" in str(error)
    assert f"M = {HUGE // 1000}, N = 100000" in str(error)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_huge_arange(backend):
    source = f"model m() {{\n    input x: f32[N]\n    output y = x[0] + cast(arange(N * {HUGE}), f32)\n}}\n"
    error = _fails(source, backend, x=np.ones(3, np.float32))
    assert error.diagnostics[0].span.line == 3 and f"[{3 * HUGE}]" in str(error)


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_input_that_would_need_a_huge_copy(backend):
    """An f64 view that must become a contiguous f32 array to be read."""
    source = "model m() {\n    input x: f32[B, 3]\n    output y = x * 2.0\n}\n"
    x = np.broadcast_to(np.ones((1, 3)), (HUGE, 3))
    error = _fails(source, backend, x=x)
    assert error.diagnostics[0].span.line == 2
    assert f"input 'x' of shape ({HUGE}, 3) needs 1.2 TB as a f32 array" in str(error)


def test_values_that_fit_still_run():
    source = "model m() {\n    input x: f32[B, 4]\n    output y = expand(reshape(x, (B, 4, 1)), (B, 4, 5)) * 2.0\n}\n"
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    for backend in BACKENDS:
        np.testing.assert_array_equal(dln.compile(source, backend=backend)(x=x)["y"],
                                      np.broadcast_to(x[:, :, None] * 2, (3, 4, 5)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_dln_run_reports_it(tmp_path, backend):
    (tmp_path / "huge.dln").write_text(f"model m() {{\n    input x: f32[B, 4]\n"
                                       f"    output y = expand(reshape(x, (B, 4, 1)), (B, 4, {HUGE})) * 2.0\n}}\n")
    np.save(tmp_path / "x.npy", np.ones((2, 4), np.float32))
    result = run_dln("run", "huge.dln", "--input", "x=x.npy", "--backend", backend, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "error[E0706]: the result of mul" in result.stderr and "huge.dln:3:16" in result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
