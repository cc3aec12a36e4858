"""Which Python numbers a constant of each element type can hold (a finite number beyond a float type's
range is a mistake, not an infinity), and how a number is written in a message."""

from __future__ import annotations

import math
from typing import Any

from dln.compiler.ir import DType


# The largest finite value of each float type, the range of each integer type.
_FLOAT_MAX = {DType.F16: 65504.0, DType.BF16: 3.3895313892515355e38, DType.F32: 3.4028234663852886e38,
              DType.F64: 1.7976931348623157e308}
_INT_RANGE = {DType.I32: (-2 ** 31, 2 ** 31 - 1), DType.I64: (-2 ** 63, 2 ** 63 - 1)}


def const_problem(value: Any, dtype: DType, what: str = "the constant") -> str | None:
    """Why a Python number cannot be a constant of `dtype` (it does not fit), or None.

    Infinities and NaN written on purpose are values of the float types; a finite
    number beyond a type's range is a mistake, not an infinity.
    """
    if dtype is DType.BOOL or isinstance(value, bool):
        return None
    if dtype.is_float:
        try:
            v = float(value)
        except OverflowError:
            v = math.inf
        if isinstance(value, int) or math.isfinite(v):
            if abs(v) > _FLOAT_MAX[dtype]:
                return f"{what} {_short(value)} does not fit in {dtype} (at most {_FLOAT_MAX[dtype]:.4g})"
        return None
    lo, hi = _INT_RANGE[dtype]
    if isinstance(value, float) and not math.isfinite(value):
        return f"{what} {value} is not a value of {dtype}"
    if not lo <= int(value) <= hi:
        return f"{what} {_short(value)} does not fit in {dtype} ({lo} .. {hi})"
    return None


def _short(value: Any) -> str:
    """A number for a message: huge integers by their size, not their 400 digits."""
    if isinstance(value, int) and abs(value) >= 10 ** 20:
        digits = str(abs(value))
        return f"{'-' if value < 0 else ''}{digits[0]}.{digits[1:4]}e{len(digits) - 1}"
    return f"{value:g}" if isinstance(value, float) else str(value)
