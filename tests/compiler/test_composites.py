"""Every composite in the registry (dln.compiler.composites.COMPOSITES) against its own decomposition.

The composites are taken as the compiler makes them: the composite nodes of the forward graphs
(training mode) and the gradient graphs of small programs, one for each way a built-in uses one.  A
registered composite that none of them reaches fails `test_every_composite_is_reached`: a new composite
needs a program here.  For each node found:

* its decomposition's types equal its shape rule's;
* its own VJP, where it has one, equals autodiff through its decomposition (float64, on the interpreter);
* its FLOPs equal its decomposition's;
* `interpreter.evaluate` (the definition) equals what the NumPy backend's Executable runs.

Besides: the decompose pass leaves no composite, also inside a scan body; the IR printer shows a
composite by its name; the IR checker accepts graphs with composites and rejects a `result` read from a
node with one result.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

import dln
from dln.compiler import composites, pipeline
from dln.compiler.autodiff import grad
from dln.compiler.composites import COMPOSITES, expanded
from dln.compiler.cost import total_flops
from dln.compiler.emit import GraphBuilder
from dln.compiler.ir import DType, Graph, Node, Op, TensorType, subgraphs
from dln.compiler.passes.decompose import decompose, has_composites
from dln.compiler.passes.verify import IRError, verify
from dln.compiler.printer import format_graph, format_node
from dln.compiler.shapes import ShapeContext
from dln.runtime.interpreter import Executable, evaluate
from dln.runtime.numpy_ops import np_dtype

# Each a model of concrete sizes with a scalar `loss`; every composite is reached by one of them.
PROGRAMS = {
    "attention-causal-key-padding": """
        param x: f64[2, 5, 6] = zeros
        input pad: bool[2, 5]
        loss = sum(attention(x, heads = 3, causal = true, mask = pad) ** 2)""",
    "attention-cross-dropout": """
        param x: f64[2, 5, 6] = zeros
        param mem: f64[2, 7, 4] = zeros
        loss = sum(attention(x, heads = 2, context = mem, dropout = 0.25) ** 2)""",
    "sdpa-float-mask-scale": """
        param q: f64[2, 3, 5, 6] = zeros
        param k: f64[2, 1, 7, 6] = zeros
        param v: f64[3, 7, 5] = zeros
        param m: f64[3, 1, 7] = zeros
        loss = sum(scaled_dot_product_attention(q, k, v, mask = m, scale = 0.3) ** 2)""",
    "sdpa-causal-bool-mask": """
        param q: f64[5, 6] = zeros
        param k: f64[7, 6] = zeros
        param v: f64[7, 3] = zeros
        input m: bool[5, 7]
        loss = sum(scaled_dot_product_attention(q, k, v, causal = true, mask = m) ** 2)""",
    "cross-entropy-smoothed": """
        param logits: f64[2, 5, 7] = zeros
        input target: i64[2, 5]
        loss = cross_entropy(logits, target, label_smoothing = 0.1)""",
    "layernorm": """
        param x: f64[3, 5, 7] = zeros
        loss = sum(layernorm(x) ** 3)""",
}


def _spec(body: str):
    return dln.compile("model m() {\n" + body + "\n    output loss\n}", backend="numpy").train_spec


def _graphs(spec) -> list[Graph]:
    """The forward graph (training mode) and the gradient graph of every parameter."""
    full, grads, _ = grad(spec.graph, spec.values["loss"], [p.node for p in spec.params])
    backward = full.with_outputs([("loss", spec.values["loss"])] +
                                 [(f"grad:{p.name}", grads[p.node]) for p in spec.params if grads[p.node] is not None])
    return [pipeline.forward_graph(spec, ["loss"]), pipeline.optimize(backward)]


def _composite_nodes(graph: Graph) -> list[tuple[Node, tuple[TensorType, ...]]]:
    found = []
    for n in graph.nodes:
        if n.op is Op.COMPOSITE:
            found.append((n, tuple(graph.node(i).type for i in n.inputs)))
        for body in subgraphs(n):
            found += _composite_nodes(body)
    return found


@dataclass(frozen=True)
class Instance:
    program: str
    node: Node
    types: tuple[TensorType, ...]

    @property
    def name(self) -> str:
        return self.node.attrs["composite"]

    @property
    def attrs(self) -> dict:
        return {k: v for k, v in self.node.attrs.items() if k != "composite"}


def _instances() -> list[Instance]:
    seen: dict[tuple, Instance] = {}
    for program, body in PROGRAMS.items():
        for graph in _graphs(_spec(body)):
            for n, types in _composite_nodes(graph):
                seen.setdefault((n.attrs, types), Instance(program, n, types))
    return list(seen.values())


INSTANCES = _instances()
IDS = [f"{i.name}-{i.program}-{k}" for k, i in enumerate(INSTANCES)]


def test_every_composite_is_reached():
    assert sorted(set(COMPOSITES) - {i.name for i in INSTANCES}) == []


def test_no_composite_shares_a_primitives_name():
    """The printer writes a composite as a call of its name: it must not read as a primitive."""
    assert set(COMPOSITES) & {op.value for op in Op} == set()


# ---- one composite on its own --------------------------------------------------------------------------------------

def _alone(inst: Instance, with_loss: bool) -> tuple[Graph, list[int]]:
    """`inst`'s composite over fresh inputs x0, x1, ... of its operand types; its results as outputs y0, ...;
    with `with_loss`, also `loss` = sum(y0 * c), c an input.  Also the ids of the float inputs.  Only the
    first result is differentiated: the others are what the backward reads (attention's log-sum-exp)."""
    b = GraphBuilder(f"{inst.name}.alone")
    xs = [b.input(f"x{k}", t) for k, t in enumerate(inst.types)]
    outs = composites.emit(b, inst.name, xs, **inst.attrs)
    outputs = [(f"y{k}", y) for k, y in enumerate(outs)]
    if with_loss:
        outputs.append(("loss", b.sum(b.mul(outs[0], b.input("c", outs[0].type)))))
    return b.finish(outputs), [x.id for x in xs if x.dtype.is_float]


def _value(rng: np.random.Generator, t: TensorType) -> np.ndarray:
    """A value of type `t`: floats N(0, 1); integers 0 or 1 (a class index of any class count, a seed, a
    step); booleans at random."""
    shape = tuple(int(d) for d in t.shape)
    if t.dtype is DType.BOOL:
        return rng.random(shape) < 0.5
    if t.dtype.is_int:
        return rng.integers(0, 2, shape).astype(np_dtype(t.dtype))
    return rng.standard_normal(shape).astype(np_dtype(t.dtype))


def _feeds(graph: Graph, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {n.attrs["name"]: _value(rng, n.type) for n in graph.nodes if n.op is Op.INPUT}


@pytest.mark.parametrize("inst", INSTANCES, ids=IDS)
def test_decomposition_types_equal_the_shape_rule(inst):
    inferred = COMPOSITES[inst.name].infer(ShapeContext(), list(inst.types), inst.node.attrs)
    inferred = inferred if isinstance(inferred, tuple) else (inferred,)
    assert inferred == inst.node.types
    decomposed = expanded(inst.node, inst.types)
    assert tuple(decomposed.output(f"y{k}").type for k in range(len(inferred))) == inferred
    assert not has_composites(decomposed)


@pytest.mark.parametrize("inst", [i for i in INSTANCES if COMPOSITES[i.name].has_vjp(i.node.attrs)],
                         ids=[IDS[k] for k, i in enumerate(INSTANCES) if COMPOSITES[i.name].has_vjp(i.node.attrs)])
def test_own_vjp_equals_autodiff_of_the_decomposition(inst):
    """The gradient of every float operand the own VJP gives one for: as autodiff finds it through the
    decomposition (an operand the VJP declines, such as a mask made of booleans, gets none)."""
    graph, wrt = _alone(inst, with_loss=True)
    loss = graph.output("loss").id
    own_graph, own, _ = grad(graph, loss, wrt)
    assert any(n.op is Op.COMPOSITE and n.attrs["composite"] == inst.name for n in own_graph.nodes)   # kept whole
    plain = decompose(graph)
    ref_graph, ref, _ = grad(plain, plain.output("loss").id, wrt)
    given = [w for w in wrt if own[w] is not None]
    assert given, "the own VJP gives no gradient"
    feeds = _feeds(graph, 7)
    got = evaluate(own_graph.with_outputs([(f"d{w}", own[w]) for w in given]), feeds, {})
    want = evaluate(ref_graph.with_outputs([(f"d{w}", ref[w]) for w in given if ref[w] is not None]), feeds, {})
    for w in given:
        expect = want.get(f"d{w}", np.zeros(graph.node(w).shape))
        np.testing.assert_allclose(got[f"d{w}"], expect, rtol=1e-10, atol=1e-12, err_msg=graph.node(w).attrs["name"])


@pytest.mark.parametrize("inst", INSTANCES, ids=IDS)
def test_flops_equal_the_decompositions(inst):
    graph, _ = _alone(inst, with_loss=False)
    plain = decompose(graph)
    assert not has_composites(plain)
    assert total_flops(graph, {}) == total_flops(plain, {}) > 0


@pytest.mark.parametrize("inst", INSTANCES, ids=IDS)
def test_evaluate_equals_the_executable(inst):
    """The interpreter's definition (the decomposition, as built) and the NumPy backend's run (lowered, then
    optimized) agree on every result."""
    graph, _ = _alone(inst, with_loss=False)
    feeds = _feeds(graph, 3)
    want = evaluate(graph, feeds, {})
    exe = Executable(graph)
    assert not has_composites(exe.graph)
    got = exe.run(feeds, {})
    assert set(got) == set(want)
    for k, v in want.items():
        np.testing.assert_allclose(got[k], v, rtol=1e-12, atol=1e-14, err_msg=k)


# ---- whole graphs ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("program", PROGRAMS)
def test_decompose_and_lower_leave_no_composite(program):
    for graph in _graphs(_spec(PROGRAMS[program])):
        verify(graph)
        for plain in (decompose(graph), pipeline.lower(graph)):
            assert not has_composites(plain)
            verify(plain)
            assert plain.output_names == graph.output_names


def _scan_over_attention() -> Graph:
    """A scan whose body attends from the carry [5, 6] to one step of the xs [7, 6] (values: a const),
    carrying the attended values and stacking each row's log-sum-exp."""
    f64 = DType.F64
    body = GraphBuilder("body")
    h = body.input("h", TensorType(f64, (5, 6)))
    x = body.input("x", TensorType(f64, (7, 6)))
    v = body.input("v", TensorType(f64, (7, 6)))
    out, lse = composites.emit(body, "sdpa", (h, x, v), causal=True, scale=0.5, masked=False, bias_grad=False,
                               dropout=0.0)
    b = GraphBuilder("outer")
    h0, xs, v0 = (b.input(n, TensorType(f64, s)) for n, s in (("h0", (5, 6)), ("xs", (4, 7, 6)), ("v", (7, 6))))
    (last,), (rows,) = b.scan(body.finish([("h", out), ("lse", lse)]), [h0], [xs], [v0])
    return b.finish([("last", last), ("rows", rows)])


def test_decompose_reaches_into_scan_bodies():
    graph = _scan_over_attention()
    assert has_composites(graph) and not any(n.op is Op.COMPOSITE for n in graph.nodes)   # only in the body
    verify(graph)
    plain = decompose(graph)
    assert not has_composites(plain)
    verify(plain)
    feeds = _feeds(graph, 5)
    want = evaluate(graph, feeds, {})
    got = evaluate(plain, feeds, {})
    for k in ("last", "rows"):
        np.testing.assert_allclose(got[k], want[k], rtol=1e-12, err_msg=k)
    # the loop by hand: the composite's definition, step by step
    h = feeds["h0"]
    for t in range(4):
        scores = np.where(np.tril(np.ones((5, 7), bool)), h @ feeds["xs"][t].T * 0.5, -np.inf)
        lse = np.log(np.exp(scores).sum(-1))
        h = np.exp(scores - lse[:, None]) @ feeds["v"]
        np.testing.assert_allclose(want["rows"][t], lse, rtol=1e-12)
    np.testing.assert_allclose(want["last"], h, rtol=1e-12)


def test_printer_shows_a_composite_by_name():
    inst = next(i for i in INSTANCES if i.name == "sdpa" and i.node.attrs["causal"])
    graph, _ = _alone(inst, with_loss=False)
    line = format_node(next(n for n in graph.nodes if n.op is Op.COMPOSITE))
    assert " = sdpa(%0, %1, %2" in line and "composite" not in line
    assert "causal=true" in line and f"scale={inst.node.attrs['scale']!r}" in line
    text = format_graph(graph)
    assert "result(" in text and "composite(" not in text


def test_verify_rejects_a_composite_of_the_wrong_type():
    inst = next(i for i in INSTANCES if i.name == "cross_entropy")
    graph, _ = _alone(inst, with_loss=False)
    wrong = [Node(n.id, n.op, n.inputs, TensorType(n.dtype, n.shape + (1,)), n.attrs) if n.op is Op.COMPOSITE else n
             for n in graph.nodes]
    with pytest.raises(IRError, match="type f64"):
        verify(Graph(graph.name, tuple(wrong), graph.outputs))


def test_verify_rejects_a_result_of_a_node_with_one_result():
    b = GraphBuilder("bad")
    x = b.input("x", TensorType(DType.F64, (3,)))
    y = b.exp(x)
    part = b.emit(Op.RESULT, (y,), {"index": 0})
    with pytest.raises(IRError, match="reads a result of a node with one result"):
        verify(b.finish([("part", part)]))


def test_torch_table_runs_composites_of_a_symbolic_graph():
    """`dln bench` runs the step graph on torch's table with concrete sizes: each composite is decomposed over
    its operands' actual shapes (not held to the node's symbolic result types), as the interpreter finds."""
    from dln.runtime.torch_graph import make_runner

    model = dln.compile("""model m() {
        input x: f64[B, T, 6]
        input target: i64[B, T]
        h = scaled_dot_product_attention(x, x, x, causal = true)
        loss = cross_entropy(h, target)
        output loss
    }""", backend="numpy")
    graph = pipeline.forward_graph(model.spec, ["loss"])
    assert {n.attrs["composite"] for n in graph.nodes if n.op is Op.COMPOSITE} == {"sdpa", "cross_entropy"}
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal((2, 3, 6)), "target": rng.integers(0, 6, (2, 3))}
    env = {"B": 2, "T": 3}
    import torch

    got = make_runner(graph, env)({k: torch.from_numpy(v) for k, v in feeds.items()})["loss"]
    np.testing.assert_allclose(got.numpy(), evaluate(graph, feeds, env)["loss"], rtol=1e-12)


def test_verify_rejects_a_result_of_a_composite_with_one_result():
    """cross_entropy has one result: a `result` node reading it is malformed, composite or not."""
    b = GraphBuilder("bad")
    logits = b.input("logits", TensorType(DType.F64, (3, 4)))
    target = b.input("target", TensorType(DType.I64, (3,)))
    loss, = composites.emit(b, "cross_entropy", (logits, target), label_smoothing=0.0)
    part = b.emit(Op.RESULT, (loss,), {"index": 0})
    with pytest.raises(IRError, match="reads a result of a node with one result"):
        verify(b.finish([("part", part)]))
