"""ONNX export of patterns that span several dln nodes: the layers ONNX has one op for.

dln's layers are decompositions into primitives; ONNX tools (and runtimes' fast kernels) look for
the layers.  Each recognizer here looks at a pattern's root node and, when the nodes below it are
exactly what the layer's built-in emits, returns a `Lowering` that reads the pattern's operands
(the nodes inside are then written only if something else reads them):

| dln pattern (built-in)                                  | ONNX            |
| ------------------------------------------------------- | --------------- |
| `x @ permute(W) + broadcast(b)`, 2-d (`linear`)          | `Gemm`          |
| `conv(x, w) + broadcast(reshape(b))` (`conv2d`, ...)     | `Conv` with B   |
| `(x - mean) * rsqrt(var + eps) [* weight + bias]` per channel (`batchnorm`) | `BatchNormalization` |
| the windows of a tiled `maxpool2d`, first maximum picked | `MaxPool`       |
| `gather(W, broadcast(index))` along 0 (`embedding`)      | `Gather`        |
| `exp(x - max) / sum(exp(x - max))`, and its log (`softmax`, `log_softmax`) | `Softmax`, `LogSoftmax` |
| the window sums of a tiled `avgpool2d` over the window's size | `AveragePool`   |
| `sum(x, axes) / count` (`mean`, `global_avgpool`)        | `ReduceMean`    |

Anything else (and any of these when the shapes say otherwise) is exported node by node.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from dln.compiler.ir import Graph, Node, Op
from dln.runtime.onnx.export import NUMPY, Exporter, Lowering
from dln.runtime.onnx.export_ops import conv_attrs

Recognizer = Callable[[Graph, dict[int, list[int]], Node], "Lowering | None"]
RECOGNIZERS: dict[Op, list[Recognizer]] = {}


def recognizer(*ops: Op):
    def register(fn: Recognizer) -> Recognizer:
        for op in ops:
            RECOGNIZERS.setdefault(op, []).append(fn)
        return fn
    return register


def _only_user(users: dict[int, list[int]], inner: Node, root: Node) -> bool:
    return users[inner.id] == [root.id]


def _operands(graph: Graph, n: Node, op: Op) -> tuple[Node, Node] | None:
    """(the operand of op `op`, the other) of binary `n`, either order."""
    a, b = (graph.node(i) for i in n.inputs)
    if a.op is op:
        return a, b
    if b.op is op:
        return b, a
    return None


def _vector(graph: Graph, n: Node, size, axis: int, rank: int) -> Node | None:
    """The rank-1 [size] tensor that `n` spreads along `axis` of a rank-`rank` tensor: `n` is it
    broadcast (and reshaped to [1, .., size, .., 1]), as a bias or a per-channel statistic is."""
    if n.op is Op.BROADCAST:
        n = graph.node(n.inputs[0])
    if n.op is Op.RESHAPE and n.type.rank == rank - axis and \
            tuple(n.shape) == (size,) + (1,) * (rank - axis - 1):
        n = graph.node(n.inputs[0])
    elif n.op is Op.RESHAPE and n.type.rank == rank and \
            tuple(n.shape) == (1,) * axis + (size,) + (1,) * (rank - axis - 1):
        n = graph.node(n.inputs[0])
    if n.type.rank == 1 and n.shape[0] == size:
        return n
    return None


# ---- Gemm ----------------------------------------------------------------------------------------------------------

def _gemm_parts(graph: Graph, mm: Node) -> tuple[int, int, int] | None:
    """(x, the weight read, transB) of a 2-d matmul."""
    if mm.op is not Op.MATMUL or mm.type.rank != 2:
        return None
    x, w = (graph.node(i) for i in mm.inputs)
    if w.op is Op.PERMUTE and tuple(w.attrs["perm"]) == (1, 0):
        return x.id, w.inputs[0], 1
    return x.id, w.id, 0


@recognizer(Op.ADD)
def gemm_bias(graph: Graph, users: dict[int, list[int]], n: Node) -> Lowering | None:
    pair = _operands(graph, n, Op.MATMUL)
    if pair is None or not _only_user(users, pair[0], n):
        return None
    parts = _gemm_parts(graph, pair[0])
    bias = _vector(graph, pair[1], n.shape[1], 1, 2) if parts else None
    if bias is None or bias.dtype is not n.dtype:
        return None
    x, w, trans = parts
    return Lowering((x, w, bias.id), lambda ex, node: ex.op(
        "Gemm", [ex.value(x), ex.value(w), ex.value(bias.id)], hint=node.name, transB=trans or None))


@recognizer(Op.MATMUL)
def gemm(graph: Graph, users: dict[int, list[int]], n: Node) -> Lowering | None:
    parts = _gemm_parts(graph, n)
    if parts is None or not parts[2]:
        return None   # a plain MatMul
    x, w, _ = parts
    return Lowering((x, w), lambda ex, node: ex.op("Gemm", [ex.value(x), ex.value(w)], hint=node.name, transB=1))


# ---- Conv with its bias ------------------------------------------------------------------------------------------

@recognizer(Op.ADD)
def conv_bias(graph: Graph, users: dict[int, list[int]], n: Node) -> Lowering | None:
    pair = None
    for op in (Op.CONV, Op.CONV_TRANSPOSE):
        pair = pair or _operands(graph, n, op)
    if pair is None or not _only_user(users, pair[0], n):
        return None
    conv, other = pair
    bias = _vector(graph, other, conv.shape[1], 1, conv.type.rank)
    if bias is None or bias.dtype is not n.dtype:
        return None
    op_type = "Conv" if conv.op is Op.CONV else "ConvTranspose"

    def write(ex: Exporter, node: Node) -> str:
        extra = conv.attrs.get("output_padding") if conv.op is Op.CONV_TRANSPOSE else None
        return ex.op(op_type, [ex.value(i) for i in conv.inputs] + [ex.value(bias.id)], hint=node.name,
                     output_padding=list(extra) if extra else None, **conv_attrs(conv))
    return Lowering((*conv.inputs, bias.id), write)


# ---- BatchNormalization -----------------------------------------------------------------------------------------

@recognizer(Op.ADD)
def batchnorm(graph: Graph, users: dict[int, list[int]], n: Node) -> Lowering | None:
    """add(mul(mul(sub(x, mean), rsqrt(add(var, eps))), weight), bias), each statistic and affine
    vector per channel (axis 1), as the `batchnorm` built-in writes evaluation mode."""
    rank = n.type.rank
    if rank < 2 or not n.dtype.is_float:
        return None
    channels = n.shape[1]

    def vec(node: Node) -> Node | None:
        return _vector(graph, node, channels, 1, rank)

    pair = _operands(graph, n, Op.MUL)
    if pair is None or vec(pair[1]) is None:
        return None
    scaled, bias = pair[0], vec(pair[1])
    pair = None
    for a, b in (scaled.inputs, scaled.inputs[::-1]):
        if graph.node(a).op is Op.MUL and vec(graph.node(b)) is not None:
            pair = graph.node(a), vec(graph.node(b))
    if pair is None:
        return None
    normed, weight = pair
    stats = _normalized(graph, normed, vec)
    if stats is None:
        return None
    x, mean, var, eps = stats
    if not (_only_user(users, scaled, n) and _only_user(users, normed, scaled)):
        return None
    return Lowering((x, weight.id, bias.id, mean.id, var.id), lambda ex, node: ex.op(
        "BatchNormalization", [ex.value(x), ex.value(weight.id), ex.value(bias.id), ex.value(mean.id),
                               ex.value(var.id)], hint=node.name, epsilon=eps))


@recognizer(Op.MUL)
def batchnorm_plain(graph: Graph, users: dict[int, list[int]], n: Node) -> Lowering | None:
    """`batchnorm(affine = false)`: the normalization alone, BatchNormalization with scale 1 and bias 0."""
    if n.type.rank < 2 or not n.dtype.is_float or not isinstance(n.shape[1], int):
        return None
    stats = _normalized(graph, n, lambda node: _vector(graph, node, n.shape[1], 1, n.type.rank))
    if stats is None:
        return None
    x, mean, var, eps = stats

    def write(ex: Exporter, node: Node) -> str:
        from onnx import numpy_helper

        one = ex.op("ConstantOfShape", [ex.ints([node.shape[1]])],
                    value=numpy_helper.from_array(np.ones(1, NUMPY[node.dtype])))
        zero = ex.op("ConstantOfShape", [ex.ints([node.shape[1]])],
                     value=numpy_helper.from_array(np.zeros(1, NUMPY[node.dtype])))
        return ex.op("BatchNormalization", [ex.value(x), one, zero, ex.value(mean.id), ex.value(var.id)],
                     hint=node.name, epsilon=eps)
    return Lowering((x, mean.id, var.id), write)


def _normalized(graph: Graph, normed: Node, vec) -> tuple[int, Node, Node, float] | None:
    """(x, mean, var, eps) of `mul(sub(x, mean), rsqrt(add(var, eps)))`."""
    for a, b in (normed.inputs, normed.inputs[::-1]):
        centered, spread = graph.node(a), graph.node(b)
        if centered.op is not Op.SUB or centered.shape != normed.shape:
            continue
        mean = vec(graph.node(centered.inputs[1]))
        if spread.op is Op.BROADCAST:
            spread = graph.node(spread.inputs[0])
        if mean is None or spread.op is not Op.RSQRT:
            continue
        plus = graph.node(spread.inputs[0])
        if plus.op is not Op.ADD:
            continue
        for v, e in (plus.inputs, plus.inputs[::-1]):
            var, eps = vec(graph.node(v)), graph.node(e)
            if var is not None and eps.op is Op.CONST:
                return centered.inputs[0], mean, var, float(eps.attrs["value"])
    return None


# ---- MaxPool -------------------------------------------------------------------------------------------------

@recognizer(Op.SUM)
def maxpool(graph: Graph, users: dict[int, list[int]], n: Node) -> Lowering | None:
    """sum(where(iota == argmax(windows), windows, 0)) over the windows' axis, the windows tiling
    [.., H, W] (stride = kernel): MaxPool, which drops the rows and columns past the last window
    as the built-in's slice does."""
    rank = n.type.rank + 1
    if tuple(n.attrs["axes"]) != (rank - 1,) or n.attrs["keepdim"] or rank != 5:
        return None
    pick = graph.node(n.inputs[0])
    if pick.op is not Op.WHERE:
        return None
    cond, windows, zero = (graph.node(i) for i in pick.inputs)
    if zero.op is not Op.CONST or zero.attrs["value"] != 0 or cond.op is not Op.EQ:
        return None
    sides = [graph.node(i) for i in cond.inputs]
    sides = [graph.node(s.inputs[0]) if s.op is Op.BROADCAST else s for s in sides]
    if sorted(s.op.value for s in sides) != ["argmax", "iota"]:
        return None
    first = next(s for s in sides if s.op is Op.ARGMAX)
    if first.inputs[0] != windows.id or tuple(first.attrs["axes"]) != (rank - 1,):
        return None
    tiled = _tiles(graph, windows)
    if tiled is None:
        return None
    x, kh, kw = tiled
    return Lowering((x,), lambda ex, node: ex.op("MaxPool", [ex.value(x)], hint=node.name, kernel_shape=[kh, kw],
                                                 strides=[kh, kw]))


def _tiles(graph: Graph, windows: Node) -> tuple[int, int, int] | None:
    """(x, kh, kw) when `windows` [.., OH, OW, kh*kw] is reshape(permute(reshape(x'))) of x' [.., OH*kh,
    OW*kw], x' being x or its top-left corner (a slice)."""
    if windows.op is not Op.RESHAPE:
        return None
    swapped = graph.node(windows.inputs[0])
    if swapped.op is not Op.PERMUTE:
        return None
    lead = swapped.type.rank - 4
    if tuple(swapped.attrs["perm"]) != (*range(lead), lead, lead + 2, lead + 1, lead + 3):
        return None
    split = graph.node(swapped.inputs[0])
    if split.op is not Op.RESHAPE:
        return None
    source = graph.node(split.inputs[0])
    oh, kh, ow, kw = split.shape[lead:]
    if not all(isinstance(d, int) for d in (oh, kh, ow, kw)) or tuple(windows.shape[lead:]) != (oh, ow, kh * kw):
        return None
    if source.shape[lead:] != (oh * kh, ow * kw) or source.shape[:lead] != split.shape[:lead]:
        return None
    x = source
    if source.op is Op.SLICE:
        inner = graph.node(source.inputs[0])
        whole = all(a == 0 and s == 1 for a, s in zip(source.attrs["starts"], source.attrs["steps"]))
        kept = tuple(source.attrs["stops"][:lead]) == tuple(inner.shape[:lead])
        h, w = inner.shape[lead:]
        if whole and kept and isinstance(h, int) and isinstance(w, int) and (h // kh, w // kw) == (oh, ow):
            x = inner
    return x.id, kh, kw


# ---- Gather (embeddings) -------------------------------------------------------------------------------------

@recognizer(Op.GATHER)
def embedding(graph: Graph, users: dict[int, list[int]], n: Node) -> Lowering | None:
    """gather(W [V, D], broadcast(i [N, 1], [N, D]), axis 0): rows of W, ONNX's Gather(W, i [N])."""
    table, index = (graph.node(i) for i in n.inputs)
    if n.attrs["axis"] != 0 or table.type.rank != 2 or index.op is not Op.BROADCAST:
        return None
    rows = graph.node(index.inputs[0])
    if rows.type.rank != 2 or rows.shape[1] != 1 or n.shape[1] != table.shape[1]:
        return None
    return Lowering((table.id, rows.id), lambda ex, node: ex.op(
        "Gather", [ex.value(table.id), ex.op("Squeeze", [ex.value(rows.id), ex.ints([1])])], hint=node.name, axis=0))


# ---- Softmax, LogSoftmax -----------------------------------------------------------------------------------

def _unbroadcast(graph: Graph, n: Node) -> Node:
    return graph.node(n.inputs[0]) if n.op is Op.BROADCAST else n


def _reduced(graph: Graph, n: Node, op: Op) -> tuple[Node, int] | None:
    """(operand, axis) of `n` when it is (a broadcast of) a one-axis keepdim reduction `op`."""
    n = _unbroadcast(graph, n)
    if n.op is op and len(n.attrs["axes"]) == 1 and n.attrs["keepdim"]:
        return graph.node(n.inputs[0]), n.attrs["axes"][0]
    return None


def _shifted(graph: Graph, n: Node) -> tuple[Node, int] | None:
    """(x, axis) of `x - max(x, axis)`, the softmax built-ins' shift."""
    if n.op is not Op.SUB:
        return None
    x, top = (graph.node(i) for i in n.inputs)
    found = _reduced(graph, top, Op.MAX)
    return (x, found[1]) if found is not None and found[0].id == x.id else None


@recognizer(Op.DIV)
def softmax(graph: Graph, users: dict[int, list[int]], n: Node) -> Lowering | None:
    """exp(x - max(x)) / sum(exp(x - max(x))) along one axis (`softmax`): Softmax."""
    e, total = (graph.node(i) for i in n.inputs)
    summed = _reduced(graph, total, Op.SUM)
    if e.op is not Op.EXP or summed is None or summed[0].id != e.id:
        return None
    shifted = _shifted(graph, graph.node(e.inputs[0]))
    if shifted is None or shifted[1] != summed[1]:
        return None
    x, axis = shifted
    return Lowering((x.id,), lambda ex, node: ex.op("Softmax", [ex.value(x.id)], hint=node.name, axis=axis))


@recognizer(Op.SUB)
def log_softmax(graph: Graph, users: dict[int, list[int]], n: Node) -> Lowering | None:
    """(x - max(x)) - log(sum(exp(x - max(x)))) along one axis (`log_softmax`): LogSoftmax."""
    shifted_node, norm = (graph.node(i) for i in n.inputs)
    shifted = _shifted(graph, shifted_node)
    norm = _unbroadcast(graph, norm)
    if shifted is None or norm.op is not Op.LOG:
        return None
    summed = _reduced(graph, graph.node(norm.inputs[0]), Op.SUM)
    if summed is None or summed[0].op is not Op.EXP or summed[0].inputs[0] != shifted_node.id or \
            summed[1] != shifted[1]:
        return None
    x, axis = shifted
    return Lowering((x.id,), lambda ex, node: ex.op("LogSoftmax", [ex.value(x.id)], hint=node.name, axis=axis))


# ---- AveragePool, ReduceMean -------------------------------------------------------------------------------

@recognizer(Op.DIV)
def mean(graph: Graph, users: dict[int, list[int]], n: Node) -> Lowering | None:
    """sum(x, axes) / (the count of the values summed): AveragePool over the windows of a tiled
    `avgpool2d`, else ReduceMean (`mean`, `global_avgpool`)."""
    total, count = (graph.node(i) for i in n.inputs)
    if total.op is not Op.SUM or count.op is not Op.CONST or not n.dtype.is_float:
        return None
    x = graph.node(total.inputs[0])
    axes = tuple(total.attrs["axes"])
    sizes = [x.shape[a] for a in axes]
    if not axes or not all(isinstance(s, int) for s in sizes) or float(count.attrs["value"]) != float(np.prod(sizes)):
        return None
    if x.type.rank == 5 and axes == (4,) and not total.attrs["keepdim"]:
        tiled = _tiles(graph, x)
        if tiled is not None:
            source, kh, kw = tiled
            return Lowering((source,), lambda ex, node: ex.op("AveragePool", [ex.value(source)], hint=node.name,
                                                              kernel_shape=[kh, kw], strides=[kh, kw]))
    return Lowering((x.id,), lambda ex, node: ex.op("ReduceMean", [ex.value(x.id), ex.ints(list(axes))],
                                                    hint=node.name, keepdims=int(total.attrs["keepdim"])))
