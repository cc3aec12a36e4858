"""Shape built-ins: reshape, transpose, permute, flatten, squeeze, concat, split,
pad, one_hot, gather, arange, matmul — torch's meanings, `axis` for `dim`."""

from __future__ import annotations

from dln.compiler.builtins import AXIS, DIM, DIMS, FLOAT, INT, SIZES, TENSOR, TENSORS, builtin
from dln.compiler.emit import Tensor
from dln.compiler.ir import DType, Op
from dln.compiler.symbolic import Dim, NotDivisible, Sym, dim_at_most, numel
from dln.compiler.values import TupleValue


def _axis(cx, x: Tensor, axis: int, extra: int = 0) -> int:
    rank = x.rank + extra
    if not -rank <= axis < rank:
        raise cx.fail("E0202", f"axis {axis} is out of range for {x.type}")
    return axis % rank


def _sizes(cx, shape: tuple[Dim, ...], what: str, keep: str) -> None:
    """Sizes written by the user: -1 (which `keep`s or infers a size) or not negative."""
    for d in shape:
        if d != -1 and dim_at_most(d, -1):
            raise cx.fail_at("shape", "E0208", f"{what}'s sizes must be -1 ({keep}) or at least 0, got {d}")


@builtin()
def reshape(cx, x: TENSOR, shape: DIMS):
    """x with a new shape of the same size; one entry may be -1"""
    _sizes(cx, shape, "reshape", "inferred")
    holes = [i for i, d in enumerate(shape) if d == -1]
    if len(holes) > 1:
        raise cx.fail_at("shape", "E0204", "reshape allows at most one -1")
    if holes:
        total, known = numel(x.shape), numel(tuple(d for d in shape if d != -1))
        try:
            if isinstance(total, int) and isinstance(known, int) and known and total % known:
                raise NotDivisible(f"{total} is not divisible by {known}")
            missing = total // known
        except (NotDivisible, ZeroDivisionError):
            written = "(" + ", ".join(str(d) for d in shape) + ")"
            divisor = f"({known})" if isinstance(known, Sym) and len(known.terms) > 1 else str(known)
            raise cx.fail("E0204", f"cannot reshape {x.type} to {written}: the -1 would be {total} / {divisor}, "
                                   "not a whole size") from None
        shape = tuple(missing if d == -1 else d for d in shape)
    return cx.b.reshape(x, shape)


@builtin()
def transpose(cx, x: TENSOR, a: INT, b: INT):
    """x with axes a and b swapped"""
    return cx.b.transpose(x, _axis(cx, x, a), _axis(cx, x, b))


@builtin()
def permute(cx, x: TENSOR, *axes: SIZES):
    """x with its axes reordered: permute(x, 0, 2, 1) or permute(x, (0, 2, 1))"""
    written: list[int] = []
    for a in axes:
        written += list(a) if isinstance(a, tuple) else [a]
    perm = [_axis(cx, x, a) for a in written]
    if sorted(perm) != list(range(x.rank)):
        raise cx.fail("E0202", f"{tuple(written)} is not a permutation of the axes of {x.type}")
    return cx.b.permute(x, perm)


@builtin()
def flatten(cx, x: TENSOR, start: INT = 1, end: INT = -1):
    """axes start..end merged into one (by default all but the batch axis)"""
    if x.rank == 0:
        return cx.b.reshape(x, (1,))
    s, e = _axis(cx, x, start), _axis(cx, x, end)
    if s > e:
        raise cx.fail("E0202", f"flatten's start axis {start} comes after its end axis {end}")
    merged = numel(x.shape[s:e + 1])
    return cx.b.reshape(x, x.shape[:s] + (merged,) + x.shape[e + 1:])


@builtin()
def squeeze(cx, x: TENSOR, axis: AXIS = None):
    """x without its size-1 axes (or only the given ones, if they have size 1)"""
    axes = cx.b.axes(x, axis)
    return cx.b.reshape(x, tuple(d for i, d in enumerate(x.shape) if not (i in axes and d == 1)))


@builtin()
def unsqueeze(cx, x: TENSOR, axis: INT):
    """x with a new axis of size 1 at position axis"""
    return cx.b.unsqueeze(x, _axis(cx, x, axis, extra=1))


@builtin()
def expand(cx, x: TENSOR, shape: DIMS):
    """x broadcast to shape; -1 keeps an axis"""
    _sizes(cx, shape, "expand", "keeps an axis")
    offset = len(shape) - x.rank
    if offset < 0:
        raise cx.fail("E0201", f"cannot expand {x.type} to fewer axes")
    if -1 in shape[:offset]:
        raise cx.fail_at("shape", "E0208", f"expand's -1 keeps an axis of {x.type}: a new leading axis needs a size")
    target = tuple(x.shape[i - offset] if d == -1 else d for i, d in enumerate(shape))
    return cx.b.broadcast_to(x, target)


@builtin()
def concat(cx, xs: TENSORS, axis: INT = 0):
    """the tensors joined along axis"""
    return cx.b.concat(xs, _axis(cx, xs[0], axis))


@builtin()
def split(cx, x: TENSOR, sizes: SIZES, axis: INT = 0):
    """pieces of the given size (or sizes) along axis, as a tuple"""
    axis = _axis(cx, x, axis)
    n = x.shape[axis]
    if isinstance(sizes, int):
        if not isinstance(n, int):
            raise cx.fail("E0202", f"split of the symbolic axis {n} needs explicit sizes")
        if sizes <= 0:
            raise cx.fail_at("sizes", "E0208", f"split size must be positive, got {sizes}")
        sizes = tuple(min(sizes, n - i) for i in range(0, n, sizes))
    elif any(s < 0 for s in sizes):
        raise cx.fail_at("sizes", "E0208", f"split sizes cannot be negative, got {sizes}")
    else:
        cx.b.unify(sum(sizes), n, "E0204", f"split sizes {sizes} do not add up to {n}")
    pieces, start = [], 0
    for s in sizes:
        pieces.append(cx.b.slice_axis(x, axis, start, start + s))
        start += s
    return TupleValue(tuple(pieces))


@builtin()
def chunk(cx, x: TENSOR, chunks: INT, axis: INT = 0):
    """x cut into `chunks` pieces along axis (the last may be smaller), as a tuple"""
    axis = _axis(cx, x, axis)
    n = x.shape[axis]
    if not isinstance(n, int):
        raise cx.fail("E0202", f"chunk of the symbolic axis {n} is not supported; use split with sizes")
    if chunks <= 0:
        raise cx.fail_at("chunks", "E0208", f"chunk count must be positive, got {chunks}")
    size = -(-n // chunks)
    return split(cx, x, size, axis)


@builtin()
def pad(cx, x: TENSOR, pads: SIZES, value: FLOAT = 0.0):
    """constant padding, torch.nn.functional.pad order: (left, right, top, bottom, ...) from the last axis"""
    pads = (pads,) if isinstance(pads, int) else pads
    if len(pads) % 2 or len(pads) // 2 > x.rank:
        raise cx.fail_at("pads", "E0208", f"pad needs pairs for at most {x.rank} axes, got {len(pads)} numbers")
    per_axis = [(0, 0)] * x.rank
    for i in range(len(pads) // 2):
        per_axis[x.rank - 1 - i] = (pads[2 * i], pads[2 * i + 1])
    if any(lo < 0 or hi < 0 for lo, hi in per_axis):
        raise cx.fail_at("pads", "E0208", "negative padding is not supported")
    return cx.b.pad(x, per_axis, value)


def class_indices(cx, indices: Tensor, classes: Dim, role: str) -> Tensor:
    """`indices`, checked by every run to lie in 0 .. classes - 1 (E0705 at this call otherwise):
    out of range, they would match no class and quietly count as nothing."""
    b = cx.b
    node = b.node(indices)
    # An input by its name, a value bound earlier by its binding; one computed in this very statement
    # carries the statement's name, which is not its own.
    name = node.attrs["name"] if node.op is Op.INPUT else node.name if node.name != b.label else ""
    with b.at(loc=cx.span):
        return b.check_index(indices, classes, f"{role} '{name}'" if name else role)


@builtin()
def one_hot(cx, x: TENSOR, n: INT):
    """class indices as one-hot vectors of length n (i64, as torch)"""
    if not x.dtype.is_int:
        raise cx.fail("E0206", f"one_hot needs integer class indices, got {x.type}")
    b = cx.b
    x = class_indices(cx, x, n, "one_hot's input")
    shape = x.shape + (n,)
    hot = b.compare(Op.EQ, b.broadcast_to(b.unsqueeze(x, -1), shape),
                    b.broadcast_to(b.cast(b.iota(n), x.dtype), shape))
    return b.cast(hot, DType.I64)


@builtin()
def gather(cx, x: TENSOR, axis: INT, index: TENSOR):
    """values of x at the indices along axis (torch.gather)"""
    return cx.b.gather(x, _axis(cx, x, axis), index)


@builtin()
def arange(cx, start: DIM, end: DIM = None, step: INT = 1):
    """start, start + step, ... below end; arange(n) counts from 0 (i64)"""
    b = cx.b
    if end is None:
        start, end = 0, start
    if step <= 0:
        raise cx.fail_at("step", "E0208", f"arange's step must be positive, got {step}")
    # torch: empty when end == start, an error when end comes before start.
    before = f"arange's end {end} comes before its start {start}"
    if dim_at_most(start, end) is False:
        raise cx.fail_at("end", "E0208", before)
    cx.b.at_most(start, end, "E0207", before)
    n = end - start
    if step != 1:
        if not isinstance(n, int):
            raise cx.fail("E0202", "arange with a step needs known bounds")
        n = -(-n // step)
    out = b.iota(n)
    if step != 1:
        out = b.mul(out, step)
    if start != 0:
        out = b.add(out, b.dim_value(start, DType.I64))
    return out


@builtin()
def matmul(cx, a: TENSOR, b: TENSOR):
    """the matrix product a @ b (torch.matmul)"""
    return cx.b.matmul(a, b)
