"""The shape, indexing, reduction, softmax, loss and Einsum converters (dln.runtime.onnx.ops_shape,
ops_reduce, ops_einsum), one node at a time against onnx's ReferenceEvaluator — on odd sizes and
on the corners the conformance suite leaves out: backward slices, modes of Pad with axes, uneven
splits, negative indices computed at run time, ties in ArgMax/ArgMin, empty reductions, ignored
classes.  Softmax before opset 13 is checked against onnxruntime: the ReferenceEvaluator applies
the opset-13 meaning to every opset."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

from dln.runtime.onnx.backend import DlnBackend  # noqa: E402
from dln.runtime.onnx.convert import UnsupportedOnnx  # noqa: E402

RNG = np.random.default_rng(12)
ELEM = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float64): TensorProto.DOUBLE,
        np.dtype(np.int64): TensorProto.INT64, np.dtype(np.int32): TensorProto.INT32,
        np.dtype(np.bool_): TensorProto.BOOL}


def fed(name: str, a: np.ndarray) -> tuple:
    """An input fed at run time."""
    return (name, np.asarray(a), False)


def init(name: str, a) -> tuple:
    """An input known before the run (an initializer)."""
    return (name, np.asarray(a), True)


def ints(*v: int) -> np.ndarray:
    return np.array(v, dtype=np.int64)


def model(op: str, inputs: list, attrs: dict, opset: int, outputs: list) -> onnx.ModelProto:
    node = helper.make_node(op, [n for n, _, _ in inputs], [n for n, _ in outputs], **attrs)
    graph = helper.make_graph(
        [node], op,
        [helper.make_tensor_value_info(n, ELEM[a.dtype], a.shape) for n, a, known in inputs if n and not known],
        [helper.make_tensor_value_info(n, t, None if s is None else s) for n, (t, s) in outputs],
        [numpy_helper.from_array(a, n) for n, a, known in inputs if n and known])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def run_both(op: str, inputs: list, attrs: dict | None = None, opset: int = 18, outputs: int = 1):
    """(dln's outputs, the reference's) of one node."""
    attrs = attrs or {}
    feeds = {n: a for n, a, known in inputs if n and not known}
    names = [f"y{i}" for i in range(outputs)]
    loose = model(op, inputs, attrs, opset, [(n, (TensorProto.UNDEFINED, None)) for n in names])
    want = ReferenceEvaluator(loose).run(None, feeds)
    typed = model(op, inputs, attrs, opset, [(n, (ELEM[w.dtype], w.shape)) for n, w in zip(names, want)])
    got = DlnBackend.run_model(typed, [feeds[n] for n, _, known in inputs if n and not known])
    return got, want


def check(op: str, inputs: list, attrs: dict | None = None, opset: int = 18, outputs: int = 1,
          rtol: float = 1e-5, atol: float = 1e-6) -> None:
    got, want = run_both(op, inputs, attrs, opset, outputs)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype, (g.shape, g.dtype, w.shape, w.dtype)
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)


def f32(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


X = f32(5, 7, 3)


# ---- ops_shape ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("starts, ends, axes, steps", [
    ((-1,), (-100,), (1,), (-1,)),                      # the whole axis backward
    ((6, 0), (0, 3), (1, 2), (-2, 2)),                  # backward by 2 and forward by 2 at once
    ((2**62,), (-(2**62),), (0,), (-3,)),               # clamped ends, a step of 3 backward
    ((1,), (2**63 - 1,), (-1,), (1,)),                  # INT_MAX end, a negative axis
    ((3,), (1,), (1,), (1,)),                           # empty
])
def test_slice(starts, ends, axes, steps):
    check("Slice", [fed("x", X), init("s", ints(*starts)), init("e", ints(*ends)), init("a", ints(*axes)),
                    init("t", ints(*steps))], opset=13)


def test_slice_attributes_before_opset_10():
    check("Slice", [fed("x", X)], {"starts": [1, -2], "ends": [4, 100], "axes": [0, 2]}, opset=9)


@pytest.mark.parametrize("mode", ["constant", "edge", "reflect", "wrap"])
def test_pad_modes_with_axes(mode):
    check("Pad", [fed("x", X), init("p", ints(2, 1, 1, 3)), ("", X, False), init("a", ints(-1, 0))],
          {"mode": mode}, opset=19)
    check("Pad", [fed("x", X), init("p", ints(1, 2, 0, 2, 1, 3)), init("v", np.float32(1.5))], {"mode": mode},
          opset=19)


def test_pad_negative_pads_crop():
    """The reference cannot pad with negative widths; numpy slicing then numpy.pad can."""
    got, = DlnBackend.run_model(model("Pad", [fed("x", X), init("p", ints(0, -1, 2, 1, 0, -2))], {"mode": "reflect"},
                                      19, [("y", (TensorProto.FLOAT, (6, 6, 3)))]), [X])
    np.testing.assert_array_equal(got, np.pad(X[:, 1:, :1], [(0, 1), (0, 0), (2, 0)], mode="reflect"))


def test_pad_value_attribute_and_integer_value():
    check("Pad", [fed("x", X)], {"pads": [1, 0, 2, 0, 3, 1], "value": 2.0}, opset=2)
    xi = RNG.integers(-5, 5, (4, 6)).astype(np.int64)
    check("Pad", [fed("x", xi), init("p", ints(1, 2, 3, 0)), init("v", np.int64(7))], opset=13)
    check("Pad", [fed("x", X), init("p", ints(1, 2, 0, 2, 1, 3)), fed("v", np.float32(-2.0))], opset=13)


@pytest.mark.parametrize("attrs, parts, opset, extra", [
    ({"axis": 1, "num_outputs": 3}, 3, 18, []),         # 7 = 3 + 3 + 1
    ({"axis": 1, "split": [2, 4, 1]}, 3, 11, []),
    ({"axis": 1}, 3, 13, [init("s", ints(0, 5, 2))]),
    ({"axis": -1}, 3, 13, []),
])
def test_split(attrs, parts, opset, extra):
    check("Split", [fed("x", X)] + extra, attrs, opset=opset, outputs=parts)


@pytest.mark.parametrize("known", [False, True])
def test_gather_negative_indices(known):
    index = np.array([[0, -1, 2], [-7, 3, 6]], np.int64)
    check("Gather", [fed("x", X), (init if known else fed)("i", index)], {"axis": 1})
    check("Gather", [fed("x", X), (init if known else fed)("i", np.array(-2, np.int32))], {"axis": 2})


def test_gather_elements_negative_indices():
    check("GatherElements", [fed("x", X), fed("i", RNG.integers(-3, 3, (5, 7, 3)).astype(np.int64))], {"axis": -1})


def test_movement():
    y = f32(1, 5, 1, 3)
    check("Squeeze", [fed("x", y)], opset=13)
    check("Squeeze", [fed("x", y)], {"axes": [0, -2]}, opset=11)
    check("Unsqueeze", [fed("x", X), init("a", ints(4, 1, -1))], opset=13)
    check("Unsqueeze", [fed("x", X)], {"axes": [-1, 0]}, opset=11)
    for axis in (0, 2, 3, -3):
        check("Flatten", [fed("x", X)], {"axis": axis}, opset=13)
    check("Expand", [fed("x", f32(3, 1)), init("s", ints(2, 1, 6))], opset=13)
    check("Tile", [fed("x", X), init("r", ints(2, 1, 3))], opset=13)
    check("Transpose", [fed("x", X)], {"perm": [1, 2, 0]})
    check("Concat", [fed("a", X), fed("b", f32(5, 2, 3)), fed("c", f32(5, 0, 3))], {"axis": -2})


def test_shape_values():
    check("Shape", [fed("x", X)], {"start": -2}, opset=15)
    check("Size", [fed("x", X)])
    check("ConstantOfShape", [init("s", ints(2, 3))], {"value": numpy_helper.from_array(np.array([5], np.int32))})
    check("Range", [init("a", np.float32(1.5)), init("b", np.float32(-3)), init("c", np.float32(-0.7))], opset=11)
    check("Range", [fed("a", np.int64(2)), fed("b", np.int64(11)), fed("c", np.int64(3))], opset=11)


@pytest.mark.parametrize("upper", [0, 1])
@pytest.mark.parametrize("k", [-2, 0, 3])
def test_trilu(upper, k):
    check("Trilu", [fed("x", f32(2, 4, 6)), init("k", np.int64(k))], {"upper": upper}, opset=14)


@pytest.mark.parametrize("exclusive", [0, 1])
@pytest.mark.parametrize("reverse", [0, 1])
def test_cumsum(exclusive, reverse):
    check("CumSum", [fed("x", f32(2, 5, 6)), init("a", np.int64(-2))], {"exclusive": exclusive, "reverse": reverse},
          opset=14)
    check("CumSum", [fed("x", RNG.integers(-9, 9, (3, 5)).astype(np.int64)), init("a", np.int32(1))],
          {"exclusive": exclusive, "reverse": reverse}, opset=14)


@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_one_hot_negative_indices(axis):
    check("OneHot", [fed("i", np.array([[1, -1, 4], [0, 2, -5]], np.int64)), init("d", np.int64(5)),
                     init("v", np.array([-1.0, 3.0], np.float32))], {"axis": axis}, opset=11)


def test_pad_mode_unsupported_names_the_node():
    m = model("Pad", [fed("x", X), init("p", ints(*[1] * 6))], {"mode": "mirror"}, 19,
              [("y", (TensorProto.FLOAT, (7, 9, 5)))])
    with pytest.raises(UnsupportedOnnx, match=r"node 'Pad_0' \(Pad\): Pad mode 'mirror'"):
        DlnBackend.run_model(m, [X])


# ---- ops_einsum --------------------------------------------------------------------------------------

@pytest.mark.parametrize("equation, shapes", [
    ("ij,jk", [(3, 5), (5, 7)]),                        # implicit output
    ("iij->ji", [(3, 3, 4)]),                           # a diagonal
    ("iii->i", [(3, 3, 3)]),
    ("...ij,...jk->...ik", [(2, 1, 3, 5), (6, 5, 7)]),  # broadcast ellipsis
    ("bn,anm,bm->ba", [(3, 5), (2, 5, 7), (3, 7)]),     # three operands, sums over n and m
    ("ij,kj->ikj", [(3, 5), (2, 5)]),                   # a shared label kept
    ("ijj,jk->ik", [(3, 4, 4), (4, 5)]),                # a diagonal then a contraction
    ("a,b,c->", [(2,), (3,), (5,)]),
    ("i...->...", [(3, 2, 5)]),
])
def test_einsum(equation, shapes):
    xs = [f32(*s) for s in shapes]
    check("Einsum", [fed(f"x{k}", x) for k, x in enumerate(xs)], {"equation": equation}, opset=12,
          rtol=1e-4, atol=1e-5)


# ---- ops_reduce ---------------------------------------------------------------------------------------

REDUCE = ["ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
          "ReduceProd", "ReduceSum", "ReduceSumSquare"]


@pytest.mark.filterwarnings("ignore:Mean of empty slice", "ignore:invalid value encountered")
@pytest.mark.parametrize("op", REDUCE)
def test_reductions(op):
    x = np.abs(X) + 0.1 if op == "ReduceLogSum" else X
    since = 13 if op == "ReduceSum" else 18
    for axes, keep, noop in [((1,), 0, 0), ((2, 0), 1, 0), ((), 1, 1), ((), 0, 0), (None, 1, 1)]:
        given = [] if axes is None else [init("a", ints(*axes) if axes else np.zeros(0, np.int64))]
        check(op, [fed("x", x)] + given, {"keepdims": keep, "noop_with_empty_axes": noop}, opset=since)
    check(op, [fed("x", x)], {"axes": [0, -1], "keepdims": 0}, opset=11)
    # A reduction over an empty axis is the op's identity.
    check(op, [fed("x", f32(5, 0, 3)), init("a", ints(1))], {"keepdims": 1}, opset=since)
    check(op, [fed("x", f32(5, 0, 3)), init("a", ints(0))], {"keepdims": 0}, opset=since)


@pytest.mark.parametrize("op", ["ReduceMax", "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare", "ReduceL1"])
def test_integer_reductions(op):
    since = 13 if op == "ReduceSum" else 18
    x = RNG.integers(-4, 5, (5, 7, 3))
    check(op, [fed("x", x.astype(np.int64)), init("a", ints(1))], {"keepdims": 0}, opset=since)
    check(op, [fed("x", x.astype(np.int32)), init("a", ints(0, 2))], {"keepdims": 1}, opset=since)
    check(op, [fed("x", np.zeros((3, 0), np.int64)), init("a", ints(1))], opset=since)


def test_product_of_an_odd_count():
    check("ReduceProd", [fed("x", f32(3, 11, 2)), init("a", ints(1))], opset=18)


@pytest.mark.parametrize("op", ["ArgMax", "ArgMin"])
@pytest.mark.parametrize("last", [0, 1])
def test_arg_extremes_with_ties(op, last):
    ties = RNG.integers(0, 3, (4, 6, 5))
    for axis in (0, 1, -1):
        for keep in (0, 1):
            attrs = {"axis": axis, "keepdims": keep, "select_last_index": last}
            check(op, [fed("x", ties.astype(np.float32))], attrs, opset=13)
            check(op, [fed("x", ties.astype(np.int32))], attrs, opset=13)


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax", "Hardmax"])
def test_softmax_family(op):
    x = RNG.integers(0, 3, (5, 7, 3)).astype(np.float32) if op == "Hardmax" else X
    for axis in (0, 1, -1):
        check(op, [fed("x", x)], {"axis": axis}, opset=13)
    check(op, [fed("x", x.astype(np.float64))], {}, opset=13)


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax", "Hardmax"])
@pytest.mark.parametrize("axis", [None, 0, 2, -2])
def test_softmax_family_before_opset_13_is_two_dimensional(op, axis):
    ort = pytest.importorskip("onnxruntime")
    x = RNG.integers(0, 3, (4, 2, 3, 5)).astype(np.float32) if op == "Hardmax" else f32(4, 2, 3, 5)
    m = model(op, [fed("x", x)], {} if axis is None else {"axis": axis}, 11, [("y", (TensorProto.FLOAT, x.shape))])
    want, = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    got, = DlnBackend.run_model(m, [x])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(5, 7), (3, 7, 5), (2, 7, 3, 2)])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("ignore", [None, -3, 2])
def test_losses(shape, reduction, ignore):
    x = f32(*shape)
    target = RNG.integers(0, 7, (shape[0],) + shape[2:]).astype(np.int64)
    target.flat[0] = -3 if ignore == -3 else 2      # an ignored target that is no class
    weight = (RNG.random(7) + 0.2).astype(np.float32)
    attrs = {"reduction": reduction} | ({} if ignore is None else {"ignore_index": ignore})
    for inputs in ([fed("x", x), fed("t", target)], [fed("x", x), fed("t", target), fed("w", weight)]):
        check("NegativeLogLikelihoodLoss", inputs, attrs, opset=13)
        check("SoftmaxCrossEntropyLoss", inputs, attrs, opset=13, outputs=2)


def test_ignored_rows_count_nothing_even_at_minus_infinity():
    """An ignored target is read as class 0; where that class's log-probability is -inf the row must
    still add 0 (not -inf * 0 = nan)."""
    x = f32(4, 5, 3)
    x[:, 0, :] = -np.inf
    target = RNG.integers(1, 5, (4, 3)).astype(np.int64)
    target[1, 2] = target[3, 0] = -1
    weight = (RNG.random(5) + 0.2).astype(np.float32)
    for reduction in ("none", "sum", "mean"):
        check("SoftmaxCrossEntropyLoss", [fed("x", x), fed("t", target), fed("w", weight)],
              {"reduction": reduction, "ignore_index": -1}, opset=13, outputs=2)
