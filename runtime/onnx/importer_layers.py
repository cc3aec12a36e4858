"""Handlers for the ONNX ops that are `.dln` layers: their weights, reordered into PyTorch's
layouts, become the layer's parameters (linear, convolutions, norms, pooling, recurrent layers)."""

from __future__ import annotations

import numpy as np

from dln.runtime.onnx.importer_core import Importer, handles
from dln.runtime.onnx.importer_graph import INode
from dln.runtime.onnx.importer_ops import hint, one
from dln.runtime.onnx.importer_text import args_text, dim_text, number, unsupported


def _weight(imp: Importer, n: INode, value: str, what: str) -> np.ndarray:
    w = imp.known(value)
    if w is None or not isinstance(w, np.ndarray) or w.dtype.kind != "f":
        raise unsupported(n, f"its {what} must be a constant float tensor (an initializer)")
    return w


# ---- linear ------------------------------------------------------------------------------------------------

@handles("dln.Linear")
def _linear(imp: Importer, n: INode) -> None:
    """MatMul(x, W) [+ b] (importer_graph's patterns): W is [in, out], torch's weight its transpose
    (or [out, in] already, from a Gemm with transB: attribute out_in)."""
    w = imp.known(n.inputs[1])
    weight = w if n.attr("out_in") else w.T
    weights = {"weight": np.ascontiguousarray(weight)}
    if n.input(2):
        weights["bias"] = np.reshape(imp.known(n.inputs[2]), -1).astype(w.dtype)
    args = [str(weight.shape[0])] + ([] if n.input(2) else ["bias = false"])
    source = n.inputs[0]
    if n.attr("merge"):   # the last axes of x merged into the features first
        source = f"{n.outputs[0]}#merged"
        imp.uses[source] = 1
        imp.stage(source, n.inputs[0], f"reshape(({', '.join(dim_text(d) for d in n.attr('merge'))}))", hint(n))
    imp.stage(n.outputs[0], source, imp.layer(n, "linear", args, weights, [n.input(2), n.inputs[1]]), hint(n))


@handles("Gemm")
def _gemm(imp: Importer, n: INode) -> None:
    a, b = n.inputs[0], n.inputs[1]
    alpha, beta = n.attr("alpha", 1.0), n.attr("beta", 1.0)
    w = imp.known(b)
    if w is None or imp.known(a) is not None or not isinstance(w, np.ndarray) or w.ndim != 2:
        lhs = imp.operand(a)
        x = f"transpose({lhs}, 0, 1)" if n.attr("transA", 0) else lhs
        y = f"transpose({imp.operand(b)}, 0, 1)" if n.attr("transB", 0) else imp.operand(b)
        text = f"{x} @ {y}" if alpha == 1.0 else f"{number(alpha)} * ({x} @ {y})"
        if n.input(2):
            c = imp.operand(n.inputs[2])
            text += f" + {c}" if beta == 1.0 else f" + {number(beta)} * {c}"
        imp.expression(n.outputs[0], text, hint(n))
        return
    weight = (w if n.attr("transB", 0) else w.T) * np.asarray(alpha, w.dtype)
    weights = {"weight": np.ascontiguousarray(weight)}
    out = weight.shape[0]
    if n.input(2):
        c = imp.known(n.inputs[2])
        if c is None or np.size(c) not in (1, out):
            raise unsupported(n, "its C must be a constant of one value per output (a bias)")
        weights["bias"] = np.broadcast_to(np.reshape(c, -1) * np.asarray(beta, w.dtype), (out,)).astype(w.dtype)
    args = [str(out)] + ([] if n.input(2) else ["bias = false"])
    source = n.inputs[0]
    if n.attr("transA", 0):
        imp.uses[f"{n.outputs[0]}#t"] = 1
        imp.stage(f"{n.outputs[0]}#t", source, "transpose(0, 1)", hint(n))
        source = f"{n.outputs[0]}#t"
    imp.stage(n.outputs[0], source, imp.layer(n, "linear", args, weights, [b, n.input(2)]), hint(n))


# ---- convolutions -----------------------------------------------------------------------------------------

def _padding(imp: Importer, n: INode, spatial: int, kernel: list[int], strides: list[int],
             dilations: list[int]) -> tuple[list[int], list[int]]:
    """Begin and end padding per spatial axis, from `pads` or `auto_pad`."""
    auto = n.attr("auto_pad", "NOTSET")
    if auto in ("NOTSET", "VALID"):
        pads = list(n.attr("pads", [0] * 2 * spatial)) if auto == "NOTSET" else [0] * 2 * spatial
        return pads[:spatial], pads[spatial:]
    shape = imp.need_shape(n, n.inputs[0])[2:]
    begin, end = [], []
    for size, k, s, d in zip(shape, kernel, strides, dilations):
        if not isinstance(size, int):
            raise unsupported(n, "auto_pad SAME on a symbolic spatial size")
        total = max(0, (-(-size // s) - 1) * s + (k - 1) * d + 1 - size)
        small, big = total // 2, total - total // 2
        begin.append(small if auto == "SAME_UPPER" else big)
        end.append(big if auto == "SAME_UPPER" else small)
    return begin, end


def _pre_pad(imp: Importer, n: INode, begin: list[int], end: list[int], value: str = "") -> tuple[str, list[int]]:
    """Uneven padding as a `pad` stage before the layer; the layer's own (even) padding."""
    if begin == end:
        return n.inputs[0], begin
    order: list[int] = []
    for b, e in zip(reversed(begin), reversed(end)):
        order += [b, e]
    tmp = f"{n.outputs[0]}#pad"
    imp.uses[tmp] = 1
    imp.stage(tmp, n.inputs[0], f"pad(({', '.join(map(str, order))}){value})", hint(n))
    return tmp, [0] * len(begin)


@handles("Conv")
def _conv(imp: Importer, n: INode) -> None:
    w = _weight(imp, n, n.inputs[1], "weight")
    spatial = w.ndim - 2
    if spatial not in (1, 2):
        raise unsupported(n, f"a {spatial}-d convolution (.dln has conv1d and conv2d)")
    kernel = list(w.shape[2:])
    strides = list(n.attr("strides", [1] * spatial))
    dilations = list(n.attr("dilations", [1] * spatial))
    begin, end = _padding(imp, n, spatial, kernel, strides, dilations)
    source, padding = _pre_pad(imp, n, begin, end)
    groups = n.attr("group", 1)
    weights = {"weight": w}
    if n.input(2):
        weights["bias"] = _weight(imp, n, n.inputs[2], "bias")
    args = args_text([w.shape[0] * 1, one(kernel)], {"stride": one(strides), "padding": one(padding),
                                                     "dilation": one(dilations), "groups": groups,
                                                     "bias": "true" if n.input(2) else "false"},
                     {"stride": 1, "padding": 0, "dilation": 1, "groups": 1, "bias": "true"})
    call = "conv1d" if spatial == 1 else "conv2d"
    imp.stage(n.outputs[0], source, imp.layer(n, call, args, weights, [n.inputs[1], n.input(2)]), hint(n))


@handles("ConvTranspose")
def _conv_transpose(imp: Importer, n: INode) -> None:
    w = _weight(imp, n, n.inputs[1], "weight")
    if w.ndim != 4:
        raise unsupported(n, "a transposed convolution that is not 2-d (.dln has conv_transpose2d)")
    if "output_shape" in n.attrs or n.attr("auto_pad", "NOTSET") != "NOTSET":
        raise unsupported(n, "output_shape and auto_pad (give pads and output_padding instead)")
    pads = list(n.attr("pads", [0] * 4))
    if pads[:2] != pads[2:]:
        raise unsupported(n, "uneven padding of a transposed convolution")
    groups = n.attr("group", 1)
    weights = {"weight": w}
    if n.input(2):
        weights["bias"] = _weight(imp, n, n.inputs[2], "bias")
    kw = {"stride": one(list(n.attr("strides", [1, 1]))), "padding": one(pads[:2]),
          "output_padding": one(list(n.attr("output_padding", [0, 0]))), "groups": groups,
          "dilation": one(list(n.attr("dilations", [1, 1]))), "bias": "true" if n.input(2) else "false"}
    args = args_text([w.shape[1] * groups, one(list(w.shape[2:]))], kw,
                     {"stride": 1, "padding": 0, "output_padding": 0, "groups": 1, "dilation": 1, "bias": "true"})
    imp.stage(n.outputs[0], n.inputs[0], imp.layer(n, "conv_transpose2d", args, weights, [n.inputs[1]]), hint(n))


# ---- normalization -------------------------------------------------------------------------------------------

@handles("BatchNormalization")
def _batchnorm(imp: Importer, n: INode) -> None:
    if n.attr("training_mode", 0) or any(o and imp.uses.get(o) for o in n.outputs[1:]):
        raise unsupported(n, "batch normalization in training mode (export the model in evaluation mode)")
    scale, bias, mean, var = (_weight(imp, n, v, what) for v, what in
                              zip(n.inputs[1:5], ("scale", "bias", "mean", "variance")))
    weights = {"weight": scale, "bias": bias, "running_mean": mean, "running_var": var,
               "num_batches_tracked": np.array(0, np.int64)}
    args = args_text([], {"momentum": round(1 - n.attr("momentum", 0.9), 6),
                          "eps": float(np.float32(n.attr("epsilon", 1e-5)))},
                     {"momentum": 0.1, "eps": float(np.float32(1e-5))})
    imp.stage(n.outputs[0], n.inputs[0], imp.layer(n, "batchnorm", args, weights, list(n.inputs[1:3])), hint(n))


@handles("LayerNormalization")
def _layernorm(imp: Importer, n: INode) -> None:
    axis, rank = n.attr("axis", -1), imp.rank(n.inputs[0])
    if axis != -1 and (rank is None or axis != rank - 1):
        raise unsupported(n, "normalizes over more than the last axis (.dln's layernorm takes the last)")
    if any(o and imp.uses.get(o) for o in n.outputs[1:]):
        raise unsupported(n, "its mean and inverse-deviation outputs have no .dln form")
    scale = _weight(imp, n, n.inputs[1], "scale")
    bias = _weight(imp, n, n.inputs[2], "bias") if n.input(2) else np.zeros_like(scale)
    args = args_text([], {"eps": float(np.float32(n.attr("epsilon", 1e-5)))}, {"eps": float(np.float32(1e-5))})
    weights = {"weight": np.reshape(scale, -1), "bias": np.reshape(bias, -1)}
    imp.stage(n.outputs[0], n.inputs[0], imp.layer(n, "layernorm", args, weights, list(n.inputs[1:3])), hint(n))


# ---- pooling ---------------------------------------------------------------------------------------------

@handles("MaxPool", "AveragePool")
def _pool(imp: Importer, n: INode) -> None:
    """2-d pooling as maxpool2d / avgpool2d; 1-d pooling as the 2-d one over a window one row high."""
    kernel = list(n.attr("kernel_shape"))
    if len(kernel) not in (1, 2):
        raise unsupported(n, f"{len(kernel)}-d pooling (.dln has maxpool2d and avgpool2d)")
    if len(n.outputs) > 1 and n.outputs[1] and imp.uses.get(n.outputs[1]):
        raise unsupported(n, "its indices output has no .dln form")
    spatial = len(kernel)
    strides = list(n.attr("strides", [1] * spatial))
    dilations = list(n.attr("dilations", [1] * spatial))
    begin, end = _padding(imp, n, spatial, kernel, strides, dilations)
    if begin != end:
        raise unsupported(n, "uneven padding of a pooling window")
    if spatial == 1:
        kernel, strides, dilations, begin = [1] + kernel, [1] + strides, [1] + dilations, [0] + begin
    kw = {"stride": one(strides), "padding": one(begin)}
    defaults = {"stride": one(kernel), "padding": 0, "dilation": 1, "ceil_mode": "false",
                "count_include_pad": "true"}
    if n.op == "MaxPool":
        kw["dilation"] = one(dilations)
    elif any(begin):
        kw["count_include_pad"] = "true" if n.attr("count_include_pad", 0) else "false"
    kw["ceil_mode"] = "true" if n.attr("ceil_mode", 0) else "false"
    call = "maxpool2d" if n.op == "MaxPool" else "avgpool2d"
    stage = f"{call}({', '.join(args_text([one(kernel)], kw, defaults))})"
    if spatial == 2:
        imp.stage(n.outputs[0], n.inputs[0], stage, hint(n))
        return
    source = n.inputs[0]
    for k, step in enumerate(("unsqueeze(2)", stage)):
        tmp = f"{n.outputs[0]}#{k}"
        imp.uses[tmp] = 1
        imp.stage(tmp, source, step, hint(n))
        source = tmp
    imp.stage(n.outputs[0], source, "squeeze(2)", hint(n))


@handles("dln.GlobalAvgPool")
def _global_avgpool(imp: Importer, n: INode) -> None:
    imp.stage(n.outputs[0], n.inputs[0], "global_avgpool", hint(n))


@handles("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(imp: Importer, n: INode) -> None:
    rank = imp.rank(n.inputs[0]) or 4
    axes = tuple(range(2, rank))
    call = "mean" if n.op == "GlobalAveragePool" else "max"
    imp.stage(n.outputs[0], n.inputs[0], f"{call}(axis = {axes if len(axes) > 1 else axes[0]}, keepdim = true)",
              hint(n))
