"""ONNX export, one primitive at a time: the table `PRIMITIVES`, op -> lowering.

Each entry takes the graph and the node and returns a `Lowering` (the dln values it reads and the
function writing its ONNX nodes).  Most read their inputs as they are; the elementwise ops read
through a `broadcast` or a filled `const` operand when ONNX's own numpy-style broadcasting gives
the same shape, so `x + b` over a bias is `Add(x, b)`, not `Add(x, Expand(b, ...))`.

Scans are in export_scan, random draws in export_random; patterns spanning several nodes in export_patterns.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from dln.compiler.ir import DType, Graph, Node, Op
from dln.compiler.symbolic import Shape
from dln.runtime.onnx.export import NUMPY, ExportError, Exporter, Lowering, onnx_type, value_info

Emit = Callable[[Exporter, Node, list[str]], Any]


def simple(emit: Emit) -> Callable[[Graph, Node], Lowering]:
    """A lowering that reads the node's inputs as they are."""
    def lower(graph: Graph, n: Node) -> Lowering:
        return Lowering(n.inputs, lambda ex, node: emit(ex, node, [ex.value(i) for i in node.inputs]))
    return lower


PRIMITIVES: dict[Op, Callable[[Graph, Node], Lowering]] = {}


def primitive(*ops: Op):
    """Register an emitter of the node and its inputs' names for `ops`."""
    def register(fn: Emit) -> Emit:
        for op in ops:
            PRIMITIVES[op] = simple(fn)
        return fn
    return register


# ---- leaves -------------------------------------------------------------------------------------------------------

@primitive(Op.INPUT)
def _input(ex: Exporter, n: Node, args: list[str]) -> str:
    """The root graph's inputs: data (graph inputs with a dim_param per symbol), weights (initializers
    under their state_dict names) and the random generator's seed and step (int64 scalars)."""
    from onnx import numpy_helper

    name, role = n.attrs["name"], n.attrs["role"]
    if role in ("param", "buffer", "state"):
        if n.dtype is DType.BF16:
            raise ExportError(n, f"weight {name} is bf16; the exporter writes f16, f32 and f64 weights")
        array = np.asarray(ex.weights[name], dtype=NUMPY[n.dtype])
        ex.initializers.append(numpy_helper.from_array(array, name))
    elif role in ("input", "rng"):
        ex.inputs.append(value_info(name, n.dtype, n.shape))
    else:
        raise ExportError(n, f"an input of role {role!r} ({name})")
    return name



@primitive(Op.CONST)
def _const(ex: Exporter, n: Node, args: list[str]) -> str:
    from onnx import numpy_helper

    scalar = np.asarray(n.attrs["value"], NUMPY[n.dtype])
    if n.type.rank == 0:
        return ex.const(scalar, hint="const")
    return ex.op("ConstantOfShape", [ex.shape(n.shape)], hint="const", value=numpy_helper.from_array(scalar[None]))


@primitive(Op.IOTA)
def _iota(ex: Exporter, n: Node, args: list[str]) -> str:
    r = ex.op("Range", [ex.const(np.int64(0)), ex.scalar_dim(n.shape[0]), ex.const(np.int64(1))], hint="iota")
    return r if n.dtype is DType.I64 else ex.op("Cast", [r], to=onnx_type(n.dtype))


@primitive(Op.SYMSIZE)
def _symsize(ex: Exporter, n: Node, args: list[str]) -> str:
    value = ex.op("Reshape", [ex.dim(n.attrs["dim"]), ex.ints([])], hint="size")
    return value if n.dtype is DType.I64 else ex.op("Cast", [value], to=onnx_type(n.dtype))


# ---- elementwise -----------------------------------------------------------------------------------------------

UNARY = {Op.NEG: "Neg", Op.EXP: "Exp", Op.LOG: "Log", Op.SQRT: "Sqrt", Op.ABS: "Abs", Op.SIGN: "Sign",
         Op.SIN: "Sin", Op.COS: "Cos", Op.TANH: "Tanh", Op.SIGMOID: "Sigmoid", Op.RELU: "Relu", Op.ERF: "Erf",
         Op.FLOOR: "Floor", Op.ATAN: "Atan", Op.NOT: "Not", Op.DETACH: "Identity", Op.CHECK_INDEX: "Identity"}
BINARY = {Op.ADD: "Add", Op.SUB: "Sub", Op.MUL: "Mul", Op.DIV: "Div", Op.POW: "Pow", Op.MAXIMUM: "Max",
          Op.MINIMUM: "Min", Op.LT: "Less", Op.LE: "LessOrEqual", Op.GT: "Greater", Op.GE: "GreaterOrEqual",
          Op.EQ: "Equal", Op.AND: "And", Op.OR: "Or"}


@primitive(*UNARY)
def _unary(ex: Exporter, n: Node, args: list[str]) -> str:
    return ex.op(UNARY[n.op], args, hint=n.name)


@primitive(Op.RSQRT)
def _rsqrt(ex: Exporter, n: Node, args: list[str]) -> str:
    return ex.op("Reciprocal", [ex.op("Sqrt", args)], hint=n.name)


@primitive(Op.LOG1P)
def _log1p(ex: Exporter, n: Node, args: list[str]) -> str:
    return ex.op("Log", [ex.op("Add", [args[0], ex.const(1, n.dtype)])], hint=n.name)


@primitive(Op.CAST)
def _cast(ex: Exporter, n: Node, args: list[str]) -> str:
    return ex.op("Cast", args, hint=n.name, to=onnx_type(n.dtype))


def broadcast_shape(shapes: list[Shape]) -> Shape | None:
    """numpy's broadcast of `shapes` when every axis agrees exactly (symbols equal as polynomials), else None."""
    rank = max(len(s) for s in shapes)
    out = []
    for axis in range(rank):
        sizes = {s[len(s) - rank + axis] for s in shapes if len(s) - rank + axis >= 0} - {1}
        if len(sizes) > 1:
            return None
        out.append(sizes.pop() if sizes else 1)
    return tuple(out)


def _narrow(graph: Graph, n: Node) -> tuple[list[Any], tuple[int, ...]]:
    """The operands of elementwise `n` as ONNX reads them: a `broadcast`'s operand or a filled
    constant's scalar where numpy broadcasting of the rest still gives n's shape.  ("node", id) or
    ("scalar", value, dtype) each; and the node ids read."""
    operands: list[Any] = [("node", i) for i in n.inputs]
    for k, i in enumerate(n.inputs):
        m = graph.node(i)
        if m.op is Op.BROADCAST:
            candidate = ("node", m.inputs[0])
        elif m.op is Op.CONST:
            candidate = ("scalar", m.attrs["value"], m.dtype)
        else:
            continue
        trial = operands[:k] + [candidate] + operands[k + 1:]
        shapes = [graph.node(o[1]).shape if o[0] == "node" else () for o in trial]
        if broadcast_shape(shapes) == tuple(n.shape):
            operands = trial
    return operands, tuple(o[1] for o in operands if o[0] == "node")


def elementwise(emit: Callable[[Exporter, Node, list[str]], str]) -> Callable[[Graph, Node], Lowering]:
    def lower(graph: Graph, n: Node) -> Lowering:
        operands, reads = _narrow(graph, n)

        def write(ex: Exporter, node: Node) -> str:
            args = [ex.value(o[1]) if o[0] == "node" else ex.const(o[1], o[2]) for o in operands]
            return emit(ex, node, args)
        return Lowering(reads, write)
    return lower


def _binary(ex: Exporter, n: Node, args: list[str]) -> str:
    return ex.op(BINARY[n.op], args, hint=n.name)


def _not_equal(ex: Exporter, n: Node, args: list[str]) -> str:
    return ex.op("Not", [ex.op("Equal", args)], hint=n.name)


def _mod(ex: Exporter, n: Node, args: list[str]) -> str:
    """numpy's mod takes the divisor's sign: ONNX's integer Mod does; for floats a - floor(a / b) * b."""
    if not n.dtype.is_float:
        return ex.op("Mod", args, hint=n.name, fmod=0)
    a, b = args
    return ex.op("Sub", [a, ex.op("Mul", [ex.op("Floor", [ex.op("Div", [a, b])]), b])], hint=n.name)


def _where(ex: Exporter, n: Node, args: list[str]) -> str:
    return ex.op("Where", args, hint=n.name)


for _op in BINARY:
    PRIMITIVES[_op] = elementwise(_binary)
PRIMITIVES[Op.NE] = elementwise(_not_equal)
PRIMITIVES[Op.MOD] = elementwise(_mod)
PRIMITIVES[Op.WHERE] = elementwise(_where)


# ---- reductions ---------------------------------------------------------------------------------------------------

REDUCE = {Op.SUM: "ReduceSum", Op.MAX: "ReduceMax", Op.MIN: "ReduceMin"}


@primitive(*REDUCE)
def _reduce(ex: Exporter, n: Node, args: list[str]) -> str:
    axes = list(n.attrs["axes"])
    if not axes:
        return ex.op("Identity", args, hint=n.name)
    return ex.op(REDUCE[n.op], [args[0], ex.ints(axes)], hint=n.name, keepdims=int(n.attrs["keepdim"]))


@primitive(Op.ARGMAX)
def _argmax(ex: Exporter, n: Node, args: list[str]) -> str:
    (axis,) = n.attrs["axes"]
    out = ex.op("ArgMax", args, hint=n.name, axis=axis, keepdims=int(n.attrs["keepdim"]))
    return out if n.dtype is DType.I64 else ex.op("Cast", [out], to=onnx_type(n.dtype))


# ---- movement -------------------------------------------------------------------------------------------------------

@primitive(Op.RESHAPE)
def _reshape(ex: Exporter, n: Node, args: list[str]) -> str:
    zero = any(d == 0 for d in n.attrs["shape"])   # a size 0, not Reshape's "copy this axis"
    return ex.op("Reshape", [args[0], ex.shape(n.attrs["shape"], reshape=True)], hint=n.name,
                 allowzero=1 if zero else None)


def _broadcast_lowering(graph: Graph, n: Node) -> Lowering:
    """Expand, with 1 on every axis the operand already has at its size: sizes read at run time only
    for the axes the broadcast creates."""
    source = graph.node(n.inputs[0])

    def write(ex: Exporter, node: Node) -> str:
        target, have = node.attrs["shape"], source.shape
        offset = len(target) - len(have)
        dims = [1 if k >= offset and have[k - offset] == d else d for k, d in enumerate(target)]
        return ex.op("Expand", [ex.value(node.inputs[0]), ex.shape(tuple(dims))], hint=node.name)
    return Lowering(n.inputs, write)


PRIMITIVES[Op.BROADCAST] = _broadcast_lowering


@primitive(Op.PERMUTE)
def _permute(ex: Exporter, n: Node, args: list[str]) -> str:
    return ex.op("Transpose", args, hint=n.name, perm=list(n.attrs["perm"]))


def _slice_lowering(graph: Graph, n: Node) -> Lowering:
    source = graph.node(n.inputs[0])

    def write(ex: Exporter, node: Node) -> str:
        axes, starts, stops, steps = [], [], [], []
        for axis, (a, b, s, d) in enumerate(zip(node.attrs["starts"], node.attrs["stops"], node.attrs["steps"],
                                                source.shape)):
            if a == 0 and b == d and s == 1:
                continue   # the whole axis
            axes.append(axis)
            starts.append(a)
            stops.append(b)
            steps.append(s)
        if not axes:
            return ex.op("Identity", [ex.value(node.inputs[0])], hint=node.name)
        return ex.op("Slice", [ex.value(node.inputs[0]), ex.shape(tuple(starts)), ex.shape(tuple(stops)),
                               ex.ints(axes), ex.ints(steps)], hint=node.name)
    return Lowering(n.inputs, write)


PRIMITIVES[Op.SLICE] = _slice_lowering


@primitive(Op.PAD)
def _pad(ex: Exporter, n: Node, args: list[str]) -> str:
    pads = n.attrs["pads"]
    widths = ex.shape(tuple(lo for lo, _ in pads) + tuple(hi for _, hi in pads))
    return ex.op("Pad", [args[0], widths, ex.const(n.attrs["value"], n.dtype)], hint=n.name, mode="constant")


@primitive(Op.CONCAT)
def _concat(ex: Exporter, n: Node, args: list[str]) -> str:
    return ex.op("Concat", args, hint=n.name, axis=n.attrs["axis"])


# ---- indexing ------------------------------------------------------------------------------------------------------

@primitive(Op.GATHER)
def _gather(ex: Exporter, n: Node, args: list[str]) -> str:
    """torch.gather is ONNX's GatherElements (embeddings, where recognizable, are `Gather`: export_patterns)."""
    return ex.op("GatherElements", args, hint=n.name, axis=n.attrs["axis"])


@primitive(Op.SCATTER_ADD)
def _scatter_add(ex: Exporter, n: Node, args: list[str]) -> str:
    from onnx import numpy_helper

    index, src = args
    zeros = ex.op("ConstantOfShape", [ex.shape(n.shape)], value=numpy_helper.from_array(np.zeros(1, NUMPY[n.dtype])))
    return ex.op("ScatterElements", [zeros, index, src], hint=n.name, axis=n.attrs["axis"], reduction="add")


# ---- contractions --------------------------------------------------------------------------------------------------

@primitive(Op.MATMUL)
def _matmul(ex: Exporter, n: Node, args: list[str]) -> str:
    return ex.op("MatMul", args, hint=n.name)


def conv_attrs(n: Node) -> dict[str, Any]:
    pads = n.attrs["padding"]
    return {"strides": list(n.attrs["stride"]), "dilations": list(n.attrs["dilation"]), "group": n.attrs["groups"],
            "pads": [lo for lo, _ in pads] + [hi for _, hi in pads]}


@primitive(Op.CONV)
def _conv(ex: Exporter, n: Node, args: list[str]) -> str:
    return ex.op("Conv", args, hint=n.name, **conv_attrs(n))


@primitive(Op.CONV_TRANSPOSE)
def _conv_transpose(ex: Exporter, n: Node, args: list[str]) -> str:
    """dln's conv_transpose is the adjoint of conv with the same weight [Co, Ci/groups, *K]: ONNX's
    ConvTranspose reads its weight so, and its output size formula is the adjoint's."""
    extra = n.attrs.get("output_padding")
    return ex.op("ConvTranspose", args, hint=n.name, output_padding=list(extra) if extra else None, **conv_attrs(n))


# ---- several results ---------------------------------------------------------------------------------------------

@primitive(Op.RESULT)
def _result(ex: Exporter, n: Node, args: list[str]) -> str:
    return ex.values[n.inputs[0]][n.attrs["index"]]


# ---- composites with an ONNX op of their own ------------------------------------------------------------------------

@primitive(Op.COMPOSITE)
def _composite(ex: Exporter, n: Node, args: list[str]) -> list[str]:
    name = n.attrs["composite"]
    if name == "layernorm":
        return _layernorm(ex, n, args)
    if name == "sdpa":
        return _sdpa(ex, n, args)
    raise ExportError(n, f"the composite `{name}`")   # export_graph decomposes all others


def _layernorm(ex: Exporter, n: Node, args: list[str]) -> list[str]:
    """LayerNormalization over the last axis; its Mean and InvStdDev keep that axis (size 1): squeezed
    to dln's row statistics where a `result` reads them."""
    x, n_features = args[0], n.type.shape[-1]
    if n.attrs["affine"]:
        scale, bias = args[1:]
    else:
        from onnx import numpy_helper

        one = numpy_helper.from_array(np.ones(1, NUMPY[n.dtype]))
        scale = ex.op("ConstantOfShape", [ex.shape((n_features,))], value=one)
        bias = ex.op("Mul", [scale, ex.const(0, n.dtype)])
    read = results_read(ex, n)
    if not read & {1, 2}:
        return [ex.op("LayerNormalization", [x, scale, bias], hint=n.name, axis=-1, epsilon=float(n.attrs["eps"])),
                "", ""]
    y, mean, rstd = ex.op("LayerNormalization", [x, scale, bias], outputs=3, hint=n.name, axis=-1,
                          epsilon=float(n.attrs["eps"]))
    last = ex.ints([-1])
    return [y, ex.op("Squeeze", [mean, last]), ex.op("Squeeze", [rstd, last])]


def _sdpa(ex: Exporter, n: Node, args: list[str]) -> list[str]:
    """Attention decomposed: MatMul, the mask, Softmax, MatMul.  q and k are scaled by sqrt(scale) each,
    as dln's decomposition does (and torch's math path)."""
    if n.attrs["dropout"]:
        raise ExportError(n, "attention with dropout in evaluation mode")
    q, k, v = args[:3]
    q_type = n.dtype
    root = ex.const(math.sqrt(n.attrs["scale"]), q_type)
    rank = n.type.rank
    perm = list(range(rank - 2)) + [rank - 1, rank - 2]
    keys = ex.op("Transpose", [ex.op("Mul", [k, root])], perm=perm)
    scores = ex.op("MatMul", [ex.op("Mul", [q, root]), keys], hint="scores")
    if n.attrs["masked"]:
        scores = ex.op("Add", [scores, args[3]], hint="scores")
    if n.attrs["causal"]:
        tq = ex.op("Shape", [scores], start=-2, end=-1)
        tk = ex.op("Shape", [scores], start=-1)
        zero, one, axis = ex.const(np.int64(0)), ex.const(np.int64(1)), ex.ints([0])
        rows = ex.op("Unsqueeze", [ex.op("Range", [zero, ex.op("Squeeze", [tq, axis]), one]), ex.ints([1])])
        cols = ex.op("Range", [zero, ex.op("Squeeze", [tk, axis]), one])
        scores = ex.op("Where", [ex.op("LessOrEqual", [cols, rows]), scores, ex.const(-np.inf, q_type)],
                       hint="scores")
    p = ex.op("Softmax", [scores], hint="attention", axis=-1)
    if n.attrs["masked"]:   # a row the mask hides whole: zeros, as dln's (and torch's), not Softmax's NaN
        top = ex.op("ReduceMax", [scores, ex.ints([-1])], keepdims=1)
        hidden = ex.op("Equal", [top, ex.const(-np.inf, q_type)])
        p = ex.op("Where", [hidden, ex.const(0, q_type), p], hint="attention")
    out = ex.op("MatMul", [p, v], hint=n.name)
    lse = ex.op("ReduceLogSumExp", [scores, ex.ints([-1])], keepdims=0) if 1 in results_read(ex, n) else ""
    return [out, lse]


def results_read(ex: Exporter, n: Node) -> set[int]:
    """Which results of multi-result `n` a live `result` node reads."""
    return {m.attrs["index"] for m in ex.graph.nodes
            if m.op is Op.RESULT and m.inputs[0] == n.id and m.id in ex.live}
