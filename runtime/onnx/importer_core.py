"""The importer's state while it walks a graph: values, names, statements, weights (see importer.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import onnx

from dln.compiler.symbolic import Sym
from dln.dsl.diagnostics import DlnError
from dln.runtime.onnx import importer_fold
from dln.runtime.onnx.importer_graph import INode, known_constants, read_nodes, rewrite
from dln.runtime.onnx.importer_shapes import symbolic_shapes
from dln.runtime.onnx.importer_text import (DIM_ALIASES, Known, Layer, Names, Tensor, dim_text, fail, identifier,
                                            layer_path, number, quoted, unsupported)

ELEM_TYPES = {onnx.TensorProto.FLOAT: "f32", onnx.TensorProto.DOUBLE: "f64", onnx.TensorProto.FLOAT16: "f16",
              onnx.TensorProto.BFLOAT16: "bf16", onnx.TensorProto.INT32: "i32", onnx.TensorProto.INT64: "i64",
              onnx.TensorProto.BOOL: "bool"}
WIDTH = 100   # a pipe longer than this breaks before each stage
# Ops whose output has their first input's shape (for Importer._refine).
SAME_SHAPE = {"Relu", "Tanh", "Sigmoid", "Exp", "Log", "Sqrt", "Abs", "Sin", "Cos", "Atan", "Floor", "Softplus",
              "Softsign", "Sign", "Neg", "Reciprocal", "Elu", "Selu", "LeakyRelu", "Gelu", "dln.Gelu", "Softmax",
              "LogSoftmax", "Cast", "Clip", "Dropout", "Identity", "LayerNormalization", "BatchNormalization", "Trilu",
              "Not"}

# op type -> handler(importer, node), registered by importer_ops, importer_layers, importer_rnn
HANDLERS: dict[str, Callable[["Importer", INode], None]] = {}


def handles(*ops: str):
    def register(fn):
        for op in ops:
            HANDLERS[op] = fn
        return fn
    return register


@dataclass
class Imported:
    """What an import makes: the `.dln` text, the weights by parameter name, the model's name, and
    the names the model gives the ONNX graph's inputs and outputs (sanitized identifiers)."""

    text: str
    weights: dict[str, np.ndarray]
    name: str
    inputs: dict[str, str]
    outputs: dict[str, str]


class Importer:
    """One import: the graph's nodes (rewritten, constants found), and as the walk goes on each
    value's `.dln` form (`values`), the statements written (`lines`) and the weights named."""

    def __init__(self, model: onnx.ModelProto, name: str) -> None:
        self.model = model
        self.graph = model.graph
        self.names = Names()
        base = identifier(name) or "imported"   # a model named like a built-in would hide it
        self.name = self.names.fresh(base + "_model" if base in self.names.taken else base)
        self.dims: dict[str, str] = {}           # dim_param -> the .dln dimension name
        self.where: dict[str, list[tuple[str, int]]] = {}   # dimension name -> the (input, axis) giving it
        self.types: dict[str, tuple[str | None, tuple | None]] = {}
        self.inputs: dict[str, str] = {}          # ONNX input -> its .dln name
        self.rng = generator_inputs(self.graph)   # dln's rng.seed, rng.step: implicit in .dln
        self.streams = 0                          # the random streams dln gives the draws written so far
        self.header = self._read_inputs()
        self.outputs = [o.name for o in self.graph.output]
        self.output_names = {o: self.names.fresh(o, "y") for o in dict.fromkeys(self.outputs)}
        self._read_types()
        self.nodes = read_nodes(self.graph)
        self.consts, self.origin = known_constants(self.graph, self.nodes)
        self.nodes = rewrite(self.nodes, self.outputs, self.consts, self.shape)
        self.values: dict[str, Known | Tensor] = {k: Known(v, self.origin.get(k, k)) for k, v in self.consts.items()}
        self.values.update({onnx_name: Tensor(name) for onnx_name, name in self.inputs.items()})
        self.uses: dict[str, int] = {}
        for n in self.nodes:
            for i in n.inputs:
                self.uses[i] = self.uses.get(i, 0) + 1
        for o in self.outputs:
            self.uses[o] = self.uses.get(o, 0) + 1
        self.lines: list[str] = []
        self.weights: dict[str, np.ndarray] = {}
        self.paths: set[str] = set()
        self.bound_outputs: dict[str, str] = {}  # ONNX output -> its .dln name

    def _read_inputs(self) -> list[str]:
        """The graph inputs' declarations; their names and symbolic dimensions."""
        header = []
        initializers = {t.name for t in self.graph.initializer}
        for v in self.graph.input:
            if v.name in initializers or v.name in self.rng:
                continue   # older exporters list the initializers among the inputs too
            t = v.type.tensor_type
            dtype = ELEM_TYPES.get(t.elem_type)
            if dtype is None or not t.HasField("shape"):
                raise fail(f"input {identifier(v.name)}: .dln inputs are tensors of a known rank and one of "
                           f"the types {', '.join(sorted(set(ELEM_TYPES.values())))}")
            name = self.names.fresh(v.name, "x")
            shape = [self._input_dim(d, name, k, v.name) for k, d in enumerate(t.shape.dim)]
            header.append(f"input {name}: {dtype}[{', '.join(dim_text(d) for d in shape)}]")
            self.types[v.name] = (dtype, tuple(shape))
            self.inputs[v.name] = name
        return header

    # ---- shapes and types ----------------------------------------------------------------------------------
    def _dim(self, d: Any) -> Any:
        """A dimension of an inferred shape: a number, an input's symbol, or None (unknown)."""
        if d.HasField("dim_value") and d.dim_value > 0:
            return int(d.dim_value)
        if d.HasField("dim_param") and d.dim_param in self.dims:
            return Sym.var(self.dims[d.dim_param])
        return None

    def _input_dim(self, d: Any, owner: str, axis: int, owner_value: str) -> Any:
        """An input's dimension: a number, or a symbol named after its dim_param (fresh when it has none)."""
        if d.HasField("dim_value") and d.dim_value > 0:
            return int(d.dim_value)
        param = d.dim_param if d.HasField("dim_param") else ""
        if param and param in self.dims:
            self.where[self.dims[param]].append((owner_value, axis))
            return Sym.var(self.dims[param])
        hint = DIM_ALIASES.get(identifier(param).lower(), param) if param else \
            ("B" if axis == 0 else f"{owner}_{axis}")
        name = self.names.fresh(hint[:1].upper() + hint[1:] if hint else "N", "N")
        self.dims[param or f"{owner}:{axis}"] = name
        self.where[name] = [(owner_value, axis)]
        return Sym.var(name)

    def _read_types(self) -> None:
        """Each value's element type and shape: onnx's inference, its open dimensions filled in by
        the probes of importer_shapes."""
        fitted = symbolic_shapes(self.model, self.where)
        for v in list(self.graph.value_info) + list(self.graph.output):
            t = v.type.tensor_type
            shape = tuple(self._dim(d) for d in t.shape.dim) if t.HasField("shape") else None
            self.types[v.name] = (ELEM_TYPES.get(t.elem_type), shape)
            if v.name in fitted:
                self.set_shape(v.name, fitted[v.name])
        for value, shape in fitted.items():
            self.types.setdefault(value, (None, shape))

    def shape(self, value: str) -> tuple | None:
        """The value's shape (ints, Syms, None where unknown), or None when even its rank is unknown."""
        return self.types.get(value, (None, None))[1]

    def dtype(self, value: str) -> str | None:
        v = self.values.get(value)
        if isinstance(v, Known) and isinstance(v.value, np.ndarray) and v.value.dtype != object:
            return ELEM_TYPES.get(onnx.helper.np_dtype_to_tensor_dtype(v.value.dtype))
        return self.types.get(value, (None, None))[0]

    def rank(self, value: str) -> int | None:
        s = self.shape(value)
        return len(s) if s is not None else None

    # ---- values -----------------------------------------------------------------------------------------------
    def known(self, value: str) -> Any:
        """The value's array when it is known while importing, else None."""
        v = self.values.get(value) if value else None
        return v.value if isinstance(v, Known) else None

    def set(self, value: str, t: Tensor | Known) -> None:
        if value:
            self.values[value] = t

    def operand(self, value: str, beside: tuple[str, ...] = ()) -> str:
        """The value as an operand of an expression: a name, a number, or a param declared for it.
        `beside`: the other operands of an elementwise op, which a constant of a symbolic shape (a
        Fill) may be written as one number beside when it does not widen their broadcast shape."""
        v = self.values[value]
        if isinstance(v, Tensor):
            return self.materialize(value).text
        a = v.value
        if isinstance(a, importer_fold.Fill):
            shapes = [self.shape(o) for o in beside]
            if a.shape is None or not shapes or broadcast(shapes) is None or \
                    broadcast(shapes + [a.shape]) != broadcast(shapes):
                raise fail(f"the value {identifier(value)} (a constant of a symbolic shape) has no .dln form")
            text = number(a.value)
            return f"({text})" if text.startswith("-") else text
        if a.size == 1 and a.ndim <= 1:
            x = a.reshape(-1)[0]
            text = dim_text(x) if a.dtype == object else number(x.item() if hasattr(x, "item") else x)
            return f"({text})" if text.startswith("-") else text
        if a.dtype.kind != "f":
            raise fail(f"the constant {identifier(value)} ({a.dtype}{list(a.shape)}) is used as a tensor; .dln "
                       "declares only float tensors as params")
        name = self.names.fresh(v.source or value, "const")
        dtype = ELEM_TYPES[onnx.helper.np_dtype_to_tensor_dtype(a.dtype)]
        self.lines.append(f"param {name}: {dtype}[{', '.join(str(d) for d in a.shape)}] = zeros"
                          "   # its values are in the weights file")
        self.weights[name] = a
        self.values[value] = Tensor(name)
        return name

    def stage(self, value: str, source: str, stage: str | Layer, hint: str = "h") -> None:
        """`value` = `source -> stage`: the source's pipe grows when it is read only here (and a layer
        does not join a pipe that has one), else a new pipe starts from the source's name."""
        src = self.values[source]
        if isinstance(src, Tensor) and not src.bare and self.uses.get(source, 0) == 1 and \
                not (isinstance(stage, Layer) and src.layer is not None):
            if src.stages and isinstance(stage, str) and _undoes(stage, src.stages[-1]):
                self.set(value, Tensor(src.text, src.stages[:-1], src.hint, src.layer))
                return
            t = Tensor(src.text, src.stages + [stage], src.hint, src.layer)
        else:
            t = Tensor(self.operand(source), [stage], hint)
        if isinstance(stage, Layer):
            t.layer = stage
        self.set(value, t)

    def layer(self, n: INode, call: str, args: list[str], weights: dict[str, np.ndarray], names: list[str]) -> Layer:
        """A layer call whose parameters are `weights` (leaf -> array), named after the ONNX weights
        `names` or the node."""
        base = layer_path([self.origin.get(v, v) for v in names if v], n.name) or call
        path, k = base, 1
        while path in self.paths:
            path, k = f"{base}_{k}", k + 1
        self.paths.add(path)
        return Layer(call, args, path, weights)

    def expression(self, value: str, text: str, hint: str) -> None:
        """`value` = an operator expression of bound names and numbers."""
        self.set(value, Tensor(text, [], hint))

    def materialize(self, value: str) -> Tensor:
        """Bind the value to a name (its own output name for a graph output); the name as a Tensor."""
        t = self.values[value]
        assert isinstance(t, Tensor)
        is_output = value in self.outputs and value not in self.bound_outputs
        if t.bare and not is_output:
            return t
        if is_output:
            name = self.bound_outputs[value] = self.output_names[value]
        elif t.layer is not None:
            name = self.names.fresh(t.layer.path.replace(".", "_"))
        else:
            name = self.names.fresh(t.hint)
        self.lines.append(("output " if is_output else "") + f"{name} = {self.render(t, name)}")
        bound = Tensor(name)
        self.values[value] = bound
        return bound

    def bind_many(self, values: list[str], t: Tensor, hints: list[str]) -> None:
        """`a, b, c = expr`: several values at once (split, a recurrent layer's states)."""
        names = [self.names.fresh(h) for h in hints]
        self.lines.append(f"{', '.join(names)} = {self.render(t, names[0])}")
        for v, name in zip(values, names):
            if v:
                self.values[v] = Tensor(name)
                if v in self.outputs:
                    self.materialize(v)

    def render(self, t: Tensor, binding: str) -> str:
        """The right-hand side: the expression, then its stages; a layer named unlike the binding gets
        `name = "..."`, and its weights go to the weights file under the names the text gives them."""
        parts = [t.text]
        for s in t.stages:
            if isinstance(s, Layer):
                args = list(s.args) + ([f"name = {quoted(s.path)}"] if s.path != binding else [])
                for leaf, w in s.weights.items():
                    self.weights[f"{s.path}.{leaf}"] = w
                parts.append(f"{s.call}({', '.join(args)})" if args else s.call)
            else:
                parts.append(s)
        line = " -> ".join(parts)
        if len(line) + len(binding) + 7 <= WIDTH or len(parts) < 3:
            return line
        indent = " " * (len(binding) + 4)
        return parts[0] + " -> " + parts[1] + "".join(f"\n    {indent}-> {p}" for p in parts[2:])

    # ---- the walk ----------------------------------------------------------------------------------------------
    def run(self) -> Imported:
        for n in self.nodes:
            self.visit(n)
        for o in self.outputs:
            if o not in self.values:
                raise fail(f"the graph output {identifier(o)} is computed by no node")
            if isinstance(self.values[o], Known):
                self.values[o] = Tensor(self.operand(o))
            if o not in self.bound_outputs:
                self.materialize(o)
        body = self.header + [""] + self.lines
        text = (f"# Imported from ONNX by dln import; the weights are in the .safetensors file beside this one.\n"
                f"model {self.name} {{\n" + "\n".join(f"    {line}" if line else "" for line in body) + "\n}\n")
        return Imported(text, self.weights, self.name, self.inputs, dict(self.bound_outputs))

    def visit(self, n: INode) -> None:
        """Fold the node, or write it with its handler; bind what it makes that is read more than once."""
        if n.outputs and all(o in self.consts for o in n.outputs if o):
            return   # folded before the walk (importer_graph.known_constants)
        if not any(self.uses.get(o) for o in n.outputs if o):
            return   # nothing reads it (a zero state of a layer merged with the one before)
        ins = [self.known(i) if i else None for i in n.inputs]
        if n.op == "Shape" and n.inputs[0] not in self.consts:
            ins[0] = self._shape_value(n)
        if all(a is not None or not i for a, i in zip(ins, n.inputs)) and \
                not any(isinstance(a, importer_fold.Fill) for a in ins[1:]):
            try:
                outs = importer_fold.fold(n, ins) if n.op != "Shape" or n.inputs[0] in self.consts else [ins[0]]
            except importer_fold.CannotFold:
                outs = None
            if outs is not None:
                for o, a in zip(n.outputs, outs):
                    self.set(o, Known(a))
                return
        handler = HANDLERS.get(op_key(n))
        if handler is None:
            raise unsupported(n, "this op type has no .dln form" + ("" if n.proto is None or not n.proto.domain
                                                                    else f" (domain {identifier(n.proto.domain)})"))
        try:
            handler(self, n)
        except DlnError as e:   # a value the node reads has no .dln form: say which node reads it
            d = e.diagnostics[0]
            if d.message.startswith("ONNX node"):
                raise
            raise unsupported(n, d.message) from None
        self._refine(n)
        for o in n.outputs:
            v = self.values.get(o)
            if isinstance(v, Tensor) and o and (self.uses.get(o, 0) > 1 or o in self.outputs):
                self.materialize(o)

    def _shape_value(self, n: INode) -> np.ndarray | None:
        shape = self.shape(n.inputs[0])
        if shape is None or any(d is None for d in shape):
            return None
        start, end = n.attr("start", 0), n.attr("end", None)
        dims = list(shape)[start:end]
        if all(isinstance(d, int) for d in dims):
            return np.array(dims, dtype=np.int64)
        out = np.empty(len(dims), dtype=object)
        out[:] = dims
        return out

    def set_shape(self, value: str, shape: tuple) -> None:
        """What the importer knows of a value's shape, where onnx's inference left a dimension open
        (it loses track of `C // heads` computed from a shape, which the folding here keeps)."""
        dtype, old = self.types.get(value, (None, None))
        if old is not None and len(old) == len(shape):
            shape = tuple(o if o is not None else d for o, d in zip(old, shape))
        self.types[value] = (dtype, tuple(shape))

    def _refine(self, n: INode) -> None:
        """Fill in an output's open dimensions from its inputs' for the ops whose shape rule is simple."""
        out = self.shape(n.outputs[0]) if n.outputs and n.outputs[0] else ()
        if out is not None and None not in out:
            return
        ins = [self.shape(i) if i else None for i in n.inputs]
        if ins and ins[0] is not None and n.op in SAME_SHAPE:
            self.set_shape(n.outputs[0], ins[0])
        elif n.op == "Transpose" and ins[0] is not None:
            perm = n.attr("perm") or list(range(len(ins[0])))[::-1]
            self.set_shape(n.outputs[0], tuple(ins[0][p] for p in perm))
        elif n.op in ("Add", "Sub", "Mul", "Div", "Pow", "Where") and broadcast(ins) is not None:
            self.set_shape(n.outputs[0], broadcast(ins))
        elif n.op in ("dln.Linear", "Gemm") and ins[0] is not None and isinstance(self.known(n.inputs[1]), np.ndarray):
            w = self.known(n.inputs[1])
            out_features = w.shape[0] if n.attr("transB", 0) or n.attr("out_in") else w.shape[1]
            self.set_shape(n.outputs[0], tuple(ins[0][:-1]) + (out_features,))
        elif n.op == "MatMul" and all(s is not None and len(s) >= 2 for s in ins):
            a, b = ins
            self.set_shape(n.outputs[0], tuple(a[:-1]) + (b[-1],))

    def tensor_like(self, shape: tuple, dtype: str | None) -> str | None:
        """A tensor written so far of exactly `shape` and element type `dtype` (an input first, then
        the values in the order they were made), as an operand: what `randn_like(...)` reads the
        shape of.  None when there is none."""
        candidates = list(self.inputs) + [v for v in self.values if v not in self.inputs]
        for value in candidates:
            if isinstance(self.values.get(value), Tensor) and self.dtype(value) == dtype:
                have = self.shape(value)
                if have is not None and len(have) == len(shape) and all(
                        h is not None and h == d for h, d in zip(have, shape)):
                    return self.operand(value)
        return None

    def need_shape(self, n: INode, value: str) -> tuple:
        shape = self.shape(value)
        if shape is None or any(d is None for d in shape):
            raise unsupported(n, "needs the shape of its input, which shape inference could not find")
        return shape


def op_key(n: INode) -> str:
    """The key of n's handler: its op type, prefixed with its domain when that is not ONNX's own
    (`ai.dln.Normal`, a random draw dln's exporter wrote)."""
    domain = n.proto.domain if n.proto is not None else ""
    return n.op if domain in ("", "ai.onnx") else f"{domain}.{n.op}"


def generator_inputs(graph: onnx.GraphProto) -> set[str]:
    """The graph inputs that only dln's random draws (calls in the domain `ai.dln`) read, as their seed
    and step: dln's own `rng.seed` and `rng.step`, which a .dln model has without declaring them."""
    readers: dict[str, set[str]] = {}
    for node in graph.node:
        for k, value in enumerate(node.input):
            readers.setdefault(value, set()).add(node.domain if k < 2 else "")
    return {v.name for v in graph.input if readers.get(v.name) == {"ai.dln"}}


def broadcast(shapes: list) -> tuple | None:
    """NumPy's broadcast of shapes (None when one is unknown, or two sizes differ and neither is 1)."""
    if any(s is None or any(d is None for d in s) for s in shapes):
        return None
    rank = max(len(s) for s in shapes)
    out = []
    for column in zip(*[(1,) * (rank - len(s)) + tuple(s) for s in shapes]):
        sizes = {d for d in column if not (isinstance(d, int) and d == 1)}
        if len(sizes) > 1:
            return None
        out.append(sizes.pop() if sizes else 1)
    return tuple(out)


def _undoes(stage: str, before: str | Layer) -> bool:
    """Does `stage` undo the stage before it (`unsqueeze(1) -> squeeze(1)`, a transpose twice)?  An
    ONNX Squeeze removes axes of size 1 only, so `squeeze(k) -> unsqueeze(k)` is one too."""
    if not isinstance(before, str):
        return False
    return (stage.startswith("squeeze(") and before == "un" + stage) or \
        (stage.startswith("unsqueeze(") and "un" + before == stage) or \
        (stage.startswith("transpose(") and before == stage)
