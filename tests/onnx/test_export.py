"""ONNX export (dln.runtime.onnx.export): every example model, exported and run in onnxruntime, gives
dln's NumPy forward in evaluation mode, at batch (and sequence) sizes that are not powers of two and
differ between runs of one exported file (the axes are dynamic); the file passes ONNX's checker and
strict shape inference; the initializers are the weights under their state_dict names."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import dln  # noqa: E402
from dln.compiler import pipeline  # noqa: E402
from dln.compiler.ir import DType, Op  # noqa: E402
from dln.runtime import cli  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.dln"))
SIZES = ({"B": 5, "T": 6, "N": 7}, {"B": 7, "T": 9, "N": 11})   # two runs of one session

COVER = """
# Ops the examples leave out: overlapping and padded pooling, a reversed scan, ...
model cover() {
    input x: f32[B, 3, 7, 7]
    input s: f32[B, T, 5]
    input h0: f32[4, B, 3]
    input c0: f32[4, B, 3]
    input keep: bool[B, T, T]
    windows = maxpool2d(x, 3, stride = 2, padding = 1)
    tiles   = avgpool2d(x, 2)
    pooled  = global_avgpool(x)
    plain   = batchnorm(x, affine = false)
    seq     = s -> gru(4, bidirectional = true)
    normed  = layernorm(s, affine = false)
    probs   = softmax(s, axis = -1)
    logp    = log_softmax(s, axis = -1)
    bits    = where(s > 0.5, log1p(abs(s)), clamp(s, -0.25, 0.25))
    rem     = where(s != 0.25, s % 0.7, s ** 2)
    picked  = gather(s, 2, argmax(s, axis = 2, keepdim = true))
    hot     = one_hot(argmax(s, axis = 2), 5)
    joined  = concat([s, probs], axis = 2)
    padded  = pad(s, (1, 2))
    total   = sum(s, axis = 2) * mean(s, axis = 2) -> leaky_relu
    line    = conv1d(reshape(x, (B, 3, 49)), 4, 5, stride = 2) -> gelu
    ys, h_n, c_n = lstm(s, 3, layers = 2, h0 = h0, c0 = c0, bidirectional = true, return_state = true)
    relu_ys = rnn(s, 2, nonlinearity = "relu", bias = false)
    heads   = attention(s, 1, causal = true, dropout = 0.1)
    masked  = scaled_dot_product_attention(s, s, s, mask = keep)
    output windows, tiles, pooled, seq, normed, probs, logp, bits, joined, padded, total, line, ys, h_n, c_n
    output relu_ys, heads, masked, rem, picked, hot, plain
}
"""


def selected(path: Path) -> dln.Model:
    """The model `dln export FILE` exports (cli's selection), with every weight and running statistic
    drawn anew, so that no batch norm is the identity."""
    program = pipeline.load(path)
    model = dln.Model(program, cli._model_name(argparse.Namespace(model=None), program), backend="numpy",
                      from_text=True)
    randomize(model)
    return model


def randomize(model: dln.Model) -> None:
    rng = np.random.default_rng(1)
    state = {}
    for name, value in model.state_dict().items():
        if not np.issubdtype(value.dtype, np.floating):
            state[name] = value
        elif name.endswith("running_var"):
            state[name] = rng.uniform(0.5, 2.0, value.shape).astype(value.dtype)
        else:
            state[name] = (value + rng.normal(0, 0.1, value.shape)).astype(value.dtype)
    model.load_state_dict(state)


def feeds_for(model: dln.Model, proto, sizes: dict[str, int], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for i in proto.graph.input:
        if i.name not in model.inputs:
            continue
        info = model.inputs[i.name]
        shape = [d if isinstance(d, int) else sizes[str(d)] for d in info.type.shape]
        if info.type.dtype.is_float:
            feeds[i.name] = rng.normal(0, 1, shape).astype(np.float32)
        elif info.type.dtype is DType.BOOL:   # an attention mask; query 0 sees no key at all
            feeds[i.name] = rng.random(shape) < 0.6
            feeds[i.name][:, 0] = False
        else:
            feeds[i.name] = rng.integers(0, 10, shape).astype(np.int64)   # token ids: every vocabulary has 10
    return feeds


def compare(model: dln.Model, proto) -> float:
    """The largest difference between onnxruntime and dln over both sizes, relative to each output's
    largest magnitude; asserts each output's shape and values."""
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [i.name for i in proto.graph.input]
    worst = 0.0
    for k, sizes in enumerate(SIZES):
        feeds = feeds_for(model, proto, sizes, k)
        step = model._rng_step            # the draw this run makes: dln's seed and step
        want = model(**feeds)
        if "rng.seed" in names:
            feeds["rng.seed"] = np.array(model._rng_seed, np.int64)
            feeds["rng.step"] = np.array(step, np.int64)
        got = dict(zip([o.name for o in proto.graph.output], session.run(None, feeds)))
        assert sorted(got) == sorted(want)
        for name, ref in want.items():
            assert got[name].shape == ref.shape, name
            scale = max(1.0, float(np.max(np.abs(ref)))) if ref.size else 1.0
            np.testing.assert_allclose(got[name], ref, rtol=1e-5, atol=1e-5 * scale, err_msg=name)
            if ref.size:
                worst = max(worst, float(np.max(np.abs(got[name] - ref))) / scale)
    return worst


def check_proto(model: dln.Model, proto) -> None:
    onnx.checker.check_model(proto, full_check=True)
    onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    # The weights the forward graph reads (as the compiler's own forward graph reads them), by name.
    forward = pipeline.forward_graph(model.spec)
    read = {n.attrs["name"] for n in forward.inputs if n.attrs["role"] in ("param", "buffer")}
    state = model.state_dict()
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    assert set(inits) == read and read <= set(state)
    for name, array in inits.items():
        np.testing.assert_array_equal(array, state[name])
    # Every symbolic input axis is a dim_param of the symbol's name.
    for i in proto.graph.input:
        if i.name in model.inputs:
            dims = [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
            assert dims == [d if isinstance(d, int) else str(d) for d in model.inputs[i.name].type.shape]


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_matches_onnxruntime(path):
    model = selected(path)
    proto = model.export_onnx(None)
    check_proto(model, proto)
    compare(model, proto)


DRAWS = """
# Every kind of draw a model makes in evaluation mode: rand_like, bernoulli, randn_like in f64 and f32,
# two in one expression.
model draws {
    input x: f32[B, 5]
    input p: f32[B, 3]
    input w: f64[B, 2]
    output u = rand_like(x)
    output coin = bernoulli(sigmoid(p))
    output d = w + randn_like(w)
    output e = x * randn_like(x) - randn_like(x)
}
"""


def draws_model(tmp_path: Path, seed: int = 11) -> dln.Model:
    path = tmp_path / "draws.dln"
    path.write_text(DRAWS)
    return dln.compile(path, backend="numpy", seed=seed)


def draw_feeds(seed: int, batch: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": rng.normal(size=(batch, 5)).astype(np.float32), "p": rng.normal(size=(batch, 3)).astype(np.float32),
            "w": rng.normal(size=(batch, 2))}


def test_random_draws_are_calls_of_dlns_generator(tmp_path):
    """Each draw is one call of a model-local function in the domain ai.dln (randn_like's Box-Muller
    whole), on dln's stream for it; the functions' body is dln's Philox, so onnxruntime (which inlines
    them) and dln's own ONNX backend draw dln's numbers: the uniform ones bit for bit."""
    from dln.runtime.onnx.backend import run

    model = draws_model(tmp_path)
    proto = model.export_onnx(None)
    check_proto(model, proto)
    calls = [(n.op_type, {a.name: a.i for a in n.attribute}) for n in proto.graph.node if n.domain == "ai.dln"]
    f32, f64 = onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE
    assert calls == [("Uniform", {"stream": 0, "dtype": f32}), ("Uniform", {"stream": 1, "dtype": f32}),
                     ("Normal", {"stream": 2, "dtype": f64}), ("Normal", {"stream": 4, "dtype": f32}),
                     ("Normal", {"stream": 6, "dtype": f32})]
    assert {(f.domain, f.name) for f in proto.functions} == {("ai.dln", "Philox"), ("ai.dln", "Uniform"),
                                                             ("ai.dln", "Normal")}
    assert not {n.op_type for n in proto.graph.node} & {"BitwiseXor", "BitShift", "Cos", "Log"}
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in proto.graph.output]
    for batch in (4, 7):
        feeds = draw_feeds(batch, batch)
        step = model._rng_step
        want = model(**feeds)
        rng = {"rng.seed": np.array(11, np.int64), "rng.step": np.array(step, np.int64)}
        runs = (session.run(None, {**feeds, **rng}), run(proto, {**feeds, **rng}))   # onnxruntime, dln's backend
        for got in (dict(zip(names, outputs)) for outputs in runs):
            np.testing.assert_array_equal(got["u"], want["u"])
            np.testing.assert_array_equal(got["coin"], want["coin"])
            for name in ("d", "e"):
                np.testing.assert_allclose(got[name], want[name], rtol=1e-6, atol=1e-6, err_msg=name)
        other = session.run(["u"], {**feeds, **rng, "rng.seed": np.array(12, np.int64)})[0]
        assert not np.array_equal(other, want["u"])   # the seed is read


def test_noisy_examples_export_as_few_nodes():
    """The denoising autoencoder's and the VAE's noise is one `Normal` call each, not the generator
    written out in the graph (360 nodes before)."""
    for name in ("autoencoder_digits.dln", "vae_digits.dln"):
        proto = selected(ROOT / "examples" / name).export_onnx(None)
        kinds = [n.op_type for n in proto.graph.node]
        assert kinds.count("Normal") == 1 and len(kinds) < 20, kinds


def test_layers_become_their_onnx_ops():
    def ops(name: str) -> set[str]:
        return {n.op_type for n in selected(ROOT / "examples" / name).export_onnx(None).graph.node}

    conv = selected(ROOT / "examples" / "cnn_digits.dln").export_onnx(None).graph.node[0]
    assert conv.op_type == "Conv" and conv.doc_string.endswith("cnn_digits.dln:7:14")   # its .dln line
    cnn = ops("cnn_digits.dln")
    assert {"Conv", "BatchNormalization", "MaxPool", "Gemm"} <= cnn and "ArgMax" not in cnn
    assert {"ConvTranspose", "BatchNormalization"} <= ops("dcgan_digits.dln")
    assert {"LSTM", "Gather"} <= ops("lstm_charlm.dln") and "Scan" not in ops("lstm_charlm.dln")
    assert "GRU" in ops("gru_charlm.dln") and "RNN" in ops("rnn_digits.dln")
    gpt = ops("transformer_charlm.dln")
    assert {"LayerNormalization", "Softmax", "MatMul", "Gemm"} <= gpt and "ReduceMax" not in gpt


def test_ops_the_examples_leave_out(tmp_path):
    path = tmp_path / "cover.dln"
    path.write_text(COVER)
    model = dln.compile(path, backend="numpy")
    randomize(model)
    proto = model.export_onnx(tmp_path / "cover.onnx")
    assert onnx.load(str(tmp_path / "cover.onnx")) == proto
    check_proto(model, proto)
    compare(model, proto)
    assert {"Softmax", "LogSoftmax", "Conv", "LayerNormalization", "AveragePool", "ReduceMean", "LSTM", "RNN",
            "BatchNormalization"} <= {n.op_type for n in proto.graph.node}
    # The bidirectional GRU is two, one of them reversed.
    grus = [n for n in proto.graph.node if n.op_type == "GRU"]
    assert sorted(a.s for n in grus for a in n.attribute if a.name == "direction") == [b"forward", b"reverse"]


@pytest.mark.parametrize("name", ["lstm_charlm.dln", "gru_charlm.dln", "rnn_digits.dln", None])
def test_scans_not_recognized_as_layers_are_onnx_scans(tmp_path, monkeypatch, name):
    """Without the recurrent layers' recognizer every scan is an ONNX Scan (its body written by the same
    tables), reversed ones included: the path any other scan takes."""
    from dln.runtime.onnx import export_patterns, export_recurrent  # noqa: F401

    monkeypatch.setitem(export_patterns.RECOGNIZERS, Op.SCAN, [])
    if name is None:
        (tmp_path / "cover.dln").write_text(COVER)
    model = selected(ROOT / "examples" / name if name else tmp_path / "cover.dln")
    proto = model.export_onnx(None)
    kinds = {n.op_type for n in proto.graph.node}
    assert "Scan" in kinds and not kinds & {"LSTM", "GRU", "RNN"}
    if name is None:
        scans = [n for n in proto.graph.node if n.op_type == "Scan"]
        assert any(a.name == "scan_input_directions" and list(a.ints) == [1] for n in scans for a in n.attribute)
    check_proto(model, proto)
    compare(model, proto)


def test_opset(tmp_path):
    model = dln.compile(ROOT / "examples" / "transformer_charlm.dln", backend="numpy")
    proto = model.export_onnx(tmp_path / "gpt.onnx", opset=21)
    assert [o.version for o in proto.opset_import] == [21]
    for path, opset in ((tmp_path / "old.onnx", 12), (tmp_path / "text.onnx", "18"), (42, 18)):
        with pytest.raises(dln.DlnError) as e:
            model.export_onnx(path, opset=opset)
        assert e.value.diagnostics[0].code == "E0710"
    assert not (tmp_path / "old.onnx").exists()


def test_cli_writes_the_file(tmp_path, capsys):
    out = tmp_path / "cnn.onnx"
    assert cli.main(["export", str(ROOT / "examples" / "cnn_digits.dln"), "-o", str(out)]) == 0
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto, full_check=True)
    assert [i.name for i in proto.graph.input] == ["images"] and [o.name for o in proto.graph.output] == ["logits"]
    assert f"wrote {out}" in capsys.readouterr().out


def test_cli_exports_trained_weights(tmp_path):
    model = selected(ROOT / "examples" / "mlp_digits.dln")
    weights, out = tmp_path / "w.safetensors", tmp_path / "mlp.onnx"
    model.save(weights)
    assert cli.main(["export", str(ROOT / "examples" / "mlp_digits.dln"), "-o", str(out), "--weights",
                     str(weights)]) == 0
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(out)).graph.initializer}
    for name, value in model.parameters().items():
        np.testing.assert_array_equal(inits[name], value)


@pytest.mark.parametrize("file, out, argv, code, where", [
    ("bf16.dln", "m.onnx", ["--model", "nope"], "E0301", "unknown model 'nope'"),
    ("bf16.dln", "m.onnx", [], "E0715", "bf16.dln:4:9"),
    ("missing.dln", "m.onnx", [], "E0702", "missing.dln"),
    ("bf16.dln", "no/such/dir/m.onnx", [], "E0715", "bf16.dln:4:9"),   # found before writing
    ("iris", "no/such/dir/m.onnx", [], "E0708", "no/such/dir/m.onnx"),
    ("iris", ".", [], "E0708", "it is a directory"),
])
def test_cli_errors(tmp_path, monkeypatch, capsys, file, out, argv, code, where):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bf16.dln").write_text("# A bf16 weight: the exporter writes f16, f32 and f64 ones\nmodel tiny() {\n"
                                       "    input x: bf16[B, 4]\n    y = linear(x, 3)\n    output y\n}\n")
    path = str(ROOT / "examples" / "iris.dln") if file == "iris" else file
    assert cli.main(["export", path, "-o", out, *argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error[{code}]") and where in err and "Traceback" not in err, err
    assert not (tmp_path / "m.onnx").exists()


def test_every_forward_op_has_an_export_rule():
    """The exporter's table covers every primitive a forward graph may hold (the backward's
    conv_weight aside), and the composites it keeps whole."""
    from dln.runtime.onnx import export, export_random, export_scan  # noqa: F401
    from dln.runtime.onnx.export_ops import PRIMITIVES

    # all_reduce: only in training graphs across ranks (sync_batchnorm), never in an exported forward graph
    backward_only = {Op.CONV_WEIGHT, Op.ALL_REDUCE}
    assert set(Op) - backward_only <= set(PRIMITIVES)
    assert export.NATIVE_COMPOSITES == {"layernorm", "sdpa"}


def test_primitives_match_the_interpreter():
    """Primitives no built-in puts in a forward graph in these forms (scatter_add, stepped and reversed
    slices, a strided grouped conv_transpose with output padding, symbol sizes, ...), one graph
    exported by `graph_to_onnx` and run against dln's interpreter, at two batch sizes."""
    from dln.compiler.emit import GraphBuilder
    from dln.compiler.ir import TensorType
    from dln.compiler.symbolic import Sym
    from dln.runtime.interpreter import evaluate
    from dln.runtime.onnx.export import graph_to_onnx

    B = Sym.var("B")
    b = GraphBuilder("prims")
    x = b.input("x", TensorType(DType.F32, (B, 4, 6)))
    index = b.input("index", TensorType(DType.I64, (B, 4, 3)))
    counts = b.input("counts", TensorType(DType.I64, (B, 4)))
    w = b.input("w", TensorType(DType.F32, (4, 3, 3)), role="param")
    outs = {
        "scattered": b.scatter_add((B, 4, 6), 2, index, b.slice_axis(x, 2, 0, 3)),
        "stepped": b.slice(x, [0, 3, 5], [B, 0, 0], [1, -1, -2]),
        "padded": b.pad(x, [(0, 0), (2, 1), (0, 3)], -1.5),
        "iota": b.add(b.cast(b.iota(6, DType.I32), DType.F32), b.dim_value(B, DType.F32)),
        "wrapped": b.compare(Op.NE, b.mod(counts, 3), 1),
        "waves": b.pow(b.add(b.unary(Op.SIN, x), b.unary(Op.COS, b.unary(Op.SIGN, x))), 2.0),
        "floored": b.add(b.unary(Op.FLOOR, b.mul(x, 3.0)), b.unary(Op.ATAN, x)),
        "extremes": b.add(b.max(x, 1, keepdim=True), b.min(x, 1, keepdim=True)),
        "clipped": b.maximum(b.minimum(x, 0.5), b.neg(b.cast(b.cast(x, DType.F64), DType.F32))),
        "transposed": b.emit(Op.CONV_TRANSPOSE, (x, w), {"stride": (2,), "dilation": (1,), "padding": ((1, 0),),
                                                         "groups": 2, "output_padding": (1,)}),
    }
    # A scan with no sequence (a fixed number of steps), its carry passed through as its output, reading
    # an outer value; and a reversed one over x whose step ignores its carry.
    body = GraphBuilder("halving")
    h = body.input("h", TensorType(DType.F32, (B, 6)), role="carry")
    c = body.input("c", TensorType(DType.F32, (B, 6)), role="const")
    halving = body.finish([("h", body.add(body.mul(h, 0.5), c)), ("y", h)])
    finals, ys = b.scan(halving, [b.reshape(b.slice_axis(x, 1, 0, 1), (B, 6))], [],
                        [b.reshape(b.slice_axis(x, 1, 1, 2), (B, 6))], length=3)
    outs["halved"], outs["steps"] = finals[0], ys[0]
    body = GraphBuilder("rows")
    h = body.input("h", TensorType(DType.F32, (B, 6)), role="carry")
    row = body.input("row", TensorType(DType.F32, (B, 6)), role="x")
    rows = body.finish([("h", body.add(row, 1.0)), ("y", body.mul(row, row))])
    finals, ys = b.scan(rows, [b.reshape(b.slice_axis(x, 1, 0, 1), (B, 6))], [b.permute(x, (1, 0, 2))],
                        reverse=True)
    outs["first_row"], outs["squares"] = finals[0], ys[0]
    graph = b.finish(list(outs.items()))
    weights = {"w": np.random.default_rng(2).normal(size=(4, 3, 3)).astype(np.float32)}
    proto = graph_to_onnx(graph, "prims", weights)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    for batch in (5, 7):
        rng = np.random.default_rng(batch)
        feeds = {"x": rng.normal(size=(batch, 4, 6)).astype(np.float32),
                 "index": rng.integers(0, 6, (batch, 4, 3)), "counts": rng.integers(-9, 9, (batch, 4))}
        want = evaluate(graph, {**feeds, **weights}, {"B": batch})
        got = dict(zip([o.name for o in proto.graph.output], session.run(None, feeds)))
        for name, ref in want.items():
            assert got[name].shape == ref.shape, name
            np.testing.assert_allclose(got[name], ref, rtol=1e-5, atol=1e-6, err_msg=name)
