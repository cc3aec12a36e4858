"""Elementwise built-ins and randomness, as PyTorch defines them.

Most are one primitive; the rest decompose into primitives (the formulas of
torch.nn.functional), so autodiff and fusion see only primitives.
"""

from __future__ import annotations

import math

from dln.compiler.builtins import DTYPE, FLOAT, OPERAND, STR, TENSOR, builtin
from dln.compiler.emit import DEFAULT_FLOAT
from dln.compiler.ir import DType, Op


def _unary(op: Op, name: str, doc: str) -> None:
    def fn(cx, x: TENSOR):
        return cx.b.float_unary(op, x)
    fn.__doc__ = doc
    builtin(name)(fn)


for _op, _name, _doc in [
    (Op.EXP, "exp", "e ** x"),
    (Op.LOG, "log", "natural logarithm"),
    (Op.LOG1P, "log1p", "log(1 + x), accurate near 0"),
    (Op.SQRT, "sqrt", "square root"),
    (Op.RSQRT, "rsqrt", "1 / sqrt(x)"),
    (Op.SIN, "sin", "sine"),
    (Op.COS, "cos", "cosine"),
    (Op.TANH, "tanh", "hyperbolic tangent"),
    (Op.ATAN, "atan", "arctangent, in (-pi/2, pi/2)"),
    (Op.SIGMOID, "sigmoid", "1 / (1 + exp(-x))"),
]:
    _unary(_op, _name, _doc)


@builtin()
def abs(cx, x: TENSOR):
    """|x|"""
    return cx.b.unary(Op.ABS, x)


@builtin()
def floor(cx, x: TENSOR):
    """the largest integer <= x (integers unchanged); no gradient flows through it (torch's is 0)"""
    return cx.b.unary(Op.FLOOR, x) if x.dtype.is_float else x


@builtin()
def sign(cx, x: TENSOR):
    """-1, 0 or 1"""
    return cx.b.unary(Op.SIGN, x)


@builtin()
def relu(cx, x: TENSOR):
    """max(x, 0); its gradient at 0 is 0, as in torch"""
    return cx.b.unary(Op.RELU, x)


@builtin()
def leaky_relu(cx, x: TENSOR, slope: FLOAT = 0.01):
    """x where x > 0, else slope * x"""
    b = cx.b
    return b.where(b.compare(Op.GT, x, 0), x, b.mul(x, slope))


@builtin()
def elu(cx, x: TENSOR, alpha: FLOAT = 1.0):
    """x where x > 0, else alpha * (exp(x) - 1)"""
    b = cx.b
    x = cx.b.to_float(x)
    return b.where(b.compare(Op.GT, x, 0), x, b.mul(b.sub(b.exp(x), 1.0), alpha))


_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946


@builtin()
def selu(cx, x: TENSOR):
    """scale * elu(x, alpha) with torch's constants"""
    return cx.b.mul(elu(cx, x, _SELU_ALPHA), _SELU_SCALE)


@builtin()
def gelu(cx, x: TENSOR, approximate: STR = "none"):
    """x * Phi(x); approximate = "tanh" uses the tanh formula"""
    b = cx.b
    x = cx.b.to_float(x)
    if approximate == "none":
        cdf = b.mul(b.add(b.unary(Op.ERF, b.mul(x, 1.0 / math.sqrt(2.0))), 1.0), 0.5)
        return b.mul(x, cdf)
    if approximate == "tanh":
        inner = b.mul(b.add(x, b.mul(b.pow(x, 3.0), 0.044715)), math.sqrt(2.0 / math.pi))
        return b.mul(b.mul(x, 0.5), b.add(b.tanh(inner), 1.0))
    raise cx.fail_at("approximate", "E0208", f'gelu\'s approximate must be "none" or "tanh", got "{approximate}"')


@builtin()
def silu(cx, x: TENSOR):
    """x * sigmoid(x)"""
    x = cx.b.to_float(x)
    return cx.b.mul(x, cx.b.sigmoid(x))


@builtin()
def softplus(cx, x: TENSOR, beta: FLOAT = 1.0, threshold: FLOAT = 20.0):
    """log(1 + exp(beta * x)) / beta; linear above the threshold"""
    b = cx.b
    x = cx.b.to_float(x)
    bx = b.mul(x, beta)
    above = b.compare(Op.GT, bx, threshold)
    # Clamp what exp sees with `where`, not `minimum`: at bx == threshold exactly torch takes the
    # soft branch with its full gradient, which minimum's tie rule would halve.
    soft = b.div(b.unary(Op.LOG1P, b.exp(b.where(above, threshold, bx))), beta)
    return b.where(above, x, soft)


@builtin()
def softsign(cx, x: TENSOR):
    """x / (1 + |x|)"""
    b = cx.b
    return b.div(x, b.add(b.unary(Op.ABS, x), 1.0))


@builtin()
def hardtanh(cx, x: TENSOR, min_val: FLOAT = -1.0, max_val: FLOAT = 1.0):
    """x clamped to [min_val, max_val]; gradient only strictly inside"""
    b = cx.b
    return b.where(b.compare(Op.LE, x, min_val), min_val,
                   b.where(b.compare(Op.GE, x, max_val), max_val, x))


@builtin()
def clamp(cx, x: TENSOR, lo: OPERAND = None, hi: OPERAND = None):
    """x limited to [lo, hi]; either bound may be omitted"""
    b = cx.b
    out = x
    if lo is not None:
        lo = cx.operand(lo)
        out = b.where(b.compare(Op.LT, out, lo), lo, out)
    if hi is not None:
        hi = cx.operand(hi)
        out = b.where(b.compare(Op.GT, out, hi), hi, out)
    return out


@builtin()
def maximum(cx, x: OPERAND, y: OPERAND):
    """elementwise maximum; ties split the gradient, as in torch"""
    return cx.b.maximum(cx.operand(x), cx.operand(y))


@builtin()
def minimum(cx, x: OPERAND, y: OPERAND):
    """elementwise minimum"""
    return cx.b.minimum(cx.operand(x), cx.operand(y))


@builtin()
def where(cx, cond: TENSOR, a: OPERAND, b: OPERAND):
    """a where cond is true, else b"""
    if cond.dtype is not DType.BOOL:
        raise cx.fail("E0206", f"where's condition must be a bool tensor, got {cond.type}")
    return cx.b.where(cond, cx.operand(a), cx.operand(b))


@builtin()
def cast(cx, x: TENSOR, dtype: DTYPE):
    """x converted to another element type"""
    return cx.b.cast(x, dtype)


@builtin()
def detach(cx, x: TENSOR):
    """x, with no gradient flowing back through it"""
    return cx.b.detach(x)


# ---- randomness: counter-based, so both backends draw the same numbers -------------------------------------


@builtin(category="random")
def dropout(cx, x: TENSOR, p: FLOAT = 0.5):
    """zeroes each element with probability p and scales the rest by 1 / (1 - p); identity in evaluation"""
    if not 0.0 <= p <= 1.0:
        raise cx.fail_at("p", "E0208", f"dropout probability must be in [0, 1], got {p:g}")
    if not cx.training or p == 0.0:
        return x
    b = cx.b
    x = cx.b.to_float(x)
    if p == 1.0:
        return b.mul(x, 0.0)
    keep = b.compare(Op.GE, cx.random(x.shape, x.dtype, "dropout"), p)
    return b.where(keep, b.mul(x, 1.0 / (1.0 - p)), 0.0)


@builtin(category="random")
def rand_like(cx, x: TENSOR):
    """uniform numbers in [0, 1) of x's shape"""
    dtype = x.dtype if x.dtype.is_float else DEFAULT_FLOAT
    return cx.random(x.shape, dtype, "rand_like")


@builtin(category="random")
def randn_like(cx, x: TENSOR):
    """standard normal numbers of x's shape (Box-Muller over two uniform streams)"""
    b = cx.b
    dtype = x.dtype if x.dtype.is_float else DEFAULT_FLOAT
    u1 = b.maximum(cx.random(x.shape, dtype, "randn_like"), 1e-7)
    u2 = cx.random(x.shape, dtype, "randn_like")
    radius = b.sqrt(b.mul(b.log(u1), -2.0))
    return b.mul(radius, b.unary(Op.COS, b.mul(u2, 2.0 * math.pi)))


@builtin(category="random")
def bernoulli(cx, p: TENSOR):
    """1.0 with probability p, else 0.0"""
    b = cx.b
    p = cx.b.to_float(p)
    return b.cast(b.compare(Op.LT, cx.random(p.shape, p.dtype, "bernoulli"), p), p.dtype)


@builtin()
def zeros_like(cx, x: TENSOR):
    """zeros of x's shape and type"""
    return cx.b.const(0, x.dtype, x.shape)


@builtin()
def ones_like(cx, x: TENSOR):
    """ones of x's shape and type"""
    return cx.b.const(1, x.dtype, x.shape)
