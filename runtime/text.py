"""The character corpus of `dataset("text")`, its vocabulary, and its token windows.

The corpus ships with Python: the help texts of `pydoc_data.topics` (what `help("assert")` prints),
concatenated in sorted key order, so it is the same text on every run of the same Python and
nothing is downloaded.  The vocabulary is the sorted set of the characters of the *whole* corpus,
ids 0, 1, ... in that order; a `chars` limit shortens the text, never the vocabulary, so a model
trained on part of the corpus reads the same ids as one trained on all of it.

Because another Python's help texts may differ by a character or two, training records the
vocabulary in the weights it writes (safetensors metadata "vocab", a JSON list of characters):
`dln sample` reads it from there, and recomputes it from the file's train section only for weights
that carry none.
"""

from __future__ import annotations

import functools
import json
from typing import Any, Sequence

import numpy as np

from dln.compiler.values import TrainValue
from dln.dsl.diagnostics import Diagnostic, DlnError, Note

DEFAULT_WINDOW = 64


class TextData(dict):
    """The arrays of a text data set (x, y and their aliases tokens, targets: i64[N, window]),
    with what sampling and a validation split need to know about them."""

    def __init__(self, arrays: dict[str, np.ndarray], vocab: list[str], window: int, stride: int) -> None:
        super().__init__(arrays)
        self.vocab = vocab
        self.window = window
        self.stride = stride


@functools.lru_cache(maxsize=1)
def corpus() -> str:
    from pydoc_data.topics import topics

    return "".join(topics[k] for k in sorted(topics))


@functools.lru_cache(maxsize=1)
def vocabulary() -> tuple[str, ...]:
    return tuple(sorted(set(corpus())))


def windows(ids: np.ndarray, window: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """x[k] = ids[k*stride : k*stride + window], y[k] the same shifted by one: every window whose
    target (its last character's successor) lies in `ids`."""
    count = (len(ids) - window - 1) // stride + 1
    starts = np.arange(count, dtype=np.int64)[:, None] * stride + np.arange(window, dtype=np.int64)[None, :]
    return ids[starts], ids[starts + 1]


def load(spec: TrainValue) -> TextData:
    """`dataset("text", window, stride, chars)` as arrays."""
    text = corpus()
    vocab = list(vocabulary())
    window = spec.arg("window") or DEFAULT_WINDOW
    stride = spec.arg("stride") or window
    chars = spec.arg("chars") or len(text)
    text = text[:chars]
    if len(text) < window + 1:
        raise DlnError(Diagnostic("E0603", f"the text data set has {len(text):,} characters: too few for one "
                                           f"window of {window} and its next character", spec.span,
                                  (Note(f"the whole corpus has {len(corpus()):,} characters"),)))
    ids = encode(text, vocab)
    x, y = windows(ids, window, stride)
    # The same windows under the names of a language model's usual inputs (`tokens`, `targets`).
    return TextData({"x": x, "y": y, "tokens": x, "targets": y}, vocab, window, stride)


def split(data: TextData, fraction: float) -> tuple[TextData, TextData]:
    """Hold out the *end* of the text: the last round(fraction * N) windows.  A shuffled split of
    text windows would test on text the model trained on (windows overlap when stride < window,
    and neighbouring windows share their phrases); held-out windows that overlap the last
    training window are dropped."""
    n = len(data["x"])
    held = int(round(n * fraction))
    first = n - held
    # Window k covers characters k*stride .. k*stride + window (its targets included): the first
    # held-out window shares none with the last training window, first - 1.
    start = max(first, first - 1 + -(-(data.window + 1) // data.stride))
    start = min(start, n)

    def part(lo: int, hi: int) -> TextData:
        return TextData({k: v[lo:hi] for k, v in data.items()}, data.vocab, data.window, data.stride)

    return part(0, first), part(start, n)


def encode(text: str, vocab: Sequence[str]) -> np.ndarray:
    table = {c: i for i, c in enumerate(vocab)}
    return np.fromiter((table[c] for c in text), dtype=np.int64, count=len(text))


def unknown_characters(text: str, vocab: Sequence[str]) -> list[tuple[int, str]]:
    """Each character of `text` the vocabulary lacks, with its position (the first of each)."""
    known = set(vocab)
    seen: dict[str, int] = {}
    for k, c in enumerate(text):
        if c not in known and c not in seen:
            seen[c] = k
    return [(k, c) for c, k in seen.items()]


def vocab_metadata(vocab: Sequence[str]) -> str:
    return json.dumps(list(vocab))


def vocab_from_metadata(value: Any) -> list[str] | None:
    """The vocabulary a weights file records, or None when it records none readable."""
    try:
        vocab = json.loads(value)
    except (TypeError, ValueError):
        return None
    if isinstance(vocab, list) and vocab and all(isinstance(c, str) and len(c) == 1 for c in vocab) \
            and len(set(vocab)) == len(vocab):
        return vocab
    return None
