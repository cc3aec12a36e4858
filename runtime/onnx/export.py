"""A dln model's forward graph as an ONNX model: `dln export FILE -o model.onnx`, `Model.export_onnx`.

The graph exported is the one a run in evaluation mode computes (dropout is the identity, batch norm
reads its running statistics), optimized by the compiler's passes (`pipeline.optimize`) but not
folded for a backend: batch norm stays a per-channel affine map that becomes `BatchNormalization`,
not scales multiplied into the convolution's weights.  Composites that have an ONNX op of their own
(`layernorm`, attention's `sdpa`) keep it; every other composite is decomposed (`pipeline.lower`).

Export is one table walk, as the NumPy interpreter's is:

* **plan** — each node gets a `Lowering`: the dln node ids it reads and a function that writes
  its ONNX nodes.  Recognizers (dln.runtime.onnx.export_patterns) come first and claim whole
  patterns at their root (`matmul + bias` as one `Gemm`, the per-channel affine of a batch norm as
  one `BatchNormalization`, a tiled window maximum as `MaxPool`); any node they leave gets the
  primitive emitter of its op (dln.runtime.onnx.export_ops);
* **liveness** — from the outputs through the lowerings' reads, so the nodes inside a pattern that
  nothing else reads are never written;
* **emit** — the live nodes in graph order.

Shapes are symbolic in dln and stay so here: each dimension symbol (`B`, `T`) is a `dim_param` of
its name on the graph's inputs and outputs, and where a node needs its value (a reshape to
`[B*T, 64]`) it is read at run time from the first input axis of that size (`Shape`).  Weights
are initializers named as `Model.state_dict()` names them.  A model that cannot be expressed is a
located error E0715, naming the op and its line.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from dln.compiler import pipeline
from dln.compiler.ir import DType, Graph, Node, Op
from dln.compiler.symbolic import Dim, Shape, Sym
from dln.dsl.diagnostics import Diagnostic, DlnError, Note, Span

if TYPE_CHECKING:
    import onnx

    from dln.runtime.api import Model

DEFAULT_OPSET = 18   # LayerNormalization needs 17, the bitwise ops of the random generator 18
MIN_OPSET = 18

# Composites written as ONNX ops of their own (export_ops); the others are decomposed first.
NATIVE_COMPOSITES = frozenset({"layernorm", "sdpa"})


class ExportError(Exception):
    """A node that ONNX cannot express: becomes a located E0715 diagnostic."""

    def __init__(self, node: Node | None, message: str) -> None:
        super().__init__(message)
        self.node = node
        self.message = message


@dataclass(frozen=True)
class Lowering:
    """How one dln node (the root of a pattern, or a lone primitive) becomes ONNX nodes: the dln
    values it reads, and the function writing it, which returns its value's name (a list of names
    for a node with several results)."""

    reads: tuple[int, ...]
    emit: Callable[["Exporter", Node], "str | list[str]"]


# ---- element types --------------------------------------------------------------------------------------------

def onnx_type(dtype: DType) -> int:
    from onnx import TensorProto

    return {DType.F16: TensorProto.FLOAT16, DType.BF16: TensorProto.BFLOAT16, DType.F32: TensorProto.FLOAT,
            DType.F64: TensorProto.DOUBLE, DType.I32: TensorProto.INT32, DType.I64: TensorProto.INT64,
            DType.BOOL: TensorProto.BOOL}[dtype]


NUMPY = {DType.F16: np.float16, DType.F32: np.float32, DType.F64: np.float64, DType.I32: np.int32,
         DType.I64: np.int64, DType.BOOL: np.bool_}


# ---- one ONNX graph being written -------------------------------------------------------------------------------

class Exporter:
    """The ONNX nodes of one graph (the model's, or a scan's body) and the names of the dln values
    written so far.  Value and node names come from one counter for the whole model, so a body's
    never shadow its outer graph's; dimension symbols are read once, in the outermost graph."""

    def __init__(self, opset: int, parent: "Exporter | None" = None) -> None:
        self.opset = opset
        self.parent = parent
        self.root: Exporter = parent.root if parent is not None else self
        self.nodes: list[Any] = []
        self.values: dict[int, Any] = {}
        self.live: set[int] = set()
        self.graph: Graph | None = None      # the dln graph being written
        self.current: Node | None = None     # and the node
        self.inputs: list[Any] = []          # ValueInfoProtos
        self.initializers: list[Any] = []    # TensorProtos
        self.weights: dict[str, np.ndarray] = {}
        self.symbols: dict[str, tuple[str, int]] = {}   # symbol -> (graph input, axis): the root's
        self.reserved: set[str] = set()     # the root's: names the model gives
        self.functions: dict[str, Any] = {}  # the root's: model-local FunctionProtos by name (export_random)
        self._counter = itertools.count() if parent is None else parent._counter
        self._dims: dict[Dim, str] = {}
        self._constants: dict[tuple, str] = {}

    def child(self) -> "Exporter":
        return Exporter(self.opset, self)

    def fresh(self, hint: str) -> str:
        while True:   # never a name the model's inputs, weights or outputs have
            name = f"{hint or 'v'}_{next(self._counter)}"
            if name not in self.root.reserved:
                return name

    def op(self, op_type: str, inputs: Sequence[str], outputs: int = 1, hint: str = "", **attrs: Any
           ) -> "str | list[str]":
        """Append one ONNX node; its output name (a list of names when `outputs` > 1)."""
        from onnx import helper

        names = [self.fresh(hint or op_type.lower()) for _ in range(outputs)]
        node = helper.make_node(op_type, list(inputs), names, name=self.fresh(op_type),
                                **{k: v for k, v in attrs.items() if v is not None})
        if self.current is not None and self.current.loc is not None:   # the .dln line it came from
            node.doc_string = f"{self.current.name} {self.current.loc}".strip()
        self.nodes.append(node)
        return names[0] if outputs == 1 else names

    def const(self, value: Any, dtype: DType | None = None, hint: str = "const") -> str:
        """A `Constant` holding `value` (an array, or a scalar of `dtype`)."""
        from onnx import numpy_helper

        array = np.asarray(value, dtype=NUMPY[dtype] if dtype is not None else None)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._constants:   # one Constant per value and graph
            self._constants[key] = self.op("Constant", [], hint=hint, value=numpy_helper.from_array(array))
        return self._constants[key]

    def ints(self, values: Sequence[int]) -> str:
        return self.const(np.asarray(values, np.int64), hint="ints")

    def value(self, node_id: int) -> str:
        return self.values[node_id]

    # ---- dimensions as values ---------------------------------------------------------------------------
    def dim(self, d: Dim) -> str:
        """An int64 [1] holding dimension `d` (a number, or a polynomial in the input sizes)."""
        if isinstance(d, int):
            return self.ints([d])
        if self is not self.root:
            return self.root.dim(d)
        if d not in self._dims:
            total = None
            for monomial, coefficient in d.terms:
                factors = [self._symbol(s) for s in monomial]
                term = factors[0] if factors else None
                for f in factors[1:]:
                    term = self.op("Mul", [term, f], hint="dim")
                if coefficient != 1 or term is None:
                    c = self.ints([coefficient])
                    term = c if term is None else self.op("Mul", [term, c], hint="dim")
                total = term if total is None else self.op("Add", [total, term], hint="dim")
            self._dims[d] = total
        return self._dims[d]

    def scalar_dim(self, d: Dim) -> str:
        """`d` as an int64 scalar (for `Range`)."""
        if isinstance(d, int):
            return self.const(np.int64(d), hint="n")
        return self.op("Squeeze", [self.dim(d), self.ints([0])], hint="n")

    def _symbol(self, name: str) -> str:
        key = Sym.var(name)
        if key not in self._dims:
            source, axis = self.symbols[name]
            self._dims[key] = self.op("Shape", [source], hint=name, start=axis, end=axis + 1)
        return self._dims[key]

    def shape(self, dims: Shape, reshape: bool = False) -> str:
        """An int64 shape tensor for `dims`.  For a `reshape`, a single symbolic dimension is written
        -1, for Reshape to infer: no value is read at run time."""
        symbolic = [i for i, d in enumerate(dims) if not isinstance(d, int)]
        if not symbolic:
            return self.ints(dims)
        if reshape and len(symbolic) == 1 and 0 not in dims:
            return self.ints([-1 if i == symbolic[0] else d for i, d in enumerate(dims)])
        parts, run = [], []
        for d in dims:
            if isinstance(d, int):
                run.append(d)
                continue
            if run:
                parts.append(self.ints(run))
                run = []
            parts.append(self.dim(d))
        if run:
            parts.append(self.ints(run))
        return parts[0] if len(parts) == 1 else self.op("Concat", parts, hint="shape", axis=0)


# ---- value infos --------------------------------------------------------------------------------------------

def value_info(name: str, dtype: DType, shape: Shape) -> Any:
    from onnx import helper

    dims = [d if isinstance(d, int) else str(d) for d in shape]
    return helper.make_tensor_value_info(name, onnx_type(dtype), dims)


# ---- planning, liveness, emission ------------------------------------------------------------------------------

def plan(graph: Graph) -> dict[int, Lowering]:
    """A lowering for every node: the first recognizer that claims it, else its op's emitter."""
    from dln.runtime.onnx import export_random, export_recurrent, export_scan  # noqa: F401  (register their rules)
    from dln.runtime.onnx.export_ops import PRIMITIVES
    from dln.runtime.onnx.export_patterns import RECOGNIZERS

    users = graph.users()
    out: dict[int, Lowering] = {}
    for n in graph.nodes:
        lowering = None
        for recognize in RECOGNIZERS.get(n.op, ()):
            lowering = recognize(graph, users, n)
            if lowering is not None:
                break
        if lowering is None:
            lowering = PRIMITIVES[n.op](graph, n) if n.op in PRIMITIVES else Lowering(n.inputs, _no_rule)
        out[n.id] = lowering
    return out


def _no_rule(ex: "Exporter", n: Node) -> str:
    """An op without an ONNX rule (the backward's `conv_weight`): an error where it is needed."""
    name = n.attrs["composite"] if n.op is Op.COMPOSITE else n.op.value
    raise ExportError(n, f"ONNX export has no rule for the op `{name}`")


def emit_graph(ex: Exporter, graph: Graph, roots: Sequence[int]) -> None:
    """Write the nodes of `graph` that `roots` need into `ex` (its INPUT nodes already bound, for a
    body; the root graph's inputs are bound by their lowering)."""
    lowerings = plan(graph)
    live: set[int] = set()
    stack = list(roots)
    while stack:
        i = stack.pop()
        if i not in live:
            live.add(i)
            stack.extend(lowerings[i].reads)
    ex.live, ex.graph = live, graph
    for n in graph.nodes:
        if n.id in live and n.id not in ex.values:
            ex.current = n
            try:
                ex.values[n.id] = lowerings[n.id].emit(ex, n)
            except ExportError as e:
                raise ExportError(e.node or n, e.message) from None


def _rename(nodes: Sequence[Any], old: str, new: str) -> None:
    """Value `old` renamed `new` in `nodes` and in every body graph they carry."""
    for node in nodes:
        for k, name in enumerate(node.input):
            if name == old:
                node.input[k] = new
        for k, name in enumerate(node.output):
            if name == old:
                node.output[k] = new
        for attr in node.attribute:
            if attr.HasField("g"):
                _rename(attr.g.node, old, new)
                for o in attr.g.output:
                    if o.name == old:
                        o.name = new


# ---- the model --------------------------------------------------------------------------------------------------

def export_graph(model: "Model") -> Graph:
    """The forward graph of the model's declared outputs, in evaluation mode, as ONNX sees it:
    optimized, composites without an ONNX op decomposed, batch norm left unfolded."""
    spec = model.spec
    pairs = [(name, spec.graph.output(name).id if name in spec.graph.output_names else spec.values[name])
             for name in spec.outputs]
    graph = pipeline.optimize(spec.graph.with_outputs(pairs), model.debug)
    return pipeline.lower(graph, lambda n: n.attrs["composite"] in NATIVE_COMPOSITES, model.debug)


def export_model(model: "Model", opset: int = DEFAULT_OPSET) -> "onnx.ModelProto":
    """`model` as a checked ONNX ModelProto.  Raises DlnError (E0715) when it cannot be expressed."""
    opset = _checked_opset(opset)
    return graph_to_onnx(export_graph(model), model.name, model.state_dict(), opset, model.spec.decl.name.span)


def _checked_opset(opset: Any) -> int:
    try:
        import onnx
    except ImportError:
        raise DlnError(Diagnostic("E0714", "ONNX export needs the onnx package, which is not installed", None,
                                  (Note("pip install 'dln[onnx]'"),))) from None
    latest = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)) or not MIN_OPSET <= opset <= latest:
        raise DlnError(Diagnostic("E0710", f"argument opset must be an int from {MIN_OPSET} to {latest} (the onnx "
                                           f"package's newest), got {opset!r}"))
    return int(opset)


def graph_to_onnx(graph: Graph, name: str, weights: dict[str, np.ndarray], opset: int = DEFAULT_OPSET,
                  where: Span | None = None) -> "onnx.ModelProto":
    """A dln graph as a checked ONNX model named `name`: its `input` (and `rng`) INPUT nodes are the
    graph's inputs, its `param` and `buffer` ones initializers holding `weights[name]`, its outputs
    the graph's.  `where`: the span an error without a node of its own points at."""
    from onnx import helper

    ex = Exporter(opset)
    ex.weights = weights
    ex.symbols = _symbol_sources(graph, name, where)
    ex.reserved = {n.attrs["name"] for n in graph.inputs} | set(graph.output_names)
    # The outputs, and the inputs whose axes give the symbols' values (as dln, the ONNX model needs them)
    sources = {source for source, _ in ex.symbols.values()}
    roots = [i for _, i in graph.outputs] + [n.id for n in graph.inputs if n.attrs["name"] in sources]
    try:
        emit_graph(ex, graph, roots)
    except ExportError as e:
        span = e.node.loc if e.node is not None and e.node.loc is not None else where
        raise DlnError(Diagnostic("E0715", f"model {name} cannot be exported to ONNX: {e.message}", span,
                                  (Note("ONNX export writes the forward graph in evaluation mode; see "
                                        "docs/onnx_export.md for what it covers"),))) from None
    outputs = []
    claimed: set[str] = set()
    produced = {o for node in ex.nodes for o in node.output}
    for out_name, node_id in graph.outputs:
        value = ex.value(node_id)
        if value in produced and value not in claimed:
            _rename(ex.nodes, value, out_name)
            ex.values = {k: (out_name if v == value else v) for k, v in ex.values.items()}
            claimed.add(out_name)
        else:   # an input returned as it is, or one value under two names
            ex.nodes.append(helper.make_node("Identity", [value], [out_name], name=ex.fresh("Identity")))
        node = graph.node(node_id)
        outputs.append(value_info(out_name, node.dtype, node.shape))
    proto_graph = helper.make_graph(ex.nodes, name, ex.inputs, outputs, ex.initializers,
                                    doc_string=f"dln model {name}, forward in evaluation mode")
    opsets = [helper.make_opsetid("", opset)]
    if ex.functions:   # the random draws' functions (export_random)
        from dln.runtime.onnx.export_random import DOMAIN, DOMAIN_VERSION

        opsets.append(helper.make_opsetid(DOMAIN, DOMAIN_VERSION))
    proto = helper.make_model(proto_graph, opset_imports=opsets, producer_name="dln",
                              ir_version=helper.find_min_ir_version_for(opsets[:1]),
                              functions=list(ex.functions.values()))
    check(proto, name, where)
    return proto


def check(proto: "onnx.ModelProto", name: str, where: Span | None = None) -> None:
    """The ONNX checker (full) and strict shape inference: a failure is a bug of the exporter, reported
    as such rather than written as a file ONNX tools would refuse."""
    import onnx

    try:
        onnx.checker.check_model(proto, full_check=True)
        onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True, data_prop=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DlnError(Diagnostic("E0715", f"model {name}: the exported ONNX graph fails ONNX's checks: {first}",
                                  where, (Note("this is a bug of dln's exporter: please report it"),))) from None


def _symbol_sources(graph: Graph, name: str, where: Span | None) -> dict[str, tuple[str, int]]:
    """Where each dimension symbol's value is read: the first input axis of exactly that size."""
    sources: dict[str, tuple[str, int]] = {}
    for n in graph.inputs:
        if n.attrs["role"] != "input":
            continue
        for axis, d in enumerate(n.shape):
            if isinstance(d, Sym) and len(d.terms) == 1 and d.terms[0][1] == 1 and len(d.terms[0][0]) == 1:
                sources.setdefault(d.terms[0][0][0], (n.attrs["name"], axis))
    missing = sorted(graph.symbols() - sources.keys())
    if missing:
        raise DlnError(Diagnostic("E0715", f"model {name} cannot be exported to ONNX: dimension "
                                           f"{', '.join(missing)} is the size of no input axis the forward "
                                           "graph reads", where))
    return sources


def export_onnx(model: "Model", path: str | Path | None, opset: int = DEFAULT_OPSET) -> "onnx.ModelProto":
    """`export_model`, written to `path` when one is given."""
    proto = export_model(model, opset)
    if path is not None:
        path = Path(path)
        if path.is_dir():
            raise DlnError(Diagnostic("E0708", f"cannot write the ONNX model to {path}: it is a directory"))
        try:
            path.write_bytes(proto.SerializeToString())
        except OSError as e:
            raise DlnError(Diagnostic("E0708", f"cannot write the ONNX model to {path}: {e.strerror or e}")) from None
    return proto
