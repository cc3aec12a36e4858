"""Initializers: `param W: f32[64, 10] = xavier_uniform`, `linear(10, init = normal(0.0, 0.02))`.

Each evaluates to an `InitSpec`, its arguments checked as torch checks them
(`normal`'s std >= 0, `uniform`'s a <= b).  Fan-dependent ones (xavier, he)
are resolved against the parameter's shape when it is created (`resolve`),
using torch's fan convention (dim 1 is fan-in, dims 2.. the receptive field);
like torch, they and `orthogonal` need at least 2 dimensions (`problem`).
The runtime draws the numbers (dln.runtime.init).

When an initializer is named without a call (`= xavier_uniform`), its function
runs with no context (`cx` is None) and torch's defaults, which are valid.
"""

from __future__ import annotations

import math

from dln.compiler.builtins import FLOAT, builtin
from dln.compiler.numbers import const_problem
from dln.compiler.ir import DType
from dln.compiler.symbolic import Shape
from dln.compiler.values import InitSpec


@builtin(category="init")
def zeros(cx):
    """all zeros"""
    return InitSpec("zeros")


@builtin(category="init")
def ones(cx):
    """all ones"""
    return InitSpec("ones")


@builtin(category="init")
def constant(cx, value: FLOAT):
    """every element `value`"""
    return InitSpec("constant", (("value", value),))


@builtin(category="init")
def normal(cx, mean: FLOAT = 0.0, std: FLOAT = 1.0):
    """N(mean, std^2)"""
    if std < 0:
        raise cx.fail("E0208", f"normal needs a std >= 0, got {std:g}")
    return InitSpec("normal", (("mean", mean), ("std", std)))


@builtin(category="init")
def uniform(cx, a: FLOAT = 0.0, b: FLOAT = 1.0):
    """U(a, b)"""
    if a > b:
        raise cx.fail("E0208", f"uniform needs a <= b, got a = {a:g}, b = {b:g}")
    return InitSpec("uniform", (("a", a), ("b", b)))


@builtin(category="init")
def xavier_uniform(cx, gain: FLOAT = 1.0):
    """U(-g sqrt(6 / (fan_in + fan_out)), +...) (Glorot)"""
    return InitSpec("xavier_uniform", (("gain", gain),))


@builtin(category="init")
def xavier_normal(cx, gain: FLOAT = 1.0):
    """N(0, g^2 2 / (fan_in + fan_out)) (Glorot)"""
    return InitSpec("xavier_normal", (("gain", gain),))


@builtin(category="init")
def he_uniform(cx):
    """U(-sqrt(6 / fan_in), +...) (Kaiming, for ReLU)"""
    return InitSpec("he_uniform")


@builtin(category="init")
def he_normal(cx):
    """N(0, 2 / fan_in) (Kaiming, for ReLU)"""
    return InitSpec("he_normal")


@builtin(category="init")
def orthogonal(cx, gain: FLOAT = 1.0):
    """a (semi-)orthogonal matrix, rows flattened from dim 1 on"""
    return InitSpec("orthogonal", (("gain", gain),))


# Initializers that read fan-in and fan-out, or flatten rows: torch needs >= 2 dimensions.
_MATRIX_INITS = {"xavier_uniform", "xavier_normal", "he_uniform", "he_normal", "orthogonal"}


def problem(init: InitSpec, shape: Shape, dtype: DType) -> tuple[str, str] | None:
    """Why `init` cannot initialize a tensor of `shape` and `dtype`: (code, message), or None."""
    if init.kind in _MATRIX_INITS and len(shape) < 2:
        return "E0202", (f"{init.kind} needs a tensor of at least 2 dimensions, got "
                         f"[{', '.join(str(d) for d in shape)}]")
    for name in ("value", "a", "b", "mean"):  # values the tensor holds as they are
        if name in dict(init.args):
            bad = const_problem(init.arg(name), dtype, f"{init.kind}'s {name}")
            if bad is not None:
                return "E0208", bad
    return None


def fans(shape: Shape) -> tuple[int, int]:
    if len(shape) < 2:
        n = int(shape[0]) if shape else 1
        return n, n
    receptive = 1
    for d in shape[2:]:
        receptive *= int(d)
    return int(shape[1]) * receptive, int(shape[0]) * receptive


def resolve(init: InitSpec, shape: Shape) -> InitSpec:
    """The initializer as one of zeros, ones, constant, normal, uniform, orthogonal."""
    if init.kind in _MATRIX_INITS and any(d == 0 for d in shape):
        return InitSpec("zeros")  # torch leaves an empty tensor alone
    fan_in, fan_out = fans(shape)
    if init.kind == "xavier_uniform":
        bound = init.arg("gain") * math.sqrt(6.0 / (fan_in + fan_out))
        return InitSpec("uniform", (("a", -bound), ("b", bound)))
    if init.kind == "xavier_normal":
        return InitSpec("normal", (("mean", 0.0), ("std", init.arg("gain") * math.sqrt(2.0 / (fan_in + fan_out)))))
    if init.kind == "he_uniform":
        bound = math.sqrt(6.0 / fan_in)
        return InitSpec("uniform", (("a", -bound), ("b", bound)))
    if init.kind == "he_normal":
        return InitSpec("normal", (("mean", 0.0), ("std", math.sqrt(2.0 / fan_in))))
    return init
