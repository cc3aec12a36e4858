"""Converters for the ops everything else leans on: constants, identity, the four arithmetic ops,
reshape."""

from __future__ import annotations

import numpy as np
from onnx import numpy_helper

from dln.compiler.ir import Op
from dln.runtime.onnx.convert import Context, OnnxNode, UnsupportedOnnx, converter


@converter("Constant")
def constant(ctx: Context, node: OnnxNode) -> list:
    (key, value), = node.attrs.items()
    if key == "value":
        return [numpy_helper.to_array(node.proto.attribute[0].t)]
    if key in ("value_float", "value_int"):
        return [np.array(value, dtype=np.float32 if key == "value_float" else np.int64)]
    if key in ("value_floats", "value_ints"):
        return [np.array(value, dtype=np.float32 if key == "value_floats" else np.int64)]
    raise UnsupportedOnnx(node, f"Constant with {key}")


@converter("Identity")
def identity(ctx: Context, node: OnnxNode) -> list:
    return [ctx.values[node.inputs[0]]]


@converter("Add", "Sub", "Mul")
def arithmetic(ctx: Context, node: OnnxNode) -> list:
    op = {"Add": Op.ADD, "Sub": Op.SUB, "Mul": Op.MUL}[node.op_type]
    a, b = ctx.tensor(node, 0), ctx.tensor(node, 1)
    return [ctx.builder._elementwise(op, (a, b), a.dtype)]


@converter("Reshape")
def reshape(ctx: Context, node: OnnxNode) -> list:
    x = ctx.tensor(node, 0)
    shape = [int(s) for s in ctx.static(node, 1, "the shape")]
    if not node.attr("allowzero", 0):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    if -1 in shape:
        known = int(np.prod([s for s in shape if s != -1]))
        total = int(np.prod(x.shape))
        shape[shape.index(-1)] = total // known if known else 0
    return [ctx.builder.reshape(x, shape)]
