"""dln as an ONNX backend, held to onnx's own conformance suite (dln.runtime.onnx.conformance): the
training-relevant node cases, all the pytorch-converted and pytorch-operator cases on the NumPy
backend, and a sample of node cases on the Triton backend under Triton's interpreter.

The node cases dln fails are listed, with the reason, in `EXPECTED_FAILURES`; the list is held to
the truth both ways: any other case must pass, and each listed one must still fail (a fix removes
it from the list)."""

from __future__ import annotations

import pytest

from dln.runtime.onnx.conformance import EXPECTED_FAILURES, cases, check

pytest.importorskip("onnx")

# The bar: at least 925 of the node subset's cases.
MIN_NODE_PASSED = 925

# A sample across the op families for the Triton backend (the interpreter is slow).
TRITON_SAMPLE = [
    "test_add_bcast", "test_relu", "test_matmul_3d", "test_gemm_all_attributes", "test_conv_with_strides_padding",
    "test_maxpool_2d_pads", "test_averagepool_2d_pads", "test_softmax_axis_1", "test_logsoftmax_axis_0",
    "test_reduce_sum_keepdims_example", "test_layer_normalization_3d_axis1_epsilon", "test_transpose_all_permutations_2",
    "test_gather_1", "test_concat_2d_axis_1", "test_batchnorm_epsilon", "test_where_example", "test_lstm_defaults",
    "test_gelu_tanh_2", "test_slice_neg_steps", "test_sce_mean_weight_ii",
]


@pytest.fixture(scope="module")
def node_cases():
    return list(cases("node"))


def test_node_subset(node_cases):
    failed = {c.name: why for c in node_cases if (why := check(c)) is not None}
    unexpected = {k: v for k, v in failed.items() if k not in EXPECTED_FAILURES}
    fixed = sorted(set(EXPECTED_FAILURES) - set(failed))
    passed = len(node_cases) - len(failed)
    assert not unexpected, f"{len(unexpected)} cases fail that should pass:\n" + \
        "\n".join(f"{k}: {v}" for k, v in sorted(unexpected.items()))
    assert not fixed, f"listed as failing but pass (remove them from EXPECTED_FAILURES): {fixed}"
    assert passed >= MIN_NODE_PASSED, f"{passed} of {len(node_cases)} node cases pass"


@pytest.mark.parametrize("kind", ["pytorch-converted", "pytorch-operator"])
def test_pytorch_collections(kind):
    all_cases = list(cases(kind))
    failed = {c.name: why for c in all_cases if (why := check(c)) is not None}
    assert not failed, "\n".join(f"{k}: {v}" for k, v in sorted(failed.items()))
    assert len(all_cases) == {"pytorch-converted": 82, "pytorch-operator": 35}[kind]


def test_triton_sample(node_cases):
    by_name = {c.name: c for c in node_cases}
    missing = [n for n in TRITON_SAMPLE if n not in by_name]
    assert not missing, f"not cases of the subset: {missing}"
    failed = {n: why for n in TRITON_SAMPLE if (why := check(by_name[n], "CUDA")) is not None}
    assert not failed, "\n".join(f"{k}: {v}" for k, v in sorted(failed.items()))
