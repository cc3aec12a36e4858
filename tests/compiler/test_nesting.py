"""Deep programs: chains of operators and pipes compile however long (the evaluator walks them in a
loop); other nesting past a bound is E0313 at the place it goes too deep; never an internal error.
Values are checked against torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import dln
from dln.dsl.parser import MAX_NESTING
from dln.runtime import cli

N = 3000
X = np.random.default_rng(0).uniform(0.5, 1.5, (2, 4)).astype(np.float32)


def _model(expr: str, before: str = "") -> str:
    return before + "model m {\n    input x: f32[B, 4]\n    y = " + expr + "\n    output y\n}\n"


def _run(source: str) -> np.ndarray:
    return dln.compile(source, backend="numpy")(x=X)["y"]


def _fold(values, op):
    out = values[0]
    for v in values[1:]:
        out = op(out, v)
    return out


def test_a_long_sum_compiles():
    x = torch.from_numpy(X)
    np.testing.assert_allclose(_run(_model(" + ".join(["x"] * N))), _fold([x] * N, torch.add).numpy(), rtol=1e-5)


@pytest.mark.parametrize("ops", [("+", "-"), ("*", "/")])
def test_a_long_chain_of_operators_of_one_precedence_compiles_left_associative(ops):
    x = torch.from_numpy(X)
    torch_op = {"+": torch.add, "-": torch.sub, "*": torch.mul, "/": torch.div}
    expr, expected = "x", x
    for k in range(N):
        op, operand = ops[k % 2], (1.5, x)[k % 3 == 0]   # numbers and tensors mixed
        expr += f" {op} " + ("x" if operand is x else str(operand))
        expected = torch_op[op](expected, operand)
    np.testing.assert_allclose(_run(_model(expr)), expected.numpy(), rtol=1e-4)


def test_a_long_power_chain_compiles_right_associative():
    """x ** 1.0 ** 1.0 ** ... ** 2.0: right-associative, so x ** 1.0 = x (left-associative would give x ** 2)."""
    got = _run(_model("x ** " + " ** ".join(["1.0"] * N + ["2.0"])))
    np.testing.assert_allclose(got, X, rtol=1e-6)
    x = torch.from_numpy(X)
    expected = _fold(list(reversed([x] * N)), lambda acc, v: torch.pow(v, acc))
    np.testing.assert_allclose(_run(_model(" ** ".join(["x"] * N))), expected.numpy(), rtol=1e-4)


def test_long_unary_chains_and_pipes_compile():
    np.testing.assert_allclose(_run(_model("-" * (N + 1) + "x")), -X)
    x = torch.from_numpy(X)
    expected = x
    for _ in range(N):
        expected = torch.tanh(expected)
    np.testing.assert_allclose(_run(_model("x" + " -> tanh" * N)), expected.numpy(), rtol=1e-5)


def test_deep_parentheses_compile():
    np.testing.assert_allclose(_run(_model("(" * N + "x + 1.0" + ")" * N)), X + 1.0)


def test_a_long_chain_has_a_gradient():
    source = "model m {\n    input x: f32[B, 4]\n    h = x -> linear(4)\n    loss = mean(" + " + ".join(["h"] * N) \
             + ")\n    output loss\n}\n"
    model = dln.compile(source, backend="numpy")
    loss, grads = model.value_and_grad("loss", x=X)
    w, b = (torch.tensor(model.parameters()[k], requires_grad=True) for k in ("h.weight", "h.bias"))
    expected = (N * (torch.from_numpy(X) @ w.T + b)).mean()
    expected.backward()
    np.testing.assert_allclose(loss, expected.item(), rtol=1e-4)
    np.testing.assert_allclose(grads["h.weight"], w.grad.numpy(), rtol=1e-4)


def _error(source: str) -> dln.DlnError:
    with pytest.raises(dln.DlnError) as info:
        dln.compile(source, backend="numpy")
    return info.value


def test_nesting_just_under_the_bound_compiles_and_over_it_is_located():
    depth = MAX_NESTING - 4   # the model, the statement and the name take levels too
    np.testing.assert_allclose(_run(_model("relu(" * depth + "x" + ")" * depth)), X)
    (d,) = _error(_model("relu(" * N + "x" + ")" * N)).diagnostics
    assert d.code == "E0313" and d.span.line == 3 and d.span.col > 100, d
    (d,) = _error(_model("(" * N + "x" + ",)" * N)).diagnostics   # tuples in tuples
    assert d.code == "E0313" and d.span.line == 3, d


def test_blocks_inside_blocks_past_the_bound_are_located():
    blocks = "".join(f"block b{i}(x) {{ return b{i + 1}(x) + 1.0 }}\n" for i in range(150)) + \
        "block b150(x) { return x }\n"
    (d,) = _error(_model("b0(x)", blocks)).diagnostics
    assert d.code == "E0313" and "expand more than" in d.message and d.span is not None, d
    # Nesting under both bounds that still overflows Python's stack: located at the innermost statement.
    deep = "".join(f"block c{i}(x) {{ return " + "relu(" * 90 + f"c{i + 1}(x)" + ")" * 90 + " }\n" for i in range(10))
    (d,) = _error(_model("c0(x)", deep + "block c10(x) { return x }\n")).diagnostics
    assert d.code == "E0313" and d.span is not None and d.span.line <= 10, d


def test_the_command_line_reports_deep_programs_without_internal_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    programs = {"sum": _model(" + ".join(["x"] * N)), "power": _model(" ** ".join(["x"] * N)),
                "parens": _model("(" * N + "x" + ")" * N), "calls": _model("relu(" * N + "x" + ")" * N)}
    for name, text in programs.items():
        (tmp_path / f"{name}.dln").write_text(text)
        status = cli.main(["check", f"{name}.dln"])
        out = capsys.readouterr()
        assert "internal error" not in out.err and "Traceback" not in out.err, out.err
        if name == "calls":
            assert status == 1 and "error[E0313]" in out.err and f"--> {name}.dln:3:" in out.err, out.err
        else:
            assert status == 0 and out.out.startswith("ok"), out.err
