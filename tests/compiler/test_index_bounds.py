"""Integer indices on symbolic axes: proven out of range at compile time, or required of the inputs."""

import numpy as np
import pytest

import dln

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
