"""ONNX export of dln's random draws: calls of model-local functions in the domain `ai.dln`.

A `rand` node (U[0, 1) from stream s, what `rand_like`, `bernoulli` and dropout draw) becomes one
call `ai.dln.Uniform(rng.seed, rng.step, shape)` with the attributes `stream = s` and `dtype` (an
ONNX element type); the Box-Muller formula of `randn_like` over its two draws (streams s and s + 1)
becomes one call `ai.dln.Normal(rng.seed, rng.step, shape)` with `stream = s`.  So the graph reads
as the model does (`Add(x, Mul(0.2, Normal(...)))`), and `dln import` turns a call back into the
built-in that drew it.

The functions' bodies are the generator itself, Philox-4x32-10 in ONNX integer ops (`Mul`,
`BitShift`, `BitwiseXor`, `BitwiseAnd` on uint64 words holding 32-bit values), bit for bit as
dln.runtime.philox computes it: element i of stream s at step t is the first output word for the
counter (i, s, t, 0) under the key `seed`, turned into a float as `tl.random.uint_to_uniform_float`
does.  Both draw through the private function `Philox`.  A runtime that runs model-local functions
(onnxruntime inlines them) therefore draws dln's numbers: a run with dln's seed and step as the
graph's int64 inputs `rng.seed`, `rng.step` gives what dln's own run gives.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from dln.compiler.ir import Graph, Node, Op
from dln.runtime import philox
from dln.runtime.onnx.export import Exporter, Lowering, onnx_type
from dln.runtime.onnx.export_ops import PRIMITIVES
from dln.runtime.onnx.export_patterns import recognizer

DOMAIN = "ai.dln"
DOMAIN_VERSION = 1
# randn_like's Box-Muller constants (dln.compiler.builtins.tensor_ops.randn_like): log's floor, the
# radius's factor, the angle's.
FLOOR, RADIUS, TURN = 1e-7, -2.0, 2.0 * math.pi


# ---- the calls ------------------------------------------------------------------------------------------------

def _uniform_lowering(graph: Graph, n: Node) -> Lowering:
    return Lowering(n.inputs, lambda ex, node: draw(ex, node, "Uniform"))


PRIMITIVES[Op.RAND] = _uniform_lowering


def draw(ex: Exporter, n: Node, function: str) -> str:
    """A call of `ai.dln.<function>` drawing `rand` node n's shape and type from n's stream (the first
    of them, for `Normal`)."""
    define(ex.root, function)
    seed, step = n.inputs
    return ex.op(function, [ex.value(seed), ex.value(step), ex.shape(n.shape)], hint=n.name or function.lower(),
                 domain=DOMAIN, stream=int(n.attrs["stream"]), dtype=onnx_type(n.dtype))


@recognizer(Op.MUL)
def _normal(graph: Graph, users: dict[int, list[int]], n: Node) -> Lowering | None:
    """`sqrt(log(maximum(u1, 1e-7)) * -2) * cos(u2 * 2 pi)` of two draws from consecutive streams:
    randn_like, one `Normal` call.  (The nodes inside are still written where something else reads them.)"""
    parts = _either(graph, n, Op.SQRT, Op.COS)
    if parts is None:
        return None
    radius, angle = parts
    u1 = _chain(graph, graph.node(radius.inputs[0]), [(Op.MUL, RADIUS), (Op.LOG, None), (Op.MAXIMUM, FLOOR)])
    u2 = _chain(graph, graph.node(angle.inputs[0]), [(Op.MUL, TURN)])
    if u1 is None or u2 is None or u1.op is not Op.RAND or u2.op is not Op.RAND:
        return None
    if u2.attrs["stream"] != u1.attrs["stream"] + 1 or u1.inputs != u2.inputs or \
            not u1.type == u2.type == n.type:
        return None
    return Lowering(u1.inputs, lambda ex, node: draw(ex, u1, "Normal"))


def _either(graph: Graph, n: Node, first: Op, second: Op) -> tuple[Node, Node] | None:
    """The operands of binary `n` when they are of ops `first` and `second`, in either order."""
    a, b = (graph.node(i) for i in n.inputs)
    if (a.op, b.op) == (first, second):
        return a, b
    if (a.op, b.op) == (second, first):
        return b, a
    return None


def _chain(graph: Graph, n: Node, steps: list[tuple[Op, float | None]]) -> Node | None:
    """Follow `steps` down from `n`: each an op, and for a binary one the constant it takes with the
    next operand (either order); the operand reached at the end."""
    for op, constant in steps:
        if n.op is not op:
            return None
        if constant is None:
            n = graph.node(n.inputs[0])
            continue
        a, b = (graph.node(i) for i in n.inputs)
        for x, c in ((a, b), (b, a)):
            if c.op is Op.CONST and c.attrs["value"] == constant:
                n = x
                break
        else:
            return None
    return n


# ---- the functions ----------------------------------------------------------------------------------------------

def define(root: Exporter, name: str) -> None:
    """Add `ai.dln.<name>` (and the functions it calls) to the model's functions, once."""
    if name in root.functions:
        return
    if name != "Philox":
        define(root, "Philox")
    root.functions[name] = {"Philox": _philox, "Uniform": _uniform, "Normal": _normal_body}[name](root.opset)


def _function(opset: int, name: str, body: Exporter, inputs: list[str], outputs: list[str],
              attributes: list[str], doc: str) -> Any:
    from onnx import helper

    imports = [helper.make_opsetid("", opset), helper.make_opsetid(DOMAIN, DOMAIN_VERSION)]
    return helper.make_function(DOMAIN, name, inputs, outputs, body.nodes, imports, attributes, doc_string=doc)


def _attribute(node: Any, name: str, ref: str, kind: int) -> Any:
    """Set attribute `name` of `node` to the calling node's attribute `ref`."""
    from onnx import AttributeProto

    attr = AttributeProto(name=name, ref_attr_name=ref, type=kind)
    node.attribute.append(attr)
    return node


def _philox(opset: int) -> Any:
    """Philox(seed, step, stream, n) -> float32[n]: philox.uniform, uint64 words holding 32-bit values."""
    from onnx import TensorProto

    ex = Exporter(opset)
    u64 = TensorProto.UINT64

    def word(v: int) -> str:
        return ex.const(np.uint64(v), hint="word")

    mask, shift = word(0xFFFFFFFF), word(32)

    def low(x: str, hint: str = "") -> str:
        return ex.op("BitwiseAnd", [x, mask], hint=hint)

    def high(x: str, hint: str = "") -> str:
        """The high word, masked: a runtime that holds uint64 in int64 may shift arithmetically."""
        return low(ex.op("BitShift", [x, shift], direction="RIGHT"), hint)

    seed = ex.op("Cast", ["seed"], to=u64)
    k0, k1 = low(seed, "key"), high(seed, "key")
    count = ex.op("Range", [ex.const(np.int64(0)), "n", ex.const(np.int64(1))])
    x0, x1 = ex.op("Cast", [count], to=u64, hint="counter"), low(ex.op("Cast", ["stream"], to=u64), "counter")
    x2, x3 = low(ex.op("Cast", ["step"], to=u64), "counter"), word(0)
    for r in range(10):
        key0 = k0 if r == 0 else low(ex.op("Add", [k0, word(r * philox.KEY_A)]), "key")
        key1 = k1 if r == 0 else low(ex.op("Add", [k1, word(r * philox.KEY_B)]), "key")
        p0 = ex.op("Mul", [x0, word(int(philox.ROUND_A))])
        p2 = ex.op("Mul", [x2, word(int(philox.ROUND_B))])
        x0, x1, x2, x3 = (
            ex.op("BitwiseXor", [ex.op("BitwiseXor", [high(p2), x1]), key0]),
            low(p2),
            ex.op("BitwiseXor", [ex.op("BitwiseXor", [high(p0), x3]), key1]),
            low(p0))
    # The word as an int32, negatives complemented (~b = 2**32 - 1 - b for the word b >= 2**31), scaled.
    bits = ex.op("Cast", [x0], to=TensorProto.INT64)
    top = ex.op("GreaterOrEqual", [bits, ex.const(np.int64(2 ** 31))])
    bits = ex.op("Where", [top, ex.op("Sub", [ex.const(np.int64(2 ** 32 - 1)), bits]), bits])
    ex.nodes.append(_node("Mul", [ex.op("Cast", [bits], to=TensorProto.FLOAT), ex.const(philox.UNIFORM_SCALE)],
                          "u"))
    return _function(opset, "Philox", ex, ["seed", "step", "stream", "n"], ["u"], [],
                     "U[0, 1) as float32[n]: element i is Philox-4x32-10's first word for the counter (i, stream, "
                     "step, 0) under the key seed, as dln.runtime.philox.uniform")


def _node(op_type: str, inputs: list[str], output: str, **attrs: Any) -> Any:
    from onnx import helper

    return helper.make_node(op_type, inputs, [output], **attrs)


def _stream(ex: Exporter) -> str:
    """The calling node's `stream` attribute as an int64 scalar."""
    from onnx import AttributeProto

    name = ex.fresh("stream")
    ex.nodes.append(_attribute(_node("Constant", [], name), "value_int", "stream", AttributeProto.INT))
    return name


def _typed(ex: Exporter, x: str) -> str:
    """`x` cast to the calling node's `dtype`."""
    from onnx import AttributeProto

    name = ex.fresh("cast")
    ex.nodes.append(_attribute(_node("Cast", [x], name), "to", "dtype", AttributeProto.INT))
    return name


def _count(ex: Exporter) -> str:
    return ex.op("ReduceProd", ["shape"], hint="n", keepdims=0)


def _uniform(opset: int) -> Any:
    """Uniform(seed, step, shape) <stream, dtype>: rand_like, one stream."""
    ex = Exporter(opset)
    u = ex.op("Philox", ["seed", "step", _stream(ex), _count(ex)], hint="u", domain=DOMAIN)
    ex.nodes.append(_node("Reshape", [_typed(ex, u), "shape"], "y"))
    return _function(opset, "Uniform", ex, ["seed", "step", "shape"], ["y"], ["stream", "dtype"],
                     "U[0, 1) of the given shape from dln's stream `stream`, in type `dtype`: dln's rand_like")


def _normal_body(opset: int) -> Any:
    """Normal(seed, step, shape) <stream, dtype>: randn_like, Box-Muller over the streams `stream` and
    `stream + 1`, in `dtype` with dln's constants."""
    ex = Exporter(opset)
    first = _stream(ex)
    second = ex.op("Add", [first, ex.const(np.int64(1))], hint="stream")
    n = _count(ex)
    u1, u2 = (_typed(ex, ex.op("Philox", ["seed", "step", s, n], hint="u", domain=DOMAIN)) for s in (first, second))

    def constant(v: float) -> str:
        return ex.op("CastLike", [ex.const(np.float64(v)), u1])

    radius = ex.op("Sqrt", [ex.op("Mul", [ex.op("Log", [ex.op("Max", [u1, constant(FLOOR)])]), constant(RADIUS)])])
    angle = ex.op("Cos", [ex.op("Mul", [u2, constant(TURN)])])
    ex.nodes.append(_node("Reshape", [ex.op("Mul", [radius, angle]), "shape"], "y"))
    return _function(opset, "Normal", ex, ["seed", "step", "shape"], ["y"], ["stream", "dtype"],
                     "standard normal numbers of the given shape from dln's streams `stream` and `stream + 1`, in "
                     "type `dtype`: dln's randn_like (Box-Muller: sqrt(-2 log max(u1, 1e-7)) cos(2 pi u2))")

