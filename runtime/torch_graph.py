"""Running an IR graph op by op with PyTorch: the eager baseline of `dln bench`.

Each primitive maps to the torch operator with the same meaning, so PyTorch
eager executing a dln graph dispatches one operator per node (views stay
views), and `torch.compile` of the same function shows what Inductor fuses
from the same graph.  Random draws come from dln's Philox (NumPy), as data.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

from dln.compiler.composites import expanded
from dln.compiler.ir import DType, Graph, Node, Op, TensorType
from dln.compiler.symbolic import evaluate
from dln.runtime import philox
from dln.runtime.torch_composites import NATIVE


def _shape(n: Node, env) -> tuple[int, ...]:
    return tuple(int(evaluate(d, env)) for d in n.shape)


def torch_table() -> dict[Op, Callable]:
    import torch
    import torch.nn.functional as F

    dtypes = {DType.F16: torch.float16, DType.BF16: torch.bfloat16, DType.F32: torch.float32,
              DType.F64: torch.float64, DType.I32: torch.int32, DType.I64: torch.int64, DType.BOOL: torch.bool}

    def unary(fn):
        return lambda n, a, env: fn(a[0])

    def binary(fn):
        return lambda n, a, env: fn(a[0], a[1])

    def pad(n, a, env):
        flat = []
        for lo, hi in reversed(n.attrs["pads"]):
            flat += [int(evaluate(lo, env)), int(evaluate(hi, env))]
        return F.pad(a[0], flat, value=n.attrs["value"])

    def slice_(n, a, env):
        index = tuple(slice(int(evaluate(s, env)), int(evaluate(e, env)), st)
                      for s, e, st in zip(n.attrs["starts"], n.attrs["stops"], n.attrs["steps"]))
        return a[0][index]

    @torch.compiler.disable  # NumPy's Philox is data to torch.compile: a graph break, not a trace
    def rand(n, a, env):
        shape = _shape(n, env)
        first = int(a[2]) * (int(np.prod(shape)) // shape[0]) if len(a) > 2 and shape[0] else 0
        u = philox.uniform(int(a[0]) & 0xFFFFFFFFFFFFFFFF, n.attrs["stream"], int(a[1]), shape, first)
        return torch.from_numpy(u).to(dtypes[n.dtype])

    def conv_pad(n, x):
        flat = [int(v) for lo, hi in reversed(n.attrs["padding"]) for v in (lo, hi)]
        return F.pad(x, flat) if any(flat) else x

    def geometry(n):
        return {"stride": n.attrs["stride"], "dilation": n.attrs["dilation"], "groups": n.attrs["groups"]}

    convs = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
    transposed = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
    weights = {1: torch.nn.grad.conv1d_weight, 2: torch.nn.grad.conv2d_weight, 3: torch.nn.grad.conv3d_weight}

    def conv(n, a, env):
        return convs[len(n.attrs["stride"])](conv_pad(n, a[0]), a[1], **geometry(n))

    def conv_transpose(n, a, env):
        # torch pads both sides alike: transpose unpadded, then cut the padded frame [lo, lo + size).
        full = transposed[len(n.attrs["stride"])](a[0], a[1], **geometry(n))
        size = _shape(n, env)[2:]
        grow = [v for lo, n_, f in reversed(list(zip((p[0] for p in n.attrs["padding"]), size, full.shape[2:])))
                for v in (0, max(0, int(lo) + n_ - f))]
        full = F.pad(full, grow) if any(grow) else full
        index = (slice(None), slice(None)) + tuple(slice(int(p[0]), int(p[0]) + s)
                                                   for p, s in zip(n.attrs["padding"], size))
        return full[index]

    def conv_weight(n, a, env):
        return weights[len(n.attrs["stride"])](conv_pad(n, a[0]), _shape(n, env), a[1], **geometry(n))

    def composite(n, a, env):
        # PyTorch's own operator where it has one (runtime/torch_composites.py), else the decomposition over
        # the operands as they are (concrete shapes, their dtypes).
        applies, native = NATIVE.get(n.attrs["composite"], (None, None))
        if applies is not None and applies(n):
            return native(n, a)
        dtype_of = {v: k for k, v in dtypes.items()}
        graph = expanded(n, tuple(TensorType(dtype_of[x.dtype], tuple(x.shape)) for x in a))
        out = make_runner(graph, env)({f"x{k}": x for k, x in enumerate(a)})
        values = tuple(out[f"y{k}"] for k in range(len(n.types)))
        return values if n.results else values[0]

    def scan(n, a, env):
        # The loop in Python over the body's ops (eager PyTorch has no loop primitive).
        body = n.attrs["body"]
        n_carry, n_xs = n.attrs["carries"], n.attrs["xs"]
        run_body = make_runner(body, env)
        names = [p.attrs["name"] for p in body.inputs]
        carries, xs, consts = list(a[:n_carry]), a[n_carry:n_carry + n_xs], a[n_carry + n_xs:]
        length = int(evaluate(n.attrs["length"], env))
        ys: list[list[Any]] = [[None] * length for _ in body.outputs[n_carry:]]
        for t in (range(length - 1, -1, -1) if n.attrs["reverse"] else range(length)):
            out = run_body(dict(zip(names, [*carries, *(x[t] for x in xs), *consts])))
            values = [out[name] for name, _ in body.outputs]
            carries = values[:n_carry]
            for y, v in zip(ys, values[n_carry:]):
                y[t] = v
        stacked = [torch.stack(y) if length else
                   torch.zeros(tuple(int(evaluate(d, env)) for d in t.shape), dtype=dtypes[t.dtype])
                   for y, t in zip(ys, n.results[n_carry:])]
        return (*carries, *stacked)

    table: dict[Op, Callable] = {
        Op.CONST: lambda n, a, env: torch.full(_shape(n, env), n.attrs["value"], dtype=dtypes[n.dtype]),
        Op.IOTA: lambda n, a, env: torch.arange(_shape(n, env)[0], dtype=dtypes[n.dtype]),
        Op.SYMSIZE: lambda n, a, env: torch.tensor(int(evaluate(n.attrs["dim"], env))),
        Op.RAND: rand,
        Op.NEG: unary(torch.neg), Op.EXP: unary(torch.exp), Op.LOG: unary(torch.log), Op.LOG1P: unary(torch.log1p),
        Op.SQRT: unary(torch.sqrt), Op.RSQRT: unary(torch.rsqrt), Op.ABS: unary(torch.abs), Op.SIGN: unary(torch.sign),
        Op.SIN: unary(torch.sin), Op.COS: unary(torch.cos), Op.TANH: unary(torch.tanh),
        Op.SIGMOID: unary(torch.sigmoid), Op.RELU: unary(torch.relu), Op.ERF: unary(torch.erf),
        Op.ATAN: unary(torch.atan), Op.FLOOR: unary(torch.floor),
        Op.NOT: unary(torch.logical_not), Op.DETACH: unary(lambda x: x.detach()),
        Op.CHECK_INDEX: unary(lambda x: x),
        Op.ALL_REDUCE: unary(lambda x: x.clone()),   # `dln bench` runs one process: the sum over one rank
        Op.CAST: lambda n, a, env: a[0].to(dtypes[n.dtype]),
        Op.ADD: binary(torch.add), Op.SUB: binary(torch.sub), Op.MUL: binary(torch.mul), Op.DIV: binary(torch.div),
        Op.POW: binary(torch.pow), Op.MOD: binary(torch.remainder), Op.MAXIMUM: binary(torch.maximum),
        Op.MINIMUM: binary(torch.minimum), Op.LT: binary(torch.lt), Op.LE: binary(torch.le), Op.GT: binary(torch.gt),
        Op.GE: binary(torch.ge), Op.EQ: binary(torch.eq), Op.NE: binary(torch.ne), Op.AND: binary(torch.logical_and),
        Op.OR: binary(torch.logical_or),
        Op.WHERE: lambda n, a, env: torch.where(a[0], a[1], a[2]),
        Op.SUM: lambda n, a, env: torch.sum(a[0], dim=n.attrs["axes"], keepdim=n.attrs["keepdim"]),
        Op.MAX: lambda n, a, env: torch.amax(a[0], dim=n.attrs["axes"], keepdim=n.attrs["keepdim"]),
        Op.MIN: lambda n, a, env: torch.amin(a[0], dim=n.attrs["axes"], keepdim=n.attrs["keepdim"]),
        Op.ARGMAX: lambda n, a, env: torch.argmax(a[0], dim=n.attrs["axes"][0], keepdim=n.attrs["keepdim"]),
        Op.RESHAPE: lambda n, a, env: a[0].reshape(_shape(n, env)),
        Op.BROADCAST: lambda n, a, env: a[0].expand(_shape(n, env)),
        Op.PERMUTE: lambda n, a, env: a[0].permute(n.attrs["perm"]),
        Op.SLICE: slice_, Op.PAD: pad,
        Op.CONCAT: lambda n, a, env: torch.cat(a, dim=n.attrs["axis"]),
        Op.GATHER: lambda n, a, env: torch.gather(a[0], n.attrs["axis"], a[1]),
        Op.SCATTER_ADD: lambda n, a, env: torch.zeros(_shape(n, env), dtype=a[1].dtype).scatter_add(
            n.attrs["axis"], a[0], a[1]),
        Op.MATMUL: binary(torch.matmul),
        Op.CONV: conv, Op.CONV_TRANSPOSE: conv_transpose, Op.CONV_WEIGHT: conv_weight,
        Op.SCAN: scan, Op.RESULT: lambda n, a, env: a[0][n.attrs["index"]],
        Op.COMPOSITE: composite,
    }
    return table


def make_runner(graph: Graph, env: Mapping[str, int]) -> Callable[..., dict[str, Any]]:
    """A function of the graph's inputs (torch tensors, by name) returning its outputs."""
    table = torch_table()
    names = {n.id: n.attrs["name"] for n in graph.nodes if n.op is Op.INPUT}

    def run(inputs: Mapping[str, Any]) -> dict[str, Any]:
        values: dict[int, Any] = {}
        for n in graph.nodes:
            if n.op is Op.INPUT:
                values[n.id] = inputs[names[n.id]]
            else:
                values[n.id] = table[n.op](n, [values[i] for i in n.inputs], env)
        return {name: values[i] for name, i in graph.outputs}

    return run


def random_inputs(graph: Graph, env: Mapping[str, int], seed: int = 0) -> dict[str, Any]:
    import torch

    rng = np.random.default_rng(seed)
    out = {}
    for n in graph.nodes:
        if n.op is not Op.INPUT:
            continue
        shape = _shape(n, env)
        name = n.attrs["name"]
        if n.dtype.is_float:
            value = rng.standard_normal(shape) * 0.1 if name not in ("lr", "step") else np.full(shape, 1.0)
            out[name] = torch.from_numpy(np.asarray(value)).to(torch.float64 if n.dtype is DType.F64 else torch.float32)
        elif n.dtype is DType.BOOL:
            out[name] = torch.from_numpy(rng.random(shape) < 0.5)
        else:
            out[name] = torch.from_numpy(rng.integers(0, 2, shape).astype(np.int64))
    return out
