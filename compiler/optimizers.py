"""Optimizer updates as graph nodes, with torch.optim's exact semantics.

Each optimizer is an entry of `OPTIMIZERS`: its defaults (torch's), the state
slots it keeps per parameter (with their initial values), and `update`,
which emits the new parameter and new state from the gradient.  Formulas
follow torch's single-tensor implementations operation by operation (lerp,
addcmul, addcdiv), so 20 steps agree with torch.optim to float precision.

`lr` and `step` are f64 scalar inputs of the step graph: the schedule and
the step count change every step without recompiling, and bias corrections
are computed in double precision as torch computes them in Python.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from dln.compiler.emit import GraphBuilder, Tensor
from dln.compiler.ir import DType, Op


@dataclass(frozen=True)
class Optimizer:
    defaults: dict[str, Any]
    slots: Callable[[dict[str, Any]], list[tuple[str, float]]]
    update: Callable[..., tuple[Tensor, dict[str, Tensor]]]


def _scalar(b: GraphBuilder, v: Tensor | float, like: Tensor) -> Tensor | float:
    """An f64 scalar tensor as a scalar of the parameter's type (Python numbers pass)."""
    return b.cast(v, like.dtype) if isinstance(v, Tensor) else v


def _l2(b, h, p, g):
    return b.add(g, b.mul(p, h["weight_decay"])) if h["weight_decay"] else g


def _addcmul(b, x, t1, t2, value):
    """torch.addcmul: x + (value * t1) * t2, in that order."""
    return b.add(x, b.mul(b.mul(t1, value), t2))


def _addcdiv(b, x, t1, t2, value):
    """x - (value * t1) / t2: torch.addcdiv with -value, in its order."""
    return b.sub(x, b.div(b.mul(t1, value), t2))


def _lerp(b, start, end, weight: float):
    """torch.lerp's CPU formula for a scalar weight."""
    if weight < 0.5:
        return b.add(start, b.mul(b.sub(end, start), weight))
    return b.sub(end, b.mul(b.sub(end, start), 1.0 - weight))


def _sgd(b, h, p, g, s, step, lr):
    g = _l2(b, h, p, g)
    new = {}
    if h["momentum"]:
        buf = b.add(b.mul(s["momentum_buffer"], h["momentum"]), b.mul(g, 1.0 - h["dampening"]))
        if h["dampening"]:
            buf = b.where(b.compare(Op.EQ, step, 1.0), g, buf)  # torch starts the buffer at the gradient
        new["momentum_buffer"] = buf
        g = b.add(g, b.mul(buf, h["momentum"])) if h["nesterov"] else buf
    return b.sub(p, b.mul(g, _scalar(b, lr, p))), new


def _adam_core(b, h, p, g, s, step, lr):
    beta1, beta2 = h["betas"]
    m = _lerp(b, s["exp_avg"], g, 1.0 - beta1)
    v = _addcmul(b, b.mul(s["exp_avg_sq"], beta2), g, g, 1.0 - beta2)
    new = {"exp_avg": m, "exp_avg_sq": v}
    bias1 = b.sub(1.0, b.pow(beta1, step))
    bias2_sqrt = b.sqrt(b.sub(1.0, b.pow(beta2, step)))
    step_size = _scalar(b, b.div(lr, bias1), p)
    if h["amsgrad"]:
        v = new["max_exp_avg_sq"] = b.maximum(s["max_exp_avg_sq"], v)
    denom = b.add(b.div(b.sqrt(v), _scalar(b, bias2_sqrt, p)), h["eps"])
    return _addcdiv(b, p, m, denom, step_size), new


def _adam(b, h, p, g, s, step, lr):
    return _adam_core(b, h, p, _l2(b, h, p, g), s, step, lr)


def _adamw(b, h, p, g, s, step, lr):
    if h["weight_decay"]:
        p = b.mul(p, _scalar(b, b.sub(1.0, b.mul(lr, h["weight_decay"])), p))
    return _adam_core(b, h, p, g, s, step, lr)


def _rmsprop(b, h, p, g, s, step, lr):
    g = _l2(b, h, p, g)
    alpha = h["alpha"]
    sq = _addcmul(b, b.mul(s["square_avg"], alpha), g, g, 1.0 - alpha)
    new = {"square_avg": sq}
    if h["centered"]:
        ga = new["grad_avg"] = _lerp(b, s["grad_avg"], g, 1.0 - alpha)
        avg = b.sqrt(b.sub(sq, b.mul(ga, ga)))
    else:
        avg = b.sqrt(sq)
    avg = b.add(avg, h["eps"])
    if h["momentum"]:
        buf = new["momentum_buffer"] = b.add(b.mul(s["momentum_buffer"], h["momentum"]), b.div(g, avg))
        return b.sub(p, b.mul(buf, _scalar(b, lr, p))), new
    return _addcdiv(b, p, g, avg, _scalar(b, lr, p)), new


def _adagrad(b, h, p, g, s, step, lr):
    g = _l2(b, h, p, g)
    clr = b.div(lr, b.add(b.mul(b.sub(step, 1.0), h["lr_decay"]), 1.0))
    total = _addcmul(b, s["sum"], g, g, 1.0)
    std = b.add(b.sqrt(total), h["eps"])
    return _addcdiv(b, p, g, std, _scalar(b, clr, p)), {"sum": total}


def _adadelta(b, h, p, g, s, step, lr):
    g = _l2(b, h, p, g)
    rho, eps = h["rho"], h["eps"]
    sq = _addcmul(b, b.mul(s["square_avg"], rho), g, g, 1.0 - rho)
    std = b.sqrt(b.add(sq, eps))
    delta = b.mul(b.div(b.sqrt(b.add(s["acc_delta"], eps)), std), g)
    acc = _addcmul(b, b.mul(s["acc_delta"], rho), delta, delta, 1.0 - rho)
    return b.sub(p, b.mul(delta, _scalar(b, lr, p))), {"square_avg": sq, "acc_delta": acc}


OPTIMIZERS: dict[str, Optimizer] = {
    "sgd": Optimizer({"lr": 1e-3, "momentum": 0.0, "dampening": 0.0, "weight_decay": 0.0, "nesterov": False},
                     lambda h: [("momentum_buffer", 0.0)] if h["momentum"] else [], _sgd),
    "adam": Optimizer({"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "amsgrad": False},
                      lambda h: [("exp_avg", 0.0), ("exp_avg_sq", 0.0)]
                      + ([("max_exp_avg_sq", 0.0)] if h["amsgrad"] else []), _adam),
    "adamw": Optimizer({"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 1e-2, "amsgrad": False},
                       lambda h: [("exp_avg", 0.0), ("exp_avg_sq", 0.0)]
                       + ([("max_exp_avg_sq", 0.0)] if h["amsgrad"] else []), _adamw),
    "rmsprop": Optimizer({"lr": 1e-2, "alpha": 0.99, "eps": 1e-8, "weight_decay": 0.0, "momentum": 0.0,
                          "centered": False},
                         lambda h: [("square_avg", 0.0)] + ([("grad_avg", 0.0)] if h["centered"] else [])
                         + ([("momentum_buffer", 0.0)] if h["momentum"] else []), _rmsprop),
    "adagrad": Optimizer({"lr": 1e-2, "lr_decay": 0.0, "weight_decay": 0.0, "initial_accumulator_value": 0.0,
                          "eps": 1e-10},
                         lambda h: [("sum", h["initial_accumulator_value"])], _adagrad),
    "adadelta": Optimizer({"lr": 1.0, "rho": 0.9, "eps": 1e-6, "weight_decay": 0.0},
                          lambda h: [("square_avg", 0.0), ("acc_delta", 0.0)], _adadelta),
}


def emit_update(b: GraphBuilder, kind: str, hyper: dict[str, Any], p: Tensor, g: Tensor,
                state: dict[str, Tensor], step: Tensor, lr: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """The new value of parameter `p` and of its state slots after one step."""
    assert step.dtype is DType.F64 and lr.dtype is DType.F64
    return OPTIMIZERS[kind].update(b, hyper, p, g, state, step, lr)
