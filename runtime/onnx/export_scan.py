"""ONNX export of `scan`, which has no single ONNX counterpart (nor has `rand`: export_random).

**scan** becomes ONNX `Scan`: the same loop (carries, one step of each sequence, results stacked on a
new axis 0, `reverse` as the scan directions).  Its body is written by the same tables as the model;
the body's `const` inputs are the outer graph's values, which an ONNX body reads by name.  A scan
with no sequence input scans an `iota` of its length, which its body ignores.  dln's rnn, lstm and
gru layers are such scans (their input projection hoisted out of the loop), so they export as
`Scan` rather than as ONNX's `RNN`/`LSTM`/`GRU`.
"""

from __future__ import annotations

import numpy as np

from dln.compiler.ir import DType, Graph, Node, Op
from dln.runtime.onnx.export import ExportError, Exporter, Lowering, emit_graph, value_info
from dln.runtime.onnx.export_ops import PRIMITIVES

# ---- scan ---------------------------------------------------------------------------------------------------------


def _scan_lowering(graph: Graph, n: Node) -> Lowering:
    return Lowering(n.inputs, _scan)


def _scan(ex: Exporter, n: Node) -> list[str]:
    from onnx import helper

    body: Graph = n.attrs["body"]
    carries, xs = n.attrs["carries"], n.attrs["xs"]
    outer = [ex.value(i) for i in n.inputs]
    inner = ex.child()
    inputs = [m for m in body.nodes if m.op is Op.INPUT]
    if len(inputs) != len(n.inputs):
        raise ExportError(n, "a scan whose body's inputs do not match its operands")
    for k, m in enumerate(inputs):
        if k < carries + xs:
            name = inner.fresh(m.attrs["name"])
            inner.inputs.append(value_info(name, m.dtype, m.shape))
            inner.values[m.id] = name
        else:
            inner.values[m.id] = outer[k]   # a const: the outer value, read by name
    sequences = outer[carries:carries + xs]
    if xs == 0:   # ONNX's Scan needs a sequence: the steps' numbers, unread
        steps = ex.op("Range", [ex.const(np.int64(0)), ex.scalar_dim(n.attrs["length"]), ex.const(np.int64(1))],
                      hint="steps")
        sequences = [steps]
        inner.inputs.append(value_info(inner.fresh("step"), DType.I64, ()))
    emit_graph(inner, body, [i for _, i in body.outputs])
    produced = {o for node in inner.nodes for o in node.output}
    body_outputs, seen = [], set()
    for (name, i), m in zip(body.outputs, (body.node(i) for _, i in body.outputs)):
        value = inner.value(i)
        if value not in produced or value in seen:   # an input or outer value passed through, or a repeat
            value = inner.op("Identity", [value], hint=name)
        seen.add(value)
        body_outputs.append(value_info(value, m.dtype, m.shape))
    proto = helper.make_graph(inner.nodes, ex.fresh(body.name.replace(".", "_")), inner.inputs, body_outputs)
    ys = len(body.outputs) - carries
    direction = 1 if n.attrs["reverse"] else 0
    return ex.op("Scan", outer[:carries] + sequences, outputs=carries + ys, hint=n.name or "scan", body=proto,
                 num_scan_inputs=len(sequences), scan_input_directions=[direction] * len(sequences),
                 scan_output_directions=[direction] * ys if ys else None)


PRIMITIVES[Op.SCAN] = _scan_lowering

