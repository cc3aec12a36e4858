"""Programs made by mutating the project's own programs: every `examples/*.dln`,
the language draft's programs (tests/programs/language/) and the bad programs
(tests/programs/bad/).

A case applies one to three mutations to one seed program.  The mutations work
on a token list of the text (names, numbers, strings, operators, each with the
whitespace before it), so a case stays close to a real program and gets as far
into the compiler as the mutation allows.  Case `k` of seed `s` uses a random
generator seeded with `(s, k)`: always the same text.
"""

from __future__ import annotations

import functools
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[2]

# A statement-only fragment of the language draft becomes the body of a model (as in
# tests/dsl/test_language_examples.py).
_WRAPPER = "model lenet() {{\n    input images: f32[B, 1, 28, 28]\n{body}    output h\n}}\n"

_TOKEN = re.compile(r'#[^\n]*|"(?:[^"\\\n]|\\.)*"|\d+(?:\.\d+)?(?:[eE][+-]?\d+)?|[A-Za-z_]\w*'
                    r'|->|\*\*|\.\.\.|\.\.|==|!=|<=|>=|\S')
_NUMBER = re.compile(r"\d")
_NAME = re.compile(r"[A-Za-z_]\w*")


@functools.cache
def seed_programs() -> tuple[tuple[str, str], ...]:
    """(name, text) of every program the mutations start from."""
    out = []
    for path in sorted((ROOT / "examples").glob("*.dln")):
        out.append((f"examples/{path.name}", path.read_text()))
    for path in sorted((ROOT / "tests" / "programs" / "language").glob("*.dln")):
        text = path.read_text()
        if not re.search(r"^\s*(model|block)\s", text, re.M):
            text = _WRAPPER.format(body="".join("    " + line + "\n" for line in text.splitlines()))
        out.append((f"tests/programs/language/{path.name}", text))
    # The corpus of bad programs: one mistake each, in every corner of the language; a
    # mutation often moves the mistake, or removes it, and goes on from there.
    for path in sorted((ROOT / "tests" / "programs" / "bad").glob("*.dln")):
        out.append((f"tests/programs/bad/{path.name}", path.read_text()))
    return tuple(out)


@dataclass
class Tokens:
    """A text as tokens, each with the whitespace (and comments) before it."""

    space: list[str]
    words: list[str]
    tail: str

    @staticmethod
    def of(text: str) -> "Tokens":
        space, words, at = [], [], 0
        for m in _TOKEN.finditer(text):
            if m.group().startswith("#"):
                continue  # comments stay in the whitespace before the next token
            space.append(text[at:m.start()])
            words.append(m.group())
            at = m.end()
        return Tokens(space, words, text[at:])

    def text(self) -> str:
        return "".join(s + w for s, w in zip(self.space, self.words)) + self.tail

    def where(self, rng: random.Random, test: Callable[[str], bool] = lambda w: True) -> int | None:
        places = [i for i, w in enumerate(self.words) if test(w)]
        return rng.choice(places) if places else None


# ---- the mutations: each changes `t` in place and says what it did -----------------------------------------

def delete(t: Tokens, rng: random.Random) -> str:
    i = t.where(rng)
    if i is None:
        return "nothing to delete"
    word = t.words.pop(i)
    t.space.pop(i)
    return f"deleted {word!r}"


def duplicate(t: Tokens, rng: random.Random) -> str:
    i = t.where(rng)
    if i is None:
        return "nothing to duplicate"
    t.words.insert(i, t.words[i])
    t.space.insert(i, " ")
    return f"duplicated {t.words[i]!r}"


def swap(t: Tokens, rng: random.Random) -> str:
    if len(t.words) < 2:
        return "nothing to swap"
    i = rng.randrange(len(t.words) - 1)
    t.words[i], t.words[i + 1] = t.words[i + 1], t.words[i]
    return f"swapped {t.words[i + 1]!r} and {t.words[i]!r}"


NUMBERS = ["0", "-1", "1", "1e40", "-1e40", "1e-45", str(10**30), "-" + str(10**30), "9" * 400, "nan", "inf",
           "-inf", "0.0", "1e308", "1e400", "2147483648", "-0", "0.5", "3", "(0 - 1)", "1e-300"]


def number(t: Tokens, rng: random.Random) -> str:
    i = t.where(rng, lambda w: bool(_NUMBER.match(w)))
    if i is None:
        return "no number"
    new = rng.choice(NUMBERS)
    old, t.words[i] = t.words[i], new
    return f"number {old} -> {new}"


def resize(t: Tokens, rng: random.Random) -> str:
    """An integer replaced by another small one: the program usually still checks, with odd sizes
    (1, primes) that reach autodiff, fusion and kernel writing."""
    i = t.where(rng, lambda w: w.isdigit())
    if i is None:
        return "no integer"
    old, t.words[i] = t.words[i], rng.choice(["1", "2", "3", "5", "7", "17"])
    return f"resized {old} -> {t.words[i]}"


TYPES = ["f32[]", "f32[B]", "f32[2, 3]", "i64[B, T]", "f16[B, 1, 8, 8]", "bool[B]", "f64[N, N]", "f32[B, 0]",
         "i32[1]", "bf16[B, 64]", "f32[B, 64, 1]", "i64[]"]


def retype(t: Tokens, rng: random.Random) -> str:
    """A declared type (of an input or a parameter) replaced: scalars, empty and size-1 axes,
    other ranks and element types flow into layers written for the original."""
    text = t.text()
    found = list(re.finditer(r"\b(?:f32|f16|bf16|f64|i32|i64|bool)\[[^\]]*\]", text))
    if not found:
        return "no type"
    m, new = rng.choice(found), rng.choice(TYPES)
    retyped = Tokens.of(text[:m.start()] + new + text[m.end():])
    t.space, t.words, t.tail = retyped.space, retyped.words, retyped.tail
    return f"retyped {m.group()} -> {new}"


UNICODE = ["é", "名", "🙂", "\u200f", "\u202e", "\x00", "\u0301", "ｘ", "\ufeff", "\U0001d400", "\u2028", "\x0b",
           "\x85", "ß", "\udcff"]


def _insert_between(t: Tokens, rng: random.Random, text: str) -> str:
    """Put `text` in a random gap between tokens (or after the last)."""
    i = rng.randrange(len(t.words) + 1) if t.words else 0
    if i == len(t.words):
        t.tail += text
    else:
        t.space[i] += text
    return f"inserted {text!r}"


def unicode(t: Tokens, rng: random.Random) -> str:
    """Non-ASCII in an identifier or a string (or between tokens)."""
    ch = rng.choice(UNICODE)
    i = t.where(rng, lambda w: bool(_NAME.match(w)) or w.startswith('"'))
    if i is None or rng.random() < 0.2:
        return _insert_between(t, rng, ch)
    w = t.words[i]
    at = rng.randrange(1, len(w)) if len(w) > 1 else 1
    if w.startswith('"'):
        at = max(1, min(at, len(w) - 1))
    t.words[i] = w[:at] + ch + w[at:]
    return f"{ch!r} into {w!r}"


def truncate(t: Tokens, rng: random.Random) -> str:
    text = t.text()
    at = rng.randrange(len(text) + 1)
    cut = Tokens([text[:at]], [""], "")
    t.space, t.words, t.tail = cut.space, cut.words, cut.tail
    return f"truncated at {at}"


DEPTHS = [20, 100, 300, 1000, 5000]


def nest(t: Tokens, rng: random.Random) -> str:
    """An operand wrapped in hundreds of parentheses, unary minuses, or a long pipe."""
    i = t.where(rng, lambda w: bool(_NAME.match(w) or _NUMBER.match(w)))
    if i is None:
        return "nothing to nest"
    n = rng.choice(DEPTHS)
    kind = rng.choice(["parens", "pipe", "neg", "list"])
    w = t.words[i]
    t.words[i] = {"parens": "(" * n + w + ")" * n,
                  "pipe": w + " -> relu" * n,
                  "neg": "-" * n + w,
                  "list": "[" * n + w + "]" * n}[kind]
    return f"nested {w!r} {n} deep ({kind})"


HUGE_RANGES = ["0..1000000000", "0..100000", "0.." + str(10**30), "-5..5", "3..1", "0..0", "0..1e40", "0..-1"]


def repeat(t: Tokens, rng: random.Random) -> str:
    """A `repeat` over a huge (or empty, or odd) range: an existing one's bounds, or a new loop."""
    text = t.text()
    r = rng.choice(HUGE_RANGES)
    m = list(re.finditer(r"\brepeat\s+\w+\s+in\s+([^{]*)\{", text))
    if m and rng.random() < 0.5:
        at = rng.choice(m)
        text = text[:at.start(1)] + r + " " + text[at.end(1):]
    else:
        body = rng.choice(["", "h = h", "x = x + 1.0", "y = relu(x)"])
        m2 = list(re.finditer(r"\n(\s+)output\b", text))
        if not m2:
            return "no place for a repeat"
        at = rng.choice(m2)
        text = text[:at.start()] + f"\n{at.group(1)}repeat i in {r} {{ {body} }}" + text[at.start():]
    new = Tokens.of(text)
    t.space, t.words, t.tail = new.space, new.words, new.tail
    return f"repeat over {r}"


def random_bytes(t: Tokens, rng: random.Random) -> str:
    """Random characters between tokens; sometimes bytes that are not UTF-8 (kept as surrogates)."""
    n = rng.choice([1, 3, 10, 50])
    if rng.random() < 0.2:
        junk = bytes(rng.randrange(256) for _ in range(n)).decode("utf-8", "surrogateescape")
    else:
        junk = "".join(chr(rng.choice([rng.randrange(32, 127), rng.randrange(0x80, 0x3000), rng.randrange(0, 32)]))
                       for _ in range(n))
    return _insert_between(t, rng, junk)


def insert(t: Tokens, rng: random.Random) -> str:
    """A token of the language where it may not belong."""
    word = rng.choice(["(", ")", "[", "]", "{", "}", ",", ":", "=", "->", "..", "...", "**", "-", "@", "model",
                       "block", "input", "output", "param", "repeat", "return", "minimize", "not", "x", "B", "1",
                       "0.5", '"s"', ";", "true"])
    i = rng.randrange(len(t.words) + 1)
    t.words.insert(i, word)
    t.space.insert(i, " ")
    return f"inserted {word!r}"


KEYWORDS = {"model", "block", "train", "import", "input", "param", "output", "repeat", "in", "return", "minimize",
             "over", "with", "and", "or", "not", "true", "false"}
_DTYPES = ["f32", "f16", "bf16", "f64", "i32", "i64", "bool"]


def _is_name(w: str) -> bool:
    return bool(_NAME.fullmatch(w)) and w not in KEYWORDS


def rename(t: Tokens, rng: random.Random) -> str:
    """A name replaced by another name of the program, a built-in, or an element type: the
    program stays well-formed and goes wrong in name resolution, types or shapes."""
    from fuzzing.grammar import _vocabulary

    i = t.where(rng, _is_name)
    if i is None:
        return "no name"
    functions, keywords = _vocabulary()
    pool = rng.choice([[w for w in t.words if _is_name(w)], functions, keywords, _DTYPES])
    old, t.words[i] = t.words[i], rng.choice(pool)
    return f"renamed {old!r} -> {t.words[i]!r}"


def argument(t: Tokens, rng: random.Random) -> str:
    """An extra argument to a call, by position or keyword, with an odd value."""
    from fuzzing.grammar import _vocabulary

    i = t.where(rng, lambda w: w == "(")
    if i is None or i == 0 or not _is_name(t.words[i - 1]):
        return "no call"
    value = rng.choice(NUMBERS + ['"none"', '"sum"', '"mean"', '""', "true", "false", "(1, 2)", "[0]", "(0,)", "()",
                                  "B", "x", "{ a = 1 }", "-1", "0.1", "2"] + _DTYPES)
    arg = rng.choice([f"{rng.choice(_vocabulary()[1])} = {value}", value])
    t.words.insert(i + 1, arg + ",")
    t.space.insert(i + 1, "")
    return f"argument {arg!r} to {t.words[i - 1]}"


MUTATIONS: dict[str, Callable[[Tokens, random.Random], str]] = {
    "delete": delete, "duplicate": duplicate, "swap": swap, "number": number, "unicode": unicode,
    "truncate": truncate, "nest": nest, "repeat": repeat, "bytes": random_bytes, "insert": insert,
    "rename": rename, "argument": argument, "resize": resize, "retype": retype,
}
# How often each is drawn: the ones that keep a program well-formed go deepest.
WEIGHTS = {"delete": 2, "duplicate": 1, "swap": 1, "number": 8, "unicode": 2, "truncate": 1, "nest": 1,
           "repeat": 1, "bytes": 1, "insert": 1, "rename": 6, "argument": 4, "resize": 5,
           "retype": 4}


def mutate(seed: int, index: int) -> tuple[str, str]:
    """Program `index` of `seed`: (text, a description of how it was made)."""
    rng = random.Random(f"mutate:{seed}:{index}")
    programs = seed_programs()
    # Half the cases start from the examples and the draft's programs, which go deepest.
    good = [p for p in programs if not p[0].startswith("tests/programs/bad/")]
    name, text = rng.choice(good if rng.random() < 0.5 else programs)
    t = Tokens.of(text)
    done = []
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        kind = rng.choices(list(WEIGHTS), weights=list(WEIGHTS.values()))[0]
        done.append(MUTATIONS[kind](t, rng))
    return t.text(), f"{name}: " + "; ".join(done)
