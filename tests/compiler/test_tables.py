"""Every primitive is complete: a shape rule, a NumPy implementation, and a
gradient rule (or a declared absence of gradient).

Parametrized over `Op`, so a missing entry fails the test naming that op.
"""

from __future__ import annotations

import pytest

from dln.compiler import autodiff, shapes
from dln.compiler.ir import Op
from dln.runtime import interpreter, numpy_ops  # noqa: F401  (the interpreter adds scan and result to IMPLS)

ALL_OPS = list(Op)


@pytest.mark.parametrize("op", ALL_OPS, ids=str)
def test_shape_rule(op):
    assert op in shapes.SHAPE_RULES, f"{op} has no shape rule"


# Graph inputs are not computed: the interpreter binds them to the arrays fed in
# (`interpreter.evaluate`, `Executable`), so `input` alone needs no implementation.
# A composite runs as its decomposition (test_composites checks every one).
FED_BY_THE_INTERPRETER = frozenset({Op.INPUT, Op.COMPOSITE})


@pytest.mark.parametrize("op", ALL_OPS, ids=str)
def test_numpy_impl(op):
    assert op in numpy_ops.IMPLS or op in FED_BY_THE_INTERPRETER, f"{op} has no NumPy implementation"


def test_inputs_are_fed_by_the_interpreter():
    import numpy as np

    from dln.compiler.emit import GraphBuilder
    from dln.compiler.ir import DType, TensorType
    from dln.runtime.interpreter import Executable, evaluate

    b = GraphBuilder("fed")
    x = b.input("x", TensorType(DType.F64, (3, 5)))
    g = b.finish([("y", b.neg(x))])
    value = np.arange(15.0).reshape(3, 5)
    np.testing.assert_array_equal(evaluate(g, {"x": value}, {})["y"], -value)
    np.testing.assert_array_equal(Executable(g).run({"x": value}, {})["y"], -value)


@pytest.mark.parametrize("op", ALL_OPS, ids=str)
def test_gradient_rule_or_declared_none(op):
    assert op in autodiff.VJP or op in autodiff.NO_GRADIENT, f"{op} has no VJP and is not in NO_GRADIENT"


@pytest.mark.parametrize("op", ALL_OPS, ids=str)
def test_not_both_vjp_and_no_gradient(op):
    # An op in NO_GRADIENT is skipped by autodiff, so a VJP for it would be dead (and a sign of confusion).
    assert not (op in autodiff.VJP and op in autodiff.NO_GRADIENT), f"{op} has a VJP but is in NO_GRADIENT"


def test_missing_helpers_agree():
    assert shapes.missing_rules() == []
    assert autodiff.missing_rules() == []


def test_tables_only_name_ops():
    for table in (shapes.SHAPE_RULES, numpy_ops.IMPLS, autodiff.VJP):
        assert all(isinstance(k, Op) for k in table)
    assert all(isinstance(k, Op) for k in autodiff.NO_GRADIENT)


@pytest.mark.parametrize("op", ALL_OPS, ids=str)
def test_torch_table_entry(op):
    """`dln bench` runs a step graph op by op with PyTorch: every computed op needs its torch twin."""
    from dln.runtime.torch_graph import torch_table

    assert op in torch_table() or op in FED_BY_THE_INTERPRETER, f"{op} has no entry in the torch table"
