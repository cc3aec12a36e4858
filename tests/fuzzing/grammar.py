"""Programs generated from the project's own grammar (dsl/grammar.lark) with
`hypothesis.extra.lark` (the strategy `from_lark` makes, with its derivations
kept small: `_BoundedLarkStrategy`).

Every terminal gets an explicit strategy:

* each token is followed by whitespace (a space, a newline, or a comment), so
  that `model` and a name never glue into one name and `-` `>` never become
  `->`: the text is lexically what the grammar describes;
* names are drawn mostly from the language's own vocabulary (built-ins and
  their keyword arguments, element types, train settings, a few variable and
  dimension names), so programs get past name resolution into shape checking
  and the builder, and sometimes from made-up identifiers; never keywords;
* numbers favour small sizes; the edge cases (10**30, 1e40, 1e400) are rare,
  since a literal too large ends the parse.

The text is then syntactically valid (almost always) and semantically random.
Generation runs outside hypothesis's test engine: case `k` of seed `s` draws
from a `ConjectureData` seeded with `(s, k)`, so it is always the same text and
the cases are independent of each other (and of how many run, or on how many
workers).
"""

from __future__ import annotations

import functools
import random
import re
from pathlib import Path

from hypothesis import strategies as st
from hypothesis.errors import StopTest
from hypothesis.extra.lark import LarkStrategy
from lark import Lark
from lark.grammar import NonTerminal

from fuzzing.mutate import KEYWORDS

GRAMMAR = Path(__file__).resolve().parents[2] / "dsl" / "grammar.lark"

# Separators after each token: whitespace is insignificant, comments are ignored.
_SEPARATORS = [" "] * 12 + ["\n", "\n    ", "\n    ", "\t", "  # note\n"]

_VARIABLES = ["x", "y", "h", "w", "z", "a", "b", "out", "loss", "logits", "m", "mlp", "net", "block0"]
_DIMENSIONS = ["B", "T", "N", "C", "D"]
_SCALAR_TYPES = ["int", "float", "bool", "str"]
_DTYPES = ["f32", "f16", "bf16", "f64", "i32", "i64", "bool"]
_STRINGS = ['"digits"', '"iris"', '"mean"', '"sum"', '"none"', '"x"', '"y"', '"label"', '"tanh"', '"fc"', '""',
            '"data.npz"', '"other.dln"', '"case.dln"', '"é✓🙂"', '"a\\nb"', '"\\""']


@functools.cache
def _vocabulary() -> tuple[list[str], list[str]]:
    """(names of functions and settings, names of keyword arguments), read from the compiler."""
    from dln.compiler.build import build_model  # noqa: F401  (registers the built-ins)
    from dln.compiler.builtins import BUILTINS
    from dln.compiler.recipe import _SETTINGS
    from dln.compiler.train_functions import TRAIN_BUILTINS

    functions = sorted(BUILTINS) + sorted(TRAIN_BUILTINS) + sorted(_SETTINGS) + ["randn", "rand"]
    keywords = set()
    for b in [*BUILTINS.values(), *TRAIN_BUILTINS.values()]:
        keywords.update(p.name for p in b.parameters())
    return functions, sorted(keywords)


def _names() -> list[str]:
    functions, keywords = _vocabulary()
    made_up = random.Random(0)
    identifiers = ["".join(made_up.choice("abcdefgxyzXYZ_019") for _ in range(made_up.randint(1, 6)))
                   for _ in range(40)]
    identifiers = [i if not i[0].isdigit() else "v" + i for i in identifiers]
    names = (_VARIABLES * 4 + functions + keywords + (_DIMENSIONS + _SCALAR_TYPES + _DTYPES) * 3
             + identifiers)
    return [n for n in names if n not in KEYWORDS]  # a keyword where a name goes is a syntax error


# Values of the terminals that are not fixed strings; each must lex as its terminal.
# The edge cases (a literal too large, a float that overflows) end a parse: keep them rare.
_INTS = [str(i) for i in range(9)] * 8 + ["16", "64", "128", "1000", "65536"] * 3 + [str(10**30), "9" * 40]
_FLOATS = ["0.5", "1e-3", "0.0", "1.0", "2.5e4", "0.999", "1E5"] * 6 + ["1e40", "1e-45", "3.0e38", "1e308",
                                                                         "1e400"]
_OPERATORS = {"COMPARE": ["==", "!=", "<=", ">=", "<", ">"], "ADD_OP": ["+", "-"], "MUL_OP": ["*", "/", "%", "@"]}


# A program is a few declarations, each drawn from its grammar rule; a model's or block's
# body gets extra statements drawn from the statement rules (the grammar's `_stmt*` is
# mostly empty when its alternatives are drawn uniformly).
_DECLARATIONS = ["model_decl"] * 5 + ["block_decl"] * 2 + ["train_decl"] * 2 + ["import_decl"]
_STATEMENTS = ["input_stmt"] * 3 + ["assign_stmt"] * 4 + ["output_stmt"] * 2 + ["param_stmt", "repeat_stmt",
                                                                               "return_stmt"]


@functools.cache
def _strategies() -> dict[str, st.SearchStrategy[str]]:
    rules = sorted(set(_DECLARATIONS + _STATEMENTS))
    grammar = Lark(GRAMMAR.read_text(), parser="lalr", start=rules)
    explicit: dict[str, st.SearchStrategy[str]] = {}
    values = {"NAME": _names(), "INT": _INTS, "FLOAT": _FLOATS, "STRING": _STRINGS, "COMMENT": ["# comment"],
              **_OPERATORS}
    for t in grammar.terminals:
        if t.name.startswith("__IGNORE"):
            continue
        if t.pattern.type == "str":
            options = [t.pattern.value]
        else:
            options = values[t.name]
            wrong = [v for v in options if not re.fullmatch(t.pattern.to_regexp(), v)]
            if wrong:
                raise ValueError(f"the grammar's {t.name} no longer matches {wrong}")
        # One flat choice per token (composite strategies cost a millisecond a token).
        explicit[t.name] = st.sampled_from([v + sep for v in options for sep in _SEPARATORS])
    out = {}
    for rule in rules:
        # from_lark rejects strategies for terminals the rule cannot reach.
        terminals, _, ignored = grammar.grammar.compile([rule], ())
        reachable = {t.name for t in terminals} | set(ignored)
        out[rule] = _BoundedLarkStrategy(grammar, rule, {k: v for k, v in explicit.items() if k in reachable})
    return out


class _BoundedLarkStrategy(LarkStrategy):
    """`from_lark`'s strategy, with the size of a derivation bounded.

    Drawn uniformly, the expression rules recurse more often than not (an atom
    may be a parenthesized expression, a tuple, a list or a record; a postfix
    a call or an index), so most draws run past hypothesis's buffer.  Past
    `MAX_DEPTH` nested rules, or once `BUDGET` rules have been expanded in one
    draw, only the expansions that finish soonest are drawn.  (Deep nesting is
    the mutator's job.)
    """

    MAX_DEPTH = 24
    BUDGET = 60

    def __init__(self, grammar: Lark, start: str, explicit: dict[str, st.SearchStrategy[str]]) -> None:
        super().__init__(grammar, start, explicit, st.characters(codec="utf-8"))
        expansions = {k: list(v.elements) for k, v in self.nonterminal_strategies.items()}
        height = {k: float("inf") for k in expansions}
        changed = True
        while changed:  # height of a rule: the fewest nested rules before only terminals remain
            changed = False
            for k, options in expansions.items():
                best = min(1 + max((height.get(s.name, 0) for s in e), default=0) for e in options)
                if best < height[k]:
                    height[k], changed = best, True
        self.shallow = {k: st.sampled_from([e for e in options
                                            if 1 + max((height.get(s.name, 0) for s in e), default=0) == height[k]])
                        for k, options in expansions.items()}
        self.depth = 0
        self.expanded = 0

    def gen_ignore(self, data, draw_state) -> None:
        pass  # the explicit strategies end every token with whitespace or a comment already

    def do_draw(self, data) -> str:
        self.depth = self.expanded = 0
        return super().do_draw(data)

    def draw_symbol(self, data, symbol, draw_state) -> None:
        if not isinstance(symbol, NonTerminal):
            return super().draw_symbol(data, symbol, draw_state)
        self.expanded += 1
        if self.depth >= self.MAX_DEPTH or self.expanded >= self.BUDGET:
            for e in data.draw(self.shallow[symbol.name]):
                self.draw_symbol(data, e, draw_state)
            return
        self.depth += 1
        try:
            super().draw_symbol(data, symbol, draw_state)
        finally:
            self.depth -= 1


def _body_start(decl: str) -> int | None:
    """Where a model's or block's body opens: after the `{` that follows its parameters' `)`.
    (No drawn string or comment holds a bracket.)"""
    depth = 0
    for i, ch in enumerate(decl):
        depth += ch == "("
        if ch == ")":
            depth -= 1
            if depth == 0:
                j = decl.find("{", i)
                return j + 1 if j >= 0 else None
    return None


def _program(data, rng: random.Random) -> str:
    strategies = _strategies()
    parts = []
    for _ in range(rng.choice([1, 1, 2, 2, 3, 4])):
        decl = data.draw(strategies[rng.choice(_DECLARATIONS)])
        at = _body_start(decl) if decl.startswith(("model", "block")) else None
        if at is not None:
            extra = [data.draw(strategies[rng.choice(_STATEMENTS)]) for _ in range(rng.randrange(6))]
            decl = decl[:at] + "\n    " + "\n    ".join(extra) + "\n" + decl[at:]
        parts.append(decl)
    return "\n".join(parts)


def generate(seed: int, index: int) -> str:
    """Program `index` of `seed`: a text the grammar accepts (before keyword reservation)."""
    # Hypothesis's engine is not used, only its data source; these two are what a test run sets up.
    from hypothesis.control import BuildContext
    from hypothesis.internal.conjecture.data import ConjectureData

    for attempt in range(100):
        # A draw that runs past hypothesis's buffer (a deep expression) stops; try the next sub-seed.
        rng = random.Random(f"grammar:{seed}:{index}:{attempt}")
        data = ConjectureData(random=rng)
        try:
            with BuildContext(data, wrapped_test=generate):
                return _program(data, rng)
        except StopTest:
            continue
    return ""
