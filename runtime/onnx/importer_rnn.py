"""ONNX's LSTM, GRU and RNN as `.dln`'s `lstm`, `gru` and `rnn` (torch.nn's layers, batch first).

ONNX stacks the gates in another order than PyTorch: LSTM i, o, f, c (torch i, f, g, o), GRU z, r,
h (torch r, z, n); the weights are reordered here.  ONNX's GRU with `linear_before_reset = 1` is
torch's; the other variant has no `.dln` form.  ONNX's layout 0 is sequence-first: a layer between
two transposes (importer_graph's `_batch_first`) reads and writes `[B, T, ...]` as `.dln` does, any
other gets the transposes written out.  A bidirectional layer's two directions are torch's
`_reverse` weights; layers one after the other (importer_graph's `_stacked`) are one of `layers`.
"""

from __future__ import annotations

import numpy as np

from dln.runtime.onnx.importer_core import Importer, handles
from dln.runtime.onnx.importer_fold import Fill
from dln.runtime.onnx.importer_graph import INode
from dln.runtime.onnx.importer_ops import hint
from dln.runtime.onnx.importer_text import Tensor, args_text, dim_text, unsupported

# op -> (.dln layer, gates, torch's order of ONNX's gate blocks, ONNX's default activations)
KINDS = {"LSTM": ("lstm", 4, [0, 2, 3, 1], ["Sigmoid", "Tanh", "Tanh"]),
         "GRU": ("gru", 3, [1, 0, 2], ["Sigmoid", "Tanh"]),
         "RNN": ("rnn", 1, [0], ["Tanh"])}


def _zero(value) -> bool:
    if isinstance(value, Fill):
        return value.value == 0
    return isinstance(value, np.ndarray) and value.dtype != object and not value.any()


@handles("LSTM", "GRU", "RNN")
def _recurrent(imp: Importer, n: INode) -> None:
    call, gates, order, default = KINDS[n.op]
    direction = n.attr("direction", "forward")
    if direction not in ("forward", "bidirectional"):
        raise unsupported(n, "a reverse layer (.dln's run forward, or both ways: bidirectional)")
    directions = 2 if direction == "bidirectional" else 1
    layout = n.attr("layout", 0)
    acts = list(n.attr("activations", default * directions))
    nonlinearity = None
    if n.op == "RNN" and acts in (["Relu"] * directions, ["Tanh"] * directions):
        nonlinearity = "relu" if acts[0] == "Relu" else None
    elif acts != default * directions:
        raise unsupported(n, "activations other than the default ones")
    if n.attr("clip") is not None or n.attr("input_forget", 0):
        raise unsupported(n, "clip and input_forget")
    if n.op == "GRU" and n.attr("linear_before_reset", 0) != 1:
        raise unsupported(n, "linear_before_reset = 0 (PyTorch's GRU, and .dln's, apply the reset gate after the "
                             "recurrent product: linear_before_reset = 1)")
    if n.input(4) or n.input(7):
        raise unsupported(n, "sequence lengths and peepholes")
    stack = [(n.inputs[1], n.inputs[2], n.input(3))] + list(n.attr("stack", []))
    weights = {}
    for k, (w_name, r_name, b_name) in enumerate(stack):
        w, r = imp.known(w_name), imp.known(r_name)
        b = imp.known(b_name) if b_name else None
        if not isinstance(w, np.ndarray) or not isinstance(r, np.ndarray) or (b_name and not isinstance(b, np.ndarray)):
            raise unsupported(n, "its weights must be constants (initializers)")
        hidden = r.shape[-1]
        for d in range(directions):   # torch's names: weight_ih_l0, weight_ih_l0_reverse, ...
            suffix = f"_l{k}" + ("_reverse" if d else "")
            weights[f"weight_ih{suffix}"] = _torch_order(w[d], gates, order)
            weights[f"weight_hh{suffix}"] = _torch_order(r[d], gates, order)
            if b is not None:
                weights[f"bias_ih{suffix}"] = _torch_order(b[d][:gates * hidden], gates, order)
                weights[f"bias_hh{suffix}"] = _torch_order(b[d][gates * hidden:], gates, order)
    kw = {"layers": len(stack), "bias": "true" if n.input(3) else "false",
          "nonlinearity": f'"{nonlinearity}"' if nonlinearity else None,
          "bidirectional": "true" if directions == 2 else "false"}
    states = {}
    for k, key in ((5, "h0"), (6, "c0")):
        value = n.input(k)
        if value and not _zero(imp.known(value)):
            if layout != 0:
                raise unsupported(n, "initial states in layout 1")
            states[key] = imp.operand(value)
    outputs = list(n.outputs) + [""] * (3 - len(n.outputs))
    wanted = [o for o in outputs[1:] if o and imp.uses.get(o)]
    if wanted and layout != 0:
        raise unsupported(n, "final states in layout 1")
    args = args_text([str(hidden)], {**kw, **states, "return_state": "true" if wanted else "false"},
                     {"layers": 1, "bias": "true", "nonlinearity": None, "bidirectional": "false",
                      "return_state": "false"})
    layer = imp.layer(n, call, args, weights, [n.inputs[1], n.inputs[2]])

    source = n.inputs[0]
    batch_first_in = n.attr("batch_first_in") or layout == 1
    if not batch_first_in:
        source = _through(imp, f"{n.outputs[0]}#in", source, "transpose(0, 1)", n)
    as_is = n.attr("batch_first_out")
    y = outputs[0] if as_is else f"{n.outputs[0]}#y"
    imp.uses[y] = imp.uses.get(y, 0) if as_is else 1
    if wanted:
        t = Tensor(imp.operand(source), [layer])
        count = 3 if n.op == "LSTM" else 2
        imp.bind_many([y, outputs[1], outputs[2]][:count], t, [hint(n), f"{hint(n)}_h", f"{hint(n)}_c"][:count])
    else:
        imp.stage(y, source, layer, hint(n))
    if as_is or not outputs[0] or not imp.uses.get(outputs[0]):
        return
    if n.attr("time_major_out"):   # [T, B, directions * H]
        imp.stage(outputs[0], y, "transpose(0, 1)", hint(n))
    elif directions == 1:   # ONNX's Y: [T, 1, B, H] in layout 0, [B, T, 1, H] in layout 1
        if layout == 0:
            y = _through(imp, f"{n.outputs[0]}#t", y, "transpose(0, 1)", n)
        imp.stage(outputs[0], y, f"unsqueeze({1 if layout == 0 else 2})", hint(n))
    else:   # [B, T, 2 * H] -> ONNX's Y: [T, 2, B, H] in layout 0, [B, T, 2, H] in layout 1
        shape = imp.need_shape(n, n.inputs[0])
        batch, steps = (shape[0], shape[1]) if batch_first_in else (shape[1], shape[0])
        y = _through(imp, f"{n.outputs[0]}#r", y, f"reshape(({dim_text(batch)}, {dim_text(steps)}, 2, {hidden}))", n)
        if layout == 0:
            imp.stage(outputs[0], y, "permute(1, 2, 0, 3)", hint(n))
        else:
            imp.set(outputs[0], imp.values[y])


def _torch_order(m: np.ndarray, gates: int, order: list[int]) -> np.ndarray:
    """ONNX's stacked gate blocks in torch's order."""
    blocks = np.split(m, gates, axis=0)
    return np.ascontiguousarray(np.concatenate([blocks[k] for k in order], axis=0))


def _through(imp: Importer, tmp: str, source: str, stage: str, n: INode) -> str:
    imp.uses[tmp] = 1
    imp.stage(tmp, source, stage, hint(n))
    return tmp
