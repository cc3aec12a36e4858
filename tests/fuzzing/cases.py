"""The stream of cases: case `k` of seed `s`, from one of the two generators."""

from __future__ import annotations

from dataclasses import dataclass

from fuzzing.grammar import generate
from fuzzing.mutate import mutate

# One case in GRAMMAR_EVERY comes from the grammar, the others mutate real programs:
# mutants get further into the compiler.
GRAMMAR_EVERY = 3


@dataclass(frozen=True)
class Case:
    seed: int
    index: int
    generator: str   # grammar | mutate
    how: str         # for a mutant: the program it came from and the mutations
    text: str

    @property
    def name(self) -> str:
        return f"seed {self.seed} case {self.index}"


def make_case(seed: int, index: int) -> Case:
    if index % GRAMMAR_EVERY == 0:
        return Case(seed, index, "grammar", "generated from dsl/grammar.lark", generate(seed, index))
    text, how = mutate(seed, index)
    return Case(seed, index, "mutate", how, text)
