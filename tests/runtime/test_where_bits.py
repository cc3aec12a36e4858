"""The planned interpreter runs `where(cond, a, scalar)` (a relu's gradient, a mask's) as bit operations
(interpreter._bind_where): the result must be np.where's, bit for bit — NaN, infinities and -0.0 included —
for every float width, a zero and a non-zero scalar, and a scalar computed at run time."""

import numpy as np
import pytest
import torch

import dln
from dln.compiler.ir import Op
from dln.runtime.interpreter import _bind_where


class _Where:
    op = Op.WHERE


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("scalar", [0.0, -0.0, -2.5, np.inf, np.nan])
@pytest.mark.parametrize("shape", [(13, 7), ()])
def test_bits_equal_np_where(dtype, scalar, shape):
    rng = np.random.default_rng(7)
    a = rng.standard_normal(shape).astype(dtype)
    cond = rng.random(shape) > 0.4
    if shape:
        a[0, 0], a[1, 1], a[2, 2], a[3, 3] = np.nan, np.inf, -0.0, -np.inf
        cond[0, 0], cond[1, 1], cond[2, 2] = False, True, True
    box = np.array(scalar, dtype)
    out = np.empty_like(a)
    for scalar_first in (False, True):
        box[...] = scalar
        operands = [np.broadcast_to(box, a.shape), a] if scalar_first else [a, np.broadcast_to(box, a.shape)]
        run = _bind_where(_Where(), [cond, *operands], out, {})
        run()
        assert np.array_equal(np.atleast_1d(out).view(np.uint8), np.atleast_1d(np.where(cond, *operands)).view(np.uint8))
        box[...] = 3.0          # the scalar is read when the step runs, not when it was bound
        run()
        assert np.array_equal(np.atleast_1d(out).view(np.uint8), np.atleast_1d(np.where(cond, *operands)).view(np.uint8))


def test_relu_gradient_through_nan_and_inf_matches_torch():
    model = dln.compile("""
model m() {
    input x: f32[B, 11]
    param w: f32[33, 11] = zeros()
    output y = sum(relu(w) * x)
}""", backend="numpy")
    w = np.linspace(-3, 3, 33 * 11, dtype=np.float32).reshape(33, 11)
    w[0, 0], w[1, 1], w[2, 2] = np.nan, -np.inf, 0.0
    x = np.random.default_rng(1).standard_normal((33, 11)).astype(np.float32)
    x[3, 3] = np.nan       # a NaN gradient where relu is off must still give 0
    w[3, 3] = -1.0
    model.load_state_dict({"w": w})
    _, grads = model.value_and_grad("y", x=x)
    t = torch.tensor(w, requires_grad=True)
    (torch.relu(t) * torch.tensor(x)).sum().backward()
    np.testing.assert_array_equal(grads["w"], t.grad.numpy())


@pytest.mark.parametrize("length", [2, 4, 9])
def test_short_argmax_equals_np_argmax(length):
    """interpreter._bind_short_argmax: first maximum, NaN taken as the maximum, ties to the first."""
    from dln.runtime.interpreter import _bind_short_argmax

    rng = np.random.default_rng(length)
    x = rng.integers(-2, 3, (5, 3, 7, length)).astype(np.float32)   # many ties
    x[0, 0, 0, :] = -np.inf
    node = type("n", (), {"attrs": {"axes": (-1,), "keepdim": True}})()
    out = np.empty((5, 3, 7, 1), np.int64)
    run = _bind_short_argmax(node, [x], out)
    run()
    np.testing.assert_array_equal(out, np.argmax(x, -1, keepdims=True))
    x[1, 1, 1, length - 1] = np.nan
    x[2, 2, 2, :] = np.nan
    run()
    np.testing.assert_array_equal(out, np.argmax(x, -1, keepdims=True))
