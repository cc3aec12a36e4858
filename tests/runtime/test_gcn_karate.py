"""examples/gcn_karate.dln: a GCN on Zachary's karate club, trained by its train section.

`dln.train` runs the file for a few epochs from weights saved beforehand; its PyTorch twin
(examples/torch_twins.py) starts from the same weights, takes the same full-graph Adam steps and
evaluates the held-out nodes as `validate = { mask = "val_mask" }` says: the losses and the masked
accuracies of every epoch and the final weights must agree.  Then the data set itself (checked
against networkx and the formula, computed here again), the validate record's errors, and the model's
own `accuracy` taking the automatic metric's place.
"""

from __future__ import annotations

import sys
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
import torch

import dln
from dln.runtime import data
from _twins import ROOT, load_initial

EXAMPLE = ROOT / "examples" / "gcn_karate.dln"
EPOCHS = 5
# float32 on 34 nodes; measured: losses within 1e-7 relative, weights within 1e-7.  An Adam step
# moves each weight by about lr = 0.01, so a missing bias, weight decay or self-loop shows far above.
RTOL = 1e-5


def _quiet(source: str | Path, **settings) -> dln.runtime.train.History:
    return dln.train(source, progress=False, log=lambda s: None, **settings)


def test_the_twin_trains_as_the_example_says(twins):
    assert twins.settings_of("gcn") == twins.SETTINGS["gcn"]


def test_dln_train_matches_the_torch_twin_from_the_same_weights(tmp_path: Path, twins):
    initial = dln.compile(EXAMPLE, seed=7)
    initial.save(tmp_path / "initial.safetensors")
    history = _quiet(EXAMPLE, epochs=EPOCHS, weights=str(tmp_path / "initial.safetensors"))

    net = twins.make_gcn()
    start = load_initial(net, initial)
    graph = {k: torch.from_numpy(v) for k, v in twins.karate().items()}
    theirs = list(twins.gcn_epochs(net, graph, EPOCHS))
    assert len(history) == EPOCHS
    for key in ("loss", "val_loss", "accuracy", "val_accuracy"):
        np.testing.assert_allclose([e[key] for e in history.epochs], [e[key] for e in theirs], rtol=RTOL, atol=0,
                                   err_msg=key)
    losses = [e["loss"] for e in theirs]
    assert losses[-1] < losses[0] - 0.01, "training did not move"
    trained = history.model.state_dict()
    for name, value in net.state_dict().items():
        np.testing.assert_allclose(trained[name], value.numpy(), rtol=RTOL, atol=1e-6, err_msg=name)
        assert not np.allclose(trained[name], start[name]), name


# ---- the data set ---------------------------------------------------------------------------------------------

def test_karate_arrays():
    arrays = data.DATASETS["karate"]()
    n = 34
    assert {k: (v.shape, v.dtype) for k, v in arrays.items()} == {
        "x": ((n, n), np.float32), "adj": ((n, n), np.float32), "y": ((n,), np.int64),
        "mask": ((n,), np.float32), "val_mask": ((n,), np.float32)}
    np.testing.assert_array_equal(arrays["x"], np.eye(n))

    graph = nx.karate_club_graph()
    a = np.zeros((n, n))
    for i, j in graph.edges:                  # unweighted and symmetric, whatever weights networkx records
        a[i, j] = a[j, i] = 1.0
    a_hat = a + np.eye(n)
    d_inv_sqrt = np.diag(1.0 / np.sqrt(a_hat.sum(axis=1)))
    adj = arrays["adj"]
    np.testing.assert_array_equal(adj, adj.T)
    np.testing.assert_allclose(adj, d_inv_sqrt @ a_hat @ d_inv_sqrt, rtol=1e-6)

    clubs = [graph.nodes[i]["club"] for i in range(n)]
    np.testing.assert_array_equal(arrays["y"], [0 if c == "Mr. Hi" else 1 for c in clubs])
    assert np.bincount(arrays["y"]).tolist() == [17, 17]

    mask, val_mask = arrays["mask"], arrays["val_mask"]
    assert set(np.unique(mask)) <= {0.0, 1.0} and set(np.unique(val_mask)) <= {0.0, 1.0}
    np.testing.assert_array_equal(mask + val_mask, np.ones(n))          # disjoint, and every node in one
    labelled = np.flatnonzero(mask)
    # the rule: the data.LABELLED_PER_CLASS best connected members of each club, the leaders first
    assert labelled.tolist() == [0, 1, 2, 3, 23, 31, 32, 33]
    assert np.bincount(arrays["y"][labelled]).tolist() == [data.LABELLED_PER_CLASS] * 2


def test_karate_without_networkx_says_how_to_install_it(tmp_path: Path, monkeypatch):
    monkeypatch.setitem(sys.modules, "networkx", None)      # import networkx fails, as where it is missing
    with pytest.raises(dln.DlnError) as e:
        _quiet(EXAMPLE, epochs=1)
    d = e.value.diagnostics[0]
    assert d.code == "E0603" and (d.span.line, d.span.col) == (17, 17), str(e.value)
    assert "networkx" in d.message and "pip install dln[graph]" in str(e.value)


# ---- validate = { input = "array" } ---------------------------------------------------------------------------

def _with_validate(tmp_path: Path, record: str) -> Path:
    path = tmp_path / "gcn.dln"
    path.write_text(EXAMPLE.read_text().replace('validate  = { mask = "val_mask" }', f"validate  = {record}"))
    return path


@pytest.mark.parametrize("record, code, message", [
    ('{ maks = "val_mask" }', "E0601", "model gcn has no input 'maks' to rename"),
    ('{ mask = "held_out" }', "E0603", "validate renames input 'mask' to \"held_out\", an array the data"),
    ("{ mask = 0.5 }", "E0601", "validate: input 'mask' must be renamed to an array name"),
])
def test_a_wrong_validate_record_is_located(tmp_path: Path, record: str, code: str, message: str):
    """At the field: line 18, column 19."""
    with pytest.raises(dln.DlnError) as e:
        _quiet(_with_validate(tmp_path, record), epochs=1)
    d = e.value.diagnostics[0]
    assert d.code == code and message in d.message, str(e.value)
    assert (d.span.line, d.span.col) == (18, 19), str(e.value)


def test_validation_renames_on_any_data(tmp_path: Path):
    """Not only graphs: a classifier validated on its own training rows with another target."""
    path = tmp_path / "iris.dln"
    path.write_text("""\
model m {
    input x: f32[B, 4]
    input y: i64[B]
    loss = cross_entropy(x -> linear(3), y)
    output loss
}
train m {
    data     = npz("iris.npz")
    validate = { y = "shuffled" }
    epochs   = 2
}
""")
    arrays = data.DATASETS["iris"]()
    np.savez(tmp_path / "iris.npz", x=arrays["x"], y=arrays["y"], shuffled=arrays["y"][::-1].copy())
    history = _quiet(path)
    model = history.model
    evaluated = model.run(["loss", "accuracy"], x=arrays["x"], y=arrays["y"][::-1].copy())
    assert history[-1]["val_loss"] == pytest.approx(float(evaluated["loss"]), rel=1e-6)
    assert history[-1]["val_accuracy"] == pytest.approx(float(evaluated["accuracy"]), rel=1e-6)


# ---- the model's own accuracy -----------------------------------------------------------------------------------

def test_the_models_accuracy_is_reported(tmp_path: Path):
    """The example's `accuracy` counts the masked nodes only: 8 labelled ones in training, so a
    multiple of 1/8; the 26 held-out ones in validation.  The automatic metric would count all 34."""
    history = _quiet(EXAMPLE, epochs=3)
    model, arrays = history.model, data.DATASETS["karate"]()
    logits = model(x=arrays["x"], adj=arrays["adj"])["logits"]
    hits = (np.argmax(logits, axis=1) == arrays["y"]).astype(np.float64)
    val = arrays["val_mask"]
    assert history[-1]["val_accuracy"] == pytest.approx((hits * val).sum() / val.sum(), rel=1e-6)
    assert all(abs(e["accuracy"] * 8 - round(e["accuracy"] * 8)) < 1e-6 for e in history.epochs)
    assert model.train_spec.metrics["accuracy"] == model.train_spec.values["accuracy"]


def test_an_accuracy_of_another_shape_keeps_its_name(tmp_path: Path):
    """A per-node `accuracy` is the model's value: no metric of that name is reported (the automatic
    one would clash with it)."""
    path = tmp_path / "gcn.dln"
    path.write_text(EXAMPLE.read_text().replace(
        "accuracy = sum(cast(argmax(logits, axis = 1) == y, f32) * mask) / sum(mask)",
        "accuracy = cast(argmax(logits, axis = 1) == y, f32)"))
    history = _quiet(path, epochs=1)
    assert "accuracy" not in history[-1] and "val_accuracy" not in history[-1] and "val_loss" in history[-1]
