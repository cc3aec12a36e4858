"""Symbolic dimensions: integer polynomials over dimension names.

A dimension is an `int` or a `Sym` (`B`, `B*T`, `T - 1`).  Arithmetic on a
`Sym` returns an `int` as soon as no symbol is left, so a concrete shape is
always a tuple of ints.  Equality of two dimensions is decided by their
canonical form: `dims_equal` answers True (proven), False (proven different,
taking every symbol to be at least 1) or None (depends on the inputs: a
constraint to check when they bind).
"""

from __future__ import annotations

from typing import Mapping, Union

Monomial = tuple[str, ...]  # sorted symbol names, with repetition for powers


class NotDivisible(ArithmeticError):
    pass


class Sym:
    """An integer polynomial in dimension names, in canonical form."""

    # The hash is kept: shapes holding symbols are dictionary keys all through planning and code generation.
    __slots__ = ("terms", "_hash")

    def __init__(self, terms: Mapping[Monomial, int]) -> None:
        self.terms: tuple[tuple[Monomial, int], ...] = tuple(
            sorted(((m, c) for m, c in terms.items() if c != 0), key=lambda mc: (-len(mc[0]), mc[0])))
        self._hash = hash(self.terms)

    @staticmethod
    def _ordered(terms: tuple[tuple[Monomial, int], ...]) -> "Sym":
        """A Sym of terms already in canonical order, none zero (a shift or scaling of a Sym's)."""
        out = object.__new__(Sym)
        out.terms = terms
        out._hash = hash(terms)
        return out

    def __getstate__(self) -> tuple[tuple[Monomial, int], ...]:
        return self.terms   # not the hash: another process hashes strings differently

    def __setstate__(self, terms: tuple[tuple[Monomial, int], ...]) -> None:
        self.terms = terms
        self._hash = hash(terms)

    @staticmethod
    def var(name: str) -> "Sym":
        return Sym({(name,): 1})

    # -- construction helpers
    @staticmethod
    def _lift(x: "Dim") -> "Sym":
        return x if isinstance(x, Sym) else Sym({(): int(x)})

    def _simplify(self) -> "Dim":
        if not self.terms:
            return 0
        if len(self.terms) == 1 and self.terms[0][0] == ():
            return self.terms[0][1]
        return self

    # -- arithmetic
    def __add__(self, other: "Dim") -> "Dim":
        if isinstance(other, int):   # a constant: the last term (monomial ()) changes, the order does not
            if other == 0:
                return self._simplify()
            terms = self.terms
            if terms and terms[-1][0] == ():
                c = terms[-1][1] + other
                return Sym._ordered(terms[:-1] + ((((), c),) if c else ()))._simplify()
            return Sym._ordered(terms + (((), other),))._simplify()
        out = dict(self.terms)
        for m, c in Sym._lift(other).terms:
            out[m] = out.get(m, 0) + c
        return Sym(out)._simplify()

    __radd__ = __add__

    def __neg__(self) -> "Dim":
        return Sym({m: -c for m, c in self.terms})._simplify()

    def __sub__(self, other: "Dim") -> "Dim":
        return self + (-Sym._lift(other))

    def __rsub__(self, other: "Dim") -> "Dim":
        return Sym._lift(other) + (-self)

    def __mul__(self, other: "Dim") -> "Dim":
        if isinstance(other, int):   # a scaling keeps the order
            return Sym._ordered(tuple((m, c * other) for m, c in self.terms))._simplify() if other else 0
        out: dict[Monomial, int] = {}
        for m1, c1 in self.terms:
            for m2, c2 in Sym._lift(other).terms:
                m = tuple(sorted(m1 + m2))
                out[m] = out.get(m, 0) + c1 * c2
        return Sym(out)._simplify()

    __rmul__ = __mul__

    def __floordiv__(self, other: "Dim") -> "Dim":
        """Exact division only: by an int dividing every coefficient, or by a monomial."""
        if isinstance(other, int):
            if other != 0 and all(c % other == 0 for _, c in self.terms):
                return Sym({m: c // other for m, c in self.terms})._simplify()
            raise NotDivisible(f"{self} is not divisible by {other}")
        if len(other.terms) == 1:
            (mono, coeff), = other.terms
            out: dict[Monomial, int] = {}
            for m, c in self.terms:
                rest = list(m)
                for s in mono:
                    if s not in rest:
                        raise NotDivisible(f"{self} is not divisible by {other}")
                    rest.remove(s)
                if c % coeff:
                    raise NotDivisible(f"{self} is not divisible by {other}")
                out[tuple(rest)] = c // coeff
            return Sym(out)._simplify()
        if self == other:
            return 1
        raise NotDivisible(f"{self} is not divisible by {other}")

    def __rfloordiv__(self, other: int) -> "Dim":
        """An int divided by a polynomial: exact only when the polynomial is an int too, which a Sym is not."""
        return Sym._lift(other) // self

    # -- queries
    @property
    def symbols(self) -> frozenset[str]:
        return frozenset(s for m, _ in self.terms for s in m)

    def evaluate(self, env: Mapping[str, int]) -> int:
        total = 0
        for m, c in self.terms:
            v = c
            for s in m:
                v *= env[s]
            total += v
        return total

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sym):
            return self.terms == other.terms
        return False

    def __hash__(self) -> int:
        return self._hash

    def __str__(self) -> str:
        parts: list[str] = []
        for m, c in self.terms:
            body = "*".join(m)
            if not m:
                text = str(abs(c))
            elif abs(c) == 1:
                text = body
            else:
                text = f"{abs(c)}*{body}"
            if not parts:
                parts.append(text if c > 0 else "-" + text)
            else:
                parts.append(("+ " if c > 0 else "- ") + text)
        return " ".join(parts)

    __repr__ = __str__


Dim = Union[int, Sym]
Shape = tuple[Dim, ...]


def dims_equal(a: Dim, b: Dim) -> bool | None:
    """True if provably equal, False if provably different, None if it depends on the inputs.

    Every symbol is a size of at least 1, so each monomial is at least 1 too: when
    all the terms of `a - b` have one sign, the difference cannot be 0
    (`12*B` and `5*B`, `B + 1` and `B`), and the two are provably different.
    """
    # The common cases first, without building `a - b`: the planner compares shapes by the thousand.
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    if a == b:
        return True
    diff = a - b
    if isinstance(diff, int):
        return diff == 0
    if all(c > 0 for _, c in diff.terms) or all(c < 0 for _, c in diff.terms):
        return False
    return None


def dim_at_most(a: Dim, b: Dim) -> bool | None:
    """a <= b: True if provably, False if provably not, None if it depends on the inputs.

    With every symbol at least 1, a polynomial whose non-constant terms all have one
    sign is smallest (or largest) where every symbol is 1: `1 <= T` always,
    `2*B + 1 <= B` never, `5 <= B` only for some inputs.
    """
    diff = b - a
    if isinstance(diff, int):
        return diff >= 0
    at_ones = sum(c for _, c in diff.terms)
    slopes = [c for m, c in diff.terms if m]
    if all(c > 0 for c in slopes) and at_ones >= 0:
        return True
    if all(c < 0 for c in slopes) and at_ones < 0:
        return False
    return None


def evaluate(d: Dim, env: Mapping[str, int]) -> int:
    return d if isinstance(d, int) else d.evaluate(env)


def numel(shape: Shape) -> Dim:
    n: Dim = 1
    for d in shape:
        n = n * d
    return n


def format_shape(shape: Shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"
