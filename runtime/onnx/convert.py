"""An ONNX graph as a dln graph: each ONNX node becomes the dln primitives that define it.

`convert(model, inputs)` walks the graph's nodes in order.  Every ONNX value becomes either a
tensor of the graph being built (`Tensor`) or, where it is known before the run, an array
(`static`): initializers, `Constant`s, `Shape`s of tensors whose shapes are fixed, and whatever is
computed from those alone.  A node whose inputs are all known is converted into a scratch graph
and evaluated at once by the NumPy interpreter, so shape arithmetic (`Shape -> Gather -> Concat ->
Reshape`, as exporters write it) folds to the numbers the shape rules need, and the definition of
each op stays the one converter below.  Known arrays enter the graph only where a tensor needs
them: a uniform one as a constant, any other as a named input whose value the runtime holds.

The converters live in the `ops_*` modules, one `@converter("OpType")` each; `ONNX_OPS` lists
what is covered.  An op type without one, or an attribute a converter does not implement, is an
`UnsupportedOnnx` error naming the node and its op type.

ONNX's integer types narrower than 64 bits other than int32 (int8, uint8, int16, uint16, uint32)
and uint64 are computed in int64 (dln's integer types are int32 and int64) and narrowed back on
the way out, with numpy's wrap-around; the single-op semantics ONNX specifies agree with that.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from dln.compiler.emit import GraphBuilder, Tensor
from dln.compiler.ir import DType, Graph, TensorType

ONNX_OPS: dict[str, Callable[["Context", "OnnxNode"], Sequence[Any]]] = {}

# Op types whose result is not a function of their inputs: never folded.
RANDOM = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Bernoulli", "Multinomial"}


def converter(*op_types: str):
    """Register a converter: `(ctx, node) -> list of outputs` (tensors, arrays, or None for an
    optional output left out)."""
    def register(fn):
        for op in op_types:
            ONNX_OPS[op] = fn
        return fn
    return register


class NeedsValue(Exception):
    """A value must be known before the run (a shape, axes, pads) but is computed from the inputs: the
    backend converts again with the graph's integer inputs taken as known (dln.runtime.onnx.backend)."""


class UnsupportedOnnx(Exception):
    """An ONNX construct dln does not implement: the node, its op type and what is missing."""

    def __init__(self, node: "OnnxNode | None", what: str) -> None:
        where = f"node {node.name!r} ({node.op_type}): " if node is not None else ""
        super().__init__(where + what)
        self.node = node


# ---- element types ------------------------------------------------------------------------------------

NP_TO_DTYPE = {np.dtype(np.float16): DType.F16, np.dtype(np.float32): DType.F32, np.dtype(np.float64): DType.F64,
               np.dtype(np.int32): DType.I32, np.dtype(np.int64): DType.I64, np.dtype(np.bool_): DType.BOOL}
WIDENED = {np.dtype(t) for t in (np.int8, np.uint8, np.int16, np.uint16, np.uint32, np.uint64)}
DTYPE_TO_NP = {d: n for n, d in NP_TO_DTYPE.items()}
BFLOAT16 = np.dtype(helper.tensor_dtype_to_np_dtype(onnx.TensorProto.BFLOAT16))   # ml_dtypes


def np_dtype(elem_type: int) -> np.dtype:
    """The numpy type of an ONNX element type (bfloat16: ml_dtypes', which onnx uses)."""
    return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))


def dln_dtype(dtype: np.dtype, node: "OnnxNode | None" = None) -> DType:
    """dln's element type for a numpy one: the narrow integer types widen to int64."""
    dtype = np.dtype(dtype)
    if dtype == BFLOAT16:
        return DType.BF16
    if dtype in NP_TO_DTYPE:
        return NP_TO_DTYPE[dtype]
    if dtype in WIDENED:
        return DType.I64
    raise UnsupportedOnnx(node, f"element type {dtype}")


def onnx_dtype(elem_type: int, node: "OnnxNode | None" = None) -> DType:
    return dln_dtype(np_dtype(elem_type), node)


def as_computed(a: np.ndarray) -> np.ndarray:
    """An array as dln computes it: narrow integers widened to int64."""
    a = np.asarray(a)
    if a.dtype == BFLOAT16:
        return a.astype(np.float32)   # dln holds bf16 values in float32 arrays
    return a.astype(np.int64) if a.dtype in WIDENED else a


# ---- nodes ---------------------------------------------------------------------------------------------

@dataclass
class OnnxNode:
    """One ONNX node: op type, input and output names ('' for an optional one left out), attributes."""

    op_type: str
    name: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any]
    domain: str = ""
    proto: onnx.NodeProto | None = None

    @classmethod
    def of(cls, proto: onnx.NodeProto, index: int) -> "OnnxNode":
        attrs = {a.name: helper.get_attribute_value(a) for a in proto.attribute}
        attrs = {k: (v.decode() if isinstance(v, bytes) else
                     [x.decode() if isinstance(x, bytes) else x for x in v] if isinstance(v, list) else v)
                 for k, v in attrs.items()}
        return cls(proto.op_type, proto.name or f"{proto.op_type}_{index}", list(proto.input),
                   list(proto.output), attrs, proto.domain, proto)

    def attr(self, key: str, default: Any = None) -> Any:
        return self.attrs.get(key, default)


# ---- the conversion ------------------------------------------------------------------------------------

@dataclass
class Context:
    """What a converter works with: the builder, the values by name, the opset, and the arrays the
    graph's named constant inputs take."""

    builder: GraphBuilder
    opset: int
    values: dict[str, Any] = field(default_factory=dict)     # name -> Tensor | np.ndarray
    constants: dict[str, np.ndarray] = field(default_factory=dict)
    functions: dict[tuple[str, str], onnx.FunctionProto] = field(default_factory=dict)
    _names: Any = field(default_factory=itertools.count)

    # What converters call.
    def has(self, node: OnnxNode, i: int) -> bool:
        return i < len(node.inputs) and node.inputs[i] != ""

    def static(self, node: OnnxNode, i: int, what: str | None = None) -> np.ndarray | None:
        """Input i as an array when it is known before the run; None when absent.  With `what`, an
        input that is not known is an error (`what` says what it is, e.g. "the shape")."""
        if not self.has(node, i):
            return None
        v = self.values[node.inputs[i]]
        if isinstance(v, Tensor):
            if what is None:
                return None
            raise NeedsValue(f"node {node.name!r} ({node.op_type}): {what} (input {i}) must be known before "
                             "the run; it is computed")
        return v

    def tensor(self, node: OnnxNode, i: int) -> Tensor:
        """Input i as a tensor of the graph."""
        return self.as_tensor(self.values[node.inputs[i]])

    def inputs(self, node: OnnxNode) -> list[Tensor | None]:
        return [self.tensor(node, i) if self.has(node, i) else None for i in range(len(node.inputs))]

    def as_tensor(self, v: Any) -> Tensor:
        if isinstance(v, Tensor):
            return v
        a = as_computed(v)
        dtype = dln_dtype(a.dtype)
        flat = a.reshape(-1)
        if flat.size and (flat == flat[0]).all() and not (dtype.is_float and np.isnan(flat[0])):
            return self.builder.const(flat[0].item(), dtype, a.shape)
        name = f"onnx_const_{next(self._names)}"
        self.constants[name] = np.ascontiguousarray(a.astype(DTYPE_TO_NP[dtype]))
        return self.builder.input(name, TensorType(dtype, a.shape), role="const")


def _fold(ctx: Context, node: OnnxNode, convert: Callable) -> list[Any]:
    """Convert a node whose inputs are all known into a scratch graph and evaluate it: its outputs
    as arrays."""
    from dln.runtime.interpreter import evaluate   # noqa: PLC0415  (runtime uses compiler, not back)
    scratch = Context(GraphBuilder(f"fold_{node.name}"), ctx.opset, dict(ctx.values), {}, ctx.functions)
    outs = convert(scratch, node)
    tensors = [(f"out{i}", o) for i, o in enumerate(outs) if isinstance(o, Tensor)]
    if not tensors:
        return list(outs)
    graph = scratch.builder.finish(tensors)
    with np.errstate(all="ignore"):
        got = evaluate(graph, scratch.constants, {})
    return [np.array(got[f"out{i}"]) if isinstance(o, Tensor) else o for i, o in enumerate(outs)]


def label_of(name: str) -> str:
    """An ONNX node's name as a dln name (kernel and buffer names are made from it): an identifier."""
    text = re.sub(r"\W+", "_", name).strip("_") or "node"
    return text if text[0].isalpha() else "n_" + text


def convert_node(ctx: Context, node: OnnxNode) -> None:
    """Bind the node's outputs in ctx.values."""
    convert = ONNX_OPS.get(node.op_type)
    if convert is None and (node.domain, node.op_type) in ctx.functions:
        convert = _function_converter(ctx.functions[(node.domain, node.op_type)])
    if convert is None:
        raise UnsupportedOnnx(node, f"op type {node.op_type!r} is not supported")
    known = all(not isinstance(ctx.values[i], Tensor) for i in node.inputs if i)
    if known and node.op_type not in RANDOM and node.inputs:
        outs = _fold(ctx, node, convert)
    else:
        with ctx.builder.at(label=label_of(node.name)):   # the kernels' names say which ONNX node
            outs = convert(ctx, node)
    for name, value in zip(node.outputs, outs):
        if name:
            ctx.values[name] = value


def convert_nodes(ctx: Context, nodes: Sequence[onnx.NodeProto]) -> None:
    for index, proto in enumerate(nodes):
        convert_node(ctx, OnnxNode.of(proto, index))


def _function_converter(fn: onnx.FunctionProto) -> Callable:
    """A model-local function: its body converted inline, attributes referenced by name substituted."""
    def convert(ctx: Context, node: OnnxNode) -> list[Any]:
        inner = dict(ctx.values)
        for formal, actual in zip(fn.input, node.inputs):
            if actual:
                inner[formal] = ctx.values[actual]
        saved = ctx.values
        ctx.values = inner
        try:
            for index, proto in enumerate(fn.node):
                body = onnx.NodeProto()
                body.CopyFrom(proto)
                _bind_attribute_refs(body, node)
                convert_node(ctx, OnnxNode.of(body, index))
            return [ctx.values[o] for o in fn.output]
        finally:
            ctx.values = saved
    return convert


def _bind_attribute_refs(body: onnx.NodeProto, call: OnnxNode) -> None:
    kept = []
    for a in body.attribute:
        if a.ref_attr_name:
            if a.ref_attr_name not in call.attrs:
                continue
            kept.append(helper.make_attribute(a.name, call.attrs[a.ref_attr_name]))
        else:
            kept.append(a)
    del body.attribute[:]
    body.attribute.extend(kept)


@dataclass
class Converted:
    """An ONNX model as a dln graph: the graph, its inputs' names, the arrays its constant inputs
    take, and each output's ONNX numpy type (narrow integer types are narrowed back to it)."""

    graph: Graph
    inputs: list[str]
    constants: dict[str, np.ndarray]
    outputs: list[tuple[str, np.dtype]]
    static_outputs: dict[str, np.ndarray]


def opset_of(model: onnx.ModelProto) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=1)


def convert(model: onnx.ModelProto, shapes: dict[str, tuple[tuple[int, ...], np.dtype]],
            known: dict[str, np.ndarray] | None = None) -> Converted:
    """The model's graph for inputs of the given shapes and numpy types (name -> (shape, dtype)); the
    inputs in `known` are taken as those arrays (specialized: they are not inputs of the graph)."""
    g = model.graph
    ctx = Context(GraphBuilder(g.name or "onnx"), opset_of(model))
    ctx.functions = {(f.domain, f.name): f for f in model.functions}
    for init in g.initializer:
        ctx.values[init.name] = numpy_helper.to_array(init)
    names = []
    for value in g.input:
        if value.name in ctx.values and value.name not in shapes:
            continue   # an initializer listed as an input, not fed
        if known and value.name in known:
            ctx.values[value.name] = np.asarray(known[value.name])
            continue
        shape, dtype = shapes[value.name]
        ctx.values[value.name] = ctx.builder.input(value.name, TensorType(dln_dtype(dtype), tuple(shape)))
        names.append(value.name)
    convert_nodes(ctx, g.node)
    outputs, static = [], {}
    for value in g.output:
        v = ctx.values[value.name]
        dtype = np_dtype(value.type.tensor_type.elem_type) if value.type.tensor_type.elem_type else None
        if isinstance(v, Tensor):
            outputs.append((value.name, dtype))
        else:
            static[value.name] = np.asarray(v)
            outputs.append((value.name, dtype))
    graph = ctx.builder.finish([(name, ctx.values[name]) for name, _ in outputs if name not in static])
    return Converted(graph, names, ctx.constants, outputs, static)
