"""Recurrent layers: `rnn`, `lstm`, `gru`, with PyTorch's arguments, parameter names
(`weight_ih_l0`, `bias_hh_l1_reverse`, ...), gate order (LSTM i, f, g, o; GRU r, z, n)
and default initialization U(-1/sqrt(H), 1/sqrt(H)), so a `state_dict` of
`nn.LSTM(batch_first=True)` loads by name.

Each layer and direction is two pieces: the input projection of every step as one
matrix product before the loop (`x @ W_ihᵀ` plus the biases that can be summed
there), and one `scan` whose body does the recurrent product of all gates at once
(`h @ W_hhᵀ`, the weight a const of the loop), the gate slices and nonlinearities
and the cell update.  The loop runs time-major ([T, B, ...]); the reverse direction
is the same scan with `reverse`, reading the same projection.  T and B may be
symbolic: one compiled model serves every length.

In a stream build (`dln sample`) a layer given no `h0` (`c0`) starts from the
carried state `<layer>.h_n` (`<layer>.c_n`) and hands its final state on.
"""

from __future__ import annotations

import math

from dln.compiler.builtins import BOOL, FLOAT, INT, STR, TENSOR, builtin
from dln.compiler.builtins.nn import _features, _positive, _uniform
from dln.compiler.builtins.tensor_ops import dropout as _dropout
from dln.compiler.emit import GraphBuilder, Tensor
from dln.compiler.ir import Graph, Op, TensorType
from dln.compiler.symbolic import Dim, format_shape
from dln.compiler.values import TupleValue

# Gates per cell, in torch's order along the rows of W_ih and W_hh.
_GATES = {"rnn": 1, "lstm": 4, "gru": 3}


def _recurrent(cx, layer: str, x: Tensor, hidden: int, layers: int, nonlinearity: str, bias: bool,
               bidirectional: bool, dropout: float, h0: Tensor | None, c0: Tensor | None, return_state: bool):
    b = cx.b
    _positive(cx, layer, hidden=hidden, layers=layers)
    if not 0.0 <= dropout < 1.0:
        raise cx.fail_at("dropout", "E0208", f"{layer}'s dropout must lie in [0, 1), got {dropout:g}")
    if nonlinearity not in ("tanh", "relu"):
        raise cx.fail_at("nonlinearity", "E0208", f'{layer}\'s nonlinearity must be "tanh" or "relu", '
                                                  f'got "{nonlinearity}"')
    if x.rank not in (2, 3):
        raise cx.fail("E0202", f"{layer} needs [B, T, D] (or an unbatched [T, D]), got {x.type}")
    unbatched = x.rank == 2
    x = b.to_float(x)
    if unbatched:
        x = b.unsqueeze(x, 0)
    _features(cx, x, layer)
    dtype = x.dtype
    batch, directions = x.shape[0], 2 if bidirectional else 1
    # torch's state layout [layers * directions, B, H] ([layers * directions, H] without a batch)
    state_shape: tuple[Dim, ...] = (layers * directions,) + (() if unbatched else (batch,)) + (hidden,)
    state_type = TensorType(dtype, state_shape)
    kind = "rnn_" + nonlinearity if layer == "rnn" else layer
    initial = {"h": _initial(cx, layer, "h0", h0, state_type, unbatched)}
    if layer == "lstm":
        initial["c"] = _initial(cx, layer, "c0", c0, state_type, unbatched)
        if (h0 is None) != (c0 is None):   # torch takes the pair (h0, c0) or neither
            given = "h0" if c0 is None else "c0"
            raise cx.fail_at(given, "E0208", f"lstm needs both initial states, h0 and c0, or neither; "
                                             f"only {given} is given")
    carried = {}
    for k, leaf in (("h", "h_n"), ("c", "c_n")):
        if k in initial and initial[k] is None:
            initial[k] = cx.carry(leaf, state_type)
            if initial[k] is not None and bidirectional:
                # The reverse direction reads the sequence from its end: a piece cannot continue it.
                raise cx.fail("E0208", f"a bidirectional {layer} cannot run a sequence in pieces (generation "
                                       f"carries the state of one piece into the next)")
            if initial[k] is not None:
                carried[k] = initial[k]
    # Per layer and direction, the initial states as [B, H] (None: zeros).
    starts = {k: _per_state(b, v, unbatched) if v is not None else None for k, v in initial.items()}

    seq = b.permute(x, (1, 0, 2))          # time-major [T, B, D], shared by both directions
    finals: dict[str, list[Tensor]] = {k: [] for k in initial}
    bound = 1.0 / math.sqrt(hidden)
    for i in range(layers):
        if i and cx.training and dropout > 0.0:   # between layers, not after the last (as torch)
            # The mask drawn batch-major, as every draw over the batch: among ranks, each row's mask is
            # then one process's (dln.compiler.passes.global_rows counts draws by leading row).
            seq = b.permute(_dropout(cx, b.permute(seq, (1, 0, 2)), dropout), (1, 0, 2))
        outs = []
        for d in range(directions):
            index = i * directions + d
            suffix = f"_l{i}" + ("_reverse" if d else "")
            state = {k: (s[index] if s is not None else b.const(0.0, dtype, (batch, hidden)))
                     for k, s in starts.items()}
            ys, last = _direction(cx, kind, seq, hidden, bias, bound, suffix, state, reverse=bool(d))
            outs.append(ys)
            for k in finals:
                finals[k].append(last[k])
        seq = b.concat(outs, -1)
    y = b.permute(seq, (1, 0, 2))
    states = {k: b.concat([b.unsqueeze(f, 0) for f in v], 0) for k, v in finals.items()}
    if unbatched:
        y = b.reshape(y, y.shape[1:])
        states = {k: b.reshape(v, state_shape) for k, v in states.items()}
    for k, c in carried.items():
        cx.carry_out(c, states[k])
    if not return_state:
        return y
    return TupleValue((y, states["h"]) + ((states["c"],) if layer == "lstm" else ()))


def _initial(cx, layer: str, arg: str, given: Tensor | None, want: TensorType, unbatched: bool) -> Tensor | None:
    """A given initial state checked against torch's layout and cast to the layer's type."""
    if given is None:
        return None
    b = cx.b
    layout = "[layers * directions, H]" if unbatched else "[layers * directions, B, H]"
    if given.rank != len(want.shape):
        raise cx.fail_at(arg, "E0202", f"{layer}'s {arg} needs {layout} = {format_shape(want.shape)}, "
                                       f"got {given.type}")
    for have, need in zip(given.shape, want.shape):
        if isinstance(have, int) and isinstance(need, int):
            if have != need:
                raise cx.fail_at(arg, "E0201", f"{layer}'s {arg} needs {layout} = {format_shape(want.shape)}, "
                                               f"got {given.type}")
        else:
            with b.at(loc=cx.arg_span(arg)):
                b.unify(have, need, "E0201", f"{layer}'s {arg} needs {layout} = {format_shape(want.shape)}, "
                                             f"got {given.type}")
    return b.cast(given, want.dtype)


def _per_state(b: GraphBuilder, s: Tensor, unbatched: bool) -> list[Tensor]:
    """[L * dirs, B, H] as one [B, H] per layer and direction."""
    if unbatched:
        s = b.unsqueeze(s, 1)
    return [b.reshape(b.slice_axis(s, 0, i, i + 1), s.shape[1:]) for i in range(s.shape[0])]


def _direction(cx, kind: str, seq: Tensor, hidden: int, bias: bool, bound: float, suffix: str,
               state: dict[str, Tensor], reverse: bool) -> tuple[Tensor, dict[str, Tensor]]:
    """One layer in one direction over the time-major `seq` [T, B, D]: (ys [T, B, H], final states)."""
    b = cx.b
    dtype, features = seq.dtype, seq.shape[-1]
    width = _GATES[kind.split("_")[0]] * hidden
    init = _uniform(bound)
    w_ih = cx.param("weight_ih" + suffix, (width, features), init, dtype)
    w_hh = cx.param("weight_hh" + suffix, (width, hidden), init, dtype)
    b_ih = cx.param("bias_ih" + suffix, (width,), init, dtype) if bias else None
    b_hh = cx.param("bias_hh" + suffix, (width,), init, dtype) if bias else None
    projected = b.matmul(seq, b.transpose(w_ih))            # every step at once: [T, B, G*H]
    consts = [b.transpose(w_hh)]                             # [H, G*H]: the body's one product
    if bias:
        if kind == "gru":   # b_hn is scaled by r inside the loop; b_hr and b_hz add to the projection
            folded = b.add(b_ih, b.concat([b.slice_axis(b_hh, 0, 0, 2 * hidden),
                                           b.const(0.0, dtype, (hidden,))], 0))
            consts.append(b.slice_axis(b_hh, 0, 2 * hidden, width))
        else:
            folded = b.add(b_ih, b_hh)
        projected = b.add(projected, folded)
    body = _body(b, kind, f"{b.label or cx.name}{suffix}.body", TensorType(dtype, (seq.shape[1], hidden)),
                 projected.type, consts)
    carries = [state["h"]] + ([state["c"]] if kind == "lstm" else [])
    finals, ys = b.scan(body, carries, [projected], consts, reverse=reverse)
    last = {"h": finals[0]}
    if kind == "lstm":
        last["c"] = finals[1]
    return ys[0], last


def _body(outer: GraphBuilder, kind: str, name: str, h_type: TensorType, projected: TensorType,
          consts: list[Tensor]) -> Graph:
    """One step: the carries (h, and c for an LSTM), the step's projection [B, G*H], W_hhᵀ (and a GRU's
    b_hn) in; the new carries and the step's output h out."""
    b = GraphBuilder(name)
    H = h_type.shape[-1]
    with b.at(loc=outer.loc, label=outer.label):
        h = b.input("h", h_type, role="carry")
        c = b.input("c", h_type, role="carry") if kind == "lstm" else None
        xp = b.input("x", TensorType(projected.dtype, projected.shape[1:]), role="x")
        w = b.input("w_hh", outer.node(consts[0]).type, role="const")
        b_hn = b.input("b_hn", outer.node(consts[1]).type, role="const") if len(consts) > 1 else None
        r = b.matmul(h, w)                                   # all gates' recurrent part: [B, G*H]
        if kind == "rnn_tanh":
            h_new = b.tanh(b.add(xp, r))
        elif kind == "rnn_relu":
            h_new = b.unary(Op.RELU, b.add(xp, r))
        elif kind == "lstm":
            # One nonlinearity per gate: each gate is then its own [B, H] value (what the backward saves,
            # and a column block the Triton kernel computes), never a [B, 2H] pair recomputed whole.
            g = b.add(xp, r)
            i, f = b.sigmoid(b.slice_axis(g, 1, 0, H)), b.sigmoid(b.slice_axis(g, 1, H, 2 * H))
            cell = b.tanh(b.slice_axis(g, 1, 2 * H, 3 * H))
            o = b.sigmoid(b.slice_axis(g, 1, 3 * H, 4 * H))
            c_new = b.add(b.mul(f, c), b.mul(i, cell))
            h_new = b.mul(o, b.tanh(c_new))
            return b.finish([("h", h_new), ("c", c_new), ("y", h_new)])
        else:   # gru
            reset = b.sigmoid(b.add(b.slice_axis(xp, 1, 0, H), b.slice_axis(r, 1, 0, H)))
            update = b.sigmoid(b.add(b.slice_axis(xp, 1, H, 2 * H), b.slice_axis(r, 1, H, 2 * H)))
            hn = b.slice_axis(r, 1, 2 * H, 3 * H)
            if b_hn is not None:
                hn = b.add(hn, b_hn)
            n = b.tanh(b.add(b.slice_axis(xp, 1, 2 * H, 3 * H), b.mul(reset, hn)))
            h_new = b.add(n, b.mul(update, b.sub(h, n)))     # (1 - z) n + z h
        return b.finish([("h", h_new), ("y", h_new)])


@builtin(category="layer", owns_params=True)
def rnn(cx, x: TENSOR, hidden: INT, layers: INT = 1, nonlinearity: STR = "tanh", bias: BOOL = True,
        bidirectional: BOOL = False, dropout: FLOAT = 0.0, h0: TENSOR = None, return_state: BOOL = False):
    """Elman RNN over [B, T, D]: h_t = act(x_t W_ihᵀ + b_ih + h_{t-1} W_hhᵀ + b_hh) -> [B, T, H * directions];
    with return_state, (y, h_n [layers * directions, B, H]) (torch.nn.RNN, batch_first)"""
    return _recurrent(cx, "rnn", x, hidden, layers, nonlinearity, bias, bidirectional, dropout, h0, None,
                      return_state)


@builtin(category="layer", owns_params=True)
def lstm(cx, x: TENSOR, hidden: INT, layers: INT = 1, bias: BOOL = True, bidirectional: BOOL = False,
         dropout: FLOAT = 0.0, h0: TENSOR = None, c0: TENSOR = None, return_state: BOOL = False):
    """LSTM over [B, T, D], gates i, f, g, o -> [B, T, H * directions]; with return_state,
    (y, h_n, c_n), each [layers * directions, B, H] (torch.nn.LSTM, batch_first)"""
    return _recurrent(cx, "lstm", x, hidden, layers, "tanh", bias, bidirectional, dropout, h0, c0, return_state)


@builtin(category="layer", owns_params=True)
def gru(cx, x: TENSOR, hidden: INT, layers: INT = 1, bias: BOOL = True, bidirectional: BOOL = False,
        dropout: FLOAT = 0.0, h0: TENSOR = None, return_state: BOOL = False):
    """GRU over [B, T, D], gates r, z, n -> [B, T, H * directions]; with return_state,
    (y, h_n [layers * directions, B, H]) (torch.nn.GRU, batch_first)"""
    return _recurrent(cx, "gru", x, hidden, layers, "tanh", bias, bidirectional, dropout, h0, None, return_state)
