"""`batchnorm` against torch.nn.BatchNorm1d/2d, and the model state it keeps (running statistics):
updated by training steps, read in evaluation, saved, loaded, resumed, on both backends."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

import dln
from dln.dsl.diagnostics import DlnError

QUIET = {"progress": False, "log": lambda s: None}
# Irregular sizes: [B, C] (BatchNorm1d), [B, C, L] (BatchNorm1d), [B, C, H, W] (BatchNorm2d).
SHAPES = [(4, 3), (5, 5, 6), (3, 7, 4, 5)]


def _dims(shape: tuple[int, ...], batch: str = "B") -> str:
    return ", ".join([batch, *map(str, shape[1:])])


def _source(shape: tuple[int, ...], args: str = "", batch: str = "B") -> str:
    """`batch`: the batch dimension as written, a symbol (counts known only at run time) or a number."""
    return f"""
model m {{
    input x: f64[{_dims(shape, batch)}]
    input t: f64[{_dims(shape, batch)}]
    h = x -> batchnorm({args})
    loss = mse(h, t)
    output h
}}
"""


def _torch_bn(shape: tuple[int, ...], **kwargs) -> torch.nn.Module:
    kind = torch.nn.BatchNorm2d if len(shape) == 4 else torch.nn.BatchNorm1d
    return kind(shape[1], **kwargs).double()


def _randomize(bn: torch.nn.Module, rng: np.random.Generator) -> None:
    with torch.no_grad():
        bn.weight.copy_(torch.from_numpy(rng.uniform(0.5, 1.5, bn.weight.shape)))
        bn.bias.copy_(torch.from_numpy(rng.standard_normal(bn.bias.shape)))


def _assert_state(model: dln.Model, bn: torch.nn.Module, prefix: str = "h", atol: float = 1e-12) -> None:
    ours = model.state_dict()
    for name, value in bn.state_dict().items():
        np.testing.assert_allclose(ours[f"{prefix}.{name}"], value.numpy(), rtol=1e-12, atol=atol, err_msg=name)


def _load(model: dln.Model, bn: torch.nn.Module, prefix: str = "h") -> None:
    model.load_state_dict({f"{prefix}.{k}": v for k, v in bn.state_dict().items()})


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("fixed", [False, True], ids=["symbolic_batch", "fixed_batch"])
def test_training_steps_match_torch(shape, fixed):
    """Forward, gradients of the input, weight and bias, and the running statistics after several SGD
    steps; then evaluation with the running statistics."""
    rng = np.random.default_rng(len(shape))
    model = dln.compile(_source(shape, batch=str(shape[0]) if fixed else "B"), backend="numpy")
    module = model.as_torch()
    bn = _torch_bn(shape)
    _randomize(bn, rng)
    _load(model, bn)
    assert set(model.state_dict()) == {f"h.{k}" for k in bn.state_dict()}
    for step in range(4):
        x, t = rng.standard_normal(shape) * 3 + 1, rng.standard_normal(shape)
        loss = torch.nn.functional.mse_loss(bn(torch.from_numpy(x)), torch.from_numpy(t))
        loss.backward()
        ours, grads = model.value_and_grad("loss", x=x, t=t)
        np.testing.assert_allclose(ours, loss.item(), rtol=1e-12)
        for leaf in ("weight", "bias"):
            np.testing.assert_allclose(grads[f"h.{leaf}"], getattr(bn, leaf).grad.numpy(), rtol=1e-10, atol=1e-12)
        _assert_state(model, bn)
        # The torch module over the model gives the input's gradient (its forward updates the statistics
        # too: undone below, so that each torch step meets one dln step).
        before = model.state_dict()
        module.train()
        xm, xt = torch.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
        out = module(x=xm, t=torch.from_numpy(t))
        ref = torch.nn.functional.batch_norm(xt, None, None, bn.weight.detach(), bn.bias.detach(), True)
        np.testing.assert_allclose(out.detach().numpy(), ref.detach().numpy(), rtol=1e-10, atol=1e-12)
        out.backward(torch.from_numpy(t))
        ref.backward(torch.from_numpy(t))
        np.testing.assert_allclose(xm.grad.numpy(), xt.grad.numpy(), rtol=1e-10, atol=1e-12)
        assert model.buffers()["h.num_batches_tracked"] == before["h.num_batches_tracked"] + 1
        with torch.no_grad():    # an SGD step on torch's side; dln takes the same weights
            for leaf in ("weight", "bias"):
                getattr(bn, leaf).sub_(0.1 * getattr(bn, leaf).grad)
                getattr(bn, leaf).grad = None
        model.load_state_dict({**before, "h.weight": bn.weight.detach().numpy(), "h.bias": bn.bias.detach().numpy()})
    assert int(model.buffers()["h.num_batches_tracked"]) == 4
    bn.eval()
    x = rng.standard_normal(shape)
    np.testing.assert_allclose(model(x=x)["h"], bn(torch.from_numpy(x)).detach().numpy(), rtol=1e-10, atol=1e-12)
    module.eval()
    np.testing.assert_allclose(module(x=torch.from_numpy(x)).detach().numpy(),
                               bn(torch.from_numpy(x)).detach().numpy(), rtol=1e-10, atol=1e-12)


NET = """
model net {
    input x: f64[B, 4]
    input t: f64[B, 3, 2]
    h = x -> linear(6) -> reshape((-1, 3, 2)) -> batchnorm(momentum = 0.2)
    loss = mse(h, t)
    output h
}
train net { data = npz("data.npz")  batch = 4  epochs = 3  seed = 3  optimizer = sgd(lr = 0.1, momentum = 0.5) }
"""


def _project(tmp_path: Path) -> Path:
    rng = np.random.default_rng(11)
    np.savez(tmp_path / "data.npz", x=rng.standard_normal((10, 4)) * 2, t=rng.standard_normal((10, 3, 2)))
    (tmp_path / "net.dln").write_text(NET)
    return tmp_path / "net.dln"


def test_dln_train_matches_torch(tmp_path: Path):
    """`dln train` with SGD: the weights and running statistics after 3 epochs of 3 batches (the last of
    2 examples) are torch's for the same batches from the same weights."""
    path = _project(tmp_path)
    start = dln.compile(path, seed=3).state_dict()
    history = dln.train(path, **QUIET)
    linear, bn = torch.nn.Linear(4, 6).double(), torch.nn.BatchNorm1d(3, momentum=0.2).double()
    linear.load_state_dict({k[len("h.linear_0."):]: torch.from_numpy(v) for k, v in start.items() if "linear_0" in k})
    _load_prefixed(bn, start, "h.batchnorm_0.")
    data = np.load(tmp_path / "data.npz")
    opt = torch.optim.SGD([*linear.parameters(), *bn.parameters()], lr=0.1, momentum=0.5)
    for epoch in range(3):
        order = np.random.default_rng(3 * 100003 + epoch).permutation(10)   # the trainer's shuffle
        for k in range(3):
            idx = order[k * 4:(k + 1) * 4]
            x, t = torch.from_numpy(data["x"][idx]), torch.from_numpy(data["t"][idx])
            opt.zero_grad()
            torch.nn.functional.mse_loss(bn(linear(x).reshape(-1, 3, 2)), t).backward()
            opt.step()
    ours = history.model.state_dict()
    for name, value in {**_prefixed(linear, "h.linear_0."), **_prefixed(bn, "h.batchnorm_0.")}.items():
        np.testing.assert_allclose(ours[name], value, rtol=1e-10, atol=1e-12, err_msg=name)
    assert int(ours["h.batchnorm_0.num_batches_tracked"]) == 9


def _prefixed(module: torch.nn.Module, prefix: str) -> dict[str, np.ndarray]:
    return {prefix + k: v.numpy() for k, v in module.state_dict().items()}


def _load_prefixed(module: torch.nn.Module, arrays: dict[str, np.ndarray], prefix: str) -> None:
    module.load_state_dict({k[len(prefix):]: torch.from_numpy(np.array(v)) for k, v in arrays.items()
                            if k.startswith(prefix)})


def test_torch_batchnorm2d_state_dict_loads_and_evaluates_alike():
    """A BatchNorm2d trained in torch (non-trivial running statistics) loads by its state_dict and gives
    torch's evaluation outputs; a dln model trained in dln loads back into torch and agrees too."""
    rng = np.random.default_rng(5)
    shape = (3, 5, 4, 3)
    bn = _torch_bn(shape, momentum=0.3)
    _randomize(bn, rng)
    for _ in range(3):
        bn(torch.from_numpy(rng.standard_normal(shape) * 2 - 1))
    model = dln.compile(_source(shape, "momentum = 0.3"), backend="numpy")
    _load(model, bn)
    bn.eval()
    x = rng.standard_normal((2,) + shape[1:])
    np.testing.assert_allclose(model(x=x)["h"], bn(torch.from_numpy(x)).detach().numpy(), rtol=1e-12, atol=1e-12)
    # dln trains on (updating its statistics), torch takes its state_dict
    for _ in range(2):
        model.value_and_grad("loss", x=rng.standard_normal(shape), t=rng.standard_normal(shape))
    back = _torch_bn(shape, momentum=0.3)
    _load_prefixed(back, model.state_dict(), "h.")
    back.eval()
    assert int(back.num_batches_tracked) == 5
    np.testing.assert_allclose(model(x=x)["h"], back(torch.from_numpy(x)).detach().numpy(), rtol=1e-12, atol=1e-12)


def test_save_and_load_keep_the_running_statistics(tmp_path: Path):
    model = dln.compile(_source((4, 3)), backend="numpy")
    rng = np.random.default_rng(0)
    model.value_and_grad("loss", x=rng.standard_normal((4, 3)) + 2, t=rng.standard_normal((4, 3)))
    model.save(tmp_path / "w.safetensors")
    other = dln.compile(_source((4, 3)), backend="numpy")
    other.load(tmp_path / "w.safetensors")
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(other.state_dict()[name], value, err_msg=name)
    assert other.buffers()["h.num_batches_tracked"].dtype == np.int64
    assert not np.allclose(other.buffers()["h.running_mean"], 0)


def test_checkpoint_resume_is_exact(tmp_path: Path):
    """Training 2 epochs, then resuming to 3, ends with the weights and running statistics of 3 straight."""
    path = _project(tmp_path)
    ckpt = tmp_path / "run"
    dln.train(path, epochs=2, checkpoint=str(ckpt), **QUIET)
    resumed = dln.train(path, epochs=3, checkpoint=str(ckpt), **QUIET)
    straight = dln.train(path, epochs=3, **QUIET)
    assert len(resumed) == 3
    for name, value in straight.model.state_dict().items():
        np.testing.assert_array_equal(resumed.model.state_dict()[name], value, err_msg=name)
    assert int(resumed.model.buffers()["h.batchnorm_0.num_batches_tracked"]) == 9


def test_evaluation_and_validation_read_the_running_statistics(tmp_path: Path):
    """Validation in `dln train` runs in evaluation mode: with the running statistics, not the batch's."""
    path = _project(tmp_path)
    history = dln.train(path, validate=0.3, epochs=1, **QUIET)
    model = history.model
    data = np.load(tmp_path / "data.npz")
    x = data["x"][:3]
    w, b = model.parameters()["h.linear_0.weight"], model.parameters()["h.linear_0.bias"]
    z = (x @ w.T + b).reshape(-1, 3, 2)
    s = model.state_dict()
    want = (z - s["h.batchnorm_0.running_mean"][:, None]) / np.sqrt(s["h.batchnorm_0.running_var"][:, None] + 1e-5) \
        * s["h.batchnorm_0.weight"][:, None] + s["h.batchnorm_0.bias"][:, None]
    np.testing.assert_allclose(model(x=x)["h"], want, rtol=1e-10)
    assert "val_loss" in history[-1]


def test_the_command_line_shows_and_saves_the_model_state(tmp_path: Path):
    """`dln params` lists the state after the parameters; `dln compile` writes it in the manifest and the
    training step's donated outputs; `dln train --save` writes it with the weights; a bad batch is exit 1."""
    import json

    from conftest import run_dln
    from safetensors.numpy import load_file

    path = _project(tmp_path)
    listed = run_dln("params", str(path))
    assert listed.returncode == 0
    assert "model state: h.batchnorm_0.running_mean f64[3], h.batchnorm_0.running_var f64[3], " \
           "h.batchnorm_0.num_batches_tracked i64[]" in listed.stdout
    assert run_dln("compile", str(path), "-o", str(tmp_path / "build")).returncode == 0
    manifest = json.loads((tmp_path / "build" / "manifest.json").read_text())
    assert [s["name"] for s in manifest["state"]] == [f"h.batchnorm_0.{k}" for k in
                                                      ("running_mean", "running_var", "num_batches_tracked")]
    assert "new:h.batchnorm_0.running_var" in manifest["training_step"]["outputs"]
    trained = run_dln("train", str(path), "--no-progress", "--epochs", "1", "--save", str(tmp_path / "w.safetensors"),
                      cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    assert int(load_file(str(tmp_path / "w.safetensors"))["h.batchnorm_0.num_batches_tracked"]) == 3


# ---- errors at the call --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("type_, args, code, words", [
    ("f64[B]", "", "E0202", "batchnorm needs [B, C], [B, C, L] or [B, C, H, W]"),
    ("f64[B, 3, 2, 2, 2]", "", "E0202", "batchnorm needs"),
    ("f64[B, N]", "", "E0202", "known input size on axis 1"),
    ("f64[B, 3]", "momentum = 1.5", "E0208", "momentum must lie in [0, 1]"),
    ("f64[B, 3]", "eps = -1e-5", "E0208", "eps cannot be negative"),
])
def test_bad_calls_are_located_errors(type_, args, code, words):
    src = f"model m {{\n    input x: {type_}\n    h = batchnorm(x, {args})\n    output h\n}}\n"
    with pytest.raises(DlnError) as e:
        dln.compile(src)
    d = e.value.diagnostics[0]
    assert d.code == code and words in d.message
    assert d.span.line == 3
    if args:   # underlined: the value of the argument
        assert src.splitlines()[2][d.span.col - 1:d.span.end_col - 1] == args.split(" = ")[1]


def test_one_value_per_channel_in_training_is_an_error_as_in_torch():
    """torch: "Expected more than 1 value per channel when training".  A known count fails compiling the
    training build; a batch of one, when the inputs arrive; evaluation (running statistics) is fine."""
    fixed = dln.compile(_source((1, 3)).replace("f64[B, 3]", "f64[1, 3]"))
    fixed(x=np.ones((1, 3)))
    with pytest.raises(DlnError) as e:
        fixed.value_and_grad("loss", x=np.ones((1, 3)), t=np.ones((1, 3)))
    assert e.value.diagnostics[0].code == "E0202" and e.value.diagnostics[0].span.line == 5
    model = dln.compile(_source((4, 3)))
    model(x=np.ones((1, 3)))
    with pytest.raises(DlnError) as e:
        model.value_and_grad("loss", x=np.ones((1, 3)), t=np.ones((1, 3)))
    assert "more than one value per channel" in e.value.diagnostics[0].message
    assert e.value.diagnostics[0].code == "E0202" and e.value.diagnostics[0].span.line == 5
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        torch.nn.BatchNorm1d(3)(torch.ones(1, 3))
    model.value_and_grad("loss", x=np.ones((1, 3, 2))[..., 0].repeat(2, 0), t=np.ones((2, 3)))   # two is enough


def test_a_last_batch_of_one_is_a_located_error_in_dln_train(tmp_path: Path):
    """9 examples in batches of 4 leave one: `dln train` stops with E0202 at the call, exit status 1."""
    from conftest import run_dln

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", x=rng.standard_normal((9, 4)), t=rng.standard_normal((9, 6)))
    (tmp_path / "net.dln").write_text(NET.replace(" -> reshape((-1, 3, 2))", "").replace("f64[B, 3, 2]", "f64[B, 6]"))
    result = run_dln("train", "net.dln", "--no-progress", cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "error[E0202]: batchnorm needs more than one value per channel" in result.stderr
    assert "net.dln:5:" in result.stderr


# ---- the Triton backend ----------------------------------------------------------------------------------------------

TRITON_NET = """
model net {
    input x: f32[B, 4]
    input t: f32[B, 3, 2]
    h = x -> linear(6) -> reshape((-1, 3, 2)) -> batchnorm(momentum = 0.2)
    loss = mse(h, t)
    output h
}
train net { data = npz("data.npz")  batch = 5  epochs = 1  seed = 3  optimizer = sgd(lr = 0.1) }
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton")
def test_triton_training_steps_match_numpy(tmp_path: Path):
    """Two batchnorm training steps through the generated kernels (Triton's interpreter on the CPU):
    the weights and the updated running statistics are the NumPy interpreter's; so is evaluation."""
    rng = np.random.default_rng(2)
    np.savez(tmp_path / "data.npz", x=(rng.standard_normal((10, 4)) * 2).astype(np.float32),
             t=rng.standard_normal((10, 3, 2)).astype(np.float32))
    (tmp_path / "net.dln").write_text(TRITON_NET)
    ours = dln.train(tmp_path / "net.dln", backend="triton", **QUIET).model
    reference = dln.train(tmp_path / "net.dln", backend="numpy", **QUIET).model
    for name, value in reference.state_dict().items():
        np.testing.assert_allclose(ours.state_dict()[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
    assert int(ours.buffers()["h.batchnorm_0.num_batches_tracked"]) == 2
    x = rng.standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_allclose(ours(x=x)["h"], reference(x=x)["h"], rtol=1e-5, atol=1e-5)


def test_as_torch_buffers_share_the_model_state():
    """The module's buffers are the model's running statistics: what dln updates, the module shows."""
    model = dln.compile(_source((4, 3)), backend="numpy")
    module = model.as_torch()
    buffers = dict(module.named_buffers())
    assert set(buffers) == {"h__running_mean", "h__running_var", "h__num_batches_tracked"}
    rng = np.random.default_rng(1)
    model.value_and_grad("loss", x=rng.standard_normal((4, 3)) + 3, t=rng.standard_normal((4, 3)))
    np.testing.assert_array_equal(buffers["h__running_mean"].numpy(), model.buffers()["h.running_mean"])
    assert int(buffers["h__num_batches_tracked"]) == 1
    module.train()
    module(x=torch.from_numpy(rng.standard_normal((4, 3))))
    assert int(model.buffers()["h.num_batches_tracked"]) == 2
    module.eval()
    module(x=torch.from_numpy(rng.standard_normal((4, 3))))
    assert int(model.buffers()["h.num_batches_tracked"]) == 2
