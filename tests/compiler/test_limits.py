"""Compile-time limits (dln.compiler.limits): a program that would unroll or grow without end stops
with E0312 at the line that went over, saying which limit and how to raise it; real models stay far
below the defaults."""

from __future__ import annotations

import pytest

import dln
from dln.compiler.limits import DEFAULT_LIMITS

LOOP = """model m(n: int = 30) {
    input x: f32[B, 4]
    h = x
    repeat i in 0..n {
        h = relu(h * 2.0 + 1.0)
    }
    output h
}
"""


def _error(source: str, **kwargs) -> dln.DlnError:
    with pytest.raises(dln.DlnError) as info:
        dln.compile(source, backend="numpy", **kwargs)
    return info.value


def test_a_repeat_past_max_unroll_is_refused_before_unrolling():
    err = _error(LOOP, n=10**12)   # unrolled, this would never finish
    (d,) = err.diagnostics
    assert d.code == "E0312" and (d.span.line, d.span.col, d.span.end_col) == (4, 17, 21), d
    assert "1,000,000,000,000 times" in d.message
    assert any("max_unroll = 10,000" in n.message and "--max-unroll" in n.message for n in d.notes), d


def test_max_unroll_is_an_option_of_compile():
    assert _error(LOOP, max_unroll=29).code == "E0312"
    assert dln.compile(LOOP, backend="numpy", max_unroll=30).name == "m"


def test_the_limits_are_options_of_train(tmp_path):
    import numpy as np

    np.savez(tmp_path / "d.npz", x=np.ones((6, 4), np.float32))
    source = LOOP.replace("output h", "loss = mean(h)\n    output h") + \
        f'train m {{ data = npz("{tmp_path / "d.npz"}")  epochs = 1  minimize loss }}\n'
    for limit in ({"max_unroll": 29}, {"max_nodes": 50}):
        with pytest.raises(dln.DlnError) as info:
            dln.train(source, backend="numpy", progress=False, **limit)
        assert info.value.diagnostics[0].code == "E0312", limit
    assert dln.train(source, backend="numpy", progress=False, max_unroll=30).epochs


def test_a_graph_past_max_nodes_stops_at_the_line_that_grew_it():
    err = _error(LOOP, max_nodes=50)
    (d,) = err.diagnostics   # once, not once per remaining iteration
    assert d.code == "E0312" and d.span.line == 5, d
    assert "50 nodes" in d.message and any("max_nodes = 50" in n.message for n in d.notes), d
    assert dln.compile(LOOP, backend="numpy", max_nodes=1000).name == "m"


def test_errors_before_the_limit_are_kept():
    source = LOOP.replace("    h = x\n", "    h = x\n    z = nothing\n")
    err = _error(source, max_nodes=50)
    assert [d.code for d in err.diagnostics] == ["E0301", "E0312"], err


TRANSFORMER = """
block attention(x, d: int) {
    q = x -> linear(d)
    k = x -> linear(d)
    v = x -> linear(d)
    return softmax(q @ transpose(k, 1, 2) / 8.0, -1) @ v -> linear(d)
}

model transformer(d: int = 64, depth: int = 24) {
    input x: f32[B, T, 64]
    h = x
    repeat i in 0..depth {
        h = h + attention(layernorm(h), d)
        h = h + (layernorm(h) -> linear(4 * d) -> gelu -> linear(d))
    }
    output y = h[:, 0] -> linear(10)
}
"""


def test_a_24_block_transformer_is_far_below_the_defaults():
    model = dln.compile(TRANSFORMER, backend="numpy")
    assert len(model.spec.graph.nodes) * 10 < DEFAULT_LIMITS.max_nodes
    assert 24 * 100 < DEFAULT_LIMITS.max_unroll
