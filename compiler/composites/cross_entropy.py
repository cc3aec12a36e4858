"""cross_entropy: softmax cross-entropy of class indices, one loss per row (reduced by the built-in).

    cross_entropy(logits [..., C], target int [...]; label_smoothing) -> loss [...]

    loss = -(1 - s) * log_softmax(logits)[target] - s * mean(log_softmax(logits))

Its VJP is the textbook one, `g * (softmax(logits) - (1 - s) * onehot(target) - s / C)`,
rather than the derivative of its decomposition: one row pass, which shares
the row's maximum and log-sum-exp with the forward once both are decomposed.
"""

from __future__ import annotations

from dln.compiler.composites import composite
from dln.compiler.ir import Op, TensorType
from dln.compiler.shapes import ShapeError


def _infer(cx, types, attrs):
    logits, target = types
    if logits.rank == 0 or not logits.dtype.is_float or not target.dtype.is_int:
        raise ShapeError("E0201", f"cross_entropy takes float logits and integer classes, got {logits}, {target}")
    if target.rank != logits.rank - 1:
        raise ShapeError("E0201", f"cross_entropy: classes {target} for logits {logits}")
    for a, b in zip(logits.shape, target.shape):
        cx.unify(a, b, "E0201", f"cross_entropy: classes {target} for logits {logits}")
    return TensorType(logits.dtype, logits.shape[:-1])


def _log_softmax(b, x):
    shifted = b.sub(x, b.max(x, -1, keepdim=True))
    return b.sub(shifted, b.log(b.sum(b.exp(shifted), -1, keepdim=True)))


def _onehot(b, logits, target):
    classes = logits.shape[-1]
    return b.compare(Op.EQ, b.broadcast_to(b.unsqueeze(target, -1), logits.shape),
                     b.broadcast_to(b.cast(b.iota(classes), target.dtype), logits.shape))


def _vjp(b, n, g, xs, out):
    logits, target = xs
    s = n.attrs["label_smoothing"]
    p = b.exp(_log_softmax(b, logits))
    # 1 - s as a constant of the logits' type (two Python numbers alone would make a float32 `where`).
    picked = b.where(_onehot(b, logits, target), b.const(1.0 - s, logits.dtype), 0.0)
    if s:
        picked = b.add(picked, b.div(s, b.dim_value(logits.shape[-1], logits.dtype)))
    return [b.mul(b.broadcast_to(b.unsqueeze(g, -1), logits.shape), b.sub(p, picked)), None]


@composite("cross_entropy", "softmax cross-entropy of class indices, per row", _infer, _vjp)
def decompose(b, xs, attrs):
    logits, target = xs
    s = attrs["label_smoothing"]
    logp = _log_softmax(b, logits)
    loss = b.neg(b.sum(b.where(_onehot(b, logits, target), logp, 0.0), -1))
    if s:
        loss = b.add(b.mul(loss, 1.0 - s), b.mul(b.neg(b.mean(logp, -1)), s))
    return [loss]
