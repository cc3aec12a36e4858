"""Front-end rules that the corpus of bad programs does not show one file at a time:
reserved keywords, provably different dimensions, messages in the language's
own words, parameters too large to allocate."""

from __future__ import annotations

import pytest

import dln
from dln.compiler.program import load
from dln.compiler.symbolic import Sym, dims_equal
from dln.dsl import DlnError, parse

B, T = Sym.var("B"), Sym.var("T")


def _compile_error(source: str, **hparams) -> DlnError:
    with pytest.raises(DlnError) as info:
        dln.compile(source, backend="numpy", **hparams)
    return info.value


def test_names_that_start_with_a_keyword_are_names():
    source = """
model modelx(inputs: int = 4, trainer: int = 2) {
    input input_x: f32[B, 4]
    output_layer = input_x -> linear(inputs)
    returned = output_layer -> relu
    index = returned * 2.0
    output index
}

train modelx {
    inputs = { input_x = "x" }
    minimize_me = 1
}
"""
    module = parse(source)
    assert [m.name.name for m in module.models] == ["modelx"]
    assert [s.name.name for s in module.trains[0].settings] == ["inputs", "minimize_me"]


# The statement keywords (input, param, output, return, repeat) start a statement there:
# `output = ...` fails at the `=` (bad/013_syntax_keyword_as_name.dln).
@pytest.mark.parametrize("keyword", ["model", "block", "train", "in", "import", "minimize", "over", "with", "and",
                                     "or", "not", "true", "false"])
def test_every_keyword_is_reserved(keyword):
    with pytest.raises(DlnError) as info:
        parse(f"model m() {{\n    input x: f32[B, 4]\n    {keyword} = relu(x)\n    output x\n}}\n")
    (d,) = info.value.diagnostics
    assert d.code == "E0101" and (d.span.line, d.span.col) == (3, 5), d
    assert d.message == f"unexpected '{keyword}'"


@pytest.mark.parametrize("a, b, expected", [
    (12 * B, 5 * B, False),     # only B = 0 would do, and a size is at least 1
    (B + 1, B, False),
    (B * T + T, 0, False),
    (B * T, T, None),           # B may be 1
    (B - 1, 0, None),           # B may be 1
    (2 * B, B + T, None),
    (B * 4, 4 * B, True),
])
def test_dimensions_that_can_never_be_equal_are_provably_different(a, b, expected):
    assert dims_equal(a, b) is expected


def test_hyperparameter_values_are_shown_as_written_in_dln():
    source = "model m(d: int = 3, flag: bool = false) {\n    input x: f32[B, 4]\n    output y = x -> linear(d)\n}\n"
    err = _compile_error(source, d=True)
    assert "got a bool (true)" in str(err) and "True" not in str(err)
    err = _compile_error(source, flag="yes")
    assert 'got a string ("yes")' in str(err)


def test_keyword_arguments_of_train_functions_given_twice():
    source = """model m() {
    input x: f32[B, 4]
    input y: i64[B]
    loss = cross_entropy(x -> linear(3), y)
    output loss
}
train m {
    optimizer = adam(lr = 1e-3, lr = 1e-2)
}
"""
    with pytest.raises(DlnError) as info:
        from dln.compiler.recipe import recipe_of
        from dln.compiler.pipeline import build_model

        program = load(source, "<test>")
        recipe_of(program.root.trains[0], build_model(program, "m", training=True))
    assert info.value.code == "E0306"


def test_parameters_too_large_for_memory_are_a_diagnostic_not_a_crash():
    source = "model m() {\n    input x: f32[B, 4]\n    output y = x -> linear(1000000000000)\n}\n"
    err = _compile_error(source)
    (d,) = err.diagnostics
    assert d.code == "E0208" and d.span is not None and d.span.line == 3
    assert "memory" in d.message


def test_a_model_without_hyperparameters_needs_no_parentheses():
    """`model plain { ... }` as `train plain { ... }` (LANGUAGE.md §3); the same model as `model plain() { ... }`."""
    body = "{\n    input x: f32[B, 4]\n    output y = x -> linear(3)\n}\n"
    plain = dln.compile("model plain " + body, backend="numpy")
    empty = dln.compile("model plain() " + body, backend="numpy")
    assert plain.hparams == {} and plain.ir == empty.ir
    (model,) = parse("model plain " + body).models
    assert model.name.name == "plain" and model.hparams == ()
    # An instance of it is made with empty parentheses, as of any model.
    top = dln.compile("model top {\n    input x: f32[B, 4]\n    P = plain()\n    output z = P(x)\n}\n"
                      "model plain " + body, backend="numpy", model="top")
    assert list(top.parameters()) == ["P.y.weight", "P.y.bias"]
    err = _compile_error("model plain " + body, d=3)
    assert err.code == "E0402" and "plain has no hyperparameters" in str(err)


def test_a_byte_order_mark_is_accepted_and_columns_stay_right(tmp_path):
    """Editors on Windows may start a UTF-8 file with a byte-order mark: it is not part of the program."""
    text = "model m {\n    input x: f32[B, 4]\n    output y = relu(z)\n}\n"
    path = tmp_path / "bom.dln"
    path.write_bytes(b"\xef\xbb\xbf" + text.replace("relu(z)", "relu(x)").encode())
    assert dln.compile(str(path), backend="numpy").name == "m"
    for source in ("\ufeff" + text, str(path)):
        if source == str(path):
            path.write_bytes(b"\xef\xbb\xbf" + text.encode())
        with pytest.raises(DlnError) as info:
            dln.compile(source, backend="numpy")
        (d,) = info.value.diagnostics
        assert (d.code, d.span.line, d.span.col) == ("E0301", 3, 21), d
    with pytest.raises(DlnError) as info:   # on the first line too
        parse("\ufeffmodel m {\n    input x: f32[B, 4]\n")
    assert (info.value.diagnostics[0].span.line, info.value.diagnostics[0].span.col) == (2, 22)
    with pytest.raises(DlnError) as info:
        parse("\ufeffmodel 1")
    assert (info.value.diagnostics[0].span.line, info.value.diagnostics[0].span.col) == (1, 7)
