"""Converters for ONNX's bitwise ops: BitwiseAnd, BitwiseOr, BitwiseXor, BitwiseNot, BitShift.

dln's IR has no bitwise primitive, and needs none elsewhere: these are arithmetic on the bits.  A
value (int64, as convert.py holds every integer type narrower than 64 bits and uint64) is cut into
its 32-bit halves, low = x mod 2**32 and high = (x - low) / 2**32 — exact in float64, a multiple of
2**32 below 2**63 in size — and each half into its 32 bits, bit k = (h mod 2**(k+1)) >= 2**k, on a
new last axis of 64.  Then

* and(a, b) = sum over k of a_k b_k 2**k (2**63 is int64's -2**63: the sum is the two's complement);
* or(a, b) = a + b - and(a, b), xor(a, b) = a + b - 2 and(a, b) (exact modulo 2**64, as int64 wraps);
* not(a) = -1 - a;
* a left shift by s: a 2**s (wrapping); a right shift, arithmetic as onnx's reference (since opset
  25 BitShift takes signed types): the sum over k >= s of a_k 2**(k - s), plus the sign's copies in
  the top s bits.

What dln's generator draws with (dln.runtime.onnx.export_random: Philox in uint64 words) runs so,
bit for bit.  Known limits, of computing the narrow and unsigned types in int64 (convert.py): a
uint64 at 2**63 or more is negative here, so its right shift fills in ones (dln's generator masks
every shifted word to 32 bits, which makes that immaterial); a narrow value shifted left past its
width keeps the high bits until the graph's output narrows it back.
"""

from __future__ import annotations

import numpy as np

from dln.compiler.emit import GraphBuilder, Tensor
from dln.compiler.ir import DType, Op
from dln.runtime.onnx.convert import Context, OnnxNode, UnsupportedOnnx, converter

WORD = 2 ** 32


def _integer(ctx: Context, node: OnnxNode, i: int) -> Tensor:
    x = ctx.tensor(node, i)
    if x.dtype not in (DType.I32, DType.I64):
        raise UnsupportedOnnx(node, f"{node.op_type} of {x.dtype} (ONNX defines it for integer types)")
    return x


def bits(ctx: Context, x: Tensor) -> Tensor:
    """The 64 bits of int64 `x`, lowest first, as 0/1 int64 on a new last axis."""
    b = ctx.builder
    low = b.mod(x, WORD)
    high = b.mod(b.cast(b.div(b.cast(b.sub(x, low), DType.F64), float(WORD)), DType.I64), WORD)
    powers = np.array([2 ** k for k in range(32)], np.int64)
    place, step = ctx.as_tensor(powers), ctx.as_tensor(powers * 2)
    halves = [b.cast(b.compare(Op.GE, b.mod(b.unsqueeze(h, -1), step), place), DType.I64) for h in (low, high)]
    return b.concat(halves, axis=-1)


def weights(ctx: Context) -> Tensor:
    """2**k for k = 0 .. 63, int64 (2**63 wrapped to -2**63)."""
    return ctx.as_tensor(np.array([1 << k for k in range(64)], np.uint64).view(np.int64))


def _and(ctx: Context, a: Tensor, b_: Tensor) -> Tensor:
    b = ctx.builder
    return b.sum(b.mul(b.mul(bits(ctx, a), bits(ctx, b_)), weights(ctx)), axis=-1)


def _wide(b: GraphBuilder, x: Tensor) -> Tensor:
    return x if x.dtype is DType.I64 else b.cast(x, DType.I64)


@converter("BitwiseAnd", "BitwiseOr", "BitwiseXor")
def bitwise(ctx: Context, node: OnnxNode) -> list:
    b = ctx.builder
    x, y = _integer(ctx, node, 0), _integer(ctx, node, 1)
    dtype = x.dtype
    x, y = _wide(b, x), _wide(b, y)
    both = _and(ctx, x, y)
    out = {"BitwiseAnd": lambda: both, "BitwiseOr": lambda: b.sub(b.add(x, y), both),
           "BitwiseXor": lambda: b.sub(b.add(x, y), b.mul(both, 2))}[node.op_type]()
    return [out if dtype is DType.I64 else b.cast(out, dtype)]


@converter("BitwiseNot")
def bitwise_not(ctx: Context, node: OnnxNode) -> list:
    b = ctx.builder
    x = _integer(ctx, node, 0)
    return [b.sub(b.const(-1, x.dtype), x)]


@converter("BitShift")
def bit_shift(ctx: Context, node: OnnxNode) -> list:
    """x << s is x 2**s, wrapping; x >> s is arithmetic (the sign fills in), from the bits; a shift by
    less than 0 or by the type's width or more is 0 (or -1, right, for x < 0), as onnx's reference."""
    b = ctx.builder
    direction = node.attr("direction")
    if direction not in ("LEFT", "RIGHT"):
        raise UnsupportedOnnx(node, f"direction {direction!r} (LEFT or RIGHT)")
    x, s = _integer(ctx, node, 0), _integer(ctx, node, 1)
    dtype, width = x.dtype, 32 if x.dtype is DType.I32 else 64
    x, s = _wide(b, x), _wide(b, s)
    valid = b.logical(Op.AND, b.compare(Op.GE, s, 0), b.compare(Op.LT, s, width))
    amount = b.minimum(b.maximum(s, 0), 63)
    negative = b.compare(Op.LT, x, 0)
    if direction == "LEFT":
        out = b.where(valid, b.mul(x, b.pow(b.const(2, DType.I64), amount)), 0)
    else:
        k = b.sub(ctx.as_tensor(np.arange(64, dtype=np.int64)), b.unsqueeze(amount, -1))   # bit k lands at k - s
        kept = b.where(b.compare(Op.GE, k, 0), b.pow(b.const(2, DType.I64), b.maximum(k, 0)), 0)
        logical = b.sum(b.mul(bits(ctx, x), kept), axis=-1)
        # The sign's copies in the top s bits: -2**(64 - s) (2**63 wraps to itself negated, as it should).
        fill = b.neg(b.pow(b.const(2, DType.I64), b.sub(64, b.maximum(amount, 1))))
        shifted = b.add(logical, b.where(b.logical(Op.AND, negative, b.compare(Op.GT, amount, 0)), fill, 0))
        out = b.where(valid, shifted, b.where(negative, -1, 0))
    return [out if dtype is DType.I64 else b.cast(out, dtype)]
