"""Index expressions: where a value is read, as a function of a kernel's loop indices.

A fused kernel evaluates each node *at an index*: a tuple with one expression
per axis of the node's shape, built from the kernel's index variables.  Views
(reshape, permute, broadcast, slice) never move data: `view_index` rewrites
the index instead, so a transposed weight is a strided read and a broadcast
bias a read that ignores the batch axis.  The planner uses the same
expressions to decide whether two nodes meet at the same index (legality);
the code generator renders them as Triton integer arithmetic.

Expressions are small immutable trees, simplified as they are built, using
each variable's known extent (`i % n` is `i` when i < n).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from dln.compiler.ir import Node, Op
from dln.compiler.symbolic import Dim, NotDivisible, Shape, dims_equal


class Ix:
    """An integer index expression."""

    __slots__ = ()

    def __add__(self, other: "Ix | Dim") -> "Ix":
        return add(self, lit(other) if not isinstance(other, Ix) else other)

    def __mul__(self, k: Dim) -> "Ix":
        return mul(self, k)


@dataclass(frozen=True, slots=True)
class Var(Ix):
    name: str
    extent: Dim            # values are in [0, extent)


@dataclass(frozen=True, slots=True)
class Lit(Ix):
    value: Dim             # an int or a symbolic size


@dataclass(frozen=True, slots=True)
class Add(Ix):
    terms: tuple[Ix, ...]


@dataclass(frozen=True, slots=True)
class Mul(Ix):
    x: Ix
    k: Dim


@dataclass(frozen=True, slots=True)
class Div(Ix):
    x: Ix
    k: Dim


@dataclass(frozen=True, slots=True)
class Mod(Ix):
    x: Ix
    k: Dim


@dataclass(frozen=True, slots=True)
class Load(Ix):
    """A value read from a tensor and used as an index (gather): opaque here."""

    node: int
    index: tuple[Ix, ...]


Index = tuple[Ix, ...]
ZERO = Lit(0)


def lit(v: Dim) -> Lit:
    return Lit(v)


def is_zero(x: Ix) -> bool:
    return isinstance(x, Lit) and isinstance(x.value, int) and x.value == 0


def add(*xs: Ix) -> Ix:
    terms: list[Ix] = []
    const: Dim = 0
    for x in xs:
        parts = x.terms if isinstance(x, Add) else (x,)
        for p in parts:
            if isinstance(p, Lit):
                const = const + p.value
            else:
                terms.append(p)
    terms = _recombine(terms)
    if not isinstance(const, int) or const != 0:
        terms.append(Lit(const))
    if not terms:
        return ZERO
    return terms[0] if len(terms) == 1 else Add(tuple(terms))


def _coefficient(t: Ix) -> tuple[Ix, Dim]:
    return (t.x, t.k) if isinstance(t, Mul) else (t, 1)


def _recombine(terms: list[Ix]) -> list[Ix]:
    """(x // k) * (c * k) + (x % k) * c  ->  x * c: undoes a reshape's split of an axis."""
    changed = True
    while changed:
        changed = False
        for a in terms:
            base, c = _coefficient(a)
            if not isinstance(base, Mod):
                continue
            partner = div(base.x, base.k)
            for b in terms:
                other, ck = _coefficient(b)
                if other == partner and dims_equal(ck, c * base.k) is True:
                    terms = _flatten([t for t in terms if t is not a and t is not b] + [mul(base.x, c)])
                    changed = True
                    break
            if changed:
                break
    return terms


def _flatten(terms: list[Ix]) -> list[Ix]:
    out: list[Ix] = []
    for t in terms:
        out.extend(t.terms if isinstance(t, Add) else (t,))
    return out


def mul(x: Ix, k: Dim) -> Ix:
    if isinstance(k, int) and k == 0 or is_zero(x):
        return ZERO
    if isinstance(k, int) and k == 1:
        return x
    if isinstance(x, Lit):
        return Lit(x.value * k)
    if isinstance(x, Mul):
        return Mul(x.x, x.k * k)
    if isinstance(x, Add):
        return add(*(mul(t, k) for t in x.terms))
    return Mul(x, k)


def upper(x: Ix) -> Dim | None:
    """An exclusive upper bound of x, when one is known."""
    if isinstance(x, Var):
        return x.extent
    if isinstance(x, Lit):
        return x.value + 1
    if isinstance(x, Mul):
        u = upper(x.x)
        return None if u is None else (u - 1) * x.k + 1
    if isinstance(x, Mod):
        return x.k
    if isinstance(x, Div):
        u = upper(x.x)
        if u is None:
            return None
        if isinstance(u, int) and isinstance(x.k, int):
            return (u - 1) // x.k + 1
        try:  # an extent that is a multiple of the divisor: B*T // T = B
            return u // x.k if not isinstance(u, int) else None
        except NotDivisible:
            return None
    if isinstance(x, Add):
        total: Dim = 0
        for t in x.terms:
            u = upper(t)
            if u is None:
                return None
            total = total + (u - 1)
        return total + 1
    return None


def _fits(x: Ix, k: Dim) -> bool:
    u = upper(x)
    if u is None:
        return False
    return dims_equal(u, k) is True or (isinstance(u, int) and isinstance(k, int) and u <= k)


def div(x: Ix, k: Dim) -> Ix:
    if isinstance(k, int) and k == 1:
        return x
    if isinstance(x, Div):  # (y // a) // k == y // (a * k)
        return div(x.x, x.k * k)
    if _fits(x, k):
        return ZERO
    if isinstance(x, Mul) and dims_equal(x.k, k) is True:
        return x.x
    if isinstance(x, Add):
        # (a * k + b) // k == a + b // k when 0 <= b < k
        multiples = [t for t in x.terms if isinstance(t, Mul) and dims_equal(t.k, k) is True]
        rest = [t for t in x.terms if t not in multiples]
        if multiples and rest and _fits(add(*rest), k):
            return add(*(t.x for t in multiples))
    return Div(x, k)


def mod(x: Ix, k: Dim) -> Ix:
    if isinstance(k, int) and k == 1:
        return ZERO
    if _fits(x, k):
        return x
    if isinstance(x, Mul) and dims_equal(x.k, k) is True:
        return ZERO
    if isinstance(x, Add):
        kept = [t for t in x.terms if not (isinstance(t, Mul) and dims_equal(t.k, k) is True)]
        if len(kept) != len(x.terms):
            return mod(add(*kept), k) if kept else ZERO
    return Mod(x, k)


def strides(shape: Shape) -> tuple[Dim, ...]:
    """Row-major (contiguous) strides of a shape."""
    out: list[Dim] = []
    acc: Dim = 1
    for d in reversed(shape):
        out.append(acc)
        acc = acc * d
    return tuple(reversed(out))


def linear(index: Index, shape: Shape) -> Ix:
    """The row-major offset of `index` into a contiguous tensor of `shape`."""
    return add(*(mul(i, s) for i, s, d in zip(index, strides(shape), shape) if d != 1))


def delinearize(offset: Ix, shape: Shape) -> Index:
    return tuple(ZERO if d == 1 else mod(div(offset, s), d) for s, d in zip(strides(shape), shape))


# ---- views rewrite indices -------------------------------------------------------------------------------

VIEWS = frozenset({Op.RESHAPE, Op.PERMUTE, Op.BROADCAST, Op.SLICE, Op.DETACH})


def has_div(e: Ix) -> bool:
    """Does the expression divide (not a plain strided access)?"""
    if isinstance(e, (Div, Mod, Load)):
        return True
    if isinstance(e, Add):
        return any(has_div(t) for t in e.terms)
    if isinstance(e, Mul):
        return has_div(e.x)
    return False


def view_index(node: Node, index: Index, input_shape: Shape) -> Index:
    """The index into a view's input that holds the view's element at `index`."""
    if node.op is Op.DETACH:
        return index
    if node.op is Op.PERMUTE:
        out: list[Ix] = [ZERO] * len(index)
        for k, p in enumerate(node.attrs["perm"]):
            out[p] = index[k]
        return tuple(out)
    if node.op is Op.BROADCAST:
        lead = len(index) - len(input_shape)
        return tuple(ZERO if d == 1 else index[lead + j] for j, d in enumerate(input_shape))
    if node.op is Op.SLICE:
        return tuple(add(mul(i, step), lit(start)) for i, start, step
                     in zip(index, node.attrs["starts"], node.attrs["steps"]))
    if node.op is Op.RESHAPE:
        return reshape_index(index, node.shape, input_shape)
    raise ValueError(node.op)


# Remembered: planning and code generation map the same few indices through the same reshapes again and
# again (a 4-layer GPT: about a thousand calls, seventy different), and expressions are immutable.
@functools.lru_cache(maxsize=4096)
def reshape_index(index: Index, out_shape: Shape, in_shape: Shape) -> Index:
    """Map an index through a reshape, group by group of axes with equal size."""
    result: list[Ix] = []
    i = j = 0
    out_axes = [(k, d) for k, d in enumerate(out_shape) if d != 1]
    in_axes = [(k, d) for k, d in enumerate(in_shape) if d != 1]
    in_index: dict[int, Ix] = {}
    while i < len(out_axes) or j < len(in_axes):
        oi, ij = i, j
        osize: Dim = out_axes[i][1] if i < len(out_axes) else 1
        isize: Dim = in_axes[j][1] if j < len(in_axes) else 1
        i += i < len(out_axes)
        j += j < len(in_axes)
        while dims_equal(osize, isize) is not True:
            grow_out = _smaller(osize, isize)
            if grow_out and i < len(out_axes):
                osize = osize * out_axes[i][1]
                i += 1
            elif j < len(in_axes):
                isize = isize * in_axes[j][1]
                j += 1
            elif i < len(out_axes):
                osize = osize * out_axes[i][1]
                i += 1
            else:  # sizes never meet: fall back to full linearization
                return delinearize(linear(index, out_shape), in_shape)
        group_out = [out_axes[k] for k in range(oi, i)]
        group_in = [in_axes[k] for k in range(ij, j)]
        flat = linear(tuple(index[k] for k, _ in group_out), tuple(d for _, d in group_out))
        for (k, _), ix in zip(group_in, delinearize(flat, tuple(d for _, d in group_in))):
            in_index[k] = ix
    for k, d in enumerate(in_shape):
        result.append(in_index.get(k, ZERO) if d != 1 else ZERO)
    return tuple(result)


def _smaller(a: Dim, b: Dim) -> bool:
    """Is a < b?  Symbolic sizes compare by their value with every symbol = 2."""
    env = {}
    for d in (a, b):
        if not isinstance(d, int):
            env.update({s: 2 for s in d.symbols})
    av = a if isinstance(a, int) else a.evaluate(env)
    bv = b if isinstance(b, int) else b.evaluate(env)
    return av < bv


def domain_vars(shape: Shape, prefix: str) -> Index:
    """One index variable per axis (a constant 0 for size-1 axes)."""
    return tuple(ZERO if d == 1 else Var(f"{prefix}{k}", d) for k, d in enumerate(shape))


