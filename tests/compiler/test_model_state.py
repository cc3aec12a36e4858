"""Model state in the builtin context: `cx.state` makes a graph input of role "buffer", `cx.assign` its
new value, which the training step outputs as `new:<name>` and donates, like the optimizer's state."""

from __future__ import annotations

import numpy as np

import dln
from dln.compiler import pipeline
from dln.compiler.ir import Op
from dln.compiler.recipe import DEFAULT_OPTIMIZER, Objective

SOURCE = """
model norm {
    input x: f32[B, 3]
    output y = x -> batchnorm
}

model m {
    input x: f32[B, 3]
    N = norm()
    loss = mean(N(x) + N(x * 2.0))
    output loss
}
"""


def _build(training: bool):
    return pipeline.build_model(pipeline.load(SOURCE), "m", training=training)


def test_state_is_a_buffer_input_with_its_init_and_no_gradient():
    spec = _build(training=True)
    assert [(s.name, str(s.type), s.init.kind) for s in spec.state] == [
        ("N.y.running_mean", "f32[3]", "zeros"), ("N.y.running_var", "f32[3]", "ones"),
        ("N.y.num_batches_tracked", "i64[]", "zeros")]
    roles = {n.attrs["name"]: n.attrs["role"] for n in spec.graph.nodes if n.op is Op.INPUT}
    assert {roles[s.name] for s in spec.state} == {"buffer"}
    assert {p.name for p in spec.params} == {"N.y.weight", "N.y.bias"}   # state is not a parameter
    assert _build(training=False).updates == {}                          # evaluation assigns nothing


def test_the_train_step_outputs_and_donates_each_assigned_state():
    spec = _build(training=True)
    step = pipeline.train_step(spec, Objective("loss", None, DEFAULT_OPTIMIZER, spec.decl.span))
    for s in spec.state:
        assert step.donate[f"new:{s.name}"] == s.name
        assert f"new:{s.name}" in step.graph.output_names
    assert step.donate["new:rng.step"] == "rng.step"
    assert all(not s.name.startswith("N.y.running") for s in step.states)   # no optimizer slots for state


def test_an_instance_applied_twice_updates_its_state_twice_in_order():
    """As a torch module called twice: the second call sees the statistics the first updated."""
    model = dln.compile(SOURCE, model="m", backend="numpy")
    x = np.array([[1.0, 2.0, 3.0], [3.0, 6.0, 9.0]], np.float32)
    model.value_and_grad("loss", x=x)
    state = model.buffers()
    assert int(state["N.y.num_batches_tracked"]) == 2
    mean = x.mean(0)
    np.testing.assert_allclose(state["N.y.running_mean"], 0.9 * (0.1 * mean) + 0.1 * (2 * mean), rtol=1e-6)
