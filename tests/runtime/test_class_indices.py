"""Class indices out of range are an error (E0705) at the call that uses them, on both backends, as torch
raises — not a loss of 0 with zero gradients (an index matching no class masks everything out)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import dln
from tests.conftest import run_dln

BACKENDS = ["numpy", "triton"]
CLASSES = 7

# Each use of class indices, the line of its call (4), and torch's value on good indices.
USES = {
    "cross_entropy": ("output loss = cross_entropy(x, y)", lambda x, y: F.cross_entropy(x, y)),
    "nll": ("output loss = nll(log_softmax(x, -1), y)", lambda x, y: F.nll_loss(F.log_softmax(x, -1), y)),
    "hinge": ("output loss = hinge(x, y)", lambda x, y: F.multi_margin_loss(x, y)),
    "one_hot": ("output loss = sum(x * cast(one_hot(y, 7), f32))",
                lambda x, y: (x * F.one_hot(y, 7).double()).sum()),
}


def _source(line: str) -> str:
    return f"model m() {{\n    input x: f32[B, {CLASSES}]\n    input y: i64[B]\n    {line}\n}}\n"


def _x(rows: int = 5) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((rows, CLASSES)).astype(np.float32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("use", USES)
def test_indices_in_range_give_torchs_value(use, backend):
    line, reference = USES[use]
    model = dln.compile(_source(line), backend=backend)
    x, y = _x(), np.array([0, 6, 3, 6, 1])
    want = reference(torch.from_numpy(x).double(), torch.from_numpy(y)).item()
    np.testing.assert_allclose(model(x=x, y=y)["loss"], want, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("use", USES)
@pytest.mark.parametrize("bad", [7, -1, 40])
def test_an_index_out_of_range_is_an_error_at_the_call(use, bad, backend):
    model = dln.compile(_source(USES[use][0]), backend=backend)
    y = np.array([0, 3, bad, 1, 2])
    for run in (lambda: model(x=_x(), y=y), lambda: model.value_and_grad("loss", x=_x(), y=y)):
        with pytest.raises(dln.DlnError) as e:
            run()
        d = e.value.diagnostics[0]
        assert d.code == "E0705"
        assert f"'y' holds class index {bad}, out of range for 7 classes" in d.message
        assert d.message.startswith(use) and d.span.line == 4


def test_all_indices_one_too_large_is_no_longer_a_zero_loss():
    """The reviewer's case: y = [10, 10, 10, 10] with 10 classes gave loss 0.0 and zero gradients."""
    source = "model m() {\n    input x: f32[B, 10]\n    input y: i64[B]\n    output loss = cross_entropy(x, y)\n}\n"
    for backend in BACKENDS:
        with pytest.raises(dln.DlnError, match=r"class index 10, out of range for 10 classes") as e:
            dln.compile(source, backend=backend).value_and_grad("loss", x=np.zeros((4, 10), np.float32),
                                                                y=np.full(4, 10))
        assert "labels counted from 1" in str(e.value)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_computed_target_is_named_by_its_binding(backend):
    source = ("model m() {\n    input x: f32[B, 7]\n    input y: i64[B]\n    shifted = y + 2\n"
              "    output loss = cross_entropy(x, shifted)\n}\n")
    model = dln.compile(source, backend=backend)
    np.testing.assert_allclose(model(x=_x(), y=np.array([0, 4, 1, 2, 3]))["loss"],
                               F.cross_entropy(torch.from_numpy(_x()).double(), torch.tensor([2, 6, 3, 4, 5])).item(),
                               rtol=1e-5)
    with pytest.raises(dln.DlnError, match="cross_entropy's target 'shifted' holds class index 7") as e:
        model(x=_x(), y=np.array([0, 5, 1, 2, 3]))
    assert e.value.diagnostics[0].span.line == 5


def test_a_target_computed_in_the_call_has_no_name_of_its_own():
    source = "model m() {\n    input x: f32[B, 7]\n    input y: i64[B]\n    output loss = nll(x, y + 5)\n}\n"
    with pytest.raises(dln.DlnError) as e:
        dln.compile(source, backend="numpy")(x=_x(), y=np.array([0, 1, 2, 1, 0]))
    assert e.value.diagnostics[0].message == "nll's target holds class index 7, out of range for 7 classes"


@pytest.mark.parametrize("backend", BACKENDS)
def test_probability_targets_are_not_class_indices(backend):
    source = "model m() {\n    input x: f32[B, 7]\n    input p: f32[B, 7]\n    output loss = cross_entropy(x, p)\n}\n"
    p = np.full((5, CLASSES), 3.0, np.float32)   # any values: they are weights, not indices
    want = F.cross_entropy(torch.from_numpy(_x()).double(), torch.from_numpy(p).double()).item()
    np.testing.assert_allclose(dln.compile(source, backend=backend)(x=_x(), p=p)["loss"], want, rtol=1e-5)


# ---- training on a data file whose labels count from 1 ----------------------------------------------------------

TRAIN = """model net() {{
    input x: f32[B, 4]
    input y: i64[B]
    logits = x -> linear(3)
    loss = cross_entropy(logits, y)
    output logits
}}

train net {{
    data      = {data}
    optimizer = sgd(lr = 0.1)
    batch     = 8
    epochs    = 2
    minimize loss
}}
"""


def _labels_from_one(rows: int = 30) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    return rng.standard_normal((rows, 4)).astype(np.float32), rng.integers(1, 4, rows)   # 1, 2, 3


@pytest.mark.parametrize("kind,backend", [("npz", "numpy"), ("csv", "triton")])
def test_dln_train_on_labels_counted_from_one_fails(tmp_path, kind, backend):
    x, y = _labels_from_one()
    if kind == "npz":
        np.savez(tmp_path / "data.npz", x=x, y=y)
        data = 'npz("data.npz")'
    else:
        rows = ["a,b,c,d,y"] + [",".join([*(f"{v:.4f}" for v in row), str(label)]) for row, label in zip(x, y)]
        (tmp_path / "data.csv").write_text("\n".join(rows) + "\n")
        data = 'csv("data.csv", target = "y")'
    (tmp_path / "net.dln").write_text(TRAIN.format(data=data))
    result = run_dln("train", "net.dln", "--backend", backend, "--no-progress", cwd=tmp_path, timeout=600)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "error[E0705]: cross_entropy's target 'y' holds class index 3, out of range for 3 classes" in result.stderr
    assert "net.dln:5:12" in result.stderr
    assert "Traceback" not in result.stderr


def test_dln_train_api_on_labels_counted_from_one_fails(tmp_path):
    x, y = _labels_from_one()
    np.savez(tmp_path / "data.npz", x=x, y=y)
    (tmp_path / "net.dln").write_text(TRAIN.format(data='npz("data.npz")'))
    with pytest.raises(dln.DlnError, match="class index 3, out of range for 3 classes"):
        dln.train(str(tmp_path / "net.dln"), backend="numpy")
    # The same labels minus one train.
    np.savez(tmp_path / "data.npz", x=x, y=y - 1)
    history = dln.train(str(tmp_path / "net.dln"), backend="numpy")
    assert np.isfinite(history[-1]["loss"])


# ---- gather's indices: the Triton kernels read nothing out of bounds, and the step reports them ------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_a_gather_index_out_of_range_fails_on_both_backends(backend):
    model = dln.compile("model m() {\n    input x: f32[B, 3]\n    input i: i64[B, 2]\n"
                        "    output y = gather(x, 1, i)\n}\n", backend=backend)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(model(x=x, i=np.array([[2, 0], [1, 1]]))["y"], [[2, 0], [4, 4]])
    for bad, value in (([[0, 3], [1, 1]], 3), ([[0, -1], [1, 1]], -1)):
        with pytest.raises(dln.DlnError) as e:
            model(x=x, i=np.array(bad))
        d = e.value.diagnostics[0]
        assert d.code == "E0704" and d.span.line == 4
        assert d.message == f"gather failed at run time: index {value} is out of bounds for axis 1 with size 3"


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_embedding_token_out_of_range_fails_in_training_on_both_backends(backend):
    model = dln.compile("model m() {\n    input t: i64[B, T]\n    e = t -> embedding(10, 4)\n"
                        "    output loss = sum(e * e)\n}\n", backend=backend)
    with pytest.raises(dln.DlnError) as e:
        model.value_and_grad("loss", t=np.array([[1, 12, 3]]))
    assert e.value.code == "E0704" and "index 12 is out of bounds for axis 0 with size 10" in str(e.value)
    assert e.value.diagnostics[0].span.line == 3
