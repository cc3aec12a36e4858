"""ONNX export of dln's recurrent layers as ONNX's `RNN`, `LSTM` and `GRU` ops.

dln's `rnn`, `lstm` and `gru` (dln.compiler.builtins.recurrent) are, per layer and direction, the
input projection of every step as one product before the loop and a `scan` whose body is the cell.
A scan is recognized as a layer when

* its body is exactly the cell the built-in writes (compared node for node with a body the
  built-in's own `_body` makes for the same kind and sizes), and
* its sequence is `x @ W_ihᵀ (+ bias)` over a time-major x [T, B, D],

and then becomes one ONNX op over x, with torch's gate blocks reordered to ONNX's (LSTM i f g o ->
i o f c, GRU r z n -> z r h) by slices of the weights, in the graph: the initializers stay the
state_dict's.  The biases dln sums before the loop are ONNX's input bias `Wb`; ONNX's recurrent
bias `Rb` is zero, but a GRU's `b_hn` (scaled by the reset gate: `linear_before_reset`).  Anything
else stays an ONNX `Scan` (export_scan).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dln.compiler import pipeline
from dln.compiler.emit import GraphBuilder
from dln.compiler.ir import Graph, Node, Op, TensorType
from dln.runtime.onnx.export import NUMPY, Exporter, Lowering
from dln.runtime.onnx.export_ops import results_read
from dln.runtime.onnx.export_patterns import recognizer

# ONNX's gate order as blocks of torch's.
ORDER = {"lstm": (0, 3, 1, 2), "gru": (1, 0, 2), "rnn_tanh": (0,), "rnn_relu": (0,)}
ONNX_OP = {"lstm": "LSTM", "gru": "GRU", "rnn_tanh": "RNN", "rnn_relu": "RNN"}


def _canonical(graph: Graph) -> tuple[Any, ...]:
    """The graph with node ids replaced by positions: equal for two graphs computing alike."""
    position = {n.id: k for k, n in enumerate(graph.nodes)}
    nodes = tuple((n.op, tuple(position[i] for i in n.inputs), n.types,
                   tuple((k, v) for k, v in n.attrs.items() if k != "name")) for n in graph.nodes)
    return nodes, tuple((name, position[i]) for name, i in graph.outputs)


def _cell(body: Graph) -> str | None:
    """The kind of cell (`lstm`, `gru`, `rnn_tanh`, `rnn_relu`) `body` is, if it is one."""
    from dln.compiler.builtins.recurrent import _body

    inputs = [n for n in body.nodes if n.op is Op.INPUT]
    mine = _canonical(body)
    for kind in ORDER:
        carries = 2 if kind == "lstm" else 1
        consts = inputs[carries + 1:]
        if not 1 <= len(consts) <= (2 if kind == "gru" else 1):
            continue
        outer = GraphBuilder("reference")
        tensors = [outer.input(f"c{k}", n.type) for k, n in enumerate(consts)]
        step = inputs[carries].type
        projected = TensorType(step.dtype, (1,) + tuple(step.shape))
        try:
            reference = _body(outer, kind, body.name, inputs[0].type, projected, tensors)
        except Exception:   # sizes that do not fit this kind: not it
            continue
        if mine in (_canonical(reference), _canonical(pipeline.optimize(reference))):
            return kind
    return None


def _projection(graph: Graph, seq: Node) -> tuple[int, int, int | None] | None:
    """(x [T, B, D], W_ih [G*H, D], bias [G*H] or None) of `reshape(x' @ W_ihᵀ) (+ broadcast(bias))`,
    x' being x [T, B, D] flattened to [T*B, D]."""
    bias = None
    if seq.op is Op.ADD:
        a, b = (graph.node(i) for i in seq.inputs)
        if a.op is not Op.RESHAPE:
            a, b = b, a
        if b.op is Op.BROADCAST:
            b = graph.node(b.inputs[0])
        if a.op is not Op.RESHAPE or b.type.rank != 1:
            return None
        seq, bias = a, b.id
    if seq.op is not Op.RESHAPE or seq.type.rank != 3:
        return None
    mm = graph.node(seq.inputs[0])
    if mm.op is not Op.MATMUL or mm.type.rank != 2:
        return None
    flat, w = (graph.node(i) for i in mm.inputs)
    if w.op is not Op.PERMUTE or tuple(w.attrs["perm"]) != (1, 0) or flat.op is not Op.RESHAPE:
        return None
    x = graph.node(flat.inputs[0])
    if x.type.rank != 3 or tuple(x.shape[:2]) != tuple(seq.shape[:2]):
        return None
    return x.id, w.inputs[0], bias


@recognizer(Op.SCAN)
def recurrent_layer(graph: Graph, users: dict[int, list[int]], n: Node) -> Lowering | None:
    if n.attrs["xs"] != 1:
        return None
    kind = _cell(n.attrs["body"])
    if kind is None:
        return None
    carries = n.attrs["carries"]
    found = _projection(graph, graph.node(n.inputs[carries]))
    if found is None:
        return None
    x, w_ih, bias = found
    w_hh_t = graph.node(n.inputs[carries + 1])
    b_hn = n.inputs[carries + 2] if len(n.inputs) > carries + 2 else None
    # W_hh itself, where the body's const is its transpose (as the built-in writes it)
    w_hh = w_hh_t.inputs[0] if w_hh_t.op is Op.PERMUTE else None
    # Zero initial states are ONNX's default: left out
    states = [None if _zero_fill(graph.node(i)) else i for i in n.inputs[:carries]]
    reads = (x, w_ih, w_hh if w_hh is not None else w_hh_t.id, *(i for i in states if i is not None)) + \
        ((bias,) if bias is not None else ()) + ((b_hn,) if b_hn is not None else ())

    def write(ex: Exporter, node: Node) -> list[str]:
        hidden = node.types[0].shape[-1]
        order = ORDER[kind]
        w = _blocks(ex, ex.value(w_ih), order, hidden)
        r = ex.value(w_hh) if w_hh is not None else ex.op("Transpose", [ex.value(w_hh_t.id)], perm=[1, 0])
        r = _blocks(ex, r, order, hidden)
        inputs = [ex.value(x), w, r]
        if bias is not None or b_hn is not None:
            width = len(order) * hidden
            zeros = ex.op("ConstantOfShape", [ex.ints([1, width])], value=_zero(node))
            wb = _blocks(ex, ex.value(bias), order, hidden, vector=True) if bias is not None else zeros
            if b_hn is not None:   # Rb = [0 (z), 0 (r), b_hn]
                rb = ex.op("Concat", [ex.op("ConstantOfShape", [ex.ints([1, 2 * hidden])], value=_zero(node)),
                                      ex.op("Unsqueeze", [ex.value(b_hn), ex.ints([0])])], axis=1)
            else:
                rb = zeros
            inputs.append(ex.op("Concat", [wb, rb], axis=1, hint="bias"))
        else:
            inputs.append("")
        inputs.append("")   # sequence_lens: every sequence runs T steps
        inputs += [ex.op("Unsqueeze", [ex.value(s), ex.ints([0])], hint="initial") if s is not None else ""
                   for s in states]
        while inputs[-1] == "":
            inputs.pop()
        attrs = {"hidden_size": int(hidden), "direction": "reverse" if node.attrs["reverse"] else "forward"}
        if kind == "rnn_relu":
            attrs["activations"] = ["Relu"]
        if kind == "gru":
            attrs["linear_before_reset"] = 1
        outs = ex.op(ONNX_OP[kind], inputs, outputs=2 + (kind == "lstm"), hint=node.name or kind, **attrs)
        y, finals = outs[0], outs[1:]
        read = results_read(ex, node)
        finals = [ex.op("Squeeze", [f, ex.ints([0])], hint="final") if k in read else f for k, f in enumerate(finals)]
        return finals + [ex.op("Squeeze", [y, ex.ints([1])], hint="ys")]
    return Lowering(reads, write)


def _zero_fill(n: Node) -> bool:
    return n.op is Op.CONST and n.attrs["value"] == 0


def _zero(n: Node) -> Any:
    from onnx import numpy_helper

    return numpy_helper.from_array(np.zeros(1, NUMPY[n.dtype]))


def _blocks(ex: Exporter, w: str, order: tuple[int, ...], hidden: int, vector: bool = False) -> str:
    """`w` ([G*H, ...] or a [G*H] bias) with its gate blocks in ONNX's order, and a leading axis of one
    direction: [1, G*H, ...] ([1, G*H] for a bias)."""
    if order != tuple(range(len(order))):
        parts = ex.op("Split", [w, ex.ints([hidden] * len(order))], outputs=len(order), hint="gates", axis=0)
        w = ex.op("Concat", [parts[k] for k in order], axis=0)
    return ex.op("Unsqueeze", [w, ex.ints([0])], hint="weights" if not vector else "bias")
