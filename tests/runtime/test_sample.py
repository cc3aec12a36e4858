"""Generation (`Model.sample`, `dln sample`): carried recurrent state against re-running the prefix
and against PyTorch, greedy and seeded draws, the CLI, and the mistakes a user can make."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

import dln
from dln.dsl.diagnostics import DlnError
from dln.runtime import cli, sample, text

ROOT = Path(__file__).resolve().parents[2]
LSTM = ROOT / "examples" / "lstm_charlm.dln"
GRU = ROOT / "examples" / "gru_charlm.dln"
SMALL = {"dim": 8, "hidden": 16}
VOCAB = list(text.vocabulary())

# Two layers: the carry of each layer must go back to its own layer.
TWO_LAYERS = """
model lm(vocab: int = 103, hidden: int = 12) {
    input tokens: i64[B, T]
    input targets: i64[B, T]
    h      = tokens -> embedding(vocab, 6, name = "embed") -> lstm(hidden, layers = 2, name = "lstm")
    logits = h -> linear(vocab)
    loss   = cross_entropy(logits, targets)
    output logits
}
train lm { data = dataset("text") }
"""

# No recurrence: generation re-runs a window of the text.
BIGRAM = """
model bigram(vocab: int = 103) {
    input tokens: i64[B, T]
    input targets: i64[B, T]
    logits = tokens -> embedding(vocab, 16) -> tanh -> linear(vocab)
    loss   = cross_entropy(logits, targets)
    output logits
}
train bigram { data = dataset("text") }
"""

# Learned positions: a table of `ctx` rows, trained on windows of ctx characters.
TINY_GPT = """
model gpt(vocab: int = 103, dim: int = 16, ctx: int = 8) {
    input tokens: i64[B, T]
    input targets: i64[B, T]
    h      = embedding(tokens, vocab, dim) + embedding(arange(T), ctx, dim, name = "pos")
    h      = h + attention(layernorm(h), heads = 2, causal = true)
    logits = h -> layernorm -> linear(vocab, bias = false)
    loss   = cross_entropy(logits, targets)
    output logits
}
train gpt { data = dataset("text", window = 8) }
"""


def _distribution(model, ids: list[int]) -> np.ndarray:
    """The next character's distribution from running the whole prefix, without carried state."""
    logits = model(tokens=np.array([ids], np.int64))["logits"]
    return sample.next_distribution(np.asarray(logits)[0, -1], 1.0)


def _strong(model) -> None:
    """Recurrent weights scaled up, so that the state holds on to the past: with the small default
    initialization a character's influence fades within a few steps, and carrying the state or
    dropping it would give nearly the same logits."""
    state = model.state_dict()
    model.load_state_dict({k: v * 4 if "weight_hh" in k or "weight_ih" in k else v for k, v in state.items()})


def _logits(model, ids: list[int]) -> np.ndarray:
    return np.asarray(model(tokens=np.array([ids], np.int64))["logits"])[0, -1]


@pytest.mark.parametrize("source", [LSTM, GRU, TWO_LAYERS], ids=["lstm", "gru", "lstm-2-layers"])
def test_carried_state_gives_the_logits_of_the_whole_prefix(source):
    kwargs = SMALL if isinstance(source, Path) else {}
    model = dln.compile(source if isinstance(source, Path) else source, seed=3, **kwargs)
    _strong(model)
    stream = sample.stream_of(model)
    assert stream.spec.carries, "the stream build carries no state"
    ids = list(text.encode("The \"assert\" statement", VOCAB))
    zeros = {c.name: np.zeros(sample._carry_shape(c, 1), np.float32) for c in stream.spec.carries}
    logits, carries = sample._run(model, stream, np.array([ids[:4]], np.int64), zeros)
    forgetful = 0.0   # how far a run from zero state is from the whole prefix's: what carrying is worth
    for k in range(4, len(ids)):
        want = _logits(model, ids[:k])
        np.testing.assert_allclose(logits[0, -1], want, rtol=0, atol=1e-5)
        fresh, _ = sample._run(model, stream, np.array([[ids[k - 1]]], np.int64), zeros)
        forgetful = max(forgetful, float(np.abs(fresh[0, -1] - want).max()))
        logits, carries = sample._run(model, stream, np.array([[ids[k]]], np.int64), carries)
    assert forgetful > 0.1   # so the agreement above is the carried state's doing


def test_carried_state_matches_torch():
    """The prompt run with zero state, then single tokens with carried state: nn.LSTM on the whole text."""
    model = dln.compile(LSTM, seed=1, **SMALL)
    net = torch.nn.ModuleDict({"embed": torch.nn.Embedding(103, 8),
                               "lstm": torch.nn.LSTM(8, 16, batch_first=True), "logits": torch.nn.Linear(16, 103)})
    net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in model.state_dict().items()})
    prompt = "Assert statements"
    continuation = model.sample(prompt, 12, temperature=0, vocab=VOCAB)
    ids = torch.from_numpy(text.encode(prompt + continuation, VOCAB))[None]
    with torch.no_grad():
        logits = net["logits"](net["lstm"](net["embed"](ids))[0])[0]
    # each generated character is the argmax of torch's logits at the position before it
    want = "".join(VOCAB[int(i)] for i in logits[len(prompt) - 1:-1].argmax(-1))
    assert continuation == want


def test_greedy_sampling_is_the_argmax_chain_of_whole_prefix_runs():
    model = dln.compile(GRU, seed=2, **SMALL)
    got = model.sample("The ", 15, temperature=0)
    ids = list(text.encode("The ", VOCAB))
    for _ in range(15):
        ids.append(int(np.argmax(_distribution(model, ids))))
    assert got == "".join(VOCAB[i] for i in ids[4:])


def test_seeded_sampling_is_reproducible_and_follows_the_distribution():
    model = dln.compile(LSTM, seed=0, **SMALL)
    a = model.sample("The ", 60, temperature=1.0, seed=7)
    assert len(a) == 60 and set(a) <= set(VOCAB)
    assert model.sample("The ", 60, temperature=1.0, seed=7) == a
    assert model.sample("The ", 60, temperature=1.0, seed=8) != a
    # at a low temperature the draws concentrate on the likeliest character
    cold = model.sample("The ", 30, temperature=1e-4, seed=7)
    assert cold == model.sample("The ", 30, temperature=0)


def test_pick_draws_by_the_distribution():
    rng = np.random.default_rng(0)
    logits = np.log(np.array([0.7, 0.2, 0.1]))
    counts = np.bincount([sample.pick(logits, 1.0, rng) for _ in range(4000)], minlength=3) / 4000
    np.testing.assert_allclose(counts, [0.7, 0.2, 0.1], atol=0.03)
    # temperature 2 flattens: p ∝ sqrt(p)
    flat = np.sqrt([0.7, 0.2, 0.1]) / np.sqrt([0.7, 0.2, 0.1]).sum()
    np.testing.assert_allclose(sample.next_distribution(logits, 2.0), flat, rtol=1e-12)
    # a temperature near 0 is the argmax, without overflow
    np.testing.assert_array_equal(sample.next_distribution(np.array([1.0, 3.0, 2.0]), 1e-300), [0, 1, 0])


def test_a_model_without_recurrence_reruns_a_window():
    model = dln.compile(BIGRAM, seed=0)
    got = model.sample("The ", 10, temperature=0, window=3)
    ids = list(text.encode("The ", VOCAB))
    for _ in range(10):
        ids.append(int(np.argmax(_distribution(model, ids[-3:]))))
    assert got == "".join(VOCAB[i] for i in ids[4:])


def test_learned_positions_read_the_trained_window():
    """Past `ctx` characters a transformer re-reads the last 8 (its data set's window): the whole
    text would index past its position table."""
    model = dln.compile(TINY_GPT, seed=0)
    assert sample.trained_window(model) == 8
    got = model.sample("The ", 12, temperature=0)
    ids = list(text.encode("The ", VOCAB))
    for _ in range(12):
        ids.append(int(np.argmax(_distribution(model, ids[-8:]))))
    assert got == "".join(VOCAB[i] for i in ids[4:])
    with pytest.raises(DlnError, match="out of bounds") as e:
        model.sample("The ", 12, temperature=0, window=9)
    assert "the last 9 characters" in str(e.value) and "--window" in str(e.value)


# ---- the command line ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """A few steps of training on the text: the weights record the vocabulary."""
    out = tmp_path_factory.mktemp("charlm") / "w.safetensors"
    history = dln.train(str(LSTM), epochs=1, validate=0.0, progress=False, log=lambda s: None, **SMALL,
                        **{"batch": 64})
    assert history.model.vocab == VOCAB
    history.model.save(out)
    return out


def test_dln_sample_prints_the_prompt_and_its_continuation(weights, capsys):
    args = ["sample", str(LSTM), "--weights", str(weights), "--prompt", "The ", "--tokens", "40",
            "--temperature", "0", "--set", "dim=8", "--set", "hidden=16"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    model = dln.compile(LSTM, **SMALL)
    model.load(weights)
    assert model.vocab == VOCAB
    assert out == "The " + model.sample("The ", 40, temperature=0) + "\n"
    seeded = [a for a in args if a not in ("--temperature", "0")] + ["--seed", "5"]
    assert cli.main(seeded) == 0
    assert capsys.readouterr().out == "The " + model.sample("The ", 40, seed=5) + "\n"


def test_dln_sample_continues_past_the_transformer_examples_context(tmp_path, capsys):
    """examples/transformer_charlm.dln (small): 80 characters after a 4-character prompt, past its
    64 positions, each from the last 64 characters."""
    gpt = ROOT / "examples" / "transformer_charlm.dln"
    small = {"dim": 16, "heads": 2, "layers": 1}
    model = dln.compile(gpt, seed=1, **small)
    model.save(tmp_path / "gpt.safetensors")
    args = ["sample", str(gpt), "--weights", str(tmp_path / "gpt.safetensors"), "--prompt", "The ", "--tokens",
            "80", "--temperature", "0", *(f"--set={k}={v}" for k, v in small.items())]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    ids = list(text.encode("The ", VOCAB))
    for _ in range(80):
        ids.append(int(np.argmax(_distribution(model, ids[-64:]))))
    assert out == "".join(VOCAB[i] for i in ids) + "\n"


def _cli_error(args: list[str], capsys) -> tuple[int, str]:
    code = cli.main(args)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.err


def test_dln_sample_mistakes(weights, tmp_path, capsys):
    small = ["--set", "dim=8", "--set", "hidden=16"]
    base = ["sample", str(LSTM), "--weights", str(weights), *small]
    code, err = _cli_error(base + ["--prompt", "Théo"], capsys)
    assert code == 1 and "error[E0701]" in err and "'é' (position 2)" in err
    code, err = _cli_error(["sample", str(LSTM), "--weights", str(tmp_path / "none.safetensors"), "--prompt", "a",
                            *small], capsys)
    assert code == 1 and "error[E0702]" in err
    code, err = _cli_error(["sample", str(GRU), "--weights", str(weights), "--prompt", "a", *small], capsys)
    assert code == 1 and "error[E0703]" in err and "lstm_charlm" in err   # the weights of the other model
    code, err = _cli_error(["sample", str(LSTM), "--weights", str(weights), "--prompt", "a"], capsys)
    assert code == 1 and "error[E0703]" in err   # the sizes differ
    mlp = ROOT / "examples" / "mlp_digits.dln"
    dln.compile(mlp).save(tmp_path / "mlp.safetensors")
    code, err = _cli_error(["sample", str(mlp), "--weights", str(tmp_path / "mlp.safetensors"), "--prompt", "a"],
                           capsys)
    assert code == 1 and "error[E0701]" in err and "cannot generate text" in err and "mlp_digits.dln:2" in err
    assert cli.main(base + ["--prompt", ""]) == 2
    with pytest.raises(SystemExit) as e:
        cli.main(base + ["--prompt", "a", "--temperature", "-1"])
    assert e.value.code == 2
    capsys.readouterr()


def test_sample_argument_mistakes(tmp_path):
    model = dln.compile(LSTM, **SMALL)
    for kwargs in ({"prompt": "", "tokens": 3}, {"prompt": 5, "tokens": 3}, {"prompt": "a", "tokens": -1},
                   {"prompt": "a", "tokens": 2.5}, {"prompt": "a", "tokens": 3, "temperature": -0.5},
                   {"prompt": "a", "tokens": 3, "temperature": float("nan")}, {"prompt": "a", "tokens": 3, "seed": -1},
                   {"prompt": "a", "tokens": 3, "vocab": "aab"}):
        with pytest.raises(DlnError) as e:
            model.sample(**kwargs)
        assert e.value.diagnostics[0].code == "E0710", kwargs
    assert set(model.sample("a", 3, vocab="abc")) <= set("abc")   # a vocabulary given as a string


def test_a_vocabulary_larger_than_the_logits_and_a_missing_one(tmp_path):
    model = dln.compile(LSTM, vocab=50, **SMALL)
    with pytest.raises(DlnError) as e:
        model.sample("a", 3)
    assert e.value.diagnostics[0].code == "E0703" and "103 characters" in e.value.diagnostics[0].message
    # a vocabulary within the logits: the ids past it are never drawn
    out = model.sample("ab", 50, vocab="abcdef", seed=1)
    assert set(out) <= set("abcdef")
    # no train section on text, no vocabulary in the weights
    plain = dln.compile(BIGRAM.replace('train bigram { data = dataset("text") }', ""))
    with pytest.raises(DlnError) as e:
        plain.sample("a", 3)
    assert e.value.diagnostics[0].code == "E0703" and "no vocabulary" in e.value.diagnostics[0].message


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton")
def test_the_triton_backend_generates_the_same_text():
    """The stream build's scan kernels (Triton's interpreter without a GPU) carry the state as NumPy does."""
    ours = dln.compile(LSTM, backend="triton", seed=0, **SMALL)
    _strong(ours)
    reference = dln.compile(LSTM, backend="numpy", seed=0, **SMALL)
    _strong(reference)
    assert ours.sample("The ", 8, temperature=0) == reference.sample("The ", 8, temperature=0)
