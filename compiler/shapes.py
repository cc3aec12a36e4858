"""Shape and element-type rules: one entry per primitive.

`SHAPE_RULES[op](cx, types, attrs) -> TensorType` computes a node's type from
its inputs' types.  Rules never guess: dimensions that must agree go through
`cx.unify`, which passes when they are provably equal, raises `ShapeError`
when provably different, and otherwise records a `Constraint` that the
runtime checks once the inputs bind the symbols.
"""

from __future__ import annotations

from typing import Callable

from dln.compiler.ir import Attrs, Constraint, DType, GroupOp, Op, TensorType
from dln.compiler.symbolic import Dim, NotDivisible, Shape, dim_at_most, dims_equal, format_shape, numel


class ShapeError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ShapeContext:
    """Collects the constraints that can only be checked when inputs arrive."""

    def __init__(self) -> None:
        self.constraints: list[Constraint] = []
        self.loc = None

    def unify(self, a: Dim, b: Dim, code: str, message: str) -> Dim:
        same = dims_equal(a, b)
        if same is False:
            raise ShapeError(code, message)
        if same is None:
            self.constraints.append(Constraint(a, b, message, self.loc))
        return a if isinstance(a, int) or not isinstance(b, int) else b

    def at_most(self, a: Dim, b: Dim, code: str, message: str) -> None:
        """a <= b, like `unify`: proven, refuted (ShapeError), or a constraint on the inputs."""
        known = dim_at_most(a, b)
        if known is False:
            raise ShapeError(code, message)
        if known is None:
            self.constraints.append(Constraint(a, b, message, self.loc, "<=", code))


Rule = Callable[[ShapeContext, list[TensorType], Attrs], TensorType]
SHAPE_RULES: dict[Op, Rule] = {}


def rule(*ops: Op):
    def register(fn: Rule) -> Rule:
        for op in ops:
            SHAPE_RULES[op] = fn
        return fn
    return register


def _fmt(t: TensorType) -> str:
    return format_shape(t.shape)


# ---- leaves: their type is given when they are made ---------------------------------

@rule(*GroupOp.Leaf)
def _leaf(cx, types, attrs):
    return attrs["type"]


# ---- elementwise --------------------------------------------------------------------------

@rule(*(GroupOp.Unary - {Op.CAST, Op.NOT}))
def _unary(cx, types, attrs):
    (x,) = types
    return x


@rule(Op.ALL_REDUCE)
def _all_reduce(cx, types, attrs):
    (x,) = types
    if not x.dtype.is_float:
        raise ShapeError("E0206", f"all_reduce sums floating-point values, got {x}")
    return x


@rule(Op.NOT)
def _not(cx, types, attrs):
    (x,) = types
    if x.dtype is not DType.BOOL:
        raise ShapeError("E0206", f"'not' needs a bool tensor, got {x}")
    return x


@rule(Op.CAST)
def _cast(cx, types, attrs):
    return TensorType(attrs["dtype"], types[0].shape)


def same_shape(cx: ShapeContext, a: Shape, b: Shape, what: str) -> Shape:
    if len(a) != len(b):
        raise ShapeError("E0201", f"{what}: shapes {format_shape(a)} and {format_shape(b)} differ in rank")
    if all(x == y for x, y in zip(a, b)):  # the common case; the message is written only when needed
        return tuple(a)
    message = f"{what}: shapes {format_shape(a)} and {format_shape(b)} do not match"
    return tuple(cx.unify(x, y, "E0201", message) for x, y in zip(a, b))


@rule(*GroupOp.Binary)
def _binary(cx, types, attrs):
    a, b = types
    if a.dtype is not b.dtype:
        raise ShapeError("E0206", f"element types differ: {a} and {b}")
    return TensorType(a.dtype, same_shape(cx, a.shape, b.shape, "elementwise operands"))


def _compare_rule(cx, types, attrs):
    a, b = types
    if a.dtype is not b.dtype:
        raise ShapeError("E0206", f"element types differ: {a} and {b}")
    return TensorType(DType.BOOL, same_shape(cx, a.shape, b.shape, "comparison operands"))


for _op in GroupOp.Compare:
    SHAPE_RULES[_op] = _compare_rule


def _logical_rule(cx, types, attrs):
    a, b = types
    if a.dtype is not DType.BOOL or b.dtype is not DType.BOOL:
        raise ShapeError("E0206", f"'and'/'or' need bool tensors, got {a} and {b}")
    return TensorType(DType.BOOL, same_shape(cx, a.shape, b.shape, "logical operands"))


SHAPE_RULES[Op.AND] = SHAPE_RULES[Op.OR] = _logical_rule


@rule(Op.WHERE)
def _where(cx, types, attrs):
    c, a, b = types
    if c.dtype is not DType.BOOL:
        raise ShapeError("E0206", f"where's condition must be bool, got {c}")
    if a.dtype is not b.dtype:
        raise ShapeError("E0206", f"where's branches differ in element type: {a} and {b}")
    shape = same_shape(cx, c.shape, a.shape, "where")
    shape = same_shape(cx, shape, b.shape, "where")
    return TensorType(a.dtype, shape)


# ---- reductions -----------------------------------------------------------------------------

def reduced_shape(shape: Shape, axes: tuple[int, ...], keepdim: bool) -> Shape:
    if keepdim:
        return tuple(1 if i in axes else d for i, d in enumerate(shape))
    return tuple(d for i, d in enumerate(shape) if i not in axes)


@rule(Op.SUM, Op.MAX, Op.MIN)
def _reduce(cx, types, attrs):
    (x,) = types
    axes = attrs["axes"]
    for a in axes:
        if not 0 <= a < x.rank:
            raise ShapeError("E0202", f"axis {a} is out of range for a tensor of rank {x.rank}")
    return TensorType(x.dtype, reduced_shape(x.shape, axes, attrs["keepdim"]))


@rule(Op.ARGMAX)
def _argmax(cx, types, attrs):
    return TensorType(DType.I64, _reduce(cx, types, attrs).shape)


# ---- movement ----------------------------------------------------------------------------------

@rule(Op.RESHAPE)
def _reshape(cx, types, attrs):
    (x,) = types
    shape = attrs["shape"]
    cx.unify(numel(x.shape), numel(shape), "E0204",
             f"cannot reshape {_fmt(x)} to {format_shape(shape)}: the number of elements differs")
    return TensorType(x.dtype, shape)


@rule(Op.BROADCAST)
def _broadcast(cx, types, attrs):
    (x,) = types
    shape = attrs["shape"]
    if x.rank > len(shape):
        raise ShapeError("E0201", f"cannot broadcast {_fmt(x)} to {format_shape(shape)}")
    offset = len(shape) - x.rank
    for i, d in enumerate(x.shape):
        if d != 1:
            cx.unify(d, shape[offset + i], "E0201", f"cannot broadcast {_fmt(x)} to {format_shape(shape)}")
    return TensorType(x.dtype, shape)


@rule(Op.PERMUTE)
def _permute(cx, types, attrs):
    (x,) = types
    perm = attrs["perm"]
    if sorted(perm) != list(range(x.rank)):
        raise ShapeError("E0202", f"{tuple(perm)} is not a permutation of the {x.rank} axes of {_fmt(x)}")
    return TensorType(x.dtype, tuple(x.shape[p] for p in perm))


def slice_length(start: Dim, stop: Dim, step: int) -> Dim:
    n = stop - start
    if step == 1:
        return n
    if isinstance(n, int):
        return max(0, -(-n // step))
    try:
        return (n + (step - 1)) // step
    except NotDivisible:
        raise ShapeError("E0207", f"a slice with step {step} over a symbolic length {n} is not supported") from None


@rule(Op.SLICE)
def _slice(cx, types, attrs):
    (x,) = types
    starts, stops, steps = attrs["starts"], attrs["stops"], attrs["steps"]
    if not (len(starts) == len(stops) == len(steps) == x.rank):
        raise ShapeError("E0202", f"slice needs one range per axis of {_fmt(x)}")
    return TensorType(x.dtype, tuple(slice_length(a, b, s) for a, b, s in zip(starts, stops, steps)))


@rule(Op.PAD)
def _pad(cx, types, attrs):
    (x,) = types
    pads = attrs["pads"]
    if len(pads) != x.rank:
        raise ShapeError("E0202", f"pad needs one (before, after) pair per axis of {_fmt(x)}")
    return TensorType(x.dtype, tuple(d + lo + hi for d, (lo, hi) in zip(x.shape, pads)))


@rule(Op.CONCAT)
def _concat(cx, types, attrs):
    axis = attrs["axis"]
    first = types[0]
    if not 0 <= axis < first.rank:
        raise ShapeError("E0202", f"axis {axis} is out of range for a tensor of rank {first.rank}")
    total: Dim = 0
    shape = list(first.shape)
    for t in types:
        if t.rank != first.rank:
            raise ShapeError("E0202", f"concat needs tensors of equal rank, got {_fmt(first)} and {_fmt(t)}")
        if t.dtype is not first.dtype:
            raise ShapeError("E0206", f"concat needs equal element types, got {first} and {t}")
        for i, (a, b) in enumerate(zip(shape, t.shape)):
            if i != axis:
                shape[i] = cx.unify(a, b, "E0201", f"concat: shapes {_fmt(first)} and {_fmt(t)} differ "
                                                   f"outside axis {axis}")
        total = total + t.shape[axis]
    shape[axis] = total
    return TensorType(first.dtype, tuple(shape))


# ---- indexing -----------------------------------------------------------------------------------

@rule(Op.GATHER)
def _gather(cx, types, attrs):
    x, index = types
    if not index.dtype.is_int:
        raise ShapeError("E0206", f"gather's index must be an integer tensor, got {index}")
    if index.rank != x.rank:
        raise ShapeError("E0202", f"gather's index must have the rank of the input: {_fmt(x)} and {_fmt(index)}")
    for d, (i, n) in enumerate(zip(index.shape, x.shape)):
        if d != attrs["axis"]:
            cx.at_most(i, n, "E0207", f"gather's index {_fmt(index)} is larger than the input {_fmt(x)} on axis {d}")
    return TensorType(x.dtype, index.shape)


@rule(Op.SCATTER_ADD)
def _scatter_add(cx, types, attrs):
    index, src = types
    same_shape(cx, index.shape, src.shape, "scatter_add")
    return TensorType(src.dtype, attrs["shape"])


# ---- contraction ---------------------------------------------------------------------------------

@rule(Op.MATMUL)
def _matmul(cx, types, attrs):
    a, b = types
    if a.rank < 2 or a.rank != b.rank:
        raise ShapeError("E0203", f"matmul needs operands of equal rank >= 2, got {_fmt(a)} and {_fmt(b)}")
    if a.dtype is not b.dtype:
        raise ShapeError("E0206", f"matrix product of different element types: {a} and {b}")
    batch = tuple(cx.unify(x, y, "E0203", f"matrix product needs matching batch dimensions: {_fmt(a)} @ {_fmt(b)}")
                  for x, y in zip(a.shape[:-2], b.shape[:-2]))
    cx.unify(a.shape[-1], b.shape[-2], "E0203",
             f"matrix product needs matching inner dimensions: {_fmt(a)} @ {_fmt(b)}")
    return TensorType(a.dtype, batch + (a.shape[-2], b.shape[-1]))


# ---- convolution ---------------------------------------------------------------------------------

def conv_output_size(size: Dim, kernel: int, stride: int, pad: tuple[int, int], dilation: int) -> Dim:
    """torch's output length: (size + lo + hi - dilation * (kernel - 1) - 1) // stride + 1."""
    span = size + pad[0] + pad[1] - dilation * (kernel - 1)
    if stride == 1:
        return span
    if isinstance(span, int):
        return (span - 1) // stride + 1
    raise ShapeError("E0207", f"a convolution with stride {stride} over a symbolic length {size} is not supported")


def conv_transpose_size(size: Dim, kernel: int, stride: int, pad: tuple[int, int], dilation: int,
                        output_padding: int) -> Dim:
    """The length a transposed convolution makes of `size`: the conv length rule solved for the input."""
    return (size - 1) * stride - pad[0] - pad[1] + dilation * (kernel - 1) + 1 + output_padding


def _conv_attrs(attrs: Attrs, x: TensorType, what: str) -> int:
    rank = len(attrs["stride"])
    if x.rank != rank + 2:
        raise ShapeError("E0202", f"{what} over {rank} axes needs [B, C, {rank} sizes], got {_fmt(x)}")
    return rank


def _conv_channels(cx, x_channels: Dim, w: TensorType, groups: int, what: str) -> None:
    cx.unify(x_channels, w.shape[1] * groups, "E0201",
             f"{what}: {x_channels} input channels, but the weight {_fmt(w)} takes {w.shape[1]} per group "
             f"x {groups} group{'s' if groups != 1 else ''}")


def _positive_length(cx, n: Dim, what: str, why: str = "the window is larger than the padded input") -> None:
    cx.at_most(1, n, "E0209", f"{what}: {why}")


@rule(Op.CONV)
def _conv(cx, types, attrs):
    x, w = types
    rank = _conv_attrs(attrs, x, "conv")
    if w.rank != x.rank or x.dtype is not w.dtype:
        raise ShapeError("E0206", f"conv needs an input and a weight of one type and rank: {_fmt(x)}, {_fmt(w)}")
    _conv_channels(cx, x.shape[1], w, attrs["groups"], "conv")
    out = []
    for a in range(rank):
        n = conv_output_size(x.shape[2 + a], w.shape[2 + a], attrs["stride"][a], attrs["padding"][a],
                             attrs["dilation"][a])
        _positive_length(cx, n, "conv")
        out.append(n)
    return TensorType(x.dtype, (x.shape[0], w.shape[0], *out))


@rule(Op.CONV_TRANSPOSE)
def _conv_transpose(cx, types, attrs):
    y, w = types
    rank = _conv_attrs(attrs, y, "conv_transpose")
    if w.rank != y.rank or y.dtype is not w.dtype:
        raise ShapeError("E0206", f"conv_transpose needs an input and a weight of one type and rank: "
                                  f"{_fmt(y)}, {_fmt(w)}")
    cx.unify(y.shape[1], w.shape[0], "E0201", f"conv_transpose: {y.shape[1]} input channels, but the weight "
                                              f"{_fmt(w)} takes {w.shape[0]}")
    out = []
    for a in range(rank):
        n = conv_transpose_size(y.shape[2 + a], w.shape[2 + a], attrs["stride"][a], attrs["padding"][a],
                                attrs["dilation"][a], attrs["output_padding"][a])
        _positive_length(cx, n, "conv_transpose", "its padding removes every row of the output on an axis")
        out.append(n)
    return TensorType(y.dtype, (y.shape[0], w.shape[1] * attrs["groups"], *out))


@rule(Op.CONV_WEIGHT)
def _conv_weight(cx, types, attrs):
    x, dy = types
    rank = _conv_attrs(attrs, x, "conv_weight")
    if dy.rank != x.rank or x.dtype is not dy.dtype:
        raise ShapeError("E0206", f"conv_weight needs operands of one type and rank: {_fmt(x)}, {_fmt(dy)}")
    groups, kernel = attrs["groups"], attrs["kernel"]
    cx.unify(x.shape[0], dy.shape[0], "E0201", f"conv_weight: batches differ: {_fmt(x)} and {_fmt(dy)}")
    for a in range(rank):
        n = conv_output_size(x.shape[2 + a], kernel[a], attrs["stride"][a], attrs["padding"][a],
                             attrs["dilation"][a])
        cx.unify(dy.shape[2 + a], n, "E0201", f"conv_weight: {_fmt(dy)} is not the output of {_fmt(x)}")
    for what, c in (("input", x.shape[1]), ("output", dy.shape[1])):
        if isinstance(c, int) and c % groups:
            raise ShapeError("E0201", f"conv_weight: {c} {what} channels do not split into {groups} groups")
    return TensorType(x.dtype, (dy.shape[1], x.shape[1] // groups, *kernel))


# ---- regions -----------------------------------------------------------------------------------------

def _agree(cx, outer: TensorType, inner: TensorType, what: str) -> None:
    if outer.dtype is not inner.dtype or outer.rank != inner.rank:
        raise ShapeError("E0201", f"scan: {what} is {outer} but the body takes {inner}")
    for a, b in zip(outer.shape, inner.shape):
        cx.unify(a, b, "E0201", f"scan: {what} is {outer} but the body takes {inner}")


@rule(Op.SCAN)
def _scan(cx, types, attrs):
    """(final carries..., stacked ys...): see Op.SCAN."""
    body = attrs["body"]
    n_carry, n_xs, length = attrs["carries"], attrs["xs"], attrs["length"]
    params = body.inputs
    if len(params) != len(types):
        raise ShapeError("E0201", f"scan: {len(types)} operands for a body of {len(params)} inputs")
    if len(body.outputs) < n_carry:
        raise ShapeError("E0201", f"scan: a body of {len(body.outputs)} outputs for {n_carry} carries")
    for k, (t, p) in enumerate(zip(types, params)):
        if n_carry <= k < n_carry + n_xs:
            if t.rank == 0:
                raise ShapeError("E0201", f"scan: the scanned operand {k} is a scalar")
            cx.unify(t.shape[0], length, "E0201", f"scan: operand {k} has {t.shape[0]} steps, not {length}")
            t = TensorType(t.dtype, t.shape[1:])
        _agree(cx, t, p.type, f"operand {k}")
    outs = [body.node(i).type for _, i in body.outputs]
    for k in range(n_carry):
        _agree(cx, types[k], outs[k], f"carry {k}'s new value")
    return tuple(types[:n_carry]) + tuple(TensorType(t.dtype, (length,) + t.shape) for t in outs[n_carry:])


@rule(Op.RESULT)
def _result(cx, types, attrs):
    """`types` are every result of the producer (see operand_types)."""
    index = attrs["index"]
    if not 0 <= index < len(types):
        raise ShapeError("E0201", f"result {index} of a node with {len(types)} results")
    return types[index]


@rule(Op.COMPOSITE)
def _composite(cx, types, attrs):
    """The composite's own rule (dln.compiler.composites)."""
    from dln.compiler.composites import COMPOSITES

    return COMPOSITES[attrs["composite"]].infer(cx, types, attrs)


def operand_types(op: Op, inputs) -> list[TensorType]:
    """What a shape rule sees of its operand nodes: their types; for `result`, every result of its producer."""
    if op is Op.RESULT:
        return list(inputs[0].types)
    return [n.type for n in inputs]


def missing_rules() -> list[Op]:
    return [op for op in Op if op not in SHAPE_RULES]
