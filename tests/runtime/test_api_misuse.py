"""Misusing the Python API gives a `dln.DlnError` with a code, never a raw Python exception.

One table of mistakes (each row: what the caller does, the code expected, words the
message must contain), and beside it the unusual but valid arguments that must
work — checked against PyTorch where there is a value to compare.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch

import dln

SOURCE = """\
model net(hidden: int = 6, p: float = 0.0, act: bool = true) {
    input x: f32[B, 5]
    input y: i64[B]
    h      = x -> linear(hidden) -> tanh
    logits = h -> linear(3)
    loss   = cross_entropy(logits, y)
    total  = sum(argmax(logits, axis=1))
    output logits
}
"""

OTHER = "model other() {\n    input x: f32[B, 5]\n    output y = x -> linear(2)\n}\n"


class TorchNet(torch.nn.Module):
    def __init__(self, hidden: int = 6) -> None:
        super().__init__()
        self.h = torch.nn.Linear(5, hidden)
        self.logits = torch.nn.Linear(hidden, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(torch.tanh(self.h(x)))


X = np.random.default_rng(7).standard_normal((7, 5)).astype(np.float32)
Y = np.array([0, 2, 1, 1, 0, 2, 2], np.int64)


@pytest.fixture(scope="module")
def model() -> dln.Model:
    return dln.compile(SOURCE)


def state(model: dln.Model, change: Callable[[np.ndarray], Any]) -> dict[str, Any]:
    return {k: change(v) for k, v in model.parameters().items()}


def weights_of(other_model: str, tmp: Path) -> Path:
    path = tmp / "other.safetensors"
    dln.compile(other_model).save(path)
    return path


# Each row: id, the call (given the model and a temporary directory), the code, words in the message.
MISUSE: list[tuple[str, Callable[[dln.Model, Path], Any], str, list[str]]] = [
    # -- dln.compile
    ("compile-seed-negative", lambda m, tmp: dln.compile(SOURCE, seed=-1), "E0710", ["seed", "-1"]),
    ("compile-seed-str", lambda m, tmp: dln.compile(SOURCE, seed="1"), "E0710", ["seed"]),
    ("compile-seed-float", lambda m, tmp: dln.compile(SOURCE, seed=1.5), "E0710", ["seed", "1.5"]),
    ("compile-seed-bool", lambda m, tmp: dln.compile(SOURCE, seed=True), "E0710", ["seed"]),
    ("compile-seed-too-big", lambda m, tmp: dln.compile(SOURCE, seed=2 ** 70), "E0710", ["seed"]),
    ("compile-source-int", lambda m, tmp: dln.compile(3), "E0710", ["source", "(int)"]),
    ("compile-source-none", lambda m, tmp: dln.compile(None), "E0710", ["source", "None"]),
    ("compile-source-bytes", lambda m, tmp: dln.compile(SOURCE.encode()), "E0710", ["source", "decode"]),
    ("compile-source-missing", lambda m, tmp: dln.compile(tmp / "absent.dln"), "E0702", ["absent.dln"]),
    ("compile-model-int", lambda m, tmp: dln.compile(SOURCE, model=3), "E0710", ["model", "3"]),
    ("compile-model-unknown", lambda m, tmp: dln.compile(SOURCE, model="nett"), "E0301", ["nett"]),
    ("compile-backend-int", lambda m, tmp: dln.compile(SOURCE, backend=3), "E0710", ["backend"]),
    ("compile-backend-unknown", lambda m, tmp: dln.compile(SOURCE, backend="cuda"), "E0601", ["cuda"]),
    ("compile-precision-int", lambda m, tmp: dln.compile(SOURCE, precision=32), "E0710", ["precision"]),
    ("compile-debug-str", lambda m, tmp: dln.compile(SOURCE, debug="yes"), "E0710", ["debug"]),
    ("compile-hparam-none", lambda m, tmp: dln.compile(SOURCE, hidden=None), "E0401", ["hidden", "got None"]),
    ("compile-hparam-tensor", lambda m, tmp: dln.compile(SOURCE, hidden=torch.tensor(8)), "E0401",
     ["hidden", "Tensor"]),
    ("compile-hparam-np-float-for-int", lambda m, tmp: dln.compile(SOURCE, hidden=np.float64(8.5)), "E0401",
     ["hidden", "8.5"]),
    ("compile-hparam-np-array", lambda m, tmp: dln.compile(SOURCE, hidden=np.array([8])), "E0401",
     ["hidden", "ndarray"]),
    # -- model(...) and run: inputs
    ("call-positional", lambda m, tmp: m(X), "E0701", ["by name", "x=..."]),
    ("call-unknown-input", lambda m, tmp: m(x=X, z=X), "E0701", ["no input 'z'"]),
    ("call-missing-input", lambda m, tmp: m(), "E0701", ["missing input 'x'"]),
    ("call-none", lambda m, tmp: m(x=None), "E0701", ["'x'", "None"]),
    ("call-string", lambda m, tmp: m(x="abc"), "E0701", ["'x'", "<U3"]),
    ("call-ragged-list", lambda m, tmp: m(x=[[1.0, 2.0], [3.0]]), "E0701", ["'x'", "cannot be read"]),
    ("call-object-array", lambda m, tmp: m(x=np.array([[object()] * 5])), "E0701", ["'x'", "object"]),
    ("call-complex", lambda m, tmp: m(x=X.astype(np.complex64)), "E0701", ["'x'", "complex64"]),
    ("call-complex-tensor", lambda m, tmp: m(x=torch.from_numpy(X).to(torch.complex64)), "E0701",
     ["'x'", "complex64"]),
    ("call-meta-tensor", lambda m, tmp: m(x=torch.empty(7, 5, device="meta")), "E0701", ["'x'", "meta"]),
    ("call-scalar", lambda m, tmp: m(x=3.0), "E0701", ["rank 2", "()"]),
    ("call-wrong-rank", lambda m, tmp: m(x=X[0]), "E0701", ["rank 2", "(5,)"]),
    ("call-wrong-size", lambda m, tmp: m(x=X[:, :4]), "E0701", ["f32[B, 5]", "(7, 4)"]),
    ("call-float-labels", lambda m, tmp: m.run(["loss"], x=X, y=Y.astype(np.float32)), "E0701",
     ["'y'", "float32"]),
    ("call-batch-mismatch", lambda m, tmp: m.run(["loss"], x=X, y=Y[:3]), "E0205", ["'y'", "B = 7"]),
    # -- run's own arguments
    ("run-outputs-int", lambda m, tmp: m.run(3, x=X), "E0710", ["outputs", "3 (int)"]),
    ("run-outputs-list-of-int", lambda m, tmp: m.run([3], x=X), "E0710", ["outputs"]),
    ("run-outputs-unknown", lambda m, tmp: m.run(["logit"], x=X), "E0602", ["logit"]),
    ("run-training-str", lambda m, tmp: m.run(None, training="no", x=X), "E0710", ["training"]),
    # -- value_and_grad
    ("grad-unknown-loss", lambda m, tmp: m.value_and_grad("los", x=X, y=Y), "E0602", ["los"]),
    ("grad-loss-int", lambda m, tmp: m.value_and_grad(3, x=X, y=Y), "E0710", ["loss"]),
    ("grad-non-scalar", lambda m, tmp: m.value_and_grad("logits", x=X, y=Y), "E0602", ["scalar", "f32[B, 3]"]),
    ("grad-integer-loss", lambda m, tmp: m.value_and_grad("total", x=X, y=Y), "E0602", ["float", "i64[]"]),
    ("grad-positional", lambda m, tmp: m.value_and_grad("loss", X, Y), "E0701", ["by name", "y=..."]),
    ("grad-missing-labels", lambda m, tmp: m.value_and_grad("loss", x=X), "E0701", ["missing input 'y'"]),
    # -- load_state_dict
    ("state-list", lambda m, tmp: m.load_state_dict([1, 2, 3]), "E0703", ["mapping", "list"]),
    ("state-none", lambda m, tmp: m.load_state_dict(None), "E0703", ["mapping", "None"]),
    ("state-int-key", lambda m, tmp: m.load_state_dict({1: np.zeros(3)}), "E0703", ["1", "not a string"]),
    ("state-strict-str", lambda m, tmp: m.load_state_dict(m.parameters(), strict="yes"), "E0710", ["strict"]),
    ("state-complex", lambda m, tmp: m.load_state_dict(state(m, lambda v: v.astype(np.complex64))), "E0703",
     ["h.weight", "complex64"]),
    ("state-object", lambda m, tmp: m.load_state_dict(state(m, lambda v: v.astype(object))), "E0703",
     ["h.weight", "object"]),
    ("state-strings", lambda m, tmp: m.load_state_dict(state(m, lambda v: v.astype(str))), "E0703",
     ["h.weight", "<U"]),
    ("state-none-values", lambda m, tmp: m.load_state_dict(state(m, lambda v: None)), "E0703",
     ["h.weight is None"]),
    ("state-meta", lambda m, tmp: m.load_state_dict(state(m, lambda v: torch.from_numpy(v).to("meta"))), "E0703",
     ["h.weight", "meta"]),
    ("state-complex-tensor", lambda m, tmp: m.load_state_dict(state(m, lambda v: torch.from_numpy(v).cfloat())),
     "E0703", ["h.weight", "complex64"]),
    ("state-ragged", lambda m, tmp: m.load_state_dict({**m.parameters(), "h.bias": [[1.0], [2.0, 3.0]]}),
     "E0703", ["h.bias", "cannot be read"]),
    # -- save and load
    ("save-int", lambda m, tmp: m.save(3), "E0710", ["save", "3 (int)"]),
    ("save-none", lambda m, tmp: m.save(None), "E0710", ["save", "None"]),
    ("save-directory", lambda m, tmp: m.save(tmp), "E0702", ["directory"]),
    ("save-under-a-file", lambda m, tmp: ((tmp / "f").write_text(""), m.save(tmp / "f" / "w.safetensors")),
     "E0702", ["cannot write"]),
    ("load-int", lambda m, tmp: m.load(3), "E0710", ["load", "3 (int)"]),
    ("load-directory", lambda m, tmp: m.load(tmp), "E0702", ["directory"]),
    ("load-missing", lambda m, tmp: m.load(tmp / "absent.safetensors"), "E0702", ["absent.safetensors"]),
    ("load-not-safetensors", lambda m, tmp: ((tmp / "a.txt").write_text("not weights"), m.load(tmp / "a.txt")),
     "E0702", ["a.txt"]),
    ("load-another-model", lambda m, tmp: m.load(weights_of(OTHER, tmp)), "E0703",
     ["missing: h.weight", "unexpected: y.bias", "weights of model other"]),
    # -- the torch module
    ("module-too-many-positional", lambda m, tmp: m.as_torch()(torch.from_numpy(X), torch.from_numpy(Y), 3),
     "E0701", ["2 input(s)", "3 positional"]),
    ("module-unknown-keyword", lambda m, tmp: m.as_torch()(torch.from_numpy(X), z=1), "E0701", ["no input 'z'"]),
    ("module-twice", lambda m, tmp: m.as_torch()(torch.from_numpy(X), x=torch.from_numpy(X)), "E0701",
     ["'x' is given twice"]),
    ("module-missing-input", lambda m, tmp: m.as_torch()(), "E0701", ["missing input 'x'"]),
    ("module-meta-input", lambda m, tmp: m.as_torch()(torch.empty(7, 5, device="meta")), "E0701", ["meta"]),
    # -- dln.train keyword overrides
    ("train-epochs-str", lambda m, tmp: dln.train(TRAIN, epochs="3"), "E0601", ["epochs"]),
    ("train-batch-zero", lambda m, tmp: dln.train(TRAIN, batch=0), "E0601", ["batch"]),
    ("train-seed-negative", lambda m, tmp: dln.train(TRAIN, seed=-1), "E0601", ["seed"]),
    ("train-clip-str", lambda m, tmp: dln.train(TRAIN, clip_grad="a"), "E0601", ["clip_grad"]),
    ("train-validate-big", lambda m, tmp: dln.train(TRAIN, validate=1.5), "E0601", ["validate"]),
    ("train-checkpoint-int", lambda m, tmp: dln.train(TRAIN, checkpoint=3), "E0601", ["checkpoint"]),
    ("train-hparam-str", lambda m, tmp: dln.train(TRAIN, hidden="8"), "E0401", ["hidden"]),
    ("train-source-int", lambda m, tmp: dln.train(3), "E0710", ["source"]),
    ("train-backend-int", lambda m, tmp: dln.train(TRAIN, backend=3), "E0710", ["backend"]),
    ("train-model-int", lambda m, tmp: dln.train(TRAIN, model=3), "E0710", ["model"]),
    ("train-weights-int", lambda m, tmp: dln.train(TRAIN, weights=3), "E0710", ["weights"]),
    ("train-log-str", lambda m, tmp: dln.train(TRAIN, log="file.txt"), "E0710", ["log"]),
    ("train-progress-str", lambda m, tmp: dln.train(TRAIN, progress="no"), "E0710", ["progress"]),
    ("train-weights-missing", lambda m, tmp: dln.train(TRAIN, weights=str(tmp / "w.safetensors")), "E0702",
     ["w.safetensors"]),
]

TRAIN = SOURCE + '\ntrain net {\n    data = dataset("iris")\n    inputs = { x = "randn" }\n    epochs = 1\n    minimize loss\n}\n'


@pytest.mark.parametrize("call, code, words", [row[1:] for row in MISUSE], ids=[row[0] for row in MISUSE])
def test_misuse_is_a_dln_error(model: dln.Model, tmp_path: Path, call, code, words):
    before = model.parameters()
    with pytest.raises(dln.DlnError) as info:
        call(model, tmp_path)
    assert info.value.code == code, str(info.value)
    text = str(info.value)
    for w in words:
        assert w in text, text
    # a refused call changes no weights
    after = model.parameters()
    for k in before:
        np.testing.assert_array_equal(after[k], before[k])


def test_input_errors_point_at_the_declaration(model: dln.Model):
    for bad in (None, torch.empty(2, 5, device="meta"), [[1.0], [1.0, 2.0]]):
        with pytest.raises(dln.DlnError) as info:
            model(x=bad)
        span = info.value.diagnostics[0].span
        assert span is not None and span.line == 2, str(info.value)


# ---- unusual arguments that must work ------------------------------------------------------------------------------

def oracle(model: dln.Model) -> TorchNet:
    net = TorchNet()
    net.load_state_dict({k: torch.from_numpy(v) for k, v in model.parameters().items()})
    return net


def logits(model: dln.Model, x: Any) -> np.ndarray:
    out = model(x=x)["logits"]
    return out.numpy() if isinstance(out, torch.Tensor) else out


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
@pytest.mark.parametrize("make", [
    lambda x: torch.from_numpy(x).bfloat16(),
    lambda x: torch.from_numpy(x).half(),
    lambda x: torch.from_numpy(x).double(),
    lambda x: torch.from_numpy(x).to_sparse(),
    lambda x: torch.from_numpy(x).to_sparse_csr(),
    lambda x: torch.from_numpy(x).requires_grad_(True),
    lambda x: torch.from_numpy(np.asfortranarray(x)),
    lambda x: torch.from_numpy(x.T.copy()).T,
    lambda x: x.astype(np.float16),
    lambda x: np.asfortranarray(x),
    lambda x: x[::-1][::-1],
    lambda x: np.ascontiguousarray(x[::-1])[::-1],
    lambda x: np.repeat(x, 2, axis=1)[:, ::2],
    lambda x: x.tolist(),
], ids=["bf16-tensor", "f16-tensor", "f64-tensor", "sparse-coo", "sparse-csr", "requires-grad", "fortran-tensor",
        "transposed-tensor", "f16-array", "fortran-array", "double-reversed", "negative-stride", "strided-view",
        "list"])
def test_inputs_of_any_layout_and_float_width_run(model: dln.Model, make):
    """Floats of every width convert to the declared f32, as torch's `.to(torch.float32)` would."""
    x = make(X)
    if isinstance(x, torch.Tensor):
        x32 = (x.to_dense() if x.layout != torch.strided else x).detach().float().numpy()
    else:
        x32 = np.array(x, dtype=np.float32)
    expected = oracle(model)(torch.from_numpy(np.ascontiguousarray(x32))).detach().numpy()
    np.testing.assert_allclose(logits(model, x), expected, rtol=1e-5, atol=1e-6)


def test_nan_inputs_are_allowed_and_propagate(model: dln.Model):
    x = X.copy()
    x[2, 3] = np.nan
    out = logits(model, x)
    assert np.isnan(out[2]).all() and np.isfinite(np.delete(out, 2, axis=0)).all()


@pytest.mark.parametrize("hparams, want", [
    ({"hidden": np.int64(4)}, {"hidden": 4}),
    ({"hidden": np.int32(5), "p": np.float32(0.5), "act": np.bool_(False)}, {"hidden": 5, "p": 0.5, "act": False}),
    ({"p": np.int16(1)}, {"p": 1.0}),
], ids=["np.int64", "np.int32-float32-bool_", "np.int16-for-float"])
def test_numpy_scalars_are_hyperparameters(hparams, want):
    model = dln.compile(SOURCE, **hparams)
    for k, v in want.items():
        assert model.hparams[k] == v and type(model.hparams[k]) is type(v)
    if "hidden" in want:
        assert model.parameters()["h.weight"].shape == (want["hidden"], 5)


def test_seed_may_be_a_numpy_integer():
    a = dln.compile(SOURCE, seed=np.int64(3)).parameters()
    b = dln.compile(SOURCE, seed=3).parameters()
    np.testing.assert_array_equal(a["h.weight"], b["h.weight"])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_torch_state_dicts_of_any_float_width_load(dtype):
    """bf16 checkpoints are common: they load, converted to the parameters' f32, exactly as torch's
    `load_state_dict` copies them into an f32 module."""
    torch.manual_seed(0)
    source = TorchNet().to(dtype)
    model = dln.compile(SOURCE)
    model.load_state_dict(source.state_dict())
    target = TorchNet()
    target.load_state_dict(source.state_dict())
    for name, value in target.state_dict().items():
        got = model.parameters()[name]
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, value.numpy())
    np.testing.assert_allclose(logits(model, X), target(torch.from_numpy(X)).detach().numpy(), rtol=1e-5, atol=1e-6)


def test_integer_and_bool_weights_are_cast_like_torch():
    model = dln.compile(SOURCE)
    ints = {k: np.arange(v.size).reshape(v.shape) % 3 - 1 for k, v in model.parameters().items()}
    model.load_state_dict(ints)
    target = TorchNet()
    target.load_state_dict({k: torch.from_numpy(v) for k, v in ints.items()})
    for name, value in target.state_dict().items():
        np.testing.assert_array_equal(model.parameters()[name], value.numpy())
    model.load_state_dict({**ints, "h.bias": np.ones(6, bool)})
    np.testing.assert_array_equal(model.parameters()["h.bias"], np.ones(6, np.float32))


def test_run_takes_one_name_or_several(model: dln.Model):
    one = model.run("loss", x=X, y=Y)
    several = model.run(("loss", "logits"), x=X, y=Y)
    assert list(one) == ["loss"] and sorted(several) == ["logits", "loss"]
    np.testing.assert_allclose(one["loss"], several["loss"])
    expected = torch.nn.functional.cross_entropy(oracle(model)(torch.from_numpy(X)), torch.from_numpy(Y))
    np.testing.assert_allclose(one["loss"], expected.item(), rtol=1e-5)


def test_train_overrides_may_be_numpy_scalars(tmp_path: Path):
    history = dln.train(TRAIN, epochs=np.int64(1), batch=np.int32(50), hidden=np.int64(4), progress=False,
                        log=lambda s: None)
    assert len(history) == 1
    assert history.model.parameters()["h.weight"].shape == (4, 5)


def test_triton_backend_takes_bf16_weights_and_inputs():
    """The same conversions on the Triton backend (kernels under TRITON_INTERPRET=1 without a GPU)."""
    torch.manual_seed(1)
    source = TorchNet().bfloat16()
    model = dln.compile(SOURCE, backend="triton")
    model.load_state_dict(source.state_dict())
    target = TorchNet()
    target.load_state_dict(source.state_dict())
    x = torch.from_numpy(X[:3]).bfloat16()
    out = model(x=x)["logits"]
    np.testing.assert_allclose(out.cpu().numpy(), target(x.float()).detach().numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(dln.DlnError) as info:
        model.load_state_dict(state(model, lambda v: v.astype(np.complex64)))
    assert info.value.code == "E0703"
    with pytest.raises(dln.DlnError) as info:
        model(x=torch.empty(3, 5, device="meta"))
    assert info.value.code == "E0701"
