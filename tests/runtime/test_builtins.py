"""Every built-in, compiled from `.dln` source, against torch (float64).

Each case is a model body computing `y` from parameters (so that
`value_and_grad` differentiates with respect to them) and integer inputs.
The harness adds `input cot` of y's shape, `loss = sum(y * cot)` with a fixed
random `cot`, and compares y (a forward run), the loss and every parameter's
gradient with torch.autograd on the same values.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import dln
from dln.compiler.builtins import BUILTINS
from _data import R, normal, positive  # noqa: E402

RTOL, ATOL = 1e-10, 1e-12



def _decl(name: str, v: np.ndarray, kind: str) -> str:
    dtype = {np.dtype(np.float64): "f64", np.dtype(np.int64): "i64", np.dtype(np.bool_): "bool"}[v.dtype]
    shape = ", ".join(str(d) for d in v.shape)
    if kind == "param":
        return f"    param {name}: {dtype}[{shape}] = zeros"
    return f"    input {name}: {dtype}[{shape}]"


@dataclass
class Case:
    id: str
    body: str                          # .dln statements binding `y`
    torch_fn: Callable                 # (**tensors by name) -> the reference y
    params: dict[str, np.ndarray] = field(default_factory=dict)   # float64, differentiated
    inputs: dict[str, np.ndarray] = field(default_factory=dict)   # fed, not differentiated
    rtol: float = RTOL
    atol: float = ATOL


def source(case: Case, out_shape: tuple[int, ...] | None) -> str:
    lines = ["model m() {"]
    lines += [_decl(k, v, "param") for k, v in case.params.items()]
    lines += [_decl(k, v, "input") for k, v in case.inputs.items()]
    if out_shape is not None:
        lines.append(f"    input cot: f64[{', '.join(str(d) for d in out_shape)}]")
    lines += ["    " + line.strip() for line in case.body.strip().splitlines()]
    if out_shape is not None:
        lines.append("    loss = sum(y * cot)")
    lines += ["    output y", "}"]
    return "\n".join(lines)


def check(case: Case, seed: int = 99) -> None:
    tp = {k: torch.tensor(v, requires_grad=True) for k, v in case.params.items()}
    ti = {k: torch.tensor(v) for k, v in case.inputs.items()}
    ref = case.torch_fn(**tp, **ti)
    differentiable = ref.dtype.is_floating_point and ref.requires_grad

    if not differentiable:
        model = dln.compile(source(case, None))
        if case.params:
            model.load_state_dict(case.params)
        y = model.run(["y"], **case.inputs)["y"]
        assert y.dtype == ref.numpy().dtype, (y.dtype, ref.dtype)
        np.testing.assert_array_equal(y, ref.numpy())
        return

    cot = R(seed).standard_normal(tuple(ref.shape))
    ref_loss = (ref * torch.tensor(cot)).sum()
    ref_grads = dict(zip(tp, torch.autograd.grad(ref_loss, list(tp.values()), allow_unused=True)))

    model = dln.compile(source(case, tuple(ref.shape)))
    model.load_state_dict(case.params)
    y = model.run(["y"], **case.inputs)["y"]
    assert y.shape == tuple(ref.shape)
    np.testing.assert_allclose(y, ref.detach().numpy(), rtol=case.rtol, atol=case.atol, err_msg="value")
    loss, grads = model.value_and_grad("loss", **case.inputs, cot=cot)
    np.testing.assert_allclose(loss, ref_loss.item(), rtol=case.rtol, atol=case.atol, err_msg="loss")
    for k, g in ref_grads.items():
        want = np.zeros_like(case.params[k]) if g is None else g.numpy()
        np.testing.assert_allclose(grads[k], want, rtol=case.rtol, atol=case.atol, err_msg=f"gradient of {k}")


def ids(cases):
    return [c.id for c in cases]


S = (3, 5)
S3 = (6, 7, 5)

# Inputs with the kinks of the piecewise functions in them (0, the clamp bounds, ...).
KINKY = np.array([[-2.5, -1.0, -0.3, 0.0, 0.4], [1.0, 2.0, -0.0, 0.7, -1.7], [3.1, -0.05, 0.05, 1.3, -4.0]])

# ---- elementwise ------------------------------------------------------------------------------------------------
ELEMENTWISE = [
    Case("relu", "y = relu(x)", lambda x: F.relu(x), {"x": KINKY}),
    Case("relu_pipe", "y = x -> relu", lambda x: F.relu(x), {"x": normal(S3)}),
    Case("leaky_relu", "y = leaky_relu(x)", lambda x: F.leaky_relu(x), {"x": KINKY}),
    Case("leaky_relu_slope", "y = x -> leaky_relu(0.2)", lambda x: F.leaky_relu(x, 0.2), {"x": KINKY}),
    Case("elu", "y = elu(x)", lambda x: F.elu(x), {"x": KINKY}),
    Case("elu_alpha", "y = elu(x, alpha = 0.7)", lambda x: F.elu(x, 0.7), {"x": KINKY}),
    Case("selu", "y = selu(x)", lambda x: F.selu(x), {"x": KINKY}),
    Case("gelu", "y = gelu(x)", lambda x: F.gelu(x), {"x": normal(S3) * 2}),
    Case("gelu_none", 'y = gelu(x, approximate = "none")', lambda x: F.gelu(x, approximate="none"),
         {"x": KINKY}),
    Case("gelu_tanh", 'y = gelu(x, approximate = "tanh")', lambda x: F.gelu(x, approximate="tanh"),
         {"x": normal(S3) * 2}),
    Case("silu", "y = silu(x)", lambda x: F.silu(x), {"x": normal(S3) * 2}),
    Case("softplus", "y = softplus(x)", lambda x: F.softplus(x), {"x": normal(S3) * 3}),
    # above the threshold softplus is x; exactly at it, torch still takes the soft branch
    Case("softplus_threshold", "y = softplus(x)", lambda x: F.softplus(x),
         {"x": np.array([[19.0, 20.0, 20.5, 25.0, 60.0], [-30.0, -1.0, 0.0, 19.999, 20.001]])}),
    Case("softplus_beta", "y = softplus(x, beta = 2.0, threshold = 5.0)",
         lambda x: F.softplus(x, beta=2.0, threshold=5.0),
         {"x": np.array([[1.0, 2.5, 2.6, 3.0, -4.0], [0.0, 2.4, 10.0, -0.5, 0.3]])}),
    Case("softsign", "y = softsign(x)", lambda x: F.softsign(x), {"x": KINKY}),
    Case("hardtanh", "y = hardtanh(x)", lambda x: F.hardtanh(x), {"x": KINKY}),
    Case("hardtanh_bounds", "y = hardtanh(x, min_val = -0.3, max_val = 2.0)",
         lambda x: F.hardtanh(x, -0.3, 2.0), {"x": KINKY}),
    Case("clamp", "y = clamp(x, -1.0, 1.0)", lambda x: torch.clamp(x, -1.0, 1.0), {"x": KINKY}),
    Case("clamp_lo_only", "y = clamp(x, lo = 0.05)", lambda x: torch.clamp(x, min=0.05), {"x": KINKY}),
    Case("clamp_hi_only", "y = clamp(x, hi = 0.7)", lambda x: torch.clamp(x, max=0.7), {"x": KINKY}),
    Case("clamp_tensor_bounds", "y = clamp(x, lo, hi)", lambda x, lo, hi: torch.clamp(x, lo, hi),
         {"x": KINKY, "lo": np.where(R(5).random(S) < 0.3, KINKY, -0.5),
          "hi": np.where(R(6).random(S) < 0.3, KINKY, 0.8) + np.where(KINKY < -0.5, 1.0, 0.0)}),
    Case("sigmoid", "y = sigmoid(x)", torch.sigmoid, {"x": normal(S3) * 3}),
    Case("tanh", "y = tanh(x)", torch.tanh, {"x": normal(S3)}),
    Case("exp", "y = exp(x)", torch.exp, {"x": normal(S3)}),
    Case("log", "y = log(x)", torch.log, {"x": positive(S3)}),
    Case("log1p", "y = log1p(x)", torch.log1p, {"x": positive(S3, lo=-0.6)}),
    Case("sqrt", "y = sqrt(x)", torch.sqrt, {"x": positive(S3)}),
    Case("rsqrt", "y = rsqrt(x)", torch.rsqrt, {"x": positive(S3)}),
    Case("abs", "y = abs(x)", torch.abs, {"x": KINKY}),
    Case("sin", "y = sin(x)", torch.sin, {"x": normal(S3) * 3}),
    Case("cos", "y = cos(x)", torch.cos, {"x": normal(S3) * 3}),
    Case("atan", "y = atan(x)", torch.atan, {"x": normal(S3) * 3}),
    Case("floor", "y = floor(x) * 0.5 + x", lambda x: torch.floor(x) * 0.5 + x, {"x": normal(S3) * 3}),
    Case("sign", "y = sign(x) * x", lambda x: torch.sign(x) * x, {"x": KINKY}),
    Case("maximum", "y = maximum(x, z)", lambda x, z: torch.maximum(x, z),
         {"x": KINKY, "z": np.where(R(1).random(S) < 0.4, KINKY, normal(S, 2))}),
    Case("maximum_number", "y = maximum(x, 0.4)", lambda x: torch.maximum(x, torch.tensor(0.4, dtype=torch.float64)),
         {"x": KINKY}),
    Case("minimum", "y = minimum(x, z)", lambda x, z: torch.minimum(x, z),
         {"x": KINKY, "z": np.where(R(1).random(S) < 0.4, KINKY, normal(S, 2))}),
    Case("minimum_broadcast", "y = minimum(x, z)", lambda x, z: torch.minimum(x, z),
         {"x": normal((6, 1, 5)), "z": normal((7, 5), 1)}),
    Case("where", "y = where(x > 0.1, x * z, z - x)", lambda x, z: torch.where(x > 0.1, x * z, z - x),
         {"x": KINKY, "z": normal(S, 3)}),
    Case("where_number", "y = where(c, x, -2.0)",
         lambda x, c: torch.where(c, x, torch.tensor(-2.0, dtype=torch.float64)),
         {"x": normal(S3)}, {"c": R(4).random(S3) < 0.5}),
    Case("operators", "y = (x * z - x / (z * z + 1.0) + 2.0 ** x) % 1.7 - -x ** 2",
         lambda x, z: torch.remainder(x * z - x / (z * z + 1.0) + 2.0 ** x, 1.7) - -x ** 2,
         {"x": normal(S3), "z": normal(S3, 1)}),
    Case("cast", "y = cast(cast(x, i64), f64) + x", lambda x: x.to(torch.int64).to(torch.float64) + x,
         {"x": normal(S) * 3}),
    Case("detach", "y = detach(x) * x + sin(detach(x))", lambda x: x.detach() * x + torch.sin(x.detach()),
         {"x": normal(S3)}),
    Case("zeros_ones_like", "y = zeros_like(x) + x * ones_like(x) * 3.0", lambda x: torch.zeros_like(x) + x * 3.0,
         {"x": normal(S)}),
]


@pytest.mark.parametrize("case", ELEMENTWISE, ids=ids(ELEMENTWISE))
def test_elementwise(case):
    check(case)


# ---- reductions -------------------------------------------------------------------------------------------------
X3 = normal(S3, 11)
TIES = R(12).integers(-2, 3, S3).astype(np.float64)


def _all(x):
    return tuple(range(x.dim()))


REDUCTIONS = [
    Case("sum_all", "y = sum(x)", lambda x: x.sum(), {"x": X3}),
    Case("sum_axis", "y = sum(x, axis = 1)", lambda x: x.sum(1), {"x": X3}),
    Case("sum_axes_keep", "y = sum(x, axis = (0, 2), keepdim = true)", lambda x: x.sum((0, 2), keepdim=True),
         {"x": X3}),
    Case("sum_negative_axis", "y = sum(x, -1)", lambda x: x.sum(-1), {"x": X3}),
    Case("mean_all", "y = mean(x)", lambda x: x.mean(), {"x": X3}),
    Case("mean_axis_keep", "y = mean(x, axis = 2, keepdim = true)", lambda x: x.mean(2, keepdim=True), {"x": X3}),
    Case("mean_axes", "y = mean(x, axis = (0, 1))", lambda x: x.mean((0, 1)), {"x": X3}),
    Case("max_axis", "y = max(x, axis = 1)", lambda x: torch.amax(x, 1), {"x": X3}),
    Case("max_all", "y = max(x)", lambda x: x.max(), {"x": X3}),
    Case("min_axes_keep", "y = min(x, axis = (1, 2), keepdim = true)", lambda x: torch.amin(x, (1, 2), True),
         {"x": X3}),
    Case("min_all", "y = min(x)", lambda x: x.min(), {"x": X3}),
    # Ties share the gradient evenly: torch.amax / amin, and torch.max(x) over all elements.
    Case("max_ties_axis", "y = max(x, axis = 2)", lambda x: torch.amax(x, 2), {"x": TIES}),
    Case("max_ties_all", "y = max(x)", lambda x: x.max(), {"x": TIES}),
    Case("min_ties_axes", "y = min(x, axis = (0, 2))", lambda x: torch.amin(x, (0, 2)), {"x": TIES}),
    Case("var_all", "y = var(x)", lambda x: torch.var(x), {"x": X3}),
    Case("var_axis", "y = var(x, axis = 1)", lambda x: torch.var(x, 1), {"x": X3}),
    Case("var_correction0_keep", "y = var(x, axis = (0, 2), keepdim = true, correction = 0)",
         lambda x: torch.var(x, (0, 2), keepdim=True, correction=0), {"x": X3}),
    Case("var_correction2", "y = var(x, axis = 0, correction = 2)", lambda x: torch.var(x, 0, correction=2),
         {"x": X3}),
    Case("std_all", "y = std(x)", lambda x: torch.std(x), {"x": X3}),
    Case("std_axis", "y = std(x, axis = -1)", lambda x: torch.std(x, -1), {"x": X3}),
    Case("std_correction0_keep", "y = std(x, axis = 1, keepdim = true, correction = 0)",
         lambda x: torch.std(x, 1, keepdim=True, correction=0), {"x": X3}),
    Case("logsumexp_all", "y = logsumexp(x)", lambda x: torch.logsumexp(x, _all(x)), {"x": X3 * 5}),
    Case("logsumexp_axis", "y = logsumexp(x, axis = 1)", lambda x: torch.logsumexp(x, 1), {"x": X3 * 5}),
    Case("logsumexp_axes_keep", "y = logsumexp(x, axis = (0, 2), keepdim = true)",
         lambda x: torch.logsumexp(x, (0, 2), keepdim=True), {"x": X3 * 5}),
    Case("logsumexp_large", "y = logsumexp(x, axis = -1)", lambda x: torch.logsumexp(x, -1),
         {"x": X3 * 5 + 800.0}),
    Case("softmax", "y = softmax(x)", lambda x: torch.softmax(x, -1), {"x": X3 * 3}),
    Case("softmax_axis", "y = softmax(x, axis = 1)", lambda x: torch.softmax(x, 1), {"x": X3 * 3}),
    Case("softmax_ties", "y = softmax(x, 0)", lambda x: torch.softmax(x, 0), {"x": TIES}),
    Case("log_softmax", "y = log_softmax(x)", lambda x: torch.log_softmax(x, -1), {"x": X3 * 3}),
    Case("log_softmax_axis", "y = log_softmax(x, axis = 0)", lambda x: torch.log_softmax(x, 0), {"x": X3 * 3}),
    Case("log_softmax_large", "y = log_softmax(x, axis = 2)", lambda x: torch.log_softmax(x, 2),
         {"x": X3 * 50 - 1000.0}),
    # -inf entries (a mask): no NaN, zero gradient there
    Case("softmax_masked", "y = softmax(x)", lambda x: torch.softmax(x, -1),
         {"x": np.where(R(13).random((6, 7)) < 0.3, -np.inf, normal((6, 7), 14))}),
    Case("logsumexp_masked", "y = logsumexp(x, axis = 1)", lambda x: torch.logsumexp(x, 1),
         {"x": np.where(R(13).random((6, 7)) < 0.3, -np.inf, normal((6, 7), 14))}),
    Case("sum_bool", "y = sum(x > 0.0, axis = 0)", lambda x: torch.sum(x > 0.0, 0), inputs={"x": X3}),
    # torch sums integers in int64
    Case("sum_int32", "y = sum(cast(t, i32), axis = 1)", lambda t: torch.sum(t.to(torch.int32), 1),
         inputs={"t": R(23).integers(-9, 9, (3, 7))}),
    Case("sum_int32_all", "y = sum(cast(t, i32))", lambda t: torch.sum(t.to(torch.int32)),
         inputs={"t": R(23).integers(-9, 9, (3, 7))}),
    # torch's shift: a row of -inf sums to -inf, a row holding +inf to +inf (not nan)
    Case("logsumexp_infinite_rows", "y = logsumexp(x, axis = 1)", lambda x: torch.logsumexp(x, 1),
         inputs={"x": np.array([[-np.inf] * 3, [1.0, np.inf, 2.0], [-np.inf, np.inf, 0.0]])}),
    Case("logsumexp_infinite_rows_keepdim", "y = logsumexp(x, axis = 1, keepdim = true)",
         lambda x: torch.logsumexp(x, 1, keepdim=True), inputs={"x": np.array([[-np.inf] * 3, [1.0, np.inf, 2.0]])}),
    Case("argmax", "y = argmax(x, axis = 1)", lambda x: torch.argmax(x, 1), inputs={"x": X3}),
    Case("argmax_keepdim", "y = argmax(x, axis = -1, keepdim = true)",
         lambda x: torch.argmax(x, -1, keepdim=True), inputs={"x": X3}),
    Case("argmax_all", "y = argmax(x)", lambda x: torch.argmax(x), inputs={"x": X3}),
    Case("argmax_ties_first", "y = argmax(x, axis = 2)", lambda x: torch.argmax(x, 2), inputs={"x": TIES}),
]


@pytest.mark.parametrize("case", REDUCTIONS, ids=ids(REDUCTIONS))
def test_reductions(case):
    check(case)


# ---- shapes -----------------------------------------------------------------------------------------------------
IDX = R(21).integers(0, 7, (6, 4, 5))
TOKENS = R(22).integers(0, 9, (3, 7))

SHAPES = [
    Case("reshape", "y = reshape(x, (5, 42))", lambda x: x.reshape(5, 42), {"x": X3}),
    Case("reshape_hole", "y = reshape(x, (3, -1, 7))", lambda x: x.reshape(3, -1, 7), {"x": X3}),
    Case("transpose", "y = transpose(x, 0, 2)", lambda x: x.transpose(0, 2), {"x": X3}),
    Case("transpose_negative", "y = x -> transpose(-1, -2)", lambda x: x.transpose(-1, -2), {"x": X3}),
    Case("permute", "y = permute(x, 2, 0, 1)", lambda x: x.permute(2, 0, 1), {"x": X3}),
    Case("permute_tuple", "y = permute(x, (1, 2, 0))", lambda x: x.permute(1, 2, 0), {"x": X3}),
    Case("flatten", "y = flatten(x)", lambda x: torch.flatten(x, 1), {"x": X3}),
    Case("flatten_range", "y = flatten(x, start = 0, end = 1)", lambda x: torch.flatten(x, 0, 1), {"x": X3}),
    Case("squeeze", "y = squeeze(x)", lambda x: x.squeeze(), {"x": normal((3, 1, 5, 1))}),
    Case("squeeze_axis", "y = squeeze(x, 1)", lambda x: x.squeeze(1), {"x": normal((3, 1, 5, 1))}),
    Case("squeeze_non_unit_axis", "y = squeeze(x, 0)", lambda x: x.squeeze(0), {"x": normal((3, 1, 5))}),
    Case("unsqueeze", "y = unsqueeze(x, 1)", lambda x: x.unsqueeze(1), {"x": normal(S)}),
    Case("unsqueeze_last", "y = unsqueeze(x, -1)", lambda x: x.unsqueeze(-1), {"x": normal(S)}),
    Case("concat", "y = concat([x, z * 2.0, x], axis = 1)", lambda x, z: torch.cat([x, z * 2.0, x], 1),
         {"x": normal((6, 2, 5)), "z": normal(S3, 1)}),
    Case("concat_default_axis", "y = concat([x, z])", lambda x, z: torch.cat([x, z]),
         {"x": normal((2, 5)), "z": normal(S, 1)}),
    Case("split", "a, c, d = split(x, 3, axis = 1)\ny = concat([a * 1.5, c - 2.0, exp(d)], axis = 1)",
         lambda x: (lambda a, c, d: torch.cat([a * 1.5, c - 2.0, torch.exp(d)], 1))(*torch.split(x, 3, 1)),
         {"x": X3}),
    Case("split_sizes", "a, c = split(x, (2, 4))\ny = concat([c, a * a])",
         lambda x: (lambda a, c: torch.cat([c, a * a]))(*torch.split(x, [2, 4])), {"x": X3}),
    Case("chunk", "a, c, d = chunk(x, 3, axis = -1)\ny = a * c + d",
         lambda x: (lambda a, c, d: a * c + d)(*torch.chunk(x, 3, -1)),
         {"x": normal((6, 7, 6))}),
    Case("expand", "y = expand(x, (4, -1, 5))", lambda x: x.expand(4, -1, 5), {"x": normal((3, 1))}),
    Case("pad", "y = pad(x, (1, 2))", lambda x: F.pad(x, (1, 2)), {"x": X3}),
    Case("pad_two_axes_value", "y = pad(x, (0, 1, 2, 3), value = -0.5)",
         lambda x: F.pad(x, (0, 1, 2, 3), value=-0.5), {"x": X3}),
    Case("one_hot", "y = one_hot(t, 9)", lambda t: F.one_hot(t, 9), inputs={"t": TOKENS}),
    Case("one_hot_as_float", "y = cast(one_hot(t, 9), f64) * x",
         lambda t, x: F.one_hot(t, 9).double() * x, {"x": normal((3, 7, 9))}, {"t": TOKENS}),
    Case("gather", "y = gather(x, 1, i)", lambda x, i: torch.gather(x, 1, i), {"x": X3}, {"i": IDX}),
    Case("gather_pipe_last", "y = x -> gather(-1, i)", lambda x, i: torch.gather(x, -1, i),
         {"x": normal((6, 4, 7))}, {"i": IDX[:, :, :3]}),
    # the index may be smaller than x on the axes it does not gather along
    Case("gather_smaller_index", "y = gather(x, 1, i)", lambda x, i: torch.gather(x, 1, i), {"x": X3},
         {"i": R(24).integers(0, 7, (4, 9, 2))}),
    Case("gather_smaller_index_axis0", "y = gather(x, 0, i)", lambda x, i: torch.gather(x, 0, i), {"x": X3},
         {"i": R(25).integers(0, 6, (8, 3, 5))}),
    Case("arange", "y = arange(7)", lambda: torch.arange(7)),
    Case("arange_start_step", "y = arange(2, 11, step = 3)", lambda: torch.arange(2, 11, 3)),
    Case("arange_empty", "y = arange(3, 3)", lambda: torch.arange(3, 3)),
    Case("arange_as_float", "y = x * cast(arange(5), f64)", lambda x: x * torch.arange(5).double(),
         {"x": normal(S)}),
]


@pytest.mark.parametrize("case", SHAPES, ids=ids(SHAPES))
def test_shapes(case):
    check(case)


def MM(a, c):
    return torch.matmul(a, c)


INDEXING = [
    Case("index_last", "y = x[:, -1]", lambda x: x[:, -1], {"x": X3}),
    Case("index_ellipsis", "y = x[..., 0]", lambda x: x[..., 0], {"x": X3}),
    Case("index_slices", "y = x[1:4, 2:]", lambda x: x[1:4, 2:], {"x": X3}),
    Case("index_step", "y = x[0:6:2, 1:7:3, :]", lambda x: x[0:6:2, 1:7:3, :], {"x": X3}),
    Case("index_negative_bounds", "y = x[:-1, -3:]", lambda x: x[:-1, -3:], {"x": X3}),
    Case("index_int_and_slice", "y = x[2, 1:5, 3]", lambda x: x[2, 1:5, 3], {"x": X3}),
]


@pytest.mark.parametrize("case", INDEXING, ids=ids(INDEXING))
def test_indexing(case):
    check(case)


MATMUL = [
    Case("matmul_2d", "y = matmul(a, c)", MM, {"a": normal(S), "c": normal((5, 7), 1)}),
    Case("at_2d", "y = a @ c", MM, {"a": normal(S), "c": normal((5, 7), 1)}),
    Case("at_vec_vec", "y = a @ c", MM, {"a": normal((5,)), "c": normal((5,), 1)}),
    Case("at_vec_mat", "y = a @ c", MM, {"a": normal((5,)), "c": normal((5, 7), 1)}),
    Case("at_mat_vec", "y = a @ c", MM, {"a": normal(S), "c": normal((5,), 1)}),
    Case("at_batched", "y = a @ c", MM, {"a": normal((6, 3, 5)), "c": normal((6, 5, 7), 1)}),
    Case("at_batched_matrix", "y = a @ c", MM, {"a": normal((6, 3, 5)), "c": normal((5, 7), 1)}),
    Case("at_matrix_batched", "y = a @ c", MM, {"a": normal((3, 5)), "c": normal((6, 5, 7), 1)}),
    Case("at_broadcast_batch", "y = a @ c", MM,
         {"a": normal((2, 1, 3, 5)), "c": normal((6, 5, 7), 1)}),
    Case("at_vec_batched", "y = a @ c", MM, {"a": normal((5,)), "c": normal((2, 6, 5, 7), 1)}),
    Case("at_batched_vec", "y = a @ c", MM, {"a": normal((2, 6, 3, 5)), "c": normal((5,), 1)}),
    Case("at_precedence", "y = a @ c * 2.0 + a @ c @ d", lambda a, c, d: (a @ c) * 2.0 + a @ c @ d,
         {"a": normal(S), "c": normal((5, 5), 1), "d": normal((5, 5), 2)}),
]


@pytest.mark.parametrize("case", MATMUL, ids=ids(MATMUL))
def test_matmul(case):
    check(case)


# ---- losses -----------------------------------------------------------------------------------------------------
B, C, T = 6, 5, 7
LOGITS = normal((B, C), 31) * 2
LABELS = R(32).integers(0, C, B)
PROBS = torch.softmax(torch.tensor(normal((B, C), 33)), -1).numpy()
SEQ_LOGITS = normal((3, T, C), 34) * 2
SEQ_LABELS = R(35).integers(0, C, (3, T))
SEQ_PROBS = torch.softmax(torch.tensor(normal((3, T, C), 36)), -1).numpy()
PRED = normal((B, C), 37)
TARGET = normal((B, C), 38)
P01 = R(39).uniform(0.05, 0.95, (B, C))
T01 = R(40).uniform(0.0, 1.0, (B, C))
BINARY = (R(41).random((B, C)) < 0.5).astype(np.float64)


def _seq_ce(logits, target, **kw):
    """torch's cross_entropy wants classes on axis 1 (of class probabilities too)."""
    if target.dtype.is_floating_point:
        target = target.transpose(1, 2)
    out = F.cross_entropy(logits.transpose(1, 2), target, **kw)
    return out


def _losses():
    cases = []
    for red in ("mean", "sum", "none"):
        r = f', reduction = "{red}"'
        cases += [
            Case(f"cross_entropy_indices_{red}", f"y = cross_entropy(x, t{r})",
                 lambda x, t, red=red: F.cross_entropy(x, t, reduction=red), {"x": LOGITS}, {"t": LABELS}),
            Case(f"cross_entropy_probs_{red}", f"y = cross_entropy(x, p{r})",
                 lambda x, p, red=red: F.cross_entropy(x, p, reduction=red), {"x": LOGITS, "p": PROBS}),
            Case(f"cross_entropy_smoothing_{red}", f"y = cross_entropy(x, t, label_smoothing = 0.15{r})",
                 lambda x, t, red=red: F.cross_entropy(x, t, label_smoothing=0.15, reduction=red),
                 {"x": LOGITS}, {"t": LABELS}),
            Case(f"cross_entropy_probs_smoothing_{red}", f"y = cross_entropy(x, p, label_smoothing = 0.2{r})",
                 lambda x, p, red=red: F.cross_entropy(x, p, label_smoothing=0.2, reduction=red),
                 {"x": LOGITS, "p": PROBS}),
            Case(f"cross_entropy_sequence_{red}", f"y = cross_entropy(x, t{r})",
                 lambda x, t, red=red: _seq_ce(x, t, reduction=red), {"x": SEQ_LOGITS}, {"t": SEQ_LABELS}),
            Case(f"cross_entropy_sequence_smoothing_{red}", f"y = cross_entropy(x, t, label_smoothing = 0.1{r})",
                 lambda x, t, red=red: _seq_ce(x, t, label_smoothing=0.1, reduction=red),
                 {"x": SEQ_LOGITS}, {"t": SEQ_LABELS}),
            Case(f"cross_entropy_sequence_probs_{red}", f"y = cross_entropy(x, p{r})",
                 lambda x, p, red=red: _seq_ce(x, p, reduction=red), {"x": SEQ_LOGITS, "p": SEQ_PROBS}),
            Case(f"nll_{red}", f"y = nll(log_softmax(x), t{r})",
                 lambda x, t, red=red: F.nll_loss(torch.log_softmax(x, -1), t, reduction=red),
                 {"x": LOGITS}, {"t": LABELS}),
            Case(f"nll_direct_{red}", f"y = nll(x, t{r})",
                 lambda x, t, red=red: F.nll_loss(x, t, reduction=red), {"x": PRED}, {"t": LABELS}),
            Case(f"nll_sequence_{red}", f"y = nll(x, t{r})",
                 lambda x, t, red=red: F.nll_loss(x.transpose(1, 2), t, reduction=red),
                 {"x": SEQ_LOGITS}, {"t": SEQ_LABELS}),
            Case(f"mse_{red}", f"y = mse(x, z{r})", lambda x, z, red=red: F.mse_loss(x, z, reduction=red),
                 {"x": PRED, "z": TARGET}),
            Case(f"mae_{red}", f"y = mae(x, z{r})", lambda x, z, red=red: F.l1_loss(x, z, reduction=red),
                 {"x": PRED, "z": TARGET}),
            Case(f"huber_{red}", f"y = huber(x, z{r})", lambda x, z, red=red: F.huber_loss(x, z, reduction=red),
                 {"x": PRED, "z": TARGET}),
            Case(f"huber_delta_{red}", f"y = huber(x, z, delta = 0.4{r})",
                 lambda x, z, red=red: F.huber_loss(x, z, reduction=red, delta=0.4), {"x": PRED, "z": TARGET}),
            Case(f"bce_{red}", f"y = bce(x, z{r})",
                 lambda x, z, red=red: F.binary_cross_entropy(x, z, reduction=red), {"x": P01, "z": T01}),
            Case(f"bce_with_logits_{red}", f"y = bce_with_logits(x, z{r})",
                 lambda x, z, red=red: F.binary_cross_entropy_with_logits(x, z, reduction=red),
                 {"x": PRED * 3, "z": T01}),
            Case(f"hinge_{red}", f"y = hinge(x, t{r})",
                 lambda x, t, red=red: F.multi_margin_loss(x, t, reduction=red), {"x": LOGITS * 0.3},
                 {"t": LABELS}),
            Case(f"kl_div_{red}", f"y = kl_div(log_softmax(x), p{r})",
                 lambda x, p, red=red: F.kl_div(torch.log_softmax(x, -1), p, reduction=red),
                 {"x": LOGITS, "p": PROBS}),
        ]
    return cases


# Inputs at the kinks, where torch's explicit backward formulas decide the gradient.
_EDGE_X = np.array([[0.0, 0.0, 1.5, -2.0, 0.0], [0.3, -0.0, 0.0, 4.0, -1.0]])
_EDGE_T = np.array([[0.0, 1.0, 0.5, 1.0, 0.3], [0.3, 0.0, 1.0, 0.0, 0.7]])

LOSS_EDGES = [
    Case("bce_with_logits_at_zero", "y = bce_with_logits(x, z)",
         lambda x, z: F.binary_cross_entropy_with_logits(x, z), {"x": _EDGE_X, "z": _EDGE_T}),
    Case("bce_with_logits_at_zero_none", 'y = bce_with_logits(x, z, reduction = "none")',
         lambda x, z: F.binary_cross_entropy_with_logits(x, z, reduction="none"), {"x": _EDGE_X, "z": _EDGE_T}),
    Case("bce_with_logits_large", 'y = bce_with_logits(x, z, reduction = "sum")',
         lambda x, z: F.binary_cross_entropy_with_logits(x, z, reduction="sum"),
         {"x": np.array([[-60.0, 60.0, -800.0, 800.0, 30.0]]), "z": np.array([[0.0, 1.0, 0.3, 0.6, 0.5]])}),
    # a number target broadcasts to the input (the language's one extension)
    Case("bce_with_logits_number_target", "y = bce_with_logits(x, 1.0)",
         lambda x: F.binary_cross_entropy_with_logits(x, torch.ones_like(x)), {"x": PRED}),
    Case("bce_with_logits_row_target", "y = bce_with_logits(x, z)",
         lambda x, z: F.binary_cross_entropy_with_logits(x, z.expand_as(x)), {"x": PRED, "z": T01[:1]}),
    Case("bce_binary_targets", "y = bce(x, z)", lambda x, z: F.binary_cross_entropy(x, z), {"x": P01},
         {"z": BINARY}),
    Case("bce_saturated_clamps_log", 'y = bce(x, z, reduction = "sum")',
         lambda x, z: F.binary_cross_entropy(x, z, reduction="sum"),
         {"x": np.array([[1e-50, 1 - 1e-17, 0.5, 1e-300]])}, {"z": np.array([[1.0, 0.0, 1.0, 0.0]])}),
    # p exactly 0 or 1 (a saturated sigmoid): torch's gradient is finite there
    Case("bce_exact_zero_and_one", 'y = bce(x, z, reduction = "none")',
         lambda x, z: F.binary_cross_entropy(x, z, reduction="none"),
         {"x": np.array([[0.0, 1.0, 0.0, 1.0, 0.5]])}, {"z": np.array([[0.0, 1.0, 1.0, 0.0, 0.25]])}),
    Case("bce_of_saturated_sigmoid", "y = bce(sigmoid(x), z)",
         lambda x, z: F.binary_cross_entropy(torch.sigmoid(x), z),
         {"x": np.array([[40.0, -800.0, 1.0, 38.0, -3.0]])}, {"z": np.array([[1.0, 0.0, 1.0, 1.0, 0.0]])}),
    Case("mse_number_target", "y = mse(x, 0.5)", lambda x: F.mse_loss(x, torch.full_like(x, 0.5)), {"x": PRED}),
    Case("mae_at_zero", "y = mae(x, z)", lambda x, z: F.l1_loss(x, z),
         {"x": _EDGE_X}, {"z": np.where(_EDGE_T > 0.6, _EDGE_X, _EDGE_T)}),
    Case("huber_at_delta", "y = huber(x, z, delta = 0.5)", lambda x, z: F.huber_loss(x, z, delta=0.5),
         {"x": np.array([[0.5, -0.5, 1.0, 0.2, 0.0]])}, {"z": np.array([[0.0, 0.0, 0.5, 0.7, -0.1]])}),
    Case("hinge_margin", "y = hinge(x, t, margin = 0.6)", lambda x, t: F.multi_margin_loss(x, t, margin=0.6),
         {"x": LOGITS}, {"t": LABELS}),
    Case("hinge_at_margin", "y = hinge(x, t)", lambda x, t: F.multi_margin_loss(x, t),
         {"x": np.array([[1.0, 0.0, 0.5, -0.5, 0.3], [0.0, 2.0, 1.0, 3.0, 0.0]])}, {"t": np.array([0, 1])}),
    Case("kl_div_batchmean", 'y = kl_div(log_softmax(x), p, reduction = "batchmean")',
         lambda x, p: F.kl_div(torch.log_softmax(x, -1), p, reduction="batchmean"), {"x": LOGITS, "p": PROBS}),
    Case("kl_div_zero_targets", 'y = kl_div(x, z, reduction = "sum")',
         lambda x, z: F.kl_div(x, z, reduction="sum"), {"x": PRED},
         {"z": np.where(BINARY > 0, PROBS, 0.0)}),
    Case("kl_div_log_target", 'y = kl_div(log_softmax(x), log_softmax(z), log_target = true)',
         lambda x, z: F.kl_div(torch.log_softmax(x, -1), torch.log_softmax(z, -1), log_target=True),
         {"x": LOGITS, "z": PRED}),
    Case("kl_div_log_target_batchmean", 'y = kl_div(x, z, reduction = "batchmean", log_target = true)',
         lambda x, z: F.kl_div(x, z, reduction="batchmean", log_target=True), {"x": PRED, "z": TARGET}),
    Case("kl_div_log_target_none", 'y = kl_div(x, z, reduction = "none", log_target = true)',
         lambda x, z: F.kl_div(x, z, reduction="none", log_target=True), {"x": PRED, "z": TARGET}),
    Case("cross_entropy_one_hot_probs", "y = cross_entropy(x, cast(one_hot(t, 5), f64))",
         lambda x, t: F.cross_entropy(x, t), {"x": LOGITS}, {"t": LABELS}),
    Case("cross_entropy_masked_sum", 'y = sum(cross_entropy(x, t, reduction = "none") * m) / sum(m)',
         lambda x, t, m: (F.cross_entropy(x, t, reduction="none") * m).sum() / m.sum(),
         {"x": LOGITS}, {"t": LABELS, "m": (R(42).random(B) < 0.6).astype(np.float64)}),
]


LOSSES = _losses()


@pytest.mark.filterwarnings("ignore:reduction. 'mean' divides the total loss")
@pytest.mark.parametrize("case", LOSSES + LOSS_EDGES, ids=ids(LOSSES + LOSS_EDGES))
def test_losses(case):
    check(case)


# ---- layers: torch modules' weights loaded by name --------------------------------------------------------------
def check_layer(src: str, module: torch.nn.Module, prefix: str, x: np.ndarray, forward: Callable,
                inputs: dict[str, np.ndarray] | None = None, x_is_param: bool = True, seed: int = 5) -> None:
    """`src` declares `param x` (or an input) and binds y; the harness adds cot and the loss."""
    torch.manual_seed(seed)
    module = module.double()
    for p in module.parameters():  # not the default init: make biases and norms non-trivial
        with torch.no_grad():
            p.copy_(torch.randn_like(p))
    tx = torch.tensor(x, requires_grad=x_is_param)
    ti = {k: torch.tensor(v) for k, v in (inputs or {}).items()}
    ref = forward(module, tx, **ti)
    cot = R(seed).standard_normal(tuple(ref.shape))
    ref_loss = (ref * torch.tensor(cot)).sum()
    ref_loss.backward()

    shape = ", ".join(str(d) for d in ref.shape)
    model = dln.compile(src.replace("COT", f"input cot: f64[{shape}]\n    loss = sum(y * cot)"))
    state = {f"{prefix}.{k}": v for k, v in module.state_dict().items()}
    if x_is_param:
        state["x"] = x
    model.load_state_dict(state)
    feeds = dict(inputs or {})
    if not x_is_param:
        feeds["x"] = x
    y = model.run(["y"], **feeds)["y"]
    np.testing.assert_allclose(y, ref.detach().numpy(), rtol=RTOL, atol=ATOL, err_msg="value")
    loss, grads = model.value_and_grad("loss", **feeds, cot=cot)
    np.testing.assert_allclose(loss, ref_loss.item(), rtol=RTOL, atol=ATOL)
    for k, p in module.named_parameters():
        np.testing.assert_allclose(grads[f"{prefix}.{k}"], p.grad.numpy(), rtol=RTOL, atol=ATOL,
                                   err_msg=f"gradient of {k}")
    if x_is_param:
        np.testing.assert_allclose(grads["x"], tx.grad.numpy(), rtol=RTOL, atol=ATOL, err_msg="gradient of x")


def test_linear():
    check_layer("""
model m() {
    param x: f64[6, 5] = zeros
    y = x -> linear(7)
    COT
    output y
}""", torch.nn.Linear(5, 7), "y", normal((6, 5)), lambda m, x: m(x))


def test_linear_no_bias_on_sequences():
    check_layer("""
model m() {
    param x: f64[3, 7, 5] = zeros
    y = linear(x, 6, bias = false)
    COT
    output y
}""", torch.nn.Linear(5, 6, bias=False), "y", normal((3, 7, 5)), lambda m, x: m(x))


def test_linear_named_and_piped_with_symbolic_batch():
    # the weights map by the layer's name; x is a data input with a symbolic batch
    check_layer("""
model m() {
    input x: f64[B, 5]
    h = x -> linear(7, name = "fc") -> tanh
    y = h * 2.0
    COT
    output y
}""", torch.nn.Linear(5, 7), "fc", normal((6, 5)), lambda m, x: torch.tanh(m(x)) * 2.0, x_is_param=False)


def test_clamp_bounds_may_be_dimensions():
    model = dln.compile("model m() {\n    input x: f32[B, 4]\n    output y = clamp(x, lo = B, hi = 2 * B)\n}\n")
    x = np.arange(-4, 20, dtype=np.float32).reshape(6, 4)
    np.testing.assert_array_equal(model(x=x)["y"], torch.clamp(torch.tensor(x), 6, 12).numpy())


def test_layernorm():
    check_layer("""
model m() {
    param x: f64[6, 7] = zeros
    y = layernorm(x)
    COT
    output y
}""", torch.nn.LayerNorm(7), "y", normal((6, 7)) * 3 + 1, lambda m, x: m(x))


def test_layernorm_eps_rank3():
    check_layer("""
model m() {
    param x: f64[3, 7, 5] = zeros
    y = x -> layernorm(eps = 1e-3)
    COT
    output y
}""", torch.nn.LayerNorm(5, eps=1e-3), "y", normal((3, 7, 5)) * 0.1, lambda m, x: m(x))


def test_layernorm_without_affine():
    x = normal((6, 7)) * 2
    check(Case("layernorm_plain", "y = layernorm(x, affine = false)", lambda x: F.layer_norm(x, (7,)), {"x": x}))


def test_batchnorm_without_running_statistics():
    """Batch statistics in both modes, as torch's BatchNorm with track_running_stats=False (the running
    statistics are tests/runtime/test_batchnorm.py's)."""
    x = normal((6, 3, 5)) * 2 + 1
    check(Case("batchnorm_plain", "y = batchnorm(x, affine = false, track_running_stats = false)",
               lambda x: F.batch_norm(x, None, None, training=True), {"x": x}))


def test_embedding():
    # Embedding weights are f32 (torch's default dtype: indices say nothing about it); a f64 factor
    # promotes the output to f64 in both.
    module = torch.nn.Embedding(9, 5)
    x = normal((3, 7, 5))
    model = dln.compile("""
model m() {
    input t: i64[3, 7]
    param x: f64[3, 7, 5] = zeros
    input cot: f64[3, 7, 5]
    e = embedding(t, 9, 5)
    y = e * x
    loss = sum(y * cot)
    output y
}""")
    assert model.parameters()["e.weight"].dtype == np.float32
    model.load_state_dict({"e.weight": module.weight.detach(), "x": x})
    cot = normal((3, 7, 5), 9)
    tx = torch.tensor(x, requires_grad=True)
    ref = module(torch.tensor(TOKENS)) * tx
    ref_loss = (ref * torch.tensor(cot)).sum()
    ref_loss.backward()
    y = model.run(["y"], t=TOKENS)["y"]
    assert y.dtype == np.float64
    np.testing.assert_allclose(y, ref.detach().numpy(), rtol=RTOL, atol=ATOL)
    loss, grads = model.value_and_grad("loss", t=TOKENS, cot=cot)
    np.testing.assert_allclose(loss, ref_loss.item(), rtol=RTOL)
    np.testing.assert_allclose(grads["x"], tx.grad.numpy(), rtol=RTOL, atol=ATOL)
    assert grads["e.weight"].dtype == np.float32
    # rows hit several times sum their gradients (torch sums in f32, dln in f64 then rounds)
    np.testing.assert_allclose(grads["e.weight"], module.weight.grad.numpy(), rtol=1e-5, atol=1e-6)


def test_embedding_lookup_in_f64():
    # The same lookup, differentiated in f64: one_hot(t) @ weight is the embedding.
    w = normal((9, 5), 3)
    check(Case("embedding_as_one_hot", "y = cast(one_hot(t, 9), f64) @ x",
               lambda x, t: F.embedding(t, x), {"x": w}, {"t": TOKENS}))


def test_gcn_conv():
    n = 7
    a = (R(51).random((n, n)) < 0.4).astype(np.float64)
    a = np.maximum(a, a.T) + np.eye(n)
    d = 1 / np.sqrt(a.sum(1))
    adj = a * d[:, None] * d[None, :]
    check_layer("""
model m() {
    param x: f64[7, 5] = zeros
    input adj: f64[7, 7]
    y = x -> gcn_conv(adj, 3)
    COT
    output y
}""", torch.nn.Linear(5, 3), "y", normal((n, 5)), lambda m, x, adj: adj @ (x @ m.weight.T) + m.bias,
                inputs={"adj": adj})


def test_gcn_conv_adjacency_gradient():
    # the adjacency as a parameter too: its gradient is torch's
    w, bias = normal((3, 5), 1), normal((3,), 2)
    model = dln.compile("""
model m() {
    param x: f64[7, 5] = zeros
    param adj: f64[7, 7] = zeros
    input cot: f64[7, 3]
    y = gcn_conv(x, adj, 3, name = "g")
    loss = sum(y * cot)
    output y
}""")
    x, adj, cot = normal((7, 5)), normal((7, 7), 3), normal((7, 3), 4)
    model.load_state_dict({"x": x, "adj": adj, "g.weight": w, "g.bias": bias})
    t = {k: torch.tensor(v, requires_grad=True) for k, v in {"x": x, "adj": adj, "g.weight": w, "g.bias": bias}.items()}
    ref = ((t["adj"] @ (t["x"] @ t["g.weight"].T) + t["g.bias"]) * torch.tensor(cot)).sum()
    ref.backward()
    loss, grads = model.value_and_grad("loss", cot=cot)
    np.testing.assert_allclose(loss, ref.item(), rtol=RTOL)
    for k, v in t.items():
        np.testing.assert_allclose(grads[k], v.grad.numpy(), rtol=RTOL, atol=ATOL, err_msg=k)


def test_conv1d():
    check_layer("""
model m() {
    param x: f64[2, 4, 9] = zeros
    y = x -> conv1d(6, kernel = 3, stride = 2, padding = 1, dilation = 2, groups = 2)
    COT
    output y
}""", torch.nn.Conv1d(4, 6, 3, stride=2, padding=1, dilation=2, groups=2), "y", normal((2, 4, 9)), lambda m, x: m(x))


def test_conv2d():
    check_layer("""
model m() {
    param x: f64[2, 3, 7, 6] = zeros
    y = x -> conv2d(5, kernel = (3, 2), stride = (2, 1), padding = (1, 0), dilation = (1, 2))
    COT
    output y
}""", torch.nn.Conv2d(3, 5, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2)), "y", normal((2, 3, 7, 6)),
                lambda m, x: m(x))


def test_conv_transpose2d():
    check_layer("""
model m() {
    param x: f64[2, 4, 3, 4] = zeros
    y = x -> conv_transpose2d(6, kernel = (3, 2), stride = (2, 3), padding = (1, 0), output_padding = (1, 2), groups = 2)
    COT
    output y
}""", torch.nn.ConvTranspose2d(4, 6, (3, 2), stride=(2, 3), padding=(1, 0), output_padding=(1, 2), groups=2), "y",
                normal((2, 4, 3, 4)), lambda m, x: m(x))

class _TorchMLP(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.h = torch.nn.Linear(5, 7)
        self.norm = torch.nn.LayerNorm(7)
        self.logits = torch.nn.Linear(7, 3)

    def forward(self, x):
        return self.logits(torch.relu(self.norm(self.h(x))))


def test_torch_state_dict_loads_directly():
    """A torch module's state_dict, as is (torch tensors), into a model of the same architecture."""
    torch.manual_seed(0)
    module = _TorchMLP().double()
    model = dln.compile("""
model m() {
    input x: f64[B, 5]
    input y: i64[B]
    h = x -> linear(7)
    norm = layernorm(h)
    logits = norm -> relu -> linear(3)
    loss = cross_entropy(logits, y)
    output logits
}""")
    model.load_state_dict(module.state_dict())
    x, y = normal((6, 5), 1), R(2).integers(0, 3, 6)
    out = model(x=torch.tensor(x))["logits"]
    assert isinstance(out, torch.Tensor)   # torch in, torch out
    ref = module(torch.tensor(x))
    np.testing.assert_allclose(out.numpy(), ref.detach().numpy(), rtol=RTOL, atol=ATOL)
    loss, grads = model.value_and_grad("loss", x=x, y=y)
    ref_loss = F.cross_entropy(ref, torch.tensor(y))
    ref_loss.backward()
    np.testing.assert_allclose(loss, ref_loss.item(), rtol=RTOL)
    for k, p in module.named_parameters():
        np.testing.assert_allclose(grads[k], p.grad.numpy(), rtol=RTOL, atol=ATOL, err_msg=k)


# ---- randomness: not torch's generator, so properties only ------------------------------------------------------
def test_random_builtins_properties():
    model = dln.compile("""
model m() {
    input x: f64[60, 70]
    d = dropout(x, 0.3)
    r = rand_like(x)
    n = randn_like(x)
    k = bernoulli(r * 0.0 + 0.25)
    output d
}""")
    x = np.ones((60, 70))
    out = model.run(["d", "r", "n", "k"], training=True, x=x)
    d, r, n, k = out["d"], out["r"], out["n"], out["k"]
    kept = d != 0
    np.testing.assert_allclose(d[kept], 1 / 0.7, rtol=1e-12)     # survivors scaled by 1 / (1 - p)
    assert abs(kept.mean() - 0.7) < 0.05
    assert r.min() >= 0.0 and r.max() < 1.0 and abs(r.mean() - 0.5) < 0.03
    assert abs(n.mean()) < 0.06 and abs(n.std() - 1.0) < 0.05
    assert set(np.unique(k)) <= {0.0, 1.0} and abs(k.mean() - 0.25) < 0.04
    np.testing.assert_array_equal(model.run(["d"], x=x)["d"], x)  # evaluation: identity


# ---- every available built-in is exercised here -----------------------------------------------------------------
ALL_CASES = ELEMENTWISE + REDUCTIONS + SHAPES + INDEXING + MATMUL + LOSSES + LOSS_EDGES
# Layers and the random built-ins are tested by the functions above, pooling in test_pooling.py,
# convolutions in test_conv.py, batchnorm in test_batchnorm.py, recurrent layers in test_recurrent.py,
# attention in test_attention.py.
TESTED_BY_FUNCTIONS = {"linear", "layernorm", "batchnorm", "embedding", "gcn_conv", "dropout", "rand_like",
                       "randn_like", "bernoulli", "maxpool2d", "avgpool2d", "global_avgpool", "conv1d", "conv2d",
                       "conv_transpose2d", "rnn", "lstm", "gru", "attention", "scaled_dot_product_attention"}


def test_every_available_builtin_is_covered():
    used = set()
    for c in ALL_CASES:
        used |= set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", c.body))
    missing = [name for name, b in BUILTINS.items()
               if b.category != "init" and name not in used and name not in TESTED_BY_FUNCTIONS]
    assert missing == []
