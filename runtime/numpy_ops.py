"""The NumPy implementation of every primitive: the living definition of each op.

`IMPLS[op](node, args, out, env)` computes a node from its input arrays.
`out` is a preallocated array of the node's shape and dtype (the buffer plan
reuses buffers across steps); an implementation writes into it and returns
it.  Ops in `VIEW_OPS` return views of their input instead and are given no
buffer.  `env` maps symbolic dimensions to their sizes, plus the random
state (`seed`, `step`) for `rand`.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from dln.compiler.ir import DType, GroupOp, Node, Op
from dln.compiler.symbolic import evaluate
from dln.runtime import philox
from dln.runtime.checks import check_indices

NUMPY_DTYPES: dict[DType, np.dtype] = {
    DType.F16: np.dtype(np.float16),
    DType.BF16: np.dtype(np.float32),  # NumPy has no bfloat16: float32 arrays holding bf16 values (round_bf16)
    DType.F32: np.dtype(np.float32),
    DType.F64: np.dtype(np.float64),
    DType.I32: np.dtype(np.int32),
    DType.I64: np.dtype(np.int64),
    DType.BOOL: np.dtype(np.bool_),
}

Impl = Callable[[Node, list[np.ndarray], "np.ndarray | None", dict[str, Any]], np.ndarray]
IMPLS: dict[Op, Impl] = {}
VIEW_OPS = frozenset({Op.RESHAPE, Op.BROADCAST, Op.PERMUTE, Op.SLICE, Op.DETACH, Op.CONST, Op.INPUT})


HALF = frozenset({DType.BF16, DType.F16})


def round_bf16(a: np.ndarray) -> np.ndarray:
    """Round the float32 array `a` to bf16 values in place, as torch's float -> bfloat16 conversion does:
    to nearest, ties to even, on the top 16 bits (add 0x7FFF plus the lowest kept bit, drop the low
    half); infinities stay, NaN stays NaN (its carry could reach the sign bit: put back after)."""
    bits = np.atleast_1d(a).view(np.uint32)   # (a 0-d array as a 1-d view: ufuncs return arrays)
    nan = np.isnan(a)
    lsb = np.right_shift(bits, 16)
    np.bitwise_and(lsb, 1, out=lsb)
    lsb += 0x7FFF
    bits += lsb
    bits &= np.uint32(0xFFFF0000)
    if nan.any():
        a[nan] = np.nan
    return a


def bias_products(graph) -> frozenset[int]:
    """The half-precision products (matmul, convolution; bf16 or f16) whose one reader is an add of their
    type: torch's linear and convolutions add their bias to the float32 accumulator and round once (as a
    GPU kernel's epilogue does), so such a product is kept in float32, unrounded, and the add rounds."""
    users = graph.users()
    outputs = {i for _, i in graph.outputs}
    return frozenset(n.id for n in graph.nodes if n.op in GroupOp.Contraction and n.dtype in HALF
                     and n.id not in outputs and len(users[n.id]) == 1
                     and graph.node(users[n.id][0]).op is Op.ADD and graph.node(users[n.id][0]).dtype is n.dtype)


def rounds_bf16(node: Node, unrounded: frozenset[int] = frozenset()) -> bool:
    """Is the node's computed result rounded to bf16 (a bf16 node that is no view, no region, not a
    product its bias add rounds)?"""
    return node.dtype is DType.BF16 and node.op not in VIEW_OPS and not node.results and node.id not in unrounded


def bf16_rounded(node: Node, fn: Callable[[], Any], out: np.ndarray,
                 unrounded: frozenset[int] = frozenset()) -> Callable[[], Any]:
    """A planned step of a node, its result rounded to bf16 after it where `rounds_bf16` says."""
    if not rounds_bf16(node, unrounded):
        return fn

    def step() -> Any:
        fn()
        return round_bf16(out)
    return step


def concrete_shape(node: Node, env: dict[str, Any]) -> tuple[int, ...]:
    return tuple(evaluate(d, env) for d in node.shape)


def np_dtype(dtype: DType) -> np.dtype:
    return NUMPY_DTYPES[dtype]


def _alloc(node: Node, out: np.ndarray | None, env) -> np.ndarray:
    return out if out is not None else np.empty(concrete_shape(node, env), np_dtype(node.dtype))


def impl(*ops: Op):
    def register(fn: Impl) -> Impl:
        for op in ops:
            IMPLS[op] = fn
        return fn
    return register


# Ops that are one NumPy call `f(*inputs, out=buffer)` (the planned interpreter binds them directly).
UFUNCS: dict[Op, Callable] = {
    Op.NEG: np.negative, Op.EXP: np.exp, Op.LOG: np.log, Op.LOG1P: np.log1p, Op.SQRT: np.sqrt, Op.ABS: np.abs,
    Op.SIGN: np.sign, Op.SIN: np.sin, Op.COS: np.cos, Op.TANH: np.tanh, Op.NOT: np.logical_not,
    Op.ATAN: np.arctan, Op.FLOOR: np.floor,
    Op.ADD: np.add, Op.SUB: np.subtract, Op.MUL: np.multiply, Op.DIV: np.divide, Op.POW: np.power,
    Op.MOD: np.mod, Op.MAXIMUM: np.maximum, Op.MINIMUM: np.minimum, Op.LT: np.less, Op.LE: np.less_equal,
    Op.GT: np.greater, Op.GE: np.greater_equal, Op.EQ: np.equal, Op.NE: np.not_equal, Op.AND: np.logical_and,
    Op.OR: np.logical_or, Op.MATMUL: np.matmul,
}
# Reductions that are one NumPy call `f(x, axis=..., keepdims=..., out=buffer)`.
REDUCTIONS: dict[Op, Callable] = {Op.SUM: np.sum, Op.MAX: np.max, Op.MIN: np.min}
PAIRWISE: dict[Op, Callable] = {Op.SUM: np.add, Op.MAX: np.maximum, Op.MIN: np.minimum}

# NumPy reduces a short axis element by element (a pooling window's 4 or 9 values: ~15x slower than a
# pass per element of the axis); up to this length the reduction is that many whole-array passes.
SHORT_AXIS = 16


def short_axis_reduction(op: Op, x: np.ndarray, axes: tuple[int, ...], out: np.ndarray) -> Callable[[], None] | None:
    """`op` over one short axis of x as a few whole-array ufunc calls into `out`, or None where NumPy's own
    reduction is the better (or the only) way."""
    if len(axes) != 1 or not 2 <= x.shape[axes[0]] <= SHORT_AXIS or out.size == 0 or x.dtype != out.dtype \
            or x.dtype == np.bool_ or accumulate(op, x):
        return None
    axis = axes[0]
    # views of x (an integer index would give a 0-d copy, frozen at plan time)
    rest = x.shape[:axis] + x.shape[axis + 1:]
    parts = [x[(slice(None),) * axis + (slice(k, k + 1),)].reshape(rest) for k in range(x.shape[axis])]
    if not all(np.shares_memory(p, x) for p in parts):
        return None
    into = out.reshape(parts[0].shape)
    if not np.shares_memory(into, out):
        return None
    ufunc = PAIRWISE[op]

    def run() -> None:
        ufunc(parts[0], parts[1], out=into)
        for part in parts[2:]:
            ufunc(into, part, out=into)
    return run


def _ufunc(ufunc: Callable) -> Impl:
    def run(node, args, out, env):
        return ufunc(*args, out=_alloc(node, out, env))
    return run


for _op, _f in UFUNCS.items():
    IMPLS[_op] = _ufunc(_f)


@impl(Op.MATMUL)
def _matmul(node, args, out, env):
    """f16 products in float32, rounded once (NumPy's own f16 product has no BLAS and sums in f16)."""
    out = _alloc(node, out, env)
    return np.matmul(*args, out=out, dtype=np.float32 if args[0].dtype == np.float16 else None)


def _scipy_special(name: str) -> Callable:
    """scipy.special's ufuncs, imported on first use (scipy is slow to import)."""
    def run(node, args, out, env):
        from scipy import special

        return getattr(special, name)(*args, out=_alloc(node, out, env))
    return run


@impl(Op.SIGMOID)
def _sigmoid(node, args, out, env):
    """1 / (1 + exp(-x)), torch's formula: exact to an ulp, and for x far below 0 exp overflows to inf and
    the result is 0.  Four passes of NumPy are three times faster than scipy's expit (a scalar loop).
    In f16 exp(-x) overflows already at x < -11, where the result is still representable: expit there."""
    out = _alloc(node, out, env)
    if out.dtype == np.float16:
        from scipy import special

        return special.expit(args[0], out=out)
    with np.errstate(over="ignore"):        # exp(-x) = inf for x far below 0: the result is 0, as meant
        np.negative(args[0], out=out)
        np.exp(out, out=out)
        np.add(out, 1, out=out)
        return np.reciprocal(out, out=out)
IMPLS[Op.ERF] = _scipy_special("erf")


# ---- leaves ------------------------------------------------------------------------------------------------

@impl(Op.CONST)
def _const(node, args, out, env):
    value = np.array(node.attrs["value"], dtype=np_dtype(node.dtype))
    if node.dtype is DType.BF16:
        value = round_bf16(value.reshape(1)).reshape(())
    return np.broadcast_to(value, concrete_shape(node, env))


@impl(Op.IOTA)
def _iota(node, args, out, env):
    out = _alloc(node, out, env)
    out[...] = np.arange(out.shape[0], dtype=out.dtype)
    return out


@impl(Op.SYMSIZE)
def _symsize(node, args, out, env):
    out = _alloc(node, out, env)
    out[...] = evaluate(node.attrs["dim"], env)
    return out


@impl(Op.RAND)
def _rand(node, args, out, env):
    seed, step, *row = (int(a) for a in args)
    out = _alloc(node, out, env)
    # A third input counts from a global row (dln.compiler.passes.global_rows): the elements of the rows before.
    first = row[0] * (out.size // out.shape[0]) if row and out.size else 0
    out[...] = philox.uniform(seed & 0xFFFFFFFFFFFFFFFF, node.attrs["stream"], step, out.shape, first)
    return out


# ---- unary and ternary specials --------------------------------------------------------------------------

@impl(Op.RELU)
def _relu(node, args, out, env):
    return np.maximum(args[0], 0, out=_alloc(node, out, env))


@impl(Op.RSQRT)
def _rsqrt(node, args, out, env):
    out = np.sqrt(args[0], out=_alloc(node, out, env))
    return np.divide(1, out, out=out)


@impl(Op.CAST)
def _cast(node, args, out, env):
    out = _alloc(node, out, env)
    np.copyto(out, args[0], casting="unsafe")
    return out


@impl(Op.DETACH)
def _detach(node, args, out, env):
    return args[0]


@impl(Op.CHECK_INDEX)
def _check_index(node, args, out, env):
    check_indices(node, args[0], env)
    out = _alloc(node, out, env)
    np.copyto(out, args[0])
    return out


# The env key under which data-parallel training hands an executable its communicator
# (dln.runtime.distributed.Communicator): a callable (node, array, out) that sums the array across ranks.
COMMUNICATOR = "communicator"


@impl(Op.ALL_REDUCE)
def _all_reduce(node, args, out, env):
    out = _alloc(node, out, env)
    np.copyto(out, args[0])
    communicate = env.get(COMMUNICATOR)
    if communicate is not None:   # one process: the sum over one rank is the value itself
        communicate(node, out)
    return out


@impl(Op.WHERE)
def _where(node, args, out, env):
    cond, a, b = args
    out = _alloc(node, out, env)
    np.copyto(out, b)
    np.copyto(out, a, where=cond)
    return out


# ---- reductions ------------------------------------------------------------------------------------------------

def _reduction(fn: Callable) -> Impl:
    def run(node, args, out, env):
        return fn(args[0], axis=node.attrs["axes"], keepdims=node.attrs["keepdim"], out=_alloc(node, out, env),
                  **accumulate(node.op, args[0]))
    return run


def accumulate(op: Op, x: np.ndarray) -> dict[str, Any]:
    """A sum of f16 values accumulates in float32 and rounds once, as torch's (and a GPU kernel's) do;
    NumPy's own f16 sum rounds every partial sum."""
    return {"dtype": np.float32} if op is Op.SUM and x.dtype == np.float16 else {}


for _op, _f in REDUCTIONS.items():
    IMPLS[_op] = _reduction(_f)


@impl(Op.ARGMAX)
def _argmax(node, args, out, env):
    (axis,) = node.attrs["axes"]
    return np.argmax(args[0], axis=axis, keepdims=node.attrs["keepdim"], out=_alloc(node, out, env))


# ---- movement ----------------------------------------------------------------------------------------------------

@impl(Op.RESHAPE)
def _reshape(node, args, out, env):
    return np.reshape(args[0], concrete_shape(node, env))


@impl(Op.BROADCAST)
def _broadcast(node, args, out, env):
    return np.broadcast_to(args[0], concrete_shape(node, env))


@impl(Op.PERMUTE)
def _permute(node, args, out, env):
    return np.transpose(args[0], node.attrs["perm"])


@impl(Op.SLICE)
def _slice(node, args, out, env):
    index = tuple(slice(evaluate(a, env), evaluate(b, env), s)
                  for a, b, s in zip(node.attrs["starts"], node.attrs["stops"], node.attrs["steps"]))
    return args[0][index]


@impl(Op.PAD)
def _pad(node, args, out, env):
    out = _alloc(node, out, env)
    out.fill(node.attrs["value"])
    inner = tuple(slice(evaluate(lo, env), evaluate(lo, env) + d) for (lo, _), d in zip(node.attrs["pads"],
                                                                                         args[0].shape))
    out[inner] = args[0]
    return out


@impl(Op.CONCAT)
def _concat(node, args, out, env):
    return np.concatenate(args, axis=node.attrs["axis"], out=_alloc(node, out, env))


# ---- indexing -------------------------------------------------------------------------------------------------------

@impl(Op.GATHER)
def _gather(node, args, out, env):
    """torch.gather: out[i][j][k] = x[i][index[i][j][k]][k] (axis 1).  The index may be smaller than
    x on the other axes; every index must lie in 0 .. size - 1 of the gathered axis (no wrapping)."""
    x, index = args
    axis = node.attrs["axis"]
    size = x.shape[axis]
    if index.size and (index.min() < 0 or index.max() >= size):
        bad = index.min() if index.min() < 0 else index.max()
        raise IndexError(f"index {bad} is out of bounds for axis {axis} with size {size}")
    where = list(np.indices(index.shape, sparse=True))
    where[axis] = index
    out = _alloc(node, out, env)
    out[...] = x[tuple(where)]
    return out


@impl(Op.SCATTER_ADD)
def _scatter_add(node, args, out, env):
    index, src = args
    axis = node.attrs["axis"]
    out = _alloc(node, out, env)
    out.fill(0)
    where = list(np.indices(index.shape, sparse=True))
    where[axis] = index
    np.add.at(out, tuple(where), src)
    return out


# The convolutions: a module of their own (window views, GEMMs, buffers prepared once per plan).
from dln.runtime import numpy_conv  # noqa: E402,F401
