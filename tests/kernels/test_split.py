"""Split-K products and two-stage reductions (kernels/splitk.py, kernels/split_reduction.py), planned for a
small GPU so that a short batch already splits, run under Triton's interpreter against the NumPy backend."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import dln
from dln.compiler import pipeline
from dln.compiler.fusion.target import A100
from dln.compiler.ir import Op
from dln.kernels.module import generate_module
from dln.runtime.interpreter import evaluate
from dln.runtime.train import default_objective
from tests.kernels.conftest import DEVICE, graph_inputs

SOURCE = """
model net() {
    input x: f32[B, 37]
    input y: i64[B]
    logits = x -> linear(24) -> relu -> linear(5)
    loss = cross_entropy(logits, y)
    output logits
}

train net {
    optimizer = adam(lr = 1e-2)
    batch = 300
    minimize loss
}
"""
# A GPU of 16 SMs whose launches cost nothing: a [37, 24] weight gradient (one tile) and a bias gradient over
# 300 rows cannot fill it.
SMALL = dataclasses.replace(A100, name="test GPU", sms=16, launch_latency=0.0)   # launches free: splits pay
ENV = {"B": 300}


def _step():
    model = dln.compile(SOURCE, backend="numpy")
    return pipeline.train_step(model.train_spec, default_objective(model))


def _run(generated, inputs, donate, env=ENV, **options):
    """One step of the generated module, its operands laid out as the runtime lays them out (the multi-tensor
    kernel's parameters and state back to back); a donated output is read where it was written, over its
    input, as the runtime reads it."""
    import torch

    from dln.runtime.triton_backend import load_module

    module = load_module(generated.source, {"test": "split"})
    program = module.Program(DEVICE, interpret=DEVICE == "cpu", configs=dict(module.CONFIGS), **options)
    g = generated.plan.graph
    bufs = {}
    for arena in generated.plan.memory.arenas:
        if arena.persistent:
            base = torch.empty(arena.numel, dtype=torch.float32, device=DEVICE)
            for node, offset in zip(arena.nodes, arena.offsets):
                name = g.node(node).attrs["name"]
                value = torch.from_numpy(np.ascontiguousarray(inputs[name])).reshape(-1)
                view = base[offset:offset + value.numel()]
                view.copy_(value)
                bufs[name] = view.view(inputs[name].shape)
    for name, value in inputs.items():
        bufs.setdefault(name, torch.from_numpy(np.ascontiguousarray(value)).to(DEVICE))
    out = program(bufs, env)
    return {k: (bufs[donate[k]] if k in donate else v).cpu().numpy().copy() for k, v in out.items()}


def test_split_step_matches_numpy_and_is_deterministic(rng):
    step = _step()
    generated = generate_module(step.graph, step.donate, machine=SMALL, sizes=ENV)
    kinds = {g.kind for g in generated.plan.groups}
    assert {"splitk", "split_reduction", "multi_tensor"} <= kinds
    # The weight gradients' Adam updates left their products for the one multi-tensor kernel.
    (multi,) = [g for g in generated.plan.groups if g.multi]
    assert len(multi.multi) >= 2
    inputs = graph_inputs(step.graph, ENV, rng)
    for n in step.graph.nodes:   # Adam's second moments and the step counter start where they can
        if n.op is Op.INPUT and n.attrs.get("role") in ("state", "hyper") and n.dtype.is_float:
            inputs[n.attrs["name"]] = np.abs(inputs[n.attrs["name"]])
        if n.op is Op.INPUT and n.attrs["name"] == "y":
            inputs["y"] = rng.integers(0, 5, ENV["B"]).astype(np.int64)
    expected = evaluate(step.graph, inputs, ENV)
    got = _run(generated, {k: v.copy() for k, v in inputs.items()}, step.donate)
    for name, want in expected.items():
        np.testing.assert_allclose(got[name], want, rtol=2e-4, atol=2e-5, err_msg=name)
    again = _run(generated, {k: v.copy() for k, v in inputs.items()}, step.donate)
    for name in got:   # the partial results are combined in a fixed order: bit for bit the same
        np.testing.assert_array_equal(again[name], got[name], err_msg=name)


@pytest.mark.parametrize("sms", [16, 1])
def test_splits_come_from_the_machine(sms):
    """Only a GPU the grids cannot fill splits: on one SM every grid fills it, nothing splits and every
    update stays in its gradient's kernel."""
    step = _step()
    plan = generate_module(step.graph, step.donate, machine=dataclasses.replace(SMALL, sms=sms), sizes=ENV).plan
    split = [g for g in plan.groups if g.splits > 1]
    assert bool(split) == (sms == 16)
    if sms == 16:
        assert all(g.kind in ("splitk", "split_reduction") for g in split)
    else:
        assert not any(g.multi for g in plan.groups if any(plan.graph.node(m).shape == (24, 37)
                                                           for m in g.members))


def test_tuning_a_split_step_leaves_the_state_as_one_step(rng, tmp_path):
    """Autotuning times each candidate on the live buffers: the second stages write Adam's update of the
    biases in place, and are restored around every timed run (module.tuning_hooks)."""
    import functools

    import triton

    step = _step()
    generated = generate_module(step.graph, step.donate, machine=SMALL, sizes=ENV)
    inputs = graph_inputs(step.graph, ENV, rng)
    inputs = {k: np.abs(v) if v.dtype == np.float32 else v for k, v in inputs.items()}
    inputs["y"] = rng.integers(0, 5, ENV["B"]).astype(np.int64)
    expected = _run(generated, {k: v.copy() for k, v in inputs.items()}, step.donate)
    runs = []

    def bench(kernel_call, quantiles):   # do_bench for the interpreter: three launches, made-up times
        for _ in range(3):
            kernel_call()
        runs.append(1)
        return [-float(len(runs))] * len(quantiles)

    tuner = functools.partial(triton.autotune, do_bench=bench)
    got = _run(generated, {k: v.copy() for k, v in inputs.items()}, step.donate,
               autotune=tuner, tune_cache=str(tmp_path))
    assert len(runs) > len(generated.configs)
    for name, want in expected.items():   # candidates differ in block sizes, so in the order of sums
        np.testing.assert_allclose(got[name], want, rtol=1e-4, atol=1e-5, err_msg=name)


def test_a_split_product_runs_its_epilogue_in_the_second_stage(rng):
    """A forward product over a long K with its bias and ReLU: the sum of the parts, then the epilogue."""
    import torch

    from dln.runtime.triton_backend import load_module

    model = dln.compile("""
    model wide() {
        input x: f32[B, 333]
        y = x -> linear(24) -> relu
        output y
    }
    """, backend="numpy")
    graph = pipeline.forward_graph(model.spec)
    env = {"B": 7}
    generated = generate_module(graph, machine=SMALL, sizes=env)
    (product,) = [g for g in generated.plan.groups if g.kind == "splitk"]
    assert {n.op for n in generated.plan.computed[product.id]} >= {Op.MATMUL, Op.ADD, Op.RELU}
    inputs = graph_inputs(graph, env, rng)
    expected = evaluate(graph, inputs, env)
    module = load_module(generated.source, {"test": "split epilogue"})
    program = module.Program(DEVICE, interpret=DEVICE == "cpu", configs=dict(module.CONFIGS))
    got = program({k: torch.from_numpy(v).to(DEVICE) for k, v in inputs.items()}, env)
    np.testing.assert_allclose(got["y"].cpu().numpy(), expected["y"], rtol=1e-5, atol=1e-5)


def test_split_columns_combine_maxima_minima_and_sums(rng):
    """Column reductions over a long batch split their rows of partial results: maxima combine by max, minima
    by min, sums by sum; the row values (a mean, a range) are computed after the combination."""
    import torch

    from dln.runtime.triton_backend import load_module

    model = dln.compile("""
    model stats() {
        input x: f32[B, 6]
        spread = max(x, axis = 0) - min(x, axis = 0)
        avg = sum(x * x, axis = 0) / B
        output spread, avg
    }
    """, backend="numpy")
    graph = pipeline.forward_graph(model.spec)
    env = {"B": 1111}
    generated = generate_module(graph, machine=SMALL, sizes=env)
    split = [g for g in generated.plan.groups if g.kind == "split_reduction"]
    assert split and {n.op for g in split for n in generated.plan.computed[g.id]} >= {Op.MAX, Op.MIN, Op.SUM}
    inputs = graph_inputs(graph, env, rng)
    expected = evaluate(graph, inputs, env)
    module = load_module(generated.source, {"test": "split columns"})
    program = module.Program(DEVICE, interpret=DEVICE == "cpu", configs=dict(module.CONFIGS))
    got = program({k: torch.from_numpy(v).to(DEVICE) for k, v in inputs.items()}, env)
    for name, want in expected.items():
        np.testing.assert_allclose(got[name].cpu().numpy(), want, rtol=1e-5, atol=1e-5, err_msg=name)


def test_a_split_reduction_stores_the_full_size_values_it_sums(rng):
    """A convolution's bias gradient sums the ReLU's gradient, which the weight gradient reads too: the first
    stage stores it, each element once by the program whose chunk holds it.  The weight gradient (K: the
    batch times the output positions) splits its K (kernels/splitk_conv.py)."""
    model = dln.compile("""
    model conv() {
        input x: f32[B, 2, 11, 11]
        input y: i64[B]
        logits = x -> conv2d(3, kernel = 3) -> relu -> maxpool2d(3) -> flatten -> linear(4)
        loss = cross_entropy(logits, y)
        output logits
    }

    train conv {
        optimizer = adam(lr = 1e-2)
        batch = 13
        minimize loss
    }
    """, backend="numpy")
    step = pipeline.train_step(model.train_spec, default_objective(model))
    env = {"B": 13}
    generated = generate_module(step.graph, step.donate, machine=SMALL, sizes=env)
    planned = generated.plan.graph
    assert "splitk_convolution" in {g.kind for g in generated.plan.groups}
    split = [g for g in generated.plan.groups if g.kind == "split_reduction"]
    assert any(planned.node(m).shape == g.domain.shape for g in split for m in g.stores), \
        [(g.name, g.kind, g.domain.shape, [planned.node(m).shape for m in g.stores]) for g in generated.plan.groups]
    inputs = graph_inputs(step.graph, env, rng)
    inputs = {k: np.abs(v) if v.dtype == np.float32 else v for k, v in inputs.items()}
    inputs["y"] = rng.integers(0, 4, env["B"]).astype(np.int64)
    expected = evaluate(step.graph, inputs, env)
    got = _run(generated, {k: v.copy() for k, v in inputs.items()}, step.donate, env=env)
    for name, want in expected.items():
        np.testing.assert_allclose(got[name], want, rtol=2e-4, atol=2e-5, err_msg=name)
