"""The ONNX converters of dln.runtime.onnx.ops_nn, ops_conv and ops_norm against onnx's reference
evaluator, one node each, on shapes that are not powers of two and attribute combinations the
conformance suite does not hold together (groups with dilations and asymmetric pads, ceil mode
with dilations, per-group scales, a zero row under LpNormalization).  Where the reference is wrong
(grouped ConvTranspose with more input than output channels, GlobalMaxPool over other than two
spatial axes, LpNormalization with p = 1 on negative values) or refuses the model (opset 18's
GroupNormalization), PyTorch is the oracle."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

torch = pytest.importorskip("torch")

from dln.runtime.onnx.backend import DlnRep, run  # noqa: E402
from dln.runtime.onnx.convert import UnsupportedOnnx  # noqa: E402

RNG = np.random.default_rng(7)


def _model(op: str, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray | None], opset: int,
           **attrs) -> onnx.ModelProto:
    """One node; each output typed as the array given (untyped where None: for the reference alone)."""
    def info(name: str, v: np.ndarray | None):
        if v is None:
            return helper.make_empty_tensor_value_info(name)
        return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
    node = helper.make_node(op, list(inputs), list(outputs), **attrs)
    graph = helper.make_graph([node], f"one_{op}", [info(k, v) for k, v in inputs.items()],
                              [info(k, v) for k, v in outputs.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _check(op: str, inputs: dict[str, np.ndarray], outputs: list[str] | None = None, opset: int = 21,
           rtol: float = 1e-5, atol: float = 1e-5, **attrs) -> list[np.ndarray]:
    """dln's outputs equal the reference evaluator's: shapes, element types and values."""
    outputs = outputs or ["y"]
    want = ReferenceEvaluator(_model(op, inputs, dict.fromkeys(outputs), opset, **attrs)).run(None, inputs)
    got = run(_model(op, inputs, dict(zip(outputs, want)), opset, **attrs), inputs)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype, (g.shape, g.dtype, w.shape, w.dtype)
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)
    return got


def _randn(*shape: int, dtype=np.float32) -> np.ndarray:
    return RNG.standard_normal(shape).astype(dtype)


# ---- dense --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("a, b", [((5,), (3, 5, 7)), ((2, 3, 6, 5), (5,)), ((2, 1, 6, 5), (3, 5, 7)), ((5,), (5,))])
def test_matmul_batched_and_vectors(a, b):
    _check("MatMul", {"a": _randn(*a), "b": _randn(*b)})


@pytest.mark.parametrize("c", [(7,), (5, 1), (), None])
def test_gemm_transposes_and_scales(c):
    inputs = {"a": _randn(3, 5), "b": _randn(7, 3)}
    if c is not None:
        inputs["c"] = _randn(*c)
    _check("Gemm", inputs, transA=1, transB=1, alpha=0.7, beta=-1.3)


# ---- convolutions -------------------------------------------------------------------------------------

def test_conv_groups_dilation_asymmetric_pads():
    _check("Conv", {"x": _randn(2, 6, 11, 9), "w": _randn(9, 2, 3, 2), "b": _randn(9)},
           group=3, dilations=[2, 1], strides=[2, 3], pads=[1, 0, 2, 1])


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER", "VALID"])
def test_conv_1d_and_3d_auto_pad(auto_pad):
    _check("Conv", {"x": _randn(3, 2, 13), "w": _randn(5, 2, 4)}, auto_pad=auto_pad, strides=[3])
    _check("Conv", {"x": _randn(1, 3, 7, 6, 5), "w": _randn(4, 3, 2, 3, 2), "b": _randn(4)}, auto_pad=auto_pad)


def test_conv_transpose_groups_dilation_output_padding():
    x, w, bias = _randn(2, 4, 5, 7), _randn(4, 3, 3, 2), _randn(6)
    attrs = dict(group=2, strides=[3, 2], dilations=[1, 2], pads=[1, 0, 0, 2], output_padding=[2, 1])
    inputs = {"x": x, "w": w, "b": bias}
    full = torch.nn.functional.conv_transpose2d(*(torch.from_numpy(v) for v in (x, w, bias)), stride=(3, 2),
                                                output_padding=(2, 1), groups=2, dilation=(1, 2)).numpy()
    want = full[:, :, 1:, 0:full.shape[3] - 2]   # the pads cut (1, 0) rows and (0, 2) columns
    (got,) = run(_model("ConvTranspose", inputs, {"y": want}, 21, **attrs), inputs)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("attrs", [{"output_shape": [17, 12]}, {"output_shape": [14, 11], "pads": [1, 0, 1, 1]},
                                   {"auto_pad": "SAME_UPPER"}, {"auto_pad": "SAME_LOWER"}])
def test_conv_transpose_output_shape_and_auto_pad(attrs):
    _check("ConvTranspose", {"x": _randn(1, 3, 5, 5), "w": _randn(3, 2, 3, 3)}, strides=[3, 2], **attrs)


# ---- poolings -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("storage_order", [0, 1])
def test_maxpool_ceil_dilations_pads_indices(storage_order):
    _check("MaxPool", {"x": _randn(2, 3, 10, 9)}, ["y", "i"], kernel_shape=[3, 2], strides=[2, 3],
           dilations=[2, 1], pads=[1, 0, 1, 1], ceil_mode=1, storage_order=storage_order)


def test_maxpool_3d_and_integers():
    _check("MaxPool", {"x": _randn(1, 2, 7, 6, 5)}, ["y", "i"], kernel_shape=[3, 2, 2], strides=[2, 2, 1])
    _check("MaxPool", {"x": RNG.integers(0, 255, (2, 3, 7, 5)).astype(np.uint8)}, kernel_shape=[2, 3],
           auto_pad="SAME_UPPER", opset=12)


@pytest.mark.parametrize("count_include_pad", [0, 1])
@pytest.mark.parametrize("ceil_mode", [0, 1])
def test_averagepool_counts(count_include_pad, ceil_mode):
    _check("AveragePool", {"x": _randn(2, 3, 11, 10)}, kernel_shape=[3, 4], strides=[3, 2], pads=[1, 2, 1, 1],
           count_include_pad=count_include_pad, ceil_mode=ceil_mode)


def test_averagepool_same_lower_and_lppool():
    _check("AveragePool", {"x": _randn(1, 2, 9, 7)}, kernel_shape=[3, 2], strides=[2, 2], auto_pad="SAME_LOWER")
    _check("LpPool", {"x": _randn(2, 3, 9, 7)}, kernel_shape=[3, 2], strides=[2, 1], pads=[1, 0, 1, 1], p=3,
           rtol=1e-4)
    _check("LpPool", {"x": _randn(2, 3, 11)}, kernel_shape=[4], strides=[3])


def test_global_pools():
    x = _randn(2, 3, 5, 7, 3)
    _check("GlobalAveragePool", {"x": x})
    _check("GlobalMaxPool", {"x": x[:, :, 0]})
    want = torch.amax(torch.from_numpy(x), dim=(2, 3, 4), keepdim=True).numpy()
    (got,) = run(_model("GlobalMaxPool", {"x": x}, {"y": want}, 21), {"x": x})
    np.testing.assert_array_equal(got, want)


# ---- normalizations -----------------------------------------------------------------------------------

def _channels(x: np.ndarray, **extra) -> dict[str, np.ndarray]:
    c = x.shape[1]
    return {"x": x, "scale": _randn(c), "bias": _randn(c), **extra}


def test_batchnorm_inference_and_training():
    x = _randn(3, 5, 6, 7)
    stats = {"mean": _randn(5), "var": RNG.uniform(0.5, 2.0, 5).astype(np.float32)}
    _check("BatchNormalization", _channels(x, **stats), epsilon=1e-3, opset=15)
    _check("BatchNormalization", _channels(x, **stats), ["y", "running_mean", "running_var"], training_mode=1,
           momentum=0.8, opset=15)


@pytest.mark.parametrize("axis", [1, -2])
def test_layernorm_statistics_outputs(axis):
    x = _randn(3, 5, 6, 7)
    normalized = x.shape[axis:]
    _check("LayerNormalization", {"x": x, "scale": _randn(*normalized), "bias": _randn(*normalized)},
           ["y", "mean", "inv_std"], axis=axis, epsilon=1e-3, opset=17)


def test_group_and_instance_norm():
    x = _randn(2, 6, 5, 3)
    _check("GroupNormalization", {"x": x, "scale": _randn(6), "bias": _randn(6)}, num_groups=3, epsilon=1e-3,
           rtol=1e-4)
    _check("InstanceNormalization", _channels(x), epsilon=1e-2)


def test_group_norm_opset_18_scales_each_group():
    x, scale, bias = _randn(2, 6, 5, 3), _randn(3), _randn(3)
    per_channel = (torch.from_numpy(np.repeat(v, 2)) for v in (scale, bias))
    want = torch.nn.functional.group_norm(torch.from_numpy(x), 3, *per_channel, eps=1e-3).numpy()
    inputs = {"x": x, "scale": scale, "bias": bias}
    model = _model("GroupNormalization", inputs, {"y": want}, 18, num_groups=3, epsilon=1e-3)
    (got,) = DlnRep(model).run(inputs)   # not through prepare: the checker refuses the deprecated op
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_rms_lp_and_mean_variance_norms():
    x = _randn(3, 5, 7)
    _check("RMSNormalization", {"x": x, "scale": _randn(5, 7)}, axis=1, epsilon=1e-3, opset=23)
    with_zero_row = _randn(4, 7)
    with_zero_row[2] = 0
    for p in (1, 2):
        want = torch.nn.functional.normalize(torch.from_numpy(with_zero_row), p=p, dim=1).numpy()
        (got,) = run(_model("LpNormalization", {"x": with_zero_row}, {"y": want}, 21, axis=1, p=p),
                     {"x": with_zero_row})
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    _check("MeanVarianceNormalization", {"x": _randn(3, 5, 7)}, axes=[0, 2], rtol=1e-4)


def test_lpnormalization_p_3_is_refused_by_name():
    with pytest.raises(UnsupportedOnnx, match="LpNormalization.*p = 3"):
        x = _randn(3, 5)
        run(_model("LpNormalization", {"x": x}, {"y": x}, 21, p=3), {"x": x})


# ---- dropout ------------------------------------------------------------------------------------------

def test_dropout_inference_is_identity_with_a_true_mask():
    x = _randn(3, 5, 7)
    y, mask = _check("Dropout", {"x": x, "r": np.array(0.4, np.float32)}, ["y", "mask"])
    assert mask.all() and (y == x).all()


@pytest.mark.parametrize("ratio_known", [True, False])
def test_dropout_training_draws_dln_stream(ratio_known):
    """Training mode: about `ratio` of the values dropped, the rest scaled by 1 / (1 - ratio); the mask
    is dln's Philox draw keyed by the seed: the same seed the same mask, another seed another."""
    x = _randn(9, 11, 13)
    ratio = np.array(0.3, np.float32)
    inputs = {"x": x, "r": ratio, "t": np.array(True)}

    def masks(seed: int):
        model = _model("Dropout", inputs, {"y": x, "mask": x > 0}, 21, seed=seed)
        if ratio_known:
            model.graph.initializer.append(onnx.numpy_helper.from_array(ratio, "r"))
        feeds = {"x": x, "t": inputs["t"]} if ratio_known else inputs
        return run(model, feeds)

    y, mask = masks(5)
    assert abs(1 - mask.mean() - 0.3) < 0.05, mask.mean()
    np.testing.assert_allclose(y, np.where(mask, x / (1 - 0.3), 0), rtol=1e-6)
    assert (masks(5)[1] == mask).all()
    assert (masks(6)[1] != mask).any()
