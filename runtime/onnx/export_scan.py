"""ONNX export of the two ops with no single ONNX counterpart: `scan` and `rand`.

**scan** becomes ONNX `Scan`: the same loop (carries, one step of each sequence, results stacked on a
new axis 0, `reverse` as the scan directions).  Its body is written by the same tables as the model;
the body's `const` inputs are the outer graph's values, which an ONNX body reads by name.  A scan
with no sequence input scans an `iota` of its length, which its body ignores.  dln's rnn, lstm and
gru layers are such scans (their input projection hoisted out of the loop), so they export as
`Scan` rather than as ONNX's `RNN`/`LSTM`/`GRU`.

**rand** (`randn_like` and friends, which a model may use in evaluation mode too) is Philox-4x32-10
written out in ONNX integer ops, bit for bit as dln.runtime.philox computes it: element i of stream
s at step t is the first output word for the counter (i, s, t, 0) under the key `seed`.  The seed and
step are the graph's int64 inputs `rng.seed` and `rng.step`, as dln's runs feed them.
"""

from __future__ import annotations

import numpy as np

from dln.compiler.ir import DType, Graph, Node, Op
from dln.compiler.symbolic import numel
from dln.runtime import philox
from dln.runtime.onnx.export import ExportError, Exporter, Lowering, emit_graph, onnx_type, value_info
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


# ---- rand -------------------------------------------------------------------------------------------------------

def _rand(ex: Exporter, n: Node, args: list[str]) -> str:
    """U[0, 1) of n's shape: philox.uniform written in ONNX (uint64 words holding 32-bit values)."""
    from onnx import TensorProto

    seed, step = args
    u64 = TensorProto.UINT64

    def word(v: int) -> str:
        return ex.const(np.uint64(v))

    mask = word(0xFFFFFFFF)
    as_u64 = ex.op("Cast", [seed], to=u64)
    k0 = ex.op("BitwiseAnd", [as_u64, mask], hint="key")
    k1 = ex.op("BitwiseAnd", [ex.op("BitShift", [as_u64, word(32)], direction="RIGHT"), mask], hint="key")
    count = ex.op("Range", [ex.const(np.int64(0)), ex.scalar_dim(numel(n.shape)), ex.const(np.int64(1))])
    x0 = ex.op("Cast", [count], to=u64, hint="counter")
    x1 = word(n.attrs["stream"] & 0xFFFFFFFF)
    x2 = ex.op("BitwiseAnd", [ex.op("Cast", [step], to=u64), mask], hint="counter")
    x3 = word(0)
    shift = word(32)
    for r in range(10):
        key0 = k0 if r == 0 else ex.op("BitwiseAnd", [ex.op("Add", [k0, word(r * philox.KEY_A)]), mask])
        key1 = k1 if r == 0 else ex.op("BitwiseAnd", [ex.op("Add", [k1, word(r * philox.KEY_B)]), mask])
        p0 = ex.op("Mul", [x0, word(int(philox.ROUND_A))])
        p2 = ex.op("Mul", [x2, word(int(philox.ROUND_B))])
        x0, x1, x2, x3 = (
            ex.op("BitwiseXor", [ex.op("BitwiseXor", [ex.op("BitShift", [p2, shift], direction="RIGHT"), x1]), key0]),
            ex.op("BitwiseAnd", [p2, mask]),
            ex.op("BitwiseXor", [ex.op("BitwiseXor", [ex.op("BitShift", [p0, shift], direction="RIGHT"), x3]), key1]),
            ex.op("BitwiseAnd", [p0, mask]))
    # The word as an int32, negatives complemented (~b = 2**32 - 1 - b for the word b >= 2**31), scaled.
    bits = ex.op("Cast", [x0], to=TensorProto.INT64)
    high = ex.op("GreaterOrEqual", [bits, ex.const(np.int64(2 ** 31))])
    bits = ex.op("Where", [high, ex.op("Sub", [ex.const(np.int64(2 ** 32 - 1)), bits]), bits])
    uniform = ex.op("Mul", [ex.op("Cast", [bits], to=TensorProto.FLOAT), ex.const(philox.UNIFORM_SCALE)])
    if n.dtype is not DType.F32:
        uniform = ex.op("Cast", [uniform], to=onnx_type(n.dtype))
    return ex.op("Reshape", [uniform, ex.shape(n.shape)], hint=n.name or "rand")


PRIMITIVES[Op.RAND] = lambda graph, n: Lowering(n.inputs, lambda ex, node: _rand(ex, node, [ex.value(i) for i in
                                                                                          node.inputs]))
