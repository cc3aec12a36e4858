"""Symbolic dimensions: orderings the compiler can prove, and exact division."""

import pytest

from dln.compiler.symbolic import NotDivisible, Sym, dim_at_most

B, T = Sym.var("B"), Sym.var("T")


@pytest.mark.parametrize("a,b,known", [
    (3, 5, True), (5, 3, False),
    (1, T, True), (0, T - 1, True),          # every symbol is at least 1
    (T, T + 1, True), (B + 1, B, False), (2 * B, B, False),
    (5, B, None), (T, B, None), (B - 5, 0, None),
    (-B - 1, 0, True), (0, -B, False),
])
def test_dim_at_most(a, b, known):
    assert dim_at_most(a, b) is known


def test_an_int_is_never_divisible_by_a_symbol():
    with pytest.raises(NotDivisible):
        8 // B
    assert (4 * B) // B == 4
    assert (B * T + B) // B == T + 1
