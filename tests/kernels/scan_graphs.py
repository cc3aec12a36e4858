"""Hand-built recurrent layers as `scan` graphs (RNN, LSTM-like, GRU-like), in f32, with their
training-step gradients: what the rnn/lstm/gru builtins lower to, built directly with GraphBuilder."""

from __future__ import annotations

from dln.compiler.autodiff import grad
from dln.compiler.emit import GraphBuilder, Tensor
from dln.compiler.ir import DType, Graph, TensorType
from dln.compiler.pipeline import optimize
from dln.compiler.symbolic import Sym

F = DType.F32
B, T = Sym.var("B"), Sym.var("T")


def _gates(b: GraphBuilder, gates: Tensor, k: int, H: int) -> Tensor:
    return b.slice_axis(gates, 1, k * H, (k + 1) * H)


def rnn_body(H: int) -> Graph:
    """h' = tanh(x_t + h @ W^T + b); y = h'."""
    b = GraphBuilder("rnn.body")
    h = b.input("h", TensorType(F, (B, H)), role="carry")
    x = b.input("x", TensorType(F, (B, H)), role="x")
    W = b.input("W_hh", TensorType(F, (H, H)), role="const")
    bias = b.input("b", TensorType(F, (H,)), role="const")
    new = b.tanh(b.add(b.add(x, b.matmul(h, b.transpose(W))), bias))
    return b.finish([("h", new), ("y", new)])


def lstm_body(H: int) -> Graph:
    """gates = xg + h @ W^T (one product, [B, 4H]); i, f, g, o column blocks; c' = f*c + i*g; h' = o*tanh(c')."""
    b = GraphBuilder("lstm.body")
    h = b.input("h", TensorType(F, (B, H)), role="carry")
    c = b.input("c", TensorType(F, (B, H)), role="carry")
    xg = b.input("xg", TensorType(F, (B, 4 * H)), role="x")
    W = b.input("W_hh", TensorType(F, (4 * H, H)), role="const")
    gates = b.add(xg, b.matmul(h, b.transpose(W)))
    i, f = b.sigmoid(_gates(b, gates, 0, H)), b.sigmoid(_gates(b, gates, 1, H))
    g, o = b.tanh(_gates(b, gates, 2, H)), b.sigmoid(_gates(b, gates, 3, H))
    c2 = b.add(b.mul(f, c), b.mul(i, g))
    h2 = b.mul(o, b.tanh(c2))
    return b.finish([("h", h2), ("c", c2), ("y", h2)])


def gru_body(H: int) -> Graph:
    """torch's GRU cell: r, z from x and h; n = tanh(x_n + r * (h @ W_n^T + b_hn)); h' = (1 - z) n + z h."""
    b = GraphBuilder("gru.body")
    h = b.input("h", TensorType(F, (B, H)), role="carry")
    xg = b.input("xg", TensorType(F, (B, 3 * H)), role="x")
    W = b.input("W_hh", TensorType(F, (3 * H, H)), role="const")
    b_hh = b.input("b_hh", TensorType(F, (3 * H,)), role="const")
    hh = b.add(b.matmul(h, b.transpose(W)), b_hh)
    r = b.sigmoid(b.add(_gates(b, xg, 0, H), _gates(b, hh, 0, H)))
    z = b.sigmoid(b.add(_gates(b, xg, 1, H), _gates(b, hh, 1, H)))
    n = b.tanh(b.add(_gates(b, xg, 2, H), b.mul(r, _gates(b, hh, 2, H))))
    h2 = b.add(b.mul(b.sub(1.0, z), n), b.mul(z, h))
    return b.finish([("h", h2), ("y", h2)])


GATES = {"rnn": 1, "lstm": 4, "gru": 3}
BODIES = {"rnn": rnn_body, "lstm": lstm_body, "gru": gru_body}


def layer(kind: str, D: int, H: int, reverse: bool = False, train: bool = False) -> Graph:
    """X [T, B, D] -> input projection for every step outside the loop -> the scan -> ys, final state;
    with `train`, the loss sum(ys * cot) + sum(hT * hT) and its gradients (outputs g_<input name>)."""
    G = GATES[kind] * H
    b = GraphBuilder(f"{kind}_layer")
    X = b.input("X", TensorType(F, (T, B, D)))
    W_ih = b.input("W_ih", TensorType(F, (G, D)), role="param")
    b_ih = b.input("b_ih", TensorType(F, (G,)), role="param")
    W_hh = b.input("W_hh", TensorType(F, (G, H)), role="param")
    carries = [b.input("h0", TensorType(F, (B, H)))]
    if kind == "lstm":
        carries.append(b.input("c0", TensorType(F, (B, H))))
    consts = [W_hh]
    xg = b.add(b.matmul(X, b.transpose(W_ih)), b_ih)
    if kind == "rnn":
        consts.append(b.input("b_hh", TensorType(F, (H,)), role="param"))
    if kind == "gru":
        consts.append(b.input("b_hh", TensorType(F, (G,)), role="param"))
    finals, (ys,) = b.scan(BODIES[kind](H), carries, [xg], consts, reverse=reverse)
    outputs = [("ys", ys), ("hT", finals[0])]
    if kind == "lstm":
        outputs.append(("cT", finals[1]))
    if not train:
        return optimize(b.finish(outputs))
    cot = b.input("cot", TensorType(F, (T, B, H)))
    loss = b.add(b.sum(b.mul(ys, cot)), b.sum(b.mul(finals[0], finals[0])))
    graph = b.finish([("loss", loss), *outputs])
    wrt = [n.id for n in graph.inputs if n.attrs["name"] != "cot"]
    full, grads, _ = grad(graph, loss.id, wrt)
    names = {n.id: n.attrs["name"] for n in graph.inputs}
    full = full.with_outputs(list(full.outputs) + [(f"g_{names[k]}", v) for k, v in grads.items()])
    return optimize(full)


def normed_body(H: int) -> Graph:
    """h' = tanh(normalize(x_t + h @ W^T)) with the mean and mean square over the row's columns: a
    reduction across columns, which the persistent kernel does not take (the step-by-step fallback)."""
    b = GraphBuilder("normed.body")
    h = b.input("h", TensorType(F, (B, H)), role="carry")
    x = b.input("x", TensorType(F, (B, H)), role="x")
    W = b.input("W_hh", TensorType(F, (H, H)), role="const")
    a = b.add(x, b.matmul(h, b.transpose(W)))
    centred = b.sub(a, b.mean(a, 1, keepdim=True))
    new = b.tanh(b.div(centred, b.sqrt(b.add(b.mean(b.mul(centred, centred), 1, keepdim=True), 1e-3))))
    return b.finish([("h", new), ("y", new)])


def normed_layer(H: int, reverse: bool = False, train: bool = False) -> Graph:
    b = GraphBuilder("normed_layer")
    X = b.input("X", TensorType(F, (T, B, H)))
    W_hh = b.input("W_hh", TensorType(F, (H, H)), role="param")
    h0 = b.input("h0", TensorType(F, (B, H)))
    (hT,), (ys,) = b.scan(normed_body(H), [h0], [X], [W_hh], reverse=reverse)
    if not train:
        return optimize(b.finish([("ys", ys), ("hT", hT)]))
    cot = b.input("cot", TensorType(F, (T, B, H)))
    loss = b.add(b.sum(b.mul(ys, cot)), b.sum(b.mul(hT, hT)))
    graph = b.finish([("loss", loss), ("ys", ys), ("hT", hT)])
    wrt = [X.id, W_hh.id, h0.id]
    full, grads, _ = grad(graph, loss.id, wrt)
    names = {n.id: n.attrs["name"] for n in graph.inputs}
    full = full.with_outputs(list(full.outputs) + [(f"g_{names[k]}", v) for k, v in grads.items()])
    return optimize(full)


def passthrough_layer(H: int, K: int) -> Graph:
    """An RNN with a second carry [B, K] handed on unchanged each step and a y that is a carry: values
    the loop never computes on."""
    b = GraphBuilder("passthrough.body")
    h = b.input("h", TensorType(F, (B, H)), role="carry")
    keep = b.input("keep", TensorType(F, (B, K)), role="carry")
    x = b.input("x", TensorType(F, (B, H)), role="x")
    W = b.input("W_hh", TensorType(F, (H, H)), role="const")
    new = b.tanh(b.add(x, b.matmul(h, b.transpose(W))))
    body = b.finish([("h", new), ("keep", keep), ("y", new), ("kept", keep)])
    outer = GraphBuilder("passthrough_layer")
    X = outer.input("X", TensorType(F, (T, B, H)))
    W_hh = outer.input("W_hh", TensorType(F, (H, H)), role="param")
    h0, k0 = outer.input("h0", TensorType(F, (B, H))), outer.input("k0", TensorType(F, (B, K)))
    (hT, kT), (ys, kept) = outer.scan(body, [h0, k0], [X], [W_hh])
    return optimize(outer.finish([("ys", ys), ("hT", hT), ("kT", kT), ("kept", kept)]))
