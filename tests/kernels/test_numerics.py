"""Every kind of generated kernel, run under Triton's interpreter, against the NumPy interpreter.

Shapes are irregular (no powers of two, batches not a multiple of the block)
and kernels run with the GPU's block sizes, so masks, tails and looped
reductions are exercised.
"""

import numpy as np
import pytest

import dln
from dln.compiler import pipeline
from dln.compiler.emit import GraphBuilder
from dln.compiler.ir import DType, Op, TensorType
from dln.compiler.symbolic import Sym
from dln.kernels.lowering import missing_lowerings

from .conftest import graph_inputs, run_both

B = Sym.var("B")
F32 = DType.F32


def build(fn, *types):
    b = GraphBuilder("t")
    xs = [b.input(f"x{k}", TensorType(dt, shape)) for k, (dt, shape) in enumerate(types)]
    outs = fn(b, *xs)
    return b.finish([(f"out{k}", t) for k, t in enumerate(outs)])


def test_every_elementwise_op_has_a_lowering():
    assert missing_lowerings() == []


def test_pointwise_math_and_broadcasting(rng, close):
    def f(b, x, y, v):
        ax = b.unary(Op.ABS, x)
        outs = [
            b.exp(x), b.log(b.add(ax, 0.5)), b.sqrt(ax), b.unary(Op.RSQRT, b.add(ax, 1.0)), b.unary(Op.SIGN, x),
            b.unary(Op.SIN, x), b.unary(Op.COS, x), b.tanh(x), b.tanh(b.mul(x, 1e-3)), b.sigmoid(x),
            b.unary(Op.RELU, x), b.unary(Op.ERF, x), b.unary(Op.LOG1P, b.mul(ax, 1e-6)), b.unary(Op.LOG1P, ax),
            b.unary(Op.FLOOR, b.mul(x, 3.0)), b.unary(Op.ATAN, b.mul(x, 4.0)), b.unary(Op.ATAN, b.mul(x, 1e-3)),
            b.add(x, y), b.sub(x, v), b.mul(x, y), b.div(x, b.add(b.unary(Op.ABS, y), 0.25)),
            b.pow(b.add(ax, 0.1), 1.7), b.pow(x, 3.0), b.pow(b.add(ax, 0.5), y), b.pow(x, 2.0),
            b.mod(x, 0.7), b.mod(b.mul(x, -3.0), 0.7), b.maximum(x, y), b.minimum(x, v),
            b.where(b.compare(Op.GT, x, y), x, v),
            b.cast(b.logical(Op.AND, b.compare(Op.LT, x, 0.5), b.compare(Op.GE, y, -0.5)), F32),
            b.cast(b.unary(Op.NOT, b.compare(Op.EQ, x, x)), F32),
        ]
        return outs

    graph = build(f, (F32, (7, 13)), (F32, (7, 1)), (F32, (13,)))
    inputs = graph_inputs(graph, {}, rng)
    expected, got, _ = run_both(graph, inputs, {})
    for name in expected:
        close(expected[name], got[name], rtol=3e-5, atol=3e-6)


def test_pointwise_with_symbolic_batch_serves_every_size(rng, close):
    graph = build(lambda b, x, w: [b.mul(b.tanh(x), w)], (F32, (B, 5)), (F32, (5,)))
    for size in (37, 3):
        inputs = graph_inputs(graph, {"B": size}, rng)
        expected, got, _ = run_both(graph, inputs, {"B": size})
        close(expected["out0"], got["out0"])


@pytest.mark.parametrize("dtype", [DType.I32, DType.I64])
def test_integer_pow_is_exact(rng, dtype):
    # ONNX's Pow of integers: by squaring on the GPU, as NumPy's (wrapping past the type's range)
    graph = build(lambda b, x, y: [b.pow(x, y), b.pow(x, 3), b.pow(x, 2)], (dtype, (7, 13)), (dtype, (13,)))
    x = rng.integers(-9, 10, (7, 13))
    y = rng.integers(0, 40 if dtype is DType.I64 else 12, 13)
    inputs = {"x0": x.astype(np.int64 if dtype is DType.I64 else np.int32),
              "x1": y.astype(np.int64 if dtype is DType.I64 else np.int32)}
    expected, got, _ = run_both(graph, inputs, {})
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name])


@pytest.mark.parametrize("axis,keepdim", [((1,), False), ((0,), True), ((0, 1), False), ((1,), True)])
def test_reductions_sum_max_min(rng, close, axis, keepdim):
    def f(b, x):
        return [b.sum(x, axis, keepdim), b.max(x, axis, keepdim), b.min(x, axis, keepdim),
                b.sum(b.exp(b.sub(x, b.max(x, axis, keepdim=True))), axis, keepdim)]

    graph = build(f, (F32, (B, 19)))
    inputs = graph_inputs(graph, {"B": 37}, rng)
    expected, got, _ = run_both(graph, inputs, {"B": 37})
    for name in expected:
        close(expected[name], got[name], rtol=1e-5, atol=1e-5)


def test_argmax_first_of_ties(rng):
    graph = build(lambda b, x: [b.argmax(x, 1)], (F32, (B, 11)))
    x = np.round(rng.standard_normal((29, 11)) * 2).astype(np.float32)  # many ties
    expected, got, _ = run_both(graph, {"x0": x}, {"B": 29})
    np.testing.assert_array_equal(expected["out0"], got["out0"])


def test_reduction_over_many_column_blocks(rng, close):
    # More columns than the GPU block: the column loop runs several times and ends in a tail.
    graph = build(lambda b, x: [b.sum(b.mul(x, x), 1), b.max(x, 1)], (F32, (5, 2500)))
    inputs = graph_inputs(graph, {}, rng)
    expected, got, _ = run_both(graph, inputs, {})
    close(expected["out0"], got["out0"], rtol=1e-5)
    close(expected["out1"], got["out1"])


def test_matmul_epilogue_batched_and_transposed(rng, close):
    def f(b, x, w, bias, a3, b3):
        y = b.unary(Op.RELU, b.add(b.matmul(x, b.transpose(w)), bias))
        return [y, b.matmul(b.transpose(x), y), b.matmul(a3, b3)]

    graph = build(f, (F32, (B, 23)), (F32, (19, 23)), (F32, (19,)), (F32, (3, 5, 7)), (F32, (3, 7, 6)))
    inputs = graph_inputs(graph, {"B": 37}, rng)
    expected, got, _ = run_both(graph, inputs, {"B": 37})
    for name in expected:
        close(expected[name], got[name], rtol=2e-5, atol=2e-5)


def test_gather_scatter_pad_concat_slice(rng, close):
    def f(b, w, idx, x):
        index = b.broadcast_to(b.unsqueeze(idx, 1), (idx.shape[0], 6))
        gathered = b.gather(w, 0, index)
        scattered = b.scatter_add((9, 6), 0, index, b.mul(gathered, 2.0))
        padded = b.pad(x, [(1, 2), (0, 3)], 0.5)
        joined = b.concat([x, b.exp(x)], 1)
        strided = b.slice(x, [1, 0], [7, 5], [2, 2])
        return [gathered, scattered, padded, joined, strided]

    graph = build(f, (F32, (9, 6)), (DType.I64, (11,)), (F32, (7, 5)))
    inputs = graph_inputs(graph, {}, rng)
    inputs["x1"] = rng.integers(0, 9, 11)
    expected, got, _ = run_both(graph, inputs, {})
    for name in expected:
        close(expected[name], got[name])


MLP = """
model mlp(hidden: int = 19, classes: int = 7, p: float = 0.25) {
    input x: f32[B, 23]
    input y: i64[B]
    h      = x -> linear(hidden) -> relu -> dropout(p)
    logits = h -> linear(classes)
    loss   = cross_entropy(logits, y)
    output logits
}
"""


def _both_models(source):
    numpy_model = dln.compile(source, backend="numpy")
    triton_model = dln.compile(source, backend="triton")
    triton_model.load_state_dict(numpy_model.parameters())
    return numpy_model, triton_model


def test_softmax_cross_entropy_and_dropout_gradients_match(rng, close):
    numpy_model, triton_model = _both_models(MLP)
    x, y = rng.standard_normal((37, 23)).astype(np.float32), rng.integers(0, 7, 37)
    l1, g1 = numpy_model.value_and_grad("loss", x=x, y=y)
    l2, g2 = triton_model.value_and_grad("loss", x=x, y=y)
    close(l1, l2)
    for name in g1:
        close(g1[name], g2[name], rtol=1e-4, atol=1e-6)


def test_dropout_masks_are_identical(rng):
    source = MLP.replace("output logits", "output logits, h")
    numpy_model, triton_model = _both_models(source)
    x = rng.standard_normal((37, 23)).astype(np.float32)
    h1 = numpy_model.run(["h"], training=True, x=x)["h"]
    h2 = triton_model.run(["h"], training=True, x=x)["h"]
    np.testing.assert_array_equal(h1 == 0, h2 == 0)
    assert 0.1 < (h1 == 0).mean() < 0.9


@pytest.mark.parametrize("optimizer,clip", [("adam(lr = 1e-2)", None), ("sgd(lr = 0.1, momentum = 0.9)", 0.5),
                                            ("adamw(lr = 1e-2)", 0.5)])
def test_training_steps_match(rng, close, optimizer, clip):
    """Forward, backward and optimizer step in fused kernels, in place, step after step."""
    from dln.compiler.recipe import Objective, OptimizerSpec
    from dln.compiler.optimizers import OPTIMIZERS

    models = _both_models(MLP)
    name, _, args = optimizer.partition("(")
    hyper = dict(OPTIMIZERS[name].defaults)
    for part in args.rstrip(")").split(","):
        k, v = part.split("=")
        hyper[k.strip()] = float(v)
    objective = Objective("loss", None, OptimizerSpec(name, hyper), None)
    runs = []
    for model in models:
        step = pipeline.train_step(model.train_spec, objective, clip)
        be = model.backend
        states = {s.name: be.asarray(np.zeros(tuple(int(d) for d in s.type.shape), np.float32)) for s in step.states}
        prepared = be.prepare(step.graph, {**model._params, **states}, step.donate)
        runs.append((model, step, prepared))
    for k in range(3):
        x, y = rng.standard_normal((37, 23)).astype(np.float32), rng.integers(0, 7, 37)
        feeds = {"x": x, "y": y, "lr": np.array(hyper["lr"]), "step": np.array(k + 1.0),
                 "rng.seed": np.array(7), "rng.step": np.array(k)}
        losses = []
        for model, step, prepared in runs:
            out = prepared.run({n: v for n, v in feeds.items()}, {"B": 37})
            losses.append(float(model.backend.to_numpy(out["loss"])))
        close(losses[0], losses[1])
        p1, p2 = models[0].parameters(), models[1].parameters()
        for name in p1:
            close(p1[name], p2[name], rtol=1e-4, atol=1e-6)


def test_multi_tensor_kernel_is_used_with_gradient_clipping():
    from dln.compiler.recipe import Objective, OptimizerSpec
    from dln.kernels.module import generate_module

    model = dln.compile(MLP)
    objective = Objective("loss", None, OptimizerSpec("adam", {"lr": 1e-3}), None)
    step = pipeline.train_step(model.train_spec, objective, 1.0)
    generated = generate_module(step.graph, step.donate)
    assert [k for k in generated.kernels if k.kind == "multi_tensor"]
    assert generated.persistent_arenas


def test_a_weight_read_as_a_matmul_operand_is_not_overwritten_while_read(rng, close):
    """W @ W with W's update in the same kernel as its gradient: the update must not land in W
    while other tiles still read it (small tiles, several programs)."""
    source = """
model m() {
    param W: f32[40, 40] = normal(0.0, 0.3)
    input t: f32[40, 40]
    loss = sum((W @ W) * t)
    output loss
}
train m { optimizer = sgd(lr = 0.1)  minimize loss }
"""
    from dln.runtime.train import default_objective

    t = rng.standard_normal((40, 40)).astype(np.float32)
    start = dln.compile(source).parameters()
    results = []
    for backend in ("numpy", "triton"):
        model = dln.compile(source, backend=backend)
        model.load_state_dict(start)
        step = pipeline.train_step(model.train_spec, default_objective(model))
        be = model.backend
        exe = be.prepare(step.graph, {**model._params, "rng.step": be.asarray(np.array(0))}, step.donate)
        if backend == "triton":
            exe.program.configs = {k: {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16}
                                   for k, kind in exe.module.KINDS.items() if kind == "matmul"}
        exe.run({"t": t, "lr": np.array(0.1), "step": np.array(1.0)}, {})
        results.append(model.parameters()["W"])
    assert np.abs(results[0] - start["W"]).max() > 0.1  # the step did move W
    close(results[0], results[1], rtol=1e-4, atol=1e-5)


def test_nan_and_inf_follow_torch(close):
    """relu keeps NaN, argmax picks the first NaN, inf ** 0.5 is inf — as NumPy and torch."""
    def f(b, x):
        return [b.unary(Op.RELU, x), b.argmax(x, 1), b.pow(b.unary(Op.ABS, x), 0.5)]

    graph = build(f, (F32, (3, 5)))
    x = np.array([[1.0, np.nan, 3.0, np.nan, 2.0], [np.inf, -np.inf, 0.0, 1.0, 2.0],
                  [-1.0, -2.0, -0.5, -3.0, -0.5]], np.float32)
    expected, got, _ = run_both(graph, {"x0": x}, {})
    np.testing.assert_array_equal(np.isnan(expected["out0"]), np.isnan(got["out0"]))
    np.testing.assert_array_equal(expected["out1"], got["out1"])
    np.testing.assert_array_equal(expected["out2"], got["out2"])


def test_gather_with_a_bad_index_reads_nothing_out_of_bounds():
    def f(b, w, idx):
        index = b.broadcast_to(b.unsqueeze(idx, 1), (idx.shape[0], 3))
        return [b.gather(w, 0, index)]

    graph = build(f, (F32, (4, 3)), (DType.I64, (3,)))
    import torch

    from dln.kernels.module import generate_module
    from dln.runtime.triton_backend import load_module

    module = load_module(generate_module(graph).source, {"test": "gather"})
    out = module.Program("cpu", interpret=True)({"x0": torch.ones(4, 3), "x1": torch.tensor([0, 7, -1])}, {})
    np.testing.assert_array_equal(out["out0"].numpy(), [[1, 1, 1], [0, 0, 0], [0, 0, 0]])


def test_the_64_bit_variant_computes_the_same(rng, close):
    """Kernels over symbolic sizes have a WIDE variant (64-bit offsets) for tensors of 2**31
    elements or more; run it here on small data by lowering the threshold."""
    import torch

    from dln.kernels.module import generate_module
    from dln.runtime.triton_backend import load_module

    def f(b, x, w, bias):
        y = b.unary(Op.RELU, b.add(b.matmul(x, b.transpose(w)), bias))
        return [y, b.sum(b.exp(y), 1), b.sum(y, 0)]

    graph = build(f, (F32, (B, 23)), (F32, (19, 23)), (F32, (19,)))
    inputs = graph_inputs(graph, {"B": 37}, rng)
    expected = run_both(graph, inputs, {"B": 37})[0]
    generated = generate_module(graph)
    assert any(k.wide for k in generated.kernels)
    source = generated.source.replace(">= 2 ** 31)", ">= 0)")
    module = load_module(source, {"test": "wide"})
    got = module.Program("cpu", interpret=True, configs=dict(module.CONFIGS))(
        {k: torch.from_numpy(v) for k, v in inputs.items()}, {"B": 37})
    for name in expected:
        close(expected[name], got[name].numpy(), rtol=2e-5, atol=2e-5)


# Values read under a concat part's or a pad's narrower mask were once reused outside it (a bias loaded
# for the first part of a concat served the second, where it had been masked to 0).
MASKED_READS = {
    "chunk": ("f32[B, 7]", "a, b = chunk(linear(x, 10), 2, axis = -1)\n out = a * sigmoid(b)"),
    "split": ("f32[B, 7]", "h = linear(x, 8)\n a, b = split(h, (3, 5), axis = 1)\n"
                           " out = concat([a * 2.0, sigmoid(b)], axis = 1)"),
    "concat": ("f32[B, 5, 7]", "h = linear(x, 6)\n out = concat([h, relu(h)], axis = 1)"),
    "pad": ("f32[B, 7]", "h = linear(x, 6)\n out = pad(h, (2, 1), value = 0.5) * h[:, 0:1]"),
}


@pytest.mark.parametrize("case", sorted(MASKED_READS))
def test_values_read_under_a_narrower_mask_stay_there(rng, close, case):
    x_type, body = MASKED_READS[case]
    source = f"model m() {{\n input x: {x_type}\n {body}\n loss = mean(out ** 2)\n output out\n}}"
    numpy_model, triton_model = _both_models(source)
    shape = (4, 5, 7) if x_type.count(",") == 2 else (4, 7)
    x = rng.standard_normal(shape).astype(np.float32)
    close(numpy_model(x=x)["out"], triton_model(x=x)["out"])
    l1, g1 = numpy_model.value_and_grad("loss", x=x)
    l2, g2 = triton_model.value_and_grad("loss", x=x)
    close(l1, l2)
    for name in g1:
        close(g1[name], g2[name], rtol=1e-4, atol=1e-6)


# One-element reads and writes under a lane-wide mask, and logic on a comparison hoisted out of a loop:
# each once failed to compile or run (found by the differential harness).
LANE_WIDE = {
    "gather_one_element": ("param x: f32[5, 3] = zeros\n input i: i64[1, 1]\n y = gather(x * 1.5, 0, i)",
                           {"i": np.array([[3]])}),
    "scalar_exponent": ("param x: f32[3, 7] = zeros\n param e: f32[1] = zeros\n y = (x * x + 0.5) ** e", {}),
    "chunk_of_two": ("param x: f32[2] = zeros\n u, v = chunk(x * 1.5, 2, axis = 0)\n y = u * sigmoid(v)", {}),
}


@pytest.mark.parametrize("case", sorted(LANE_WIDE))
def test_one_element_and_hoisted_values_under_a_lane_wide_mask(rng, close, case):
    body, inputs = LANE_WIDE[case]
    numpy_model = dln.compile(f"model m() {{\n {body}\n loss = sum(y * y)\n output y\n}}", backend="numpy")
    params = {k: rng.uniform(0.5, 1.5, v.shape).astype(np.float32) for k, v in numpy_model.parameters().items()}
    numpy_model.load_state_dict(params)
    triton_model = dln.compile(f"model m() {{\n {body}\n loss = sum(y * y)\n output y\n}}", backend="triton")
    triton_model.load_state_dict(params)
    close(numpy_model(**inputs)["y"], triton_model(**inputs)["y"])
    l1, g1 = numpy_model.value_and_grad("loss", **inputs)
    l2, g2 = triton_model.value_and_grad("loss", **inputs)
    close(l1, l2)
    for name in g1:
        close(g1[name], g2[name], rtol=1e-4, atol=1e-6)


def test_a_chain_of_thousands_of_ops_is_one_kernel(rng, close):
    """The planner walks a fused group, and the emitter writes it, without a Python stack as deep as
    the chain (a 3000-term sum once ran out of stack in `dln compile`)."""
    terms = " + ".join(f"x * {k % 7}.0" for k in range(3000))
    source = f"model m() {{\n input x: f32[B, 4]\n y = tanh({terms} * 1e-4)\n output y\n}}"
    x = rng.standard_normal((3, 4)).astype(np.float32)
    numpy_model, triton_model = dln.compile(source, backend="numpy"), dln.compile(source, backend="triton")
    close(numpy_model(x=x)["y"], triton_model(x=x)["y"], rtol=1e-4, atol=1e-6)


def test_matmul_epilogue_reading_one_element_per_program(rng, close):
    """A batched product of a single row whose epilogue reads one element per batch: the load's address is
    the same for every lane of the tile and must still be tile-wide for the tile's mask (a query of
    attention with one key position per batch hit this)."""
    graph = build(lambda b, a, w, c: [b.sub(b.matmul(a, w), b.broadcast_to(c, (4, 1, 5)))],
                  (F32, (4, 1, 3)), (F32, (4, 3, 5)), (F32, (4, 1, 1)))
    inputs = graph_inputs(graph, {}, rng)
    expected, got, _ = run_both(graph, inputs, {})
    for name in expected:
        close(expected[name], got[name], rtol=3e-5, atol=3e-6)
