"""Names of the train section used in a model: an unknown name, with a note saying where it belongs.

The list is derived from the train section's own registry, so a function added there is covered here."""

import pytest

import dln
from dln.compiler import builtins as lib
from dln.compiler.build import _TRAIN_ONLY
from dln.compiler.train_functions import FILLS, TRAIN_BUILTINS


def test_train_only_names_are_the_train_functions_less_the_model_builtins():
    assert _TRAIN_ONLY == (set(TRAIN_BUILTINS) | set(FILLS)) - set(lib.BUILTINS)
    assert {"adam", "step", "randn", "npz", "patience"} <= _TRAIN_ONLY
    assert not {"linear", "zeros"} & _TRAIN_ONLY   # a layer and an initializer in a model


@pytest.mark.parametrize("name", sorted(_TRAIN_ONLY))
def test_a_train_function_in_a_model_says_where_it_belongs(name):
    with pytest.raises(dln.DlnError) as e:
        dln.compile(f"model m() {{\n    input x: f32[B, 4]\n    output y = x * {name}\n}}\n")
    assert e.value.code == "E0301"
    assert "exists only inside a train section" in str(e.value)
