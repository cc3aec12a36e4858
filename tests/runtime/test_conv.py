"""Convolutions on the NumPy backend against torch in float64: every option on irregular shapes,
the gradients of input, weight and bias, the second-order rules, torch state dicts, initialization,
buffers prepared once per plan, symbolic lengths, located errors, and batch-norm folding."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import dln
from dln.compiler import autodiff, pipeline
from dln.compiler.emit import GraphBuilder
from dln.compiler.ir import DType, Op, TensorType
from dln.dsl.diagnostics import DlnError
from dln.runtime.interpreter import Executable, evaluate

from tests.differential.cases import Case
from tests.differential.harness import check_against_torch

R = np.random.default_rng(7)

# (layer call, input shape, torch function of (x, weight, bias))
CONFIGS = [
    ("conv2d(4, kernel = (3, 2), stride = (2, 1), padding = (1, 2), dilation = (1, 2))", (2, 3, 11, 9),
     lambda x, w, b: F.conv2d(x, w, b, (2, 1), (1, 2), (1, 2))),
    ("conv2d(6, kernel = 3, groups = 3, bias = false)", (1, 3, 7, 5),
     lambda x, w, b: F.conv2d(x, w, None, 1, 0, 1, 3)),
    ("conv2d(5, kernel = 1, stride = 3)", (3, 2, 7, 8),              # stride > kernel
     lambda x, w, b: F.conv2d(x, w, b, 3)),
    ("conv2d(6, kernel = (2, 5), stride = (3, 2), groups = 6)", (1, 6, 9, 13),   # depthwise
     lambda x, w, b: F.conv2d(x, w, b, (3, 2), 0, 1, 6)),
    ('conv2d(5, kernel = (4, 3), padding = "same", dilation = (1, 2))', (2, 2, 6, 7),
     lambda x, w, b: F.conv2d(x, w, b, 1, "same", (1, 2))),
    ('conv2d(3, kernel = 2, padding = "valid")', (2, 4, 5, 3),
     lambda x, w, b: F.conv2d(x, w, b, 1, "valid")),
    ("conv2d(4, kernel = 3, padding = 1)", (2, 5, 6),                # unbatched [C, H, W]
     lambda x, w, b: F.conv2d(x, w, b, 1, 1)),
    ("conv1d(4, kernel = 3, stride = 4, padding = 2)", (3, 5, 13),
     lambda x, w, b: F.conv1d(x, w, b, 4, 2)),
    ("conv1d(6, kernel = 2, dilation = 3, groups = 2)", (1, 4, 11),
     lambda x, w, b: F.conv1d(x, w, b, 1, 0, 3, 2)),
    ("conv_transpose2d(4, kernel = (3, 2), stride = (2, 3), padding = (1, 0), output_padding = (1, 2), "
     "groups = 2, dilation = (2, 1))", (2, 6, 5, 4),
     lambda x, w, b: F.conv_transpose2d(x, w, b, (2, 3), (1, 0), (1, 2), 2, (2, 1))),
    # stride 1: col2im over widened rows (numpy_conv._prepare_conv_transpose_rows)
    ("conv_transpose2d(4, kernel = (3, 4), padding = (1, 2), output_padding = 0, groups = 2, dilation = (2, 1))",
     (2, 6, 5, 7), lambda x, w, b: F.conv_transpose2d(x, w, b, 1, (1, 2), 0, 2, (2, 1))),
    ("conv_transpose2d(3, kernel = 4, stride = 2, padding = 1)", (1, 5, 3, 3),
     lambda x, w, b: F.conv_transpose2d(x, w, b, 2, 1)),
    ("conv_transpose2d(2, kernel = (1, 3), stride = 3)", (2, 3, 2, 5),   # stride > kernel: gaps
     lambda x, w, b: F.conv_transpose2d(x, w, b, 3)),
    ("conv_transpose2d(4, kernel = 3, dilation = 2, output_padding = 1)", (2, 3, 4, 5),   # past the stride
     lambda x, w, b: F.conv_transpose2d(x, w, b, 1, 0, 1, 1, 2)),
    ("conv_transpose2d(3, kernel = (2, 3), stride = (2, 1), padding = 1, output_padding = (2, 1), "
     "dilation = (3, 2))", (1, 2, 3, 4),
     lambda x, w, b: F.conv_transpose2d(x, w, b, (2, 1), 1, (2, 1), 1, (3, 2))),
]


@pytest.mark.parametrize("call,shape,fn", CONFIGS, ids=[c[0].split("(")[0] + str(i) for i, c in enumerate(CONFIGS)])
def test_layer_matches_torch_in_float64(call, shape, fn):
    case = Case(f"y = x -> {call}", lambda t: fn(t["x"], t["y.weight"], t.get("y.bias")),
                {"x": R.standard_normal(shape)})
    check_against_torch(case, 3)


@pytest.mark.parametrize("stride,padding,dilation,groups", [((1, 1), (0, 0), (1, 1), 1), ((2, 3), (1, 2), (2, 1), 2)])
def test_second_order_rules_match_torch(stride, padding, dilation, groups):
    """conv_weight and conv_transpose are differentiated too (a gradient of a gradient): against torch's
    double backward of F.conv2d."""
    x = torch.tensor(R.standard_normal((2, 4, 9, 8)), requires_grad=True)
    w = torch.tensor(R.standard_normal((6, 4 // groups, 3, 2)), requires_grad=True)
    y = F.conv2d(x, w, None, stride, padding, dilation, groups)
    dy = torch.tensor(R.standard_normal(y.shape), requires_grad=True)
    gx, gw = torch.autograd.grad(y, (x, w), dy, create_graph=True)
    cx, cw = torch.tensor(R.standard_normal(gx.shape)), torch.tensor(R.standard_normal(gw.shape))
    want = torch.autograd.grad((gx * cx).sum() + (gw * cw).sum(), (x, w, dy))

    b = GraphBuilder("second")
    t = {k: b.input(k, TensorType(DType.F64, tuple(v.shape))) for k, v in
         {"x": x, "w": w, "dy": dy, "cx": cx, "cw": cw}.items()}
    geometry = {"stride": stride, "padding": tuple((p, p) for p in padding), "dilation": dilation, "groups": groups}
    conv = b.emit(Op.CONV, (t["x"], t["w"]), geometry)
    pad = autodiff._output_padding(b.node(conv), tuple(x.shape[2:]), conv.shape[2:], tuple(w.shape[2:]))
    gx_ = b.emit(Op.CONV_TRANSPOSE, (t["dy"], t["w"]), {**geometry, "output_padding": pad})
    gw_ = b.emit(Op.CONV_WEIGHT, (t["x"], t["dy"]), {**geometry, "kernel": tuple(w.shape[2:])})
    loss = b.add(b.sum(b.mul(gx_, t["cx"])), b.sum(b.mul(gw_, t["cw"])))
    graph = b.finish([("loss", loss)])
    full, grads, _ = autodiff.grad(graph, loss.id, [t[k].id for k in ("x", "w", "dy")])
    full = full.with_outputs([(k, grads[t[k].id]) for k in ("x", "w", "dy")])
    got = evaluate(full, {k: v.detach().numpy() for k, v in {"x": x, "w": w, "dy": dy, "cx": cx, "cw": cw}.items()},
                   {})
    for k, ref in zip(("x", "w", "dy"), want):
        np.testing.assert_allclose(got[k], ref.numpy(), rtol=1e-10, atol=1e-10, err_msg=k)


def test_torch_state_dicts_load_by_name():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 5, (3, 2), stride=(2, 1), padding=1, groups=1)
    up = torch.nn.ConvTranspose2d(5, 2, 4, stride=2, padding=1, output_padding=1)
    model = dln.compile("""
        model m() {
            input x: f32[B, 3, 10, 7]
            h = x -> conv2d(5, kernel = (3, 2), stride = (2, 1), padding = 1) -> relu
            y = h -> conv_transpose2d(2, kernel = 4, stride = 2, padding = 1, output_padding = 1)
            output y
        }""")
    model.load_state_dict({**{f"h.{k}": v.numpy() for k, v in conv.state_dict().items()},
                           **{f"y.{k}": v.numpy() for k, v in up.state_dict().items()}})
    x = R.standard_normal((2, 3, 10, 7)).astype(np.float32)
    with torch.no_grad():
        want = up(torch.relu(conv(torch.from_numpy(x)))).numpy()
    np.testing.assert_allclose(model(x=x)["y"], want, rtol=1e-5, atol=1e-5)


def test_default_initialization_is_torchs():
    model = dln.compile("""
        model m() {
            input x: f32[B, 6, 9, 9]
            a = x -> conv2d(4, kernel = (3, 2), groups = 2)
            b = x -> conv_transpose2d(9, kernel = 3, groups = 3)
            output a
            output b
        }""", seed=1)
    p = model.parameters()
    for name, fan_in in (("a.weight", 3 * 6), ("b.weight", 3 * 9)):
        bound = 1 / math.sqrt(fan_in)
        for leaf in ("weight", "bias"):
            v = p[name.replace("weight", leaf)]
            assert np.abs(v).max() <= bound and np.abs(v).max() > 0.8 * bound, (name, leaf)
    assert p["a.weight"].shape == (4, 3, 3, 2) and p["b.weight"].shape == (6, 3, 3, 3)


def test_buffers_prepared_once_follow_new_data_and_views():
    """The NumPy backend prepares each conv once per plan (window views, column buffers): later runs
    with new inputs, and a weight read through a transposing view, still give fresh results."""
    b = GraphBuilder("views")
    x = b.input("x", TensorType(DType.F64, (2, 3, 7, 6)))
    w = b.input("w", TensorType(DType.F64, (3, 5, 2, 3)))       # read as [5, 3, 2, 3] through a permute
    y = b.emit(Op.CONV, (b.permute(x, (0, 1, 3, 2)), b.permute(w, (1, 0, 2, 3))),
               {"stride": (1, 2), "padding": ((1, 0), (2, 1)), "dilation": (1, 1), "groups": 1})
    graph = b.finish([("y", y)])
    exe = Executable(graph)
    for seed in range(3):
        r = np.random.default_rng(seed)
        feeds = {"x": r.standard_normal((2, 3, 7, 6)), "w": r.standard_normal((3, 5, 2, 3))}
        want = F.conv2d(F.pad(torch.tensor(feeds["x"]).transpose(2, 3), (2, 1, 1, 0)),
                        torch.tensor(feeds["w"]).transpose(0, 1), stride=(1, 2)).numpy()
        np.testing.assert_allclose(exe.run(feeds, {})["y"], want, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(evaluate(graph, feeds, {})["y"], want, rtol=1e-12, atol=1e-12)


def test_symbolic_length_compiles_once_for_every_length():
    model = dln.compile("""
        model m() {
            input x: f64[B, 3, T]
            y = x -> conv1d(4, kernel = 3, padding = "same") -> relu -> conv1d(2, kernel = 2, dilation = 2)
            output y
        }""")
    p = model.parameters()
    for t in (9, 14):
        x = R.standard_normal((2, 3, t))
        h = F.relu(F.conv1d(torch.tensor(x), torch.tensor(p["y.conv1d_0.weight"]),
                            torch.tensor(p["y.conv1d_0.bias"]), padding="same"))
        want = F.conv1d(h, torch.tensor(p["y.conv1d_1.weight"]), torch.tensor(p["y.conv1d_1.bias"]), dilation=2)
        np.testing.assert_allclose(model(x=x)["y"], want.numpy(), rtol=1e-10)


@pytest.mark.parametrize("body,code,message", [
    ("x -> conv2d(4, kernel = 3, groups = 2)", "E0208", "3 input channels do not split into 2 groups"),
    ('x -> conv2d(4, kernel = 3, stride = 2, padding = "same")', "E0208", 'padding = "same" needs stride 1'),
    ("x -> conv2d(4, kernel = (3, 3, 3))", "E0208", "kernel needs 1 or 2 values"),
    ("x -> conv2d(4, kernel = 3, stride = 0)", "E0208", "stride must be positive"),
    ("x -> conv2d(4, kernel = 3, padding = -1)", "E0208", "padding must be at least 0"),
    ("x -> conv2d(4, kernel = (3, 10))", "E0209", "spans 3×10, more than the padded input (H 8 + 0 + 0, W 8 + 0 + 0)"),
    ("x -> conv1d(4, kernel = 3)", "E0202", "conv1d needs [B, C, L]"),
    ("x -> conv_transpose2d(4, kernel = 3, stride = 2, output_padding = 2)", "E0208",
     "output_padding must be smaller than its stride or its dilation"),
    ("x -> conv_transpose2d(4, kernel = 1, padding = 5)", "E0209", "padding 5 removes more than"),
    ("t -> conv2d(4, kernel = 3, stride = 2)", "E0207", "needs a known size"),
])
def test_mistakes_are_located_errors(body, code, message):
    source = f"model m() {{\n    input x: f32[B, 3, 8, 8]\n    input t: f32[B, 3, 8, T]\n    y = {body}\n    output y\n}}"
    with pytest.raises(DlnError) as e:
        dln.compile(source)
    d = e.value.diagnostics[0]
    assert d.code == code and message in d.message, d.message
    assert d.span.line == 4


def test_evaluation_folds_per_channel_affine_into_the_conv():
    """A batch-norm-shaped scale and shift after a conv (evaluation mode) moves into its weight and bias:
    the output is unchanged and no multiply runs over the activations."""
    model = dln.compile("""
        model m() {
            input x: f64[B, 3, 9, 7]
            param mean: f64[5] = normal
            param var: f64[5] = ones
            param gamma: f64[5] = normal
            param beta: f64[5] = normal
            z = x -> conv2d(5, kernel = 3, padding = 1)
            y = (z - reshape(mean, (1, 5, 1, 1))) * reshape(rsqrt(var + 1e-5) * gamma, (1, 5, 1, 1))
                + reshape(beta, (5, 1, 1)) -> relu
            output y
        }""", seed=3)
    x = R.standard_normal((2, 3, 9, 7))
    unfolded = evaluate(model.spec.graph, {**model.parameters(), "x": x}, {"B": 2})["y"]
    np.testing.assert_allclose(model(x=x)["y"], unfolded, rtol=1e-12, atol=1e-12)
    folded = pipeline.forward_graph(model.spec)
    over_activations = [n.op for n in folded.nodes if n.shape[:1] == (model.spec.graph.input_named("x").shape[0],)
                        and n.op in (Op.MUL, Op.SUB, Op.DIV)]
    assert over_activations == []
    assert sum(n.op is Op.CONV for n in folded.nodes) == 1


def test_torch_table_runs_the_convolution_ops_as_numpy_does():
    """`dln bench` replays a step graph with torch: its conv, conv_transpose and conv_weight (asymmetric
    "same" padding, groups, output_padding) compute what the NumPy backend computes."""
    from dln.runtime.torch_graph import make_runner, random_inputs
    from dln.runtime.train import default_objective

    model = dln.compile("""
        model m() {
            input x: f64[B, 4, 7, 6]
            input t: f64[B, 2, 12, 18]
            h = x -> conv2d(6, kernel = (2, 3), padding = "same", groups = 2) -> tanh
            y = h -> conv_transpose2d(2, kernel = 3, stride = (2, 3), padding = (2, 1), output_padding = (1, 2))
            loss = mean((y - t) ** 2)
            output y
        }
        train m { optimizer = sgd(lr = 0.1)
                  minimize loss }""")
    step = pipeline.train_step(model.train_spec, default_objective(model))
    env = {"B": 3}
    feeds = random_inputs(step.graph, env, seed=5)
    want = evaluate(step.graph, {k: v.numpy() for k, v in feeds.items()}, env)
    got = make_runner(step.graph, env)(feeds)
    assert {n.op for n in step.graph.nodes} >= {Op.CONV, Op.CONV_TRANSPOSE, Op.CONV_WEIGHT}
    for name, value in want.items():
        np.testing.assert_allclose(np.asarray(got[name]), value, rtol=1e-10, atol=1e-12, err_msg=name)


def test_evaluation_folds_batchnorm_into_conv_and_linear():
    """conv2d -> batchnorm and linear -> batchnorm in evaluation mode: one conv / matmul each reads the
    activations, with folded weights; the outputs are the unfolded graph's and torch's."""
    model = dln.compile("""
        model m() {
            input x: f64[B, 3, 9, 7]
            h = x -> conv2d(5, kernel = 3, padding = 1) -> batchnorm -> relu -> flatten
            y = h -> linear(4) -> batchnorm
            output y
        }""", seed=3)
    r = np.random.default_rng(11)
    state = {k: (r.uniform(0.5, 2.0, v.shape) if "running_var" in k else r.standard_normal(v.shape))
             for k, v in model.state_dict().items() if v.dtype == np.float64}
    model.load_state_dict({**model.state_dict(), **state})
    x = r.standard_normal((2, 3, 9, 7))
    unfolded = evaluate(model.spec.graph, {**model.state_dict(), "x": x}, {"B": 2})["y"]
    np.testing.assert_allclose(model(x=x)["y"], unfolded, rtol=1e-11, atol=1e-12)
    folded = pipeline.forward_graph(model.spec)
    batch = model.spec.graph.input_named("x").shape[0]
    assert [n.op for n in folded.nodes if n.shape[:1] == (batch,) and n.op in (Op.MUL, Op.SUB, Op.DIV)] == []

    s = {k: torch.tensor(v) for k, v in model.state_dict().items()}
    t = torch.tensor(x)
    t = F.conv2d(t, s["h.conv2d_0.weight"], s["h.conv2d_0.bias"], padding=1)
    t = F.batch_norm(t, s["h.batchnorm_0.running_mean"], s["h.batchnorm_0.running_var"], s["h.batchnorm_0.weight"],
                     s["h.batchnorm_0.bias"], training=False)
    t = F.linear(torch.relu(t).flatten(1), s["y.linear_0.weight"], s["y.linear_0.bias"])
    t = F.batch_norm(t, s["y.batchnorm_0.running_mean"], s["y.batchnorm_0.running_var"], s["y.batchnorm_0.weight"],
                     s["y.batchnorm_0.bias"], training=False)
    np.testing.assert_allclose(model(x=x)["y"], t.numpy(), rtol=1e-10, atol=1e-12)


def test_shared_columns_follow_values_not_buffers():
    """A DCGAN generator's step: conv_transpose -> sigmoid -> a strided conv of the same geometry, the
    gradient taken for the transposed conv's weight only.  The planned backend shares a conv's column
    matrix with the weight gradient reading the same value; the sigmoid's buffer is handed on to the
    gradient once dead, and a cache keyed by buffer read the forward's stale columns there."""
    b = GraphBuilder("dcgan")
    u = b.input("u", TensorType(DType.F64, (3, 2, 4, 4)))
    v = b.input("v", TensorType(DType.F64, (2, 3, 4, 4)))
    w = b.input("w", TensorType(DType.F64, (2, 3, 4, 4)))
    c = b.input("c", TensorType(DType.F64, (3, 2, 4, 4)))
    geometry = {"stride": (2, 2), "padding": ((1, 1), (1, 1)), "dilation": (1, 1), "groups": 1}
    a = b.sigmoid(b.emit(Op.CONV_TRANSPOSE, (u, v), {**geometry, "output_padding": (0, 0)}))
    loss = b.sum(b.mul(b.emit(Op.CONV, (a, w), geometry), c))
    graph = b.finish([("loss", loss)])
    full, grads, _ = autodiff.grad(graph, loss.id, [v.id])
    step = pipeline.optimize(full.with_outputs([("loss", loss.id), ("grad", grads[v.id])]))
    r = np.random.default_rng(4)
    feeds = {k: r.standard_normal(t.shape) for k, t in (("u", u), ("v", v), ("w", w), ("c", c))}
    tv = torch.tensor(feeds["v"], requires_grad=True)
    a_ = torch.sigmoid(F.conv_transpose2d(torch.tensor(feeds["u"]), tv, stride=2, padding=1))
    (F.conv2d(a_, torch.tensor(feeds["w"]), stride=2, padding=1) * torch.tensor(feeds["c"])).sum().backward()
    exe = Executable(step)
    for _ in range(2):
        np.testing.assert_allclose(exe.run(feeds, {})["grad"], tv.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_an_empty_batch_gives_empty_outputs_and_zero_weight_gradients():
    """A batch of 0 (torch returns empty tensors): every sum over it is empty, so the weight gradient is 0."""
    model = dln.compile("""
        model m() {
            input x: f64[B, 3, 8, 8]
            h = x -> conv2d(4, kernel = 3, padding = 1) -> relu
            y = h -> conv_transpose2d(2, kernel = 3, stride = 2)
            loss = sum(y)
            output y
        }""")
    x = np.zeros((0, 3, 8, 8))
    assert model(x=x)["y"].shape == (0, 2, 17, 17)
    _, grads = model.value_and_grad("loss", x=x)
    assert all(not np.any(g) for k, g in grads.items() if k.endswith("weight"))


def test_scratch_larger_than_memory_is_a_located_error():
    """The columns of a huge kernel over a large image are far larger than the result: E0706 at the conv,
    before NumPy is asked for them."""
    model = dln.compile("""
        model m() {
            input x: f64[1, 1, 4096, 4096]
            y = x -> conv2d(1, kernel = 64, padding = 32)
            output y
        }""")
    with pytest.raises(DlnError) as e:
        model(x=np.zeros((1, 1, 4096, 4096)))
    d = e.value.diagnostics[0]
    assert d.code == "E0706" and "column matrix" in d.message and d.span.line == 4
