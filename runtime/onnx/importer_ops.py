"""How each ONNX op is written in `.dln`: one handler per op type, registered in HANDLERS.

A handler reads its node's inputs from the importer (`imp.known` for values known while
importing, `imp.operand` / `imp.stage` for tensors) and sets its outputs: a pipe stage (`relu`,
`maxpool2d(2)`), a layer (`imp.layer`: a stage that owns parameters, with its weights in PyTorch's
layouts), or an operator expression.  What has no `.dln` form is `unsupported(node, why)`.
Layers are in importer_layers.py, recurrent layers in importer_rnn.py.
"""

from __future__ import annotations

import numpy as np
import onnx

from dln.compiler.symbolic import Sym
from dln.runtime.onnx.importer_core import ELEM_TYPES, Importer, handles
from dln.runtime.onnx.importer_fold import Fill
from dln.runtime.onnx.importer_graph import INode
from dln.runtime.onnx.importer_text import Tensor, args_text, dim_text, number, unsupported


def hint(n: INode) -> str:
    """A binding name from the node's name: its last path component without the op type."""
    parts = [p for p in n.name.split("/") if p]
    for p in reversed(parts):
        if not p.split("_")[0] == n.op and p != n.op:
            last = p.split(".")[-1]
            return p if last[:1].isdigit() else last
    return n.op.lower()


def ints(a) -> list:
    """A known array of sizes as a list of ints (and Syms, for sizes that are symbolic)."""
    return [x if isinstance(x, Sym) else int(x) for x in np.reshape(a, -1).tolist()]


def one(values: list) -> object:
    """An int for equal values per axis (`kernel = 3`), a tuple otherwise (`kernel = (3, 5)`)."""
    return values[0] if len(set(values)) == 1 else tuple(values)


# ---- elementwise -----------------------------------------------------------------------------------------

UNARY = {"Relu": "relu", "Tanh": "tanh", "Sigmoid": "sigmoid", "Exp": "exp", "Log": "log", "Sqrt": "sqrt",
         "Abs": "abs", "Sin": "sin", "Cos": "cos", "Softplus": "softplus", "Softsign": "softsign", "Sign": "sign",
         "Floor": "floor", "Atan": "atan", "dln.Gelu": "gelu"}


@handles(*UNARY)
def _unary(imp: Importer, n: INode) -> None:
    imp.stage(n.outputs[0], n.inputs[0], UNARY[n.op], hint(n))


@handles("Identity")
def _identity(imp: Importer, n: INode) -> None:
    imp.set(n.outputs[0], imp.values[n.inputs[0]])


@handles("LeakyRelu")
def _leaky_relu(imp: Importer, n: INode) -> None:
    imp.stage(n.outputs[0], n.inputs[0], f"leaky_relu({number(n.attr('alpha', 0.01))})", hint(n))


@handles("Elu")
def _elu(imp: Importer, n: INode) -> None:
    alpha = n.attr("alpha", 1.0)
    imp.stage(n.outputs[0], n.inputs[0], "elu" if alpha == 1.0 else f"elu({number(alpha)})", hint(n))


@handles("Selu")
def _selu(imp: Importer, n: INode) -> None:
    if abs(n.attr("alpha", 1.67326) - 1.6732632) > 1e-4 or abs(n.attr("gamma", 1.0507) - 1.0507010) > 1e-4:
        raise unsupported(n, "selu takes torch's constants only")
    imp.stage(n.outputs[0], n.inputs[0], "selu", hint(n))


@handles("Gelu")
def _gelu(imp: Importer, n: INode) -> None:
    approx = n.attr("approximate", "none")
    imp.stage(n.outputs[0], n.inputs[0], "gelu" if approx == "none" else 'gelu(approximate = "tanh")', hint(n))


@handles("Softmax", "LogSoftmax")
def _softmax(imp: Importer, n: INode) -> None:
    axis = n.attr("axis", -1)
    call = "softmax" if n.op == "Softmax" else "log_softmax"
    rank = imp.rank(n.inputs[0])
    imp.stage(n.outputs[0], n.inputs[0], call if axis == -1 or (rank and axis == rank - 1) else f"{call}({axis})",
              hint(n))


@handles("Dropout")
def _dropout(imp: Importer, n: INode) -> None:
    if len(n.outputs) > 1 and n.outputs[1] and imp.uses.get(n.outputs[1]):
        raise unsupported(n, "its mask output has no .dln form")
    ratio = imp.known(n.input(1))
    p = float(np.reshape(ratio, -1)[0]) if ratio is not None else n.attr("ratio", 0.5)
    if p == 0:
        imp.set(n.outputs[0], imp.values[n.inputs[0]])
    else:
        imp.stage(n.outputs[0], n.inputs[0], f"dropout({number(p)})", hint(n))


@handles("Clip")
def _clip(imp: Importer, n: INode) -> None:
    lo, hi = imp.known(n.input(1)), imp.known(n.input(2))
    if (n.input(1) and lo is None) or (n.input(2) and hi is None):
        raise unsupported(n, "its bounds must be constants")
    bounds = {k: float(np.reshape(v, -1)[0]) for k, v in (("lo", lo), ("hi", hi)) if v is not None}
    imp.stage(n.outputs[0], n.inputs[0], f"clamp({', '.join(args_text([], bounds))})", hint(n))


BINARY = {"Add": "+", "Sub": "-", "Mul": "*", "Div": "/", "Pow": "**", "MatMul": "@", "Equal": "==",
          "Less": "<", "Greater": ">", "LessOrEqual": "<=", "GreaterOrEqual": ">=", "And": "and", "Or": "or"}


@handles(*BINARY)
def _binary(imp: Importer, n: INode) -> None:
    a, b = n.inputs[0], n.inputs[1]
    if n.op == "Div" and all(imp.dtype(v) in ("i32", "i64") for v in (a, b)):
        raise unsupported(n, "integer division of tensors (ONNX truncates; .dln's / is true division)")
    imp.expression(n.outputs[0], f"{imp.operand(a, (b,))} {BINARY[n.op]} {imp.operand(b, (a,))}", hint(n))


@handles("Max", "Min")
def _max(imp: Importer, n: INode) -> None:
    if len(n.inputs) != 2:
        raise unsupported(n, "takes two inputs in .dln (maximum, minimum)")
    call = "maximum" if n.op == "Max" else "minimum"
    a, b = n.inputs
    imp.expression(n.outputs[0], f"{call}({imp.operand(a, (b,))}, {imp.operand(b, (a,))})", hint(n))


@handles("Neg", "Reciprocal", "Not")
def _prefix(imp: Importer, n: INode) -> None:
    x = imp.operand(n.inputs[0])
    imp.expression(n.outputs[0], {"Neg": f"-{x}", "Reciprocal": f"1.0 / {x}", "Not": f"not {x}"}[n.op], hint(n))


@handles("Where")
def _where(imp: Importer, n: INode) -> None:
    c, a, b = (imp.operand(v, tuple(o for o in n.inputs if o != v)) for v in n.inputs)
    imp.expression(n.outputs[0], f"where({c}, {a}, {b})", hint(n))


@handles("Cast")
def _cast(imp: Importer, n: INode) -> None:
    to = ELEM_TYPES.get(n.attr("to"))
    if to is None:
        raise unsupported(n, "casts to an element type .dln lacks")
    imp.stage(n.outputs[0], n.inputs[0], f"cast({to})", hint(n))


# ---- reductions ------------------------------------------------------------------------------------------

@handles("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin")
def _reduce(imp: Importer, n: INode) -> None:
    axes = n.attr("axes")
    if axes is None and n.input(1):
        axes = imp.known(n.input(1))
        if axes is None:
            raise unsupported(n, "its axes must be constants")
    call = n.op[len("Reduce"):].lower()
    keep = bool(n.attr("keepdims", 1))
    if axes is None or len(np.reshape(axes, -1)) == 0:
        if n.attr("noop_with_empty_axes", 0):
            imp.set(n.outputs[0], imp.values[n.inputs[0]])
            return
        rank = imp.rank(n.inputs[0])
        if rank is None:
            raise unsupported(n, "reduces every axis of an input of unknown rank")
        axes = list(range(rank))
    axes = ints(axes)
    kw = {"axis": axes[0] if len(axes) == 1 else tuple(axes), "keepdim": "true" if keep else "false"}
    imp.stage(n.outputs[0], n.inputs[0], f"{call}({', '.join(args_text([], kw, {'keepdim': 'false'}))})", hint(n))


# ---- shapes -----------------------------------------------------------------------------------------------

@handles("Flatten")
def _flatten(imp: Importer, n: INode) -> None:
    axis = n.attr("axis", 1)
    if axis == 1:
        imp.stage(n.outputs[0], n.inputs[0], "flatten", hint(n))
        return
    shape = imp.need_shape(n, n.inputs[0])
    lead = 1
    for d in shape[:axis % len(shape)]:
        lead = lead * d
    imp.stage(n.outputs[0], n.inputs[0], f"reshape(({dim_text(lead)}, -1))", hint(n))


@handles("Reshape")
def _reshape(imp: Importer, n: INode) -> None:
    target = imp.known(n.inputs[1])
    if target is None or not isinstance(target, np.ndarray):
        out = imp.shape(n.outputs[0])
        if out is None or any(d is None for d in out):
            raise unsupported(n, "its target shape is computed from the inputs' values, not only their shapes")
        dims = list(out)
    else:
        dims = ints(target)
        if 0 in dims and not n.attr("allowzero", 0):
            shape = imp.need_shape(n, n.inputs[0])
            dims = [shape[k] if isinstance(d, int) and d == 0 else d for k, d in enumerate(dims)]
    text = ", ".join(dim_text(d) for d in dims) + ("," if len(dims) == 1 else "")
    imp.stage(n.outputs[0], n.inputs[0], f"reshape(({text}))", hint(n))
    imp.set_shape(n.outputs[0], _resolved(dims, imp.shape(n.inputs[0])))


def _resolved(dims: list, shape: tuple | None) -> tuple:
    """A reshape's result shape, its -1 worked out from the input's size where that is known
    (`(-1, 8, 8)` of `[B, 1, 8, 8]` is `[B, 8, 8]`); None where it is not."""
    if not any(isinstance(d, int) and d == -1 for d in dims):
        return tuple(dims)
    if shape is None or any(d is None for d in shape):
        return tuple(None if isinstance(d, int) and d == -1 else d for d in dims)
    total, known = 1, 1
    for d in shape:
        total = total * d
    for d in dims:
        if not (isinstance(d, int) and d == -1):
            known = known * d
    try:
        rest = total // known
    except (ArithmeticError, TypeError):
        rest = None
    return tuple(rest if isinstance(d, int) and d == -1 else d for d in dims)


@handles("Transpose")
def _transpose(imp: Importer, n: INode) -> None:
    perm = n.attr("perm")
    if perm is None:
        rank = imp.rank(n.inputs[0])
        if rank is None:
            raise unsupported(n, "reverses the axes of an input of unknown rank")
        perm = list(range(rank))[::-1]
    moved = [k for k, p in enumerate(perm) if p != k]
    if not moved:
        imp.set(n.outputs[0], imp.values[n.inputs[0]])
    elif len(moved) == 2:
        imp.stage(n.outputs[0], n.inputs[0], f"transpose({moved[0]}, {moved[1]})", hint(n))
    else:
        imp.stage(n.outputs[0], n.inputs[0], f"permute({', '.join(str(p) for p in perm)})", hint(n))


def _axes_of(imp: Importer, n: INode) -> list[int] | None:
    if "axes" in n.attrs:
        return [int(a) for a in n.attrs["axes"]]
    if n.input(1):
        axes = imp.known(n.input(1))
        if axes is None:
            raise unsupported(n, "its axes must be constants")
        return ints(axes)
    return None


@handles("Squeeze")
def _squeeze(imp: Importer, n: INode) -> None:
    axes = _axes_of(imp, n)
    if axes is None:
        imp.stage(n.outputs[0], n.inputs[0], "squeeze", hint(n))
        return
    rank = imp.rank(n.inputs[0])
    if rank is None and any(a < 0 for a in axes):
        raise unsupported(n, "negative axes of an input of unknown rank")
    _one_axis_stages(imp, n, [f"squeeze({a})" for a in sorted((a % rank if rank else a for a in axes), reverse=True)])


def _one_axis_stages(imp: Importer, n: INode, calls: list[str]) -> None:
    """A squeeze or unsqueeze of several axes as a pipe of one-axis stages, in the order given."""
    source = n.inputs[0]
    for k, call in enumerate(calls):
        out = n.outputs[0] if k == len(calls) - 1 else f"{n.outputs[0]}#{k}"
        imp.uses[out] = 1
        imp.stage(out, source, call, hint(n))
        source = out


@handles("Unsqueeze")
def _unsqueeze(imp: Importer, n: INode) -> None:
    axes = _axes_of(imp, n)
    rank = imp.rank(n.outputs[0]) or (imp.rank(n.inputs[0]) or 0) + len(axes)
    _one_axis_stages(imp, n, [f"unsqueeze({a})" for a in sorted(a % rank for a in axes)])


@handles("Concat")
def _concat(imp: Importer, n: INode) -> None:
    parts = ", ".join(imp.operand(v) for v in n.inputs if v)
    imp.expression(n.outputs[0], f"concat([{parts}], axis = {n.attr('axis')})", hint(n))


@handles("Split")
def _split(imp: Importer, n: INode) -> None:
    axis = n.attr("axis", 0)
    sizes = n.attr("split") or (ints(imp.known(n.input(1))) if n.input(1) and imp.known(n.input(1)) is not None
                                else None)
    if sizes is None:
        shape = imp.need_shape(n, n.inputs[0])
        total, k = shape[axis], len(n.outputs)
        if not isinstance(total, int):
            raise unsupported(n, "splits a symbolic axis into equal parts (.dln needs the sizes)")
        sizes = [-(-total // k)] * (k - 1) + [total - -(-total // k) * (k - 1)]
    text = f"split({imp.operand(n.inputs[0])}, {args_text([tuple(sizes)], {})[0]}, axis = {axis})"
    imp.bind_many(list(n.outputs), Tensor(text), [f"{hint(n)}_{k}" for k in range(len(n.outputs))])


@handles("Slice")
def _slice(imp: Importer, n: INode) -> None:
    starts, ends = imp.known(n.inputs[1]), imp.known(n.inputs[2])
    axes = imp.known(n.input(3)) if n.input(3) else None
    steps = imp.known(n.input(4)) if n.input(4) else None
    if starts is None or ends is None or (n.input(3) and axes is None) or (n.input(4) and steps is None):
        raise unsupported(n, "its starts, ends, axes and steps must be constants")
    starts, ends = ints(starts), ints(ends)
    axes = ints(axes) if axes is not None else list(range(len(starts)))
    steps = ints(steps) if steps is not None else [1] * len(starts)
    rank = imp.rank(n.inputs[0])
    if rank is None:
        if any(a < 0 for a in axes):
            raise unsupported(n, "negative axes of an input of unknown rank")
        rank = max(axes) + 1
    index = [":"] * rank
    for s, e, a, st in zip(starts, ends, axes, steps):
        if not isinstance(st, int) or st <= 0:
            raise unsupported(n, "a slice with a negative step")
        start = "" if isinstance(s, int) and s == 0 else dim_text(s)
        stop = "" if isinstance(e, int) and e >= 2 ** 31 else dim_text(e)
        index[a % rank] = f"{start}:{stop}" + (f":{st}" if st != 1 else "")
    while index and index[-1] == ":":
        index.pop()
    imp.expression(n.outputs[0], f"{imp.operand(n.inputs[0])}[{', '.join(index) or '...'}]", hint(n))


@handles("Expand")
def _expand(imp: Importer, n: INode) -> None:
    out = imp.shape(n.outputs[0])
    if out is None or any(d is None for d in out):
        raise unsupported(n, "its result shape is unknown")
    imp.stage(n.outputs[0], n.inputs[0], f"expand(({', '.join(dim_text(d) for d in out)},))", hint(n))


@handles("Pad")
def _pad(imp: Importer, n: INode) -> None:
    pads = imp.known(n.input(1))
    value = imp.known(n.input(2)) if n.input(2) else None
    if n.attr("mode", "constant") != "constant" or pads is None or (n.input(3)):
        raise unsupported(n, "only constant padding by constant amounts on every axis has a .dln form")
    pads = ints(pads)
    half = len(pads) // 2
    if any(p < 0 for p in pads):
        raise unsupported(n, "negative padding")
    order: list[int] = []
    for a in reversed(range(half)):   # F.pad order: the last axis first
        order += [pads[a], pads[a + half]]
    while order and order[-2:] == [0, 0]:
        order = order[:-2]
    fill = float(np.reshape(value, -1)[0]) if value is not None else 0.0
    kw = args_text([tuple(order)], {"value": fill}, {"value": 0.0})
    imp.stage(n.outputs[0], n.inputs[0], f"pad({', '.join(kw)})", hint(n))


@handles("Gather")
def _gather(imp: Importer, n: INode) -> None:
    data, index = n.inputs
    axis = n.attr("axis", 0)
    table = imp.known(data)
    if table is not None and isinstance(table, np.ndarray) and table.ndim == 2 and table.dtype.kind == "f" \
            and axis == 0 and imp.known(index) is None:
        layer = imp.layer(n, "embedding", [str(table.shape[0]), str(table.shape[1])], {"weight": table}, [data])
        imp.stage(n.outputs[0], index, layer, hint(n))
        return
    at = imp.known(index)
    rank = imp.rank(data)
    if at is None or not isinstance(at, np.ndarray):
        raise unsupported(n, "gathers by indices computed at run time from a tensor (only embedding tables, and "
                             "constant indices, have a .dln form)")
    if axis < 0:
        if rank is None:
            raise unsupported(n, "a negative axis of an input of unknown rank")
        axis %= rank
    picks = ints(at)
    if np.ndim(at) == 0:
        pick = str(picks[0])
    elif len(picks) == 1 or (len(picks) > 1 and all(isinstance(p, int) and p >= 0 for p in picks)
                             and len(set(np.diff(picks))) == 1 and picks[1] > picks[0]):
        step = picks[1] - picks[0] if len(picks) > 1 else 1
        pick = f"{picks[0]}:{picks[-1] + 1}" + (f":{step}" if step != 1 else "")
        if len(picks) == 1 and picks[0] == -1:
            pick = "-1:"
    else:
        raise unsupported(n, "gathers at constant indices that are not evenly spaced")
    index_text = ", ".join([":"] * axis + [pick])
    imp.expression(n.outputs[0], f"{imp.operand(data)}[{index_text}]", hint(n))


@handles("Trilu")
def _trilu(imp: Importer, n: INode) -> None:
    """The lower (upper) triangle of the last two axes, written with `arange`: of a constant of a
    symbolic shape (a causal mask, as torch exports `is_causal`), `cast(j <= i, f32)`; of a tensor,
    `where(j <= i, x, 0)`."""
    k = imp.known(n.input(1)) if n.input(1) else np.zeros(())
    if k is None:
        raise unsupported(n, "its diagonal offset k must be a constant")
    k = int(np.reshape(k, -1)[0])
    x = imp.known(n.inputs[0])
    shape = x.shape if isinstance(x, (Fill, np.ndarray)) else imp.need_shape(n, n.inputs[0])
    if shape is None or len(shape) < 2:
        raise unsupported(n, "an input of fewer than two axes")
    rows, cols = shape[-2], shape[-1]
    i = f"unsqueeze(arange({dim_text(rows)}), 1)" + (f" + {k}" if k > 0 else f" - {-k}" if k < 0 else "")
    cond = f"arange({dim_text(cols)}) {'>=' if n.attr('upper', 1) else '<='} {i}"
    if isinstance(x, Fill):
        if any(d != 1 for d in x.shape[:-2]):
            raise unsupported(n, "a constant with leading axes other than 1")
        dtype = ELEM_TYPES.get(onnx.helper.np_dtype_to_tensor_dtype(x.dtype), "f32")
        text = f"cast({cond}, {dtype})" + ("" if x.value == 1 else f" * {number(x.value)}")
    else:
        zero = "0.0" if imp.dtype(n.inputs[0]) in ("f32", "f64", "f16", "bf16") else "0"
        text = f"where({cond}, {imp.operand(n.inputs[0])}, {zero})"
    imp.expression(n.outputs[0], text, hint(n))


@handles("Range")
def _range(imp: Importer, n: INode) -> None:
    start, limit, delta = (imp.known(v) for v in n.inputs)
    if start is None or limit is None or delta is None:
        raise unsupported(n, "its start, limit and delta must be known while importing (numbers or sizes)")
    start, limit, delta = (np.reshape(v, -1)[0] for v in (start, limit, delta))
    if isinstance(start, (float, np.floating)) or isinstance(delta, (float, np.floating)):
        raise unsupported(n, "a range of floats")
    args = [dim_text(limit)] if start == 0 and delta == 1 else \
        [dim_text(start), dim_text(limit)] + ([dim_text(delta)] if delta != 1 else [])
    imp.expression(n.outputs[0], f"arange({', '.join(args)})", hint(n))


@handles("RandomNormalLike", "RandomUniformLike")
def _random_like(imp: Importer, n: INode) -> None:
    """Noise of the input's shape (a VAE's): `randn_like`, `rand_like`, drawn by dln's generator."""
    if n.attr("dtype") is not None and n.attr("dtype") != onnx.TensorProto.FLOAT:
        raise unsupported(n, "noise of another element type than float32")
    x = imp.operand(n.inputs[0])
    if n.op == "RandomNormalLike":
        mean, scale = n.attr("mean", 0.0), n.attr("scale", 1.0)
        text = f"randn_like({x})" + (f" * {number(scale)}" if scale != 1.0 else "") + \
            (f" + {number(mean)}" if mean != 0.0 else "")
    else:
        low, high = n.attr("low", 0.0), n.attr("high", 1.0)
        text = f"rand_like({x})" + (f" * {number(high - low)}" if high - low != 1.0 else "") + \
            (f" + {number(low)}" if low != 0.0 else "")
    imp.expression(n.outputs[0], text, hint(n))


@handles("ai.dln.Normal", "ai.dln.Uniform")
def _dln_draw(imp: Importer, n: INode) -> None:
    """A draw dln's exporter wrote (export_random): `randn_like`, `rand_like` again, bound to a name at
    once so that the draws come in the text in the graph's order.  dln numbers a model's random
    streams in the order its draws are built, so where the graph's draws are streams 0, 1, 2, ... in
    that order the imported model draws the very same numbers; where not, a comment says so."""
    normal = n.op == "Normal"
    shape, dtype = imp.known(n.input(2)), ELEM_TYPES.get(n.attr("dtype", onnx.TensorProto.FLOAT))
    if shape is None or n.attr("stream") is None or dtype not in ("f16", "bf16", "f32", "f64"):
        raise unsupported(n, "a draw needs a known shape, a stream and a float type")
    shape = tuple(ints(shape))
    like = imp.tensor_like(shape, dtype)
    if like is None:
        raise unsupported(n, f"randn_like and rand_like read the shape of a tensor, and no {dtype} tensor "
                             f"of the shape [{', '.join(dim_text(d) for d in shape)}] comes before the draw")
    stream = int(n.attr("stream"))
    if stream != imp.streams:
        imp.lines.append(f"# the ONNX model drew this from stream {stream}, dln draws it from stream "
                         f"{imp.streams}: other numbers")
    imp.streams += 2 if normal else 1
    imp.expression(n.outputs[0], f"{'randn_like' if normal else 'rand_like'}({like})", "noise")
    imp.materialize(n.outputs[0])


@handles("Shape")
def _shape(imp: Importer, n: INode) -> None:
    raise unsupported(n, "needs the shape of its input, which shape inference could not find")
