"""Every primitive with a gradient, built directly with the `GraphBuilder`, against torch (float64).

For each case a small graph computes `out = f(inputs)` and `loss = sum(out * w)`
with a fixed random `w` (so the cotangent reaching the op is not all ones).
Its value comes from `interpreter.evaluate`, its gradients from
`autodiff.grad`; torch.autograd on the same float64 inputs is the oracle.
The same graph, optimized and run by the planned `Executable` (the training
path), must agree too.  Smooth cases are also checked against central finite
differences of the forward graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest
import torch

from dln.compiler import pipeline
from dln.compiler.autodiff import grad
from dln.compiler.emit import GraphBuilder
from dln.compiler.ir import DType, Op, TensorType
from dln.runtime.interpreter import Executable, evaluate
from _data import R, normal, positive  # noqa: E402

RTOL, ATOL = 1e-10, 1e-12
FD_EPS, FD_RTOL, FD_ATOL = 1e-6, 1e-6, 1e-7

_DTYPES = {np.dtype(np.float64): DType.F64, np.dtype(np.int64): DType.I64, np.dtype(np.bool_): DType.BOOL}



@dataclass
class Case:
    id: str
    inputs: dict[str, np.ndarray]
    build: Callable            # (builder, **tensors) -> Tensor
    torch_fn: Callable         # (**torch tensors) -> torch tensor
    wrt: tuple[str, ...] = ()  # float inputs to differentiate (default: every float64 input)
    smooth: bool = True        # check against finite differences too


def _graph(case: Case):
    b = GraphBuilder(case.id)
    ts = {k: b.input(k, TensorType(_DTYPES[v.dtype], v.shape)) for k, v in case.inputs.items()}
    out = case.build(b, **ts)
    w = b.input("__w", TensorType(DType.F64, out.shape))
    loss = b.sum(b.mul(out, w))
    forward = b.finish([("out", out), ("loss", loss)])
    return forward, ts, out, loss


def _wrt(case: Case) -> tuple[str, ...]:
    return case.wrt or tuple(k for k, v in case.inputs.items() if v.dtype == np.float64)


def _dln(case: Case, w: np.ndarray):
    forward, ts, out, loss = _graph(case)
    wrt = _wrt(case)
    full, grads, _ = grad(forward, loss.id, [ts[k].id for k in wrt])
    outs = [("out", out.id), ("loss", loss.id)]
    for k in wrt:
        assert grads[ts[k].id] is not None, f"no gradient reaches {k}"
        outs.append((f"grad:{k}", grads[ts[k].id]))
    graph = full.with_outputs(outs)
    feeds = {**case.inputs, "__w": w}
    with np.errstate(divide="ignore", invalid="ignore"):
        reference = evaluate(graph, feeds, {})
    planned = Executable(pipeline.optimize(graph, debug=True)).run(feeds, {})
    return forward, reference, {k: np.array(v) for k, v in planned.items()}


def _torch(case: Case, w: np.ndarray):
    wrt = _wrt(case)
    ts = {k: torch.tensor(v, requires_grad=k in wrt) for k, v in case.inputs.items()}
    out = case.torch_fn(*ts.values())
    loss = (out * torch.tensor(w)).sum()
    grads = torch.autograd.grad(loss, [ts[k] for k in wrt])
    return out.detach().numpy(), {k: g.numpy() for k, g in zip(wrt, grads)}


def check(case: Case, seed: int = 99) -> None:
    forward, ts, out, _ = _graph(case)
    w = R(seed).standard_normal(tuple(int(d) for d in out.shape))
    _, ours, planned = _dln(case, w)
    ref_out, ref_grads = _torch(case, w)

    assert ours["out"].shape == ref_out.shape
    np.testing.assert_allclose(ours["out"], ref_out, rtol=RTOL, atol=ATOL, err_msg="value")
    np.testing.assert_allclose(planned["out"], ref_out, rtol=RTOL, atol=ATOL, err_msg="value (executable)")
    for k, g in ref_grads.items():
        assert ours[f"grad:{k}"].shape == g.shape, k
        np.testing.assert_allclose(ours[f"grad:{k}"], g, rtol=RTOL, atol=ATOL, err_msg=f"gradient of {k}")
        np.testing.assert_allclose(planned[f"grad:{k}"], g, rtol=RTOL, atol=ATOL,
                                   err_msg=f"gradient of {k} (executable)")

    if case.smooth:
        loss_graph = forward.with_outputs([("loss", forward.output("loss").id)])
        for k in _wrt(case):
            fd = _finite_difference(loss_graph, case.inputs, k, w)
            np.testing.assert_allclose(ours[f"grad:{k}"], fd, rtol=FD_RTOL, atol=FD_ATOL,
                                       err_msg=f"finite differences of {k}")


def _finite_difference(graph, inputs: dict[str, np.ndarray], name: str, w: np.ndarray) -> np.ndarray:
    base = {k: v.copy() for k, v in inputs.items()}
    base["__w"] = w
    x = base[name]
    out = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        saved = x[i]
        x[i] = saved + FD_EPS
        hi = float(evaluate(graph, base, {})["loss"])
        x[i] = saved - FD_EPS
        lo = float(evaluate(graph, base, {})["loss"])
        x[i] = saved
        out[i] = (hi - lo) / (2 * FD_EPS)
    return out


def ids(cases):
    return [c.id for c in cases]


# ---- unary ------------------------------------------------------------------------------------------------------
S = (3, 5)
S3 = (6, 7, 5)

UNARY = [
    Case("neg", {"x": normal(S)}, lambda b, x: b.neg(x), lambda x: -x),
    Case("exp", {"x": normal(S)}, lambda b, x: b.unary(Op.EXP, x), torch.exp),
    Case("log", {"x": positive(S)}, lambda b, x: b.unary(Op.LOG, x), torch.log),
    Case("log1p", {"x": positive(S, lo=-0.7, hi=2.0)}, lambda b, x: b.unary(Op.LOG1P, x), torch.log1p),
    Case("sqrt", {"x": positive(S)}, lambda b, x: b.unary(Op.SQRT, x), torch.sqrt),
    Case("rsqrt", {"x": positive(S)}, lambda b, x: b.unary(Op.RSQRT, x), torch.rsqrt),
    Case("abs", {"x": normal(S, lo_abs=0.05)}, lambda b, x: b.unary(Op.ABS, x), torch.abs),
    Case("sin", {"x": normal(S) * 3}, lambda b, x: b.unary(Op.SIN, x), torch.sin),
    Case("cos", {"x": normal(S) * 3}, lambda b, x: b.unary(Op.COS, x), torch.cos),
    Case("tanh", {"x": normal(S)}, lambda b, x: b.unary(Op.TANH, x), torch.tanh),
    Case("sigmoid", {"x": normal(S) * 2}, lambda b, x: b.unary(Op.SIGMOID, x), torch.sigmoid),
    Case("relu", {"x": normal(S, lo_abs=0.05)}, lambda b, x: b.unary(Op.RELU, x), torch.relu),
    Case("erf", {"x": normal(S)}, lambda b, x: b.unary(Op.ERF, x), torch.erf),
    Case("atan", {"x": normal(S) * 3}, lambda b, x: b.unary(Op.ATAN, x), torch.atan),
    Case("rank3_tanh", {"x": normal(S3)}, lambda b, x: b.unary(Op.TANH, x), torch.tanh),
    Case("scalar_exp", {"x": np.array(0.7)}, lambda b, x: b.unary(Op.EXP, x), torch.exp),
    # cast to f32 and back: the gradient is cast back too (values rounded to f32 on the way)
    Case("cast_roundtrip", {"x": normal(S)},
         lambda b, x: b.cast(b.mul(b.cast(x, DType.F32), b.const(2.0, DType.F32, S)), DType.F64),
         lambda x: (x.float() * 2.0).double(), smooth=False),
]

# Kinks: torch's choices, exactly (no finite differences there).
KINKS = [
    Case("relu_at_zero", {"x": np.array([[-1.5, 0.0, 0.0, 2.0, -0.0], [0.0, 1.0, -1.0, 0.0, 3.0], [0.0] * 5])},
         lambda b, x: b.unary(Op.RELU, x), torch.relu, smooth=False),
    Case("abs_at_zero", {"x": np.array([[-1.5, 0.0, 0.0, 2.0, -0.0], [0.0, 1.0, -1.0, 0.0, 3.0], [0.0] * 5])},
         lambda b, x: b.unary(Op.ABS, x), torch.abs, smooth=False),
    # floor carries no gradient (torch's is zero): only the `+ x` term reaches x
    Case("floor_plus_x", {"x": normal(S3) * 3}, lambda b, x: b.add(b.unary(Op.FLOOR, x), x),
         lambda x: torch.floor(x) + x, smooth=False),
    Case("sqrt_at_zero_is_inf", {"x": np.array([[0.0, 1.0, 4.0]])}, lambda b, x: b.unary(Op.SQRT, x),
         torch.sqrt, smooth=False),
]


@pytest.mark.parametrize("case", UNARY + KINKS, ids=ids(UNARY + KINKS))
def test_unary(case):
    check(case)


# ---- binary (equal shapes, and broadcasting through the builder) ------------------------------------------------
def _ties(shape, seed=0):
    """Two arrays equal at about a third of their elements, well apart elsewhere."""
    x = normal(shape, seed)
    y = normal(shape, seed + 1)
    tie = R(seed + 2).random(shape) < 0.35
    y = np.where(tie, x, y)
    y = np.where(~tie & (np.abs(x - y) < 0.05), y + 0.2, y)
    return x, y


_MX, _MY = _ties(S)
_NX, _NY = _ties(S3, seed=5)
_AWAY = normal(S, seed=3)
_AWAY_Y = _AWAY + np.where(R(4).random(S) < 0.5, 0.3, -0.3) + normal(S, seed=6) * 0.1


def _mod_inputs(shape, seed=0):
    """x and y with x / y well away from an integer, so remainder is smooth there."""
    y = normal(shape, seed, lo_abs=0.5)
    q = R(seed + 1).integers(-3, 4, shape) + R(seed + 2).uniform(0.2, 0.8, shape)
    return q * y, y


_RX, _RY = _mod_inputs(S)

BINARY = [
    Case("add", {"x": normal(S), "y": normal(S, 1)}, lambda b, x, y: b.add(x, y), lambda x, y: x + y),
    Case("sub", {"x": normal(S), "y": normal(S, 1)}, lambda b, x, y: b.sub(x, y), lambda x, y: x - y),
    Case("mul", {"x": normal(S), "y": normal(S, 1)}, lambda b, x, y: b.mul(x, y), lambda x, y: x * y),
    Case("div", {"x": normal(S), "y": normal(S, 1, lo_abs=0.4)}, lambda b, x, y: b.div(x, y),
         lambda x, y: x / y),
    Case("pow", {"x": positive(S), "y": normal(S, 1)}, lambda b, x, y: b.pow(x, y), torch.pow),
    Case("pow_const_exponent", {"x": normal(S)}, lambda b, x: b.pow(x, 3.0), lambda x: x ** 3.0),
    Case("pow_const_base", {"y": normal(S)}, lambda b, y: b.pow(2.5, y), lambda y: torch.pow(2.5, y)),
    Case("mod", {"x": _RX, "y": _RY}, lambda b, x, y: b.mod(x, y), torch.remainder),
    Case("maximum", {"x": _AWAY, "y": _AWAY_Y}, lambda b, x, y: b.maximum(x, y), torch.maximum),
    Case("minimum", {"x": _AWAY, "y": _AWAY_Y}, lambda b, x, y: b.minimum(x, y), torch.minimum),
    # ties split the gradient 0.5 / 0.5, as torch
    Case("maximum_ties", {"x": _MX, "y": _MY}, lambda b, x, y: b.maximum(x, y), torch.maximum, smooth=False),
    Case("minimum_ties", {"x": _MX, "y": _MY}, lambda b, x, y: b.minimum(x, y), torch.minimum, smooth=False),
    Case("maximum_ties_rank3", {"x": _NX, "y": _NY}, lambda b, x, y: b.maximum(x, y), torch.maximum,
         smooth=False),
    Case("maximum_with_scalar_ties", {"x": np.array([[-1.0, 0.0, 0.5], [0.0, 2.0, -0.0]])},
         lambda b, x: b.maximum(x, 0.0), lambda x: torch.maximum(x, torch.zeros_like(x)), smooth=False),
    # pow at its special points: x == 0 with y >= 0 (dy is 0), y == 0 (dx is 0)
    Case("pow_zero_base", {"x": np.array([[0.0, 0.0, 0.0, 1.5, 2.0], [0.0, 3.0, 0.5, 0.0, 1.0]]),
                           "y": np.array([[2.5, 0.0, 3.0, 0.0, -1.5], [1.0, 2.0, 0.0, 0.5, 2.0]])},
         lambda b, x, y: b.pow(x, y), torch.pow, smooth=False),
]

BROADCASTING = [
    Case("add_row", {"x": normal(S), "y": normal((5,), 1)}, lambda b, x, y: b.add(x, y), lambda x, y: x + y),
    Case("mul_col_row", {"x": normal((3, 1)), "y": normal((1, 5), 1)}, lambda b, x, y: b.mul(x, y),
         lambda x, y: x * y),
    Case("sub_rank3", {"x": normal((6, 1, 5)), "y": normal((7, 1), 1)}, lambda b, x, y: b.sub(x, y),
         lambda x, y: x - y),
    Case("div_scalar_tensor", {"x": normal(S3), "y": np.array(1.7)}, lambda b, x, y: b.div(x, y),
         lambda x, y: x / y),
    Case("div_python_number", {"x": normal(S3)}, lambda b, x: b.div(3.0, b.add(b.unary(Op.ABS, x), 1.0)),
         lambda x: 3.0 / (x.abs() + 1.0)),
    Case("pow_broadcast", {"x": positive((6, 1, 5)), "y": normal((7, 5), 1) * 0.5},
         lambda b, x, y: b.pow(x, y), torch.pow),
    Case("maximum_broadcast_ties", {"x": np.array([[0.5], [-1.0], [2.0]]),
                                    "y": np.array([[0.5, -1.0, 2.0, 0.0, 3.0]])},
         lambda b, x, y: b.maximum(x, y), torch.maximum, smooth=False),
    Case("minimum_broadcast", {"x": normal((6, 7, 1)), "y": normal((1, 5), 1)},
         lambda b, x, y: b.minimum(x, y), torch.minimum),
]


@pytest.mark.parametrize("case", BINARY + BROADCASTING, ids=ids(BINARY + BROADCASTING))
def test_binary(case):
    check(case)


# ---- where ------------------------------------------------------------------------------------------------------
WHERE = [
    Case("where", {"c": normal(S, 7), "x": normal(S), "y": normal(S, 1)},
         lambda b, c, x, y: b.where(b.compare(Op.GT, c, 0.0), x, y),
         lambda c, x, y: torch.where(c > 0, x, y), wrt=("x", "y")),
    Case("where_broadcast", {"c": normal((6, 1, 5), 7), "x": normal((7, 1)), "y": normal((6, 7, 5), 1)},
         lambda b, c, x, y: b.where(b.compare(Op.LT, c, 0.2), x, y),
         lambda c, x, y: torch.where(c < 0.2, x, y), wrt=("x", "y")),
    Case("where_number_branch", {"x": normal(S3)},
         lambda b, x: b.where(b.compare(Op.GE, x, 0.1), b.mul(x, x), -1.0),
         lambda x: torch.where(x >= 0.1, x * x, torch.tensor(-1.0, dtype=torch.float64))),
]


@pytest.mark.parametrize("case", WHERE, ids=ids(WHERE))
def test_where(case):
    check(case)


# ---- reductions -------------------------------------------------------------------------------------------------
def _reduction_cases():
    cases = []
    x = normal(S3, 11)
    for name, op, tfn in [("sum", Op.SUM, None), ("max", Op.MAX, torch.amax), ("min", Op.MIN, torch.amin)]:
        for axes in [(1,), (0, 2), (2, 0), None, (-1,)]:
            for keepdim in (False, True):
                def build(b, x, op=op, axes=axes, keepdim=keepdim):
                    return b.reduce(op, x, axes, keepdim)

                def ref(x, tfn=tfn, axes=axes, keepdim=keepdim, name=name):
                    dims = tuple(range(x.dim())) if axes is None else axes
                    if name == "sum":
                        return x.sum(dim=dims, keepdim=keepdim)
                    return tfn(x, dim=dims, keepdim=keepdim)

                cases.append(Case(f"{name}_{axes}_{'keep' if keepdim else 'drop'}", {"x": x}, build, ref,
                                  smooth=True))
    return cases


REDUCTIONS = _reduction_cases()


def _tied(shape, seed):
    """Small integers: many ties for max and min along every axis."""
    return R(seed).integers(-2, 3, shape).astype(np.float64)


REDUCTION_TIES = [
    Case("max_ties_axis1", {"x": _tied(S3, 1)}, lambda b, x: b.max(x, 1), lambda x: torch.amax(x, 1),
         smooth=False),
    Case("max_ties_axes_keep", {"x": _tied(S3, 2)}, lambda b, x: b.max(x, (0, 2), True),
         lambda x: torch.amax(x, (0, 2), True), smooth=False),
    Case("max_ties_all", {"x": _tied(S, 3)}, lambda b, x: b.max(x), lambda x: x.max(), smooth=False),
    Case("min_ties_axis2", {"x": _tied(S3, 4)}, lambda b, x: b.min(x, 2), lambda x: torch.amin(x, 2),
         smooth=False),
    Case("min_ties_all", {"x": _tied(S3, 5)}, lambda b, x: b.min(x), lambda x: x.min(), smooth=False),
]


@pytest.mark.parametrize("case", REDUCTIONS + REDUCTION_TIES, ids=ids(REDUCTIONS + REDUCTION_TIES))
def test_reductions(case):
    check(case)


# ---- movement ---------------------------------------------------------------------------------------------------
def _emit(op, **attrs):
    return lambda b, x: b.emit(op, (x,), attrs)


MOVEMENT = [
    Case("reshape", {"x": normal(S3)}, lambda b, x: b.reshape(x, (7, 30)), lambda x: x.reshape(7, 30)),
    Case("reshape_split_axes", {"x": normal((6, 35))}, lambda b, x: b.reshape(x, (2, 3, 5, 7)),
         lambda x: x.reshape(2, 3, 5, 7)),
    Case("reshape_after_permute", {"x": normal(S3)},
         lambda b, x: b.reshape(b.permute(x, (2, 0, 1)), (5, 42)),
         lambda x: x.permute(2, 0, 1).reshape(5, 42)),
    Case("broadcast_leading", {"x": normal((7, 5))}, lambda b, x: b.broadcast_to(x, (6, 7, 5)),
         lambda x: x.expand(6, 7, 5)),
    Case("broadcast_inner_ones", {"x": normal((6, 1, 1))}, lambda b, x: b.broadcast_to(x, (3, 6, 7, 5)),
         lambda x: x.expand(3, 6, 7, 5)),
    Case("broadcast_scalar", {"x": np.array(0.3)}, lambda b, x: b.broadcast_to(x, S),
         lambda x: x.expand(*S)),
    Case("permute", {"x": normal(S3)}, lambda b, x: b.permute(x, (2, 0, 1)), lambda x: x.permute(2, 0, 1)),
    Case("permute_rank4", {"x": normal((3, 2, 5, 7))}, lambda b, x: b.permute(x, (1, 3, 0, 2)),
         lambda x: x.permute(1, 3, 0, 2)),
    Case("transpose", {"x": normal(S)}, lambda b, x: b.transpose(x), lambda x: x.T),
    Case("slice_simple", {"x": normal(S3)}, lambda b, x: b.slice(x, (1, 2, 0), (5, 7, 3), (1, 1, 1)),
         lambda x: x[1:5, 2:7, 0:3]),
    Case("slice_steps", {"x": normal(S3)}, lambda b, x: b.slice(x, (1, 0, 2), (6, 7, 5), (2, 3, 1)),
         lambda x: x[1:6:2, 0:7:3, 2:5]),
    # stop - start not a multiple of step, and a stop short of the end
    Case("slice_uneven_steps", {"x": normal((11, 7))}, lambda b, x: b.slice(x, (0, 1), (11, 5), (3, 2)),
         lambda x: x[0:11:3, 1:5:2]),
    Case("slice_step_larger_than_axis", {"x": normal(S)}, lambda b, x: b.slice(x, (0, 2), (3, 5), (4, 1)),
         lambda x: x[0:3:4, 2:5]),
    Case("slice_axis", {"x": normal(S3)}, lambda b, x: b.slice_axis(x, 1, 3, 6),
         lambda x: x[:, 3:6]),
    Case("pad", {"x": normal(S)}, lambda b, x: b.pad(x, ((1, 2), (0, 3)), 0.0),
         lambda x: torch.nn.functional.pad(x, (0, 3, 1, 2))),
    Case("pad_value_rank3", {"x": normal(S3)}, lambda b, x: b.pad(x, ((0, 0), (2, 1), (3, 0)), -1.25),
         lambda x: torch.nn.functional.pad(x, (3, 0, 2, 1), value=-1.25)),
]


@pytest.mark.parametrize("case", MOVEMENT, ids=ids(MOVEMENT))
def test_movement(case):
    check(case)


CONCAT = [
    Case("concat_axis0", {"a": normal((2, 5)), "b_": normal((3, 5), 1), "c": normal((1, 5), 2)},
         lambda b, a, b_, c: b.concat([a, b_, c], 0), lambda a, b_, c: torch.cat([a, b_, c], 0)),
    Case("concat_axis_last", {"a": normal((6, 7, 2)), "b_": normal((6, 7, 3), 1)},
         lambda b, a, b_: b.concat([a, b_], -1), lambda a, b_: torch.cat([a, b_], -1)),
    Case("concat_same_twice", {"a": normal((3, 5))},
         lambda b, a: b.concat([a, b.mul(a, 2.0), a], 1), lambda a: torch.cat([a, a * 2.0, a], 1)),
]


@pytest.mark.parametrize("case", CONCAT, ids=ids(CONCAT))
def test_concat(case):
    check(case)


# ---- indexing ---------------------------------------------------------------------------------------------------
_IDX0 = R(21).integers(0, 6, (4, 7, 5))      # into axis 0 of a [6, 7, 5], repeats included
_IDX2 = R(22).integers(0, 5, (6, 7, 3))      # into axis 2
_IDX1 = R(23).integers(0, 7, (3, 9))         # into axis 1 of a [3, 7], longer than the axis

INDEXING = [
    Case("gather_axis0", {"x": normal(S3), "i": _IDX0}, lambda b, x, i: b.gather(x, 0, i),
         lambda x, i: torch.gather(x, 0, i)),
    Case("gather_axis2", {"x": normal(S3), "i": _IDX2}, lambda b, x, i: b.gather(x, 2, i),
         lambda x, i: torch.gather(x, 2, i)),
    Case("gather_axis1_repeats", {"x": normal((3, 7)), "i": _IDX1}, lambda b, x, i: b.gather(x, 1, i),
         lambda x, i: torch.gather(x, 1, i)),
    # torch.gather: the index may be smaller than x on the other axes
    Case("gather_axis1_smaller_index", {"x": normal(S3), "i": R(24).integers(0, 7, (4, 9, 2))},
         lambda b, x, i: b.gather(x, 1, i), lambda x, i: torch.gather(x, 1, i)),
    Case("scatter_add_axis0", {"i": _IDX0, "src": normal((4, 7, 5), 1)},
         lambda b, i, src: b.scatter_add((6, 7, 5), 0, i, src),
         lambda i, src: torch.zeros(6, 7, 5, dtype=torch.float64).scatter_add(0, i, src)),
    Case("scatter_add_axis1", {"i": _IDX1, "src": normal((3, 9), 1)},
         lambda b, i, src: b.scatter_add((3, 7), 1, i, src),
         lambda i, src: torch.zeros(3, 7, dtype=torch.float64).scatter_add(1, i, src)),
]


@pytest.mark.parametrize("case", INDEXING, ids=ids(INDEXING))
def test_indexing(case):
    check(case)


# ---- contraction ------------------------------------------------------------------------------------------------
MATMUL = [
    Case("matmul_2d", {"a": normal((3, 5)), "b_": normal((5, 7), 1)},
         lambda b, a, b_: b.emit(Op.MATMUL, (a, b_)), torch.matmul),
    Case("matmul_batched", {"a": normal((6, 3, 5)), "b_": normal((6, 5, 7), 1)},
         lambda b, a, b_: b.emit(Op.MATMUL, (a, b_)), torch.matmul),
    Case("matmul_batched_rank4", {"a": normal((2, 3, 5, 4)), "b_": normal((2, 3, 4, 7), 1)},
         lambda b, a, b_: b.emit(Op.MATMUL, (a, b_)), torch.matmul),
    # through the builder's torch.matmul semantics: broadcasting, folded batch, 1-d operands
    Case("matmul_broadcast_batch", {"a": normal((6, 1, 3, 5)), "b_": normal((7, 5, 2), 1)},
         lambda b, a, b_: b.matmul(a, b_), torch.matmul),
    Case("matmul_fold_batch", {"a": normal((6, 3, 5)), "b_": normal((5, 7), 1)},
         lambda b, a, b_: b.matmul(a, b_), torch.matmul),
    Case("matmul_vec_mat", {"a": normal((5,)), "b_": normal((6, 5, 7), 1)},
         lambda b, a, b_: b.matmul(a, b_), torch.matmul),
    Case("matmul_mat_vec", {"a": normal((6, 3, 5)), "b_": normal((5,), 1)},
         lambda b, a, b_: b.matmul(a, b_), torch.matmul),
    Case("matmul_vec_vec", {"a": normal((5,)), "b_": normal((5,), 1)},
         lambda b, a, b_: b.matmul(a, b_), torch.matmul),
]


# Convolution: groups, stride, padding and dilation differing per axis; each primitive on its own
# (conv's gradients are the other two; the other two's gradients are convolutions again).
_CONV = {"stride": (2, 1), "padding": ((1, 1), (0, 0)), "dilation": (1, 2), "groups": 2}
_TORCH_CONV = {"stride": (2, 1), "padding": (1, 0), "dilation": (1, 2), "groups": 2}
CONVOLUTION = [
    Case("conv", {"x": normal((2, 4, 5, 6)), "w": normal((6, 2, 3, 2), 1)},
         lambda b, x, w: b.emit(Op.CONV, (x, w), _CONV),
         lambda x, w: torch.nn.functional.conv2d(x, w, **_TORCH_CONV)),
    Case("conv_transpose", {"y": normal((2, 6, 3, 4)), "w": normal((6, 2, 3, 2), 1)},
         lambda b, y, w: b.emit(Op.CONV_TRANSPOSE, (y, w), {**_CONV, "output_padding": (1, 0)}),
         lambda y, w: torch.nn.functional.conv_transpose2d(y, w, output_padding=(1, 0), **_TORCH_CONV)),
    Case("conv_weight", {"x": normal((2, 4, 5, 6)), "dy": normal((2, 6, 3, 4), 1)},
         lambda b, x, dy: b.emit(Op.CONV_WEIGHT, (x, dy), {**_CONV, "kernel": (3, 2)}),
         lambda x, dy: torch.nn.grad.conv2d_weight(x, (6, 2, 3, 2), dy, **_TORCH_CONV)),
    Case("conv2d_strided_grouped_asymmetric", {"x": normal((2, 4, 9, 8)), "w": normal((6, 2, 3, 2))},
         lambda b, x, w: b.emit(Op.CONV, (x, w), {"stride": (2, 1), "padding": ((1, 1), (0, 2)),
                                                  "dilation": (1, 2), "groups": 2}),
         lambda x, w: torch.nn.functional.conv2d(torch.nn.functional.pad(x, (0, 2, 1, 1)), w, None, (2, 1), 0,
                                                 (1, 2), 2)),
    Case("conv_transpose1d_grouped", {"y": normal((2, 6, 5)), "w": normal((6, 2, 3))},
         lambda b, y, w: b.emit(Op.CONV_TRANSPOSE, (y, w), {"stride": (2,), "padding": ((1, 1),), "dilation": (1,),
                                                            "groups": 3, "output_padding": (1,)}),
         lambda y, w: torch.nn.functional.conv_transpose1d(y, w, None, 2, 1, 1, 3)),
    Case("conv_weight2d", {"x": normal((2, 3, 7, 6)), "dy": normal((2, 4, 3, 5))},
         lambda b, x, dy: b.emit(Op.CONV_WEIGHT, (x, dy), {"stride": (2, 1), "padding": ((0, 0), (1, 1)),
                                                           "dilation": (1, 1), "groups": 1, "kernel": (3, 4)}),
         lambda x, dy: torch.nn.grad.conv2d_weight(x, (4, 3, 3, 4), dy, (2, 1), (0, 1))),
]


@pytest.mark.parametrize("case", CONVOLUTION, ids=ids(CONVOLUTION))
def test_convolution(case):
    check(case)


@pytest.mark.parametrize("case", MATMUL, ids=ids(MATMUL))
def test_matmul(case):
    check(case)


# ---- composites: several ops, one input used many times ---------------------------------------------------------
COMPOSITES = [
    Case("fan_out", {"x": normal(S3)},
         lambda b, x: b.mul(b.unary(Op.TANH, x), b.add(b.unary(Op.SIN, x), b.sum(x, 1, keepdim=True))),
         lambda x: torch.tanh(x) * (torch.sin(x) + x.sum(1, keepdim=True))),
    Case("softmax_like", {"x": normal((6, 7))},
         lambda b, x: b.div(b.unary(Op.EXP, x), b.sum(b.unary(Op.EXP, x), 1, keepdim=True)),
         lambda x: torch.softmax(x, 1)),
]


@pytest.mark.parametrize("case", COMPOSITES, ids=ids(COMPOSITES))
def test_composites(case):
    check(case)


# ---- composite ops (dln.compiler.composites): their own VJPs, against torch -----------------------------------
def _sdpa(b, q, k, v, **kw):
    from dln.compiler.composites.attention import attention

    return attention(b, q, k, v, **kw)


def _cross_entropy(b, x, t, s=0.0):
    from dln.compiler import composites

    return composites.emit(b, "cross_entropy", (x, t), label_smoothing=s)[0]


COMPOSITE_OPS = [
    Case("sdpa", {"q": normal((2, 3, 5, 4)), "k": normal((2, 3, 7, 4), 1), "v": normal((2, 3, 7, 6), 2)},
         _sdpa, lambda q, k, v: torch.nn.functional.scaled_dot_product_attention(q, k, v)),
    Case("sdpa_causal_scaled", {"q": normal((3, 6, 5)), "k": normal((3, 4, 5), 1), "v": normal((3, 4, 2), 2)},
         lambda b, q, k, v: _sdpa(b, q, k, v, causal=True, scale=0.3),
         lambda q, k, v: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.3)),
    Case("sdpa_float_mask", {"q": normal((2, 5, 3)), "k": normal((2, 4, 3), 1), "v": normal((2, 4, 3), 2),
                             "m": normal((1, 5, 4), 3)},
         lambda b, q, k, v, m: _sdpa(b, q, k, v, bias=m, bias_grad=True),
         lambda q, k, v, m: torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=m)),
    Case("cross_entropy_smoothing", {"x": normal((4, 7)), "t": np.array([0, 6, 3, 3])},
         lambda b, x, t: _cross_entropy(b, x, t, 0.2),
         lambda x, t: torch.nn.functional.cross_entropy(x, t, label_smoothing=0.2, reduction="none")),
]


@pytest.mark.parametrize("case", COMPOSITE_OPS, ids=ids(COMPOSITE_OPS))
def test_composite_ops(case):
    check(case)


# ---- ops without gradients: values against torch ----------------------------------------------------------------
def _forward(build, inputs: dict[str, np.ndarray]) -> np.ndarray:
    b = GraphBuilder("forward")
    ts = {k: b.input(k, TensorType(_DTYPES[v.dtype], v.shape)) for k, v in inputs.items()}
    g = b.finish([("out", build(b, **ts))])
    ours = evaluate(g, inputs, {})["out"]
    planned = Executable(pipeline.optimize(g)).run(inputs, {})["out"]
    np.testing.assert_array_equal(ours, planned)
    return ours


_A, _B = _ties(S)
_P, _Q = R(31).random(S) < 0.5, R(32).random(S) < 0.5

NO_GRAD = [
    ("sign", lambda b, x: b.unary(Op.SIGN, x), torch.sign,
     {"x": np.array([[-2.0, 0.0, 3.0, -0.0, 1e-300]])}),
    ("floor", lambda b, x: b.unary(Op.FLOOR, x), torch.floor,
     {"x": np.array([[-2.5, -0.0, 0.5, 1.0, 2.9999999, -1e-300, np.inf, -np.inf, np.nan, -7.0, 4503599627370495.5]])}),
    ("floor_normal", lambda b, x: b.unary(Op.FLOOR, x), torch.floor, {"x": normal(S3) * 5}),
    ("lt", lambda b, x, y: b.compare(Op.LT, x, y), torch.lt, {"x": _A, "y": _B}),
    ("le", lambda b, x, y: b.compare(Op.LE, x, y), torch.le, {"x": _A, "y": _B}),
    ("gt", lambda b, x, y: b.compare(Op.GT, x, y), torch.gt, {"x": _A, "y": _B}),
    ("ge", lambda b, x, y: b.compare(Op.GE, x, y), torch.ge, {"x": _A, "y": _B}),
    ("eq", lambda b, x, y: b.compare(Op.EQ, x, y), torch.eq, {"x": _A, "y": _B}),
    ("ne", lambda b, x, y: b.compare(Op.NE, x, y), torch.ne, {"x": _A, "y": _B}),
    ("and", lambda b, p, q: b.logical(Op.AND, p, q), torch.logical_and, {"p": _P, "q": _Q}),
    ("or", lambda b, p, q: b.logical(Op.OR, p, q), torch.logical_or, {"p": _P, "q": _Q}),
    ("not", lambda b, p: b.unary(Op.NOT, p), torch.logical_not, {"p": _P}),
    ("argmax_axis1", lambda b, x: b.argmax(x, 1), lambda x: torch.argmax(x, 1), {"x": normal(S3)}),
    ("argmax_keepdim", lambda b, x: b.argmax(x, 2, keepdim=True), lambda x: torch.argmax(x, 2, keepdim=True),
     {"x": normal(S3)}),
    ("argmax_all", lambda b, x: b.argmax(x), torch.argmax, {"x": normal(S3)}),
    # torch.argmax returns the first maximal index
    ("argmax_ties", lambda b, x: b.argmax(x, 1), lambda x: torch.argmax(x, 1), {"x": _tied(S3, 9)}),
    ("iota", lambda b: b.iota(7), lambda: torch.arange(7), {}),
    ("const", lambda b: b.const(2.5, DType.F64, S), lambda: torch.full(S, 2.5, dtype=torch.float64), {}),
    ("cast_f64_i64", lambda b, x: b.cast(x, DType.I64), lambda x: x.to(torch.int64),
     {"x": normal(S) * 4}),
    ("cast_bool_f64", lambda b, p: b.cast(p, DType.F64), lambda p: p.to(torch.float64), {"p": _P}),
    ("mod_int", lambda b, x, y: b.mod(x, y), torch.remainder,
     {"x": R(3).integers(-9, 10, S), "y": np.where(R(4).random(S) < 0.5, -1, 1) * R(5).integers(1, 4, S)}),
    ("mod_float_negative", lambda b, x, y: b.mod(x, y), torch.remainder, {"x": _RX, "y": _RY}),
]


@pytest.mark.parametrize("build,tfn,inputs", [c[1:] for c in NO_GRAD], ids=[c[0] for c in NO_GRAD])
def test_forward_only(build, tfn, inputs):
    ours = _forward(build, inputs)
    ref = tfn(*(torch.tensor(v) for v in inputs.values())).numpy()
    assert ours.dtype == ref.dtype, (ours.dtype, ref.dtype)
    np.testing.assert_array_equal(ours, ref)


def test_detach_blocks_the_gradient():
    x = normal(S)
    b = GraphBuilder("detach")
    t = b.input("x", TensorType(DType.F64, S))
    out = b.add(b.mul(b.detach(t), t), b.unary(Op.SIN, b.detach(t)))
    loss = b.sum(out)
    g = b.finish([("loss", loss)])
    full, grads, _ = grad(g, loss.id, [t.id])
    ours = evaluate(full.with_outputs([("g", grads[t.id])]), {"x": x}, {})["g"]
    tx = torch.tensor(x, requires_grad=True)
    (tx.detach() * tx + torch.sin(tx.detach())).sum().backward()
    np.testing.assert_allclose(ours, tx.grad.numpy(), rtol=RTOL)


def test_unreached_input_has_no_gradient():
    b = GraphBuilder("unreached")
    x = b.input("x", TensorType(DType.F64, S))
    y = b.input("y", TensorType(DType.F64, S))
    loss = b.sum(b.mul(x, b.detach(y)))
    _, grads, _ = grad(b.finish([("loss", loss)]), loss.id, [x.id, y.id])
    assert grads[x.id] is not None and grads[y.id] is None


def _rnn_scan(b, x, h0, w, reverse=False):
    """A tanh RNN as one scan; the result is every step's output and, last, the final state."""
    body = GraphBuilder("rnn.body")
    h = body.input("h", h0.type, role="carry")
    xt = body.input("x", TensorType(x.dtype, x.shape[1:]), role="x")
    wt = body.input("w", w.type, role="const")
    new = body.unary(Op.TANH, body.add(xt, body.matmul(h, body.transpose(wt))))
    (last,), (ys,) = b.scan(body.finish([("h", new), ("y", body.mul(new, 2.0))]), [h0], [x], [w], reverse=reverse)
    return b.concat([ys, b.unsqueeze(last, 0)], 0)


def _torch_rnn_scan(x, h0, w, reverse=False):
    h, ys = h0, [None] * x.shape[0]
    for t in (reversed(range(x.shape[0])) if reverse else range(x.shape[0])):
        h = torch.tanh(x[t] + h @ w.T)
        ys[t] = h * 2.0
    return torch.cat([torch.stack(ys), h[None]], 0)


SCAN = [
    Case("scan_rnn", {"x": normal((4, 3, 5)), "h0": normal((3, 5), 1), "w": normal((5, 5), 2)},
         _rnn_scan, _torch_rnn_scan),
    Case("scan_rnn_reverse", {"x": normal((5, 2, 5)), "h0": normal((2, 5), 1), "w": normal((5, 5), 2)},
         lambda b, x, h0, w: _rnn_scan(b, x, h0, w, reverse=True),
         lambda x, h0, w: _torch_rnn_scan(x, h0, w, reverse=True)),
]


@pytest.mark.parametrize("case", SCAN, ids=ids(SCAN))
def test_scan(case):
    check(case)


# ---- every differentiable primitive is exercised above ----------------------------------------------------------
GRADIENT_CASES = (UNARY + KINKS + BINARY + BROADCASTING + WHERE + REDUCTIONS + REDUCTION_TIES + MOVEMENT + CONCAT
                  + INDEXING + MATMUL + CONVOLUTION + COMPOSITES + COMPOSITE_OPS + SCAN)


# Loops and their result projections take a body: their VJP is checked against torch in
# tests/compiler/test_scan.py (and through the recurrent layers in test_recurrent.py).  The cross-rank
# sum (identity on one process) and its VJP are checked on real ranks in tests/runtime/test_distributed.py.
COVERED_ELSEWHERE = {Op.SCAN, Op.RESULT, Op.ALL_REDUCE}


def test_every_primitive_with_a_gradient_is_covered():
    from dln.compiler.autodiff import VJP

    seen = set(COVERED_ELSEWHERE)
    for case in GRADIENT_CASES:
        forward, _, _, _ = _graph(case)
        seen |= {n.op for n in forward.nodes}
    assert sorted(str(op) for op in VJP if op not in seen) == []
