"""maxpool2d and avgpool2d against torch.nn.functional (float64, NumPy backend): values and input
gradients over irregular configurations, ties routed as torch routes them, torch's avg_pool2d divisor,
the argument checks, and the size of the decomposition."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import dln
from _data import R

RTOL, ATOL = 1e-12, 1e-13


def _shape(shape) -> str:
    return ", ".join(str(d) for d in shape)


def check(call: str, x: np.ndarray, torch_fn, seed: int = 5, backend: str = "numpy", rtol=RTOL, atol=ATOL) -> None:
    """`y = call` on a parameter x: y and the gradient of sum(y * cot) with respect to x, against torch."""
    xt = torch.tensor(x, requires_grad=True)
    ref = torch_fn(xt)
    cot = R(seed).standard_normal(tuple(ref.shape)).astype(x.dtype)
    (ref * torch.tensor(cot)).sum().backward()
    f = {np.float64: "f64", np.float32: "f32"}[x.dtype.type]
    model = dln.compile(f"""model m() {{
    param x: {f}[{_shape(x.shape)}] = zeros
    input cot: {f}[{_shape(ref.shape)}]
    y = {call}
    loss = sum(y * cot)
    output y
}}""", backend=backend)
    model.load_state_dict({"x": x})
    y = model.run(["y"])["y"]
    assert y.shape == tuple(ref.shape)
    np.testing.assert_allclose(y, ref.detach().numpy(), rtol=rtol, atol=atol, err_msg="value")
    _, grads = model.value_and_grad("loss", cot=cot)
    np.testing.assert_allclose(grads["x"], xt.grad.numpy(), rtol=rtol, atol=atol, err_msg="gradient")


def _values(kind: str, shape, seed: int = 0) -> np.ndarray:
    """normal; ties (small integers: windows with repeated maxima); negative (below the zero a wrong
    padding value would put in a window)."""
    rng = R(seed)
    if kind == "normal":
        return rng.standard_normal(shape)
    if kind == "ties":
        return np.floor(rng.uniform(0, 3, shape))
    return -np.abs(rng.standard_normal(shape)) - 1.0


# (id, input shape, the call's arguments after x, torch's keywords)
MAX_CASES = [
    ("2", (2, 3, 8, 8), "2", dict(kernel_size=2)),
    ("2_odd_floor", (2, 3, 7, 9), "2", dict(kernel_size=2)),
    ("2_odd_ceil", (2, 3, 7, 9), "2, ceil_mode = true", dict(kernel_size=2, ceil_mode=True)),
    ("2_padded", (2, 2, 6, 7), "2, padding = 1", dict(kernel_size=2, padding=1)),
    ("3_tiled_ceil", (1, 2, 7, 8), "3, ceil_mode = true", dict(kernel_size=3, ceil_mode=True)),
    ("3x2", (1, 2, 9, 7), "(3, 2)", dict(kernel_size=(3, 2))),
    ("3_s1_p1_overlap", (2, 2, 6, 7), "3, stride = 1, padding = 1", dict(kernel_size=3, stride=1, padding=1)),
    ("2_s3_skip", (2, 2, 11, 10), "2, stride = 3", dict(kernel_size=2, stride=3)),
    ("3_s2_p1_ceil", (2, 3, 10, 9), "3, stride = 2, padding = 1, ceil_mode = true",
     dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
    ("2_s2_p1_ceil_last_dropped", (1, 1, 5, 5), "2, stride = 2, padding = 1, ceil_mode = true",
     dict(kernel_size=2, stride=2, padding=1, ceil_mode=True)),
    ("3_d2", (1, 2, 11, 9), "3, stride = 2, dilation = 2", dict(kernel_size=3, stride=2, dilation=2)),
    ("pairs_dilated_ceil", (2, 1, 12, 13), "(2, 3), stride = (2, 1), padding = (1, 0), dilation = (3, 2), "
     "ceil_mode = true", dict(kernel_size=(2, 3), stride=(2, 1), padding=(1, 0), dilation=(3, 2), ceil_mode=True)),
    ("stride_pair", (2, 3, 9, 9), "3, stride = (1, 2), padding = (1, 0)",
     dict(kernel_size=3, stride=(1, 2), padding=(1, 0))),
    ("1_s2", (2, 2, 5, 5), "1, stride = 2", dict(kernel_size=1, stride=2)),
    ("1_tuples", (2, 2, 9, 8), "(3,), stride = (2,), padding = (1,)",
     dict(kernel_size=(3,), stride=(2,), padding=(1,))),
    ("whole_input", (2, 3, 5, 7), "(5, 7)", dict(kernel_size=(5, 7))),
    ("batch1", (1, 4, 6, 6), "2", dict(kernel_size=2)),
    ("rank3", (3, 7, 6), "3, stride = 2, padding = 1, ceil_mode = true",
     dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
    ("rank3_tiled", (3, 8, 6), "2", dict(kernel_size=2)),
]


@pytest.mark.parametrize("values", ["normal", "ties", "negative"])
@pytest.mark.parametrize("case", MAX_CASES, ids=[c[0] for c in MAX_CASES])
def test_maxpool2d(case, values):
    _, shape, args, kw = case
    check(f"maxpool2d(x, {args})", _values(values, shape), lambda t: F.max_pool2d(t, **kw))


def test_maxpool2d_piped_and_named():
    x = _values("normal", (2, 3, 7, 7))
    check("x -> maxpool2d(kernel = 3, stride = 2, padding = 1)", x,
          lambda t: F.max_pool2d(t, 3, 2, 1))


def test_maxpool2d_equal_windows_send_the_gradient_to_the_first_element():
    """All-equal overlapping windows: each window's whole gradient reaches its top-left element
    (torch's CPU kernel), not a share of it to every tie."""
    x = np.zeros((1, 1, 4, 4))
    check("maxpool2d(x, 2, stride = 1)", x, lambda t: F.max_pool2d(t, 2, 1))
    model = dln.compile("""model m() {
    param x: f64[1, 1, 4, 4] = zeros
    loss = sum(maxpool2d(x, 2, stride = 1))
    output loss
}""")
    _, grads = model.value_and_grad("loss")
    expected = np.zeros((4, 4))
    expected[:3, :3] = 1.0
    np.testing.assert_array_equal(grads["x"][0, 0], expected)


def test_maxpool2d_symbolic_batch():
    """A batch size known only at run time: one compile, two batch sizes, the gradient of a scale."""
    model = dln.compile("""model m() {
    input x: f64[B, 3, 7, 6]
    param s: f64[6] = ones
    input cot: f64[B, 3, 4, 3]
    y = maxpool2d(x * s, 3, stride = 2, padding = 1)
    loss = sum(y * cot)
    output y
}""")
    scale = R(1).uniform(0.5, 2.0, 6)
    model.load_state_dict({"s": scale})
    for batch in (2, 5):
        x, cot = R(batch).standard_normal((batch, 3, 7, 6)), R(batch + 1).standard_normal((batch, 3, 4, 3))
        st = torch.tensor(scale, requires_grad=True)
        ref = F.max_pool2d(torch.tensor(x) * st, 3, 2, 1)
        (ref * torch.tensor(cot)).sum().backward()
        np.testing.assert_allclose(model.run(["y"], x=x)["y"], ref.detach().numpy(), rtol=RTOL, atol=ATOL)
        _, grads = model.value_and_grad("loss", x=x, cot=cot)
        np.testing.assert_allclose(grads["s"], st.grad.numpy(), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("backend", ["numpy", "triton"])
def test_maxpool2d_nan_and_infinities_propagate(backend):
    x = R(3).standard_normal((1, 2, 6, 6)).astype(np.float32)
    x[0, 0, 1, 2] = np.nan
    x[0, 1, 3:, 3:] = -np.inf
    x[0, 1, 0, 0] = np.inf
    model = dln.compile("""model m() {
    input x: f32[1, 2, 6, 6]
    output y = maxpool2d(x, 3, stride = 2, padding = 1)
}""", backend=backend)
    y = model.run(["y"], x=x)["y"]
    np.testing.assert_array_equal(y, F.max_pool2d(torch.tensor(x), 3, 2, 1).numpy())   # NaN where torch has NaN


@pytest.mark.parametrize("backend", ["numpy", "triton"])
@pytest.mark.parametrize("dtype", ["i64", "i32"])
def test_maxpool2d_integers(dtype, backend):
    """Integers pad with their type's smallest value (no -infinity to pad with)."""
    x = R(4).integers(-50, 50, (2, 3, 7, 5))
    model = dln.compile(f"""model m() {{
    input x: {dtype}[2, 3, 7, 5]
    output y = maxpool2d(x, 3, stride = 2, padding = 1, ceil_mode = true)
}}""", backend=backend)
    y = model.run(["y"], x=x.astype(np.int64 if dtype == "i64" else np.int32))["y"]
    ref = F.max_pool2d(torch.tensor(x, dtype=torch.int64 if dtype == "i64" else torch.int32), 3, 2, 1,
                       ceil_mode=True).numpy()
    assert y.dtype == ref.dtype
    np.testing.assert_array_equal(y, ref)


def test_maxpool2d_ties_on_triton():
    """The Triton backend (interpreted on a CPU) routes ties as torch does: its argmax keeps the
    first largest value."""
    x = np.floor(R(6).uniform(0, 3, (2, 2, 7, 6))).astype(np.float32)
    check("maxpool2d(x, 3, stride = (1, 2), padding = 1)", x, lambda t: F.max_pool2d(t, 3, (1, 2), 1),
          backend="triton", rtol=1e-6, atol=1e-6)
    check("maxpool2d(x, 2)", x, lambda t: F.max_pool2d(t, 2), backend="triton", rtol=1e-6, atol=1e-6)


AVG_CASES = [
    ("2", (2, 3, 8, 8), "2", dict(kernel_size=2)),
    ("2_odd_ceil", (2, 3, 7, 9), "2, ceil_mode = true", dict(kernel_size=2, ceil_mode=True)),
    ("3x2", (1, 2, 9, 7), "(3, 2)", dict(kernel_size=(3, 2))),
    ("3_s1_p1", (2, 2, 6, 7), "3, stride = 1, padding = 1", dict(kernel_size=3, stride=1, padding=1)),
    ("3_s2_p1_ceil", (2, 3, 10, 9), "3, stride = 2, padding = 1, ceil_mode = true",
     dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
    ("2_s2_p1_ceil_last_dropped", (1, 1, 5, 5), "2, stride = 2, padding = 1, ceil_mode = true",
     dict(kernel_size=2, stride=2, padding=1, ceil_mode=True)),
    ("4_s3_p2_ceil_overhang", (2, 2, 10, 11), "4, stride = 3, padding = 2, ceil_mode = true",
     dict(kernel_size=4, stride=3, padding=2, ceil_mode=True)),
    ("pairs", (2, 1, 12, 13), "(2, 5), stride = (3, 2), padding = (1, 2), ceil_mode = true",
     dict(kernel_size=(2, 5), stride=(3, 2), padding=(1, 2), ceil_mode=True)),
    ("2_s3_skip", (2, 2, 11, 10), "2, stride = 3", dict(kernel_size=2, stride=3)),
    ("whole_input", (2, 3, 5, 7), "(5, 7)", dict(kernel_size=(5, 7))),
    ("batch1", (1, 4, 6, 6), "2, padding = 1", dict(kernel_size=2, padding=1)),
    ("rank3", (3, 7, 6), "3, stride = 2, padding = 1, ceil_mode = true",
     dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
]


@pytest.mark.parametrize("divisor", [None, 3, -2])
@pytest.mark.parametrize("include_pad", [True, False])
@pytest.mark.parametrize("case", AVG_CASES, ids=[c[0] for c in AVG_CASES])
def test_avgpool2d(case, include_pad, divisor):
    _, shape, args, kw = case
    args += f", count_include_pad = {str(include_pad).lower()}"
    if divisor is not None:
        args += f", divisor_override = {divisor}"
    check(f"avgpool2d(x, {args})", _values("normal", shape),
          lambda t: F.avg_pool2d(t, **kw, count_include_pad=include_pad, divisor_override=divisor))


@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (2, 3, 4), (1, 2, 3, 4, 5)])
def test_global_avgpool(shape):
    check("global_avgpool(x)", _values("normal", shape), lambda t: F.adaptive_avg_pool1d(t.flatten(2), 1)[..., 0])


# ---- the decomposition stays small ---------------------------------------------------------------------------


def _pool_nodes(call: str, shape) -> tuple[int, int]:
    """The nodes computing `y = call` (and its gradient) in the forward and the training graphs."""
    model = dln.compile(f"""model m() {{
    param x: f32[{_shape(shape)}] = zeros
    y = {call}
    loss = sum(y)
    output y
}}""")
    def count(ir: str) -> int:
        return len(re.findall(r"^  %\d+: .*# y  ", ir, re.M))
    return count(model.ir), count(model.backward_ir)


def test_maxpool2d_tiled_is_a_reshape_and_an_argmax():
    forward, step = _pool_nodes("maxpool2d(x, 2)", (2, 3, 8, 8))
    assert forward <= 11 and step <= 11 + 6, (forward, step)


def test_overlapping_windows_are_plain_slices():
    """Taps slice the stride-split input with step 1, so their gradients are pads, not strided scatters."""
    model = dln.compile("""model m() {
    param x: f32[2, 3, 11, 10] = zeros
    y = maxpool2d(x, 3, stride = 2, padding = 1, dilation = (1, 2))
    output y
}""")
    steps = re.findall(r"steps=\(([^)]*)\)", model.ir)
    assert len(steps) == 9 and all(set(s.replace(" ", "").split(",")) == {"1"} for s in steps), steps


def test_avgpool2d_size_does_not_grow_with_the_input():
    """torch's divisor is a few constant runs (first window, inner windows, last window), whatever
    the number of windows; the graph is the same size for 8×8 and 64×64."""
    call = "avgpool2d(x, 3, stride = 1, padding = 1, ceil_mode = true, count_include_pad = false)"
    small, large = _pool_nodes(call, (1, 2, 8, 8)), _pool_nodes(call, (1, 2, 64, 64))
    assert small == large and small[0] < 50, (small, large)


# ---- argument checks ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("call,code,message", [
    ("maxpool2d(x, 5)", "E0209", "maxpool2d: the 5×5 window (dilation 1) is larger than the padded input 4×4 "
                                 "(H=4+0, W=4+0)"),
    ("maxpool2d(x, (2, 3), dilation = 2)", "E0209", "spanning 3×5"),
    ("avgpool2d(x, 7, padding = 1, stride = 2)", "E0209", "the 7×7 window is larger than the padded input 6×6"),
    ("maxpool2d(x, 3, padding = 2)", "E0208", "padding 2 is more than half of its kernel 3"),
    ("avgpool2d(x, (4, 1), padding = (2, 1))", "E0208", "padding (2, 1) is more than half of its kernel (4, 1)"),
    ("maxpool2d(x, 0)", "E0208", "maxpool2d's kernel must be positive, got 0"),
    ("maxpool2d(x, 2, stride = 0)", "E0208", "stride must be positive"),
    ("maxpool2d(x, 2, dilation = (1, 0))", "E0208", "dilation must be positive"),
    ("maxpool2d(x, 2, padding = -1)", "E0208", "padding must not be negative"),
    ("maxpool2d(x, (2, 2, 2))", "E0208", "an int or a pair of ints"),
    ("avgpool2d(x, 2, divisor_override = 0)", "E0208", "divisor_override must not be zero"),
    ("maxpool2d(reshape(x, (B, 48)), 2)", "E0202", "needs [B, C, H, W] or [C, H, W]"),
    ("avgpool2d(x > 0.0, 2)", "E0206", "avgpool2d needs a float tensor"),
    ("maxpool2d(x > 0.0, 2)", "E0206", "maxpool2d needs numbers"),
    ("maxpool2d(x, 2.5)", "E0307", "must be an int or a tuple of ints"),
])
def test_bad_arguments(call, code, message):
    with pytest.raises(dln.DlnError) as e:
        dln.compile(f"""model m() {{
    input x: f32[B, 3, 4, 4]
    output y = {call}
}}""")
    assert e.value.code == code, str(e.value)
    assert message in str(e.value), str(e.value)
