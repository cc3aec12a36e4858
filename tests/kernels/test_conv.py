"""Convolutions on the Triton backend (implicit GEMMs, kernels/convolution.py) against the NumPy backend:
the forward pass and every gradient — conv's input gradient is a conv_transpose kernel, its weight
gradient a conv_weight kernel — on small irregular shapes, under Triton's interpreter on a CPU."""

import numpy as np
import pytest

import dln
from dln.compiler.fusion.domain import KINDS
from dln.compiler.fusion.planner import computed_nodes, plan_graph
from dln.compiler.ir import GroupOp, Op
from dln.kernels.convolution import GEMMS
from dln.compiler.fusion.planner import SPLIT_KINDS
from dln.kernels.kinds import CONTRACTIONS, TEMPLATES


def _model(x_shape: tuple[int, ...], body: str, dtype: str = "f32") -> str:
    """`shift` (one value per element of a sample) makes the input's gradient a parameter's."""
    return "\n".join([
        "model m() {",
        f"    input x: {dtype}[{', '.join(map(str, x_shape))}]",
        f"    param shift: {dtype}[{', '.join(map(str, x_shape[1:]))}] = zeros",
        f"    input cot: {dtype}[{{cot}}]",
        f"    y = (x + shift) -> {body}",
        "    loss = sum(y * cot)",
        "    output y",
        "}",
    ])


def _compare(x_shape: tuple[int, ...], body: str, dtype: str = "f32", tol: float = 1e-5, seed: int = 0) -> None:
    """y, the loss and every parameter's gradient (and x's) agree between the backends."""
    rng = np.random.default_rng(seed)
    probe = dln.compile(_model(x_shape, body, dtype).replace("{cot}", "1"), backend="numpy")
    y_shape = probe.spec.graph.output("y").shape
    text = _model(x_shape, body, dtype).replace("{cot}", ", ".join(map(str, y_shape)))
    reference = dln.compile(text, backend="numpy", seed=seed)
    triton = dln.compile(text, backend="triton", seed=seed)
    np_type = np.float64 if dtype == "f64" else np.float32
    state = {k: rng.standard_normal(v.shape).astype(v.dtype) for k, v in reference.state_dict().items()}
    for model in (reference, triton):
        model.load_state_dict(state)
    feeds = {"x": rng.standard_normal(x_shape).astype(np_type), "cot": rng.standard_normal(y_shape).astype(np_type)}
    want_y = reference.run(["y"], **{"x": feeds["x"]})["y"]
    got_y = triton.run(["y"], **{"x": feeds["x"]})["y"]
    want_loss, want_grads = reference.value_and_grad("loss", **feeds)
    got_loss, got_grads = triton.value_and_grad("loss", **feeds)
    _close(got_y, want_y, tol, "y")
    _close(got_loss, want_loss, tol, "loss")
    assert set(got_grads) == set(want_grads) and want_grads
    for k in want_grads:
        _close(got_grads[k], want_grads[k], tol, f"gradient of {k}")


def _close(got, want, tol: float, what: str) -> None:
    want = np.asarray(want, np.float64)
    scale = max(1.0, float(np.max(np.abs(want), initial=0.0)))
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=tol, atol=tol * scale, err_msg=what)


CASES = {
    # odd sizes, a non-square kernel, stride, padding and dilation differing per axis, a fused bias + relu
    "conv2d_irregular_relu": ((2, 3, 7, 6), "conv2d(5, kernel = (3, 2), stride = (2, 1), padding = (1, 0), "
                                            "dilation = (1, 2)) -> relu"),
    # a stride larger than the kernel (input rows no window reads), batch 1
    "conv2d_stride_past_kernel": ((1, 2, 8, 7), "conv2d(4, kernel = 2, stride = 3, padding = 1)"),
    # depthwise: one channel per group, the grid's second axis
    "conv2d_depthwise": ((2, 6, 5, 5), "conv2d(6, kernel = 3, padding = 1, groups = 6, bias = false)"),
    # asymmetric zero padding ("same" with an even kernel puts the extra row after)
    "conv2d_same_even_kernel": ((1, 2, 5, 6), 'conv2d(3, kernel = (2, 4), padding = "same") -> tanh'),
    # 1-d, two groups of two channels, dilation and stride together
    "conv1d_groups": ((3, 4, 11), "conv1d(4, kernel = 3, stride = 2, padding = 2, dilation = 2, groups = 2)"),
    # the transposed layer: stride, output_padding, a non-square kernel, bias and relu fused
    "conv_transpose2d_output_padding": ((2, 4, 3, 4), "conv_transpose2d(3, kernel = (3, 2), stride = (2, 3), "
                                                      "padding = (1, 0), output_padding = (1, 2)) -> relu"),
    # what else the matmul epilogue fuses: a dropout mask drawn in the kernel, gelu
    "conv2d_dropout_gelu": ((2, 3, 6, 5), "conv2d(4, kernel = 3, padding = 1) -> dropout(0.3) -> gelu"),
    # transposed, grouped, dilated
    "conv_transpose2d_groups": ((1, 4, 4, 3), "conv_transpose2d(2, kernel = 2, stride = 2, dilation = 2, "
                                              "groups = 2)"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_convolution_matches_numpy(name):
    x_shape, body = CASES[name]
    _compare(x_shape, body)


def test_convolution_in_float64():
    """tl.dot in fp64 (the interpreter runs it; the accumulator is fp64)."""
    _compare((2, 2, 5, 4), "conv2d(3, kernel = (2, 3), stride = (1, 2), padding = 1) -> relu", dtype="f64",
             tol=1e-10)


def test_convolution_in_bfloat16():
    """bf16 operands: fp32 products in the interpreter, the result rounded back once."""
    _compare((1, 2, 5, 5), "conv2d(3, kernel = 3, padding = 1)", dtype="bf16", tol=3e-2)


def test_bias_and_activation_join_the_convolution_kernel():
    """conv -> bias -> relu is one kernel over the convolution's domain, and so are the gradients'
    epilogues (the relu mask multiplies conv_transpose's tile before it is stored)."""
    text = _model((2, 3, 6, 6), "conv2d(4, kernel = 3) -> relu -> conv2d(2, kernel = 3) -> relu")
    model = dln.compile(text.replace("{cot}", "2, 2, 2, 2"), backend="numpy")
    for graph in (model.spec.graph, model.train_spec.graph):
        plan = plan_graph(graph)
        for group in plan.groups:
            ops = [n.op for n in computed_nodes(graph, group, plan.realized)]
            contractions = [op for op in ops if op in GroupOp.Convolution]
            assert len(contractions) <= 1, ops
            if contractions:
                assert group.kind == "convolution"
                assert not any(graph.node(m).op in GroupOp.Convolution for m in group.members[1:])
        forward = [g for g in plan.groups if graph.node(g.members[0]).op is Op.CONV]
        if graph is model.spec.graph:
            assert len(forward) == 2
            for group in forward:
                ops = {n.op for n in computed_nodes(graph, group, plan.realized)}
                assert {Op.ADD, Op.RELU} <= ops, ops


def test_every_convolution_op_is_an_implicit_gemm_and_every_kind_has_a_template():
    assert set(GEMMS) == GroupOp.Convolution
    assert set(TEMPLATES) | set(CONTRACTIONS) == KINDS | {"multi_tensor"} | set(SPLIT_KINDS.values())
    assert not set(TEMPLATES) & set(CONTRACTIONS)


def test_training_step_with_the_gpu_tiles(rng, close):
    """The small CNN's whole training step (tests/programs/cnn_small.dln, with SGD) run with the GPU's
    block sizes: several row tiles per convolution, K loops of many iterations, masked tails."""
    from pathlib import Path

    from dln.compiler import pipeline
    from dln.compiler.recipe import Objective, OptimizerSpec
    from dln.compiler.symbolic import evaluate

    from .conftest import graph_inputs, run_both

    path = Path(__file__).resolve().parents[1] / "programs" / "cnn_small.dln"
    model = dln.compile(str(path), backend="numpy")
    step = pipeline.train_step(model.train_spec, Objective("loss", None, OptimizerSpec("sgd", {"lr": 0.1}), None))
    inputs = graph_inputs(step.graph, {"B": 3}, rng)
    expected, got, generated = run_both(step.graph, inputs, {"B": 3})
    convolutions = {generated.plan.graph.node(g.members[0]).op for g in generated.plan.groups
                    if g.kind == "convolution"}
    assert convolutions == GroupOp.Convolution
    looping = [k.name for k in generated.kernels if k.kind == "convolution"
               and evaluate(k.sizes["K"], {"B": 3}) > 2 * generated.configs[k.name]["BLOCK_K"]]
    assert looping, "no convolution kernel loops over K"
    for name in expected:
        close(got[name], expected[name], rtol=1e-4, atol=1e-5)
