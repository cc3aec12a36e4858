"""Constant folding keeps only the identities that hold for every input, signed zeros included."""

import numpy as np
import pytest
import torch

from dln.compiler import pipeline
from dln.compiler.emit import GraphBuilder
from dln.compiler.ir import DType, Op, TensorType
from dln.compiler.passes.fold import fold
from dln.runtime.interpreter import Executable

X = np.array([-0.0, 0.0, 1.5, -2.0, np.inf, np.nan])


def _graph(op: Op, constant: float, dtype: DType = DType.F64, constant_first: bool = False):
    b = GraphBuilder("fold")
    x = b.input("x", TensorType(dtype, X.shape))
    c = b.const(constant, dtype, X.shape)
    y = b.emit(op, (c, x) if constant_first else (x, c))
    return b.finish([("y", y)])


@pytest.mark.parametrize("op,constant,first,removed", [
    (Op.ADD, 0.0, False, False),   # -0.0 + 0.0 is +0.0
    (Op.ADD, 0.0, True, False),
    (Op.ADD, -0.0, False, True),
    (Op.ADD, -0.0, True, True),
    (Op.SUB, 0.0, False, True),
    (Op.SUB, -0.0, False, False),  # -0.0 - -0.0 is +0.0
    (Op.MUL, 1.0, False, True),
    (Op.MUL, 1.0, True, True),
    (Op.DIV, 1.0, False, True),
    (Op.MUL, 0.0, False, False),   # inf * 0 is nan
])
def test_float_identities_are_removed_only_when_exact(op, constant, first, removed):
    graph = _graph(op, constant, constant_first=first)
    folded = fold(graph)
    assert (op not in {n.op for n in folded.nodes}) is removed
    y = Executable(pipeline.optimize(graph)).run({"x": X}, {})["y"]
    a, c = torch.tensor(X), torch.tensor(constant, dtype=torch.float64)
    ref = {Op.ADD: torch.add, Op.SUB: torch.sub, Op.MUL: torch.mul, Op.DIV: torch.div}[op](
        *((c, a) if first else (a, c))).numpy()
    np.testing.assert_array_equal(y, ref)
    signed = ~np.isnan(ref)
    np.testing.assert_array_equal(np.signbit(y[signed]), np.signbit(ref[signed]))


def test_adding_integer_zero_is_removed():
    b = GraphBuilder("fold")
    x = b.input("x", TensorType(DType.I64, (3,)))
    g = b.finish([("y", b.add(x, 0))])
    assert [n.op for n in fold(g).nodes if n.op is not Op.CONST] == [Op.INPUT]
