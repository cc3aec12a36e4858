"""ONNX's sequence ops on dln (dln.runtime.onnx.ops_recurrent, ops_attention), case by case on sizes
that are not powers of two.

LSTM, GRU and RNN are held to torch.nn's layers, their weights reordered into ONNX's gate order; what
torch has no switch for (sequence_lens, clip, activations, peepholes, input_forget, GRU's reset before
the product) to onnxruntime, which implements it (onnx's reference ignores those attributes).
Attention is held to onnx's ReferenceEvaluator, the definition the conformance suite's data come from.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

from dln.compiler.ir import Op
from dln.runtime.onnx.backend import run
from dln.runtime.onnx.convert import UnsupportedOnnx, convert

ort = pytest.importorskip("onnxruntime")

T, B, I, H = 5, 3, 7, 6            # steps, batch, input features, hidden units
RECURRENT_INPUTS = ["X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P"]
GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}


def _model(op: str, inputs: dict[str, np.ndarray], outputs: list[tuple[str, int]], opset: int,
           **attrs) -> onnx.ModelProto:
    """One `op` node over the named inputs (in the op's input order, gaps left out) and outputs
    ((name, rank); "" for one left out)."""
    order = RECURRENT_INPUTS if op in GATES else ["Q", "K", "V", "attn_mask", "past_key", "past_value",
                                                   "nonpad_kv_seqlen"]
    names = [n if n in inputs else "" for n in order]
    while names[-1] == "":
        names.pop()
    node = helper.make_node(op, names, [n for n, _ in outputs], **attrs)
    ins = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(inputs[n].dtype), inputs[n].shape)
           for n in order if n in inputs]
    dtype = helper.np_dtype_to_tensor_dtype(inputs[order[0]].dtype)
    outs = [helper.make_tensor_value_info(n, dtype, [f"d{i}" for i in range(rank)])
            for n, rank in outputs if n]
    graph = helper.make_graph([node], op.lower(), ins, outs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _recurrent_model(op: str, inputs: dict[str, np.ndarray], **attrs) -> onnx.ModelProto:
    outputs = [("Y", 4), ("Y_h", 3)] + ([("Y_c", 3)] if op == "LSTM" else [])
    return _model(op, inputs, outputs, 22, hidden_size=H, **attrs)


# ---- recurrent layers against torch.nn ------------------------------------------------------------------

# ONNX's gate order as blocks of torch's: LSTM i, o, f, c from torch's i, f, g, o; GRU z, r, h from r, z, n.
TORCH_BLOCKS = {"LSTM": [0, 3, 1, 2], "GRU": [1, 0, 2], "RNN": [0]}


def _onnx_weights(layer: torch.nn.Module, op: str, directions: int) -> dict[str, np.ndarray]:
    """W, R, B of ONNX from a torch layer's parameters (one layer), its gates reordered."""
    def blocks(t: torch.Tensor) -> np.ndarray:
        parts = t.detach().numpy().reshape(GATES[op], H, *t.shape[1:])
        return np.concatenate([parts[k] for k in TORCH_BLOCKS[op]], 0)

    suffixes = ["_l0", "_l0_reverse"][:directions]
    return {"W": np.stack([blocks(getattr(layer, "weight_ih" + s)) for s in suffixes]),
            "R": np.stack([blocks(getattr(layer, "weight_hh" + s)) for s in suffixes]),
            "B": np.stack([np.concatenate([blocks(getattr(layer, name + s)) for name in ("bias_ih", "bias_hh")])
                           for s in suffixes])}


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("layout", [0, 1])
def test_recurrent_matches_torch(op: str, bidirectional: bool, layout: int) -> None:
    torch.manual_seed(0)
    layer = {"LSTM": torch.nn.LSTM, "GRU": torch.nn.GRU, "RNN": torch.nn.RNN}[op](I, H, bidirectional=bidirectional)
    directions = 2 if bidirectional else 1
    x = torch.randn(T, B, I)
    h0 = torch.randn(directions, B, H)
    c0 = torch.randn(directions, B, H)
    with torch.no_grad():
        out = layer(x, (h0, c0) if op == "LSTM" else h0)
    y, states = out[0], out[1] if op == "LSTM" else (out[1],)

    inputs = {"X": x.numpy(), **_onnx_weights(layer, op, directions), "initial_h": h0.numpy()}
    if op == "LSTM":
        inputs["initial_c"] = c0.numpy()
    if layout:   # batch first: X [B, T, I], states [B, D, H]
        inputs = {k: v.transpose(1, 0, 2) if k in ("X", "initial_h", "initial_c") else v for k, v in inputs.items()}
    attrs = {"direction": "bidirectional" if bidirectional else "forward", "layout": layout}
    if op == "GRU":
        attrs["linear_before_reset"] = 1       # torch's GRU scales the recurrent product by r
    got = run(_recurrent_model(op, inputs, **attrs), inputs)

    want_y = y.numpy().reshape(T, B, directions, H).transpose(0, 2, 1, 3)       # [T, D, B, H]
    want_states = [s.numpy() for s in states]                                    # [D, B, H]
    if layout:
        want_y = want_y.transpose(2, 0, 1, 3)
        want_states = [s.transpose(1, 0, 2) for s in want_states]
    for g, w in zip(got, [want_y, *want_states]):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def test_lstm_is_one_scan_per_direction() -> None:
    rng = np.random.default_rng(1)
    inputs = {"X": rng.standard_normal((T, B, I), np.float32),
              "W": rng.standard_normal((2, 4 * H, I), np.float32),
              "R": rng.standard_normal((2, 4 * H, H), np.float32)}
    model = _recurrent_model("LSTM", inputs, direction="bidirectional")
    graph = convert(model, {k: (v.shape, v.dtype) for k, v in inputs.items()}).graph
    scans = [n for n in graph.nodes if n.op is Op.SCAN]
    assert [n.attrs["reverse"] for n in scans] == [False, True]
    assert all(n.attrs["length"] == T for n in scans)


# ---- what torch has no switch for, against onnxruntime -------------------------------------------------

RECURRENT_CASES = [
    ("RNN", dict(direction="reverse"), True, False),
    ("RNN", dict(direction="bidirectional", clip=0.7, activations=["LeakyRelu", "HardSigmoid"],
                 activation_alpha=[0.1, 0.3], activation_beta=[0.4]), True, False),
    ("GRU", dict(direction="bidirectional"), True, False),             # reset before the product
    ("GRU", dict(linear_before_reset=1, clip=0.5, activations=["HardSigmoid", "Softsign"]), True, False),
    ("LSTM", dict(direction="bidirectional"), True, True),
    ("LSTM", dict(input_forget=1, clip=1.5), False, True),
    ("LSTM", dict(direction="reverse", activations=["Sigmoid", "ScaledTanh", "Elu"], activation_alpha=[0.8, 0.5],
                  activation_beta=[1.5]), True, False),
]


@pytest.mark.parametrize("op, attrs, lengths, peepholes", RECURRENT_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(RECURRENT_CASES)])
def test_recurrent_attributes_match_onnxruntime(op: str, attrs: dict, lengths: bool, peepholes: bool) -> None:
    rng = np.random.default_rng(2)
    directions = 2 if attrs.get("direction") == "bidirectional" else 1
    g = GATES[op]
    inputs = {"X": rng.standard_normal((T, B, I), np.float32),
              "W": 0.5 * rng.standard_normal((directions, g * H, I), np.float32),
              "R": 0.5 * rng.standard_normal((directions, g * H, H), np.float32),
              "B": rng.standard_normal((directions, 2 * g * H), np.float32),
              "initial_h": rng.standard_normal((directions, B, H), np.float32)}
    if lengths:   # each batch entry its own length, one of them the whole sequence
        inputs["sequence_lens"] = np.array([T, 2, 4], np.int32)
    if op == "LSTM":
        inputs["initial_c"] = rng.standard_normal((directions, B, H), np.float32)
    if peepholes:
        inputs["P"] = rng.standard_normal((directions, 3 * H), np.float32)
    model = _recurrent_model(op, inputs, **attrs)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, inputs)
    got = run(model, inputs)
    for g_, w in zip(got, want):
        assert g_.shape == w.shape
        np.testing.assert_allclose(g_, w, rtol=1e-5, atol=1e-5)
    if lengths:   # past an entry's length its output is 0
        assert not got[0][2:, :, 1].any()


def test_unknown_activation_is_unsupported() -> None:
    inputs = {"X": np.zeros((T, B, I), np.float32), "W": np.zeros((1, H, I), np.float32),
              "R": np.zeros((1, H, H), np.float32)}
    with pytest.raises(UnsupportedOnnx, match="activation 'Gelu'"):
        run(_recurrent_model("RNN", inputs, activations=["Gelu"]), inputs)


# ---- Attention against onnx's reference -----------------------------------------------------------------

def _attention(inputs: dict[str, np.ndarray], outputs: dict[str, int], opset: int = 23, **attrs) -> tuple:
    """dln's outputs and the reference's for one Attention node."""
    model = _model("Attention", inputs, outputs, opset, **attrs)
    return run(model, inputs), ReferenceEvaluator(model).run(None, inputs)


def _inputs(rng, **shapes: tuple) -> dict[str, np.ndarray]:
    """Normal floats of the given shapes (a bool mask where the shape's last entry is `bool`)."""
    out = {}
    for name, shape in shapes.items():
        if shape[-1] is bool:
            out[name] = rng.random(shape[:-1]) > 0.3
        else:
            out[name] = rng.standard_normal(shape).astype(np.float32)
    return out


ATTENTION_CASES = [
    # name, input shapes, attributes, outputs (name -> rank; "" left out)
    ("3d gqa causal with past",
     dict(Q=(2, 5, 6 * 7), K=(2, 3, 2 * 7), V=(2, 3, 2 * 5), attn_mask=(5, 7), past_key=(2, 2, 4, 7),
          past_value=(2, 2, 4, 5)),
     dict(q_num_heads=6, kv_num_heads=2, is_causal=1), [("Y", 3), ("present_key", 4), ("present_value", 4)]),
    ("4d bool mask padded to the keys",
     dict(Q=(2, 3, 5, 7), K=(2, 3, 9, 7), V=(2, 3, 9, 11), attn_mask=(3, 5, 6, bool)), dict(scale=0.3), [("Y", 4)]),
    ("softcap and the biased scores", dict(Q=(2, 3, 5, 7), K=(2, 3, 6, 7), V=(2, 3, 6, 7), attn_mask=(1, 5, 6)),
     dict(softcap=1.5, qk_matmul_output_mode=2), [("Y", 4), ("", 0), ("", 0), ("qk_matmul_output", 4)]),
    ("probabilities in double", dict(Q=(2, 3, 5, 7), K=(2, 1, 6, 7), V=(2, 1, 6, 7)),
     dict(is_causal=1, qk_matmul_output_mode=3, softmax_precision=TensorProto.DOUBLE),
     [("Y", 4), ("", 0), ("", 0), ("qk_matmul_output", 4)]),
]


@pytest.mark.parametrize("name, shapes, attrs, outputs", ATTENTION_CASES, ids=[c[0] for c in ATTENTION_CASES])
def test_attention_matches_reference(name: str, shapes: dict, attrs: dict, outputs: list) -> None:
    inputs = _inputs(np.random.default_rng(3), **shapes)
    if inputs.get("attn_mask") is not None and inputs["attn_mask"].dtype == np.float32:
        inputs["attn_mask"][..., 1] = -np.inf       # one key masked out for every query
    got, want = _attention(inputs, outputs, **attrs)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_attention_nonpad_and_window() -> None:
    """The key-padding lengths of opset 24 set each entry's causal frontier; opset 25's window bounds it."""
    inputs = _inputs(np.random.default_rng(4), Q=(3, 3, 4, 5), K=(3, 3, 9, 5), V=(3, 3, 9, 6))
    inputs["nonpad_kv_seqlen"] = np.array([9, 6, 3], np.int64)   # the last: its first query before every key
    results = []
    for opset, attrs in ((24, dict(is_causal=1)), (25, dict(is_causal=1, left_window_size=2)),
                         (25, dict(left_window_size=1, right_window_size=3))):
        got, want = _attention(inputs, [("Y", 4)], opset=opset, **attrs)
        np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-6)
        results.append(got[0])
    assert not results[0][2, :, 0].any() and results[0][2, :, 1:].all()   # no key to attend: zeros
    assert not np.allclose(results[0], results[1])


def test_attention_fully_masked_row_is_zero() -> None:
    inputs = _inputs(np.random.default_rng(5), Q=(1, 2, 3, 5), K=(1, 2, 4, 5), V=(1, 2, 4, 5))
    inputs["attn_mask"] = np.array([[True, False, True, True], [False] * 4, [True] * 4])
    got, want = _attention(inputs, [("Y", 4)])
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-6)
    assert not got[0][:, :, 1].any() and got[0][:, :, 0].all()


def test_attention_f16_rounds_once() -> None:
    """f16 attention within half an f16 ulp of the exact result (the reference's f16 steps are not)."""
    inputs = {k: v.astype(np.float16) for k, v in
              _inputs(np.random.default_rng(6), Q=(2, 5, 3, 7), K=(2, 5, 6, 7), V=(2, 5, 6, 7)).items()}
    got, want = _attention(inputs, [("Y", 4)], is_causal=1)
    wide = {k: v.astype(np.float64) for k, v in inputs.items()}
    exact = ReferenceEvaluator(_model("Attention", wide, [("Y", 4)], 23, is_causal=1)).run(None, wide)[0]
    assert got[0].dtype == np.float16
    np.testing.assert_allclose(got[0], exact, rtol=2.0 ** -11, atol=2.0 ** -25)
    np.testing.assert_allclose(got[0], want[0], rtol=2e-3, atol=1e-3)


def test_attention_takes_the_composite_when_only_softmax_stands_between() -> None:
    inputs = _inputs(np.random.default_rng(7), Q=(2, 5, 3 * 7), K=(2, 6, 3 * 7), V=(2, 6, 3 * 7))
    shapes = {k: (v.shape, v.dtype) for k, v in inputs.items()}
    for attrs, kept in (({}, True), ({"softcap": 2.0}, False)):
        model = _model("Attention", inputs, [("Y", 3)], 23, q_num_heads=3, kv_num_heads=3, **attrs)
        graph = convert(model, shapes).graph
        assert any(n.op is Op.COMPOSITE and n.attrs["composite"] == "sdpa" for n in graph.nodes) == kept


def test_attention_3d_without_heads_is_unsupported() -> None:
    inputs = {n: np.zeros((2, 5, 6), np.float32) for n in "QKV"}
    with pytest.raises(UnsupportedOnnx, match="q_num_heads and kv_num_heads"):
        run(_model("Attention", inputs, [("Y", 3)], 23), inputs)
