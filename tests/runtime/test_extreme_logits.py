"""Softmax, log-softmax, logsumexp, sigmoid and the losses built on them stay finite and right at
logits of ±1e4 (alone and mixed with 0 and each other), forward and gradient, on both backends,
against torch in float64."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import dln

BACKENDS = ["numpy", "triton"]

# Rows of extreme logits: mixed signs, ties at the extremes, a moderate row for company.
X = np.array([
    [1e4, -1e4, 0.0],
    [-1e4, -1e4, -1e4],
    [1e4, 1e4, -3.0],
    [-1e4, 2.5, 1e4],
    [0.5, -1.0, 2.0],
], np.float32)
LABELS = np.array([1, 0, 2, 0, 2])              # often the class with the smallest logit: the worst case
PROBS = np.array([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0], [0.0, 0.5, 0.5], [0.1, 0.1, 0.8], [0.3, 0.3, 0.4]],
                 np.float32)
BINARY = np.array([[1.0, 0.0, 1.0], [1.0, 0.0, 0.5], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0], [0.0, 0.3, 1.0]],
                  np.float32)
W = np.random.default_rng(0).uniform(0.5, 1.5, X.shape).astype(np.float32)   # weights the elements apart

# name: (the .dln value of `x` (and targets y, p, t), torch's function of the float64 tensors)
CASES = {
    "softmax": ("softmax(x, -1)", lambda x, y, p, t: F.softmax(x, -1)),
    "log_softmax": ("log_softmax(x, -1)", lambda x, y, p, t: F.log_softmax(x, -1)),
    "softmax_columns": ("softmax(x, 0)", lambda x, y, p, t: F.softmax(x, 0)),
    "log_softmax_columns": ("log_softmax(x, 0)", lambda x, y, p, t: F.log_softmax(x, 0)),
    "logsumexp": ("logsumexp(x, 1)", lambda x, y, p, t: torch.logsumexp(x, 1)),
    "logsumexp_columns": ("logsumexp(x, 0, keepdim = true)", lambda x, y, p, t: torch.logsumexp(x, 0, keepdim=True)),
    "sigmoid": ("sigmoid(x)", lambda x, y, p, t: torch.sigmoid(x)),
    "cross_entropy": ("cross_entropy(x, y, reduction = \"none\")",
                      lambda x, y, p, t: F.cross_entropy(x, y, reduction="none")),
    "cross_entropy_smoothed": ("cross_entropy(x, y, label_smoothing = 0.1, reduction = \"none\")",
                               lambda x, y, p, t: F.cross_entropy(x, y, label_smoothing=0.1, reduction="none")),
    "cross_entropy_probabilities": ("cross_entropy(x, p, reduction = \"none\")",
                                    lambda x, y, p, t: F.cross_entropy(x, p, reduction="none")),
    "bce_with_logits": ("bce_with_logits(x, t, reduction = \"none\")",
                        lambda x, y, p, t: F.binary_cross_entropy_with_logits(x, t, reduction="none")),
    "bce_of_sigmoid": ("bce(sigmoid(x), t, reduction = \"none\")",
                       lambda x, y, p, t: F.binary_cross_entropy(torch.sigmoid(x), t, reduction="none")),
}


def _model(case: str, backend: str):
    expr = CASES[case][0]
    reduced = {"logsumexp": "sum(v * w[:, 0])", "logsumexp_columns": "sum(v * w[0:1, :])"}.get(
        case, "sum(v * w[:, 0])" if case.startswith("cross_entropy") else "sum(v * w)")
    source = (f"model m() {{\n    param x: f32[5, 3] = zeros\n    input y: i64[5]\n    input p: f32[5, 3]\n"
              f"    input t: f32[5, 3]\n    input w: f32[5, 3]\n    v = {expr}\n    output v\n"
              f"    loss = {reduced}\n}}\n")
    model = dln.compile(source, backend=backend)
    model.load_state_dict({"x": X})
    return model, reduced


def _torch(case: str, reduced: str):
    x = torch.tensor(X, dtype=torch.float64, requires_grad=True)
    y, p, t, w = (torch.from_numpy(LABELS), torch.tensor(PROBS, dtype=torch.float64),
                  torch.tensor(BINARY, dtype=torch.float64), torch.tensor(W, dtype=torch.float64))
    v = CASES[case][1](x, y, p, t)
    loss = {"sum(v * w)": lambda: (v * w).sum(), "sum(v * w[:, 0])": lambda: (v * w[:, 0]).sum(),
            "sum(v * w[0:1, :])": lambda: (v * w[0:1, :]).sum()}[reduced]()
    loss.backward()
    return v.detach().numpy(), loss.item(), x.grad.numpy()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES)
def test_finite_and_torchs_at_extreme_logits(case, backend):
    model, reduced = _model(case, backend)
    want_v, want_loss, want_grad = _torch(case, reduced)
    feeds = {"y": LABELS, "p": PROBS, "t": BINARY, "w": W}
    got_v = model(**feeds)["v"]
    loss, grads = model.value_and_grad("loss", **feeds)
    assert np.isfinite(got_v).all() and np.isfinite(loss) and np.isfinite(grads["x"]).all()
    np.testing.assert_allclose(got_v, want_v, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grads["x"], want_grad, rtol=1e-5, atol=1e-6)
