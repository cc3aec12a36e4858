"""Converters for ONNX's elementwise ops: math functions, activations, comparisons and logic, the
variadic Max/Min/Sum/Mean, Clip, Where, and Cast/CastLike.

Each op is the dln primitives that define it, with ONNX's semantics where they differ from torch's:
integer Div truncates toward zero (as C), Mod's `fmod=1` takes the dividend's sign, Round rounds
half to even, Pow's result has the base's type.  Functions the IR has no primitive for are built
from those it has, accurate to a few ulps: ceil and round from floor; tan from sin and cos; the
hyperbolic functions and their inverses from exp, log and log1p; asin and acos from atan.  Where a
formula would overflow or cancel in a range (asinh and acosh of huge arguments, sinh near 0), that
range takes another formula.

Known limits (the conformance cases they fail, and why):
- test_equal_string, test_equal_string_broadcast: dln has no string tensors.
- uint64 is computed as int64 (convert.py): Div, Mod and the comparisons of uint64 values past
  2**63 see them negative.
"""

from __future__ import annotations

import math
from functools import reduce

import numpy as np

from dln.compiler.emit import GraphBuilder, Tensor
from dln.compiler.ir import DType, Op
from dln.runtime.onnx.convert import (DTYPE_TO_NP, WIDENED, Context, OnnxNode, UnsupportedOnnx, converter,
                                      dln_dtype, np_dtype)

def _operands(ctx: Context, node: OnnxNode) -> tuple[Tensor, Tensor]:
    """A binary op's two inputs.  Before opset 7 `broadcast=1` with `axis` aligned the second operand
    at that axis of the first; numpy's rules (no `axis`) are what later opsets keep."""
    if node.attr("broadcast", 0) and node.attr("axis") is not None:
        raise UnsupportedOnnx(node, "legacy broadcasting at an axis (opset < 7); onnx.version_converter "
                                    "rewrites it")
    return ctx.tensor(node, 0), ctx.tensor(node, 1)


def _float(ctx: Context, node: OnnxNode, i: int = 0) -> Tensor:
    x = ctx.tensor(node, i)
    if not x.dtype.is_float:
        raise UnsupportedOnnx(node, f"{node.op_type} of {x.dtype} (ONNX defines it for float types)")
    return x


# ---- one primitive each ------------------------------------------------------------------------------

_UNARY = {"Abs": Op.ABS, "Neg": Op.NEG, "Exp": Op.EXP, "Log": Op.LOG, "Sqrt": Op.SQRT, "Sin": Op.SIN,
          "Cos": Op.COS, "Tanh": Op.TANH, "Sigmoid": Op.SIGMOID, "Erf": Op.ERF, "Relu": Op.RELU,
          "Sign": Op.SIGN, "Floor": Op.FLOOR, "Atan": Op.ATAN, "Not": Op.NOT}


@converter(*_UNARY)
def unary(ctx: Context, node: OnnxNode) -> list:
    op = _UNARY[node.op_type]
    x = ctx.tensor(node, 0)
    if op in (Op.EXP, Op.LOG, Op.SQRT, Op.SIN, Op.COS, Op.TANH, Op.SIGMOID, Op.ERF, Op.FLOOR, Op.ATAN):
        x = _float(ctx, node)
    return [ctx.builder.unary(op, x)]


_COMPARE = {"Equal": Op.EQ, "Greater": Op.GT, "GreaterOrEqual": Op.GE, "Less": Op.LT, "LessOrEqual": Op.LE}


@converter(*_COMPARE)
def compare(ctx: Context, node: OnnxNode) -> list:
    return [ctx.builder.compare(_COMPARE[node.op_type], *_operands(ctx, node))]


@converter("And", "Or", "Xor")
def logical(ctx: Context, node: OnnxNode) -> list:
    op = {"And": Op.AND, "Or": Op.OR, "Xor": Op.NE}[node.op_type]
    return [ctx.builder.logical(op, *_operands(ctx, node))]


@converter("Where")
def where(ctx: Context, node: OnnxNode) -> list:
    return [ctx.builder.where(ctx.tensor(node, 0), ctx.tensor(node, 1), ctx.tensor(node, 2))]


@converter("Max", "Min", "Sum", "Mean")
def variadic(ctx: Context, node: OnnxNode) -> list:
    """Elementwise over any number of inputs, broadcast together."""
    b = ctx.builder
    xs = [x for x in ctx.inputs(node) if x is not None]
    combine = {"Max": b.maximum, "Min": b.minimum, "Sum": b.add, "Mean": b.add}[node.op_type]
    out = reduce(combine, xs)
    if node.op_type == "Mean":
        out = b.div(out, float(len(xs)))
    return [out]


# ---- arithmetic with ONNX's integer semantics ---------------------------------------------------------

@converter("Div")
def div(ctx: Context, node: OnnxNode) -> list:
    x, y = _operands(ctx, node)
    if x.dtype.is_float:
        return [ctx.builder.div(x, y)]
    return [truncated_div(ctx.builder, x, y)]


def truncated_div(b: GraphBuilder, x: Tensor, y: Tensor) -> Tensor:
    """Integer division rounding toward zero, as C.  The float64 quotient is correctly rounded, so
    its truncation is exact for int32; for int64 it is within |q| 2**-52 + 1, a step on the remainder
    brings it within 1, and the remainder's sign and size fix the last one."""
    def quotient(n: Tensor) -> Tensor:
        return b.cast(b.div(b.cast(n, DType.F64), b.cast(y, DType.F64)), x.dtype)

    q = quotient(x)
    if x.dtype is DType.I32:
        return q
    q = b.add(q, quotient(b.sub(x, b.mul(q, y))))
    r = b.sub(x, b.mul(q, y))
    step = b.mul(b.unary(Op.SIGN, x), b.unary(Op.SIGN, y))
    zero = b.const(0, x.dtype)
    past = b.logical(Op.AND, b.compare(Op.NE, r, zero),
                     b.compare(Op.NE, b.compare(Op.LT, r, zero), b.compare(Op.LT, x, zero)))
    short = b.compare(Op.GE, b.unary(Op.ABS, r), b.unary(Op.ABS, y))
    return b.where(past, b.sub(q, step), b.where(short, b.add(q, step), q))


@converter("Mod")
def mod(ctx: Context, node: OnnxNode) -> list:
    b = ctx.builder
    x, y = ctx.tensor(node, 0), ctx.tensor(node, 1)
    if not node.attr("fmod", 0):
        return [b.mod(x, y)]      # the divisor's sign, as Python
    # C's fmod: the dividend's sign.  The remainder of |x| by |y| is fmod's magnitude, exactly.
    r = b.mod(b.unary(Op.ABS, x), b.unary(Op.ABS, y))
    return [b.where(b.compare(Op.LT, x, b.const(0, x.dtype)), b.neg(r), r)]


@converter("Pow")
def pow_(ctx: Context, node: OnnxNode) -> list:
    """x ** y in x's type: a float exponent of an integer base is computed in float64 and truncated,
    an integer exponent of a float base is converted to the base's type."""
    b = ctx.builder
    x, y = _operands(ctx, node)
    if x.dtype.is_float:
        return [b.pow(x, b.cast(y, x.dtype))]
    if y.dtype.is_float:
        return [b.cast(b.pow(b.cast(x, DType.F64), b.cast(y, DType.F64)), x.dtype)]
    return [b.pow(x, b.cast(y, x.dtype))]


@converter("Reciprocal")
def reciprocal(ctx: Context, node: OnnxNode) -> list:
    return [ctx.builder.div(1.0, _float(ctx, node))]


# ---- rounding -----------------------------------------------------------------------------------------

def round_half_even(b: GraphBuilder, x: Tensor) -> Tensor:
    """Round to the nearest integer, halves to the even one, from floor: x - floor(x) is exact."""
    f = b.unary(Op.FLOOR, x)
    d = b.sub(x, f)
    up = b.add(f, 1.0)
    half = b.add(f, b.mod(f, 2.0))       # f when f is even, f + 1 when odd
    return b.where(b.compare(Op.GT, d, 0.5), up, b.where(b.compare(Op.EQ, d, 0.5), half, f))


@converter("Ceil", "Round")
def rounding(ctx: Context, node: OnnxNode) -> list:
    b, x = ctx.builder, _float(ctx, node)
    if node.op_type == "Ceil":
        return [b.neg(b.unary(Op.FLOOR, b.neg(x)))]
    return [round_half_even(b, x)]


# ---- trigonometric and hyperbolic ---------------------------------------------------------------------

def _opmath(b: GraphBuilder, x: Tensor, fn) -> Tensor:
    """fn(x), a formula of several ops, computed in float32 for a float16 x and rounded once at the
    end, as torch and numpy compute half-precision math (in f16 exp overflows past 11 and 1 + erf(x)
    cancels)."""
    if x.dtype is DType.F16:
        return b.cast(fn(b.cast(x, DType.F32)), DType.F16)
    return fn(x)


def _expm1(b: GraphBuilder, x: Tensor) -> Tensor:
    """exp(x) - 1 without cancellation near 0, for x <= 1 (where it is used): 2t / (1 - t) with
    t = tanh(x / 2); 1 - t lies in [0.5, 2] there."""
    t = b.tanh(b.mul(x, 0.5))
    return b.div(b.mul(t, 2.0), b.sub(1.0, t))


def _with_sign_of(b: GraphBuilder, x: Tensor, magnitude: Tensor) -> Tensor:
    return b.where(b.compare(Op.LT, x, 0.0), b.neg(magnitude), magnitude)


def _big(x: Tensor) -> float:
    """Past this |x|, x * x overflows: asinh and acosh are log(2|x|) to the last bit there."""
    return math.sqrt(float(np.finfo(DTYPE_TO_NP[x.dtype]).max)) / 2


def _sinh(b: GraphBuilder, x: Tensor) -> Tensor:
    """(e - 1/e) / 2 from |x| = 1 up; below, where that cancels, (m + m / (m + 1)) / 2 with
    m = expm1(|x|)."""
    ax = b.unary(Op.ABS, x)
    small = b.compare(Op.LT, ax, 1.0)
    m = _expm1(b, b.where(small, ax, 0.0))
    e = b.exp(ax)
    near = b.mul(b.add(m, b.div(m, b.add(m, 1.0))), 0.5)
    return _with_sign_of(b, x, b.where(small, near, b.mul(b.sub(e, b.div(1.0, e)), 0.5)))


def _cosh(b: GraphBuilder, x: Tensor) -> Tensor:
    e = b.exp(b.unary(Op.ABS, x))
    return b.mul(b.add(e, b.div(1.0, e)), 0.5)


def _asinh(b: GraphBuilder, x: Tensor) -> Tensor:
    """log1p(|x| + x**2 / (1 + sqrt(1 + x**2))) with x's sign."""
    ax = b.unary(Op.ABS, x)
    big = b.compare(Op.GT, ax, _big(x))
    a = b.where(big, 1.0, ax)
    near = b.unary(Op.LOG1P, b.add(a, b.div(b.mul(a, a), b.add(b.sqrt(b.add(b.mul(a, a), 1.0)), 1.0))))
    return _with_sign_of(b, x, b.where(big, b.add(b.log(ax), math.log(2.0)), near))


def _acosh(b: GraphBuilder, x: Tensor) -> Tensor:
    """log1p((x - 1) + sqrt((x - 1)(x + 1))); NaN below 1."""
    big = b.compare(Op.GT, x, _big(x))
    t = b.sub(b.where(big, 1.0, x), 1.0)
    near = b.unary(Op.LOG1P, b.add(t, b.sqrt(b.mul(t, b.add(t, 2.0)))))
    return b.where(big, b.add(b.log(x), math.log(2.0)), near)


def _atanh(b: GraphBuilder, x: Tensor) -> Tensor:
    """log1p(2|x| / (1 - |x|)) / 2 with x's sign (on -|x|, near -1, log1p would magnify the quotient's
    rounding)."""
    ax = b.unary(Op.ABS, x)
    return _with_sign_of(b, x, b.mul(b.unary(Op.LOG1P, b.div(b.mul(ax, 2.0), b.sub(1.0, ax))), 0.5))


def _asin(b: GraphBuilder, x: Tensor) -> Tensor:
    """atan(x / sqrt((1 - x)(1 + x))): at |x| = 1 the quotient is infinite and atan +-pi/2."""
    return b.unary(Op.ATAN, b.div(x, b.sqrt(b.mul(b.sub(1.0, x), b.add(x, 1.0)))))


def _acos(b: GraphBuilder, x: Tensor) -> Tensor:
    """2 atan(sqrt((1 - x) / (1 + x)))."""
    return b.mul(b.unary(Op.ATAN, b.sqrt(b.div(b.sub(1.0, x), b.add(x, 1.0)))), 2.0)


_TRIGONOMETRIC = {
    "Tan": lambda b, x: b.div(b.unary(Op.SIN, x), b.unary(Op.COS, x)),
    "Asin": _asin, "Acos": _acos, "Sinh": _sinh, "Cosh": _cosh, "Asinh": _asinh, "Acosh": _acosh,
    "Atanh": _atanh,
}


@converter(*_TRIGONOMETRIC)
def trigonometric(ctx: Context, node: OnnxNode) -> list:
    b = ctx.builder
    return [_opmath(b, _float(ctx, node), lambda x: _TRIGONOMETRIC[node.op_type](b, x))]


# ---- activations --------------------------------------------------------------------------------------

def _elu(b: GraphBuilder, x: Tensor, alpha: float, scale: float = 1.0) -> Tensor:
    """x above 0, alpha * expm1(x / scale) * scale below (expm1 sees x <= 0 only)."""
    positive = b.compare(Op.GT, x, 0.0)
    below = b.where(positive, 0.0, x)
    if scale != 1.0:
        below = b.div(below, scale)
    return b.where(positive, x, b.mul(_expm1(b, below), alpha * scale))


def _softplus(b: GraphBuilder, x: Tensor) -> Tensor:
    """log(1 + exp(x)) as max(x, 0) + log1p(exp(-|x|)): exp never overflows."""
    return b.add(b.maximum(x, 0.0), b.unary(Op.LOG1P, b.exp(b.neg(b.unary(Op.ABS, x)))))


def _hard_sigmoid(b: GraphBuilder, x: Tensor, alpha: float, beta: float) -> Tensor:
    y = b.add(b.mul(x, alpha), beta)
    return b.where(b.compare(Op.LE, y, 0.0), 0.0, b.where(b.compare(Op.GE, y, 1.0), 1.0, y))


def _gelu(b: GraphBuilder, x: Tensor, node: OnnxNode) -> Tensor:
    approximate = node.attr("approximate", "none")
    if approximate == "none":
        return b.mul(x, b.mul(b.add(b.unary(Op.ERF, b.mul(x, 1 / math.sqrt(2.0))), 1.0), 0.5))
    if approximate == "tanh":
        inner = b.mul(b.add(x, b.mul(b.mul(b.mul(x, x), x), 0.044715)), math.sqrt(2 / math.pi))
        return b.mul(b.mul(x, 0.5), b.add(b.tanh(inner), 1.0))
    raise UnsupportedOnnx(node, f"Gelu with approximate={approximate!r}")


def _shrink(b: GraphBuilder, x: Tensor, node: OnnxNode) -> Tensor:
    bias, lambd = node.attr("bias", 0.0), node.attr("lambd", 0.5)
    return b.where(b.compare(Op.LT, x, -lambd), b.add(x, bias),
                   b.where(b.compare(Op.GT, x, lambd), b.sub(x, bias), 0.0))


# ONNX's defaults (Selu's constants are the float32 values the spec writes).
_ACTIVATIONS = {
    "Elu": lambda b, x, a: _elu(b, x, a("alpha", 1.0)),
    "Celu": lambda b, x, a: _elu(b, x, 1.0, a("alpha", 1.0)),
    "Selu": lambda b, x, a: b.mul(_elu(b, x, a("alpha", 1.67326319217681884765625)),
                                  a("gamma", 1.05070102214813232421875)),
    "LeakyRelu": lambda b, x, a: b.where(b.compare(Op.LT, x, 0.0), b.mul(x, a("alpha", 0.01)), x),
    "ThresholdedRelu": lambda b, x, a: b.where(b.compare(Op.GT, x, a("alpha", 1.0)), x, 0.0),
    "HardSigmoid": lambda b, x, a: _hard_sigmoid(b, x, a("alpha", 0.2), a("beta", 0.5)),
    "HardSwish": lambda b, x, a: b.mul(x, _hard_sigmoid(b, x, 1 / 6, 0.5)),
    "Softplus": lambda b, x, a: _softplus(b, x),
    "Softsign": lambda b, x, a: b.div(x, b.add(b.unary(Op.ABS, x), 1.0)),
    "Mish": lambda b, x, a: b.mul(x, b.tanh(_softplus(b, x))),
    "Swish": lambda b, x, a: b.mul(x, b.sigmoid(b.mul(x, a("alpha", 1.0)))),
}


@converter(*_ACTIVATIONS, "Gelu", "Shrink")
def activation(ctx: Context, node: OnnxNode) -> list:
    b, op = ctx.builder, node.op_type
    if op == "Gelu":
        fn = lambda x: _gelu(b, x, node)    # noqa: E731
    elif op == "Shrink":
        x = ctx.tensor(node, 0)
        if not x.dtype.is_float:   # Shrink alone takes integers too: computed in float64, truncated back
            return [b.cast(_shrink(b, b.cast(x, DType.F64), node), x.dtype)]
        fn = lambda x: _shrink(b, x, node)  # noqa: E731
    else:
        fn = lambda x: _ACTIVATIONS[op](b, x, node.attr)  # noqa: E731
    return [_opmath(b, _float(ctx, node), fn)]


@converter("PRelu")
def prelu(ctx: Context, node: OnnxNode) -> list:
    """x where x >= 0, slope * x below.  The slope broadcasts to x; a 1-d slope that does not (PyTorch's
    exports at opset 6: one slope per channel, [C] against [N, C, ...]) lines up with the one axis of x
    of its size, as onnx's reference and onnxruntime do."""
    b, x, slope = ctx.builder, ctx.tensor(node, 0), ctx.tensor(node, 1)
    if slope.rank == 1 and x.rank > 1 and slope.shape[0] not in (1, x.shape[-1]):
        axes = [i for i, d in enumerate(x.shape) if d == slope.shape[0]]
        if len(axes) != 1:
            raise UnsupportedOnnx(node, f"a slope of shape {list(slope.shape)} for x of shape {list(x.shape)}")
        slope = b.reshape(slope, [slope.shape[0] if i == axes[0] else 1 for i in range(x.rank)])
    return [b.where(b.compare(Op.LT, x, b.const(0, x.dtype)), b.mul(x, slope), x)]


@converter("Clip")
def clip(ctx: Context, node: OnnxNode) -> list:
    """x limited to [min, max] (attributes before opset 11, optional inputs since); where min > max,
    every element is max, as ONNX says (and numpy.clip does)."""
    b, x = ctx.builder, ctx.tensor(node, 0)
    if ctx.opset < 11:
        lo, hi = node.attr("min"), node.attr("max")
    else:
        lo = ctx.tensor(node, 1) if ctx.has(node, 1) else None
        hi = ctx.tensor(node, 2) if ctx.has(node, 2) else None
    out = x
    if lo is not None:
        out = b.where(b.compare(Op.LT, out, lo), lo, out)
    if hi is not None:
        out = b.where(b.compare(Op.GT, out, hi), hi, out)
    return [b.cast(out, x.dtype)]


@converter("IsNaN")
def isnan(ctx: Context, node: OnnxNode) -> list:
    x = _float(ctx, node)
    return [ctx.builder.compare(Op.NE, x, x)]


@converter("IsInf")
def isinf(ctx: Context, node: OnnxNode) -> list:
    b, x = ctx.builder, _float(ctx, node)
    pos, neg = node.attr("detect_positive", 1), node.attr("detect_negative", 1)
    if pos and neg:
        return [b.compare(Op.EQ, b.unary(Op.ABS, x), math.inf)]
    if pos or neg:
        return [b.compare(Op.EQ, x, math.inf if pos else -math.inf)]
    return [b.const(False, DType.BOOL, x.shape)]


# ---- element types ------------------------------------------------------------------------------------

def _cast_to(b: GraphBuilder, x: Tensor, target: np.dtype, node: OnnxNode) -> Tensor:
    """x converted to the ONNX numpy type `target`: a narrow integer type is computed in int64 and
    wraps around as numpy's conversion does (float to integer truncates toward zero first)."""
    dtype = dln_dtype(target, node)
    out = b.cast(x, dtype)
    if target in WIDENED and target != np.uint64:
        bits = 8 * target.itemsize
        if np.issubdtype(target, np.unsignedinteger):
            out = b.mod(out, 2 ** bits)
        else:
            out = b.sub(b.mod(b.add(out, 2 ** (bits - 1)), 2 ** bits), 2 ** (bits - 1))
    return out


@converter("Cast")
def cast(ctx: Context, node: OnnxNode) -> list:
    try:
        target = np_dtype(node.attr("to"))
    except UnsupportedOnnx as e:
        raise UnsupportedOnnx(node, str(e)) from None
    return [_cast_to(ctx.builder, ctx.tensor(node, 0), target, node)]


@converter("CastLike")
def cast_like(ctx: Context, node: OnnxNode) -> list:
    """The type of input 1: its ONNX type when it is known before the run, else the type dln computes
    it in (a narrow integer type is int64 by then)."""
    like = ctx.values[node.inputs[1]]
    if isinstance(like, Tensor):
        return [ctx.builder.cast(ctx.tensor(node, 0), like.dtype)]
    return [_cast_to(ctx.builder, ctx.tensor(node, 0), np.asarray(like).dtype, node)]
