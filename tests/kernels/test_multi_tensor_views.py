"""The multi-tensor optimizer kernel over parameters whose gradients reach it through views.

One kernel updates every parameter, its operands laid out back to back in arenas.  Where a
gradient is read through views inline (reshape -> cast -> reshape: a conv bias under mixed
precision) the kernel composed them at its flat index in the first parameter's shape and read
`arena1_grads + (offs % 5)`: the first parameter's gradient for every other one (rank-2
parameters made it fail instead).  Triton under the interpreter against the NumPy backend, with
parameters of different sizes and ranks, so that no parameter's index is another's.
"""

import importlib.util
import re

import numpy as np
import pytest

import dln
from dln.compiler import pipeline
from dln.compiler.recipe import Objective, OptimizerSpec
from dln.kernels.module import generate_module
from dln.runtime.backends import MERGES_PRODUCTS

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton")

# Each parameter goes through a round trip to `{dt}` between two reshapes: its gradient comes back
# reshaped, cast and reshaped again, inline in the update.  Biases only (each update reads the same
# views) and a network whose weights and biases share one kernel (views of rank 1 and 2).
BIASES = """\
model m() {{
    input x: f32[B, 3, 5]
    input z: f32[B, 3, 7]
    input u: f32[B, 3, 6]
    param b: f32[5] = normal(0.0, 0.5)
    param c: f32[7] = normal(0.0, 0.5)
    param d: f32[6] = normal(0.0, 0.5)
    bb = cast(reshape(cast(reshape(b, (1, 5)), {dt}), (5,)), f32)
    cc = cast(reshape(cast(reshape(c, (7, 1)), {dt}), (7,)), f32)
    dd = cast(reshape(cast(reshape(d, (1, 6, 1)), {dt}), (6,)), f32)
    loss = mean(tanh(x * bb)) + mean(tanh(z * cc)) + mean(tanh(u * dd))
    output loss
}}
"""

LAYERS = """\
model m() {{
    input x: f32[B, 4]
    param w1: f32[4, 3] = normal(0.0, 0.5)
    param w2: f32[3, 6] = normal(0.0, 0.5)
    param w3: f32[6, 5] = normal(0.0, 0.5)
    param b1: f32[3] = normal(0.0, 0.5)
    param b2: f32[6] = normal(0.0, 0.5)
    param b3: f32[5] = normal(0.0, 0.5)
    v1 = cast(reshape(cast(reshape(w1, (12,)), {dt}), (4, 3)), f32)
    v2 = cast(reshape(cast(reshape(w2, (1, 18)), {dt}), (3, 6)), f32)
    v3 = cast(reshape(cast(reshape(w3, (5, 6)), {dt}), (6, 5)), f32)
    c1 = cast(reshape(cast(reshape(b1, (1, 3)), {dt}), (3,)), f32)
    c2 = cast(reshape(cast(reshape(b2, (6, 1)), {dt}), (6,)), f32)
    c3 = cast(reshape(cast(reshape(b3, (1, 5, 1)), {dt}), (5,)), f32)
    h1 = tanh(x @ v1 + c1)
    h2 = tanh(h1 @ v2 + c2)
    h3 = h2 @ v3 + c3
    loss = mean(h3 * h3)
    output loss
}}
"""

# The update reads arange inline (the gradient of `b * arange(5)`): a value of the element's position in
# its own parameter, which one flat pass over every parameter cannot give (it gave `offs`).
POSITIONS = """\
model m() {{
    input x: f32[B, 3]
    param b: f32[5] = normal(0.0, 0.5)
    param c: f32[7] = normal(0.0, 0.5)
    param d: f32[6] = normal(0.0, 0.5)
    s = mean(tanh(x))
    loss = (sum(b * cast(arange(5), f32)) + sum(c * cast(arange(7), f32)) + sum(d * cast(arange(6), f32))) * s
    output loss
}}
"""

MODELS = {"biases": BIASES, "layers": LAYERS, "positions": POSITIONS}
# Clipping makes every update wait for the gradient norm, so they are kernels of their own that the
# planner batches; momentum gives them state of their own (one more arena).
STEP = {"name": "sgd", "lr": 0.5, "momentum": 0.9, "clip_grad": 1.0}


def _inputs(rng, case):
    if case == "biases":
        return {"x": rng.standard_normal((4, 3, 5)), "z": rng.standard_normal((4, 3, 7)),
                "u": rng.standard_normal((4, 3, 6))}
    if case == "positions":
        return {"x": rng.standard_normal((5, 3)) + 1.0}
    return {"x": rng.standard_normal((5, 4))}


def _multi_tensor_kernels(model):
    objective = Objective("loss", None, OptimizerSpec("sgd", {"lr": STEP["lr"], "momentum": STEP["momentum"]}),
                          None)
    # As the Triton backend plans the step (products that share an operand merged).
    step = pipeline.train_step(model.train_spec, objective, STEP["clip_grad"], mixed=model.mixed,
                               merge=MERGES_PRODUCTS["triton"])
    generated = generate_module(step.graph, step.donate)
    return generated, [k for k in generated.kernels if k.kind == "multi_tensor"]


@pytest.mark.parametrize("case, dt", [(case, dt) for case in ("biases", "layers") for dt in ("f16", "bf16", "f64")]
                         + [("positions", "f32")])
def test_updates_through_views_follow_numpy(rng, case, dt):
    source = MODELS[case].format(dt=dt)
    numpy_model = dln.compile(source, backend="numpy")
    triton_model = dln.compile(source, backend="triton")
    triton_model.load_state_dict(numpy_model.parameters())
    start = numpy_model.parameters()
    inputs = {k: v.astype(np.float32) for k, v in _inputs(rng, case).items()}
    after = {}
    for label, model in (("numpy", numpy_model), ("triton", triton_model)):
        opt = dln.optimizer(model, **STEP)
        for _ in range(2):
            opt.step(**inputs)
        after[label] = model.parameters()
    for name, expected in after["numpy"].items():
        assert np.abs(expected - start[name]).max() > 1e-2, f"{name} did not move"
        np.testing.assert_allclose(after["triton"][name], expected, rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("case", ["biases", "layers"])
def test_the_kernel_reads_each_arena_at_the_flat_offset(case):
    model = dln.compile(MODELS[case].format(dt="f16"), backend="numpy")
    generated, kernels = _multi_tensor_kernels(model)
    assert kernels, "the updates were not batched: nothing here tests the multi-tensor kernel"
    graph = generated.plan.graph
    for kernel in kernels:
        (group,) = [g for g in generated.plan.groups if g.name == kernel.name]
        sizes = {int(np.prod([int(d) for d in graph.node(m[0]).shape])) for m in group.multi}
        assert len(sizes) > 1, "parameters of one size would hide an index taken from the first"
        arenas = [p.name for p in kernel.pointers if p.name.startswith("arena")]
        accesses = re.findall(r"tl\.(?:load|store)\((arena\w+) \+ ([^,]+),", kernel.source)
        assert {name for name, _ in accesses} <= set(arenas)
        assert any(re.fullmatch(r"arena\d+_grads", name) for name, _ in accesses), accesses
        assert all(offset == "offs" for _, offset in accesses), accesses


def test_an_update_that_depends_on_the_position_keeps_a_kernel_of_its_own():
    model = dln.compile(POSITIONS.format(), backend="numpy")
    generated, kernels = _multi_tensor_kernels(model)
    assert not kernels
    updates = [k for k in generated.kernels if "update" in k.name]
    assert len(updates) >= 2 and all(k.kind != "multi_tensor" for k in updates)
