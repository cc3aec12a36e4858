"""Graph data: when an input holds the data axis twice (`adj: f32[N, N]`), the data set is one whole
example — every step takes all of it, unshuffled and unsplit — and a GCN trained by `dln train` follows
the same full-batch training in PyTorch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

import dln

NODES, FEATURES, HIDDEN, CLASSES, EPOCHS = 13, 5, 6, 3, 4

GCN = f"""\
model gcn(features: int = {FEATURES}, hidden: int = {HIDDEN}, classes: int = {CLASSES}) {{
    input x:    f32[N, features]
    input adj:  f32[N, N]
    input y:    i64[N]
    input mask: f32[N]
    h      = relu(adj @ (x -> linear(hidden)))        # gcn_conv(adj, hidden), spelled out
    logits = adj @ (h -> linear(classes))
    loss   = sum(cross_entropy(logits, y, reduction = "none") * mask) / sum(mask)
    output logits
}}

train gcn {{
    data      = npz("graph.npz")
    optimizer = adam(lr = 0.05)
    batch     = {{batch}}             # not used: a graph is one example
    epochs    = {EPOCHS}
    {{validate}}
}}
"""


def _graph(tmp_path: Path, validate: str = "", batch: int = 4) -> Path:
    rng = np.random.default_rng(3)
    a = (rng.random((NODES, NODES)) < 0.25).astype(np.float32)
    a = np.maximum(a, a.T)
    np.fill_diagonal(a, 1.0)
    d = a.sum(1)
    adj = a / np.sqrt(d)[:, None] / np.sqrt(d)[None, :]          # D^-1/2 (A + I) D^-1/2
    np.savez(tmp_path / "graph.npz", x=rng.standard_normal((NODES, FEATURES)).astype(np.float32),
             adj=adj.astype(np.float32), y=rng.integers(0, CLASSES, NODES),
             mask=(rng.random(NODES) < 0.7).astype(np.float32))
    path = tmp_path / "gcn.dln"
    path.write_text(GCN.replace("{validate}", validate).replace("{batch}", str(batch)))
    return path


def _dln_train(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dln", "train", "gcn.dln", "--no-progress", *args],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)


@pytest.mark.parametrize("batch", [32, 4])
def test_a_gcn_trains_like_full_batch_pytorch(tmp_path: Path, batch: int):
    """Was: `dln train` shuffled the rows of adj but not its columns, a permuted graph (batch >= N);
    with a smaller batch, it split the graph (E0205)."""
    _graph(tmp_path, batch=batch)
    init = dln.compile(tmp_path / "gcn.dln", seed=11).parameters()
    dln.compile(tmp_path / "gcn.dln", seed=11).save(tmp_path / "init.safetensors")
    result = _dln_train(tmp_path, "--weights", "init.safetensors", "--save", "trained.safetensors")
    assert result.returncode == 0, result.stderr
    trained = load_file(str(tmp_path / "trained.safetensors"))

    g = np.load(tmp_path / "graph.npz")
    x, adj, y, mask = (torch.from_numpy(g[k]) for k in ("x", "adj", "y", "mask"))
    h_lin, out_lin = torch.nn.Linear(FEATURES, HIDDEN), torch.nn.Linear(HIDDEN, CLASSES)
    with torch.no_grad():
        for layer, name in ((h_lin, "h"), (out_lin, "logits")):
            layer.weight.copy_(torch.from_numpy(init[f"{name}.weight"]))
            layer.bias.copy_(torch.from_numpy(init[f"{name}.bias"]))
    params = [*h_lin.parameters(), *out_lin.parameters()]
    opt = torch.optim.Adam(params, lr=0.05)
    for _ in range(EPOCHS):          # one full-graph step an epoch
        opt.zero_grad()
        logits = adj @ out_lin(torch.relu(adj @ h_lin(x)))
        loss = (torch.nn.functional.cross_entropy(logits, y, reduction="none") * mask).sum() / mask.sum()
        loss.backward()
        opt.step()
    want = {"h.weight": h_lin.weight, "h.bias": h_lin.bias, "logits.weight": out_lin.weight,
            "logits.bias": out_lin.bias}
    assert trained.keys() == want.keys()
    for name, value in want.items():
        np.testing.assert_allclose(trained[name], value.detach().numpy(), rtol=1e-5, atol=1e-6, err_msg=name)
    assert not np.allclose(trained["h.weight"], init["h.weight"])       # it did train


def test_holding_out_a_fraction_of_a_graph_is_an_error(tmp_path: Path):
    _graph(tmp_path, "validate  = 0.2")
    result = _dln_train(tmp_path)
    assert result.returncode == 1, result.stderr
    assert "error[E0709]" in result.stderr and "gcn.dln:17:17" in result.stderr, result.stderr
    assert "mask" in result.stderr and "internal error" not in result.stderr
    assert "epoch" not in result.stdout


def test_another_graph_validates_whole(tmp_path: Path):
    """validate = npz(...) of another graph: evaluated whole, as the model would see it."""
    path = _graph(tmp_path, 'validate  = npz("graph.npz")')
    history = dln.train(path, epochs=1, progress=False, log=lambda s: None)
    model = history.model
    g = dict(np.load(tmp_path / "graph.npz"))
    logits = model(x=g["x"], adj=g["adj"])["logits"]
    logp = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True)) - \
        logits.max(1, keepdims=True)
    want = -(logp[np.arange(NODES), g["y"]] * g["mask"]).sum() / g["mask"].sum()
    assert abs(history[-1]["val_loss"] - want) < 1e-5
