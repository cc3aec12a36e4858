"""Losses, as torch.nn.functional defines them, with `reduction = "mean" | "sum" | "none"`.

Classes sit on the last axis (`[B, T, C]` logits need no transpose).  A
target broadcasts to the input's shape (`bce_with_logits(score, 1.0)`).
Formulas are chosen so that autodiff gives torch's gradients everywhere,
including at the kinks (see `bce_with_logits`).
"""

from __future__ import annotations

from dln.compiler import composites
from dln.compiler.builtins import BOOL, FLOAT, OPERAND, STR, TENSOR, builtin
from dln.compiler.builtins.reductions import log_softmax_of
from dln.compiler.builtins.shape_ops import class_indices
from dln.compiler.emit import Tensor
from dln.compiler.ir import Op

REDUCTIONS = ("mean", "sum", "none")
_BCE_EPSILON = 9.999999960041972e-13  # float(np.float32(1e-12)), torch's EPSILON in binary_cross_entropy


def _reduce(cx, loss: Tensor, reduction: str, allowed=REDUCTIONS) -> Tensor:
    if reduction not in allowed:
        options = ", ".join(f'"{r}"' for r in allowed)
        raise cx.fail_at("reduction", "E0208", f'reduction must be one of {options}, got "{reduction}"')
    if reduction == "mean":
        return cx.b.mean(loss)
    if reduction == "sum":
        return cx.b.sum(loss)
    return loss


def _target(cx, x: Tensor, target) -> Tensor:
    """The target as a float tensor of x's shape (numbers and smaller shapes broadcast)."""
    b = cx.b
    if not isinstance(target, Tensor):
        return b.const(target, x.dtype, x.shape)
    t = b.cast(target, x.dtype)
    if t.shape != x.shape:
        shape = b.broadcast_shapes(x.shape, t.shape)
        if shape != x.shape:
            raise cx.fail("E0201", f"the target {target.type} does not broadcast to the input {x.type}")
        t = b.broadcast_to(t, shape)
    return t


def _class_mask(cx, logits: Tensor, target: Tensor, loss: str) -> Tensor:
    """bool[..., C]: true at each row's target class (each index checked to be a class)."""
    b = cx.b
    if target.shape != logits.shape[:-1]:
        raise cx.fail("E0201", f"class indices {target.type} must have the shape of the logits without the "
                               f"class axis: {list(logits.shape[:-1])}")
    classes = logits.shape[-1]
    target = class_indices(cx, target, classes, f"{loss}'s target")
    return b.compare(Op.EQ, b.broadcast_to(b.unsqueeze(target, -1), logits.shape),
                     b.broadcast_to(b.cast(b.iota(classes), target.dtype), logits.shape))


def _picked(cx, values: Tensor, target: Tensor, loss: str) -> Tensor:
    """values[..., target] for class indices, summed out of a mask (fuses into one row pass)."""
    b = cx.b
    return b.sum(b.where(_class_mask(cx, values, target, loss), values, 0.0), -1)


@builtin(category="loss")
def cross_entropy(cx, logits: TENSOR, target: TENSOR, label_smoothing: FLOAT = 0.0, reduction: STR = "mean"):
    """softmax cross-entropy; target holds class indices or class probabilities; classes on the last axis"""
    b = cx.b
    logits = cx.b.to_float(logits)
    if logits.rank == 0:
        raise cx.fail("E0202", f"cross_entropy needs logits with a class axis, got {logits.type}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise cx.fail_at("label_smoothing", "E0208", f"label_smoothing must be in [0, 1], got {label_smoothing:g}")
    if target.dtype.is_int:
        # A composite (dln.compiler.composites.cross_entropy): its own VJP, decomposed for the backends.
        if target.shape != logits.shape[:-1]:
            raise cx.fail("E0201", f"class indices {target.type} must have the shape of the logits without the "
                                   f"class axis: {list(logits.shape[:-1])}")
        checked = class_indices(cx, target, logits.shape[-1], "cross_entropy's target")
        loss, = composites.emit(b, "cross_entropy", (logits, checked), label_smoothing=float(label_smoothing))
        cx.note_metric("accuracy", logits=logits, target=target)
    else:
        logp = log_softmax_of(cx, logits, -1)
        if target.shape != logits.shape:
            raise cx.fail("E0201", f"class probabilities {target.type} must have the shape of the logits "
                                   f"{logits.type}")
        t = b.cast(target, logits.dtype)
        if label_smoothing:
            t = b.add(b.mul(t, 1.0 - label_smoothing), b.div(label_smoothing, b.dim_value(logits.shape[-1],
                                                                                           logits.dtype)))
        loss = b.neg(b.sum(b.mul(t, logp), -1))
    return _reduce(cx, loss, reduction)


@builtin(category="loss")
def nll(cx, logp: TENSOR, target: TENSOR, reduction: STR = "mean"):
    """negative log-likelihood of class indices, given log-probabilities (classes on the last axis)"""
    if not target.dtype.is_int:
        raise cx.fail("E0206", f"nll needs integer class indices, got {target.type}")
    return _reduce(cx, cx.b.neg(_picked(cx, cx.b.to_float(logp), target, "nll")), reduction)


@builtin(category="loss")
def mse(cx, input: TENSOR, target: OPERAND, reduction: STR = "mean"):
    """mean squared error"""
    b = cx.b
    x = cx.b.to_float(input)
    d = b.sub(x, _target(cx, x, cx.operand(target)))
    return _reduce(cx, b.mul(d, d), reduction)


@builtin(category="loss")
def mae(cx, input: TENSOR, target: OPERAND, reduction: STR = "mean"):
    """mean absolute error (torch's l1_loss)"""
    b = cx.b
    x = cx.b.to_float(input)
    return _reduce(cx, b.unary(Op.ABS, b.sub(x, _target(cx, x, cx.operand(target)))), reduction)


@builtin(category="loss")
def huber(cx, input: TENSOR, target: OPERAND, delta: FLOAT = 1.0, reduction: STR = "mean"):
    """quadratic within delta of the target, linear beyond (torch's huber_loss)"""
    b = cx.b
    x = cx.b.to_float(input)
    d = b.sub(x, _target(cx, x, cx.operand(target)))
    ad = b.unary(Op.ABS, d)
    quad = b.mul(b.mul(d, d), 0.5)
    lin = b.mul(b.sub(ad, 0.5 * delta), delta)
    return _reduce(cx, b.where(b.compare(Op.LT, ad, delta), quad, lin), reduction)


@builtin(category="loss")
def bce(cx, input: TENSOR, target: OPERAND, reduction: STR = "mean"):
    """binary cross-entropy of probabilities; logs are clamped at -100, as torch"""
    b = cx.b
    p = cx.b.to_float(input)
    t = _target(cx, p, cx.operand(target))
    log_p = b.detach(b.maximum(b.log(p), -100.0))
    log_q = b.detach(b.maximum(b.log(b.sub(1.0, p)), -100.0))
    loss = b.neg(b.add(b.mul(t, log_p), b.mul(b.sub(1.0, t), log_q)))
    # The gradient for p is torch's explicit formula, (p - t) / max(p (1 - p), 1e-12), added as
    # (p - detach(p)) * detach(formula), which is 0 in value.  Differentiating through the clamped
    # logs instead gives 0 / 0 = NaN wherever p is exactly 0 or 1 (a saturated sigmoid), where
    # torch's gradient is finite.  torch's 1e-12 is a C float: 9.99999996e-13.
    slope = b.div(b.sub(p, t), b.maximum(b.mul(p, b.sub(1.0, p)), _BCE_EPSILON))
    loss = b.add(loss, b.mul(b.sub(p, b.detach(p)), b.detach(slope)))
    return _reduce(cx, loss, reduction)


@builtin(category="loss")
def bce_with_logits(cx, input: TENSOR, target: OPERAND, reduction: STR = "mean"):
    """binary cross-entropy on logits: (1 - t) x - log(sigmoid(x)), computed stably"""
    b = cx.b
    x = cx.b.to_float(input)
    t = _target(cx, x, cx.operand(target))
    # log(sigmoid(x)) = min(x, 0) - log1p(exp(-|x|)); `minimum` splits the gradient at
    # x = 0, which makes the derivative exactly sigmoid(x) - t there too.
    log_sig = b.sub(b.minimum(x, 0.0), b.unary(Op.LOG1P, b.exp(b.neg(b.unary(Op.ABS, x)))))
    loss = b.sub(b.mul(b.sub(1.0, t), x), log_sig)
    return _reduce(cx, loss, reduction)


@builtin(category="loss")
def hinge(cx, input: TENSOR, target: TENSOR, margin: FLOAT = 1.0, reduction: STR = "mean"):
    """multi-class margin loss: sum over wrong classes of max(0, margin - x[y] + x[j]) / C"""
    b = cx.b
    x = cx.b.to_float(input)
    if not target.dtype.is_int:
        raise cx.fail("E0206", f"hinge needs integer class indices, got {target.type}")
    mask = _class_mask(cx, x, target, "hinge")
    picked = b.unsqueeze(b.sum(b.where(mask, x, 0.0), -1), -1)
    margins = b.unary(Op.RELU, b.add(b.sub(x, picked), margin))
    per_row = b.sum(b.where(mask, 0.0, margins), -1)
    return _reduce(cx, b.div(per_row, b.dim_value(x.shape[-1], x.dtype)), reduction)


@builtin(category="loss")
def kl_div(cx, input: TENSOR, target: TENSOR, reduction: STR = "mean", log_target: BOOL = False):
    """KL divergence with input as log-probabilities (torch.nn.functional.kl_div)"""
    b = cx.b
    x = cx.b.to_float(input)
    t = _target(cx, x, target)
    if log_target:
        loss = b.mul(b.exp(t), b.sub(t, x))
    else:
        safe_log = b.log(b.where(b.compare(Op.GT, t, 0.0), t, 1.0))
        loss = b.where(b.compare(Op.GT, t, 0.0), b.mul(t, b.sub(safe_log, x)), 0.0)
    if reduction == "batchmean":
        return b.div(b.sum(loss), b.dim_value(x.shape[0] if x.rank else 1, x.dtype))
    return _reduce(cx, loss, reduction, REDUCTIONS + ("batchmean",))

