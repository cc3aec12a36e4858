"""ONNX's recurrent layers, `RNN`, `LSTM` and `GRU`, built as dln builds its own
(dln.compiler.builtins.recurrent): per direction, the input projection of every
step as one matrix product before the loop (`X Wᵀ` plus the biases that can be
summed there), then one `scan` whose body holds the recurrent product of all gates
at once (`h Rᵀ`, the weight a const of the loop), the gates and the cell update.
The loop runs time-major ([T, B, ...]); the reverse direction is the same scan with
`reverse`.

ONNX orders the gates differently from torch: LSTM i, o, f, c (peepholes P as i, o,
f); GRU z, r, h.  Each gate takes its own activation from `activations` (the
defaults sigmoid and tanh; every function the spec names, with `activation_alpha`
and `activation_beta` read in order), `clip` bounds each gate's input before its
activation, `input_forget` couples an LSTM's forget gate to its input gate
(f = 1 - i), and GRU's `linear_before_reset` decides whether the reset gate scales
the recurrent product (1) or the state before it (0).

`sequence_lens` (any values, known or computed) masks the steps past each batch
entry's length: there the state is held and Y is 0, so Y_h (Y_c) is the state after
the entry's last step, and the reverse direction starts at that step, as
onnxruntime does.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from dln.compiler.emit import GraphBuilder, Tensor
from dln.compiler.ir import DType, Graph, Op, TensorType
from dln.compiler.symbolic import Dim
from dln.runtime.onnx.convert import Context, OnnxNode, UnsupportedOnnx, converter

# Gates per cell and the activations a direction takes (f for the gates, g for the candidate, h for an
# LSTM's output), with their defaults.
GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
DEFAULT_ACTIVATIONS = {"RNN": ["Tanh"], "GRU": ["Sigmoid", "Tanh"], "LSTM": ["Sigmoid", "Tanh", "Tanh"]}

Activation = Callable[[GraphBuilder, Tensor], Tensor]


def _softplus(b: GraphBuilder, x: Tensor) -> Tensor:
    # log(1 + exp(x)) without overflow: max(x, 0) + log1p(exp(-|x|))
    return b.add(b.maximum(x, 0.0), b.unary(Op.LOG1P, b.exp(b.neg(b.unary(Op.ABS, x)))))


# name -> (alpha default, beta default, function of (b, x, alpha, beta)); None: the function takes no such
# value (and consumes none from activation_alpha / activation_beta).
ACTIVATIONS: dict[str, tuple[float | None, float | None, Callable]] = {
    "relu": (None, None, lambda b, x, a, c: b.unary(Op.RELU, x)),
    "tanh": (None, None, lambda b, x, a, c: b.tanh(x)),
    "sigmoid": (None, None, lambda b, x, a, c: b.sigmoid(x)),
    "affine": (1.0, 0.0, lambda b, x, a, c: b.add(b.mul(x, a), c)),
    "leakyrelu": (0.01, None, lambda b, x, a, c: b.where(b.compare(Op.GE, x, 0.0), x, b.mul(x, a))),
    "thresholdedrelu": (1.0, None, lambda b, x, a, c: b.where(b.compare(Op.GT, x, a), x, 0.0)),
    "scaledtanh": (1.0, 1.0, lambda b, x, a, c: b.mul(b.tanh(b.mul(x, c)), a)),
    "hardsigmoid": (0.2, 0.5, lambda b, x, a, c: b.minimum(b.maximum(b.add(b.mul(x, a), c), 0.0), 1.0)),
    "elu": (1.0, None, lambda b, x, a, c: b.where(b.compare(Op.GE, x, 0.0), x,
                                                  b.mul(b.sub(b.exp(x), 1.0), a))),
    "softsign": (None, None, lambda b, x, a, c: b.div(x, b.add(b.unary(Op.ABS, x), 1.0))),
    "softplus": (None, None, lambda b, x, a, c: _softplus(b, x)),
}


def _activations(node: OnnxNode, directions: int) -> list[list[Activation]]:
    """Per direction, the activations in the order the cell applies them, with their alpha and beta bound."""
    count = len(DEFAULT_ACTIVATIONS[node.op_type])
    names = list(node.attr("activations", DEFAULT_ACTIVATIONS[node.op_type] * directions))
    if len(names) == count and directions == 2:
        names = names * 2
    if len(names) != count * directions:
        raise UnsupportedOnnx(node, f"{len(names)} activations for {directions} direction(s) of "
                                    f"{count} each")
    alphas = list(node.attr("activation_alpha", []))
    betas = list(node.attr("activation_beta", []))
    bound: list[Activation] = []
    for name in names:
        if name.lower() not in ACTIVATIONS:
            raise UnsupportedOnnx(node, f"activation {name!r}")
        alpha, beta, fn = ACTIVATIONS[name.lower()]
        if alpha is not None and alphas:
            alpha = float(alphas.pop(0))
        if beta is not None and betas:
            beta = float(betas.pop(0))
        bound.append(lambda b, x, fn=fn, alpha=alpha, beta=beta: fn(b, x, alpha, beta))
    return [bound[d * count:(d + 1) * count] for d in range(directions)]


def _per_direction(ctx: Context, node: OnnxNode, i: int, d: int, dtype: DType) -> Tensor | None:
    """Input i's slice for direction d (its axis 0) as `dtype`, None when the input is left out."""
    if not ctx.has(node, i):
        return None
    b = ctx.builder
    known = ctx.static(node, i)
    if known is not None:
        return b.cast(ctx.as_tensor(known[d]), dtype)
    t = ctx.tensor(node, i)
    return b.cast(b.reshape(b.slice_axis(t, 0, d, d + 1), t.shape[1:]), dtype)


@converter("RNN", "GRU", "LSTM")
def recurrent(ctx: Context, node: OnnxNode) -> list:
    b = ctx.builder
    kind = node.op_type
    layout = node.attr("layout", 0)
    direction = node.attr("direction", "forward")
    if direction not in ("forward", "reverse", "bidirectional"):
        raise UnsupportedOnnx(node, f"direction {direction!r}")
    directions = 2 if direction == "bidirectional" else 1
    x = ctx.tensor(node, 0)
    if not x.dtype.is_float:
        raise UnsupportedOnnx(node, f"input of type {x.dtype}")
    if layout:
        x = b.permute(x, (1, 0, 2))                          # [B, T, I] -> [T, B, I]
    w_shape = ctx.values[node.inputs[1]].shape
    r_shape = ctx.values[node.inputs[2]].shape
    if w_shape[0] != directions:
        raise UnsupportedOnnx(node, f"W has {w_shape[0]} direction(s), direction {direction!r} needs {directions}")
    hidden = int(node.attr("hidden_size", r_shape[-1]))
    length, batch = x.shape[0], x.shape[1]
    dtype = x.dtype
    clip = node.attr("clip")
    activations = _activations(node, directions)
    mask = _step_mask(ctx, node, length)

    def state(i: int, d: int) -> Tensor:
        """Initial state i (initial_h, initial_c) of direction d as [B, H]: zeros when left out."""
        if not ctx.has(node, i):
            return b.const(0.0, dtype, (batch, hidden))
        s = b.cast(ctx.tensor(node, i), dtype)
        if layout:
            s = b.permute(s, (1, 0, 2))                      # [B, D, H] -> [D, B, H]
        return b.reshape(b.slice_axis(s, 0, d, d + 1), (batch, hidden))

    ys, finals = [], []
    for d in range(directions):
        reverse = direction == "reverse" or d == 1
        w, r, bias, peep = (_per_direction(ctx, node, i, d, dtype) for i in (1, 2, 3, 7))
        carries = [state(5, d)] + ([state(6, d)] if kind == "LSTM" else [])
        y, last = _direction(b, node, x, [w, r, bias], peep, carries, mask, hidden, activations[d], clip, reverse)
        ys.append(y)
        finals.append(last)
    y = b.concat([b.unsqueeze(t, 1) for t in ys], 1)                        # [T, D, B, H]
    states = [b.concat([b.unsqueeze(f[k], 0) for f in finals], 0) for k in range(len(finals[0]))]
    if layout:
        y = b.permute(y, (2, 0, 1, 3))                                      # [B, T, D, H]
        states = [b.permute(s, (1, 0, 2)) for s in states]                  # [B, D, H]
    return [y, *states]


def _step_mask(ctx: Context, node: OnnxNode, length: Dim) -> Tensor | None:
    """[T, B, 1]: whether step t is within batch entry b's sequence_lens (None: every step is)."""
    if not ctx.has(node, 4):
        return None
    b = ctx.builder
    known = ctx.static(node, 4)
    if known is not None and isinstance(length, int) and (np.asarray(known) == length).all():
        return None
    lens = b.cast(ctx.tensor(node, 4), DType.I64)
    steps = b.unsqueeze(b.iota(length), 1)                                  # [T, 1]
    return b.unsqueeze(b.compare(Op.LT, steps, b.unsqueeze(lens, 0)), 2)    # [T, B, 1]


def _direction(b: GraphBuilder, node: OnnxNode, seq: Tensor, weights: list[Tensor | None], peep: Tensor | None,
               carries: list[Tensor], mask: Tensor | None, hidden: int, act: list[Activation], clip: float | None,
               reverse: bool) -> tuple[Tensor, list[Tensor]]:
    """One direction over the time-major `seq` [T, B, I]: (ys [T, B, H], final states)."""
    kind, H = node.op_type, hidden
    w, r, bias = weights                                     # [G*H, I], [G*H, H], [2*G*H] or None
    width = GATES[kind] * H
    linear_before_reset = kind == "GRU" and bool(node.attr("linear_before_reset", 0))
    projected = b.matmul(seq, b.transpose(w))                # every step at once: [T, B, G*H]
    consts: list[tuple[str, Tensor]] = []
    if kind == "GRU" and not linear_before_reset:
        # The candidate's recurrent product takes r * h: the z and r columns are one product, h's another.
        consts += [("r_zr", b.transpose(b.slice_axis(r, 0, 0, 2 * H))),
                   ("r_h", b.transpose(b.slice_axis(r, 0, 2 * H, width)))]
    else:
        consts.append(("r", b.transpose(r)))
    if bias is not None:
        wb, rb = b.slice_axis(bias, 0, 0, width), b.slice_axis(bias, 0, width, 2 * width)
        if linear_before_reset:   # R's bias of the candidate is scaled by r inside the loop
            consts.append(("rb_h", b.slice_axis(rb, 0, 2 * H, width)))
            rb = b.concat([b.slice_axis(rb, 0, 0, 2 * H), b.const(0.0, seq.dtype, (H,))], 0)
        projected = b.add(projected, b.add(wb, rb))
    if peep is not None:
        consts += [(name, b.slice_axis(peep, 0, k * H, (k + 1) * H)) for k, name in enumerate(("p_i", "p_o", "p_f"))]
    xs = [projected] + ([mask] if mask is not None else [])
    body = _body(b, node, carries, xs, consts, act, clip, H)
    finals, ys = b.scan(body, carries, xs, [t for _, t in consts], reverse=reverse)
    return ys[0], finals


def _body(outer: GraphBuilder, node: OnnxNode, carries: list[Tensor], xs: list[Tensor],
          consts: list[tuple[str, Tensor]], act: list[Activation], clip: float | None, H: int) -> Graph:
    """One step: the carries (h, and c for an LSTM), the step's projection [B, G*H] (and its mask [B, 1]),
    the consts in; the new carries and the step's output h out."""
    kind = node.op_type
    b = GraphBuilder(f"{node.name}.body")
    with b.at(loc=outer.loc, label=outer.label):
        h = b.input("h", carries[0].type, role="carry")
        c = b.input("c", carries[1].type, role="carry") if kind == "LSTM" else None
        xp = b.input("x", TensorType(xs[0].dtype, xs[0].shape[1:]), role="x")
        valid = b.input("valid", TensorType(xs[1].dtype, xs[1].shape[1:]), role="x") if len(xs) > 1 else None
        k = {name: b.input(name, t.type, role="const") for name, t in consts}

        def gate(fn: Activation, pre: Tensor) -> Tensor:
            if clip is not None:
                pre = b.minimum(b.maximum(pre, -float(clip)), float(clip))
            return fn(b, pre)

        def cols(t: Tensor, g: int) -> Tensor:
            return b.slice_axis(t, 1, g * H, (g + 1) * H)

        if kind == "RNN":
            h_new = gate(act[0], b.add(xp, b.matmul(h, k["r"])))
            c_new = None
        elif kind == "LSTM":
            f, g, hf = act
            pre = b.add(xp, b.matmul(h, k["r"]))             # i, o, f, c
            peep = "p_i" in k

            def peeped(t: Tensor, name: str, cell: Tensor) -> Tensor:
                return b.add(t, b.mul(k[name], cell)) if peep else t
            i = gate(f, peeped(cols(pre, 0), "p_i", c))
            forget = (b.sub(1.0, i) if node.attr("input_forget", 0)
                      else gate(f, peeped(cols(pre, 2), "p_f", c)))
            c_new = b.add(b.mul(forget, c), b.mul(i, gate(g, cols(pre, 3))))
            o = gate(f, peeped(cols(pre, 1), "p_o", c_new))
            h_new = b.mul(o, hf(b, c_new))
        else:   # GRU: z, r, h
            f, g = act
            if "r_zr" in k:
                zr = b.add(b.slice_axis(xp, 1, 0, 2 * H), b.matmul(h, k["r_zr"]))
                z, reset = gate(f, cols(zr, 0)), gate(f, cols(zr, 1))
                cand = gate(g, b.add(cols(xp, 2), b.matmul(b.mul(reset, h), k["r_h"])))
            else:
                rec = b.matmul(h, k["r"])
                pre = b.add(xp, rec)
                z, reset = gate(f, cols(pre, 0)), gate(f, cols(pre, 1))
                hh = cols(rec, 2)
                if "rb_h" in k:
                    hh = b.add(hh, k["rb_h"])
                cand = gate(g, b.add(cols(xp, 2), b.mul(reset, hh)))
            h_new = b.add(cand, b.mul(z, b.sub(h, cand)))    # (1 - z) h~ + z h
            c_new = None
        y = h_new
        if valid is not None:   # past the entry's length: the state held, the output 0
            h_new = b.where(valid, h_new, h)
            y = b.where(valid, y, 0.0)
            if c_new is not None:
                c_new = b.where(valid, c_new, c)
        outs = [("h", h_new)] + ([("c", c_new)] if c_new is not None else []) + [("y", y)]
        return b.finish(outs)
