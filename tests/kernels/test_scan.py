"""`scan` on the Triton backend against the NumPy interpreter: hand-built RNN (tanh), LSTM-like and
GRU-like layers, forward and the whole training step (forward scan, backward scan, weight-gradient
products), reversed, at odd sizes (B = 3, H = 5, D = 7, T = 6), under Triton's interpreter.  Every scan
here takes the persistent path: one kernel whose loop runs T steps."""

from __future__ import annotations

import numpy as np
import pytest

from dln.compiler.fusion.planner import plan_graph
from dln.compiler.ir import Op
from dln.kernels.module import generate_module
from dln.runtime.interpreter import evaluate
from dln.runtime.triton_backend import load_module

from .conftest import DEVICE, graph_inputs, run_both
from .scan_graphs import layer

D, H = 7, 5
ENV = {"B": 3, "T": 6}


def _compare(graph, env=ENV, seed=0, rtol=2e-5, atol=2e-5):
    rng = np.random.default_rng(seed)
    inputs = graph_inputs(graph, env, rng)
    expected, got, generated = run_both(graph, inputs, env)
    assert set(got) == set(expected)
    for name in expected:
        want = np.asarray(expected[name], np.float64)
        scale = max(1.0, float(np.max(np.abs(want), initial=0.0)))
        np.testing.assert_allclose(np.asarray(got[name], np.float64), want, rtol=rtol, atol=atol * scale,
                                   err_msg=name)
    return generated


def _scan_kernels(generated):
    return [k for k in generated.kernels if k.kind == "scan"]


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_forward(kind):
    generated = _compare(layer(kind, D, H))
    (scan,) = _scan_kernels(generated)
    assert f"_{kind}_scan" in scan.name
    assert "for i in range(0, (s_T)):" in scan.source   # the time loop is in the kernel, T a runtime argument
    # The gates are column blocks of one product: one K loop per block, never a register slice.
    assert scan.source.count("tl.dot(") == {"rnn": 1, "lstm": 4, "gru": 3}[kind]


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_training_step(kind):
    """Loss, outputs and the gradient of every input: the forward scan saves residuals, the backward
    scan runs reversed, the weight gradients are products after the loop."""
    generated = _compare(layer(kind, D, H, train=True))
    scans = _scan_kernels(generated)
    assert [("vjp" in k.name) for k in scans] == [False, True]
    assert "t = (s_T) - 1 - i" in scans[1].source


@pytest.mark.parametrize("kind", ["rnn", "lstm"])
def test_reverse(kind):
    generated = _compare(layer(kind, D, H, reverse=True, train=True), seed=1)
    forward, backward = _scan_kernels(generated)
    assert "t = (s_T) - 1 - i" in forward.source and "t = i" in backward.source


def test_products_longer_than_a_chunk():
    """H = 37: the product's K loop runs three 16-deep chunks, blocks are 64 wide with 27 masked columns."""
    _compare(layer("gru", 4, 37, train=True), env={"B": 5, "T": 3}, seed=2)


def test_batch_over_several_programs():
    """B = 37 rows: three programs of 16 rows each, the last partly masked."""
    _compare(layer("lstm", D, H, train=True), env={"B": 37, "T": 2}, seed=3)


def test_zero_steps():
    """T = 0: the loop does not run, the final carries are the initial ones, the ys are empty."""
    _compare(layer("lstm", D, H), env={"B": 3, "T": 0})


class _Counting:
    """Stands in for a kernel in Program.kernels: counts launches."""

    def __init__(self, fn, counts, name):
        self.fn, self.counts, self.name = fn, counts, name

    def __getitem__(self, grid):
        self.counts[self.name] = self.counts.get(self.name, 0) + 1
        return self.fn[grid]


def test_one_module_serves_every_length():
    """Two lengths through one compiled module, each against NumPy; the kernels launched per training
    step do not depend on T (each scan is one launch whatever its length)."""
    import torch

    graph = layer("lstm", D, H, train=True)
    generated = generate_module(graph)
    module = load_module(generated.source, {"test": graph.name})
    program = module.Program(DEVICE, interpret=DEVICE == "cpu", configs=dict(module.CONFIGS))
    launches = []
    for T, seed in ((6, 4), (3, 5)):
        counts: dict[str, int] = {}
        program.kernels = {name: _Counting(fn, counts, name) for name, fn in program.kernels.items()}
        env = {"B": 3, "T": T}
        inputs = graph_inputs(graph, env, np.random.default_rng(seed))
        expected = evaluate(graph, inputs, env)
        got = program({k: torch.from_numpy(v).to(DEVICE) for k, v in inputs.items()}, env)
        for name, want in expected.items():
            np.testing.assert_allclose(got[name].cpu().numpy(), want, rtol=2e-5, atol=2e-5, err_msg=f"{name} T={T}")
        program.kernels = {name: c.fn for name, c in program.kernels.items()}
        launches.append(counts)
    assert launches[0] == launches[1]
    assert all(n == 1 for n in launches[0].values())
    assert len(launches[0]) == len(generated.kernels)


def test_plan_results_are_buffers():
    """Each scan is a group of its own; its results are its stored values, each in a buffer of its own,
    none copied by another kernel; its operands are realized before it."""
    graph = layer("gru", D, H, train=True)
    plan = plan_graph(graph)
    g = plan.graph
    scans = [n for n in g.nodes if n.op is Op.SCAN]
    groups = [gr for gr in plan.groups if gr.kind == "scan"]
    assert [g.node(gr.members[0]) for gr in groups] == scans
    for gr in groups:
        members = [g.node(m) for m in gr.members]
        assert members[0].op is Op.SCAN and all(m.op is Op.RESULT for m in members[1:])
        assert set(gr.stores) <= set(gr.members[1:]) and gr.stores
        slots = [plan.memory.slot_of.get(m) for m in gr.stores if m not in plan.memory.donated]
        assert len(set(slots)) == len(slots)   # several output buffers, distinct
        assert all(i in plan.realized or g.node(i).op is Op.INPUT for i in members[0].inputs)
    for gr in plan.groups:
        if gr.kind != "scan":
            assert not any(g.node(m).op in (Op.SCAN, Op.RESULT) for m in gr.members)


@pytest.mark.parametrize("train, reverse", [(False, False), (True, False), (True, True)])
def test_fallback_for_a_body_that_is_not_row_parallel(train, reverse):
    """A body normalizing over each row's columns (a reduction across columns) runs step by step: a host
    loop launching the body's own kernels once per step, forward and backward."""
    from .scan_graphs import normed_layer

    generated = _compare(normed_layer(H, reverse=reverse, train=train), seed=6)
    hosts = [k for k in generated.kernels if k.kind == "scan_steps"]
    assert len(hosts) == (2 if train else 1) and not _scan_kernels(generated)
    for host in hosts:
        assert host.host and host.inner and "row-parallel" in host.source
        assert all(inner.name.startswith(f"{host.name}_body_") for inner in host.inner)


def test_empty_batch():
    """B = 0: no program runs; empty ys and final states, zero weight gradients."""
    _compare(layer("lstm", D, H, train=True), env={"B": 0, "T": 3})


def test_carries_the_loop_never_computes_on():
    """A carry handed on unchanged (20 columns: its own 32-wide block) and a y that is that carry."""
    from .scan_graphs import passthrough_layer

    generated = _compare(passthrough_layer(H, 20), seed=7)
    assert _scan_kernels(generated) and "cols32" in _scan_kernels(generated)[0].source


def test_a_scan_nested_in_a_body():
    """The outer body holds a scan, so it runs step by step on the host, and so does the inner one inside
    it: the module emitted the inner kernels one level deep only and listed only top-level host loops,
    so the inner loop's kernels were missing (a KeyError building the program)."""
    from dln.compiler.emit import GraphBuilder
    from dln.compiler.ir import DType, TensorType
    from dln.compiler.symbolic import Sym

    F, T = DType.F32, Sym.var("T")
    inner = GraphBuilder("inner")
    acc = inner.input("acc", TensorType(F, (3,)), role="carry")
    v = inner.input("v", TensorType(F, (3,)), role="x")
    new = inner.tanh(inner.add(inner.mul(acc, 0.5), v))
    inner_body = inner.finish([("acc", new), ("y", inner.mul(new, v))])
    outer = GraphBuilder("outer")
    s = outer.input("s", TensorType(F, (3,)), role="carry")
    row = outer.input("row", TensorType(F, (2, 3)), role="x")
    (total,), (prods,) = outer.scan(inner_body, [s], [row])
    outer_body = outer.finish([("s", outer.tanh(total)), ("y", prods)])
    g = GraphBuilder("m")
    x, s0 = g.input("x", TensorType(F, (T, 2, 3))), g.input("s0", TensorType(F, (3,)))
    (fs,), (ys,) = g.scan(outer_body, [s0], [x])
    _compare(g.finish([("s", fs), ("ys", ys)]), env={"T": 3}, seed=8)
