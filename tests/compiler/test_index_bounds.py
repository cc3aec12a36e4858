"""Indices, slice bounds and other sizes on symbolic axes: proven out of range at compile time, or required
of the inputs when they bind."""

import numpy as np
import pytest

import dln
from dln.compiler import pipeline

SOURCE = """
model m() {
    input x: f32[B, T, 4]
    output a = x[:, 2]
    output b = x[:, -3]
}
"""


def test_in_range_indices_read_the_right_elements(rng):
    x = rng.standard_normal((2, 5, 4)).astype(np.float32)
    out = dln.compile(SOURCE)(x=x)
    np.testing.assert_array_equal(out["a"], x[:, 2])
    np.testing.assert_array_equal(out["b"], x[:, -3])


@pytest.mark.parametrize("length", [2, 1])
def test_too_short_an_axis_is_an_error_at_the_index(length):
    with pytest.raises(dln.DlnError) as e:
        dln.compile(SOURCE)(x=np.zeros((2, length, 4), np.float32))
    assert e.value.code == "E0207"
    assert e.value.diagnostics[0].span.line in (4, 5)


def test_the_axis_size_itself_is_out_of_range_at_compile_time():
    with pytest.raises(dln.DlnError) as e:
        dln.compile("model m() {\n    input x: f32[B, T, 4]\n    output a = x[:, T]\n}\n")
    assert e.value.code == "E0207"


# ---- slices: their bounds decide the result's size, so on a symbolic axis they are required too ------------------

def _run(source: str, **inputs):
    return dln.compile(source)(**inputs)


def _fails(source: str, code: str, line: int, **inputs) -> dln.DlnError:
    with pytest.raises(dln.DlnError) as e:
        _run(source, **inputs)
    assert e.value.code == code, str(e.value)
    assert e.value.diagnostics[0].span.line == line
    return e.value


HEAD = "model m() {\n    input x: f32[B, 4]\n"


@pytest.mark.parametrize("index,rows", [("0:3", 3), ("5:", 1), ("-3:", 3), ("B - 2:", 2), (":-5", 1)])
def test_a_slice_within_a_symbolic_axis_reads_numpy_rows(index, rows, rng):
    x = rng.standard_normal((6, 4)).astype(np.float32)
    out = _run(HEAD + f"    output y = x[{index}, :]\n}}\n", x=x)["y"]
    np.testing.assert_array_equal(out, eval(f"x[{index.replace('B', '6')}, :]"))
    assert out.shape == (rows, 4)


@pytest.mark.parametrize("index,rows", [("0:3", 2), ("5:", 4), ("-3:", 2), (":-5", 4)])
def test_a_slice_past_a_symbolic_axis_is_an_error_when_the_inputs_bind(index, rows):
    error = _fails(HEAD + f"    output y = x[{index}, :]\n}}\n", "E0207", 3, x=np.zeros((rows, 4), np.float32))
    assert "out of range for axis 0 of size B" in str(error) and f"B = {rows}" in str(error)


def test_a_slice_of_a_symbolic_axis_is_typed_with_what_it_requires():
    spec = pipeline.build_model(pipeline.load(HEAD + "    output y = x[5:, :]\n}\n"))
    assert str(spec.graph.output("y").type) == "f32[B - 5, 4]"
    assert [(str(c.lhs), c.relation, str(c.rhs)) for c in spec.graph.constraints] == [("5", "<=", "B")]


@pytest.mark.parametrize("index", ["0:B + 1", "2*B:", "B + 1:"])
def test_a_slice_that_can_never_fit_is_an_error_while_compiling(index):
    _fails(HEAD + f"    output y = x[{index}, :]\n}}\n", "E0207", 3)


def test_an_empty_slice_of_a_symbolic_axis_is_empty():
    out = _run(HEAD + "    output y = x[B:0, :]\n}\n", x=np.ones((3, 4), np.float32))["y"]
    assert out.shape == (0, 4)


def test_a_slice_of_a_known_axis_still_clamps_like_numpy(rng):
    x = rng.standard_normal((2, 4)).astype(np.float32)
    np.testing.assert_array_equal(_run(HEAD + "    output y = x[:, 1:100]\n}\n", x=x)["y"], x[:, 1:100])


def test_split_of_a_symbolic_axis_needs_sizes_that_add_up(rng):
    source = HEAD + "    p = split(x, (2, 4))\n    output y = p[1]\n}\n"
    x = rng.standard_normal((6, 4)).astype(np.float32)
    np.testing.assert_array_equal(_run(source, x=x)["y"], x[2:])
    error = _fails(source, "E0205", 3, x=x[:5])
    assert "split sizes (2, 4) do not add up to B" in str(error)


def test_gather_index_larger_than_the_input_on_another_axis_is_required_not_to_be(rng):
    source = "model m() {\n    input x: f32[B, 3]\n    input i: i64[N, 2]\n    output y = gather(x, 1, i)\n}\n"
    x = rng.standard_normal((4, 3)).astype(np.float32)
    assert _run(source, x=x, i=np.zeros((4, 2), np.int64))["y"].shape == (4, 2)
    error = _fails(source, "E0207", 4, x=x, i=np.zeros((5, 2), np.int64))
    assert "gather's index [N, 2] is larger than the input [B, 3] on axis 0" in str(error)


def test_arange_to_a_dimension_needs_an_end_after_its_start():
    source = HEAD + "    output y = arange(5, B)\n}\n"
    np.testing.assert_array_equal(_run(source, x=np.zeros((7, 4), np.float32))["y"], [5, 6])
    assert _run(source, x=np.zeros((5, 4), np.float32))["y"].shape == (0,)
    _fails(source, "E0207", 3, x=np.zeros((3, 4), np.float32))


def test_sizes_a_binding_cannot_have_count_no_work():
    from dln.compiler.cost import size
    from dln.compiler.symbolic import Sym

    assert size((Sym.var("B") - 5, 4), {"B": 1}) == 0   # `dln check` counts per example, B = 1
    assert size((Sym.var("B") - 5, 4), {"B": 7}) == 8
