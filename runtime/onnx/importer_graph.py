"""The ONNX graph as the importer reads it: plain nodes, the values known before any run, and the
layer patterns exporters spell with several nodes, rewritten into one node each.

`read_nodes` turns the protobuf nodes into `INode`s.  `known_constants` finds the values that
need no input (initializers, `Constant`s and `Identity`s of those — torch's exporter stores two
equal weights once and names the second with an `Identity`).  `rewrite` is a list of pure passes
`list[INode] -> list[INode]`, each replacing one pattern by a node whose op type starts with
`dln.` (a `.dln` layer the handlers in importer_ops.py know): `MatMul` + `Add` of a weight and a
bias is a linear layer (also between the reshapes that flatten its input to a matrix and back), so is
an embedding's Gather between such reshapes, the erf formula of GELU is `gelu`, recurrent layers one after the other
are one layer of several, a recurrent layer between two `Transpose`s is batch-first,
`GlobalAveragePool` + `Flatten` is `global_avgpool`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper


@dataclass(frozen=True)
class INode:
    """One node: its op type, name, input and output value names ('' for an absent optional one),
    attributes as Python values, and the protobuf node it came from (None for a rewritten one)."""

    op: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: dict[str, Any] = field(default_factory=dict)
    proto: onnx.NodeProto | None = None

    def attr(self, key: str, default: Any = None) -> Any:
        return self.attrs.get(key, default)

    def input(self, i: int) -> str:
        """The name of input `i`, '' when it is absent."""
        return self.inputs[i] if i < len(self.inputs) else ""


def _attribute(a: onnx.AttributeProto) -> Any:
    value = helper.get_attribute_value(a)
    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        return [v.decode("utf-8", "replace") for v in value]
    return value


def read_nodes(graph: onnx.GraphProto) -> list[INode]:
    nodes = []
    for k, n in enumerate(graph.node):
        name = n.name or (n.output[0] if n.output else f"{n.op_type}_{k}")
        nodes.append(INode(n.op_type, name, tuple(n.input), tuple(n.output),
                           {a.name: _attribute(a) for a in n.attribute}, n))
    return nodes


def known_constants(graph: onnx.GraphProto, nodes: list[INode]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The values known before any run, by value name: initializers, `Constant`s, and what nodes of
    those alone compute (torch's exporter without constant folding writes `Transpose(fc.weight)`).
    Also the initializer each one comes from through one-input nodes, which names its parameter."""
    from dln.runtime.onnx.importer_fold import CannotFold, fold

    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    origin = {name: name for name in consts}
    for n in nodes:
        if n.op == "Constant" and n.outputs:
            for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
                if key in n.attrs:
                    value = n.attrs[key]
                    dtype = np.float32 if key.startswith("value_float") else np.int64 if key != "value" else None
                    consts[n.outputs[0]] = np.asarray(value, dtype=dtype)
        elif n.inputs and all(i in consts for i in n.inputs if i):
            try:
                outs = fold(n, [consts[i] if i else None for i in n.inputs])
            except CannotFold:
                continue
            # A value made from one weight (a Transpose of it, a Concat of its slices) is named after
            # it; an Identity names a second use of an equal weight, so its own name stands.
            sources = {origin.get(i, i) for i in n.inputs if i and consts[i].dtype.kind == "f"}
            source = sources.pop() if len(sources) == 1 and n.op != "Identity" else None
            for o, v in zip(n.outputs, outs):
                if o and isinstance(v, np.ndarray) and v.dtype != object:
                    consts[o] = v
                    if source is not None:
                        origin[o] = source
    return consts, origin


def consumers(nodes: list[INode], outputs: list[str]) -> dict[str, list[INode | None]]:
    """Each value's readers, in order; a graph output counts as a reader (None)."""
    out: dict[str, list[INode | None]] = {}
    for n in nodes:
        for i in n.inputs:
            if i:
                out.setdefault(i, []).append(n)
    for o in outputs:
        out.setdefault(o, []).append(None)
    return out


# ---- patterns ---------------------------------------------------------------------------------------------

class _Rewrite:
    """A pass's working state: the nodes, who reads each value, and the constants."""

    def __init__(self, nodes: list[INode], outputs: list[str], consts: dict[str, np.ndarray],
                 shape: Callable[[str], tuple | None]) -> None:
        self.nodes = nodes
        self.readers = consumers(nodes, outputs)
        self.consts = consts
        self.shape = shape
        self.producer = {o: n for n in nodes for o in n.outputs if o}

    def only_reader(self, value: str) -> INode | None:
        """The single node reading `value` (None when there are several, or a graph output reads it)."""
        readers = self.readers.get(value, [])
        return readers[0] if len(readers) == 1 else None

    def scalar(self, value: str) -> float | None:
        c = self.consts.get(value)
        return float(c.reshape(-1)[0]) if c is not None and c.size == 1 and c.dtype.kind in "fiu" else None

    def other(self, n: INode, value: str) -> str | None:
        """The input of a two-input node that is not `value`."""
        if len(n.inputs) != 2 or value not in n.inputs:
            return None
        return n.inputs[1] if n.inputs[0] == value else n.inputs[0]

    def replace(self, removed: list[INode], new: INode) -> list[INode]:
        """The nodes with `removed` taken out and `new` where the last of them was."""
        gone = {id(n) for n in removed}
        last = max(k for k, n in enumerate(self.nodes) if id(n) in gone)
        return [new if k == last else n for k, n in enumerate(self.nodes) if id(n) not in gone or k == last]


def _linear(r: _Rewrite) -> list[INode] | None:
    """MatMul(x, W) [+ b] with W a constant matrix: `dln.Linear(x, W, b)`, W as [in, out]."""
    for n in r.nodes:
        if n.op != "MatMul" or n.inputs[0] in r.consts or n.inputs[1] not in r.consts:
            continue
        w = r.consts[n.inputs[1]]
        if w.ndim != 2 or w.dtype.kind != "f":
            continue
        add = r.only_reader(n.outputs[0])
        bias = r.other(add, n.outputs[0]) if add is not None and add.op == "Add" else None
        if bias is not None and bias in r.consts and r.consts[bias].shape in ((w.shape[1],), (1, w.shape[1])):
            return r.replace([n, add], INode("dln.Linear", n.name, (n.inputs[0], n.inputs[1], bias), add.outputs,
                                             {"bias_name": bias}))
        return r.replace([n], INode("dln.Linear", n.name, (n.inputs[0], n.inputs[1], ""), n.outputs))
    return None


def _flat_linear(r: _Rewrite) -> list[INode] | None:
    """Reshape(x, (-1, in)) -> Gemm(W) -> Reshape back to x's leading axes [-> Add(b)], as exporters
    write a linear layer on `[B, T, in]`: `dln.Linear(x, W, b)` on x itself."""
    for flat in r.nodes:
        target = r.consts.get(flat.input(1)) if flat.op == "Reshape" else None
        gemm = r.only_reader(flat.outputs[0]) if target is not None else None
        if gemm is None or gemm.op != "Gemm" or gemm.inputs[0] != flat.outputs[0] or gemm.input(2) or \
                gemm.attr("transA", 0) or gemm.attr("alpha", 1.0) != 1.0 or gemm.inputs[1] not in r.consts:
            continue
        w = r.consts[gemm.inputs[1]]
        out_in = bool(gemm.attr("transB", 0))
        if w.ndim != 2 or w.dtype.kind != "f":
            continue
        features, out = (w.shape[1], w.shape[0]) if out_in else w.shape
        back = r.only_reader(gemm.outputs[0])
        x_shape, y_shape = r.shape(flat.inputs[0]), r.shape(back.outputs[0]) if back is not None else None
        if back is None or back.op != "Reshape" or x_shape is None or None in x_shape or y_shape is None or \
                [int(d) for d in np.reshape(target, -1)] != [-1, features] or y_shape[-1:] != (out,):
            continue
        # The leading axes come back: x's own, or x's with its last few merged into the features.
        lead = y_shape[:-1]
        if tuple(x_shape[:len(lead)]) != tuple(lead) or int(np.prod(x_shape[len(lead):])) != features:
            continue
        removed, outputs, bias = [flat, gemm, back], back.outputs, ""
        add = r.only_reader(back.outputs[0])
        other = r.other(add, back.outputs[0]) if add is not None and add.op == "Add" else None
        if other is not None and other in r.consts and r.consts[other].shape == (out,):
            removed, outputs, bias = removed + [add], add.outputs, other
        attrs = {"out_in": out_in, **({"merge": tuple(lead) + (features,)} if len(lead) != len(x_shape) - 1 else {})}
        return r.replace(removed, INode("dln.Linear", gemm.name, (flat.inputs[0], gemm.inputs[1], bias), outputs,
                                        attrs))
    return None


def _flat_embedding(r: _Rewrite) -> list[INode] | None:
    """Gather(table, indices flattened) -> Reshape back to the indices' shape + [dim], as dln's exporter
    writes `embedding` on `[B, T]` indices: one Gather from the indices themselves."""
    for gather in r.nodes:
        table = r.consts.get(gather.inputs[0]) if gather.op == "Gather" and gather.attr("axis", 0) == 0 else None
        if table is None or table.ndim != 2 or gather.inputs[1] in r.consts:
            continue
        flat, removed = gather.inputs[1], []
        squeeze = r.producer.get(flat)
        if squeeze is not None and squeeze.op == "Squeeze" and r.only_reader(flat) is gather:
            removed, flat = [squeeze], squeeze.inputs[0]
        reshape = r.producer.get(flat)
        back = r.only_reader(gather.outputs[0])
        if reshape is None or reshape.op != "Reshape" or r.only_reader(flat) not in (gather, *removed):
            continue
        if back is not None and back.op != "Reshape":
            back = None
        indices = r.shape(reshape.inputs[0])
        if indices is None or None in indices:
            continue
        if len(indices) == 1:   # flattening a vector: nothing to undo
            back = None
        elif r.shape(back.outputs[0]) != tuple(indices) + (table.shape[1],):
            continue
        return r.replace([reshape, *removed, gather] + ([back] if back else []),
                         INode("Gather", gather.name, (gather.inputs[0], reshape.inputs[0]),
                               (back or gather).outputs, {"axis": 0}))
    return None


def _gelu(r: _Rewrite) -> list[INode] | None:
    """x * 0.5 * (1 + erf(x / sqrt(2))), in the orders exporters write it (torch's, dln's): `dln.Gelu(x)`."""
    for erf in r.nodes:
        if erf.op != "Erf":
            continue
        scale = r.producer.get(erf.inputs[0])
        if scale is None or scale.op not in ("Div", "Mul") or r.only_reader(scale.outputs[0]) is not erf:
            continue
        x, c = scale.inputs[0], r.scalar(scale.inputs[1])
        want = np.sqrt(2.0) if scale.op == "Div" else 1 / np.sqrt(2.0)
        if c is None or abs(c - want) > 1e-5:
            continue
        add = r.only_reader(erf.outputs[0])
        if add is None or add.op != "Add" or r.scalar(r.other(add, erf.outputs[0]) or "") != 1.0:
            continue
        first = r.only_reader(add.outputs[0])
        other = r.other(first, add.outputs[0]) if first is not None and first.op == "Mul" else None
        if other is None:
            continue
        second = r.only_reader(first.outputs[0])
        then = r.other(second, first.outputs[0]) if second is not None and second.op == "Mul" else None
        half = r.producer.get(other)
        if other == x and then is not None and r.scalar(then) == 0.5:           # (x * (1 + erf)) * 0.5
            removed, out = [scale, erf, add, first, second], second.outputs
        elif r.scalar(other) == 0.5 and then == x:                               # x * ((1 + erf) * 0.5)
            removed, out = [scale, erf, add, first, second], second.outputs
        elif half is not None and half.op == "Mul" and r.only_reader(other) is first and x in half.inputs \
                and r.scalar(r.other(half, x) or "") == 0.5:                     # (x * 0.5) * (1 + erf)
            removed, out = [half, scale, erf, add, first], first.outputs
        else:
            continue
        return r.replace(removed, INode("dln.Gelu", erf.name, (x,), out))
    return None


def _zero_state(r: _Rewrite, value: str) -> bool:
    """Is an initial state absent, or zeros (torch writes `Slice(ConstantOfShape(0))` per layer)?"""
    while value:
        if value in r.consts:
            return not r.consts[value].any()
        n = r.producer.get(value)
        if n is None:
            return False
        if n.op == "ConstantOfShape":
            return not np.any(n.attr("value", np.zeros(1)))
        if n.op not in ("Slice", "Squeeze", "Unsqueeze", "Identity", "Cast"):
            return False
        value = n.inputs[0]
    return True


def _squeeze_axes(r: _Rewrite, n: INode) -> list[int] | None:
    axes = n.attr("axes") if "axes" in n.attrs else (r.consts.get(n.input(1)) if n.input(1) else None)
    return None if axes is None else [int(a) for a in np.reshape(axes, -1)]


def _time_major(r: _Rewrite, n: INode) -> tuple[list[INode], str] | None:
    """The nodes by which torch turns a recurrent layer's Y `[T, directions, B, H]` into
    `[T, B, directions * H]` (Squeeze(1); for two directions Transpose(0, 2, 1, 3) and
    Reshape(0, 0, -1)), and the value they make."""
    first = r.only_reader(n.outputs[0]) if n.outputs and n.outputs[0] else None
    if first is None:
        return None
    if n.attr("direction", "forward") == "forward":
        if first.op == "Squeeze" and _squeeze_axes(r, first) == [1]:
            return [first], first.outputs[0]
        return None
    if _perm(r, first, [0, 2, 1, 3]):
        reshape = r.only_reader(first.outputs[0])
        if reshape is not None and reshape.op == "Reshape" and reshape.inputs[1] in r.consts and \
                [int(d) for d in np.reshape(r.consts[reshape.inputs[1]], -1)] == [0, 0, -1]:
            return [first, reshape], reshape.outputs[0]
    return None


def _stacked(r: _Rewrite) -> list[INode] | None:
    """LSTM -> (back to [T, B, directions * H]) -> LSTM (or GRU, RNN) of the same kind, as torch
    exports `num_layers`: one node whose attribute `stack` holds the weights (W, R, B) of the layers
    after the first."""
    for a in r.nodes:
        if a.op not in ("LSTM", "GRU", "RNN") or a.attr("layout", 0) != 0 or \
                any(o and r.readers.get(o) for o in a.outputs[1:]):
            continue
        joined = _time_major(r, a)
        b = r.only_reader(joined[1]) if joined is not None else None
        if b is None or b.op != a.op or b.inputs[0] != joined[1] or \
                {k: v for k, v in b.attrs.items() if k != "stack"} != \
                {k: v for k, v in a.attrs.items() if k != "stack"} or bool(b.input(3)) != bool(a.input(3)) or \
                not all(_zero_state(r, v) for v in (a.input(5), a.input(6), b.input(5), b.input(6))) or \
                a.input(4) or b.input(4):
            continue
        stack = list(a.attr("stack", [])) + [(b.inputs[1], b.inputs[2], b.input(3))] + list(b.attr("stack", []))
        merged = INode(a.op, a.name, a.inputs[:5], b.outputs, dict(a.attrs, stack=stack))
        return r.replace([a, *joined[0], b], merged)
    return None


def _perm(r: _Rewrite, n: INode | None, perm: list[int]) -> bool:
    return n is not None and n.op == "Transpose" and list(n.attr("perm", [])) == perm


def _batch_first(r: _Rewrite) -> list[INode] | None:
    """Transpose(1, 0, 2) -> LSTM/GRU/RNN -> (back to [T, B, directions * H]) -> Transpose(1, 0, 2), as
    torch exports a batch-first layer: one node reading and writing `[B, T, ...]` as `.dln`'s do
    (attributes batch_first_in, batch_first_out; time_major_out when only the last transpose is missing)."""
    for n in r.nodes:
        if n.op not in ("LSTM", "GRU", "RNN") or n.attr("layout", 0) != 0 or n.attr("checked"):
            continue
        removed, inputs, outputs, attrs = [n], list(n.inputs), list(n.outputs), dict(n.attrs, checked=True)
        before = r.producer.get(n.inputs[0])
        if _perm(r, before, [1, 0, 2]) and r.only_reader(before.outputs[0]) is n:
            removed.append(before)
            inputs[0] = before.inputs[0]
            attrs["batch_first_in"] = True
        joined = _time_major(r, n)
        if joined is not None:
            removed += joined[0]
            outputs[0] = joined[1]
            after = r.only_reader(joined[1])
            if _perm(r, after, [1, 0, 2]):
                removed.append(after)
                outputs[0] = after.outputs[0]
                attrs["batch_first_out"] = True
            else:
                attrs["time_major_out"] = True
        return r.replace(removed, replace(n, inputs=tuple(inputs), outputs=tuple(outputs), attrs=attrs))
    return None


def _global_pool(r: _Rewrite) -> list[INode] | None:
    """GlobalAveragePool -> Flatten(axis 1): `dln.GlobalAvgPool`, [B, C, ...] -> [B, C]."""
    for n in r.nodes:
        if n.op != "GlobalAveragePool":
            continue
        flat = r.only_reader(n.outputs[0])
        if flat is not None and flat.op == "Flatten" and flat.attr("axis", 1) == 1:
            return r.replace([n, flat], INode("dln.GlobalAvgPool", n.name, n.inputs, flat.outputs))
    return None


PASSES: list[Callable[[_Rewrite], list[INode] | None]] = [_linear, _flat_linear, _flat_embedding, _gelu, _stacked,
                                                          _batch_first, _global_pool]


def rewrite(nodes: list[INode], outputs: list[str], consts: dict[str, np.ndarray],
            shape: Callable[[str], tuple | None]) -> list[INode]:
    """Every pattern of PASSES replaced, one match at a time, until none is left.  `shape` gives a
    value's shape (dimensions as ints, Syms or None), for patterns that hold for some shapes only."""
    for rule in PASSES:
        while True:
            new = rule(_Rewrite(nodes, outputs, consts, shape))
            if new is None:
                break
            nodes = new
    return nodes
