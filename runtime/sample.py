"""Generation from a character-level language model (`dln sample`, `Model.sample`).

The model reads a token tensor `[B, T]` (integers) and declares an output of logits `[B, T, V]`.
It is built as a *stream* (`build_model(stream=True)`): every recurrent layer given no initial
state reads it from a carry input and returns its final state as the output `carry:<name>`.  The
prompt runs once (batch 1, length P) from zero states; then each new token runs alone (length 1)
from the states the previous run ended with, so the prefix is never run again.  T is a symbol,
so the two lengths share one compiled graph (one plan per length in the interpreter).

A model without recurrent layers (no carries) has no state to carry: each token re-runs the
last `window` tokens of the text so far.  By default that is the window length the train section's
`dataset("text", window = N)` trains on (else the whole text): a transformer's learned position
table has only as many rows as the length it was built for (`embedding(arange(T), ctx, dim)`), and
even a model that accepts any length has learnt nothing about positions past those it trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np

from dln.compiler import pipeline
from dln.compiler.build import BuiltModel, InputInfo
from dln.compiler.ir import Graph, Op
from dln.dsl.diagnostics import Diagnostic, DlnError, Note
from dln.runtime import text
from dln.runtime.numpy_ops import np_dtype

if TYPE_CHECKING:
    from dln.runtime.api import Model


@dataclass
class Stream:
    """What generation needs of a model: its stream build, the graph of its logits, the prepared run."""

    spec: BuiltModel
    graph: Graph
    prepared: Any
    tokens: InputInfo
    logits: str
    classes: int


def stream_of(model: Model) -> Stream:
    """The model's stream build and the graph computing its logits (and carries), checked for sampling."""
    spec = pipeline.build_model(model.program, model.name, model.hparams_given, training=False,
                                from_text=model.from_text, limits=model.limits, stream=True)
    logits = _logits_output(spec)
    graph = pipeline.forward_graph(spec, [logits], model.debug)
    tokens = _token_input(spec, graph, logits)
    classes = spec.graph.output(logits).type.shape[-1]
    prepared = model.backend.prepare(graph, model.persistent, spec.state_donations())
    return Stream(spec, graph, prepared, tokens, logits, int(classes))


def _unfit(spec: BuiltModel, message: str, *notes: Note) -> DlnError:
    return DlnError(Diagnostic("E0701", f"model {spec.name} cannot generate text: {message}", spec.decl.name.span,
                               notes))


def _logits_output(spec: BuiltModel) -> str:
    """The declared output `[B, T, V]` of floats with V a number: the one named logits, else the only one."""
    fits = [n for n in spec.outputs if _is_logits(spec.graph.output(n).type)]
    if "logits" in fits:
        return "logits"
    if len(fits) == 1:
        return fits[0]
    outputs = ", ".join(f"{n} {spec.graph.output(n).type}" for n in spec.outputs) or "none"
    why = "several outputs could be the logits" if fits else "no output is logits [B, T, vocab]"
    raise _unfit(spec, why, Note(f"its outputs: {outputs}"),
                 Note("declare one output of floats [B, T, vocab] (output logits)"))


def _is_logits(t) -> bool:
    return t.rank == 3 and t.dtype.is_float and isinstance(t.shape[-1], int)


def _token_input(spec: BuiltModel, graph: Graph, logits: str) -> InputInfo:
    """The one input the logits need: integers [B, T]."""
    needed = [n.attrs["name"] for n in graph.nodes if n.op is Op.INPUT and n.attrs["role"] == "input"]
    infos = {i.name: i for i in spec.inputs}
    fits = [infos[n] for n in needed if n in infos and infos[n].type.rank == 2 and infos[n].type.dtype.is_int]
    if len(needed) == 1 and len(fits) == 1:
        info = fits[0]
        batch = info.type.shape[0]
        if isinstance(batch, int) and batch != 1:
            raise _unfit(spec, f"its token input '{info.name}' {info.type} has a fixed batch of {batch}",
                         Note("generation runs one sequence: give it a symbolic batch ([B, T])", info.span))
        return info
    listing = ", ".join(f"{n} {infos[n].type}" for n in needed if n in infos) or "none"
    raise _unfit(spec, f"its {logits} must depend on one input of token ids [B, T] (integers)",
                 Note(f"the inputs {logits} needs: {listing}"))


def vocab_of(model: Model) -> list[str]:
    """The vocabulary the weights (or training) recorded, else the train section's text data set's."""
    if model.vocab is not None:
        return model.vocab
    if _text_data(model) is not None:
        return list(text.vocabulary())
    raise DlnError(Diagnostic("E0703", f"model {model.name} has no vocabulary to map its token ids to characters",
                              model.spec.decl.name.span,
                              (Note("load weights trained on dataset(\"text\"), which record it; from Python, "
                                    "model.sample(..., vocab=...) names the characters"),)))


def _text_data(model: Model):
    """The train section's `dataset("text", ...)` (a DataSpec), or None."""
    from dln.runtime.train import recipe_for

    data = recipe_for(model).data if model.program.root.trains else None
    return data if data is not None and data.kind == "dataset" and data.arg("name") == "text" else None


def trained_window(model: Model) -> int | None:
    """The length of the windows the train section's text data set trains on, or None without one."""
    data = _text_data(model)
    return None if data is None else int(data.arg("window") or text.DEFAULT_WINDOW)


def check_vocab(stream: Stream, vocab: Sequence[str]) -> None:
    if len(vocab) > stream.classes:
        spec = stream.spec
        raise DlnError(Diagnostic(
            "E0703", f"the vocabulary has {len(vocab)} characters but model {spec.name}'s {stream.logits} has "
                     f"{stream.classes} classes", spec.decl.name.span,
            (Note(f"train it with vocab = {len(vocab)} (or more)"),)))


def check_prompt(prompt: str, vocab: Sequence[str]) -> None:
    bad = text.unknown_characters(prompt, vocab)
    if bad:
        listing = ", ".join(f"{c!r} (position {k})" for k, c in bad[:5]) + (", ..." if len(bad) > 5 else "")
        raise DlnError(Diagnostic("E0701", f"the prompt has characters the model's vocabulary lacks: {listing}",
                                  None, (Note(f"the vocabulary ({len(vocab)} characters): "
                                              f"{''.join(vocab)!r:.200}"),)))


def generate(model: Model, stream: Stream, vocab: Sequence[str], prompt: str, tokens: int, temperature: float,
             seed: int, window: int | None) -> Iterator[str]:
    """The characters after `prompt`, one at a time."""
    rng = np.random.default_rng(seed)
    ids = list(text.encode(prompt, vocab))
    fixed = stream.tokens.type.shape[1]
    if stream.spec.carries and not isinstance(fixed, int):
        carries = {c.name: np.zeros(_carry_shape(c, 1), np_dtype(c.type.dtype)) for c in stream.spec.carries}
        logits, carries = _run(model, stream, np.array([ids], np.int64), carries)
        for k in range(tokens):
            nxt = pick(logits[0, -1, :len(vocab)], temperature, rng)
            yield vocab[nxt]
            if k + 1 < tokens:   # the last character's successor is not asked for
                logits, carries = _run(model, stream, np.array([[nxt]], np.int64), carries)
        return
    # No state to carry (or a fixed length): run a window of the text so far for every token.
    if isinstance(fixed, int):
        if len(ids) < fixed:
            raise DlnError(Diagnostic("E0701", f"the prompt has {len(ids)} characters; model {stream.spec.name} "
                                               f"reads exactly {fixed} ({stream.tokens.name} {stream.tokens.type})",
                                      stream.tokens.span))
        window = fixed
    elif window is None:
        window = trained_window(model)
    zeros = {c.name: np.zeros(_carry_shape(c, 1), np_dtype(c.type.dtype)) for c in stream.spec.carries}
    for _ in range(tokens):
        context = ids[-window:] if window else ids
        try:
            logits, _ = _run(model, stream, np.array([context], np.int64), zeros)
        except DlnError as e:   # most likely a position table shorter than the window: say what was run
            first, *rest = e.diagnostics
            ran = f"the last {len(context)} characters of the text" if window else "all of the text so far"
            raise DlnError([first.with_note(f"generation ran {ran}; --window (window=) sets fewer"),
                            *rest]) from None
        nxt = pick(logits[0, -1, :len(vocab)], temperature, rng)
        ids.append(nxt)
        yield vocab[nxt]


def _carry_shape(c, batch: int) -> tuple[int, ...]:
    """A carry's shape [layers * directions, B, H] for a batch of `batch`."""
    return tuple(d if isinstance(d, int) else batch for d in c.type.shape)


def _run(model: Model, stream: Stream, tokens: np.ndarray, carries: dict[str, np.ndarray]
         ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    feeds, env = model.feeds(stream.spec, stream.graph, {stream.tokens.name: tokens})
    feeds.update(carries)
    out = stream.prepared.run(feeds, env)
    # The executable owns its outputs until its next run: copy what the next run reads.
    be = model.backend
    logits = be.to_numpy(out[stream.logits])[:, -1:].astype(np.float64)
    return logits, {c.name: be.to_numpy(out[f"carry:{c.name}"]).copy() for c in stream.spec.carries}


def next_distribution(logits: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(logits / temperature) in float64 (shifted first, so that a tiny temperature gives 0 and
    1, not inf / inf)."""
    z = logits.astype(np.float64)
    z = np.exp((z - z.max()) / temperature)
    return z / z.sum()


def pick(logits: np.ndarray, temperature: float, rng: np.random.Generator) -> int:
    """argmax at temperature 0; else a draw from softmax(logits / temperature) by its cumulative sums
    (one uniform number a token, so a seed fixes the text)."""
    if temperature == 0:
        return int(np.argmax(logits))
    p = next_distribution(logits, temperature)
    k = int(np.searchsorted(np.cumsum(p), rng.random() * p.sum(), side="right"))
    return min(k, len(p) - 1)
