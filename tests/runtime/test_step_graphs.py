"""CUDA graphs of training steps (runtime/step_graphs.py), without a GPU: the decisions, and the
fixed device buffers a graph reads, checked with a stand-in for `torch.cuda.CUDAGraph`.

The stand-in behaves as a graph does: capturing runs nothing (the state is put back as it was),
and a replay repeats the captured launches on the buffers they were captured with — so a feed
(the batch, the learning rate, the step count) that is not copied into its fixed buffer before
a replay would be read stale, and the steps would drift from the ones run without graphs.
Capture itself on a GPU is not exercised here.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging

import numpy as np
import pytest
import torch

import dln
from dln.runtime.step_graphs import MAX_BINDINGS, StepGraphs, why_no_graphs

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton")

SOURCE = """
model m() {
    input x: f32[B, 6]
    input y: i64[B]
    loss = cross_entropy(x -> linear(9) -> tanh -> dropout(0.25) -> linear(4), y)
    output loss
}
train m { optimizer = adam(lr = 0.02)  minimize loss }
"""


class FakeGraph:
    """Replays the launches the program recorded while it was captured, on the same buffers."""

    def __init__(self) -> None:
        self.tape = None
        self.replays = 0

    def replay(self) -> None:
        self.replays += 1
        self.tape.replay()


class FakeCapture:
    """`torch.cuda.graph(g)` for the stand-in, and the program run inside it: the launches the program
    replays while captured become the graph's, and their effects on the state are undone."""

    def __init__(self, executable) -> None:
        self.executable, self.graph = executable, None

    @property
    def generation(self) -> int:
        return self.executable.program.generation

    @contextlib.contextmanager
    def capturing(self, graph: FakeGraph):
        self.graph = graph
        saved = [(t, t.clone()) for t in self.executable.persistent.values()]
        yield
        for t, value in saved:
            t.copy_(value)

    def __call__(self, bufs, sizes):
        program = self.executable.program
        outputs = program(bufs, sizes)
        binding = tuple(int(sizes[s]) for s in program.symbols)
        self.graph.tape = next(t for key, t in program._tapes.items() if key[0] == binding)
        return outputs


def _train(graphs: bool, batches: list[int]):
    model = dln.compile(SOURCE, backend="triton", seed=5)
    opt = dln.optimizer(model, "adam", lr=0.02, schedule="cosine", total_steps=len(batches))
    exe = opt.prepared
    if graphs:
        capture = FakeCapture(exe)
        exe.graphs = StepGraphs(capture, None, FakeGraph, capture.capturing)
    rng = np.random.default_rng(0)
    losses = []
    for b in batches:
        losses.append(opt.step(x=rng.standard_normal((b, 6)).astype(np.float32),
                               y=rng.integers(0, 4, b).astype(np.int64)))
    return losses, model.parameters(), exe


def test_graph_replays_match_steps_without_graphs():
    """Every step's feeds reach the replay through their fixed buffers: the batch, the learning rate
    (a cosine schedule: new every step), the step count (Adam's bias correction) and the random counter
    (advanced on the device).  A new batch size runs its first step without a graph."""
    batches = [8, 8, 8, 8, 3, 8, 3, 3]
    want_losses, want_params, _ = _train(False, batches)
    got_losses, got_params, exe = _train(True, batches)
    assert got_losses == want_losses
    for name, value in want_params.items():
        np.testing.assert_array_equal(got_params[name], value, err_msg=name)
    replays = {key[0]: graph.replays for key, (graph, _, _) in exe.graphs.graphs.items()}
    assert replays == {(("B", 8),): 4, (("B", 3),): 2}   # 8: steps 2-4 and 6; 3: steps 7-8


def test_no_graphs_on_the_cpu_or_the_interpreter():
    class Program:
        interpret = False

    assert why_no_graphs(torch.device("cpu"), Program(), True) == "the device is 'cpu', not a CUDA GPU"
    assert why_no_graphs(torch.device("cuda"), Program(), True) is None
    assert why_no_graphs(torch.device("cuda"), Program(), False) == "turned off"
    Program.interpret = True
    assert why_no_graphs(torch.device("cuda"), Program(), True) == "the kernels run under Triton's interpreter"


class _Program:
    """A program whose workspace can be made to grow."""

    interpret = False

    def __init__(self) -> None:
        self.generation = 0
        self.calls = 0

    def __call__(self, bufs, sizes):
        self.calls += 1
        return {"out": sizes["B"]}


class _Graph:
    def __init__(self) -> None:
        self.replays = 0

    def replay(self) -> None:
        self.replays += 1


def test_capture_waits_for_a_warm_binding_and_keeps_few(caplog):
    program = _Program()
    graphs = StepGraphs(program, None, _Graph, lambda g: contextlib.nullcontext())
    assert graphs.run(("b1",), {}, {"B": 1}) is None                  # warm-up: compiled, recorded
    assert graphs.run(("b1",), {}, {"B": 1}) == {"out": 1} and program.calls == 1   # captured, replayed
    assert graphs.run(("b1",), {}, {"B": 1}) == {"out": 1} and program.calls == 1   # replayed only
    for b in range(2, MAX_BINDINGS + 1):
        graphs.run((f"b{b}",), {}, {"B": b})
        graphs.run((f"b{b}",), {}, {"B": b})
    assert len(graphs.graphs) == MAX_BINDINGS
    with caplog.at_level(logging.DEBUG, logger="dln.triton"):
        for _ in range(3):
            assert graphs.run(("more",), {}, {"B": 99}) is None
    assert "no CUDA graph for sizes {'B': 99}: the shapes keep changing" in caplog.text
    assert graphs.run(("b1",), {}, {"B": 1}) == {"out": 1}   # the captured ones still replay


def test_a_failed_capture_falls_back_for_good(caplog):
    program = _Program()

    @contextlib.contextmanager
    def refusing(graph):
        yield
        raise RuntimeError("operation not permitted when stream is capturing")

    graphs = StepGraphs(program, None, _Graph, refusing)
    with caplog.at_level(logging.DEBUG, logger="dln.triton"):
        for _ in range(4):
            assert graphs.run(("b",), {}, {"B": 2}) is None
    assert "the capture failed (RuntimeError: operation not permitted" in caplog.text
    assert program.calls == 1 and not graphs.graphs


def test_graphs_are_dropped_when_the_workspace_is_reallocated():
    program = _Program()
    graphs = StepGraphs(program, None, _Graph, lambda g: contextlib.nullcontext())
    graphs.run(("b",), {}, {"B": 2})
    graphs.run(("b",), {}, {"B": 2})
    old = graphs.graphs[("b",)][0]
    program.generation += 1            # another binding grew a slot: the graph's addresses are stale
    assert graphs.run(("b",), {}, {"B": 2}) == {"out": 2}      # captured again (it was warm), replayed
    assert program.calls == 2 and graphs.graphs[("b",)][0] is not old and old.replays == 1


def test_the_executable_says_why_it_makes_no_graphs_here(caplog):
    with caplog.at_level(logging.DEBUG, logger="dln.triton"):
        model = dln.compile(SOURCE, backend="triton")
        opt = dln.optimizer(model, "adam", lr=0.02)
    assert opt.prepared.graphs.reason is not None
    assert f"no CUDA graphs: {opt.prepared.graphs.reason}" in caplog.text
