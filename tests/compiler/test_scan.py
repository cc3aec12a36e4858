"""The `scan` primitive: a loop in the IR, with several results and a body graph.

Hand-built scans, checked against PyTorch loops in float64: forward, reverse, carries that swap,
integer carries, nested scans; the VJP (a reverse scan over the body's VJP, saving residuals,
summing weight gradients in one product after the loop); the passes, verifier and printer inside
bodies; and the planned interpreter against the reference one, for several lengths from one plan.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dln.compiler.autodiff import grad
from dln.compiler.autodiff_scan import linearize
from dln.compiler.emit import GraphBuilder, Tensor
from dln.compiler.ir import DType, Graph, Op, TensorType
from dln.compiler.passes.verify import IRError, verify
from dln.compiler.pipeline import optimize
from dln.compiler.printer import format_graph
from dln.compiler.symbolic import Sym
from dln.runtime.interpreter import Executable, evaluate

F = DType.F64
B, T = Sym.var("B"), Sym.var("T")
H = 5


def _rnn_body(name: str = "rnn.body") -> Graph:
    """h' = tanh(x_t + h @ W^T + b); the step's output is h'."""
    bb = GraphBuilder(name)
    h = bb.input("h", TensorType(F, (B, H)), role="carry")
    x = bb.input("x", TensorType(F, (B, H)), role="x")
    w = bb.input("W", TensorType(F, (H, H)), role="const")
    bias = bb.input("b", TensorType(F, (H,)), role="const")
    out = bb.tanh(bb.add(bb.add(x, bb.matmul(h, bb.transpose(w))), bias))
    return bb.finish([("h", out), ("y", out)])


def _rnn_model(reverse: bool = False) -> tuple[Graph, dict[str, Tensor]]:
    g = GraphBuilder("m")
    t = {"X": g.input("X", TensorType(F, (T, B, H))), "h0": g.input("h0", TensorType(F, (B, H))),
         "W": g.input("W", TensorType(F, (H, H)), role="param"), "b": g.input("b", TensorType(F, (H,)), role="param")}
    (h_last,), (ys,) = g.scan(_rnn_body(), [t["h0"]], [t["X"]], [t["W"], t["b"]], reverse=reverse)
    loss = g.add(g.sum(g.mul(ys, ys)), g.sum(g.mul(h_last, g.float_unary(Op.SIN, h_last))))
    return g.finish([("loss", loss), ("ys", ys), ("h_last", h_last)]), t


def _feeds(steps: int, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"X": rng.normal(size=(steps, batch, H)), "h0": rng.normal(size=(batch, H)),
            "W": rng.normal(size=(H, H)) * 0.5, "b": rng.normal(size=(H,))}


def _torch_rnn(feeds, reverse: bool):
    X, h0, W, b = (torch.tensor(feeds[k], requires_grad=True) for k in ("X", "h0", "W", "b"))
    h, ys = h0, [None] * X.shape[0]
    for t in (reversed(range(X.shape[0])) if reverse else range(X.shape[0])):
        h = torch.tanh(X[t] + h @ W.T + b)
        ys[t] = h
    stacked = torch.stack(ys)
    loss = (stacked * stacked).sum() + (h * torch.sin(h)).sum()
    loss.backward()
    return loss, stacked, h, {"X": X.grad, "h0": h0.grad, "W": W.grad, "b": b.grad}


@pytest.mark.parametrize("reverse", [False, True])
def test_rnn_scan_forward_and_gradients_match_torch(reverse):
    graph, t = _rnn_model(reverse)
    full, grads, _ = grad(graph, graph.output("loss").id, [v.id for v in t.values()])
    full = full.with_outputs(list(full.outputs) + [(f"d{k}", grads[v.id]) for k, v in t.items()])
    step = optimize(full, debug=True)
    feeds = _feeds(7, 3)
    loss, ys, h_last, expected = _torch_rnn(feeds, reverse)
    for got in (evaluate(full, feeds, {"B": 3, "T": 7}), Executable(step).run(feeds, {"B": 3, "T": 7})):
        np.testing.assert_allclose(got["loss"], loss.item(), rtol=1e-12)
        np.testing.assert_allclose(got["ys"], ys.detach().numpy(), rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(got["h_last"], h_last.detach().numpy(), rtol=1e-12, atol=1e-13)
        for k in expected:
            np.testing.assert_allclose(got[f"d{k}"], expected[k].numpy(), rtol=1e-10, atol=1e-12, err_msg=k)


def test_one_plan_per_length_and_an_empty_sequence():
    graph, _ = _rnn_model()
    exe = Executable(optimize(graph))
    for steps in (4, 9, 0):
        feeds = _feeds(steps, 2, seed=steps)
        got = exe.run(feeds, {"B": 2, "T": steps})
        want = evaluate(graph, feeds, {"B": 2, "T": steps})
        np.testing.assert_allclose(got["ys"], want["ys"])
        np.testing.assert_allclose(got["h_last"], feeds["h0"] if steps == 0 else want["h_last"])
    assert len(exe._plans) == 3


def test_backward_body_saves_only_what_it_reads_and_hoists_the_weight_gradient():
    body = _rnn_body()
    lin = linearize(body, 1, 1)
    # The backward reads h_{t-1} (for dW) and tanh's output (for its derivative): h_{t-1} is saved,
    # the output is already the step's y, so it is read from the ys, not saved again.
    assert lin.residuals == 1
    assert sorted(kind for kind, _ in lin.reads) == ["dy", "saved", "y"]
    # One matrix product per step in the backward body (dh @ W); dW is a product outside the loop.
    assert [n.op for n in lin.backward.nodes].count(Op.MATMUL) == 1
    assert lin.dconst[0][0] == "unary" and lin.dconst[0][2][0] == "matmul_t"
    verify(lin.backward)


def _swap_body() -> Graph:
    """(a, b, k) -> (b, a * 2, k + 1); y = a + x: swapped carries and an integer counter."""
    bb = GraphBuilder("swap.body")
    a = bb.input("a", TensorType(F, (3,)), role="carry")
    b = bb.input("b", TensorType(F, (3,)), role="carry")
    k = bb.input("k", TensorType(DType.I64, ()), role="carry")
    x = bb.input("x", TensorType(F, (3,)), role="x")
    return bb.finish([("a", b), ("b", bb.mul(a, 2.0)), ("k", bb.add(k, 1)), ("y", bb.add(a, x))])


def test_swapped_and_integer_carries_on_both_interpreters():
    g = GraphBuilder("m")
    a, b = g.input("a", TensorType(F, (3,))), g.input("b", TensorType(F, (3,)))
    k, x = g.input("k", TensorType(DType.I64, ())), g.input("x", TensorType(F, (T, 3)))
    (fa, fb, fk), (ys,) = g.scan(_swap_body(), [a, b, k], [x])
    graph = g.finish([("a", fa), ("b", fb), ("k", fk), ("ys", ys)])
    feeds = {"a": np.array([1.0, 2, 3]), "b": np.array([10.0, 20, 30]), "k": np.array(0), "x": np.ones((5, 3))}
    ca, cb, want_ys = feeds["a"], feeds["b"], []
    for _ in range(5):
        want_ys.append(ca + 1)
        ca, cb = cb, ca * 2
    for got in (evaluate(graph, feeds, {"T": 5}), Executable(optimize(graph)).run(feeds, {"T": 5})):
        np.testing.assert_array_equal(got["a"], ca)
        np.testing.assert_array_equal(got["b"], cb)
        assert int(got["k"]) == 5
        np.testing.assert_array_equal(got["ys"], np.stack(want_ys))


def test_nested_scan_and_its_gradient():
    """A scan whose body scans: sum over an inner axis, carried over the outer one."""
    inner = GraphBuilder("inner")
    acc = inner.input("acc", TensorType(F, (2,)), role="carry")
    v = inner.input("v", TensorType(F, (2,)), role="x")
    inner_body = inner.finish([("acc", inner.add(inner.mul(acc, 0.5), v))])
    outer = GraphBuilder("outer")
    s = outer.input("s", TensorType(F, (2,)), role="carry")
    row = outer.input("row", TensorType(F, (4, 2)), role="x")
    (total,), _ = outer.scan(inner_body, [s], [row])
    outer_body = outer.finish([("s", outer.tanh(total)), ("y", total)])
    g = GraphBuilder("m")
    x = g.input("x", TensorType(F, (T, 4, 2)), role="param")
    s0 = g.input("s0", TensorType(F, (2,)), role="param")
    (fs,), (ys,) = g.scan(outer_body, [s0], [x])
    loss = g.add(g.sum(fs), g.sum(g.mul(ys, ys)))
    full, grads, _ = grad(g.finish([("loss", loss)]), loss.id, [x.id, s0.id])
    full = full.with_outputs(list(full.outputs) + [("dx", grads[x.id]), ("ds0", grads[s0.id])])
    feeds = {"x": np.random.default_rng(1).normal(size=(3, 4, 2)), "s0": np.array([0.3, -0.2])}
    got = Executable(optimize(full, debug=True)).run(feeds, {"T": 3})

    tx, ts = torch.tensor(feeds["x"], requires_grad=True), torch.tensor(feeds["s0"], requires_grad=True)
    state, ys_t = ts, []
    for t in range(3):
        acc_t = state
        for i in range(4):
            acc_t = acc_t * 0.5 + tx[t, i]
        ys_t.append(acc_t)
        state = torch.tanh(acc_t)
    tl = state.sum() + (torch.stack(ys_t) ** 2).sum()
    tl.backward()
    np.testing.assert_allclose(got["loss"], tl.item(), rtol=1e-12)
    np.testing.assert_allclose(got["dx"], tx.grad.numpy(), rtol=1e-10)
    np.testing.assert_allclose(got["ds0"], ts.grad.numpy(), rtol=1e-10)


def test_passes_run_inside_bodies_and_the_printer_shows_them():
    bb = GraphBuilder("body")
    h = bb.input("h", TensorType(F, (3,)), role="carry")
    bb.exp(h)                                                   # unused: DCE removes it from the body
    twice = bb.add(bb.mul(h, 1.0), bb.mul(h, 1.0))              # x * 1 folds; the two copies CSE to one
    body = bb.finish([("h", twice)])
    g = GraphBuilder("m")
    h0 = g.input("h0", TensorType(F, (3,)))
    xs = g.input("xs", TensorType(F, (T, 3)))
    (final,), _ = g.scan(body, [h0], [], length=T)
    graph = optimize(g.finish([("h", final)]), debug=True)
    (scan,) = [n for n in graph.nodes if n.op is Op.SCAN]
    ops = [n.op for n in scan.attrs["body"].nodes]
    assert Op.EXP not in ops and Op.MUL not in ops and ops.count(Op.ADD) == 1
    assert xs.id not in graph                                   # the unused outer input went too
    text = format_graph(graph)
    assert "scan(%0, carries=1, length=T, reverse=false, xs=0) {" in text
    assert "    graph body {" in text and 'input(name="h", role="carry")' in text
    got = Executable(graph).run({"h0": np.array([1.0, 2, 3])}, {"T": 4})
    np.testing.assert_array_equal(got["h"], [16.0, 32, 48])


def test_verifier_catches_a_bad_body_and_a_result_of_a_plain_node():
    graph, _ = _rnn_model()
    (scan,) = [n for n in graph.nodes if n.op is Op.SCAN]
    body = scan.attrs["body"]
    broken = Graph(body.name, body.nodes, (("h", body.nodes[-1].id), ("y", 999)), body.constraints)
    bad = Graph(graph.name, tuple(n if n is not scan else type(n)(
        n.id, n.op, n.inputs, n.type, n.attrs.replace(body=broken), n.loc, n.name, n.phase, n.results)
        for n in graph.nodes), graph.outputs, graph.constraints)
    with pytest.raises(IRError, match="bad body"):
        verify(bad)
    g = GraphBuilder("m")
    x = g.input("x", TensorType(F, (3,)))
    g.emit(Op.RESULT, (g.exp(x),), {"index": 0})
    with pytest.raises(IRError, match="one result"):
        verify(g.finish([]))


def test_a_wide_body_saves_its_carries_and_recomputes_the_step():
    """A step whose intermediate is 40 wide for a carry of 3: saving it would cost more than REMAT_RATIO
    times the carries, so the forward saves h_{t-1} alone and the backward recomputes the step."""
    width = 40
    bb = GraphBuilder("wide")
    h = bb.input("h", TensorType(F, (B, 3)), role="carry")
    x = bb.input("x", TensorType(F, (B, 3)), role="x")
    w1 = bb.input("w1", TensorType(F, (3, width)), role="const")
    w2 = bb.input("w2", TensorType(F, (width, 3)), role="const")
    u = bb.tanh(bb.matmul(bb.add(h, x), w1))
    new = bb.tanh(bb.matmul(bb.mul(u, u), w2))
    g = GraphBuilder("m")
    t = {"X": g.input("X", TensorType(F, (T, B, 3)), role="param"),
         "h0": g.input("h0", TensorType(F, (B, 3)), role="param"),
         "w1": g.input("w1", TensorType(F, (3, width)), role="param"),
         "w2": g.input("w2", TensorType(F, (width, 3)), role="param")}
    _, (ys,) = g.scan(bb.finish([("h", new), ("y", new)]), [t["h0"]], [t["X"]], [t["w1"], t["w2"]])
    loss = g.sum(g.mul(ys, ys))
    full, grads, _ = grad(g.finish([("loss", loss)]), loss.id, [v.id for v in t.values()])
    forward_scan = next(n for n in full.nodes if n.op is Op.SCAN)
    assert forward_scan.attrs["remat"] and forward_scan.attrs["residuals"] == 1
    full = full.with_outputs([("loss", loss.id)] + [(k, grads[v.id]) for k, v in t.items()])
    rng = np.random.default_rng(0)
    feeds = {"X": rng.normal(size=(6, 2, 3)), "h0": rng.normal(size=(2, 3)), "w1": rng.normal(size=(3, width)),
             "w2": rng.normal(size=(width, 3)) * 0.3}
    got = Executable(optimize(full, debug=True)).run(feeds, {"B": 2, "T": 6})
    tt = {k: torch.tensor(v, requires_grad=True) for k, v in feeds.items()}
    state, outs = tt["h0"], []
    for step in range(6):
        hidden = torch.tanh((state + tt["X"][step]) @ tt["w1"])
        state = torch.tanh((hidden * hidden) @ tt["w2"])
        outs.append(state)
    (torch.stack(outs) ** 2).sum().backward()
    for k in t:
        np.testing.assert_allclose(got[k], tt[k].grad.numpy(), rtol=1e-10, atol=1e-12, err_msg=k)


def test_a_y_computed_from_constants_is_written_every_step():
    """A step output that depends on no input is computed once, at plan time: the planned loop must still
    write it into every row of the stacked ys (it wrote none, leaving the rows uninitialized)."""
    bb = GraphBuilder("body")
    h = bb.input("h", TensorType(F, (3,)), role="carry")
    x = bb.input("x", TensorType(F, (3,)), role="x")
    body = bb.finish([("h", bb.add(h, x)), ("y", bb.exp(bb.const(2.0, F, (3,)))), ("h_in", h)])
    g = GraphBuilder("m")
    h0, xs = g.input("h0", TensorType(F, (3,))), g.input("xs", TensorType(F, (T, 3)))
    (final,), (ys, seen) = g.scan(body, [h0], [xs])
    graph = g.finish([("h", final), ("ys", ys), ("seen", seen)])
    feeds = {"h0": np.zeros(3), "xs": np.ones((4, 3))}
    got = Executable(graph).run(feeds, {"T": 4})        # unoptimized: fold would have made exp(2) a const
    np.testing.assert_array_equal(got["ys"], np.full((4, 3), np.exp(2.0)))
    np.testing.assert_array_equal(got["seen"], np.arange(4.0)[:, None].repeat(3, 1))
    np.testing.assert_array_equal(got["h"], [4.0, 4, 4])


def test_the_gradient_of_an_x_that_is_a_ys_cotangent():
    """y_t = h * z_t + x_t: the cotangent of x_t is dy_t itself, one of the backward's reads, not one of its
    ys.  The VJP took its index among the reads for one among the ys: the gradient of x was that of z (or an
    IndexError when the backward returned no ys)."""
    bb = GraphBuilder("body")
    h = bb.input("h", TensorType(F, (3,)), role="carry")
    x = bb.input("x", TensorType(F, (3,)), role="x")
    z = bb.input("z", TensorType(F, (3,)), role="x")
    body = bb.finish([("h", bb.tanh(bb.add(h, z))), ("y", bb.add(bb.mul(h, z), x))])
    g = GraphBuilder("m")
    t = {"h0": g.input("h0", TensorType(F, (3,)), role="param"), "X": g.input("X", TensorType(F, (T, 3)), role="param"),
         "Z": g.input("Z", TensorType(F, (T, 3)), role="param")}
    (final,), (ys,) = g.scan(body, [t["h0"]], [t["X"], t["Z"]])
    loss = g.add(g.sum(g.mul(ys, ys)), g.sum(final))
    full, grads, _ = grad(g.finish([("loss", loss)]), loss.id, [v.id for v in t.values()])
    full = full.with_outputs([("loss", loss.id)] + [(k, grads[v.id]) for k, v in t.items()])
    rng = np.random.default_rng(3)
    feeds = {"h0": rng.normal(size=3), "X": rng.normal(size=(4, 3)), "Z": rng.normal(size=(4, 3))}
    tt = {k: torch.tensor(v, requires_grad=True) for k, v in feeds.items()}
    state, outs = tt["h0"], []
    for step in range(4):
        outs.append(state * tt["Z"][step] + tt["X"][step])
        state = torch.tanh(state + tt["Z"][step])
    ((torch.stack(outs) ** 2).sum() + state.sum()).backward()
    for got in (evaluate(full, feeds, {"T": 4}), Executable(optimize(full, debug=True)).run(feeds, {"T": 4})):
        for k in t:
            np.testing.assert_allclose(got[k], tt[k].grad.numpy(), rtol=1e-10, atol=1e-12, err_msg=k)


def test_the_gradient_through_swapped_and_integer_carries():
    """The swap body's y = a + x passes dy straight on as dx: its VJP raised an IndexError."""
    g = GraphBuilder("m")
    a, b = g.input("a", TensorType(F, (3,)), role="param"), g.input("b", TensorType(F, (3,)), role="param")
    k, x = g.input("k", TensorType(DType.I64, ())), g.input("x", TensorType(F, (T, 3)), role="param")
    (fa, fb, fk), (ys,) = g.scan(_swap_body(), [a, b, k], [x])
    loss = g.add(g.add(g.sum(g.mul(ys, ys)), g.sum(g.mul(fa, fb))), g.sum(g.mul(fb, g.cast(fk, F))))
    full, grads, _ = grad(g.finish([("loss", loss)]), loss.id, [a.id, b.id, x.id])
    full = full.with_outputs([("loss", loss.id), ("a", grads[a.id]), ("b", grads[b.id]), ("x", grads[x.id])])
    rng = np.random.default_rng(0)
    feeds = {"a": rng.normal(size=3), "b": rng.normal(size=3), "k": np.array(0), "x": rng.normal(size=(5, 3))}
    tt = {n: torch.tensor(feeds[n], requires_grad=True) for n in "abx"}
    ca, cb, ys_t = tt["a"], tt["b"], []
    for step in range(5):
        ys_t.append(ca + tt["x"][step])
        ca, cb = cb, ca * 2
    ((torch.stack(ys_t) ** 2).sum() + (ca * cb).sum() + (cb * 5).sum()).backward()
    for got in (evaluate(full, feeds, {"T": 5}), Executable(optimize(full, debug=True)).run(feeds, {"T": 5})):
        for n in "abx":
            np.testing.assert_allclose(got[n], tt[n].grad.numpy(), rtol=1e-10, atol=1e-12, err_msg=n)


def test_a_reshape_of_a_transposed_value_in_a_body_is_copied_every_step():
    """reshape(transpose(h)) cannot be a view: the planned loop made it once, at plan time, from the
    buffer's contents then (garbage), instead of copying it each step as the outer interpreter does.
    The VJP of a body reshaping a transposed value has such a reshape too."""
    bb = GraphBuilder("body")
    h = bb.input("h", TensorType(F, (2, 3)), role="carry")
    x = bb.input("x", TensorType(F, (2, 3)), role="x")
    flipped = bb.reshape(bb.transpose(bb.reshape(h, (3, 2))), (2, 3))
    new = bb.tanh(bb.add(flipped, x))
    body = bb.finish([("h", new), ("y", bb.reshape(bb.transpose(new), (2, 3)))])
    g = GraphBuilder("m")
    t = {"h0": g.input("h0", TensorType(F, (2, 3)), role="param"),
         "X": g.input("X", TensorType(F, (T, 2, 3)), role="param")}
    (final,), (ys,) = g.scan(body, [t["h0"]], [t["X"]])
    loss = g.add(g.sum(g.mul(ys, g.float_unary(Op.SIN, ys))), g.sum(final))
    full, grads, _ = grad(g.finish([("loss", loss)]), loss.id, [v.id for v in t.values()])
    full = full.with_outputs([("loss", loss.id), ("ys", ys.id)] + [(k, grads[v.id]) for k, v in t.items()])
    rng = np.random.default_rng(5)
    feeds = {"h0": rng.normal(size=(2, 3)), "X": rng.normal(size=(4, 2, 3))}
    tt = {k: torch.tensor(v, requires_grad=True) for k, v in feeds.items()}
    state, outs = tt["h0"], []
    for step in range(4):
        state = torch.tanh(state.reshape(3, 2).T.reshape(2, 3) + tt["X"][step])
        outs.append(state.T.reshape(2, 3))
    stacked = torch.stack(outs)
    ((stacked * torch.sin(stacked)).sum() + state.sum()).backward()
    for graph in (full, optimize(full, debug=True)):
        got = Executable(graph).run(feeds, {"T": 4})
        np.testing.assert_allclose(got["ys"], stacked.detach().numpy(), rtol=1e-12, atol=1e-13)
        for k in t:
            np.testing.assert_allclose(got[k], tt[k].grad.numpy(), rtol=1e-10, atol=1e-12, err_msg=k)


def test_plans_for_many_lengths_are_bounded():
    """One plan per sequence length, each holding every buffer and T steps of calls: a recurrent model fed
    batches of many lengths kept them all (memory quadratic in the longest length).  The least recently run
    goes; a length run again is planned again and still right."""
    from dln.runtime.interpreter import MAX_PLANS

    graph, _ = _rnn_model()
    exe = Executable(optimize(graph))
    for steps in [*range(1, MAX_PLANS + 5), 1, 3]:
        feeds = _feeds(steps, 2, seed=steps)
        got = exe.run(feeds, {"B": 2, "T": steps})
        np.testing.assert_allclose(got["ys"], evaluate(graph, feeds, {"B": 2, "T": steps})["ys"])
        assert len(exe._plans) <= MAX_PLANS
    assert list(exe._plans)[-1] == (("B", 2), ("T", 3))


def test_two_result_nodes_of_one_result_free_its_buffer_once():
    """Before CSE a graph may read one result of a scan through two `result` nodes (the scan's VJP makes
    its own).  Each owned the buffer and gave it back to the pool at its last use: given back twice, it
    went to two later values at once."""
    bb = GraphBuilder("body")
    h = bb.input("h", TensorType(F, (3,)), role="carry")
    x = bb.input("x", TensorType(F, (3,)), role="x")
    g = GraphBuilder("m")
    h0, xs = g.input("h0", TensorType(F, (3,))), g.input("xs", TensorType(F, (4, 3)))
    (final,), _ = g.scan(bb.finish([("h", bb.add(h, x))]), [h0], [xs])
    (again,) = g.results(g.tensor(g.node(final).inputs[0]))
    c = g.add(g.exp(final), g.exp(again))       # each exp is the last reader of one of the two
    d = g.mul(c, 2.0)
    graph = g.finish([("c", c), ("d", d), ("e", g.add(g.tanh(d), c))])
    feeds = {"h0": np.zeros(3), "xs": np.ones((4, 3))}
    want, got = evaluate(graph, feeds, {}), Executable(graph).run(feeds, {})
    for k in want:
        np.testing.assert_allclose(got[k], want[k], err_msg=k)


def test_gradient_of_a_nested_scan_with_a_nonlinear_inner_body():
    """The inner loop's VJP reads residuals (tanh's output): the inner scan must save them as the outer
    body runs (save_residuals inside linearize), and the outer forward body computes the `result` nodes
    reading them.  Before, an IndexError (nothing saved) or E0201 (the inner scan taken for a residual)."""
    inner = GraphBuilder("inner")
    acc = inner.input("acc", TensorType(F, (2,)), role="carry")
    v = inner.input("v", TensorType(F, (2,)), role="x")
    new = inner.tanh(inner.add(acc, v))
    inner_body = inner.finish([("acc", new), ("y", inner.mul(new, v))])
    outer = GraphBuilder("outer")
    s = outer.input("s", TensorType(F, (2,)), role="carry")
    row = outer.input("row", TensorType(F, (4, 2)), role="x")
    (total,), (prods,) = outer.scan(inner_body, [s], [row], reverse=True)
    outer_body = outer.finish([("s", outer.tanh(total)), ("y", prods)])
    g = GraphBuilder("m")
    x = g.input("x", TensorType(F, (T, 4, 2)), role="param")
    s0 = g.input("s0", TensorType(F, (2,)), role="param")
    (fs,), (ys,) = g.scan(outer_body, [s0], [x])
    loss = g.add(g.sum(g.mul(fs, fs)), g.sum(g.mul(ys, ys)))
    full, grads, _ = grad(g.finish([("loss", loss)]), loss.id, [x.id, s0.id])
    full = full.with_outputs([("loss", loss.id), ("dx", grads[x.id]), ("ds0", grads[s0.id])])
    feeds = {"x": np.random.default_rng(2).normal(size=(3, 4, 2)), "s0": np.array([0.3, -0.2])}
    tx, ts = torch.tensor(feeds["x"], requires_grad=True), torch.tensor(feeds["s0"], requires_grad=True)
    state, ys_t = ts, []
    for t in range(3):
        acc_t, rows = state, [None] * 4
        for i in reversed(range(4)):
            acc_t = torch.tanh(acc_t + tx[t, i])
            rows[i] = acc_t * tx[t, i]
        ys_t.append(torch.stack(rows))
        state = torch.tanh(acc_t)
    tl = (state * state).sum() + (torch.stack(ys_t) ** 2).sum()
    tl.backward()
    for got in (evaluate(full, feeds, {"T": 3}), Executable(optimize(full, debug=True)).run(feeds, {"T": 3})):
        np.testing.assert_allclose(got["loss"], tl.item(), rtol=1e-12)
        np.testing.assert_allclose(got["dx"], tx.grad.numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(got["ds0"], ts.grad.numpy(), rtol=1e-10, atol=1e-12)
