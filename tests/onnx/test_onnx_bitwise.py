"""The bitwise converters (dln.runtime.onnx.ops_bitwise) against NumPy's bitwise operators on int64 and
int32 values over their whole range (signs, the top bit, uint64 words past 2**63 held as int64), and
the ONNX backend conformance cases of BitwiseAnd/Or/Xor/Not and BitShift; shapes that broadcast."""

from __future__ import annotations

import re

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

from onnx import TensorProto, helper  # noqa: E402

from dln.runtime.onnx import conformance  # noqa: E402
from dln.runtime.onnx.backend import run  # noqa: E402

ELEM = {np.int64: TensorProto.INT64, np.int32: TensorProto.INT32}


def one_node(op: str, dtype, shapes: list[tuple[int, ...]], **attrs) -> onnx.ModelProto:
    names = [f"in{k}" for k in range(len(shapes))]
    graph = helper.make_graph([helper.make_node(op, names, ["out"], **attrs)], op,
                              [helper.make_tensor_value_info(n, ELEM[dtype], list(s)) for n, s in zip(names, shapes)],
                              [helper.make_tensor_value_info("out", ELEM[dtype], list(np.broadcast_shapes(*shapes)))])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def full_range(rng: np.random.Generator, dtype, shape: tuple[int, ...]) -> np.ndarray:
    info = np.iinfo(dtype)
    x = rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
    x.reshape(-1)[:4] = [info.min, info.max, -1, 0][: x.size]
    return x


@pytest.mark.parametrize("dtype", [np.int64, np.int32])
@pytest.mark.parametrize("op, reference", [("BitwiseAnd", np.bitwise_and), ("BitwiseOr", np.bitwise_or),
                                           ("BitwiseXor", np.bitwise_xor)])
def test_binary_bitwise_ops(op, reference, dtype):
    rng = np.random.default_rng(len(op))
    a, b = full_range(rng, dtype, (5, 7)), full_range(rng, dtype, (7,))
    (got,) = run(one_node(op, dtype, [a.shape, b.shape]), [a, b])
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, reference(a, b))


def test_bitwise_not():
    x = full_range(np.random.default_rng(3), np.int64, (3, 5))
    np.testing.assert_array_equal(run(one_node("BitwiseNot", np.int64, [x.shape]), [x])[0], ~x)


@pytest.mark.parametrize("dtype", [np.int64, np.int32])
@pytest.mark.parametrize("direction", ["LEFT", "RIGHT"])
def test_bit_shift(direction, dtype):
    """Every shift amount inside the width on full-range values: left wraps, right is arithmetic."""
    width = np.iinfo(dtype).bits
    x = full_range(np.random.default_rng(width), dtype, (3, width))
    s = np.arange(width, dtype=dtype)
    (got,) = run(one_node("BitShift", dtype, [x.shape, s.shape], direction=direction), [x, s])
    want = np.left_shift(x, s) if direction == "LEFT" else np.right_shift(x, s)
    np.testing.assert_array_equal(got, want)


def test_philox_words():
    """What dln's generator does with uint64 words (export_random): 32-bit halves of products past
    2**63, masked after the shift, as numpy's uint64 arithmetic gives them."""
    rng = np.random.default_rng(5)
    words = rng.integers(0, 2 ** 32, 11, dtype=np.uint64) * np.uint64(0xD2511F53)
    mask, shift = helper.make_tensor("mask", TensorProto.UINT64, [], [0xFFFFFFFF]), \
        helper.make_tensor("shift", TensorProto.UINT64, [], [32])
    nodes = [helper.make_node("BitShift", ["p", "shift"], ["hi"], direction="RIGHT"),
             helper.make_node("BitwiseAnd", ["hi", "mask"], ["high"]),
             helper.make_node("BitwiseAnd", ["p", "mask"], ["low"])]
    graph = helper.make_graph(nodes, "words", [helper.make_tensor_value_info("p", TensorProto.UINT64, [11])],
                              [helper.make_tensor_value_info(n, TensorProto.UINT64, [11]) for n in ("high", "low")],
                              [mask, shift])
    high, low = run(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), [words])
    np.testing.assert_array_equal(high, words >> np.uint64(32))
    np.testing.assert_array_equal(low, words & np.uint64(0xFFFFFFFF))


def test_conformance_cases():
    cases = [t for t in conformance._load("node") if re.match(r"test_bit(wise|shift)_", t.name)]
    assert len(cases) >= 40
    for t in cases:
        model = t.model if t.model is not None else onnx.load(f"{t.model_dir}/model.onnx")
        why = conformance.check(conformance.Case(t.name, "node", "bitwise", model, conformance._data(t), t.rtol,
                                                 t.atol))
        assert why is None, f"{t.name}: {why}"
