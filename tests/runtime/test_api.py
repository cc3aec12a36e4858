"""The Python API as a user meets it (INTERFACE.md, "Python"): `dln.compile`, `Model`.

NumPy backend only.  Where values are compared, a torch module with the same
architecture and the same weights is the oracle.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

import dln

SOURCE = """\
# a small classifier
model net(hidden: int = 8, classes: int = 3, p: float = 0.0, act: str = "tanh") {
    input x: f32[B, 4]
    input y: i64[B]
    h      = x -> linear(hidden) -> tanh
    logits = h -> linear(classes)
    loss   = cross_entropy(logits, y)
    output logits
}

train net {
    data = dataset("iris")
    minimize loss
}
"""


class TorchNet(torch.nn.Module):
    """The same architecture in torch: attribute names are dln's parameter scopes."""

    def __init__(self, hidden: int = 8, classes: int = 3) -> None:
        super().__init__()
        self.h = torch.nn.Linear(4, hidden)
        self.logits = torch.nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(torch.tanh(self.h(x)))


def line_of(text: str, needle: str) -> int:
    """1-based number of the first line of `text` containing `needle`."""
    for k, line in enumerate(text.splitlines(), 1):
        if needle in line:
            return k
    raise AssertionError(f"{needle!r} not in the source")


@pytest.fixture
def net_file(tmp_path: Path) -> Path:
    path = tmp_path / "net.dln"
    path.write_text(SOURCE)
    return path


@pytest.fixture
def batch(rng):
    x = rng.standard_normal((5, 4)).astype(np.float32)
    y = rng.integers(0, 3, 5).astype(np.int64)
    return x, y


def torch_twin(model: dln.Model, seed: int = 0, **kw) -> TorchNet:
    """A torch module with fresh weights, loaded into `model` too."""
    torch.manual_seed(seed)
    module = TorchNet(**kw)
    model.load_state_dict(module.state_dict())
    return module


# ---- compiling ---------------------------------------------------------------------------------------------------
def test_compile_from_path_and_from_text_agree(net_file: Path, batch):
    x, _ = batch
    from_path = dln.compile(net_file)
    from_str_path = dln.compile(str(net_file))
    from_text = dln.compile(SOURCE)
    assert isinstance(from_path, dln.Model)
    assert from_path.name == from_text.name == "net"
    assert from_path.inputs.keys() == {"x", "y"}
    assert from_path.outputs == ["logits"]
    # the same seed gives the same initial weights, however the program was given
    for other in (from_str_path, from_text):
        a, b = from_path.parameters(), other.parameters()
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    np.testing.assert_array_equal(from_path(x=x)["logits"], from_text(x=x)["logits"])


def test_seed_changes_initial_weights():
    a = dln.compile(SOURCE, seed=1).parameters()
    b = dln.compile(SOURCE, seed=2).parameters()
    assert not np.array_equal(a["h.weight"], b["h.weight"])


def test_hyperparameters_change_parameter_shapes(net_file: Path):
    default = dln.compile(net_file)
    assert default.hparams["hidden"] == 8
    model = dln.compile(net_file, hidden=7, classes=5)
    assert model.hparams["hidden"] == 7 and model.hparams["classes"] == 5
    shapes = {k: v.shape for k, v in model.parameters().items()}
    assert shapes == {"h.weight": (7, 4), "h.bias": (7,), "logits.weight": (5, 7), "logits.bias": (5,)}
    out = model(x=np.zeros((2, 4), np.float32))
    assert out["logits"].shape == (2, 5)


def test_float_hyperparameter_accepts_an_int():
    model = dln.compile(SOURCE, p=0)
    assert model.hparams["p"] == 0.0 and isinstance(model.hparams["p"], float)


@pytest.mark.parametrize("overrides, code, words", [
    ({"hiden": 3}, "E0402", ["hiden", "did you mean 'hidden'"]),
    ({"depth": 3}, "E0402", ["depth"]),
    ({"hidden": "3"}, "E0401", ["hidden", "int"]),
    ({"hidden": 3.5}, "E0401", ["hidden", "int"]),
    ({"hidden": True}, "E0401", ["hidden", "int"]),
    ({"p": "high"}, "E0401", ["p", "float"]),
    ({"act": 3}, "E0401", ["act", "str"]),
], ids=["misspelled", "unknown", "int-given-str", "int-given-float", "int-given-bool", "float-given-str",
        "str-given-int"])
def test_bad_hyperparameters(net_file: Path, overrides, code, words):
    with pytest.raises(dln.DlnError) as info:
        dln.compile(net_file, **overrides)
    assert info.value.code == code
    text = str(info.value)
    for w in words:
        assert w in text
    # the diagnostic points into the file
    assert info.value.diagnostics[0].span is not None
    assert info.value.diagnostics[0].span.path.endswith("net.dln")


def test_compile_errors_are_dln_errors():
    with pytest.raises(dln.DlnError) as info:
        dln.compile("model m() {\n    input x: f32[B, 4]\n    param W: f32[3, 2] = zeros\n    output y = x @ W\n}\n")
    assert info.value.code == "E0203"
    assert info.value.diagnostics[0].span.line == 4


def test_choose_one_model_of_several():
    text = """
model a() { input x: f32[B, 2]  output y = x -> linear(3) }
model b() { input x: f32[B, 2]  output y = x -> linear(5) }
"""
    assert dln.compile(text, model="b").parameters()["y.weight"].shape == (5, 2)
    with pytest.raises(dln.DlnError) as info:
        dln.compile(text)
    assert info.value.code == "E0301"
    with pytest.raises(dln.DlnError) as info:
        dln.compile(text, model="c")
    assert info.value.code == "E0301"


# Three models, of which `autoencoder` makes instances of the other two.
AUTOENCODER = (Path(__file__).parents[1] / "programs" / "autoencoder.dln").read_text()
OTHER = "\nmodel other {\n    input x: f32[B, 2]\n    output y = relu(x)\n}\n"


def test_the_model_no_other_model_uses_is_chosen(tmp_path, monkeypatch):
    """INTERFACE.md: without `model=`, the one model that no other model uses as an instance."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ae.dln").write_text(AUTOENCODER)
    for source in ("ae.dln", AUTOENCODER):
        model = dln.compile(source, backend="numpy")
        assert model.name == "autoencoder"
        assert list(model.parameters()) == ["E.h.weight", "E.h.bias", "D.y.weight", "D.y.bias"]
    assert dln.compile(AUTOENCODER, model="enc").name == "enc"   # naming one still picks it


def test_several_unused_models_are_ambiguous_and_listed():
    text = AUTOENCODER + OTHER
    with pytest.raises(dln.DlnError) as info:
        dln.compile(text)
    (d,) = info.value.diagnostics
    # enc and dec are used as instances: not candidates
    assert d.code == "E0301" and d.message.endswith("several models that no other model uses (autoencoder, "
                                                    "other); name one"), d
    assert d.span is not None and (d.span.line, d.span.col) == (12, 7)   # at the first candidate's name
    assert [n.span.line for n in d.notes if n.span is not None] == [12, 19]


@pytest.mark.parametrize("path, why", [("missing.dln", "No such file"), ("missing", "No such file"),
                                       ("models/missing", "No such file"), ("adir", "is a directory"),
                                       ("/dev/null", "not a regular file")])
def test_compile_of_a_path_that_is_not_a_readable_file_is_e0702(tmp_path, monkeypatch, path, why):
    """A string that looks like a path is one: an error naming it, not a syntax error in '<string>'."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "adir").mkdir()
    with pytest.raises(dln.DlnError) as info:
        dln.compile(path)
    (d,) = info.value.diagnostics
    assert d.code == "E0702" and d.message.startswith(f"cannot read {path}") and why in d.message, d


@pytest.mark.parametrize("text, code", [
    ("model m { input x: f32[B, 2]  output y = relu(x) }", None),   # text on one line
    ("", "E0301"), ("# nothing here", "E0301"),                       # no model: text, not a file named so
    ('import "elsewhere.dln"', "E0501"),
])
def test_source_text_on_one_line_is_still_text(tmp_path, monkeypatch, text, code):
    monkeypatch.chdir(tmp_path)
    if code is None:
        assert dln.compile(text).name == "m"
        return
    with pytest.raises(dln.DlnError) as info:
        dln.compile(text)
    assert info.value.code == code and "cannot read" not in str(info.value), info.value


# ---- running -----------------------------------------------------------------------------------------------------
def test_call_returns_declared_outputs_and_matches_torch(batch):
    x, y = batch
    model = dln.compile(SOURCE)
    module = torch_twin(model)
    out = model(x=x)
    assert set(out) == {"logits"}
    assert isinstance(out["logits"], np.ndarray)
    assert out["logits"].dtype == np.float32 and out["logits"].shape == (5, 3)
    ref = module(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(out["logits"], ref, rtol=1e-5, atol=1e-6)


def test_run_any_named_value(batch):
    x, y = batch
    model = dln.compile(SOURCE)
    module = torch_twin(model)
    out = model.run(["h", "loss", "logits"], x=x, y=y)
    assert set(out) == {"h", "loss", "logits"}
    xt = torch.from_numpy(x)
    h = torch.tanh(module.h(xt))
    logits = module.logits(h)
    loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(y))
    np.testing.assert_allclose(out["h"], h.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["logits"], logits.detach().numpy(), rtol=1e-5, atol=1e-6)
    assert np.shape(out["loss"]) == ()
    assert abs(float(out["loss"]) - loss.item()) < 1e-5
    # declared outputs by default
    assert set(model.run(x=x)) == {"logits"}
    with pytest.raises(dln.DlnError) as info:
        model.run(["nope"], x=x)
    assert info.value.code == "E0602" and "nope" in str(info.value)


def test_torch_in_torch_out(batch):
    x, y = batch
    model = dln.compile(SOURCE)
    as_numpy = model(x=x)["logits"]
    out = model(x=torch.from_numpy(x))
    assert isinstance(out["logits"], torch.Tensor)
    assert out["logits"].dtype == torch.float32
    np.testing.assert_array_equal(out["logits"].numpy(), as_numpy)
    # a tensor that requires grad is read without complaint
    out = model(x=torch.from_numpy(x).requires_grad_())
    np.testing.assert_array_equal(out["logits"].numpy(), as_numpy)
    # any torch input makes the results torch tensors
    out = model.run(["logits", "loss"], x=torch.from_numpy(x), y=y)
    assert all(isinstance(v, torch.Tensor) for v in out.values())
    loss, grads = model.value_and_grad("loss", x=torch.from_numpy(x), y=torch.from_numpy(y))
    assert isinstance(loss, torch.Tensor)
    assert set(grads) == set(model.parameters()) and all(isinstance(g, torch.Tensor) for g in grads.values())
    np_loss, np_grads = model.value_and_grad("loss", x=x, y=y)
    assert isinstance(np_loss, np.ndarray) and all(isinstance(g, np.ndarray) for g in np_grads.values())
    np.testing.assert_allclose(loss.numpy(), np_loss)


def test_value_and_grad_matches_torch(batch):
    x, y = batch
    model = dln.compile(SOURCE)
    module = torch_twin(model)
    loss, grads = model.value_and_grad("loss", x=x, y=y)
    ref = torch.nn.functional.cross_entropy(module(torch.from_numpy(x)), torch.from_numpy(y))
    ref.backward()
    assert abs(float(loss) - ref.item()) < 1e-5
    for name, p in module.named_parameters():
        np.testing.assert_allclose(grads[name], p.grad.numpy(), rtol=1e-4, atol=1e-6, err_msg=name)


def test_float64_and_float32_inputs_are_converted(batch):
    x, y = batch
    model = dln.compile(SOURCE)
    ref = model(x=x)["logits"]
    for given in (x.astype(np.float64), torch.from_numpy(x.astype(np.float64))):
        out = model(x=given)["logits"]
        assert np.asarray(out).dtype == np.float32
        np.testing.assert_array_equal(np.asarray(out), ref)
    # an f64 model takes float32 data and answers in float64
    m64 = dln.compile(SOURCE.replace("f32[B, 4]", "f64[B, 4]"))
    out = m64(x=x)["logits"]
    assert out.dtype == np.float64
    # integer class labels of another width convert too
    a = model.run(["loss"], x=x, y=y)["loss"]
    b = model.run(["loss"], x=x, y=y.astype(np.int32))["loss"]
    assert float(a) == float(b)


def _input_error(model, **inputs) -> dln.DlnError:
    with pytest.raises(dln.DlnError) as info:
        model.run(["loss"], **inputs)
    return info.value


def test_wrong_inputs_are_e0701_naming_the_input(batch):
    x, y = batch
    model = dln.compile(SOURCE)
    x_line, y_line = line_of(SOURCE, "input x"), line_of(SOURCE, "input y")

    wrong_dtype = _input_error(model, x=x, y=y.astype(np.float32))
    assert wrong_dtype.code == "E0701"
    assert "'y'" in str(wrong_dtype) and "i64" in str(wrong_dtype) and "float32" in str(wrong_dtype)
    assert wrong_dtype.diagnostics[0].span.line == y_line

    strings = _input_error(model, x=np.array([["a"] * 4] * 5), y=y)
    assert strings.code == "E0701" and "'x'" in str(strings)

    wrong_rank = _input_error(model, x=x[None], y=y)
    assert wrong_rank.code == "E0701"
    assert "'x'" in str(wrong_rank) and "(1, 5, 4)" in str(wrong_rank)
    assert wrong_rank.diagnostics[0].span.line == x_line

    missing = _input_error(model, x=x)
    assert missing.code == "E0701" and "'y'" in str(missing)
    assert missing.diagnostics[0].span.line == y_line

    unknown = _input_error(model, x=x, y=y, z=x)
    assert unknown.code == "E0701" and "'z'" in str(unknown)
    assert "x, y" in str(unknown)  # the inputs it does have


def test_wrong_fixed_dimension_names_the_input_and_its_type(batch):
    x, y = batch
    model = dln.compile(SOURCE)
    err = _input_error(model, x=x[:, :3], y=y)
    assert err.code == "E0701"  # the data does not match the model; no symbolic dimension is involved
    text = str(err)
    assert "'x'" in text and "f32[B, 4]" in text and "(5, 3)" in text
    assert err.diagnostics[0].span.line == line_of(SOURCE, "input x")


def test_symbolic_dimension_conflict_points_at_the_declaration(net_file: Path, batch):
    x, y = batch
    model = dln.compile(net_file)
    for run in (lambda: model.run(["loss"], x=x, y=y[:3]),
                lambda: model(x=x, y=y[:3]),                     # y given to a forward pass that needs only x
                lambda: model.value_and_grad("loss", x=x, y=y[:3])):
        with pytest.raises(dln.DlnError) as info:
            run()
        d = info.value.diagnostics[0]
        assert d.code == "E0205"
        assert "'y'" in d.message and "B" in d.message and "3" in d.message and "5" in d.message
        assert d.span.path.endswith("net.dln") and d.span.line == line_of(SOURCE, "input y")
        # and the note says who bound B
        assert any("'x'" in n.message and n.span is not None and n.span.line == line_of(SOURCE, "input x")
                   for n in d.notes)


def test_symbolic_dimension_shared_by_two_axes():
    text = """
model pairs() {
    input a: f32[N, D]
    input b: f32[D, N]
    output c = a @ b
}
"""
    model = dln.compile(text)
    out = model(a=np.ones((3, 2), np.float32), b=np.ones((2, 3), np.float32))
    np.testing.assert_array_equal(out["c"], np.full((3, 3), 2.0, np.float32))
    with pytest.raises(dln.DlnError) as info:
        model(a=np.ones((3, 2), np.float32), b=np.ones((2, 4), np.float32))
    assert info.value.code == "E0205" and "'b'" in str(info.value)
    assert info.value.diagnostics[0].span.line == line_of(text, "input b")


def test_a_gather_index_out_of_range_fails_at_the_call():
    model = dln.compile("model m() {\n    input x: f32[B, 3]\n    input i: i64[B, 2]\n"
                        "    output y = gather(x, 1, i)\n}\n")
    x = np.zeros((2, 3), np.float32)
    for bad in ([[0, 3], [1, 1]], [[0, -1], [1, 1]]):   # torch.gather wraps no negative index either
        with pytest.raises(dln.DlnError) as e:
            model(x=x, i=np.array(bad))
        assert e.value.code == "E0704" and "gather failed at run time" in str(e.value)
        assert e.value.diagnostics[0].span.line == 4


def test_a_failure_while_computing_constants_is_a_diagnostic_at_the_node():
    """Values that depend on no input are computed once, when a run is planned: a failure there is
    reported like one during a step."""
    model = dln.compile("model m() {\n    input x: f32[4]\n    i = arange(3) + 5\n"
                        "    output y = x + cast(gather(arange(3), 0, i), f32)[0]\n}\n")
    with pytest.raises(dln.DlnError) as e:
        model(x=np.zeros(4, np.float32))
    assert e.value.code == "E0704" and "index 7 is out of bounds" in str(e.value)
    assert e.value.diagnostics[0].span.line == 4


def test_an_output_that_only_reads_a_dimension_still_needs_the_input_giving_it():
    model = dln.compile("model m() {\n    input x: f32[B, 4]\n    output y = arange(3) * B\n}\n")
    np.testing.assert_array_equal(model(x=np.zeros((5, 4), np.float32))["y"], [0, 5, 10])
    with pytest.raises(dln.DlnError) as e:
        model()
    assert e.value.code == "E0701" and "dimension B is unknown" in str(e.value)


def test_outputs_are_not_overwritten_by_the_next_call(batch):
    x, y = batch
    model = dln.compile(SOURCE)
    first = model(x=x)["logits"]
    kept = first.copy()
    second = model(x=2 * x)["logits"]
    np.testing.assert_array_equal(first, kept)
    assert not np.array_equal(first, second)
    # nor does changing a result change the model
    first[:] = 0
    np.testing.assert_array_equal(model(x=x)["logits"], kept)
    # the same for torch results and several outputs
    t = model.run(["h", "logits"], x=torch.from_numpy(x))
    t_kept = {k: v.clone() for k, v in t.items()}
    model.run(["h", "logits"], x=torch.from_numpy(3 * x))
    for k in t:
        assert torch.equal(t[k], t_kept[k])
    # gradients too
    _, g1 = model.value_and_grad("loss", x=x, y=y)
    g1_kept = {k: v.copy() for k, v in g1.items()}
    model.value_and_grad("loss", x=3 * x, y=y)
    for k in g1:
        np.testing.assert_array_equal(g1[k], g1_kept[k])


def test_evaluation_mode_has_no_dropout(batch):
    x, _ = batch
    model = dln.compile(SOURCE.replace("-> tanh", "-> tanh -> dropout(p)"), p=0.5)
    a, b = model(x=x)["logits"], model(x=x)["logits"]
    np.testing.assert_array_equal(a, b)
    trained = model.run(["logits"], training=True, x=x)["logits"]
    assert not np.array_equal(trained, a)


# ---- parameters, state dicts, files ------------------------------------------------------------------------------
def test_parameters_are_copies_with_declared_shapes():
    model = dln.compile(SOURCE)
    params = model.parameters()
    assert list(params) == ["h.weight", "h.bias", "logits.weight", "logits.bias"]
    assert all(isinstance(v, np.ndarray) and v.dtype == np.float32 for v in params.values())
    before = params["h.weight"].copy()
    params["h.weight"][:] = 123.0
    np.testing.assert_array_equal(model.parameters()["h.weight"], before)
    assert model.state_dict().keys() == params.keys()


def test_load_torch_state_dict(batch):
    x, y = batch
    model = dln.compile(SOURCE, hidden=6)
    torch.manual_seed(3)
    module = TorchNet(hidden=6)
    model.load_state_dict(module.state_dict())
    for name, value in module.state_dict().items():
        np.testing.assert_array_equal(model.parameters()[name], value.numpy())
    np.testing.assert_allclose(model(x=x)["logits"], module(torch.from_numpy(x)).detach().numpy(),
                               rtol=1e-5, atol=1e-6)
    # named_parameters (tensors that require grad) load as well
    torch.manual_seed(4)
    other = TorchNet(hidden=6)
    model.load_state_dict(dict(other.named_parameters()))
    np.testing.assert_array_equal(model.parameters()["h.weight"], other.h.weight.detach().numpy())
    # and the model's own state_dict goes back into torch
    again = TorchNet(hidden=6)
    again.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    np.testing.assert_array_equal(again.logits.bias.detach().numpy(), other.logits.bias.detach().numpy())


@pytest.mark.parametrize("change, words", [
    (lambda s: s.pop("logits.bias"), ["missing", "logits.bias"]),
    (lambda s: s.__setitem__("extra.weight", torch.zeros(2)), ["unexpected", "extra.weight"]),
    (lambda s: s.__setitem__("h.weight", torch.zeros(8, 5)), ["h.weight", "(8, 5)", "(8, 4)"]),
], ids=["missing", "unexpected", "wrong-shape"])
def test_strict_state_dict_mismatch(change, words):
    model = dln.compile(SOURCE)
    before = model.parameters()
    state = TorchNet().state_dict()
    change(state)
    with pytest.raises(dln.DlnError) as info:
        model.load_state_dict(state)
    assert info.value.code == "E0703"
    for w in words:
        assert w in str(info.value)
    # a failed load changes nothing
    after = model.parameters()
    for k in before:
        np.testing.assert_array_equal(after[k], before[k])


def test_non_strict_load_takes_what_matches():
    model = dln.compile(SOURCE)
    before = model.parameters()
    state = TorchNet().state_dict()
    del state["logits.weight"]
    state["extra"] = torch.zeros(3)
    model.load_state_dict(state, strict=False)
    after = model.parameters()
    np.testing.assert_array_equal(after["h.weight"], state["h.weight"].numpy())
    np.testing.assert_array_equal(after["logits.weight"], before["logits.weight"])
    # a wrong shape is an error even when not strict
    state["h.weight"] = torch.zeros(2, 2)
    with pytest.raises(dln.DlnError) as info:
        model.load_state_dict(state, strict=False)
    assert info.value.code == "E0703"


def test_save_load_round_trip_through_safetensors(tmp_path: Path, batch):
    x, _ = batch
    model = dln.compile(SOURCE, seed=1)
    path = tmp_path / "w.safetensors"
    model.save(path)
    # the file is plain safetensors: readable without dln
    arrays = load_file(str(path))
    params = model.parameters()
    assert arrays.keys() == params.keys()
    for k in params:
        assert arrays[k].dtype == params[k].dtype
        np.testing.assert_array_equal(arrays[k], params[k])
    # and so by torch's reader
    from safetensors.torch import load_file as torch_load_file

    TorchNet().load_state_dict(torch_load_file(str(path)))

    other = dln.compile(SOURCE, seed=2)
    assert not np.array_equal(other.parameters()["h.weight"], params["h.weight"])
    other.load(path)
    for k in params:
        np.testing.assert_array_equal(other.parameters()[k], params[k])
    np.testing.assert_array_equal(other(x=x)["logits"], model(x=x)["logits"])
    # saving over an existing file replaces it and leaves no temporary files behind
    other.load_state_dict({k: v + 1 for k, v in params.items()})
    other.save(path)
    np.testing.assert_array_equal(load_file(str(path))["h.bias"], params["h.bias"] + 1)
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]


def test_load_errors(tmp_path: Path):
    model = dln.compile(SOURCE)
    with pytest.raises(dln.DlnError) as info:
        model.load(tmp_path / "absent.safetensors")
    assert info.value.code == "E0702" and "absent.safetensors" in str(info.value)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all")
    with pytest.raises(dln.DlnError) as info:
        model.load(garbage)
    assert info.value.code == "E0702"
    bigger = tmp_path / "bigger.safetensors"
    dln.compile(SOURCE, hidden=16).save(bigger)
    with pytest.raises(dln.DlnError) as info:
        model.load(bigger)
    assert info.value.code == "E0703" and "h.weight" in str(info.value)


# ---- what the compiler made --------------------------------------------------------------------------------------
def test_forward_ir_text(net_file: Path):
    model = dln.compile(net_file)
    ir = model.ir
    lines = ir.splitlines()
    assert lines[0].startswith("graph net") and lines[-1] == "}"
    assert "return logits=%" in ir
    assert "matmul(" in ir and "tanh(" in ir
    # inputs and parameters by name, each node with its source location
    assert 'input(name="x"' in ir
    for name in model.parameters():
        assert f'name="{name}"' in ir
    matmuls = [ln for ln in lines if "= matmul(" in ln]
    assert len(matmuls) == 2
    h_line, logits_line = line_of(SOURCE, "h      ="), line_of(SOURCE, "logits =")
    assert f"net.dln:{h_line}:" in matmuls[0] and f"net.dln:{logits_line}:" in matmuls[1]
    # the forward graph computes no loss and has no backward or optimizer phase
    assert "# --" not in ir
    assert "input y" not in ir and 'name="y"' not in ir


def test_backward_ir_text(net_file: Path):
    model = dln.compile(net_file)
    text = model.backward_ir
    assert text.startswith("graph net")
    phases = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("# --")]
    assert phases == ["# -- backward", "# -- optimizer"]
    forward, rest = text.split("# -- backward")
    backward, optimizer = rest.split("# -- optimizer")
    assert "matmul(" in forward and "matmul(" in backward
    assert f"net.dln:{line_of(SOURCE, 'loss   =')}:" in forward
    # the step returns the loss and an updated value for every parameter
    ret = text.splitlines()[-2]
    assert ret.strip().startswith("return loss=%")
    for name in model.parameters():
        assert f"new:{name}=%" in ret
    # the optimizer's nodes are located at the objective they serve
    assert f"net.dln:{line_of(SOURCE, 'minimize loss')}:" in optimizer
