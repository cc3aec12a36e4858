"""The elementwise ONNX converters (dln.runtime.onnx.ops_elementwise), one node at a time.

Values against onnx's ReferenceEvaluator; where the reference itself rounds (float32 constants,
float16 intermediates) or where ONNX's integer semantics are the point (truncating Div, fmod,
round half to even, Cast's wrap-around), against exact numpy / Python arithmetic; gradients of
the functions built from several primitives against torch.autograd.  Shapes are not powers of two.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

from dln.compiler.autodiff import grad
from dln.compiler.emit import GraphBuilder
from dln.compiler.ir import DType, TensorType
from dln.runtime.interpreter import evaluate
from dln.runtime.onnx.backend import run
from dln.runtime.onnx.convert import UnsupportedOnnx, convert

R = np.random.default_rng(12)
SHAPE = (3, 7, 5)


def model(op: str, inputs: list[np.ndarray], out_type: int | None = None, opset: int = 21, names=None,
          **attrs):
    names = names or [f"x{i}" for i in range(len(inputs))]
    fed = [n for n in names if n]
    values = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
              for n, a in zip(fed, inputs)]
    out_type = out_type or helper.np_dtype_to_tensor_dtype(inputs[0].dtype)
    try:
        shape = np.broadcast_shapes(*(a.shape for a in inputs))
    except ValueError:   # PRelu's per-channel slope at opset 6
        shape = inputs[0].shape
    graph = helper.make_graph([helper.make_node(op, names, ["y"], **attrs)], "g", values,
                              [helper.make_tensor_value_info("y", out_type, shape)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), dict(zip(fed, inputs))


def ours(op, inputs, out_type=None, opset=21, names=None, **attrs) -> np.ndarray:
    m, feeds = model(op, inputs, out_type, opset, names, **attrs)
    with np.errstate(all="ignore"):
        return run(m, feeds)[0]


def reference(op, inputs, out_type=None, opset=21, names=None, **attrs) -> np.ndarray:
    m, feeds = model(op, inputs, out_type, opset, names, **attrs)
    with np.errstate(all="ignore"):
        return ReferenceEvaluator(m).run(None, feeds)[0]


def normal(shape=SHAPE, scale=3.0, dtype=np.float32):
    return (R.standard_normal(shape) * scale).astype(dtype)


def ints(lo, hi, shape=SHAPE, dtype=np.int64):
    return R.integers(lo, hi, shape).astype(dtype)


F32, BOOL = TensorProto.FLOAT, TensorProto.BOOL
UNIT = R.uniform(-1, 1, SHAPE).astype(np.float32)

# (id, op, inputs, output type, opset, input names, attributes)
CASES = [
    ("clip_attrs_opset6", "Clip", [normal()], None, 6, None, {"min": -1.0, "max": 2.5}),
    ("clip_min_attr_only_opset6", "Clip", [normal()], None, 6, None, {"min": -0.5}),
    ("clip_max_input_only", "Clip", [normal(), np.array(1.5, np.float32)], None, 13, ["x0", "", "x2"], {}),
    ("clip_min_above_max", "Clip", [normal(), np.array(2.0, np.float32), np.array(-1.0, np.float32)],
     None, 13, None, {}),
    ("clip_int32", "Clip", [ints(-50, 50, dtype=np.int32), np.array(-7, np.int32), np.array(9, np.int32)],
     None, 13, None, {}),
    ("max_three_broadcast", "Max", [normal(), normal((7, 1)), normal((5,))], None, 13, None, {}),
    ("min_three_broadcast", "Min", [normal(), normal((7, 1)), normal((5,))], None, 13, None, {}),
    ("sum_three_broadcast", "Sum", [normal(), normal((7, 1)), normal((5,))], None, 13, None, {}),
    ("mean_three_broadcast", "Mean", [normal(), normal((7, 1)), normal((5,))], None, 13, None, {}),
    ("max_uint16", "Max", [ints(0, 60000, dtype=np.uint16), ints(0, 60000, dtype=np.uint16)], None, 13,
     None, {}),
    ("where_int_broadcast", "Where", [normal() > 0, ints(-9, 9), np.array([7], np.int64)], TensorProto.INT64, 16,
     None, {}),
    ("prelu_channel_slope", "PRelu", [normal(), normal((7, 1))], None, 16, None, {}),
    ("prelu_channel_slope_opset6", "PRelu", [normal(), normal((7,))], None, 6, None, {}),
    ("pow_int_base_float_exponent", "Pow", [ints(0, 6, dtype=np.int32), R.uniform(0, 3, SHAPE).astype(np.float32)],
     None, 15, None, {}),
    ("pow_float_base_int_exponent", "Pow", [np.abs(normal()), ints(-3, 4)], None, 15, None, {}),
    ("pow_int_int", "Pow", [ints(-5, 6), ints(0, 5)], None, 15, None, {}),
    ("gelu_tanh", "Gelu", [normal()], None, 20, None, {"approximate": "tanh"}),
    ("isinf_negative_only", "IsInf", [np.array([np.inf, -np.inf, 1.0, np.nan, -3.0], np.float32)], BOOL, 20,
     None, {"detect_positive": 0}),
    ("isinf_neither", "IsInf", [np.array([np.inf, -np.inf, 1.0, np.nan, -3.0], np.float32)], BOOL, 20,
     None, {"detect_positive": 0, "detect_negative": 0}),
    ("shrink", "Shrink", [normal()], None, 13, None, {"bias": 0.3, "lambd": 1.2}),
    ("shrink_int8", "Shrink", [ints(-9, 9, dtype=np.int8)], None, 13, None, {"bias": 2.0, "lambd": 1.5}),
    ("celu_alpha", "Celu", [normal()], None, 12, None, {"alpha": 2.5}),
    ("xor", "Xor", [normal() > 0, normal((5,)) > 0], BOOL, 7, None, {}),
    ("equal_bool", "Equal", [normal() > 0, normal((5,)) > 0], BOOL, 19, None, {}),
    ("less_or_equal_int8", "LessOrEqual", [ints(-9, 9, dtype=np.int8), ints(-9, 9, dtype=np.int8)], BOOL, 16,
     None, {}),
    ("relu_int32", "Relu", [ints(-9, 9, dtype=np.int32)], None, 14, None, {}),
    ("asin_unit", "Asin", [UNIT], None, 7, None, {}),
    ("acos_unit", "Acos", [UNIT], None, 7, None, {}),
    ("atanh_unit", "Atanh", [UNIT], None, 9, None, {}),
    ("castlike_to_int32_tensor", "CastLike", [normal() * 10, ints(0, 3, dtype=np.int32)], TensorProto.INT32,
     21, None, {}),
]


@pytest.mark.parametrize("op,inputs,out_type,opset,names,attrs", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_against_the_reference(op, inputs, out_type, opset, names, attrs):
    got = ours(op, inputs, out_type, opset, names, **attrs)
    want = reference(op, inputs, out_type, opset, names, **attrs)
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


# ---- functions built from several primitives: a few ulps of the float64 truth, NaN and inf included --

def _wide(dtype) -> np.ndarray:
    big = 1e30 if dtype != np.float16 else 6e4
    tiny = 1e-30 if dtype != np.float16 else 1e-4
    mags = np.geomspace(tiny, big, 301)
    edges = [0.0, -0.0, np.inf, -np.inf, np.nan]
    return np.concatenate([R.standard_normal(397) * 10, mags, -mags, edges]).astype(dtype)


_UNIT_EDGES = np.concatenate([R.uniform(-1, 1, 397), [1, -1, 0, 1e-7, -1e-7, 0.9999999, -0.9999999, 1.5, np.nan]])
_ACOSH_ARGS = np.concatenate([1 + np.geomspace(1e-7, 1e30, 397), [1.0, 0.5, np.inf, np.nan]])

TRUTHS = {
    "Tan": (np.tan, _UNIT_EDGES * 1.5), "Sinh": (np.sinh, None), "Cosh": (np.cosh, None),
    "Asinh": (np.arcsinh, None), "Acosh": (np.arccosh, _ACOSH_ARGS), "Atanh": (np.arctanh, _UNIT_EDGES),
    "Asin": (np.arcsin, _UNIT_EDGES), "Acos": (np.arccos, _UNIT_EDGES), "Atan": (np.arctan, None),
    "Softplus": (lambda x: np.logaddexp(x, 0.0), None),
    "Elu": (lambda x: np.where(x > 0, x, np.expm1(x)), None),
    "Mish": (lambda x: x * np.tanh(np.logaddexp(x, 0.0)), None),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16], ids=["f32", "f64", "f16"])
@pytest.mark.parametrize("op", sorted(TRUTHS))
def test_accurate_to_a_few_ulps(op, dtype):
    fn, args = TRUTHS[op]
    x = _wide(dtype) if args is None else args.astype(dtype)
    got = ours(op, [x], opset=22)
    with np.errstate(all="ignore"):
        truth = fn(x.astype(np.float64)).astype(dtype)
    assert got.dtype == truth.dtype
    np.testing.assert_array_equal(np.isnan(got), np.isnan(truth))
    finite = np.isfinite(truth)
    np.testing.assert_array_equal(got[~finite & ~np.isnan(truth)], truth[~finite & ~np.isnan(truth)])
    # ulps of the result; a subnormal intermediate (mish's tanh(softplus(-100)) in f32) may add some
    # multiples of the subnormal spacing
    error = np.abs(got[finite].astype(np.float64) - truth[finite]) - 64 * float(np.spacing(dtype(0)))
    ulps = np.maximum(error, 0) / np.spacing(np.abs(truth[finite])).astype(np.float64)
    assert ulps.max() <= 4, (op, x[finite][np.argmax(ulps)], ulps.max())


# ---- ONNX's integer and rounding semantics, exactly ---------------------------------------------------

def test_round_half_to_even_and_ceil():
    x = np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 3.5, 0.49999997, -0.49999997, 2.0000002, -7.0, 1e20,
                  np.inf, -np.inf, np.nan, 4.5000005, 8388607.5], np.float32)
    np.testing.assert_array_equal(ours("Round", [x]), np.round(x))
    np.testing.assert_array_equal(ours("Ceil", [x]), np.ceil(x))
    assert np.signbit(ours("Ceil", [np.array([-0.5], np.float32)]))[0]   # ceil(-0.5) is -0, as C


@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.int64, np.uint32])
def test_integer_div_truncates_toward_zero(dtype):
    info = np.iinfo(dtype)
    x = R.integers(max(info.min + 1, -10 ** 15), min(info.max, 10 ** 15), 997, dtype=np.int64).astype(dtype)
    y = R.integers(max(info.min + 1, -300), min(info.max, 300), 997, dtype=np.int64).astype(dtype)
    y[y == 0] = 7
    want = np.array([abs(int(a)) // abs(int(b)) * (1 if (a < 0) == (b < 0) else -1) for a, b in zip(x, y)])
    got = ours("Div", [x, y], opset=14)
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, want.astype(dtype))


def test_int64_div_is_exact_past_two_to_the_53():
    x = R.integers(-2 ** 63 + 1, 2 ** 63 - 1, 2001, dtype=np.int64)
    y = R.integers(1, 2 ** 62, 2001, dtype=np.int64) % (2 ** R.integers(1, 62, 2001)) + 1
    y = y * R.choice([-1, 1], 2001)
    want = np.array([abs(int(a)) // abs(int(b)) * (1 if (a < 0) == (b < 0) else -1) for a, b in zip(x, y)])
    np.testing.assert_array_equal(ours("Div", [x, y], opset=14), want)


@pytest.mark.parametrize("dtype", [np.int16, np.int64, np.float32, np.float64])
def test_mod_signs(dtype):
    if np.issubdtype(dtype, np.integer):
        x, y = ints(-50, 50, dtype=dtype), ints(1, 9, dtype=dtype) * ints(0, 2, dtype=dtype).astype(dtype) * 2 - 1
        y[y == 0] = 3
    else:
        x, y = normal(dtype=dtype) * 4, normal(dtype=dtype)
    np.testing.assert_array_equal(ours("Mod", [x, y], opset=13), np.mod(x, y))
    np.testing.assert_array_equal(ours("Mod", [x, y], opset=13, fmod=1), np.fmod(x, y))


@pytest.mark.parametrize("to", [TensorProto.INT8, TensorProto.UINT8, TensorProto.INT16, TensorProto.UINT16,
                                TensorProto.INT32, TensorProto.UINT32, TensorProto.INT64, TensorProto.FLOAT16,
                                TensorProto.DOUBLE, TensorProto.BOOL])
@pytest.mark.parametrize("source", ["float", "int64"])
def test_cast_wraps_as_numpy(source, to):
    x = normal(scale=200.0) if source == "float" else ints(-70000, 70000)
    want = x.astype(helper.tensor_dtype_to_np_dtype(to))
    got = ours("Cast", [x], to, opset=21, to=to)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("to", [TensorProto.STRING, TensorProto.FLOAT8E4M3FN, TensorProto.INT4])
def test_cast_to_a_type_dln_lacks_is_unsupported(to):
    with pytest.raises(UnsupportedOnnx, match=r"node 'Cast_0' \(Cast\): element type"):
        ours("Cast", [normal()], to, opset=21, to=to)


def test_legacy_axis_broadcast_is_unsupported():
    with pytest.raises(UnsupportedOnnx, match="legacy broadcasting"):
        ours("Div", [normal(), normal((5,))], opset=6, broadcast=1, axis=2)


# ---- gradients of the composed functions, against torch ----------------------------------------------

GRADIENTS = {
    "Asin": (torch.asin, R.uniform(-0.95, 0.95, (4, 7))), "Acos": (torch.acos, R.uniform(-0.95, 0.95, (4, 7))),
    "Atanh": (torch.atanh, R.uniform(-0.95, 0.95, (4, 7))), "Sinh": (torch.sinh, R.standard_normal((4, 7)) * 2),
    "Cosh": (torch.cosh, R.standard_normal((4, 7)) * 2), "Asinh": (torch.asinh, R.standard_normal((4, 7)) * 5),
    "Acosh": (torch.acosh, 1.05 + np.abs(R.standard_normal((4, 7))) * 5),
    "Tan": (torch.tan, R.uniform(-1.4, 1.4, (4, 7))),
    "Elu": (torch.nn.functional.elu, R.standard_normal((4, 7))),
    "Softplus": (torch.nn.functional.softplus, R.standard_normal((4, 7)) * 5),
    "Mish": (torch.nn.functional.mish, R.standard_normal((4, 7)) * 3),
    "Gelu": (torch.nn.functional.gelu, R.standard_normal((4, 7)) * 3),
    "HardSwish": (torch.nn.functional.hardswish, R.standard_normal((4, 7)) * 4),
    "Round": (torch.round, R.standard_normal((4, 7)) * 4),
    "Ceil": (torch.ceil, R.standard_normal((4, 7)) * 4),
}


@pytest.mark.parametrize("op", sorted(GRADIENTS))
def test_gradient_matches_torch(op):
    fn, x = GRADIENTS[op]
    m, _ = model(op, [x], opset=22)
    converted = convert(m, {"x0": (x.shape, x.dtype)})
    b = GraphBuilder("loss", base=converted.graph)
    w = b.input("w", TensorType(DType.F64, x.shape))
    y = b.tensor(converted.graph.output("y").id)
    loss = b.sum(b.mul(y, w))
    graph = b.finish([("y", y), ("loss", loss)])
    full, grads, _ = grad(graph, loss.id, [converted.graph.inputs[0].id])
    (dx,) = grads.values()
    weights = R.standard_normal(x.shape)
    t = torch.tensor(x, requires_grad=True)
    (fn(t) * torch.tensor(weights)).sum().backward()
    if dx is None:   # no gradient reaches x (floor's is zero): torch's is zero everywhere
        assert not t.grad.numpy().any()
        return
    got = evaluate(full.with_outputs([("dx", dx)]), {"x0": x, "w": weights}, {})["dx"]
    np.testing.assert_allclose(got, t.grad.numpy(), rtol=1e-9, atol=1e-12)
