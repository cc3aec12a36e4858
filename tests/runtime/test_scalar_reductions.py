"""Reductions of a scalar over its axis 0, which torch accepts: `mean(x, 0)` and `var(x, 0)` on
`f32[]` once raised IndexError counting the reduced values (found by fuzzing)."""

import warnings

import numpy as np
import pytest
import torch

import dln


@pytest.mark.parametrize("expr,reference", [
    ("mean(x, 0)", lambda t: torch.mean(t, 0)),
    ("mean(x, 0, keepdim = true)", lambda t: torch.mean(t, 0, keepdim=True)),
    ("var(x, 0)", lambda t: torch.var(t, 0)),                       # one value, correction 1: nan
    ("var(x, 0, correction = 0)", lambda t: torch.var(t, 0, correction=0)),
    ("std(x, 0, keepdim = true)", lambda t: torch.std(t, 0, keepdim=True)),
])
def test_a_scalar_reduces_over_axis_0_as_in_torch(expr, reference):
    model = dln.compile(f"model m() {{\n    input x: f32[]\n    output y = {expr}\n}}\n", backend="numpy")
    x = np.array(2.5, dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns that one value has no variance
        expected = reference(torch.tensor(x)).numpy()
    got = np.asarray(model(x=x)["y"])
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, equal_nan=True)


@pytest.mark.parametrize("shape,axis,keepdim", [((5,), 0, False), ((3, 4), 1, True), ((2, 3, 7, 2), 2, False),
                                                ((6, 16), 1, False), ((2, 17), 1, False)])
@pytest.mark.parametrize("op,reference", [("sum", np.sum), ("max", np.max), ("min", np.min)])
def test_short_axis_reductions_follow_new_inputs(shape, axis, keepdim, op, reference):
    """The NumPy backend reduces a short axis (a pooling window) by whole-array passes over views bound
    once per plan: every later run, down to a 0-d result, reads the new input."""
    keep = ", keepdim = true" if keepdim else ""
    dims = ", ".join(map(str, shape))
    model = dln.compile(f"model m() {{\n    input x: f64[{dims}]\n    output y = {op}(x, axis = {axis}{keep})\n}}\n",
                        backend="numpy")
    for seed in range(3):
        x = np.random.default_rng(seed).standard_normal(shape)
        np.testing.assert_allclose(model(x=x)["y"], reference(x, axis=axis, keepdims=keepdim), rtol=1e-12)
