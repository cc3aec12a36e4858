"""Triton's interpreter (TRITON_INTERPRET=1), made to convert float32 to bf16 as a GPU does.

A GPU's `x.to(tl.bfloat16)` rounds to nearest, ties to even (`cvt.rn.bf16.f32`); the
interpreter of Triton 3.x truncates (`InterpreterBuilder.cast_impl` passes no rounding
mode to its bit-level converter), so every bf16 result of an interpreted kernel is biased
toward zero by up to one unit in the last place.  In a backward pass of many such
roundings that bias is no longer small: a bf16-mixed gradient came out 16% off the NumPy
backend's (which rounds as torch does, dln.runtime.numpy_ops.round_bf16).  The tests
check the Triton backend's numerics under the interpreter, so it must round as the GPU
would: `faithful_bf16` replaces that one conversion, once, and leaves every other cast
to the interpreter.
"""

from __future__ import annotations

import numpy as np

_INSTALLED = False


def faithful_bf16() -> None:
    """Make the interpreter's float32 -> bf16 conversion round to nearest even (idempotent)."""
    global _INSTALLED
    if _INSTALLED:
        return
    import triton.language as tl
    from triton.runtime import interpreter

    builder = interpreter.InterpreterBuilder
    original = builder.cast_impl

    def cast_impl(self, src, dst_type):
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
            from dln.runtime.numpy_ops import round_bf16

            rounded = round_bf16(np.array(src.data, dtype=np.float32))
            # the interpreter holds bf16 as the top half of the float32 bits, in uint16
            return interpreter.TensorHandle((rounded.view(np.uint32) >> 16).astype(np.uint16), dst_type.scalar)
        return original(self, src, dst_type)

    builder.cast_impl = cast_impl
    _INSTALLED = True
