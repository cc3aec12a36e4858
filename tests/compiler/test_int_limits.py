"""Integers are 64-bit wherever they come from: a literal, constant arithmetic, a hyperparameter
set from the command line or from Python.  Beyond that a diagnostic says so; it never reaches
float conversions that overflow (found by fuzzing: `linear` on a 400-digit size)."""

import pytest

from dln.compiler import pipeline
from dln.dsl import DlnError

SOURCE = """model m(hidden: int = 8) {
    input x: f32[B, 4]
    output y = x -> linear(hidden) -> linear(2)
}
"""


def _build(source: str = SOURCE, **overrides):
    return pipeline.build_model(pipeline.load(source, path="m.dln"), None, overrides, from_text=True)


@pytest.mark.parametrize("value", ["9" * 400, str(10**30), str(2**63 + 1), str(-(2**63) - 1)])
def test_a_set_beyond_64_bits_is_e0401_at_the_hyperparameter(value):
    with pytest.raises(DlnError) as e:
        _build(hidden=value)
    d = e.value.diagnostics[0]
    assert d.code == "E0401" and "64-bit" in d.message
    assert (d.span.line, d.span.col) == (1, 9)


def test_a_python_override_beyond_64_bits_is_e0401():
    program = pipeline.load(SOURCE, path="m.dln")
    with pytest.raises(DlnError) as e:
        pipeline.build_model(program, None, {"hidden": 10**30})
    assert e.value.code == "E0401"


def test_the_largest_int_is_accepted():
    spec = _build(hidden=str(2**63 - 1))
    assert any(p.type.shape[0] == 2**63 - 1 for p in spec.params)


@pytest.mark.parametrize("expr,code", [
    ("9" * 40, "E0104"),                                      # the literal
    ("9223372036854775807 * 2", "E0208"),                     # a product
    ("9223372036854775807 + 9223372036854775807", "E0208"),  # a sum
])
def test_a_constant_beyond_64_bits_is_a_located_diagnostic(expr, code):
    with pytest.raises(DlnError) as e:
        _build(SOURCE.replace("= 8", f"= {expr}"))
    d = e.value.diagnostics[0]
    assert d.code == code and d.span is not None and d.span.line == 1
