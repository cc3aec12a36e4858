"""The Triton lowering of each elementwise primitive: one entry per op.

`LOWER[op](node, args)` returns a Triton expression computing the node from
the expressions of its inputs.  Where Triton's interpreter lacks a function
(libdevice is compiled code), the generated module carries a small
`@triton.jit` helper built from core ops (`HELPERS`), numerically matched to
NumPy's result: tanh, log1p, atan, pow (and integer pow), the remainder with Python's sign, and the
Philox uniform draw that reproduces dln.runtime.philox bit for bit.
"""

from __future__ import annotations

from typing import Callable

from dln.compiler.ir import DType, GroupOp, Node, Op

TL_DTYPES = {
    DType.F16: "tl.float16", DType.BF16: "tl.bfloat16", DType.F32: "tl.float32", DType.F64: "tl.float64",
    DType.I32: "tl.int32", DType.I64: "tl.int64", DType.BOOL: "tl.int1",
}

# Values of these types are computed in fp32 and rounded back after each op (the emitter does it).
HALF_TYPES = frozenset({DType.F16, DType.BF16})

Lowering = Callable[[Node, list[str]], str]
LOWER: dict[Op, Lowering] = {}


def lower(*ops: Op):
    def register(fn: Lowering) -> Lowering:
        for op in ops:
            LOWER[op] = fn
        return fn
    return register


def _infix(symbol: str) -> Lowering:
    return lambda n, a: f"{a[0]} {symbol} {a[1]}"


def _call(fn: str) -> Lowering:
    return lambda n, a: f"{fn}({', '.join(a)})"


for _op, _sym in [(Op.ADD, "+"), (Op.SUB, "-"), (Op.MUL, "*"), (Op.LT, "<"), (Op.LE, "<="), (Op.GT, ">"),
                  (Op.GE, ">="), (Op.EQ, "=="), (Op.NE, "!=")]:
    LOWER[_op] = _infix(_sym)


def _logical(symbol: str) -> Lowering:
    # `!= 0` first: Triton's interpreter splats a scalar int1 (a hoisted comparison) to a float array,
    # which `&` then refuses; the comparison is free on a GPU.
    return lambda n, a: f"({a[0]} != 0) {symbol} ({a[1]} != 0)"


LOWER[Op.AND] = _logical("&")
LOWER[Op.OR] = _logical("|")

for _op, _fn in [(Op.EXP, "tl.exp"), (Op.LOG, "tl.log"), (Op.SQRT, "tl.sqrt"), (Op.RSQRT, "tl.rsqrt"),
                 (Op.ABS, "tl.abs"), (Op.SIN, "tl.sin"), (Op.COS, "tl.cos"), (Op.SIGMOID, "tl.sigmoid"),
                 (Op.ERF, "tl.erf"), (Op.TANH, "_tanh"), (Op.LOG1P, "_log1p"), (Op.FLOOR, "tl.floor"),
                 (Op.ATAN, "_atan")]:
    LOWER[_op] = _call(_fn)


@lower(Op.DIV)
def _div(n, a):
    return f"{a[0]} / {a[1]}"


@lower(Op.NEG)
def _neg(n, a):
    return f"-{a[0]}"


@lower(Op.NOT)
def _not(n, a):
    return f"{a[0]} == 0"


@lower(Op.RELU)
def _relu(n, a):
    return f"tl.where({a[0]} < 0, 0.0, {a[0]})"  # NaN stays NaN, as in torch


@lower(Op.SIGN)
def _sign(n, a):
    return f"tl.where({a[0]} > 0, 1, tl.where({a[0]} < 0, -1, 0)).to({TL_DTYPES[n.dtype]})"


@lower(Op.MAXIMUM)
def _maximum(n, a):
    return f"tl.maximum({a[0]}, {a[1]}, propagate_nan=tl.PropagateNan.ALL)"


@lower(Op.MINIMUM)
def _minimum(n, a):
    return f"tl.minimum({a[0]}, {a[1]}, propagate_nan=tl.PropagateNan.ALL)"


@lower(Op.POW)
def _pow(n, a):
    exponent = a[1]
    try:
        value = float(exponent)
    except ValueError:
        value = None
    if value == 2.0:
        return f"{a[0]} * {a[0]}"
    if value == 3.0:
        return f"{a[0]} * {a[0]} * {a[0]}"
    if value == 1.0:
        return a[0]
    if n.dtype.is_int:   # exact, wrapping as NumPy's integer power does
        return f"_ipow({_tensor(a[0], n)}, {_tensor(a[1], n)}, {8 * n.dtype.itemsize})"
    if value == 0.5:
        return f"tl.sqrt_rn({a[0]})"  # correctly rounded, as NumPy's power(x, 0.5)
    return f"_pow({_tensor(a[0], n)}, {_tensor(a[1], n)})"


@lower(Op.MOD)
def _mod(n, a):
    return f"_mod({_tensor(a[0], n)}, {_tensor(a[1], n)})"


def _tensor(arg: str, n: Node) -> str:
    """A literal operand as a 0-d tensor of the node's type: the helpers combine masks with `&`,
    which needs tensors on both sides."""
    try:
        float(arg)
    except ValueError:
        return arg
    return f"tl.full([], {arg}, {TL_DTYPES[n.dtype]})"


@lower(Op.WHERE)
def _where(n, a):
    return f"tl.where({a[0]}, {a[1]}, {a[2]})"


@lower(Op.CAST)
def _cast(n, a):
    return f"tl.cast({a[0]}, {TL_DTYPES[n.dtype]})"


@lower(Op.DETACH)
def _detach(n, a):
    return a[0]


@lower(Op.CHECK_INDEX)
def _check_index(n, a):
    return a[0]  # the Triton backend checks the indices after the step (dln.runtime.triton_backend)


HELPERS = '''
# Triton's interpreter (TRITON_INTERPRET=1) does no arithmetic on bf16: matrix products of half types
# take fp32 operands there (the products are exact; the GPU's tensor cores accumulate in fp32 too).
INTERPRETED = tl.constexpr(os.environ.get("TRITON_INTERPRET") == "1")


@triton.jit
def _tanh(x):
    # exp-based away from 0, Taylor near 0 (where 1 - exp(-2|x|) would cancel)
    ax = tl.abs(x)
    e = tl.exp(-2.0 * ax)
    t = (1.0 - e) / (1.0 + e)
    t = tl.where(x < 0, -t, t)
    x2 = x * x
    small = x * (1.0 - x2 * (0.3333333333333333 - x2 * (0.13333333333333333 - x2 * 0.05396825396825397)))
    return tl.where(ax < 0.15, small, t)


@triton.jit
def _log1p(x):
    # log(1 + x) without losing x when it is tiny (Goldberg's correction)
    u = 1.0 + x
    d = u - 1.0
    return tl.where(d == 0.0, x, tl.log(u) * (x / tl.where(d == 0.0, 1.0, d)))


@triton.jit
def _atan(x):
    # Cephes' atanf: the argument reduced to |z| <= tan(pi/8) around 0, pi/4 or pi/2, then an odd
    # polynomial (float32-accurate; an f64 kernel gets float32's ~1e-7 relative accuracy here)
    ax = tl.abs(x)
    big = ax > 2.414213562373095
    mid = ax > 0.41421356237309503
    base = tl.where(big, 1.5707963267948966, tl.where(mid, 0.7853981633974483, 0.0))
    z = tl.where(big, -1.0 / ax, tl.where(mid, (ax - 1.0) / (ax + 1.0), ax))
    z2 = z * z
    p = (((0.0805374449538 * z2 - 0.138776856032) * z2 + 0.199777106478) * z2 - 0.333329491539) * z2 * z + z
    r = base + p
    return tl.where(x < 0, -r, r)


@triton.jit
def _pow(x, y):
    # x ** y as NumPy computes it, with the sign of odd integer powers of negative x
    x, y = tl.broadcast(x, y)
    r = tl.exp(y * tl.log(tl.abs(x)))
    odd = (tl.abs(y % 2.0) == 1.0)
    r = tl.where((x < 0) & odd, -r, r)
    r = tl.where((x < 0) & (y != tl.floor(y)), float("nan"), r)
    r = tl.where(x == 0, tl.where(y > 0, 0.0, tl.where(y == 0, 1.0, float("inf"))), r)
    return tl.where(y == 0, 1.0, r)


@triton.jit
def _ipow(x, y, BITS: tl.constexpr):
    # integer x ** y (y >= 0) by squaring, one step per bit of the exponent (a loop, not unrolled: the
    # unrolled steps of int64 spill on sm_90)
    x, y = tl.broadcast(x, y)
    r = x * 0 + 1
    for _ in range(BITS - 1):
        r = tl.where((y & 1) != 0, r * x, r)
        x = x * x
        y = y >> 1
    return r


@triton.jit
def _mod(x, y):
    # the remainder with the sign of the divisor, as Python, NumPy and torch.remainder
    x, y = tl.broadcast(x, y)
    r = x % y
    return tl.where((r != 0) & ((r < 0) != (y < 0)), r + y, r)


@triton.jit
def _uniform(seed, offset, stream, step):
    # U[0, 1) from Philox-4x32-10 at counter (offset, stream, step, 0): dln.runtime.philox
    r, _, _, _ = tl.philox(seed, offset.to(tl.uint32), stream, step.to(tl.uint32), 0)
    x = r.to(tl.int32, bitcast=True)
    x = tl.where(x < 0, ~x, x)
    return x.to(tl.float32) * 4.6566127342e-10
'''


def missing_lowerings() -> list[Op]:
    return [op for op in GroupOp.Elementwise if op not in LOWER]
