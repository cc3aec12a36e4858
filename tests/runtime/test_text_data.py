"""dataset("text"): the corpus, its vocabulary and windows, the held-out end of the text, the
vocabulary recorded in the weights; npz token files beside it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

import dln
from dln.compiler.values import TrainValue
from dln.dsl.diagnostics import DlnError
from dln.runtime import data, text

MODEL = """
model lm(vocab: int = 103, dim: int = 8) {
    input tokens: i64[B, T]
    input targets: i64[B, T]
    logits = tokens -> embedding(vocab, dim) -> linear(vocab)
    loss   = cross_entropy(logits, targets)
    output logits
}
"""


def _text(**options) -> text.TextData:
    return data.load(TrainValue("dataset", (("name", "text"), *options.items())), Path("."))


def test_the_corpus_is_pythons_help_texts_in_key_order():
    from pydoc_data.topics import topics

    corpus = text.corpus()
    first = sorted(topics)[0]
    assert corpus.startswith(topics[first]) and len(corpus) == sum(len(v) for v in topics.values())
    vocab = text.vocabulary()
    assert list(vocab) == sorted(set(corpus)) and "\n" in vocab and " " in vocab


def test_windows_are_the_text_and_its_next_characters():
    d = _text(window=10, stride=7, chars=200)
    vocab = list(text.vocabulary())
    assert d.vocab == vocab and d["x"].dtype == d["y"].dtype == np.int64
    n = (200 - 10 - 1) // 7 + 1
    assert d["x"].shape == d["y"].shape == (n, 10)
    decode = lambda ids: "".join(vocab[i] for i in ids)   # noqa: E731
    corpus = text.corpus()
    for k in (0, 1, n - 1):
        assert decode(d["x"][k]) == corpus[7 * k: 7 * k + 10]
        assert decode(d["y"][k]) == corpus[7 * k + 1: 7 * k + 11]
    assert d["tokens"] is d["x"] and d["targets"] is d["y"]
    # defaults: windows of 64 over the whole corpus, side by side
    whole = _text()
    assert whole["x"].shape == ((len(corpus) - 65) // 64 + 1, 64)


@pytest.mark.parametrize("window,stride", [(10, 10), (10, 3), (8, 20)])
def test_validation_holds_out_the_end_of_the_text_sharing_no_character(window, stride):
    d = _text(window=window, stride=stride, chars=3000)
    train, val = data.split(d, 0.2, seed=0)
    n = len(d["x"])
    assert len(train["x"]) == n - round(0.2 * n) and 0 < len(val["x"]) <= round(0.2 * n)
    np.testing.assert_array_equal(train["x"], d["x"][:len(train["x"])])     # in order, not shuffled
    np.testing.assert_array_equal(val["y"], d["y"][n - len(val["x"]):])
    last_train_end = (len(train["x"]) - 1) * stride + window   # the last character a training window reads
    first_val_start = (n - len(val["x"])) * stride
    assert first_val_start > last_train_end
    assert first_val_start - stride <= last_train_end, "more held-out windows dropped than needed"


def test_text_option_mistakes_are_located(tmp_path):
    for setting, where, value in (('dataset("digits", window = 8)', "window", "8"),
                                  ('dataset("text", stride = 0)', "stride", "0"),
                                  ('dataset("text", chars = 1)', "chars", "1")):
        source = MODEL + f"train lm {{ data = {setting} }}\n"
        with pytest.raises(DlnError) as e:
            dln.train(source, epochs=1, progress=False, log=lambda s: None)
        d = e.value.diagnostics[0]
        assert d.code == "E0208" and where in d.message
        line = source.splitlines()[d.span.line - 1]
        assert line.startswith("train") and line[d.span.col - 1:].startswith(value + ")")   # at the value
    with pytest.raises(DlnError) as e:
        dln.train(MODEL + 'train lm { data = dataset("text", window = 64, chars = 50) }', epochs=1, progress=False,
                  log=lambda s: None)
    assert e.value.diagnostics[0].code == "E0603" and "50 characters" in e.value.diagnostics[0].message


def test_training_records_the_vocabulary_in_weights_and_checkpoints(tmp_path):
    source = MODEL + 'train lm { data = dataset("text", window = 16, chars = 3000)  validate = 0.1  batch = 64 }'
    path = tmp_path / "lm.dln"
    path.write_text(source)
    history = dln.train(str(path), epochs=1, checkpoint=str(tmp_path / "run"), progress=False, log=lambda s: None)
    assert "val_loss" in history[-1] and history.model.vocab == list(text.vocabulary())
    history.model.save(tmp_path / "w.safetensors")
    for f in (tmp_path / "w.safetensors", tmp_path / "run" / "weights.safetensors"):
        with safe_open(str(f), "np") as st:
            assert json.loads(st.metadata()["vocab"]) == list(text.vocabulary())
    fresh = dln.compile(str(path))
    assert fresh.vocab is None
    fresh.load(tmp_path / "w.safetensors")
    assert fresh.vocab == list(text.vocabulary())
    # weights that record another vocabulary are not trained on with this one
    other = dln.compile(str(path))
    other.vocab = list("abc")
    other.save(tmp_path / "other.safetensors")
    with pytest.raises(DlnError) as e:
        dln.train(str(path), epochs=1, weights=str(tmp_path / "other.safetensors"), progress=False, log=lambda s: None)
    assert e.value.diagnostics[0].code == "E0703" and "3 characters" in e.value.diagnostics[0].message


def test_npz_token_files_still_train(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 103, (40, 12))
    np.savez(tmp_path / "tokens.npz", tokens=x, targets=np.roll(x, -1, axis=1))
    path = tmp_path / "lm.dln"
    path.write_text(MODEL + 'train lm { data = npz("tokens.npz")  validate = 0.25  batch = 8 }')
    history = dln.train(str(path), epochs=2, progress=False, log=lambda s: None)
    assert history[-1]["loss"] < history[0]["loss"] and history.model.vocab is None
