"""`dln import`: ONNX models become `.dln` text and safetensors weights that compile, load and give
onnxruntime's outputs; unsupported ops are located errors; an imported model trains.

The models: PyTorch modules built here and the examples' PyTorch twins, exported with
torch.onnx.export (the TorchScript exporter, which works offline); graphs written with onnx.helper
for what torch does not emit (sequence-first recurrent layers with their states, an older opset,
uneven padding, names that are no identifiers); and every example exported by dln itself, which
comes back computing what it did.  Batches of 3 to 7, never a power of two."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

import dln  # noqa: E402
from dln.dsl.diagnostics import DlnError  # noqa: E402
from dln.runtime.cli import main  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

nn = torch.nn
RNG = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _seeded():
    """Each test draws the same numbers however the tests are selected."""
    global RNG
    RNG = np.random.default_rng(0)
    torch.manual_seed(0)


def export(module: nn.Module, args: tuple, path: Path, inputs: list[str], dynamic: dict, fold: bool = False) -> Path:
    """The TorchScript exporter.  By default torch fuses a batch norm into the convolution before it;
    `fold = False` keeps the model as written (and writes a MatMul's transposed weight as a Transpose)."""
    module.eval()
    mode = torch.onnx.TrainingMode.EVAL if fold else torch.onnx.TrainingMode.PRESERVE
    with warnings.catch_warnings():   # the TorchScript exporter's deprecation and tracing notices
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), dynamo=False, opset_version=17, input_names=inputs,
                          output_names=["y"], dynamic_axes=dynamic, do_constant_folding=fold, training=mode)
    return path


def imported(path: Path, tmp: Path) -> tuple[str, dln.Model]:
    out = tmp / (path.stem + ".dln")
    text = dln.import_onnx(path, out=out)
    model = dln.compile(out, backend="numpy")
    model.load(out.with_suffix(".safetensors"))   # strict: every parameter, nothing else
    return text, model


def max_difference(path: Path, model: dln.Model, feeds: dict[str, np.ndarray],
                   names: dict[str, str] | None = None) -> float:
    """dln's outputs against onnxruntime's on the same inputs; their largest difference.  `names`:
    the .dln names of ONNX inputs and outputs that are not identifiers."""
    names = names or {}
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)
    got = model(**{names.get(k, k): v for k, v in feeds.items()})
    outputs = [o.name for o in onnx.load(str(path)).graph.output]
    worst = 0.0
    for name, w in zip(outputs, want):
        g = np.asarray(got[names.get(name, name)])
        assert g.shape == w.shape, name
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
        worst = max(worst, float(np.abs(g - w).max()))
    return worst


def randn(*shape: int, scale: float = 1.0) -> np.ndarray:
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


# ---- models exported from PyTorch --------------------------------------------------------------------------

class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.out = nn.Linear(10, 24), nn.Linear(24, 12), nn.Linear(12, 3)

    def forward(self, x):
        h = torch.tanh(self.fc2(torch.relu(self.fc1(x))))
        return torch.log_softmax(self.out(h), dim=-1)


def test_mlp(tmp_path):
    path = export(MLP(), (torch.randn(4, 10),), tmp_path / "mlp.onnx", ["x"], {"x": {0: "batch"}})
    text, model = imported(path, tmp_path)
    assert "input x: f32[B, 10]" in text and "linear(24" in text and "log_softmax" in text
    assert max_difference(path, model, {"x": randn(7, 10)}) < 1e-5
    assert max_difference(path, model, {"x": randn(3, 10)}) < 1e-5   # one compile, any batch


class LeNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 6, 5, padding=2, bias=False), nn.BatchNorm2d(6)
        self.conv2, self.bn2 = nn.Conv2d(6, 10, 3), nn.BatchNorm2d(10)
        self.fc1, self.fc2 = nn.Linear(10 * 2 * 2, 20), nn.Linear(20, 5)

    def forward(self, x):
        h = nn.functional.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 2)
        h = nn.functional.avg_pool2d(torch.relu(self.bn2(self.conv2(h))), 2, ceil_mode=True)
        return self.fc2(torch.relu(self.fc1(torch.flatten(h, 1))))


def _perturb_batchnorms(module: nn.Module) -> nn.Module:
    """Running statistics other than 0 and 1, so that importing them matters."""
    g = torch.Generator().manual_seed(1)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return module


def test_lenet_exported_with_constant_folding(tmp_path):
    """torch's default export folds each batch norm into the convolution before it, whose weights
    get generated names: the layers are named after the nodes (`/conv1/Conv` -> conv1)."""
    path = export(_perturb_batchnorms(LeNet()), (torch.randn(2, 1, 11, 11),), tmp_path / "fused.onnx", ["images"],
                  {"images": {0: "batch"}}, fold=True)
    text, model = imported(path, tmp_path)
    assert "batchnorm" not in text and "conv1 = images -> conv2d(6, 5, padding = 2)" in text
    assert max_difference(path, model, {"images": randn(3, 1, 11, 11)}) < 1e-5


def test_lenet_with_batchnorm_and_pooling(tmp_path):
    module = _perturb_batchnorms(LeNet())
    path = export(module, (torch.randn(2, 1, 11, 11),), tmp_path / "lenet.onnx", ["images"],
                  {"images": {0: "batch"}})
    text, model = imported(path, tmp_path)
    for piece in ("conv2d(6, 5, padding = 2, bias = false)", "batchnorm", "maxpool2d(2)",
                  "avgpool2d(2, ceil_mode = true)", "flatten"):
        assert piece in text, piece
    assert max_difference(path, model, {"images": randn(5, 1, 11, 11)}) < 1e-5
    # the names the text gives are PyTorch's: its state_dict loads as it is
    model.load_state_dict({k: v.numpy() for k, v in module.state_dict().items()})


class LSTMClassifier(nn.Module):
    def __init__(self, kind: type = nn.LSTM, layers: int = 1, bidirectional: bool = False) -> None:
        super().__init__()
        self.embed, self.head = nn.Embedding(30, 8), nn.Linear(24 if bidirectional else 12, 4)
        self.lstm = kind(8, 12, num_layers=layers, batch_first=True, bidirectional=bidirectional)

    def forward(self, tokens):
        states, _ = self.lstm(self.embed(tokens))
        return self.head(states[:, -1])


@pytest.mark.parametrize("kind, layers, bidirectional", [("LSTM", 1, False), ("LSTM", 2, False), ("GRU", 3, False),
                                                         ("LSTM", 1, True), ("GRU", 2, True)])
def test_lstm_classifier(tmp_path, kind, layers, bidirectional):
    module = LSTMClassifier(getattr(nn, kind), layers, bidirectional)
    path = export(module, (torch.randint(0, 30, (2, 6)),), tmp_path / "lstm.onnx", ["tokens"],
                  {"tokens": {0: "batch", 1: "seq"}})
    text, model = imported(path, tmp_path)
    layer = f"{kind.lower()}(12" + (f", layers = {layers}" if layers > 1 else "") + \
        (", bidirectional = true" if bidirectional else "")
    assert "input tokens: i64[B, T]" in text and "embedding(30, 8)" in text and layer in text, text
    assert "transpose" not in text   # the sequence-first transposes around the layer are gone
    tokens = RNG.integers(0, 30, (5, 9)).astype(np.int64)
    assert max_difference(path, model, {"tokens": tokens}) < 1e-5
    # the gates reordered from ONNX's (LSTM i, o, f, c; GRU z, r, h) are torch's (i, f, g, o; r, z, n)
    state = model.state_dict()
    for k, v in module.state_dict().items():
        np.testing.assert_array_equal(state[k], v.numpy(), err_msg=k)


class TextCNN(nn.Module):
    """Embedding, 1-d convolutions and pooling over the sequence, the largest value of each channel."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.conv, self.head = nn.Embedding(40, 8), nn.Conv1d(8, 12, 3, padding=1), nn.Linear(12, 3)

    def forward(self, tokens):
        h = torch.relu(self.conv(self.embed(tokens).transpose(1, 2)))
        h = nn.functional.avg_pool1d(nn.functional.max_pool1d(h, 2), 3, stride=1, padding=1)
        return self.head(h.amax(dim=2))


def test_text_cnn_with_1d_pooling(tmp_path):
    module = TextCNN()
    path = export(module, (torch.randint(0, 40, (2, 12)),), tmp_path / "textcnn.onnx", ["tokens"],
                  {"tokens": {0: "batch"}})
    text, model = imported(path, tmp_path)
    assert "conv1d(12, 3, padding = 1)" in text and "maxpool2d((1, 2))" in text and "max(axis = 2)" in text
    assert text.count("unsqueeze(2)") == 1   # squeezed after one pooling, unsqueezed before the next: neither
    assert max_difference(path, model, {"tokens": RNG.integers(0, 40, (5, 12))}) < 1e-5
    model.load_state_dict({k: v.numpy() for k, v in module.state_dict().items()})


class ResidualBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(h)))


class ResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.layer1 = nn.Sequential(ResidualBlock(8), ResidualBlock(8))
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        h = self.layer1(torch.relu(self.stem(x)))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(h, 1), 1))


def test_resnet_block(tmp_path):
    module = _perturb_batchnorms(ResNet())
    path = export(module, (torch.randn(2, 3, 7, 7),), tmp_path / "resnet.onnx", ["x"], {"x": {0: "batch"}})
    text, model = imported(path, tmp_path)
    assert 'name = "layer1.1.conv2"' in text and "global_avgpool" in text
    assert max_difference(path, model, {"x": randn(3, 3, 7, 7)}) < 1e-5
    model.load_state_dict({k: v.numpy() for k, v in module.state_dict().items()})


class GPTBlock(nn.Module):
    """Pre-LN: attention written out (or F.scaled_dot_product_attention, causal), then a GELU MLP."""

    def __init__(self, dim: int = 16, heads: int = 2, causal: bool = False) -> None:
        super().__init__()
        self.heads, self.causal = heads, causal
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.fc, self.out = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))
        if self.causal:
            y = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            y = torch.softmax(q @ k.transpose(-2, -1) / (C // self.heads) ** 0.5, dim=-1) @ v
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.out(nn.functional.gelu(self.fc(self.ln2(x))))


@pytest.mark.parametrize("fold, causal", [(False, False), (True, False), (True, True)])
def test_gpt_block(tmp_path, fold, causal):
    module = GPTBlock(causal=causal)
    path = export(module, (torch.randn(2, 5, 16),), tmp_path / "gpt.onnx", ["x"], {"x": {0: "batch", 1: "seq"}},
                  fold)
    text, model = imported(path, tmp_path)
    for piece in ("reshape((B, T, 2, 8))", "linear(48)", "gelu", "layernorm") + \
            (("arange(T) <= unsqueeze(arange(T), 1)",) if causal else ()):
        assert piece in text, piece
    assert "param" not in text   # every weight belongs to a layer, named as in PyTorch
    assert max_difference(path, model, {"x": randn(3, 7, 16)}) < 1e-5
    model.load_state_dict({k: v.numpy() for k, v in module.state_dict().items()})


# The PyTorch twins of the examples (examples/torch_twins.py): the example's input, the size of a
# batch to export with and one to run, and whether the twin's state_dict names are the .dln's.
TWINS = {"cnn": ("images", (1, 8, 8), True), "rnn": ("images", (1, 8, 8), True),
         "charlm": ("tokens", (9,), True), "vit": ("images", (1, 8, 8), False), "gpt": ("tokens", (9,), False)}


@pytest.mark.parametrize("name", list(TWINS))
def test_example_twins(tmp_path, twins, name):
    """nn.MultiheadAttention (the ViT's; the GPT's, causal) decomposed by torch's exporter, a
    two-layer RNN read row by row, the char-LM's LSTM: imported, they compute what onnxruntime does.
    (torch's export of nn.MultiheadAttention fixes the sequence length: T = 9 both times.)"""
    torch.manual_seed(0)
    module = twins.make_charlm("lstm") if name == "charlm" else getattr(twins, f"make_{name}")()
    input_name, shape, same_names = TWINS[name]
    example = torch.randint(0, 50, (3, *shape)) if input_name == "tokens" else torch.rand(3, *shape)
    path = export(module, (example,), tmp_path / f"{name}.onnx", [input_name],
                  {input_name: {0: "batch", **({1: "seq"} if input_name == "tokens" else {})}})
    text, model = imported(path, tmp_path)
    feed = RNG.integers(0, 50, (5, *shape)) if input_name == "tokens" else RNG.random((5, *shape), np.float32)
    assert max_difference(path, model, {input_name: feed}) < 1e-5
    if same_names:
        model.load_state_dict({k: v.numpy() for k, v in module.state_dict().items()})


# ---- .dln -> ONNX -> .dln ---------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.dln"))
# Examples that draw noise in evaluation mode (randn_like): dln's exporter writes each draw as a call of
# its generator (ai.dln.Normal), which comes back as the draw on the same stream: the same numbers.
NOISY = {"autoencoder_digits", "vae_digits"}
# Examples whose parameter names come back otherwise: only the generator is exported (the GANs'
# outputs), a bias added after the adjacency product is a param (gcn), attention's projections come
# back as linear layers (transformer, ViT).
RENAMED = {"dcgan_digits", "gan_digits", "gcn_karate", "transformer_charlm", "vit_digits"}


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_round_trip(tmp_path, path):
    """Each example exported by dln (Model.export_onnx) and imported again computes what it did, its
    random draws the very same numbers run after run; where the layers come back as the same layers,
    under the same names, the original weights load."""
    model = "finetune" if path.stem == "transfer_digits" else None
    original = dln.compile(path, backend="numpy", seed=3, model=model)
    state = original.state_dict()   # running statistics other than 0 and 1 too
    for name, value in state.items():
        if name.endswith("running_var"):
            state[name] = RNG.uniform(0.5, 2.0, value.shape).astype(value.dtype)
        elif value.dtype.kind == "f":
            state[name] = (value + RNG.normal(0, 0.1, value.shape)).astype(value.dtype)
    original.load_state_dict(state)
    onnx_path = tmp_path / f"{path.stem}.onnx"
    original.export_onnx(onnx_path)
    text = dln.import_onnx(onnx_path, out=tmp_path / "back.dln")
    assert "rng" not in text and ("randn_like(" in text) == (path.stem in NOISY)
    back = dln.compile(tmp_path / "back.dln", backend="numpy", seed=3)
    back.load(tmp_path / "back.safetensors")
    feeds = {}
    for i in onnx.load(str(onnx_path)).graph.input:
        if i.name in ("rng.seed", "rng.step"):
            continue
        info = original.inputs[i.name]
        shape = [d if isinstance(d, int) else {"B": 5, "T": 6, "N": 7}[str(d)] for d in info.type.shape]
        feeds[i.name] = RNG.integers(0, 10, shape) if not info.type.dtype.is_float else randn(*shape)
    for _ in range(2 if path.stem in NOISY else 1):   # the second run draws at the next step
        want, got = original(**feeds), back(**feeds)
        for name, ref in want.items():
            if path.stem in NOISY:
                np.testing.assert_array_equal(got[name], ref, err_msg=name)
            else:
                np.testing.assert_allclose(got[name], ref, rtol=1e-5, atol=1e-6, err_msg=name)
    if path.stem in NOISY:   # the noise counts: another seed gives other outputs
        other = dln.compile(tmp_path / "back.dln", backend="numpy", seed=4)
        other.load(tmp_path / "back.safetensors")
        assert not np.array_equal(other(**feeds)["recon"], want["recon"])
    if path.stem not in RENAMED:
        back.load_state_dict(original.state_dict())


DRAWS = """
model draws {
    input x: f32[B, 5]
    input w: f64[B, 2]
    output coin = bernoulli(sigmoid(x))
    output d = w + randn_like(w)
    output e = x * randn_like(x) - rand_like(x)
}
"""


def exported_draws(tmp_path: Path) -> tuple[dln.Model, Path]:
    (tmp_path / "draws.dln").write_text(DRAWS)
    model = dln.compile(tmp_path / "draws.dln", backend="numpy", seed=7)
    model.export_onnx(tmp_path / "draws.onnx")
    return model, tmp_path / "draws.onnx"


def test_draws_come_back_on_their_streams(tmp_path):
    """rand_like, bernoulli (a uniform draw compared) and randn_like of f32 and f64 tensors come back as
    the built-ins, each bound as it comes, so dln gives them the streams they had: the same numbers."""
    original, path = exported_draws(tmp_path)
    text = dln.import_onnx(path, out=tmp_path / "back.dln")
    assert "rand_like(x)" in text and "randn_like(w)" in text and "randn_like(x)" in text and "rng" not in text
    assert "stream" not in text   # no comment: every draw is on its stream
    back = dln.compile(tmp_path / "back.dln", backend="numpy", seed=7)
    back.load(tmp_path / "back.safetensors")
    feeds = {"x": randn(5, 5), "w": RNG.standard_normal((5, 2))}
    for _ in range(2):
        want, got = original(**feeds), back(**feeds)
        for name, ref in want.items():
            np.testing.assert_array_equal(got[name], ref, err_msg=name)


def test_draws_off_their_streams_are_said(tmp_path):
    """A graph whose draws are not dln's streams in order (here the first two swapped: bernoulli's
    uniform draw, stream 0, and a randn_like's, streams 1 and 2) imports, with a comment at each draw
    that gives other numbers."""
    _, path = exported_draws(tmp_path)
    proto = onnx.load(str(path))
    calls = [n for n in proto.graph.node if n.domain == "ai.dln"]
    assert [n.op_type for n in calls] == ["Uniform", "Normal", "Normal", "Uniform"]
    streams = [next(a for a in n.attribute if a.name == "stream") for n in calls]
    assert [a.i for a in streams] == [0, 1, 3, 5]
    streams[0].i, streams[1].i = 1, 0
    onnx.save(proto, str(path))
    text = dln.import_onnx(path, out=tmp_path / "back.dln")
    assert text.count("# the ONNX model drew this") == 2
    assert "# the ONNX model drew this from stream 1, dln draws it from stream 0: other numbers" in text
    assert "# the ONNX model drew this from stream 0, dln draws it from stream 1: other numbers" in text
    dln.compile(tmp_path / "back.dln", backend="numpy")


def test_a_draw_needs_a_tensor_of_its_shape(tmp_path):
    _, path = exported_draws(tmp_path)
    functions = list(onnx.load(str(path)).functions)
    shape = helper.make_node("Constant", [], ["shape"], value=numpy_helper.from_array(np.array([3], np.int64)))
    draw = helper.make_node("Uniform", ["rng.seed", "rng.step", "shape"], ["u"], "draw", domain="ai.dln", stream=0,
                            dtype=TensorProto.FLOAT)
    scalar = [value("rng.seed", [], TensorProto.INT64), value("rng.step", [], TensorProto.INT64)]
    graph = helper.make_graph([shape, draw, helper.make_node("Relu", ["x"], ["y"])], "lonely",
                              [value("x", ["batch", 4])] + scalar, [value("y", ["batch", 4]), value("u", [3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("ai.dln", 1)],
                              functions=functions)
    onnx.save(model, str(tmp_path / "lonely.onnx"))
    with pytest.raises(DlnError) as e:
        dln.import_onnx(tmp_path / "lonely.onnx")
    d = e.value.diagnostics[0]
    assert d.code == "E0716" and "'draw'" in d.message and "no f32 tensor of the shape [3]" in d.message


# ---- graphs written with onnx.helper ----------------------------------------------------------------------

def save(tmp: Path, name: str, nodes: list, inputs: list, outputs: list, weights: dict[str, np.ndarray],
         opset: int = 17) -> Path:
    graph = helper.make_graph(nodes, name, inputs, outputs,
                              [numpy_helper.from_array(v, k) for k, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = tmp / f"{name}.onnx"
    onnx.save(model, str(path))
    return path


def value(name: str, shape: list, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def test_sequence_first_gru_and_rnn_with_states(tmp_path):
    """GRU (gates z, r, h reordered to r, z, n) and RNN in ONNX's own layout, with a given initial
    state and the final state as an output; a bidirectional LSTM whose output is ONNX's [T, 2, B, H]."""
    H, D = 6, 5
    w = {"W": randn(1, 3 * H, D), "R": randn(1, 3 * H, H), "Bg": randn(1, 6 * H),
         "Wr": randn(1, H, H, scale=0.4), "Rr": randn(1, H, H, scale=0.4), "Br": randn(1, 2 * H)}
    nodes = [helper.make_node("GRU", ["x", "W", "R", "Bg", "", "h0"], ["y", "h_gru"], hidden_size=H,
                              linear_before_reset=1, name="gru"),
             helper.make_node("Squeeze", ["y", "axis1"], ["ys"], name="squeeze"),
             helper.make_node("RNN", ["ys", "Wr", "Rr", "Br"], ["y2", "h_rnn"], hidden_size=H,
                              activations=["Relu"], name="rnn"),
             helper.make_node("LSTM", ["x", "Wl", "Rl"], ["y3"], hidden_size=H, direction="bidirectional",
                              name="both_ways")]
    w["Wl"], w["Rl"] = randn(2, 4 * H, D, scale=0.5), randn(2, 4 * H, H, scale=0.5)
    w["axis1"] = np.array([1], np.int64)
    path = save(tmp_path, "recurrent", nodes, [value("x", ["seq", "batch", D]), value("h0", [1, "batch", H])],
                [value("y2", ["seq", 1, "batch", H]), value("h_gru", [1, "batch", H]),
                 value("h_rnn", [1, "batch", H]), value("y3", ["seq", 2, "batch", H])], w)
    text, model = imported(path, tmp_path)
    assert "return_state = true" in text and 'nonlinearity = "relu"' in text
    assert max_difference(path, model, {"x": randn(7, 3, D), "h0": randn(1, 3, H)}) < 1e-5


def test_assorted_ops(tmp_path):
    """Gemm without transB and with alpha/beta; a 1-d convolution with uneven padding; a transposed
    convolution; average pooling with padding; a constant that is no layer's weight (a param);
    slicing, concatenation, reductions, clipping."""
    w = {"G": randn(8, 6), "Gc": randn(6), "K": randn(4, 2, 3), "Kb": randn(4), "T": randn(4, 3, 3, 3),
         "S": randn(1, 6), "starts": np.array([1], np.int64),
         "ends": np.array([5], np.int64), "axes": np.array([2], np.int64)}
    nodes = [helper.make_node("Gemm", ["x", "G", "Gc"], ["g"], alpha=0.5, beta=2.0, name="fc"),
             helper.make_node("Mul", ["g", "S"], ["gs"], name="scale"),
             helper.make_node("LeakyRelu", ["gs"], ["a"], alpha=0.2, name="act"),
             helper.make_node("Conv", ["sig", "K", "Kb"], ["c"], pads=[2, 0], name="conv"),
             helper.make_node("Slice", ["c", "starts", "ends", "axes"], ["cs"], name="crop"),
             helper.make_node("ReduceMean", ["cs"], ["m"], axes=[2], keepdims=0, name="pool"),
             helper.make_node("Concat", ["a", "m"], ["am"], axis=1, name="join"),
             helper.make_node("Clip", ["am", "lo", "hi"], ["y"], name="clip"),
             helper.make_node("ConvTranspose", ["img", "T"], ["up"], strides=[2, 2], pads=[1, 1, 1, 1],
                              output_padding=[1, 1], name="up"),
             helper.make_node("AveragePool", ["up"], ["p"], kernel_shape=[3, 3], strides=[2, 2],
                              pads=[1, 1, 1, 1], name="avg"),
             helper.make_node("Sigmoid", ["p"], ["z"], name="gate")]
    w["lo"], w["hi"] = np.array(-1.5, np.float32), np.array(2.0, np.float32)
    path = save(tmp_path, "assorted", nodes,
                [value("x", ["batch", 8]), value("sig", ["batch", 2, 9]), value("img", ["batch", 4, 5, 5])],
                [value("y", ["batch", 10]), value("z", ["batch", 3, 5, 5])], w)
    text, model = imported(path, tmp_path)
    assert "param S: f32[1, 6]" in text and "pad((2, 0))" in text and "conv_transpose2d(3, 3" in text
    feeds = {"x": randn(5, 8), "sig": randn(5, 2, 9), "img": randn(5, 4, 5, 5)}
    assert max_difference(path, model, feeds) < 1e-5


def test_an_older_opset_is_converted(tmp_path):
    """Opset 9: BatchNormalization without training_mode, Softmax over a flattened 2-d input."""
    c = 3
    w = {"W": randn(4, c), "b": randn(4), "s": randn(c) + 2, "bb": randn(c), "mu": randn(c),
         "var": np.abs(randn(c)) + 0.5}
    nodes = [helper.make_node("BatchNormalization", ["x", "s", "bb", "mu", "var"], ["n"], epsilon=1e-3,
                              name="norm"),
             helper.make_node("Gemm", ["n", "W", "b"], ["g"], transB=1, name="fc"),
             helper.make_node("Softmax", ["g"], ["y"], axis=1, name="probs")]
    path = save(tmp_path, "old", nodes, [value("x", ["N", c])], [value("y", ["N", 4])], w, opset=9)
    text, model = imported(path, tmp_path)
    assert "batchnorm(eps = 0.001" in text and "softmax" in text
    assert max_difference(path, model, {"x": randn(6, c)}) < 1e-5


def test_names_are_sanitized(tmp_path):
    """Names that are no identifiers, or that try to break out of a string, reach the text only as
    identifiers: the model compiles and computes what onnxruntime does."""
    w = {'w"); output z = x #': randn(4, 3), "b\nx": randn(3), "weird name": randn(3)}
    nodes = [helper.make_node("MatMul", ["input.1", 'w"); output z = x #'], ["m"], name='/evil "x"/MatMul'),
             helper.make_node("Add", ["m", "b\nx"], ["a"], name="add\n"),
             helper.make_node("Mul", ["a", "weird name"], ["out:0"], name="model")]
    path = save(tmp_path, "names", nodes, [value("input.1", ["batch size", 4])], [value("out:0", ["batch size", 3])], w)
    text, model = imported(path, tmp_path)
    assert "input input_1: f32[B, 4]" in text and "output out_0 = " in text
    assert all(line.count('"') in (0, 2) for line in text.splitlines()), text
    assert max_difference(path, model, {"input.1": randn(5, 4)}, {"input.1": "input_1", "out:0": "out_0"}) < 1e-5


def test_infinite_constants_mask(tmp_path):
    """-inf, which has no .dln literal, is written as the lowest float32: a mask all the same."""
    w = {"inf": np.array(-np.inf, np.float32), "zero": np.array(0.0, np.float32)}
    nodes = [helper.make_node("Greater", ["x", "zero"], ["keep"], name="keep"),
             helper.make_node("Where", ["keep", "x", "inf"], ["masked"], name="mask"),
             helper.make_node("Softmax", ["masked"], ["y"], name="probs")]
    path = save(tmp_path, "inf", nodes, [value("x", ["batch", 6])], [value("y", ["batch", 6])], w)
    text, model = imported(path, tmp_path)
    assert "-3.4028234663852886e38" in text
    x = randn(5, 6)
    x[:, 0] = np.abs(x[:, 0]) + 0.1   # every row keeps a value
    assert max_difference(path, model, {"x": x}) < 1e-6


def test_an_error_in_a_value_names_the_node_reading_it(tmp_path):
    nodes = [helper.make_node("Add", ["x", "nan"], ["y"], name="shift")]
    path = save(tmp_path, "nan", nodes, [value("x", ["batch", 4])], [value("y", ["batch", 4])],
                {"nan": np.array(np.nan, np.float32)})
    with pytest.raises(DlnError) as e:
        dln.import_onnx(path)
    assert "'shift' (Add)" in e.value.diagnostics[0].message and "nan" in e.value.diagnostics[0].message


# ---- errors and the command line ---------------------------------------------------------------------------

def _unsupported(tmp: Path) -> Path:
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="act"),
             helper.make_node("Hardmax", ["r"], ["y"], name="pick\nme")]   # a name that is no identifier
    return save(tmp, "unsupported", nodes, [value("x", ["batch", 4])], [value("y", ["batch", 4])], {})


def test_an_unsupported_op_is_a_located_error(tmp_path):
    with pytest.raises(DlnError) as e:
        dln.import_onnx(_unsupported(tmp_path), out=tmp_path / "u.dln")
    d = e.value.diagnostics[0]
    assert d.code == "E0716" and "'pick_me'" in d.message and "(Hardmax)" in d.message
    assert not (tmp_path / "u.dln").exists() and not (tmp_path / "u.safetensors").exists()


def test_cli(tmp_path, capsys):
    path = export(MLP(), (torch.randn(4, 10),), tmp_path / "mlp.onnx", ["x"], {"x": {0: "batch"}})
    out = tmp_path / "model.dln"
    assert main(["import", str(path), "-o", str(out)]) == 0
    assert out.exists() and (tmp_path / "model.safetensors").exists()
    assert main(["check", str(out)]) == 0
    assert main(["import", str(_unsupported(tmp_path)), "-o", str(tmp_path / "u.dln")]) == 1
    err = capsys.readouterr().err
    assert "error[E0716]" in err and "Hardmax" in err and "Traceback" not in err
    assert main(["import", str(tmp_path / "missing.onnx"), "-o", str(out)]) == 1
    assert "error[E0702]" in capsys.readouterr().err
    (tmp_path / "garbage.onnx").write_bytes(b"\x08\xff not a model")
    assert main(["import", str(tmp_path / "garbage.onnx"), "-o", str(out)]) == 1
    assert "error[E0702]" in capsys.readouterr().err
    with pytest.raises(DlnError) as e:
        dln.import_onnx(b"mlp.onnx")
    assert e.value.diagnostics[0].code == "E0710"


def test_an_imported_model_trains(tmp_path):
    """A loss and a train section appended to the imported text (a model around the imported one, so
    the imported statements stay as they are): `dln.train` from the imported weights lowers the loss."""
    path = export(MLP(), (torch.randn(4, 10),), tmp_path / "mlp.onnx", ["x"], {"x": {0: "batch"}})
    out = tmp_path / "mlp.dln"
    dln.import_onnx(path, out=out)
    x = randn(96, 10)
    y = (x[:, :3].argmax(axis=1)).astype(np.int64)
    np.savez(tmp_path / "data.npz", x=x, y=y)
    out.write_text(out.read_text() + '''
model classifier {
    input x: f32[B, 10]
    input y: i64[B]
    net = mlp()
    logp = net(x)
    loss = nll(logp, y)
    output logp
}

train classifier {
    data      = npz("data.npz")
    optimizer = adam(lr = 1e-2)
    batch     = 16
    epochs    = 4
    seed      = 0
    minimize loss
}
''')
    history = dln.train(out, backend="numpy", weights=str(out.with_suffix(".safetensors")), map={"": "net."},
                        progress=False, logdir=False)
    losses = [e["loss"] for e in history.epochs]
    assert len(losses) == 4 and losses[-1] < 0.8 * losses[0], losses
